//! Handing queued events to the plugin, one at a time.

use std::sync::atomic::Ordering;
use std::time::Instant;

use actix::prelude::*;

use super::PluginActor;
use crate::events::Wake;
use crate::failure::Failure;
use crate::host::Wait;
use crate::python::host;
use crate::status::PluginState;

impl PluginActor {
    /// Hand the next queued event to the instances that take it. An event
    /// none of them takes (queued for an earlier generation) is dropped and counted.
    pub(super) fn deliver_next(&mut self, ctx: &mut Context<Self>) {
        if self.state != PluginState::Running || self.setup.queue.delivering.load(Ordering::Acquire) {
            return;
        }
        let (event, objects) = loop {
            let Some(event) = self.setup.queue.pop() else { return };
            let objects: Vec<_> = self.instances.iter().filter(|i| i.event_name.as_deref() == Some(event.name)).map(|i| i.object.clone()).collect();
            if objects.is_empty() {
                self.setup.queue.dropped(1);
                continue;
            }
            break (event, objects);
        };
        let Some(context) = &self.context else { return };
        // No GIL here: the points are made on the loop thread.
        let delivery = host().deliver(objects, event, self.setup.settings.timeout, context);
        self.setup.queue.delivering.store(true, Ordering::Release);
        let start = Instant::now();
        ctx.spawn(delivery.answer(Wait::Answer).into_actor(self).map(move |outcome, act, ctx| {
            act.setup.queue.delivering.store(false, Ordering::Release);
            act.setup.status.call(start.elapsed());
            match outcome {
                Ok(errors) => errors.into_iter().for_each(|(e, tb)| act.setup.status.error(e, Some(&tb))),
                // Its own time ran out (time others held the event loop not counted): it may be stuck.
                Err(e @ Failure::TimedOut(_)) => return act.fail_with(ctx, "event handler timed out", &e),
                Err(e @ Failure::Panic(_)) => return act.fail_with(ctx, "handleEvent", &e),
                Err(Failure::NoAnswer(_)) => {}
                Err(e) => act.setup.status.error(format!("handleEvent: {}", e.summary()), e.traceback()),
            }
            act.deliver_next(ctx);
        }));
    }
}

impl Handler<Wake> for PluginActor {
    type Result = ();

    fn handle(&mut self, _: Wake, ctx: &mut Self::Context) {
        self.deliver_next(ctx);
    }
}
