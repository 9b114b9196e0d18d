//! What the bench sends: per data set and request shape, a pool of request
//! bodies, each with the exact answer computed here, and the check of an
//! answer against it.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use luna_core::descriptor::{Dtype, VersionSpec};
use luna_core::index::{Query, Vectors};
use serde::Deserialize;
use uuid::Uuid;

use super::bench::{BenchArgs, Shape};
use super::exact::{self, Expected};
use super::synthetic::{self, Gallery, Rng};

/// Request bodies per workload, sent in turn.
const POOL: usize = 16;

/// What a point matches against.
pub enum Data {
    /// A list whose faces are known here (synthetic, or read back from an
    /// import), of one version: its answers are checked.
    Known {
        label: String,
        list_id: Uuid,
        version: u32,
        gallery: Arc<Gallery>,
        faces: Arc<Known>,
    },
    Existing {
        list_id: Uuid,
        version: Option<u32>,
        spec: VersionSpec,
        size: u64,
    },
}

/// The faces of a known list: its rows' ids, and each id's row.
pub struct Known {
    pub ids: Vec<Uuid>,
    pub rows: HashMap<Uuid, usize>,
}

impl Known {
    /// The faces whose ids are `ids`, row by row.
    pub fn new(ids: Vec<Uuid>) -> Known {
        let rows = ids.iter().enumerate().map(|(row, id)| (*id, row)).collect();
        Known { ids, rows }
    }
}

/// Requests of one shape against one data set, and how to check their answers.
pub struct Workload {
    pub shape: Shape,
    pub data: String,
    pub dtype: Dtype,
    pub list_size: u64,
    pub route: &'static str,
    pub bodies: Vec<Bytes>,
    /// Per body; None where the answer cannot be known (existing lists).
    pub checks: Vec<Option<Check>>,
    pub candidates_per_request: u64,
}

pub enum Check {
    Faces { gallery: Arc<Gallery>, faces: Arc<Known>, references: Vec<(Query, Expected<Uuid>)>, sets: usize },
    Raw { candidates: Vectors, references: Vec<(Query, Expected<usize>)> },
}

pub fn faces_workload(data: &Data, shape: Shape, args: &BenchArgs, rng: &mut Rng) -> Workload {
    let (references, sets) = match shape {
        Shape::Refs => (args.refs, 1),
        Shape::Sets => (1, args.sets),
        _ => (1, 1),
    };
    let (list_id, spec, version, size, label) = match data {
        Data::Known { label, list_id, version, gallery, .. } => (*list_id, gallery.vectors.spec, Some(*version), gallery.spec.size, label.clone()),
        Data::Existing { list_id, version, spec, size } => (*list_id, *spec, *version, *size, list_id.to_string()),
    };
    let mut bodies = Vec::new();
    let mut checks = Vec::new();
    for _ in 0..POOL {
        // Probes near a face of the list, so each answer has one clear best match.
        let probes: Vec<Vec<u8>> = (0..references)
            .map(|_| match data {
                Data::Known { gallery, .. } => {
                    let row = rng.below(gallery.vectors.len());
                    synthetic::near(spec.dtype, gallery.vectors.payload(row), rng)
                }
                Data::Existing { .. } => synthetic::random(spec.dtype, rng),
            })
            .collect();
        let refs: Vec<serde_json::Value> = probes
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let mut r = serde_json::json!({"type": "descriptor", "id": format!("r{i}"), "data": super::b64(p)});
                if let Some(v) = version {
                    r["descriptor_version"] = v.into();
                }
                r
            })
            .collect();
        let set = serde_json::json!({"filters": {"origin": "faces", "list_id": list_id}, "limit": args.limit});
        let body = serde_json::json!({"references": refs, "candidates": vec![set; sets]});
        bodies.push(Bytes::from(serde_json::to_vec(&body).expect("JSON")));
        checks.push(match data {
            Data::Known { gallery, faces, .. } => {
                let references = probes
                    .iter()
                    .map(|p| {
                        let q = Query::new(&spec, p);
                        let expected = exact::top(&gallery.vectors, &q, |row| faces.ids[row], args.limit, 0.0);
                        (q, expected)
                    })
                    .collect();
                Some(Check::Faces { gallery: gallery.clone(), faces: faces.clone(), references, sets })
            }
            Data::Existing { .. } => None,
        });
    }
    Workload {
        shape,
        data: label,
        dtype: spec.dtype,
        list_size: size,
        route: "/1/matcher/faces",
        bodies,
        checks,
        candidates_per_request: (references * sets) as u64 * size,
    }
}

pub fn raw_workload(dtype: Dtype, args: &BenchArgs, rng: &mut Rng) -> Workload {
    let spec = synthetic::spec_of(dtype);
    let mut bodies = Vec::new();
    let mut checks = Vec::new();
    for _ in 0..POOL {
        let mut candidates = Vectors::new(spec);
        let mut items = Vec::new();
        for i in 0..args.raw_candidates {
            let d = synthetic::random(dtype, rng);
            items.push(serde_json::json!({"id": raw_id(i), "data": super::b64(&d)}));
            candidates.push(&d);
        }
        let probe = synthetic::near(dtype, candidates.payload(rng.below(candidates.len())), rng);
        let body = serde_json::json!({
            "references": [{"id": "r0", "data": super::b64(&probe)}],
            "candidates": items,
            "descriptor_version": synthetic::version_of(dtype),
            "limit": args.limit,
        });
        bodies.push(Bytes::from(serde_json::to_vec(&body).expect("JSON")));
        let q = Query::new(&spec, &probe);
        let expected = exact::top(&candidates, &q, |row| row, args.limit, 0.0);
        checks.push(Some(Check::Raw { candidates, references: vec![(q, expected)] }));
    }
    Workload {
        shape: Shape::Raw,
        data: format!("{} x{}", synthetic::dtype_name(dtype), args.raw_candidates),
        dtype,
        list_size: args.raw_candidates as u64,
        route: "/1/matcher/raw",
        bodies,
        checks,
        candidates_per_request: args.raw_candidates as u64,
    }
}

/// Raw candidate ids sort as their numbers do: docs/api.md breaks ties by id.
fn raw_id(i: usize) -> String {
    format!("c{i:06}")
}

#[derive(Deserialize)]
struct RefOut {
    matches: Option<Vec<SetOut>>,
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct SetOut {
    result: Vec<HitOut>,
    total_found: u64,
}

#[derive(Deserialize)]
struct HitOut {
    face: FaceOut,
    similarity: Option<f64>,
}

#[derive(Deserialize)]
struct FaceOut {
    face_id: Option<Uuid>,
}

#[derive(Deserialize)]
struct RawOut {
    reference_id: String,
    matches: Vec<RawHit>,
}

#[derive(Deserialize)]
struct RawHit {
    candidate_id: String,
    similarity: f64,
}

impl Check {
    /// Err(why) when the answer is not the exact one.
    pub fn verify(&self, body: &[u8]) -> Result<(), String> {
        match self {
            Check::Faces { gallery, faces, references, sets } => {
                let answer: Vec<RefOut> = serde_json::from_slice(body).map_err(|e| format!("malformed answer: {e}"))?;
                if answer.len() != references.len() {
                    return Err(format!("{} answers to {} references", answer.len(), references.len()));
                }
                for (r, (out, (query, expected))) in answer.into_iter().zip(references).enumerate() {
                    let matches = match (out.matches, out.error) {
                        (_, Some(e)) => return Err(format!("reference {r}: error {e}")),
                        (Some(m), None) if m.len() == *sets => m,
                        (m, None) => return Err(format!("reference {r}: {} candidate sets answered of {sets}", m.map_or(0, |m| m.len()))),
                    };
                    for (c, set) in matches.into_iter().enumerate() {
                        let got = set
                            .result
                            .iter()
                            .map(|h| Some((h.face.face_id?, h.similarity?)))
                            .collect::<Option<Vec<_>>>()
                            .ok_or_else(|| format!("reference {r}, set {c}: a result without face_id or similarity"))?;
                        let exact_of = |id: &Uuid| faces.rows.get(id).map(|&row| exact::similarity(&gallery.vectors, query, row));
                        exact::compare(expected, &got, Some(set.total_found), exact_of).map_err(|e| format!("reference {r}, set {c}: {e}"))?;
                    }
                }
                Ok(())
            }
            Check::Raw { candidates, references } => {
                let answer: Vec<RawOut> = serde_json::from_slice(body).map_err(|e| format!("malformed answer: {e}"))?;
                if answer.len() != references.len() {
                    return Err(format!("{} answers to {} references", answer.len(), references.len()));
                }
                for (r, (out, (query, expected))) in answer.into_iter().zip(references).enumerate() {
                    if out.reference_id != format!("r{r}") {
                        return Err(format!("reference {r}: answered as {}", out.reference_id));
                    }
                    let got: Vec<(usize, f64)> = out
                        .matches
                        .iter()
                        .map(|m| (m.candidate_id.strip_prefix('c').and_then(|n| n.parse().ok()).unwrap_or(usize::MAX), m.similarity))
                        .collect();
                    let exact_of = |&row: &usize| (row < candidates.len()).then(|| exact::similarity(candidates, query, row));
                    exact::compare(expected, &got, None, exact_of).map_err(|e| format!("reference {r}: {e}"))?;
                }
                Ok(())
            }
        }
    }
}
