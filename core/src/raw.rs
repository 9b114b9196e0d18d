//! `/1/matcher/raw`: descriptors given in the request against descriptors
//! given in the request; nothing of the store is read.

use crate::api::*;
use crate::errors::{Error, ErrorCode, Result};
use crate::index::{Query, Vectors};
use crate::matching::{guarded, scan, TopK};
use crate::planning::check_threshold;
use crate::service::Core;

/// Reference x candidate pairs up to which a request is scanned on the
/// thread that parsed it (about 0.1 ms of scanning): below that, the
/// hand-off to the matching threads and back costs more than it spares.
const INLINE_PAIRS: usize = 4096;

impl Core {
    /// Match every reference of the request against its candidates: on the
    /// matching threads, or here when the request is small.
    pub async fn match_raw(&self, req: MatchRawRequest) -> Result<Vec<RawReferenceMatches>> {
        self.check_counts(req.references.len(), None)?;
        if req.candidates.len() > self.limits.raw_candidates {
            return Err(Error::new(
                ErrorCode::TooManyRawCandidates,
                format!("{} candidates, at most {} allowed", req.candidates.len(), self.limits.raw_candidates),
            ));
        }
        let limit = self.check_limit(req.limit)?;
        self.limits.check_raw_response(&req.references, &req.candidates, limit)?;
        let threshold = check_threshold(req.threshold)?;
        let parse = |place: &str, items: Vec<RawItem>| {
            items
                .into_iter()
                .enumerate()
                .map(|(i, it)| {
                    let d = it.data.decode().and_then(|b| self.versions.parse(&b, req.descriptor_version)).map_err(|e| e.at(format_args!("{place}[{i}]")))?;
                    Ok((it.id, d))
                })
                .collect::<Result<Vec<_>>>()
        };
        let references = parse("references", req.references)?;
        let mut candidates = parse("candidates", req.candidates)?;
        let mut versions = references.iter().chain(&candidates).map(|(_, d)| d.version);
        if let Some(first) = versions.next() {
            if let Some(other) = versions.find(|v| *v != first) {
                return Err(Error::new(ErrorCode::DescriptorVersionMismatch, format!("versions {first} and {other} in one request")));
            }
        }
        let Some(version) = references.first().or(candidates.first()).map(|(_, d)| d.version) else {
            return Ok(Vec::new());
        };
        let spec = *self.versions.get(version)?;
        // Sorted by id, a candidate's position is its tie-break key.
        candidates.sort_by(|a, b| a.0.cmp(&b.0));
        let inline = references.len() * candidates.len() <= INLINE_PAIRS;
        let scan_all = move || {
            let k = crate::kernels::kernels();
            let mut vectors = Vectors::new(spec);
            for (_, d) in &candidates {
                vectors.push(&d.payload);
            }
            Ok(references
                .into_iter()
                .map(|(reference_id, d)| {
                    let mut top = TopK::new(limit, threshold);
                    scan(k, &vectors, &Query::new(&spec, &d.payload), 0..vectors.len(), |_| true, |row| row, &mut top);
                    let matches =
                        top.into_sorted().into_iter().map(|h| RawMatch { candidate_id: candidates[h.key].0.clone(), similarity: h.similarity }).collect();
                    RawReferenceMatches { reference_id, matches }
                })
                .collect())
        };
        if inline {
            return guarded(scan_all);
        }
        self.engine.run(scan_all).await
    }
}
