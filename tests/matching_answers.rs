//! A matching plugin's answer is checked against the request before it is
//! used: a face the filters exclude, or a face named twice, makes the answer
//! malformed, and the default matcher answers the sub-request instead.

mod common;

use common::*;
use serde_json::{json, Value};

/// Answers every sub-request with whatever the test last posted to /answer.
const FIXED_ANSWER: &str = r#"
from luna_plugins.base.plugins_meta.base_plugins import BaseBackgroundPlugin
from luna_plugins.matcher_plugins.base_plugin import BaseMatcherPlugin
from luna_plugins.matcher_plugins.base_struct import Face, FaceMatchResult, MatchUnitType

answer = []


class Control(BaseBackgroundPlugin):
    async def initialize(self):
        self.addRoute("/answer", self.set, methods={"post"})

    async def set(self, request):
        answer[:] = request.json()
        return {"answer": answer}


class Fixed(BaseMatcherPlugin):
    availableReferenceTypes = frozenset([MatchUnitType.descriptor])
    availableCandidateTypes = frozenset([MatchUnitType.face])

    def getAvailableTargets(self, origin):
        return frozenset(["face_id", "similarity"])

    def getMatchingCost(self, request):
        return 1.0

    async def match(self, request):
        return [FaceMatchResult(Face(face_id), similarity) for face_id, similarity in answer]
"#;

#[test]
fn answers_outside_the_filters_or_with_repeats_fall_back() {
    let s = Service::spawn(&[("fixed.py", FIXED_ANSWER)], "[plugins]\nLUNA_MATCHER_PROXY_ACTIVE_PLUGINS = [\"fixed\"]\n");
    s.ready();
    let list = s.call("POST", "/1/lists", Some(&json!({"account_id": ACCOUNT}))).json()["list_id"].as_str().unwrap().to_owned();
    let faces: Vec<(String, Vec<u8>)> = (0..5u64)
        .map(|i| {
            let d = blend(&descriptor(0), &descriptor(40 + i), 100 * i as usize);
            let body = json!({"account_id": ACCOUNT, "descriptor": {"data": b64(&d)}, "lists": [list]});
            (s.call("POST", "/1/faces", Some(&body)).json()["face_id"].as_str().unwrap().to_owned(), d)
        })
        .collect();
    let probe = descriptor(0);
    let chosen = [&faces[3], &faces[4]];
    // What the default matcher answers: the two chosen faces, best first.
    let mut expected: Vec<(String, f64)> = chosen.iter().map(|(id, d)| (id.clone(), u8_similarity(&probe, d))).collect();
    expected.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let ask = || -> Value {
        let q = json!({"references": [{"type": "descriptor", "data": b64(&probe)}],
                       "candidates": [{"filters": {"origin": "faces", "list_id": list, "face_ids": [chosen[0].0, chosen[1].0]}, "limit": 5}]});
        s.call("POST", "/1/matcher/faces", Some(&q)).json()[0]["matches"][0].clone()
    };
    let answered = |set: &Value| -> Vec<(String, f64)> {
        set["result"].as_array().unwrap().iter().map(|r| (r["face"]["face_id"].as_str().unwrap().to_owned(), r["similarity"].as_f64().unwrap())).collect()
    };

    // A well-formed answer is taken as the plugin gives it.
    s.call("POST", "/answer", Some(&json!([[chosen[0].0, 0.5], [chosen[1].0, 0.25]])));
    assert_eq!(answered(&ask()), vec![(chosen[0].0.clone(), 0.5), (chosen[1].0.clone(), 0.25)]);
    let errors = || s.plugin("fixed")["errors"].as_u64().unwrap();
    assert_eq!(errors(), 0);

    // A face of the list that face_ids leaves out: malformed, the default matcher answers.
    s.call("POST", "/answer", Some(&json!([[faces[0].0, 0.99], [chosen[0].0, 0.5]])));
    let set = ask();
    assert_eq!((answered(&set), set["total_found"].as_u64()), (expected.clone(), Some(2)));
    // Counted by the plugin's actor, after the answer has gone out.
    s.wait_for(|| errors() == 1, "the malformed answer is counted");

    // The same face twice, not adjacent once sorted by similarity: malformed too.
    s.call("POST", "/answer", Some(&json!([[chosen[0].0, 0.9], [chosen[1].0, 0.5], [chosen[0].0, 0.1]])));
    let set = ask();
    assert_eq!((answered(&set), set["total_found"].as_u64()), (expected, Some(2)));
    s.wait_for(|| errors() == 2, "the second malformed answer is counted");
}
