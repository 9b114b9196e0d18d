//! Events for event plugins: monitoring points, the bounded per-plugin
//! queues, and the `EventBroker` actor that fans each event out to them.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use actix::prelude::*;
use parking_lot::Mutex;

/// The event type every HTTP request publishes.
pub const MONITORING_EVENT: &str = "monitoring_event";

/// A field value of a monitoring point, as InfluxDB types them.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    /// Text.
    Str(String),
    /// A float.
    Float(f64),
    /// An integer.
    Int(i64),
}

/// A monitoring point: series, event time (epoch seconds), tags, fields.
#[derive(Debug, Clone)]
pub struct Point {
    /// The series (`request`, `error`, `matching`).
    pub series: &'static str,
    /// When it happened, seconds since the epoch.
    pub event_time: f64,
    /// Tags: name and value.
    pub tags: Vec<(&'static str, String)>,
    /// Fields: name and value.
    pub fields: Vec<(&'static str, FieldValue)>,
}

/// One event: its type and its points.
#[derive(Debug)]
pub struct Event {
    /// The event type, what event plugins subscribe to by `eventName`.
    pub name: &'static str,
    /// Its points.
    pub points: Vec<Point>,
}

/// A plugin's bounded queue. Publishing never waits: when the plugin falls
/// behind, the oldest events make room and are counted as dropped.
pub(crate) struct EventQueue {
    items: Mutex<VecDeque<Arc<Event>>>,
    capacity: usize,
    dropped: Arc<AtomicU64>,
    /// An event taken from the queue is being handled.
    pub delivering: AtomicBool,
}

impl EventQueue {
    /// An empty queue of `capacity` events (at least one), counting drops in `dropped`.
    pub fn new(capacity: usize, dropped: Arc<AtomicU64>) -> Self {
        EventQueue { items: Mutex::new(VecDeque::new()), capacity: capacity.max(1), dropped, delivering: AtomicBool::new(false) }
    }

    /// Add an event; true when the queue was empty (the consumer may be idle).
    pub fn push(&self, event: Arc<Event>) -> bool {
        let mut items = self.items.lock();
        if items.len() == self.capacity {
            items.pop_front();
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        items.push_back(event);
        items.len() == 1
    }

    /// The oldest event, if any.
    pub fn pop(&self) -> Option<Arc<Event>> {
        self.items.lock().pop_front()
    }

    /// Events waiting.
    pub fn len(&self) -> usize {
        self.items.lock().len()
    }

    /// No event waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Nothing waiting and nothing being handled.
    pub fn idle(&self) -> bool {
        self.is_empty() && !self.delivering.load(Ordering::Acquire)
    }

    /// Drop what is left, counting it.
    pub fn discard(&self) -> usize {
        let n = std::mem::take(&mut *self.items.lock()).len();
        self.dropped(n);
        n
    }

    /// Count `n` events taken from the queue and not delivered.
    pub fn dropped(&self, n: usize) {
        self.dropped.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Tells a plugin actor its queue has something.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Wake;

/// Deliver events of `event_names` to `queue`, waking `wake`. Replaces an
/// earlier subscription of the same plugin.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Subscribe {
    /// The subscribing plugin; a later subscription of it replaces this one.
    pub plugin: String,
    /// The event types it takes.
    pub event_names: Vec<String>,
    /// Where its events go.
    pub queue: Arc<EventQueue>,
    /// Its actor, woken when the queue stops being empty.
    pub wake: Recipient<Wake>,
}

/// Fan an event out to the queues of its subscribers.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Publish(pub Arc<Event>);

/// Answered once every event published before it has been queued: at
/// shutdown, the events of requests already answered are in the queues before
/// they are drained.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Barrier;

/// Fans events out to the plugins subscribed to their type, on its own arbiter.
#[derive(Default)]
pub(crate) struct EventBroker {
    subscribers: Vec<Subscribe>,
}

// Requests publish with `do_send`, which ignores the mailbox capacity: a
// request never waits on the broker.
impl Actor for EventBroker {
    type Context = Context<Self>;
}

impl Handler<Subscribe> for EventBroker {
    type Result = ();

    fn handle(&mut self, msg: Subscribe, _: &mut Self::Context) {
        self.subscribers.retain(|s| s.plugin != msg.plugin);
        self.subscribers.push(msg);
    }
}

impl Handler<Barrier> for EventBroker {
    type Result = ();

    fn handle(&mut self, _: Barrier, _: &mut Self::Context) {}
}

impl Handler<Publish> for EventBroker {
    type Result = ();

    fn handle(&mut self, Publish(event): Publish, _: &mut Self::Context) {
        for s in self.subscribers.iter().filter(|s| s.event_names.iter().any(|n| n == event.name)) {
            if s.queue.push(event.clone()) {
                s.wake.do_send(Wake);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_drops_the_oldest() {
        let dropped = Arc::new(AtomicU64::new(0));
        let q = EventQueue::new(2, dropped.clone());
        let ev = |n: f64| Arc::new(Event { name: MONITORING_EVENT, points: vec![Point { series: "request", event_time: n, tags: vec![], fields: vec![] }] });
        assert!(q.push(ev(1.0)));
        assert!(!q.push(ev(2.0)));
        q.push(ev(3.0));
        assert_eq!(dropped.load(Ordering::Relaxed), 1);
        assert_eq!(q.pop().unwrap().points[0].event_time, 2.0);
        assert_eq!(q.discard(), 1);
        assert_eq!(dropped.load(Ordering::Relaxed), 2);
    }
}
