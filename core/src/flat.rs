//! A flat index: keyed descriptors of one version in one aligned array,
//! searched exhaustively with the service's kernels. What a plugin's
//! `luna_matcher.DescriptorSet` is built on.

use std::collections::HashMap;
use std::hash::Hash;

use crate::descriptor::VersionSpec;
use crate::index::{Query, Vectors};
use crate::kernels::kernels;
use crate::matching::{scan_many, Candidates};

/// Keyed descriptors of one version, searched exhaustively; `K` is the caller's key.
pub struct FlatIndex<K> {
    vectors: Vectors,
    /// Row i holds the descriptor of `keys[i]`.
    keys: Vec<K>,
    rows: HashMap<K, usize>,
}

impl<K: Clone + Eq + Hash + Ord> FlatIndex<K> {
    /// An empty index of descriptors of `spec`.
    pub fn new(spec: VersionSpec) -> Self {
        FlatIndex { vectors: Vectors::new(spec), keys: Vec::new(), rows: HashMap::new() }
    }

    /// The version its descriptors are of.
    pub fn spec(&self) -> &VersionSpec {
        &self.vectors.spec
    }

    /// Descriptors held.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// No descriptors held.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether `key` has a descriptor here.
    pub fn contains(&self, key: &K) -> bool {
        self.rows.contains_key(key)
    }

    /// Add a payload already validated against the spec under `key`,
    /// replacing the one already there.
    pub fn insert(&mut self, key: K, payload: &[u8]) {
        self.remove(&key);
        self.rows.insert(key.clone(), self.keys.len());
        self.keys.push(key);
        self.vectors.push(payload);
    }

    /// Remove `key`; false when it was not there. The last row takes its place.
    pub fn remove(&mut self, key: &K) -> bool {
        let Some(row) = self.rows.remove(key) else { return false };
        self.vectors.swap_remove(row);
        self.keys.swap_remove(row);
        if let Some(moved) = self.keys.get(row) {
            self.rows.insert(moved.clone(), row);
        }
        true
    }

    /// `[(key, similarity)]`, best first, ties by key; at most `limit`, all at
    /// least `threshold`. Scanned like the service's lists: the block kernels,
    /// chunks over the current rayon pool.
    pub fn search(&self, query: &Query, limit: usize, threshold: f64) -> Vec<(K, f64)>
    where
        K: Sync,
    {
        self.search_many(&[(query, limit, threshold)]).remove(0)
    }

    /// [`FlatIndex::search`] for every `(query, limit, threshold)`, in one
    /// scan: each chunk of rows is read once for all of them.
    pub fn search_many(&self, queries: &[(&Query, usize, f64)]) -> Vec<Vec<(K, f64)>>
    where
        K: Sync,
    {
        let takes_all = vec![true; queries.len()];
        let tops = scan_many(kernels(), &self.vectors, Candidates::All(self.len()), queries, &takes_all, |_, _| true, |row| &self.keys[row]);
        tops.into_iter().map(|top| top.into_sorted().into_iter().map(|h| (h.key.clone(), h.similarity)).collect()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::descriptor::Dtype;

    #[test]
    fn insert_replace_remove_search() {
        let spec = VersionSpec { length: 64, dtype: Dtype::U8, a: None, b: None };
        let row = |v: u8| (0..64u8).map(|i| i.wrapping_mul(v)).collect::<Vec<u8>>();
        let mut set = FlatIndex::new(spec);
        for (k, v) in [("a", 3), ("b", 5), ("c", 7)] {
            set.insert(k.to_string(), &row(v));
        }
        set.insert("a".to_string(), &row(7));
        assert_eq!(set.len(), 3);
        let hits = set.search(&Query::new(&spec, &row(7)), 2, 0.0);
        assert_eq!(hits.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), ["a", "c"], "equal similarity: ties by key");
        assert!(set.remove(&"a".to_string()) && !set.remove(&"a".to_string()));
        assert!(!set.contains(&"a".to_string()) && set.contains(&"c".to_string()));
        assert_eq!(set.search(&Query::new(&spec, &row(7)), 5, 0.0)[0].0, "c");
    }
}
