//! Matching plugins: their costs for the sub-requests of a request, and their
//! answers, asked through the path their actor publishes while they run.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use super::{bridge, Fault, Instance, PluginActor};
use crate::failure::Failure;
use crate::host::{Hosted, MatchAnswer, PlainAnswer, PluginContext, Wait, GRACE};
use crate::python::host;
use crate::status::{PluginKind, PluginStatus};
use crate::worker::Worker;

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

/// How the pipeline reaches a running matching plugin straight from the
/// request's thread, without a hop through its actor: the generation's
/// worker thread, instances, Context and deadline. Its actor publishes one
/// in the plugin's [`MatchingSlot`] while the plugin runs and takes it back
/// when it stops; a failure that restarts the plugin goes back to the
/// actor as a [`Fault`] of the generation that made it.
#[derive(Clone)]
pub(crate) struct MatchingPath {
    worker: Arc<Worker>,
    instances: Arc<Vec<Instance>>,
    context: PluginContext,
    limit: Duration,
    generation: u64,
    status: Arc<PluginStatus>,
    actor: Addr<PluginActor>,
}

/// Where a plugin's actor publishes its [`MatchingPath`]; empty while it does not run.
pub(crate) type MatchingSlot = Mutex<Option<MatchingPath>>;

/// A plugin's offer for one sub-request: its cost and the instance that
/// stated it, and the match already started when the offer won at once.
pub(crate) struct Offer {
    pub cost: f64,
    pub instance: usize,
    pub started: Option<Started>,
}

/// A match started on the worker thread right after its cost: the path
/// (the generation) that answers for it, and when it started.
pub(crate) struct Started {
    path: MatchingPath,
    at: Instant,
    answer: Hosted<PlainAnswer>,
}

impl Started {
    /// Its answer, as [`MatchingPath::answer`] gives one.
    pub async fn answer(self) -> Result<MatchAnswer, MatchFailure> {
        self.path.settle(self.at, self.answer).await
    }
}

impl MatchingPath {
    /// The plugin's cheapest offer for each sub-request, or None where no
    /// matching class of it takes the sub-request. An offer below
    /// `start_below` (the default matcher's cost, when this plugin is the
    /// only one asked) wins at once: its match starts from the worker
    /// thread, a hand-over fewer than through the caller.
    /// `getMatchingCost` runs on the plugin's worker thread, under the
    /// plugin's matching timeout: one that blocks holds neither the caller,
    /// the actor nor the event loop, and its plugin is restarted. Queued
    /// behind other calls, the caller waits at most the timeout and [`GRACE`].
    pub async fn costs(self, calls: Arc<Vec<MatchCall>>, start_below: Option<f64>) -> Vec<Option<Offer>> {
        let count = calls.len();
        let none = || -> Vec<Option<Offer>> { (0..count).map(|_| None).collect() };
        // A call past its deadline retired the worker; the restart brings another.
        if self.worker.retired() {
            return none();
        }
        // Not the path itself: a job queued on the worker keeps no hold on it.
        let (instances, context, limit) = (self.instances.clone(), self.context.clone(), self.limit);
        let asked = self.worker.call(self.limit, "getMatchingCost", move || {
            let offers = bridge(|py| {
                let matchers = instances.iter().enumerate().filter(|(_, i)| i.kind == PluginKind::Matching).map(|(n, i)| (n, i.object.bind(py)));
                let requests = calls.iter().map(|c| c.to_python(py)).collect::<PyResult<Vec<_>>>()?;
                host().matching_costs(py, matchers, requests)
            })?;
            let wins = |cost: f64| start_below.is_some_and(|default| cost < default);
            let offers = offers.into_iter().enumerate().map(|(index, offer)| {
                offer.map(|(cost, instance)| (cost, instance, wins(cost).then(|| start_match(&instances, &context, limit, &calls, index, instance)).flatten()))
            });
            Ok(offers.collect::<Vec<_>>())
        });
        let Ok(asked) = tokio::time::timeout(self.limit + GRACE, asked).await else { return none() };
        match asked {
            Ok(offers) if offers.len() == count => offers
                .into_iter()
                .map(|offer| {
                    offer.map(|(cost, instance, started)| Offer {
                        cost,
                        instance,
                        started: started.map(|(at, answer)| Started { path: self.clone(), at, answer }),
                    })
                })
                .collect(),
            Ok(_) | Err(Failure::NoAnswer(_)) => none(),
            Err(e) => {
                let what = if matches!(e, Failure::TimedOut(_)) { "getMatchingCost timed out" } else { "getMatchingCost raised" };
                self.fail(what, &e);
                none()
            }
        }
    }

    /// Sub-request `index` of `calls` answered by instance `instance`, within
    /// the matching timeout (and [`GRACE`]).
    pub async fn answer(self, calls: Arc<Vec<MatchCall>>, index: usize, instance: usize) -> Result<MatchAnswer, MatchFailure> {
        match self.start(&calls, index, instance) {
            Some(started) => started.answer().await,
            None => Err(MatchFailure::Unavailable),
        }
    }

    fn start(&self, calls: &Arc<Vec<MatchCall>>, index: usize, instance: usize) -> Option<Started> {
        let (at, answer) = start_match(&self.instances, &self.context, self.limit, calls, index, instance)?;
        Some(Started { path: self.clone(), at, answer })
    }

    /// A started match's answer, or why there is none; counted in the plugin's status.
    async fn settle(self, start: Instant, answer: Hosted<PlainAnswer>) -> Result<MatchAnswer, MatchFailure> {
        let outcome = answer.answer(Wait::Caller).await;
        self.status.call(start.elapsed());
        match outcome {
            Ok(answer) => Ok(MatchAnswer::from(answer)),
            Err(Failure::Rematch) => Err(MatchFailure::Rematch),
            Err(Failure::TimedOut(e)) => {
                self.status.error(format!("match timed out: {e}"), None);
                Err(MatchFailure::TimedOut(e))
            }
            // The event loop did not answer in time: not the plugin's own doing.
            Err(Failure::NoAnswer(e)) => Err(MatchFailure::TimedOut(e)),
            // Counted; only an unexpected exception restarts the plugin.
            Err(Failure::Malformed(e)) => {
                self.status.error(format!("malformed match result: {e}"), None);
                Err(MatchFailure::Failed(e))
            }
            Err(e) => {
                self.fail("match raised", &e);
                Err(MatchFailure::Failed(e.summary()))
            }
        }
    }

    /// Have the actor restart the generation this path belongs to.
    fn fail(&self, what: &str, e: &Failure) {
        let error = format!("{what}: {}", e.summary());
        self.actor.do_send(Fault { generation: self.generation, error, traceback: e.traceback().map(str::to_owned) });
    }
}

/// Hand `match()` of `instance` for sub-request `index` to the event loop,
/// where the request is made: no GIL needed. When, and its answer to come;
/// None when `instance` is not a matching class (gone after a restart).
fn start_match(
    instances: &[Instance],
    context: &PluginContext,
    limit: Duration,
    calls: &Arc<Vec<MatchCall>>,
    index: usize,
    instance: usize,
) -> Option<(Instant, Hosted<PlainAnswer>)> {
    let object = instances.get(instance).filter(|i| i.kind == PluginKind::Matching)?.object.clone();
    Some((Instant::now(), host().match_(object, calls.clone(), index, limit, context)))
}

impl PluginActor {
    /// Publish the running generation's [`MatchingPath`], if it has matching classes.
    pub(super) fn open_matching_path(&mut self, ctx: &mut Context<Self>) {
        let Some(context) = self.context.clone() else { return };
        if !self.instances.iter().any(|i| i.kind == PluginKind::Matching) {
            return;
        }
        match Worker::start(&self.setup.name) {
            Ok(worker) => {
                let path = MatchingPath {
                    worker: Arc::new(worker),
                    instances: self.instances.clone(),
                    context,
                    limit: self.setup.settings.matching_timeout,
                    generation: self.generation,
                    status: self.setup.status.clone(),
                    actor: ctx.address(),
                };
                *self.setup.matching.lock().unwrap_or_else(|p| p.into_inner()) = Some(path);
            }
            Err(e) => self.setup.status.error(format!("no worker thread for getMatchingCost: {e}"), None),
        }
    }

    /// Take the [`MatchingPath`] back: calls queued on its worker are
    /// cancelled; a blocked one keeps only its thread.
    pub(super) fn close_matching_path(&mut self) {
        self.setup.matching.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
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
