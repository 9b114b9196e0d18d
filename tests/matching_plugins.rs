//! Matching plugins written against LUNA's matching interface, loaded by the
//! real binary from real plugin files: `IMatcher`, `MatchResult` and
//! `ErrorMatchResult`, `availableDescriptorTypes`, the matching timeout, and
//! the shipped `list_cache` plugin.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// Creates a list of `n` faces similar to `descriptor(0)` in varying degree;
/// returns the list id and the face ids.
fn list_of(s: &Service, n: u64, seed: u64) -> (String, Vec<String>) {
    let list = s.call("POST", "/1/lists", Some(&json!({"account_id": ACCOUNT}))).json()["list_id"].as_str().unwrap().to_owned();
    let faces = (0..n).map(|i| face(s, &[&list], seed + i, (i as usize % 9) * 50)).collect();
    (list, faces)
}

/// Creates a face in `lists` made of `descriptor(0)`'s first `keep` elements.
fn face(s: &Service, lists: &[&str], seed: u64, keep: usize) -> String {
    let body = json!({"account_id": ACCOUNT, "descriptor": {"data": b64(&blend(&descriptor(0), &descriptor(seed), keep))}, "lists": lists, "user_data": format!("u{seed}")});
    let r = s.call("POST", "/1/faces", Some(&body));
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    r.json()["face_id"].as_str().unwrap().to_owned()
}

/// `POST /1/matcher/faces` in the account; the answer must be 200.
fn matched(s: &Service, query: &Value) -> Value {
    let r = s.call("POST", &format!("/1/matcher/faces?account_id={ACCOUNT}"), Some(query));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()
}

const TARGETS: [&str; 4] = ["face_id", "similarity", "user_data", "lists"];

/// A plugin written against LUNA's interface: the matching logic is an
/// `IMatcher` of its own, answers are `MatchResult`s and `ErrorMatchResult`s,
/// and a body-descriptor matcher that would win every sub-request if it were
/// asked.
const IMATCHER_PLUGIN: &str = r#"
import luna_matcher
from luna_plugins.matcher_plugins.base_plugin import BaseMatcherPlugin
from luna_plugins.matcher_plugins.base_struct import (
    DescriptorType, ErrorMatchResult, Face, FaceMatchResult, IMatcher, MatchResult, MatchUnitType)


class ListMatcher(IMatcher):
    availableReferenceTypes = frozenset([MatchUnitType.descriptor])
    availableCandidateTypes = frozenset([MatchUnitType.face])
    availableDescriptorTypes = frozenset([DescriptorType.face])

    def getAvailableTargets(self, origin):
        return frozenset(["face_id", "similarity"])

    def getMatchingCost(self, request):
        # Plain list filters only: a set with face_ids is the default matcher's.
        return 10.0 if set(request.filters) == {"origin", "list_id"} else float("inf")

    async def match(self, request):
        if request.reference.id == "evicted":
            return ErrorMatchResult(22001, f"list {request.filters['list_id']} was evicted")
        if request.reference.id == "backend-down":
            return ErrorMatchResult(4242, "backend down")
        faces = await luna_matcher.store.list_faces(request.filters["list_id"])
        descriptors = luna_matcher.DescriptorSet(request.reference.descriptor_version)
        for f in faces:
            descriptors.add(f["face_id"], f["descriptor"])
        hits = descriptors.match(request.reference.descriptor, request.limit, request.threshold)
        return MatchResult([FaceMatchResult(Face(face_id), similarity) for face_id, similarity in hits])


class Plugin(ListMatcher, BaseMatcherPlugin):
    pass


class BodyMatcher(BaseMatcherPlugin):
    availableReferenceTypes = frozenset([MatchUnitType.descriptor])
    availableCandidateTypes = frozenset([MatchUnitType.face])
    availableDescriptorTypes = frozenset([DescriptorType.body])

    def getAvailableTargets(self, origin):
        return frozenset(["face_id"])

    def getMatchingCost(self, request):
        return 1.0

    async def match(self, request):
        return ErrorMatchResult(10001, "a body matcher answered a face sub-request")
"#;

#[test]
fn an_imatcher_plugin_answers_and_an_error_match_result_fails_its_candidate_set_only() {
    let s = Service::spawn(&[("imatcher.py", IMATCHER_PLUGIN)], "[plugins]\nLUNA_MATCHER_PROXY_ACTIVE_PLUGINS = [\"imatcher\"]\n");
    s.ready();
    assert_eq!(s.plugin("imatcher")["kind"], "matching");
    let (list, _) = list_of(&s, 20, 100);
    let probe = b64(&descriptor(0));
    let reference = |id: &str| json!({"type": "descriptor", "id": id, "data": probe});
    let by_plugin = json!({"filters": {"origin": "faces", "list_id": list}, "limit": 5, "targets": TARGETS});
    let by_default = json!({"filters": {"origin": "faces", "list_id": list, "face_ids": []}, "limit": 5, "targets": TARGETS});
    let q = json!({"references": [reference("ok"), reference("evicted"), reference("backend-down")], "candidates": [by_plugin, by_default]});
    let answer = matched(&s, &q);
    let sets = |r: usize| answer[r]["matches"].as_array().unwrap().clone();

    let (ok, default) = (&sets(0)[0], &sets(0)[1]);
    assert_eq!(default["result"].as_array().unwrap().len(), 5, "{default}");
    assert_eq!(ok["result"], default["result"], "the plugin's MatchResult, targets filled from the store, is the default matcher's answer");
    assert!(ok.get("error").is_none() && default.get("error").is_none(), "{ok}");
    assert_eq!((ok["total_found"].as_u64(), default["total_found"].as_u64()), (Some(5), Some(20)), "without totalFound, the faces answered count");

    // The error is the candidate set's alone: the other set of the same
    // reference, and the other references, are answered.
    let evicted = &sets(1)[0];
    assert_eq!(evicted["error"]["error_code"], 22001, "{evicted}");
    assert_eq!(evicted["error"]["desc"], "List not found");
    assert_eq!(evicted["error"]["detail"], format!("list {list} was evicted"));
    assert_eq!(evicted["error"]["link"], "/1/docs/errors#error-22001");
    assert_eq!((evicted["result"].clone(), evicted["total_found"].clone()), (json!([]), json!(0)));
    assert_eq!(sets(1)[1], *default, "the default matcher's set of the same reference");
    assert_eq!(sets(2)[1], *default);

    // A code outside the error table is 10013, naming the plugin and its code.
    let odd = &sets(2)[0]["error"];
    assert_eq!((odd["error_code"].as_u64(), odd["desc"].as_str()), (Some(10013), Some("Matching plugin answered with an error")), "{odd}");
    assert_eq!(odd["detail"], "plugin imatcher answered error 4242: backend down");

    // An ErrorMatchResult is an answer, not a failure of the plugin; the
    // body-descriptor matcher was never asked, or its 10001 would show.
    let p = s.plugin("imatcher");
    assert_eq!((p["errors"].as_u64(), p["restarts"].as_u64(), p["state"].as_str()), (Some(0), Some(0), Some("running")), "{p}");
    assert!(!answer.to_string().contains("10001"), "{answer}");
}

/// A matching plugin that hangs where the test says, through a route.
const HANGING_PLUGIN: &str = r#"
import asyncio
import time
from luna_plugins.base.plugins_meta.base_plugins import BaseBackgroundPlugin
from luna_plugins.matcher_plugins.base_plugin import BaseMatcherPlugin
from luna_plugins.matcher_plugins.base_struct import MatchResult, MatchUnitType

mode = {"hang": None}


class Control(BaseBackgroundPlugin):
    async def initialize(self):
        self.addRoute("/hang/{where}", self.set, methods={"post"})

    async def set(self, request):
        mode["hang"] = request.match_info["where"]
        return mode


class Hanging(BaseMatcherPlugin):
    availableReferenceTypes = frozenset([MatchUnitType.descriptor])
    availableCandidateTypes = frozenset([MatchUnitType.face])

    def getAvailableTargets(self, origin):
        return frozenset(["face_id", "similarity"])

    def getMatchingCost(self, request):
        if mode["hang"] == "cost":
            time.sleep(60)
        return 10.0 if set(request.filters) == {"origin", "list_id"} else float("inf")

    async def match(self, request):
        if mode["hang"] == "match":
            await asyncio.sleep(60)
        while mode["hang"] == "stubborn":  # ignores its cancellation at the deadline
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                pass
        return MatchResult([])
"#;

#[test]
fn a_hanging_matching_plugin_costs_its_matching_timeout_and_the_default_matcher_answers() {
    // The general plugin timeout is far above the matching timeout (1 s by default).
    let config = "[plugins]\nLUNA_MATCHER_PROXY_ACTIVE_PLUGINS = [\"hanging\"]\ntimeout = \"10s\"\nbackoff_initial = \"50ms\"\n";
    let s = Service::spawn(&[("hanging.py", HANGING_PLUGIN)], config);
    s.ready();
    let (list, _) = list_of(&s, 12, 200);
    let set = |extra: bool| {
        let mut filters = json!({"origin": "faces", "list_id": list});
        if extra {
            filters["face_ids"] = json!([]);
        }
        json!({"filters": filters, "limit": 4, "targets": TARGETS})
    };
    let q = json!({"references": [{"type": "descriptor", "data": b64(&descriptor(0))}], "candidates": [set(false), set(true)]});
    let answered = |q: &Value| {
        let start = Instant::now();
        let answer = matched(&s, q);
        (answer[0]["matches"][0].clone(), answer[0]["matches"][1].clone(), start.elapsed())
    };
    let (plugin, default, _) = answered(&q);
    assert_eq!(plugin["result"], json!([]), "the plugin answers while it does not hang");
    assert_eq!(default["result"].as_array().unwrap().len(), 4);

    // A match that ignores its cancellation is given up at the deadline and its grace.
    for hang in ["match", "stubborn", "cost"] {
        assert_eq!(s.call("POST", &format!("/hang/{hang}"), None).status, 200);
        let (fallback, again, took) = answered(&q);
        assert_eq!(fallback["result"], default["result"], "hanging in {hang}: the default matcher answers the plugin's set");
        assert_eq!(again, default);
        assert!(took < Duration::from_secs(5), "hanging in {hang}: {took:?}, not the plugin timeout of 10 s");
    }
    // A hang in match is counted; one in getMatchingCost restarts the plugin, as any timeout there.
    s.wait_for(|| s.plugin("hanging")["restarts"] == 1 && s.plugin("hanging")["state"] == "running", "the plugin is restarted");
    let p = s.plugin("hanging");
    assert!(p["errors"].as_u64().unwrap() >= 1, "{p}");
    let (plugin, _, _) = answered(&q);
    assert_eq!(plugin["result"], json!([]), "the restarted plugin answers again");
}

/// `/list-cache` of the shipped plugin, one list's entry.
fn held(s: &Service, list: &str) -> Value {
    s.call("GET", "/list-cache", None).json()["lists"][list].clone()
}

#[test]
fn list_cache_answers_as_the_built_in_matcher_and_declines_lists_it_does_not_hold() {
    // The lists exist before the plugin is configured with them.
    let data = tempfile::tempdir().unwrap();
    let mut first = Service::launch(&[], "", &[], Some(data.path()));
    first.ready();
    let (cached, faces) = list_of(&first, 8, 300);
    let copy = first.call("POST", "/1/lists", Some(&json!({"account_id": ACCOUNT}))).json()["list_id"].as_str().unwrap().to_owned();
    let patch = first.call("PATCH", &format!("/1/lists/{copy}/faces"), Some(&json!({"action": "attach", "face_ids": faces})));
    assert_eq!(patch.status, 204);
    let (big, _) = list_of(&first, 11, 400);
    assert!(first.terminate().success());

    let (url, bodies) = receiver();
    let config = format!(
        "[plugins]\nLUNA_MATCHER_PROXY_ACTIVE_PLUGINS = [\"list_cache\", \"request_monitoring\"]\n\
         [plugins.config.list_cache]\nlists = [\"{cached}\", \"{big}\"]\nmax_list_size = 10\n\
         [plugins.config.request_monitoring]\nurl = \"{url}\"\nflush_interval = 0.1\n"
    );
    let plugins = [("list_cache.py", shipped_plugin("list_cache.py")), ("request_monitoring.py", shipped_plugin("request_monitoring.py"))];
    let plugins: Vec<(&str, &str)> = plugins.iter().map(|(n, p)| (*n, p.as_str())).collect();
    let s = Service::launch(&plugins, &config, &[], Some(data.path()));
    s.ready();
    assert_eq!(s.plugin("list_cache")["kind"], "matching+background");
    s.wait_for(|| held(&s, &cached)["state"] == "held" && held(&s, &big)["state"] == "too_large", "the lists are loaded or declined");
    assert_eq!(held(&s, &cached)["faces"], 8);

    // The same reference against the held list, its copy (the default
    // matcher's) and the oversized list (declined: the default matcher's).
    let ask = |threshold: f64| {
        let set = |list: &str| json!({"filters": {"origin": "faces", "list_id": list}, "limit": 5, "threshold": threshold, "targets": TARGETS});
        let references = json!([{"type": "descriptor", "data": b64(&descriptor(0))}, {"type": "face", "id": faces[2]}]);
        let answer = matched(&s, &json!({"references": references, "candidates": [set(&cached), set(&copy), set(&big)]}));
        answer.as_array().unwrap().iter().map(|r| r["matches"].clone()).collect::<Vec<_>>()
    };
    let lines = || bodies.lock().unwrap().join("\n");
    let count = |matcher: &str| lines().lines().filter(|l| l.starts_with("matching,") && l.contains(&format!(",matcher={matcher},"))).count();
    let check = |threshold: f64| {
        ask(threshold)
            .into_iter()
            .map(|sets| {
                assert_eq!((&sets[0]["result"], &sets[0]["total_found"]), (&sets[1]["result"], &sets[1]["total_found"]), "threshold {threshold}: {sets}");
                assert!(!sets[2]["result"].as_array().unwrap().is_empty() || threshold > 0.0, "the oversized list is answered: {sets}");
                sets[0]["result"].as_array().unwrap().len()
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(check(0.0), [5, 5]);
    s.wait_for(|| count("list_cache") == 2 && count("default") == 4, "matching points name who answered each sub-request");
    let above = check(0.6);
    assert!(above[0] < 5, "the threshold cuts the answer: {above:?}");

    // A write to another list leaves the held copy current.
    let loaded_at = held(&s, &cached)["loaded_at"].clone();
    let elsewhere = face(&s, &[&big], 501, 490);
    assert_eq!((&held(&s, &cached)["state"], &held(&s, &cached)["loaded_at"]), (&json!("held"), &loaded_at), "a write to another list");
    let sets = &ask(0.0)[0];
    assert_eq!(sets[2]["result"][0]["face"]["face_id"], elsewhere.as_str(), "the other list has the new face: {sets}");
    assert_eq!((&sets[0]["result"], &sets[0]["total_found"]), (&sets[1]["result"], &json!(8)), "{sets}");
    // Three asks of six sub-requests so far, the held list's two each by the plugin.
    s.wait_for(|| count("list_cache") + count("default") == 18, "every sub-request is reported");
    assert_eq!(count("list_cache"), 6, "the plugin answers on the held list after a write to another");

    // A write to the held list: the very next match has the new face (the
    // copy is stale at once, so the default matcher answers); once the list
    // is loaded again, the plugin answers with it.
    let newcomer = face(&s, &[&cached, &copy], 500, 480);
    let fresh = |sets: &Value| {
        assert_eq!((&sets[0]["result"], &sets[0]["total_found"]), (&sets[1]["result"], &sets[1]["total_found"]), "{sets}");
        assert_eq!(sets[0]["total_found"], 9);
        assert_eq!(sets[0]["result"][0]["face"]["face_id"], newcomer.as_str(), "the newcomer is the best: {sets}");
    };
    fresh(&ask(0.0)[0]);
    s.wait_for(|| held(&s, &cached)["state"] == "held" && held(&s, &cached)["faces"] == 9, "the list is loaded again after the write");
    fresh(&ask(0.0)[0]);
    s.wait_for(|| count("list_cache") + count("default") == 30, "every sub-request is reported");
    // The first ask after the write may or may not have found the list loaded again; the last did.
    assert!(count("list_cache") >= 8, "the plugin answers from the list loaded again: {}", count("list_cache"));
    assert_eq!(s.plugin("list_cache")["errors"], 0, "{}", s.plugin("list_cache"));
}

/// A matching plugin stating `{cost}` for every sub-request and answering no faces.
fn priced(cost: f64) -> String {
    format!(
        r#"
from luna_plugins.matcher_plugins.base_plugin import BaseMatcherPlugin
from luna_plugins.matcher_plugins.base_struct import MatchResult, MatchUnitType


class Priced(BaseMatcherPlugin):
    availableReferenceTypes = frozenset([MatchUnitType.descriptor])
    availableCandidateTypes = frozenset([MatchUnitType.face])

    def getAvailableTargets(self, origin):
        return frozenset(["face_id", "similarity"])

    def getMatchingCost(self, request):
        return {cost:?}

    async def match(self, request):
        return MatchResult([], totalFound=0)
"#
    )
}

#[test]
fn the_cheapest_matcher_answers_and_the_others_are_not_asked_to_match() {
    // Two plugins below the default matcher's cost (100): the cheaper answers.
    let (cheaper, dearer) = (priced(5.0), priced(10.0));
    let s = Service::spawn(&[("cheaper.py", &cheaper), ("dearer.py", &dearer)], "[plugins]\nLUNA_MATCHER_PROXY_ACTIVE_PLUGINS = [\"dearer\", \"cheaper\"]\n");
    s.ready();
    let (list, _) = list_of(&s, 6, 300);
    let q = json!({"references": [{"type": "descriptor", "data": b64(&descriptor(0))}],
                   "candidates": [{"filters": {"origin": "faces", "list_id": list}, "limit": 3}]});
    assert_eq!(matched(&s, &q)[0]["matches"][0]["result"], json!([]), "a plugin answers");
    assert_eq!(s.plugin("cheaper")["calls"], 1);
    assert_eq!(s.plugin("dearer")["calls"], 0);

    // One plugin above it: the default matcher answers, the plugin's match is not called.
    let pricey = priced(1000.0);
    let s = Service::spawn(&[("pricey.py", &pricey)], "[plugins]\nLUNA_MATCHER_PROXY_ACTIVE_PLUGINS = [\"pricey\"]\n");
    s.ready();
    let (list, _) = list_of(&s, 6, 300);
    let q = json!({"references": [{"type": "descriptor", "data": b64(&descriptor(0))}],
                   "candidates": [{"filters": {"origin": "faces", "list_id": list}, "limit": 3}]});
    assert_eq!(matched(&s, &q)[0]["matches"][0]["result"].as_array().unwrap().len(), 3, "the default matcher answers");
    assert_eq!(s.plugin("pricey")["calls"], 0);
}
