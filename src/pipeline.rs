//! The proxy pipeline of roles standalone and proxy: each sub-request of
//! `/1/matcher/faces` (one reference against one candidate set) goes to the
//! matcher that states the lowest cost, a matching plugin or the default
//! matcher (ties to the default). A plugin that raises `Rematch`, fails, times
//! out or answers something malformed hands its sub-request back, and the
//! default matcher answers it in the same request; one that answers an
//! `ErrorMatchResult` fails that sub-request alone with its error. The
//! default matcher is the in-process engine (standalone) or the remote
//! matchers (proxy).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use luna_actors::plugin::MatchCall;
use luna_actors::MatchAnswer;
use luna_actors::PluginHost;
use luna_core::api::{MatchFacesRequest, ReferenceMatches};
use luna_core::matching::SubResult;
use luna_core::planning::SubRequest;
use luna_core::{Core, Error, ErrorCode, Result};
use uuid::Uuid;

use crate::proxy::Matchers;

/// Who answered a sub-request, for its `matching` monitoring point.
#[derive(Debug, Clone)]
pub struct SubReport {
    pub matcher: String,
    pub candidates_scanned: u64,
    pub seconds: f64,
}

/// Answer a matching request; with `plugins`, through the matching plugins;
/// with `remote`, the default matcher is the remote matchers.
pub async fn match_faces(
    core: &Core,
    plugins: Option<&PluginHost>,
    remote: Option<&Matchers>,
    account: Option<Uuid>,
    request_id: &str,
    req: MatchFacesRequest,
) -> Result<(Vec<ReferenceMatches>, Vec<SubReport>)> {
    let plan = core.plan_faces(account, req).await?;
    let count = plan.subs().count();
    let mut answered: Vec<Option<Result<SubResult>>> = (0..count).map(|_| None).collect();
    let mut reports: Vec<Option<SubReport>> = vec![None; count];
    if let Some(plugins) = plugins {
        let calls: Arc<Vec<MatchCall>> = Arc::new(plan.subs().map(|sub| match_call(&sub, account, request_id)).collect());
        let chosen = plugins.choose(&calls).await;
        let runs = chosen.into_iter().enumerate().filter_map(|(i, choice)| {
            let choice = choice?;
            let plugin = choice.plugin().to_owned();
            let calls = calls.clone();
            Some(async move {
                let start = Instant::now();
                let outcome = plugins.run_match(choice, calls, i).await;
                (i, plugin, outcome, start.elapsed())
            })
        });
        let subs: Vec<SubRequest> = plan.subs().collect();
        for (i, plugin, outcome, took) in join_all(runs).await {
            // Rematch, an exception, a timeout: the default matcher answers.
            let Ok(answer) = outcome else { continue };
            let result = match answer {
                MatchAnswer::Error { code, detail } => Err(Error::from_plugin(&plugin, code, &detail)),
                MatchAnswer::Hits { hits, total_found } => {
                    let hits: Option<Vec<(Uuid, f64)>> = hits.iter().map(|(id, s)| id.parse().ok().map(|id| (id, *s))).collect();
                    match hits.and_then(|h| core.check_answer(&subs[i], &h, total_found)) {
                        Some(result) => Ok(result),
                        None => {
                            plugins.count_error(
                                &plugin,
                                "malformed match result: a face that is not a uuid, unknown, of another version or outside the filters".into(),
                            );
                            continue;
                        }
                    }
                }
            };
            let candidates_scanned = result.as_ref().map_or(0, |r| r.candidates_scanned);
            reports[i] = Some(SubReport { matcher: plugin, candidates_scanned, seconds: took.as_secs_f64() });
            answered[i] = Some(result);
        }
    }
    if let Some(remote) = remote {
        let subs: Vec<SubRequest> = plan.subs().collect();
        let todo: Vec<usize> = (0..count).filter(|&i| answered[i].is_none()).collect();
        remote.answer(&subs, &todo, &mut answered, &mut reports, account, request_id, core.known_position()).await;
        // Nothing could be answered anywhere: the request itself is 31011, as a matcher's own would be.
        let mut errors = answered.iter().map(|a| a.as_ref().and_then(|r| r.as_ref().err()).filter(|e| e.code == ErrorCode::NoMatcher));
        if let Some(Some(first)) = errors.next().filter(|_| count > 0) {
            if errors.all(|e| e.is_some()) {
                return Err(first.clone());
            }
        }
    }
    let start = Instant::now();
    let (references, scanned) = core.run_plan(plan, answered).await?;
    let default_time: Duration = start.elapsed();
    let reports = reports
        .into_iter()
        .zip(scanned)
        .map(|(r, candidates_scanned)| r.unwrap_or(SubReport { matcher: "default".into(), candidates_scanned, seconds: default_time.as_secs_f64() }))
        .collect();
    Ok((references, reports))
}

fn match_call(sub: &SubRequest, account: Option<Uuid>, request_id: &str) -> MatchCall {
    let spec = sub.spec();
    MatchCall {
        reference_type: spec.reference_type,
        reference_id: spec.reference_id,
        descriptor: spec.descriptor.payload,
        descriptor_version: spec.descriptor.version,
        filters: serde_json::to_string(&spec.filters).unwrap_or_default(),
        targets: spec.targets.iter().map(|t| t.as_str().to_owned()).collect(),
        limit: spec.limit,
        threshold: spec.threshold,
        account_id: account.map(|a| a.to_string()),
        request_id: request_id.to_owned(),
    }
}
