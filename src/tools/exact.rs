//! Exact answers, computed here with luna-core's kernels, and the check of a
//! service's answer against them: a fast wrong matcher must not win.

use std::fmt::Display;

use luna_core::index::{Query, Vectors};
use luna_core::kernels::kernels;
use luna_core::matching::{scan, TopK};

/// Similarities may differ this much (another service sums floats in another order).
pub const TOLERANCE: f64 = 1e-6;

/// The best `limit` candidates (ties: the smaller key first), and how many
/// reach `threshold`, as docs/api.md orders them.
pub struct Expected<K> {
    pub hits: Vec<(K, f64)>,
    pub total: u64,
}

pub fn top<K: Ord + Copy>(vectors: &Vectors, query: &Query, key: impl Fn(usize) -> K, limit: usize, threshold: f64) -> Expected<K> {
    let mut top = TopK::new(limit, threshold);
    scan(kernels(), vectors, query, 0..vectors.len(), |_| true, key, &mut top);
    let total = top.total;
    Expected { hits: top.into_sorted().into_iter().map(|h| (h.key, h.similarity)).collect(), total }
}

pub fn similarity(vectors: &Vectors, query: &Query, row: usize) -> f64 {
    vectors.similarity(kernels(), query, row)
}

/// Compare an answer with the exact one. `exact(key)` is the exact
/// similarity of any candidate, None for what is not a candidate. A
/// different key at a position is right only where the two tie.
pub fn compare<K: PartialEq + Display>(expected: &Expected<K>, got: &[(K, f64)], total: Option<u64>, exact: impl Fn(&K) -> Option<f64>) -> Result<(), String> {
    if let Some(total) = total.filter(|t| *t != expected.total) {
        return Err(format!("total_found {total}, exactly {}", expected.total));
    }
    if got.len() != expected.hits.len() {
        return Err(format!("{} results, exactly {}", got.len(), expected.hits.len()));
    }
    for (i, ((key, sim), (want_key, want))) in got.iter().zip(&expected.hits).enumerate() {
        if got[..i].iter().any(|(k, _)| k == key) {
            return Err(format!("result {i}: {key} a second time"));
        }
        match exact(key) {
            None => return Err(format!("result {i}: {key} is not a candidate")),
            Some(e) if (e - sim).abs() > TOLERANCE => return Err(format!("result {i}: {key} with similarity {sim}, exactly {e}")),
            Some(_) if (want - sim).abs() > TOLERANCE => {
                return Err(format!("result {i}: {key} with similarity {sim}; exactly, result {i} is {want_key} with {want}"))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expected() -> Expected<u32> {
        Expected { hits: vec![(1, 0.9), (2, 0.5), (3, 0.5)], total: 10 }
    }

    fn exact(k: &u32) -> Option<f64> {
        [(1, 0.9), (2, 0.5), (3, 0.5), (4, 0.5), (5, 0.4)].iter().find(|(key, _)| key == k).map(|(_, s)| *s)
    }

    #[test]
    fn ties_may_come_in_any_order() {
        assert_eq!(compare(&expected(), &[(1, 0.9), (3, 0.5), (4, 0.5)], Some(10), exact), Ok(()));
    }

    #[test]
    fn wrong_answers_are_named() {
        let check = |got: &[(u32, f64)], total| compare(&expected(), got, total, exact).unwrap_err();
        assert!(check(&[(1, 0.91), (2, 0.5), (3, 0.5)], None).contains("exactly 0.9"));
        assert!(check(&[(1, 0.9), (2, 0.5), (5, 0.4)], None).contains("exactly, result 2 is 3"));
        assert!(check(&[(1, 0.9), (2, 0.5), (9, 0.5)], None).contains("not a candidate"));
        assert!(check(&[(1, 0.9), (2, 0.5), (2, 0.5)], None).contains("second time"));
        assert!(check(&[(1, 0.9), (2, 0.5)], None).contains("2 results"));
        assert!(check(&[(1, 0.9), (2, 0.5), (3, 0.5)], Some(9)).contains("total_found"));
    }
}
