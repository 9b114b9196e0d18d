//! The load: closed loop (N clients, each sending its next request when the
//! last is answered) or open loop (requests on a fixed schedule, latency from
//! each one's intended send time: no coordinated omission), answers recorded
//! in an HDR histogram and sampled against the exact ones.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::client::{Answer, Api, JSON};
use super::workload::{Check, Workload};

/// Open loop: requests in flight beyond this count as errors (the service is not keeping up).
const MAX_IN_FLIGHT: usize = 1000;
/// Latencies recorded up to 60 s, to 3 significant digits.
const MAX_LATENCY_US: u64 = 60_000_000;

/// What the clients of one point saw.
pub struct Tally {
    pub histogram: Histogram<u64>,
    pub errors: u64,
    pub checked: u64,
    pub wrong: u64,
    pub problems: Vec<String>,
}

impl Tally {
    fn new() -> Tally {
        Tally { histogram: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("histogram bounds"), errors: 0, checked: 0, wrong: 0, problems: Vec::new() }
    }

    fn problem(&mut self, what: String) {
        if self.problems.len() < 5 {
            self.problems.push(what);
        }
    }

    /// Record one answer. `measured`: inside the measured window; `check`: compare with the exact answer.
    fn record(&mut self, answer: Result<Answer, String>, latency: Duration, measured: bool, check: Option<&Check>) {
        match answer {
            Ok(a) if (200..300).contains(&a.status) => {
                if measured {
                    self.histogram.saturating_record((latency.as_micros() as u64).max(1));
                }
                if let Some(check) = check {
                    self.checked += 1;
                    if let Err(e) = check.verify(&a.body) {
                        self.wrong += 1;
                        self.problem(format!("wrong answer: {e}"));
                    }
                }
            }
            Ok(a) => {
                self.errors += 1;
                self.problem(format!("HTTP {}: {}", a.status, String::from_utf8_lossy(&a.body[..a.body.len().min(200)])));
            }
            Err(e) => {
                self.errors += 1;
                self.problem(e);
            }
        }
    }

    fn merge(&mut self, other: Tally) {
        self.histogram.add(&other.histogram).expect("same bounds");
        self.errors += other.errors;
        self.checked += other.checked;
        self.wrong += other.wrong;
        for p in other.problems {
            self.problem(p);
        }
    }
}

/// When a point stops: after a time, or after a number of measured requests.
#[derive(Clone, Copy)]
pub enum Until {
    Time(Instant),
    Count(u64),
}

/// Which answers to check: the first to each body, then every n-th.
fn checked(w: &Workload, i: u64, every: u64) -> Option<&Check> {
    let body = (i % w.bodies.len() as u64) as usize;
    if i < w.bodies.len() as u64 || (every > 0 && i.is_multiple_of(every)) {
        w.checks[body].as_ref()
    } else {
        None
    }
}

/// N clients, each sending its next request when the last is answered.
pub async fn closed(api: &Api, w: &Arc<Workload>, clients: usize, measure_from: Instant, until: Until, every: u64, done: &Arc<AtomicU64>) -> (Tally, f64) {
    let next = Arc::new(AtomicU64::new(0));
    let last = Arc::new(Mutex::new(measure_from));
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (api, w, next, done, last) = (api.clone(), w.clone(), next.clone(), done.clone(), last.clone());
            tokio::spawn(async move {
                let mut tally = Tally::new();
                loop {
                    match until {
                        Until::Time(end) if Instant::now() >= end => break,
                        Until::Count(n) if done.load(Ordering::Relaxed) >= n => break,
                        _ => {}
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let body = w.bodies[(i % w.bodies.len() as u64) as usize].clone();
                    let sent = Instant::now();
                    let answer = api.post(w.route, JSON, body).await;
                    let now = Instant::now();
                    // Requests sent inside the window count, however late they are answered.
                    let measured = sent >= measure_from && !matches!(until, Until::Time(end) if sent >= end);
                    if measured {
                        done.fetch_add(1, Ordering::Relaxed);
                        let mut last = last.lock().expect("last");
                        *last = (*last).max(now);
                    }
                    tally.record(answer, now - sent, measured, checked(&w, i, every));
                }
                tally
            })
        })
        .collect();
    let mut tally = Tally::new();
    for t in tasks {
        if let Ok(t) = t.await {
            tally.merge(t);
        }
    }
    let seconds = (*last.lock().expect("last") - measure_from).as_secs_f64();
    (tally, seconds.max(1e-9))
}

/// Requests on a fixed schedule; latency from each one's intended send time.
pub async fn open(api: &Api, w: &Arc<Workload>, rate: f64, measure_from: Instant, until: Until, every: u64, done: &Arc<AtomicU64>) -> (Tally, f64) {
    let period = Duration::from_secs_f64(1.0 / rate);
    let tally = Arc::new(Mutex::new(Tally::new()));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let warmup_requests = ((measure_from - start).as_secs_f64() * rate).ceil() as u64;
    let mut tasks = tokio::task::JoinSet::new();
    let mut i = 0u64;
    loop {
        let intended = start + period.mul_f64(i as f64);
        match until {
            Until::Time(end) if intended >= end => break,
            Until::Count(n) if i >= warmup_requests + n => break,
            _ => {}
        }
        tokio::time::sleep_until(intended.into()).await;
        while tasks.try_join_next().is_some() {}
        let measured = intended >= measure_from;
        if in_flight.load(Ordering::Relaxed) >= MAX_IN_FLIGHT {
            let mut t = tally.lock().expect("tally");
            t.record(Err(format!("more than {MAX_IN_FLIGHT} requests in flight: the service does not keep up with {rate}/s")), Duration::ZERO, measured, None);
        } else {
            let (api, w, tally, in_flight, done) = (api.clone(), w.clone(), tally.clone(), in_flight.clone(), done.clone());
            in_flight.fetch_add(1, Ordering::Relaxed);
            tasks.spawn(async move {
                let body = w.bodies[(i % w.bodies.len() as u64) as usize].clone();
                let answer = api.post(w.route, JSON, body).await;
                let latency = Instant::now() - intended;
                in_flight.fetch_sub(1, Ordering::Relaxed);
                if measured {
                    done.fetch_add(1, Ordering::Relaxed);
                }
                tally.lock().expect("tally").record(answer, latency, measured, checked(&w, i, every));
            });
        }
        i += 1;
    }
    while tasks.join_next().await.is_some() {}
    let seconds = match until {
        Until::Time(end) => (end - measure_from).as_secs_f64(),
        Until::Count(n) => period.as_secs_f64() * n as f64,
    };
    let tally = Arc::into_inner(tally).expect("every request is done").into_inner().expect("tally");
    (tally, seconds.max(1e-9))
}
