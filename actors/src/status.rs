//! What each plugin reports about itself, shared with the HTTP layer for
//! `GET /1/plugins`, `/metrics` and `/healthcheck` without asking an actor.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::Serialize;
use utoipa::ToSchema;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PluginState {
    Loading,
    Running,
    Restarting,
    Failed,
    Stopped,
}

impl PluginState {
    pub const ALL: [PluginState; 5] = [PluginState::Loading, PluginState::Running, PluginState::Restarting, PluginState::Failed, PluginState::Stopped];

    pub fn as_str(self) -> &'static str {
        match self {
            PluginState::Loading => "loading",
            PluginState::Running => "running",
            PluginState::Restarting => "restarting",
            PluginState::Failed => "failed",
            PluginState::Stopped => "stopped",
        }
    }
}

/// Latencies kept for the p99.
const SAMPLES: usize = 1024;

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PluginClass {
    pub class: String,
    pub kind: &'static str,
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
}

/// One plugin's status.
#[derive(Debug)]
pub struct PluginStatus {
    pub name: String,
    inner: Mutex<Inner>,
    /// Events dropped because the plugin fell behind or the service stopped.
    pub dropped: Arc<AtomicU64>,
}

/// A copy of a status, as `/1/plugins` shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PluginReport {
    pub name: String,
    /// The kinds of its classes, joined with `+` (`event`, `background`, `event+background`).
    pub kind: Option<String>,
    /// Its classes, joined with `, `.
    pub class: Option<String>,
    pub classes: Vec<PluginClass>,
    pub routes: Vec<String>,
    pub state: PluginState,
    pub restarts: u64,
    pub last_error: Option<String>,
    pub calls: u64,
    pub errors: u64,
    pub dropped_events: u64,
    pub mean_latency: Option<f64>,
    pub p99_latency: Option<f64>,
}

impl PluginStatus {
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
            }),
            dropped: Arc::new(AtomicU64::new(0)),
        }
    }

    pub fn state(&self) -> PluginState {
        self.inner.lock().state
    }

    pub fn set_state(&self, state: PluginState) {
        let mut i = self.inner.lock();
        i.state = state;
        if state != PluginState::Loading {
            i.attempted = true;
        }
    }

    /// Running, with a class of `kind`: read without building a report, as the
    /// matching pipeline asks on every request.
    pub fn serves(&self, kind: &str) -> bool {
        let i = self.inner.lock();
        i.state == PluginState::Running && i.classes.iter().any(|c| c.kind == kind)
    }

    pub fn attempted(&self) -> bool {
        self.inner.lock().attempted
    }

    pub fn running(&self, classes: Vec<PluginClass>, routes: Vec<String>) {
        let mut i = self.inner.lock();
        i.classes = classes;
        i.routes = routes;
        i.state = PluginState::Running;
        i.attempted = true;
    }

    pub fn error(&self, error: String) {
        log::warn!(target: "luna_matcher::plugins", "plugin {}: {error}", self.name);
        let mut i = self.inner.lock();
        i.errors += 1;
        i.last_error = Some(error);
    }

    pub fn restarted(&self) {
        self.inner.lock().restarts += 1;
    }

    pub fn call(&self, took: Duration) {
        let mut i = self.inner.lock();
        let s = took.as_secs_f64();
        i.calls += 1;
        i.latency_sum += s;
        if i.recent.len() == SAMPLES {
            i.recent.pop_front();
        }
        i.recent.push_back(s);
    }

    pub fn report(&self) -> PluginReport {
        let i = self.inner.lock();
        let p99 = (!i.recent.is_empty()).then(|| {
            let mut v: Vec<f64> = i.recent.iter().copied().collect();
            v.sort_by(f64::total_cmp);
            v[((v.len() as f64 * 0.99).ceil() as usize).clamp(1, v.len()) - 1]
        });
        let join = |sep: &str, f: fn(&PluginClass) -> &str| (!i.classes.is_empty()).then(|| i.classes.iter().map(f).collect::<Vec<_>>().join(sep));
        let mut kinds: Vec<&str> = i.classes.iter().map(|c| c.kind).collect();
        kinds.dedup();
        PluginReport {
            name: self.name.clone(),
            kind: (!kinds.is_empty()).then(|| kinds.join("+")),
            class: join(", ", |c| &c.class),
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
