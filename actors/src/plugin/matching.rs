//! Matching plugins: their costs for the sub-requests of a request, and their answers.

use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use super::{bridge, PluginActor};
use crate::failure::Failure;
use crate::host::{MatchAnswer, Wait};
use crate::python::host;
use crate::status::{PluginKind, PluginState};

/// One sub-request of the proxy pipeline, as matching plugins get it.
#[derive(Debug, Clone)]
pub struct MatchCall {
    /// `descriptor` or `face`.
    pub reference_type: &'static str,
    /// The reference's id, if the request gave one.
    pub reference_id: Option<String>,
    /// The reference's descriptor payload.
    pub descriptor: Vec<u8>,
    /// Its version.
    pub descriptor_version: u32,
    /// The candidate set's filters as JSON, as the request gave them.
    pub filters: String,
    /// The fields the answer's faces carry.
    pub targets: Vec<String>,
    /// Most faces to answer.
    pub limit: usize,
    /// Least similarity a face needs.
    pub threshold: f64,
    /// The request's `Luna-Account-Id`, if it has one.
    pub account_id: Option<String>,
    /// The request's `Luna-Request-Id`.
    pub request_id: String,
}

impl MatchCall {
    pub(crate) fn to_python<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let reference = PyDict::new(py);
        reference.set_item("type", self.reference_type)?;
        reference.set_item("id", &self.reference_id)?;
        reference.set_item("descriptor", PyBytes::new(py, &self.descriptor))?;
        reference.set_item("descriptor_version", self.descriptor_version)?;
        let d = PyDict::new(py);
        d.set_item("reference", reference)?;
        d.set_item("filters", &self.filters)?;
        d.set_item("targets", &self.targets)?;
        d.set_item("limit", self.limit)?;
        d.set_item("threshold", self.threshold)?;
        d.set_item("account_id", &self.account_id)?;
        d.set_item("request_id", &self.request_id)?;
        Ok(d)
    }
}

/// The plugin's cheapest offer for each sub-request: (cost, instance), or
/// None where no matching class of it takes the sub-request.
#[derive(Message)]
#[rtype(result = "Vec<Option<(f64, usize)>>")]
pub(crate) struct Costs(pub Arc<Vec<MatchCall>>);

impl Handler<Costs> for PluginActor {
    type Result = ResponseActFuture<Self, Vec<Option<(f64, usize)>>>;

    /// `getMatchingCost` runs on the plugin's worker thread, under the
    /// plugin's matching timeout: one that blocks holds neither this actor nor the
    /// event loop, and is restarted. This thread never takes the GIL for it.
    fn handle(&mut self, Costs(calls): Costs, _: &mut Self::Context) -> Self::Result {
        let none = vec![None; calls.len()];
        let serves = self.instances.iter().any(|i| i.kind == PluginKind::Matching);
        let (instances, limit) = (self.instances.clone(), self.setup.settings.matching_timeout);
        let worker = if self.state == PluginState::Running && serves { self.worker() } else { None };
        let Some(worker) = worker else {
            return Box::pin(fut::ready(none));
        };
        let costs = worker.call(limit, "getMatchingCost", move || {
            bridge(|py| {
                let matchers = instances.iter().enumerate().filter(|(_, i)| i.kind == PluginKind::Matching).map(|(n, i)| (n, i.object.bind(py)));
                let requests = calls.iter().map(|c| c.to_python(py)).collect::<PyResult<Vec<_>>>()?;
                host().matching_costs(py, matchers, requests)
            })
        });
        Box::pin(costs.into_actor(self).map(move |outcome, act, ctx| match outcome {
            Ok(offers) if offers.len() == none.len() => offers,
            Ok(_) => none,
            Err(Failure::NoAnswer(_)) => none,
            Err(e) => {
                let what = if matches!(e, Failure::TimedOut(_)) { "getMatchingCost timed out" } else { "getMatchingCost raised" };
                act.fail_with(ctx, what, &e);
                none
            }
        }))
    }
}

/// Answer sub-request `index` of `calls` with instance `instance`.
#[derive(Message)]
#[rtype(result = "Result<MatchAnswer, MatchFailure>")]
pub(crate) struct Match {
    /// Every sub-request of the request.
    pub calls: Arc<Vec<MatchCall>>,
    /// Which one to answer.
    pub index: usize,
    /// The plugin's matching instance that offered the lowest cost.
    pub instance: usize,
}

/// Why a matching plugin did not answer a sub-request; the default matcher takes it.
#[derive(Debug)]
pub enum MatchFailure {
    /// The plugin handed the sub-request back.
    Rematch,
    /// Not running, or the instance is gone after a restart.
    Unavailable,
    /// The plugin's own time ran past its timeout.
    TimedOut(String),
    /// An unexpected exception, or a result that is not an answer.
    Failed(String),
}

impl Handler<Match> for PluginActor {
    type Result = ResponseActFuture<Self, Result<MatchAnswer, MatchFailure>>;

    fn handle(&mut self, msg: Match, _: &mut Self::Context) -> Self::Result {
        let object = self.instances.get(msg.instance).filter(|i| i.kind == PluginKind::Matching).map(|i| i.object.clone());
        let (PluginState::Running, Some(object), Some(context)) = (self.state, object, &self.context) else {
            return Box::pin(fut::ready(Err(MatchFailure::Unavailable)));
        };
        // No GIL here: the request is made on the loop thread.
        let answered = host().match_(object, msg.calls, msg.index, self.setup.settings.matching_timeout, context);
        let start = Instant::now();
        Box::pin(answered.answer(Wait::Caller).into_actor(self).map(move |outcome, act, ctx| {
            act.setup.status.call(start.elapsed());
            match outcome {
                Ok(answer) => Ok(MatchAnswer::from(answer)),
                Err(Failure::Rematch) => Err(MatchFailure::Rematch),
                Err(Failure::TimedOut(e)) => {
                    act.setup.status.error(format!("match timed out: {e}"), None);
                    Err(MatchFailure::TimedOut(e))
                }
                // The event loop did not answer in time: not the plugin's own doing.
                Err(Failure::NoAnswer(e)) => Err(MatchFailure::TimedOut(e)),
                // Counted; only an unexpected exception restarts the plugin.
                Err(Failure::Malformed(e)) => {
                    act.setup.status.error(format!("malformed match result: {e}"), None);
                    Err(MatchFailure::Failed(e))
                }
                Err(e) => {
                    act.fail_with(ctx, "match raised", &e);
                    Err(MatchFailure::Failed(e.summary()))
                }
            }
        }))
    }
}
