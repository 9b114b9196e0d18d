//! Everything the service reports about itself, defined in one place: the
//! request log line and the Prometheus metrics.

use std::collections::BTreeMap;
use std::fmt::Write;

use luna_core::service::StoreStats;
use parking_lot::Mutex;

/// Upper bounds, in seconds, of the request latency histogram.
const LATENCY_BUCKETS: [f64; 14] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

#[derive(Default)]
struct Histogram {
    buckets: [u64; LATENCY_BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        for (bound, n) in LATENCY_BUCKETS.iter().zip(self.buckets.iter_mut()) {
            if seconds <= *bound {
                *n += 1;
            }
        }
        self.count += 1;
        self.sum += seconds;
    }
}

#[derive(Default)]
struct Requests {
    /// (method, route, status) -> count
    counts: BTreeMap<(String, String, u16), u64>,
    /// route -> latency
    latency: BTreeMap<String, Histogram>,
}

#[derive(Default)]
pub struct Telemetry {
    requests: Mutex<Requests>,
}

/// One finished HTTP request, as the middleware saw it.
pub struct RequestRecord<'a> {
    pub request_id: &'a str,
    pub method: &'a str,
    pub route: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub error_code: Option<u32>,
    pub seconds: f64,
}

impl Telemetry {
    pub fn request_finished(&self, r: &RequestRecord) {
        log::info!(
            target: "luna_matcher::access",
            "request_id={} method={} path={} status={} error_code={} execution_time={:.6}",
            r.request_id,
            r.method,
            r.path,
            r.status,
            r.error_code.map_or("-".into(), |c| c.to_string()),
            r.seconds
        );
        let mut req = self.requests.lock();
        *req.counts.entry((r.method.to_owned(), r.route.to_owned(), r.status)).or_default() += 1;
        req.latency.entry(r.route.to_owned()).or_default().observe(r.seconds);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self, store: &StoreStats) -> String {
        let mut out = String::new();
        let req = self.requests.lock();
        out.push_str("# HELP luna_matcher_requests_total HTTP requests by method, route and status.\n# TYPE luna_matcher_requests_total counter\n");
        for ((method, route, status), n) in &req.counts {
            let _ = writeln!(out, "luna_matcher_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}} {n}");
        }
        out.push_str("# HELP luna_matcher_request_duration_seconds HTTP request latency by route.\n# TYPE luna_matcher_request_duration_seconds histogram\n");
        for (route, h) in &req.latency {
            for (bound, n) in LATENCY_BUCKETS.iter().zip(h.buckets) {
                let _ = writeln!(out, "luna_matcher_request_duration_seconds_bucket{{route=\"{route}\",le=\"{bound}\"}} {n}");
            }
            let _ = writeln!(out, "luna_matcher_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}", h.count);
            let _ = writeln!(out, "luna_matcher_request_duration_seconds_sum{{route=\"{route}\"}} {}", h.sum);
            let _ = writeln!(out, "luna_matcher_request_duration_seconds_count{{route=\"{route}\"}} {}", h.count);
        }
        drop(req);
        out.push_str("# HELP luna_matcher_store_lists Lists in the store.\n# TYPE luna_matcher_store_lists gauge\n");
        let _ = writeln!(out, "luna_matcher_store_lists {}", store.lists);
        out.push_str("# HELP luna_matcher_store_faces Faces in the store by descriptor version.\n# TYPE luna_matcher_store_faces gauge\n");
        for (version, n) in &store.faces_by_version {
            let _ = writeln!(out, "luna_matcher_store_faces{{descriptor_version=\"{version}\"}} {n}");
        }
        out
    }
}
