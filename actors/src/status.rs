//! What each plugin reports about itself, shared with the HTTP layer for
//! `GET /1/plugins`, `/metrics` and `/healthcheck` without asking an actor.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;
use utoipa::ToSchema;

use crate::error_log::{ErrorLog, Verdict, INTERVAL};

/// Where a plugin is in its lifecycle. The plugin's actor owns it; this copy
/// is what `/1/plugins` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PluginState {
    /// The first generation is importing, constructing or initializing.
    Loading,
    /// Every class is initialized and serving.
    Running,
    /// A generation failed; the next one waits out its backoff or is starting.
    Restarting,
    /// Given up: an import or constructor failed, or too many restarts.
    Failed,
    /// Shutting down: no new work, the delivery in flight finishing, `close()` running.
    Stopping,
    /// `close()` has run; the service is stopping.
    Stopped,
}

impl PluginState {
    /// Every state, for `/metrics` (one gauge per state).
    pub const ALL: [PluginState; 6] =
        [PluginState::Loading, PluginState::Running, PluginState::Restarting, PluginState::Failed, PluginState::Stopping, PluginState::Stopped];

    /// The name `/1/plugins` and `/metrics` show.
    pub fn as_str(self) -> &'static str {
        match self {
            PluginState::Loading => "loading",
            PluginState::Running => "running",
            PluginState::Restarting => "restarting",
            PluginState::Failed => "failed",
            PluginState::Stopping => "stopping",
            PluginState::Stopped => "stopped",
        }
    }
}

/// What a plugin class is, by the base class it derives from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PluginKind {
    /// Derives from `BaseEventPlugin`: handles events.
    Event,
    /// Derives from `BaseBackgroundPlugin`: serves routes and runs its own tasks.
    Background,
    /// Derives from `BaseMatcherPlugin`: answers sub-requests of the matching pipeline.
    Matching,
}

impl PluginKind {
    /// The host's name for it; anything but `event` and `matching` is background.
    pub fn parse(kind: &str) -> PluginKind {
        match kind {
            "event" => PluginKind::Event,
            "matching" => PluginKind::Matching,
            _ => PluginKind::Background,
        }
    }

    /// The name `/1/plugins` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            PluginKind::Event => "event",
            PluginKind::Background => "background",
            PluginKind::Matching => "matching",
        }
    }
}

/// Latencies kept for the p99.
const SAMPLES: usize = 1024;

/// One class of a plugin's module.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PluginClass {
    /// `module.Class`.
    pub class: String,
    /// What it is.
    pub kind: PluginKind,
}

#[derive(Debug)]
struct Inner {
    state: PluginState,
    classes: Vec<PluginClass>,
    routes: Vec<String>,
    restarts: u64,
    last_error: Option<String>,
    calls: u64,
    errors: u64,
    latency_sum: f64,
    recent: VecDeque<f64>,
    /// The first start attempt has finished, however it went.
    attempted: bool,
    log: ErrorLog,
}

/// One plugin's status.
#[derive(Debug)]
pub(crate) struct PluginStatus {
    /// The plugin's name.
    pub name: String,
    inner: Mutex<Inner>,
    /// Events dropped because the plugin fell behind or the service stopped.
    pub dropped: Arc<AtomicU64>,
}

/// A copy of a status, as `/1/plugins` shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PluginReport {
    /// The plugin's name.
    pub name: String,
    /// The kinds of its classes, joined with `+` (`event`, `background`, `event+background`).
    pub kind: Option<String>,
    /// Its classes, joined with `, `.
    pub class: Option<String>,
    /// Its classes.
    pub classes: Vec<PluginClass>,
    /// The route templates it serves.
    pub routes: Vec<String>,
    /// Where it is in its lifecycle.
    pub state: PluginState,
    /// Restarts since the service started.
    pub restarts: u64,
    /// The last error counted.
    pub last_error: Option<String>,
    /// Calls into it: events handled, routes served, matching calls.
    pub calls: u64,
    /// Errors counted: exceptions, timeouts, malformed answers.
    pub errors: u64,
    /// Events dropped because it fell behind or the service stopped.
    pub dropped_events: u64,
    /// Mean seconds per call.
    pub mean_latency: Option<f64>,
    /// 99th percentile of the last 1024 calls' seconds.
    pub p99_latency: Option<f64>,
}

impl PluginStatus {
    /// A plugin not yet loaded.
    pub fn new(name: &str) -> Self {
        PluginStatus {
            name: name.to_owned(),
            inner: Mutex::new(Inner {
                state: PluginState::Loading,
                classes: Vec::new(),
                routes: Vec::new(),
                restarts: 0,
                last_error: None,
                calls: 0,
                errors: 0,
                latency_sum: 0.0,
                recent: VecDeque::with_capacity(SAMPLES),
                attempted: false,
                log: ErrorLog::default(),
            }),
            dropped: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Where the plugin is in its lifecycle now.
    pub fn state(&self) -> PluginState {
        self.inner.lock().state
    }

    /// Written by the plugin's actor only, which owns the state.
    pub(crate) fn set_state(&self, state: PluginState) {
        let mut i = self.inner.lock();
        i.state = state;
        if state != PluginState::Loading {
            i.attempted = true;
        }
    }

    /// Running, with a class of `kind`: read without building a report, as the
    /// matching pipeline asks on every request.
    pub fn serves(&self, kind: PluginKind) -> bool {
        let i = self.inner.lock();
        i.state == PluginState::Running && i.classes.iter().any(|c| c.kind == kind)
    }

    /// Whether its first start attempt has finished, however it went.
    pub fn attempted(&self) -> bool {
        self.inner.lock().attempted
    }

    /// The classes found at import, known before they are constructed.
    pub(crate) fn set_classes(&self, classes: Vec<PluginClass>) {
        self.inner.lock().classes = classes;
    }

    pub(crate) fn set_routes(&self, routes: Vec<String>) {
        self.inner.lock().routes = routes;
    }

    /// Count an error and log it, with its Python traceback if it has one;
    /// repeats are rate-limited.
    pub(crate) fn error(&self, error: String, traceback: Option<&str>) {
        let verdict = {
            let mut i = self.inner.lock();
            i.errors += 1;
            i.last_error = Some(error.clone());
            i.log.note(&error, Instant::now())
        };
        match (verdict, traceback) {
            (Verdict::Log { traceback: true }, Some(traceback)) => log::warn!(target: "luna_matcher::plugins", "plugin {}: {error}\n{traceback}", self.name),
            (Verdict::Log { .. }, _) => log::warn!(target: "luna_matcher::plugins", "plugin {}: {error}", self.name),
            (Verdict::Quiet, _) => {}
        }
    }

    /// Sum up the errors left unlogged in intervals that have ended.
    pub(crate) fn flush_log(&self) {
        let summaries = self.inner.lock().log.summaries(Instant::now());
        for (error, n) in summaries {
            log::warn!(target: "luna_matcher::plugins", "plugin {}: {error} (repeated {n} more times in the last {}s)", self.name, INTERVAL.as_secs());
        }
    }

    pub(crate) fn restarted(&self) {
        self.inner.lock().restarts += 1;
    }

    pub(crate) fn call(&self, took: Duration) {
        let mut i = self.inner.lock();
        let s = took.as_secs_f64();
        i.calls += 1;
        i.latency_sum += s;
        if i.recent.len() == SAMPLES {
            i.recent.pop_front();
        }
        i.recent.push_back(s);
    }

    /// A copy of the status, for `/1/plugins` and `/metrics`.
    pub fn report(&self) -> PluginReport {
        let i = self.inner.lock();
        let p99 = (!i.recent.is_empty()).then(|| {
            let mut v: Vec<f64> = i.recent.iter().copied().collect();
            v.sort_by(f64::total_cmp);
            v[((v.len() as f64 * 0.99).ceil() as usize).clamp(1, v.len()) - 1]
        });
        let mut kinds: Vec<&str> = Vec::new();
        for kind in i.classes.iter().map(|c| c.kind.as_str()) {
            if !kinds.contains(&kind) {
                kinds.push(kind);
            }
        }
        PluginReport {
            name: self.name.clone(),
            kind: (!kinds.is_empty()).then(|| kinds.join("+")),
            class: (!i.classes.is_empty()).then(|| i.classes.iter().map(|c| c.class.as_str()).collect::<Vec<_>>().join(", ")),
            classes: i.classes.clone(),
            routes: i.routes.clone(),
            state: i.state,
            restarts: i.restarts,
            last_error: i.last_error.clone(),
            calls: i.calls,
            errors: i.errors,
            dropped_events: self.dropped.load(Ordering::Relaxed),
            mean_latency: (i.calls > 0).then(|| i.latency_sum / i.calls as f64),
            p99_latency: p99,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kind_names_each_kind_once_in_order_of_appearance() {
        let status = PluginStatus::new("mixed");
        let class = |kind| PluginClass { class: "plugins.mixed.C".into(), kind };
        status.set_classes(vec![class(PluginKind::Event), class(PluginKind::Background), class(PluginKind::Event), class(PluginKind::Matching)]);
        assert_eq!(status.report().kind.as_deref(), Some("event+background+matching"));
    }
}
