//! The `[limits]` of docs/api.md, and the checks that keep the memory of a request
//! bounded: field lengths on the way in, and the size of a matching response
//! estimated before it is built. Exceeding a limit is an error, never a
//! truncation.

use serde::{Deserialize, Serialize};

use crate::api::{NewFace, NewList, RawItem, Target};
use crate::errors::{Error, ErrorCode, Result};
use crate::index::FaceRecord;

/// The `[limits]`: counts, lengths and sizes a request may not pass.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// References per matching request (error 31007).
    pub references: usize,
    /// Candidate sets per `/1/matcher/faces` request (error 11020).
    pub candidate_sets: usize,
    /// `limit` of a candidate set that gives none.
    pub default_limit: usize,
    /// Largest `limit` a request may ask for (error 11021).
    pub max_limit: usize,
    /// Candidates per `/1/matcher/raw` request (error 11022).
    pub raw_candidates: usize,
    /// Largest request body in bytes (error 11023).
    pub body_bytes: usize,
    /// Characters of a face's or a list's `user_data`, as LUNA has it.
    pub user_data_chars: usize,
    /// Characters of a face's `external_id`, as LUNA has it.
    pub external_id_chars: usize,
    /// Largest response a matching request may produce, estimated before it is built.
    pub response_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            references: 30,
            candidate_sets: 10,
            default_limit: 3,
            max_limit: 100,
            raw_candidates: 10_000,
            body_bytes: 64 << 20,
            user_data_chars: 128,
            external_id_chars: 36,
            // A full answer at the default counts (30 x 10 x 100 hits, every
            // target, 128-character user_data) is about 13 MiB of JSON: twice
            // that leaves room for escaped text and a few lists per face.
            response_bytes: 32 << 20,
        }
    }
}

impl Limits {
    /// A new face's field lengths (error 11002 naming the field).
    pub fn check_face(&self, face: &NewFace) -> Result<()> {
        check_chars("user_data", &face.user_data, self.user_data_chars)?;
        face.external_id.as_deref().map_or(Ok(()), |e| check_chars("external_id", e, self.external_id_chars))
    }

    /// A new list's field lengths (error 11002 naming the field).
    pub fn check_list(&self, list: &NewList) -> Result<()> {
        check_chars("user_data", &list.user_data, self.user_data_chars)
    }

    /// Refuse a `/1/matcher/faces` answer whose encoding, bounded from above
    /// before the response objects exist, would pass `response_bytes`.
    pub fn check_faces_response(&self, bound: usize) -> Result<()> {
        if bound > self.response_bytes {
            return Err(self.too_large("lower the number of references, candidate sets or their limit, ask for fewer targets, or send smaller filters"));
        }
        Ok(())
    }

    /// Refuse a `/1/matcher/raw` request whose answer could pass
    /// `response_bytes`: each reference may be answered with the `limit`
    /// candidates of the longest ids.
    pub fn check_raw_response(&self, references: &[RawItem], candidates: &[RawItem], limit: usize) -> Result<()> {
        let mut longest: Vec<usize> = candidates.iter().map(|c| json_len(&c.id)).collect();
        let cut = limit.min(longest.len());
        if cut < longest.len() {
            longest.select_nth_unstable_by(cut, |a, b| b.cmp(a));
        }
        let per_reference: usize = longest[..cut].iter().map(|len| RAW_MATCH + len).sum();
        let total = references.iter().fold(2usize, |sum, r| sum.saturating_add(RAW_REFERENCE + json_len(&r.id) + per_reference));
        if total > self.response_bytes {
            return Err(self.too_large("lower the number of references or the limit, or send shorter candidate ids"));
        }
        Ok(())
    }

    fn too_large(&self, advice: &str) -> Error {
        Error::new(ErrorCode::ResponseTooLarge, format!("the response would pass limits.response_bytes ({} bytes): {advice}", self.response_bytes))
    }
}

/// A text field fits its limit and can be stored (PostgreSQL cannot keep a
/// NUL character, so neither store accepts one).
fn check_chars(field: &str, value: &str, max: usize) -> Result<()> {
    if value.contains('\0') {
        return Err(Error::new(ErrorCode::SchemaViolation, format!("{field}: a NUL character cannot be stored")));
    }
    // Counting stops past the limit: a long value costs no more than a short one.
    match value.chars().take(max + 1).count() {
        n if n > max => Err(Error::new(ErrorCode::SchemaViolation, format!("{field}: {} characters, at most {max}", value.chars().count()))),
        _ => Ok(()),
    }
}

// Upper bounds of the fixed parts of the JSON encoding (msgpack is never longer).
pub(crate) const REFERENCE: usize = 64; // {"reference":{"type":"descriptor","id":""},"matches":[]},
pub(crate) const ERROR: usize = 160; // "error":{"error_code":…,"desc":…,"detail":"","link":…}
pub(crate) const CANDIDATE_SET: usize = 48; // {"filters":,"result":[],"total_found":…},
const HIT: usize = 24; // {"face":{},"similarity":…},
const UUID_FIELD: usize = 52; // "face_id":"<36>",
const RAW_REFERENCE: usize = 40; // {"reference_id":"","matches":[]},
const RAW_MATCH: usize = 56; // {"candidate_id":"","similarity":…},

pub(crate) fn hit_len(face: &FaceRecord, targets: &[Target]) -> usize {
    HIT + targets
        .iter()
        .map(|t| match t {
            Target::FaceId | Target::AccountId => UUID_FIELD,
            Target::Similarity => 32,
            Target::UserData => 16 + json_len(&face.user_data),
            Target::ExternalId => 18 + face.external_id.as_deref().map_or(4, json_len),
            Target::CreateTime => 48,
            Target::Lists => 12 + 39 * face.lists.len(),
        })
        .sum::<usize>()
}

/// Bytes of a JSON string literal, quotes included, at the most a control
/// character can take (`\u001f`).
pub(crate) fn json_len(s: &str) -> usize {
    2 + s
        .bytes()
        .map(|b| {
            if b < 0x20 {
                6
            } else if b == b'"' || b == b'\\' {
                2
            } else {
                1
            }
        })
        .sum::<usize>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_len_bounds_serde_json() {
        for s in ["", "plain", "quote\" back\\slash", "ctl\u{1}\u{1f}\n\t", "ünïcødé ✓"] {
            assert!(json_len(s) >= serde_json::to_string(s).unwrap().len(), "{s:?}");
        }
    }

    #[test]
    fn lengths_are_counted_in_characters() {
        let limits = Limits::default();
        assert!(check_chars("user_data", &"é".repeat(128), limits.user_data_chars).is_ok());
        let err = check_chars("user_data", &"é".repeat(129), limits.user_data_chars).unwrap_err();
        assert_eq!((err.code, err.detail.as_str()), (ErrorCode::SchemaViolation, "user_data: 129 characters, at most 128"));
    }
}
