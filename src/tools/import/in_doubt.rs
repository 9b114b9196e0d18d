//! Rows in doubt: sent in a request whose answer never came. Each row carries
//! an external id; a match against the list, filtered by the ids and by the
//! import's start time, returns the faces the service stored for them.

use std::collections::HashMap;
use std::time::Duration;

use serde::Deserialize;
use uuid::Uuid;

use super::{Ready, Shared, MAX_ATTEMPTS, RESOLVE_CHUNK};
use crate::tools::client::Failure;

#[derive(Deserialize)]
struct RefAnswer {
    matches: Option<Vec<SetAnswer>>,
}

#[derive(Deserialize)]
struct SetAnswer {
    result: Vec<Hit>,
    total_found: u64,
}

#[derive(Deserialize)]
struct Hit {
    face: HitFace,
}

#[derive(Deserialize)]
struct HitFace {
    face_id: Uuid,
    external_id: Option<String>,
    #[serde(default)]
    user_data: String,
}

/// Ask the service which rows of a request in doubt it stored: those are
/// recorded; the others are returned, to be sent.
pub(super) async fn resolve(s: &Shared, rows: Vec<Ready>) -> Result<Vec<Ready>, String> {
    let mut missing = Vec::new();
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        let chunk: Vec<Ready> = rows.by_ref().take(RESOLVE_CHUNK).collect();
        let mut found = stored_faces(s, &chunk).await?;
        let (mut indexes, mut ids) = (Vec::new(), Vec::new());
        for r in chunk {
            let key = (r.row.face.external_id.clone().unwrap_or_default(), r.row.face.user_data.clone());
            match found.get_mut(&key).and_then(Vec::pop) {
                Some(id) => {
                    indexes.push(r.row.index);
                    ids.push(id);
                }
                None => missing.push(r),
            }
        }
        s.stored(&indexes, &ids, true);
    }
    s.tally.lock().expect("tally").in_doubt_missing += missing.len() as u64;
    Ok(missing)
}

/// Faces of the list created since the import began that carry the chunk's
/// external ids, not yet known to this import, by (external_id, user_data).
async fn stored_faces(s: &Shared, chunk: &[Ready]) -> Result<HashMap<(String, String), Vec<Uuid>>, String> {
    // Candidates of another version than the reference's are not candidates:
    // one reference per version.
    let mut references = Vec::new();
    let mut versions = Vec::new();
    for r in chunk {
        let key = (r.version, r.row.face.version);
        if !versions.contains(&key) {
            versions.push(key);
            let mut reference = serde_json::json!({"type": "descriptor", "data": crate::tools::b64(&r.row.face.data)});
            if let Some(v) = r.row.face.version {
                reference["descriptor_version"] = v.into();
            }
            references.push(reference);
        }
    }
    let external_ids: Vec<&str> = chunk.iter().filter_map(|r| r.row.face.external_id.as_deref()).collect();
    let mut filters = serde_json::json!({"origin": "faces", "list_id": s.header.list_id, "external_ids": external_ids});
    if let Some(since) = &s.header.since {
        filters["create_time__gte"] = since.as_str().into();
    }
    let body = serde_json::to_vec(&serde_json::json!({
        "references": references,
        "candidates": [{"filters": filters, "targets": ["face_id", "external_id", "user_data"], "limit": RESOLVE_CHUNK}],
    }))
    .expect("JSON");
    let mut attempts = 0;
    let answer = loop {
        match s.api.match_faces(body.clone()).await {
            Ok(answer) => break answer,
            Err(Failure::Unknown(e)) if attempts + 1 < MAX_ATTEMPTS => {
                attempts += 1;
                s.progress.suspend(|| eprintln!("asking which rows were stored: {e}; trying again"));
                tokio::time::sleep(Duration::from_millis(250 << attempts)).await;
            }
            Err(e) => return Err(format!("cannot tell which rows of a request in doubt were stored: {e}")),
        }
    };
    let answers: Vec<RefAnswer> = serde_json::from_slice(&answer).map_err(|e| format!("unexpected answer to a match: {e}"))?;
    let tally = s.tally.lock().expect("tally");
    let known = &tally.known;
    let mut found: HashMap<(String, String), Vec<Uuid>> = HashMap::new();
    for set in answers.into_iter().flat_map(|a| a.matches.unwrap_or_default()) {
        if set.total_found > set.result.len() as u64 {
            return Err(format!("more than {RESOLVE_CHUNK} faces carry the external ids of {RESOLVE_CHUNK} rows: cannot tell which rows are stored"));
        }
        for hit in set.result.into_iter().filter(|h| !known.contains(&h.face.face_id)) {
            found.entry((hit.face.external_id.unwrap_or_default(), hit.face.user_data)).or_default().push(hit.face.face_id);
        }
    }
    Ok(found)
}
