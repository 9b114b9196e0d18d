//! Boot, failure, restart and close of a plugin's actor.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use pyo3::prelude::*;

use super::{answer, bridge, Instance, PluginActor};
use crate::error_log::INTERVAL;
use crate::events::Subscribe;
use crate::failure::Failure;
use crate::host::{Wait, GRACE};
use crate::python::host;
use crate::restart::Verdict;
use crate::status::{PluginClass, PluginState};

impl PluginActor {
    /// Import, construct and initialize a fresh generation of the plugin.
    fn boot(&mut self, ctx: &mut Context<Self>) {
        if !matches!(self.state, PluginState::Loading | PluginState::Restarting) {
            return;
        }
        self.generation += 1;
        let name = self.setup.name.clone();
        let discovered = match bridge(|py| {
            host().unload(py, &name)?;
            host().discover(py, &name)
        }) {
            Ok(d) => d,
            // An import that fails fails again: report it, do not retry.
            Err(e) => return self.give_up(format!("import failed: {}", e.summary()), e.traceback()),
        };
        self.setup.status.set_classes(discovered.iter().map(|d| PluginClass { class: d.name.clone(), kind: d.kind }).collect());
        if discovered.is_empty() {
            self.setup.status.error("the module defines no concrete plugin class".into(), None);
        }
        let (settings, service, generation) = (&self.setup.settings, &self.setup.service, self.generation);
        let constructed = bridge(|py| {
            let objects = host().construct(py, &name, &discovered, &settings.config_json, service.name, &service.url)?;
            Ok((objects, host().context(py, &name, generation)?))
        });
        let (objects, context) = match constructed {
            Ok(c) => c,
            // A panic is no verdict on the plugin's code: try again.
            Err(e @ Failure::Panic(_)) => return self.fail_with(ctx, "__init__ failed", &e),
            Err(e) => return self.give_up(format!("__init__ failed: {}", e.summary()), e.traceback()),
        };
        let limit = settings.init_timeout;
        let started = bridge(|py| Ok(host().start(py, &objects, limit, &context)));
        self.instances = Arc::new(
            objects.into_iter().zip(discovered).map(|(object, d)| Instance { object: Arc::new(object), kind: d.kind, event_name: d.event_name }).collect(),
        );
        self.context = Some(context);
        ctx.spawn(answer(started, Wait::Answer).into_actor(self).map(|outcome, act, ctx| match outcome {
            Ok(_) => act.serve(ctx),
            Err(e) => act.fail_with(ctx, "initialize failed", &e),
        }));
    }

    /// A failure that another attempt would repeat: the plugin is failed at once.
    fn give_up(&mut self, error: String, traceback: Option<&str>) {
        self.setup.status.error(error, traceback);
        self.set_state(PluginState::Failed);
    }

    /// After `initialize`: mount routes, subscribe to events, take work.
    fn serve(&mut self, ctx: &mut Context<Self>) {
        if !matches!(self.state, PluginState::Loading | PluginState::Restarting) {
            return; // shutting down meanwhile
        }
        let name = self.setup.name.clone();
        let paths = match bridge(|py| host().route_paths(py, &name)) {
            Ok(paths) => paths,
            Err(e) => return self.fail(ctx, format!("routes: {}", e.summary()), e.traceback()),
        };
        self.setup.routes.set(&name, &paths);
        self.setup.status.set_routes(paths);
        let mut event_names: Vec<String> = Vec::new();
        for n in self.instances.iter().filter_map(|i| i.event_name.as_ref()) {
            if !event_names.contains(n) {
                event_names.push(n.clone());
            }
        }
        // Always: a generation without event classes drops the previous one's subscription.
        if event_names.is_empty() {
            self.setup.queue.discard();
        }
        self.subscribe(ctx, event_names);
        self.open_matching_path(ctx);
        self.set_state(PluginState::Running);
        log::info!(target: "luna_matcher::plugins", "plugin {} running (generation {})", self.setup.name, self.generation);
        self.deliver_next(ctx);
    }

    /// Take events of `event_names` from now on; none: take no events.
    fn subscribe(&self, ctx: &mut Context<Self>, event_names: Vec<String>) {
        self.setup.broker.do_send(Subscribe { plugin: self.setup.name.clone(), event_names, queue: self.setup.queue.clone(), wake: ctx.address().recipient() });
    }

    /// Stop, so that the supervisor restarts this plugin; once shutting down,
    /// only count the error, so that `close()` still runs.
    pub(super) fn fail(&mut self, ctx: &mut Context<Self>, error: String, traceback: Option<&str>) {
        self.setup.status.error(error, traceback);
        if self.state != PluginState::Stopping {
            ctx.stop();
        }
    }

    /// A failure of a call: restart the plugin, with what went wrong.
    pub(super) fn fail_with(&mut self, ctx: &mut Context<Self>, what: &str, failure: &Failure) {
        self.fail(ctx, format!("{what}: {}", failure.summary()), failure.traceback());
    }
}

impl Actor for PluginActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        crate::python::keep_thread_state();
        ctx.run_interval(INTERVAL, |act, _| act.setup.status.flush_log());
        match self.backoff.take() {
            None => self.boot(ctx),
            Some(delay) => {
                log::info!(target: "luna_matcher::plugins", "plugin {} restarts in {:.1}s", self.setup.name, delay.as_secs_f64());
                ctx.run_later(delay, |act, ctx| act.boot(ctx));
            }
        }
    }
}

impl Supervised for PluginActor {
    /// Tear down the failed generation and decide whether to try again.
    fn restarting(&mut self, ctx: &mut Self::Context) {
        self.setup.queue.delivering.store(false, Ordering::Release);
        self.setup.routes.set(&self.setup.name, &[]);
        self.close_matching_path();
        let (name, instances, context, limit) =
            (self.setup.name.clone(), std::mem::take(&mut self.instances), self.context.take(), self.setup.settings.close_timeout);
        // Best effort, not awaited: the old instances close, then their tasks are cancelled.
        let _ = bridge(|py| {
            if let Some(context) = &context {
                let objects: Vec<Py<PyAny>> = instances.iter().map(|i| i.object.clone_ref(py)).collect();
                drop(host().retire(py, &objects, limit, context));
            }
            host().unload(py, &name)
        });
        if matches!(self.state, PluginState::Stopping | PluginState::Stopped | PluginState::Failed) {
            return;
        }
        self.setup.status.restarted();
        match self.restarts.failed(Instant::now()) {
            Verdict::RetryAfter(delay) => {
                self.backoff = Some(delay);
                self.set_state(PluginState::Restarting);
            }
            Verdict::GiveUp { restarts, window } => {
                log::error!(target: "luna_matcher::plugins", "plugin {name} failed: {restarts} restarts within {window:?}");
                self.set_state(PluginState::Failed);
                // A failed plugin takes no more events; what it had is dropped and counted.
                self.subscribe(ctx, Vec::new());
                self.setup.queue.discard();
            }
        }
    }
}

/// Plugin generation `generation` is broken though no call of the host
/// failed: a background task died, or its code held the event loop too long.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Fault {
    /// The generation that broke; a fault of an older one is ignored.
    pub generation: u64,
    /// What went wrong.
    pub error: String,
    /// The Python traceback, if there is one.
    pub traceback: Option<String>,
}

impl Handler<Fault> for PluginActor {
    type Result = ();

    fn handle(&mut self, msg: Fault, ctx: &mut Self::Context) {
        // A generation torn down (no context) or shutting down has nothing left to fail.
        let live = self.context.is_some() && matches!(self.state, PluginState::Loading | PluginState::Running | PluginState::Restarting);
        if msg.generation == self.generation && live {
            self.fail(ctx, msg.error, msg.traceback.as_deref());
        }
    }
}

/// An error of the plugin found outside it (a malformed answer the pipeline rejected), to count.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct CountError(pub String);

impl Handler<CountError> for PluginActor {
    type Result = ();

    fn handle(&mut self, CountError(error): CountError, _: &mut Self::Context) {
        self.setup.status.error(error, None);
    }
}

/// Shut down: finish the event in flight, then `close()` every instance within the deadline.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Close;

impl Handler<Close> for PluginActor {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _: Close, _: &mut Self::Context) -> Self::Result {
        let failed = self.state == PluginState::Failed;
        if !failed {
            self.set_state(PluginState::Stopping);
        }
        self.close_matching_path();
        self.setup.routes.set(&self.setup.name, &[]);
        let queue = self.setup.queue.clone();
        // The delivery in flight ends within its handlers' deadline, unless the loop is held.
        let in_flight = self.setup.settings.timeout + GRACE;
        let finish_delivery = async move {
            let until = Instant::now() + in_flight;
            while queue.delivering.load(Ordering::Acquire) && Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        let closing = finish_delivery.into_actor(self).then(|_, act, _| {
            let objects: Vec<Py<PyAny>> = act.objects(|_| true).into_iter().map(|(_, o)| o).collect();
            let context = act.context.clone();
            let limit = act.setup.settings.close_timeout;
            let stopped = bridge(|py| Ok(host().stop(py, &objects, limit, context.as_ref())));
            answer(stopped, Wait::Caller).into_actor(act)
        });
        Box::pin(closing.map(move |outcome, act, _| {
            match outcome {
                Ok(errors) => errors.into_iter().for_each(|(e, tb)| act.setup.status.error(format!("close failed: {e}"), Some(&tb))),
                Err(e) => act.setup.status.error(format!("close failed: {}", e.summary()), e.traceback()),
            }
            if !failed {
                act.set_state(PluginState::Stopped);
            }
            act.setup.status.flush_log();
            log::info!(target: "luna_matcher::plugins", "plugin {} closed", act.setup.name);
        }))
    }
}
