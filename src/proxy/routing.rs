//! Where a default sub-request goes, as LUNA's proxy routes: a sub-request on
//! a list to a ready matcher that caches the list, any other to one that
//! caches every list, the least busy of them (fewest calls under way); a list
//! split in shards to one matcher per shard, their answers merged exactly.
//! The sub-requests of one request bound for the same matcher travel in one
//! call (msgpack). A matcher that fails (no connection, reset, timeout, 5xx,
//! an answer that does not decode or does not fit) has its sub-requests sent
//! to another eligible matcher in the same request; with none left, the
//! sub-request answers 31011 and the others are still answered.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use luna_core::matching::SubResult;
use luna_core::planning::SubRequest;
use luna_core::store::Position;
use luna_core::subrequests::{merge_shards, RemoteAnswer, RemoteSubRequest, SubRequestsBody};
use luna_core::{Error, ErrorCode};
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use uuid::Uuid;

use super::{describe, Matchers, Remote};
use crate::http::codec::{from_msgpack, to_msgpack};
use crate::pipeline::SubReport;

/// What a sub-request needs: one matcher holding every candidate, or one per
/// shard of a list split in `count`.
#[derive(Clone, Copy, PartialEq)]
enum Need {
    Whole,
    Shards(u32),
}

/// A sub-request, or one shard of it, on its way to a matcher.
struct Part {
    sub: usize,
    shard: Option<u32>,
    /// Matchers that failed it in this request.
    tried: Vec<usize>,
    answer: Option<(SubResult, usize, Duration)>,
}

/// One default sub-request: what it needs, and its error once it has one.
struct Routed {
    need: Result<Need, Error>,
    /// Why the last matcher that had it did not answer.
    last_failure: Option<String>,
}

/// Counts a call under way for "least busy", until dropped.
struct InFlight<'a>(&'a Remote);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Matchers {
    /// Answer the sub-requests `todo` of `subs` on the matchers: every one gets
    /// its result or its error in `answered`, and who answered in `reports`.
    /// `position`: the store position the answers must include.
    #[allow(clippy::too_many_arguments)]
    pub async fn answer(
        &self,
        subs: &[SubRequest<'_>],
        todo: &[usize],
        answered: &mut [Option<luna_core::Result<SubResult>>],
        reports: &mut [Option<SubReport>],
        account: Option<Uuid>,
        request_id: &str,
        position: Option<Position>,
    ) {
        let bodies: BTreeMap<usize, RemoteSubRequest> = todo.iter().map(|&i| (i, subs[i].remote())).collect();
        let mut routed: BTreeMap<usize, Routed> = todo.iter().map(|&i| (i, Routed { need: self.need(subs[i].list_id()), last_failure: None })).collect();
        let mut parts: Vec<Part> = Vec::new();
        for (&sub, r) in &routed {
            match r.need {
                Ok(Need::Whole) => parts.push(Part { sub, shard: None, tried: Vec::new(), answer: None }),
                Ok(Need::Shards(count)) => parts.extend((0..count).map(|index| Part { sub, shard: Some(index), tried: Vec::new(), answer: None })),
                Err(_) => {}
            }
        }
        loop {
            // Each part still waiting goes to the least busy matcher that can take it.
            let mut calls: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
            for (p, part) in parts.iter().enumerate() {
                let r = &routed[&part.sub];
                let Ok(need) = r.need else { continue };
                if part.answer.is_some() {
                    continue;
                }
                let want = match need {
                    Need::Whole => None,
                    Need::Shards(count) => Some((count, part.shard.unwrap_or(0))),
                };
                match self.least_busy(subs[part.sub].list_id(), want, &part.tried) {
                    Some(m) => calls.entry(m).or_default().push(p),
                    None => {
                        let why = r.last_failure.clone();
                        routed.get_mut(&part.sub).expect("routed").need = Err(no_matcher(subs[part.sub].list_id(), why));
                    }
                }
            }
            // A sub-request one of whose shards found no matcher is not sent at all.
            calls.values_mut().for_each(|ps| ps.retain(|&p| routed[&parts[p].sub].need.is_ok()));
            calls.retain(|_, ps| !ps.is_empty());
            if calls.is_empty() {
                break;
            }
            let sent = calls.iter().map(|(&m, ps)| {
                let body = SubRequestsBody { account_id: account, subrequests: ps.iter().map(|&p| bodies[&parts[p].sub].clone()).collect() };
                let retry = ps.iter().any(|&p| !parts[p].tried.is_empty());
                self.call(m, body, retry, request_id, position)
            });
            let outcomes = futures_util::future::join_all(sent).await;
            for ((m, ps), outcome) in calls.into_iter().zip(outcomes) {
                let remote = &self.remotes[m];
                let (answers, took) = match outcome {
                    Ok(a) => a,
                    Err(why) => {
                        for p in ps {
                            parts[p].tried.push(m);
                            routed.get_mut(&parts[p].sub).expect("routed").last_failure = Some(why.clone());
                        }
                        continue;
                    }
                };
                for (p, answer) in ps.into_iter().zip(answers) {
                    let part = &mut parts[p];
                    let r = routed.get_mut(&part.sub).expect("routed");
                    match subs[part.sub].accept(answer) {
                        Ok(Ok(result)) => part.answer = Some((result, m, took)),
                        // Its report was behind what it caches now: another may have it.
                        Ok(Err(e)) if e.code == ErrorCode::NoMatcher => {
                            part.tried.push(m);
                            r.last_failure = Some(format!("matcher {}: {}", remote.name, e.detail));
                        }
                        Ok(Err(e)) => r.need = Err(e),
                        Err(why) => {
                            let why = format!("matcher {} answered a malformed result: {why}", remote.name);
                            remote.errors.fetch_add(1, Ordering::Relaxed);
                            self.failed(remote, &why);
                            log::warn!("{why}");
                            part.tried.push(m);
                            r.last_failure = Some(why);
                        }
                    }
                }
            }
        }
        for (sub, r) in routed {
            let mine: Vec<(SubResult, usize, Duration)> = parts.iter_mut().filter(|p| p.sub == sub).filter_map(|p| p.answer.take()).collect();
            let names: Vec<&str> = mine.iter().map(|(_, m, _)| self.remotes[*m].name.as_str()).collect();
            let seconds = mine.iter().map(|(_, _, t)| t.as_secs_f64()).fold(0.0, f64::max);
            let matcher = if names.is_empty() { "none".to_owned() } else { names.join(",") };
            let result = match r.need {
                Err(e) => Err(e),
                Ok(Need::Whole) => Ok(mine.into_iter().next().expect("a whole answer").0),
                Ok(Need::Shards(_)) => Ok(merge_shards(mine.into_iter().map(|(r, _, _)| r).collect(), subs[sub].limit())),
            };
            let candidates_scanned = result.as_ref().map_or(0, |r| r.candidates_scanned);
            reports[sub] = Some(SubReport { matcher, candidates_scanned, seconds });
            answered[sub] = Some(result);
        }
    }

    /// Whether matcher `m` can take a sub-request on `list_id`: in rotation,
    /// ready, caching the list (or everything), and holding shard `want`
    /// (index of count) or, for None, every face.
    fn eligible(&self, m: usize, list_id: Option<Uuid>, want: Option<(u32, u32)>) -> bool {
        let remote = &self.remotes[m];
        if !remote.in_rotation.load(Ordering::Relaxed) {
            return false;
        }
        let report = remote.report.read();
        let Some(report) = report.as_ref().filter(|r| r.can_match(list_id)) else { return false };
        match (report.scope.shard, want) {
            (None, None) => true,
            (Some(s), Some((count, index))) => s.count == count && s.index == index,
            _ => false,
        }
    }

    /// Whole, when a matcher holds every candidate of `list_id`; else the
    /// smallest shard count whose every shard has a matcher; else 31011.
    fn need(&self, list_id: Option<Uuid>) -> Result<Need, Error> {
        let all = 0..self.remotes.len();
        if all.clone().any(|m| self.eligible(m, list_id, None)) {
            return Ok(Need::Whole);
        }
        let mut counts: Vec<u32> = all.clone().filter_map(|m| self.remotes[m].report.read().as_ref().and_then(|r| r.scope.shard).map(|s| s.count)).collect();
        counts.sort_unstable();
        counts.dedup();
        counts
            .into_iter()
            .find(|&count| (0..count).all(|index| all.clone().any(|m| self.eligible(m, list_id, Some((count, index))))))
            .map(Need::Shards)
            .ok_or_else(|| no_matcher(list_id, None))
    }

    /// The eligible matcher with the fewest calls under way, not in `tried`;
    /// equally busy ones take turns.
    fn least_busy(&self, list_id: Option<Uuid>, want: Option<(u32, u32)>, tried: &[usize]) -> Option<usize> {
        let n = self.remotes.len();
        let start = self.turn.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|k| (start + k) % n)
            .filter(|m| !tried.contains(m) && self.eligible(*m, list_id, want))
            .min_by_key(|&m| self.remotes[m].in_flight.load(Ordering::Relaxed))
    }

    /// One call to matcher `m` with its sub-requests; the answers, one per
    /// sub-request, and how long the call took. A failure is counted
    /// against the matcher.
    async fn call(
        &self,
        m: usize,
        body: SubRequestsBody,
        retry: bool,
        request_id: &str,
        position: Option<Position>,
    ) -> Result<(Vec<RemoteAnswer>, Duration), String> {
        let remote = &self.remotes[m];
        remote.in_flight.fetch_add(1, Ordering::Relaxed);
        let _in_flight = InFlight(remote);
        remote.requests.fetch_add(1, Ordering::Relaxed);
        if retry {
            remote.retries.fetch_add(1, Ordering::Relaxed);
        }
        let start = Instant::now();
        let sent = body.subrequests.len();
        let outcome = async {
            let mut req = self
                .client()
                .post(format!("{}/1/internal/matcher/subrequests", remote.url))
                .header(CONTENT_TYPE, "application/msgpack")
                .header(ACCEPT, "application/msgpack")
                .body(to_msgpack(&body)?);
            if !request_id.is_empty() {
                req = req.header("Luna-Request-Id", request_id);
            }
            if let Some(p) = position {
                req = req.header("Luna-Store-Position", p.to_string());
            }
            let answer = req.send().await.map_err(|e| describe(&e))?;
            let status = answer.status();
            let bytes = answer.bytes().await.map_err(|e| describe(&e))?;
            if !status.is_success() {
                return Err(format!("status {status}: {}", String::from_utf8_lossy(&bytes[..bytes.len().min(300)])));
            }
            let answers: Vec<RemoteAnswer> = from_msgpack(&bytes).map_err(|e| format!("an answer that does not decode: {e}"))?;
            if answers.len() != sent {
                return Err(format!("{} answers to {sent} sub-requests", answers.len()));
            }
            Ok(answers)
        }
        .await;
        let took = start.elapsed();
        remote.latency_us.fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        match outcome {
            Ok(answers) => {
                remote.failures.store(0, Ordering::Relaxed);
                Ok((answers, took))
            }
            Err(why) => {
                let why = format!("matcher {}: {why}", remote.name);
                remote.errors.fetch_add(1, Ordering::Relaxed);
                self.failed(remote, &why);
                log::warn!("{why}");
                Err(why)
            }
        }
    }
}

/// 31011 for a sub-request no matcher can answer, with the last failure if any.
fn no_matcher(list_id: Option<Uuid>, failure: Option<String>) -> Error {
    let what = match list_id {
        Some(l) => format!("no matcher in rotation caches list {l}"),
        None => "no matcher in rotation caches every list".to_owned(),
    };
    Error::new(
        ErrorCode::NoMatcher,
        match failure {
            Some(f) => format!("{f}; {what} besides"),
            None => what,
        },
    )
}
