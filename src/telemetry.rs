//! Everything the service reports about itself, defined in one place: the
//! request log line and the Prometheus metrics.

use std::collections::BTreeMap;
use std::fmt::Write;

use std::sync::Arc;

use luna_actors::events::{Event, FieldValue, Point, MONITORING_EVENT};
use luna_actors::status::{PluginReport, PluginState};
use luna_actors::PluginHost;
use luna_core::StoreStats;

use crate::pipeline::SubReport;
use crate::proxy::RemoteStatus;
use parking_lot::Mutex;

/// A Prometheus label value, escaped: a plugin's route template may hold `"`, `\` or a newline.
struct Label<'a>(&'a str);

impl std::fmt::Display for Label<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for c in self.0.chars() {
            match c {
                '\\' => f.write_str("\\\\")?,
                '"' => f.write_str("\\\"")?,
                '\n' => f.write_str("\\n")?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

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

pub struct Telemetry {
    requests: Mutex<Requests>,
    /// The service name in monitoring points: `luna-python-matcher` or `luna-matcher-proxy`.
    service: &'static str,
    /// This instance's name, the `instance` tag of every point.
    instance: String,
    /// Where monitoring points go, when plugins run.
    plugins: Option<Arc<PluginHost>>,
}

/// One finished HTTP request, as the middleware saw it.
pub struct RequestRecord<'a> {
    pub request_id: &'a str,
    pub method: &'a str,
    pub route: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub error_code: Option<u32>,
    /// When the request started, in seconds since the epoch.
    pub start_time: f64,
    pub seconds: f64,
    /// Who answered each matching sub-request.
    pub matching: &'a [SubReport],
}

/// The access log line of a request: a short message, and the request's
/// fields as structured fields (JSON logs carry them as fields).
fn access_log(r: &RequestRecord) {
    const TARGET: &str = "luna_matcher::access";
    if !log::log_enabled!(target: TARGET, log::Level::Info) {
        return;
    }
    log::logger()
        .log(&log::Record::builder().level(log::Level::Info).target(TARGET).args(format_args!("{} {} {}", r.method, r.path, r.status)).key_values(r).build());
}

impl log::kv::Source for RequestRecord<'_> {
    fn visit<'kvs>(&'kvs self, visitor: &mut dyn log::kv::VisitSource<'kvs>) -> Result<(), log::kv::Error> {
        use log::kv::{Key, Value};
        visitor.visit_pair(Key::from("request_id"), Value::from(self.request_id))?;
        visitor.visit_pair(Key::from("method"), Value::from(self.method))?;
        visitor.visit_pair(Key::from("path"), Value::from(self.path))?;
        visitor.visit_pair(Key::from("status"), Value::from(self.status))?;
        if let Some(code) = self.error_code {
            visitor.visit_pair(Key::from("error_code"), Value::from(code))?;
        }
        visitor.visit_pair(Key::from("execution_time"), Value::from(self.seconds))
    }
}

impl Telemetry {
    pub fn new(service: &'static str, instance: String, plugins: Option<Arc<PluginHost>>) -> Self {
        Telemetry { requests: Mutex::default(), service, instance, plugins }
    }

    pub fn request_finished(&self, r: &RequestRecord) {
        access_log(r);
        let mut req = self.requests.lock();
        *req.counts.entry((r.method.to_owned(), r.route.to_owned(), r.status)).or_default() += 1;
        req.latency.entry(r.route.to_owned()).or_default().observe(r.seconds);
        drop(req);
        if let Some(plugins) = &self.plugins {
            plugins.publish(Event { name: MONITORING_EVENT, points: self.request_points(r) });
        }
    }

    /// The points of one request, as docs/plugins.md defines them: `request`, and
    /// `error` for a response with an error status.
    fn request_points(&self, r: &RequestRecord) -> Vec<Point> {
        let tags = vec![
            ("service", self.service.to_owned()),
            ("instance", self.instance.clone()),
            ("route", format!("{}:{}", r.method, r.route)),
            ("status_code", r.status.to_string()),
        ];
        let fields = vec![("request_id", FieldValue::Str(r.request_id.to_owned())), ("execution_time", FieldValue::Float(r.seconds))];
        let mut points = vec![Point { series: "request", event_time: r.start_time, tags: tags.clone(), fields: fields.clone() }];
        if r.status >= 400 {
            let mut tags = tags;
            tags.push(("error_code", r.error_code.unwrap_or(0).to_string()));
            points.push(Point { series: "error", event_time: r.start_time, tags, fields });
        }
        points.extend(r.matching.iter().map(|m| Point {
            series: "matching",
            event_time: r.start_time,
            tags: vec![
                ("service", self.service.to_owned()),
                ("instance", self.instance.clone()),
                ("matcher", m.matcher.clone()),
                ("candidate_origin", "faces".to_owned()),
            ],
            fields: vec![
                ("request_id", FieldValue::Str(r.request_id.to_owned())),
                ("candidates_scanned", FieldValue::Int(m.candidates_scanned as i64)),
                ("execution_time", FieldValue::Float(m.seconds)),
            ],
        }));
        points
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self, store: &StoreStats, plugins: &[PluginReport], matchers: &[RemoteStatus]) -> String {
        let mut out = String::new();
        let req = self.requests.lock();
        out.push_str("# HELP luna_matcher_requests_total HTTP requests by method, route and status.\n# TYPE luna_matcher_requests_total counter\n");
        for ((method, route, status), n) in &req.counts {
            let (method, route) = (Label(method), Label(route));
            let _ = writeln!(out, "luna_matcher_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}} {n}");
        }
        out.push_str("# HELP luna_matcher_request_duration_seconds HTTP request latency by route.\n# TYPE luna_matcher_request_duration_seconds histogram\n");
        for (route, h) in &req.latency {
            let route = Label(route);
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
        if let Some(sync) = &store.sync {
            let gauges: [(&str, &str, f64); 7] = [
                ("luna_matcher_store_ready", "1 once the shared store is loaded into memory.", u8::from(sync.loading.is_none()).into()),
                ("luna_matcher_store_position_xid", "Transaction id of the last change of the shared store applied.", sync.position.xid as f64),
                ("luna_matcher_store_position_seq", "Sequence number of the last change of the shared store applied.", sync.position.seq as f64),
                ("luna_matcher_store_lag_seconds", "Age of the oldest committed change of the shared store not applied yet.", sync.lag_seconds),
                ("luna_matcher_store_loaded_faces", "Faces read by the last full load of the shared store.", sync.loaded_faces as f64),
                ("luna_matcher_store_loads", "Full loads of the shared store since start-up.", sync.loads as f64),
                ("luna_matcher_store_unreadable_faces", "Stored faces the version table cannot read, left out of memory.", sync.unreadable_faces as f64),
            ];
            for (name, help, value) in gauges {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
            }
        }
        type Counter = (&'static str, &'static str, fn(&PluginReport) -> u64);
        let counters: [Counter; 4] = [
            ("luna_matcher_plugin_calls_total", "Events and route calls a plugin handled.", |p| p.calls),
            ("luna_matcher_plugin_errors_total", "Errors a plugin raised or timed out with.", |p| p.errors),
            ("luna_matcher_plugin_restarts_total", "Restarts of a plugin by its supervisor.", |p| p.restarts),
            ("luna_matcher_plugin_dropped_events_total", "Events a plugin's queue dropped.", |p| p.dropped_events),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for p in plugins {
                let _ = writeln!(out, "{name}{{plugin=\"{}\"}} {}", Label(&p.name), value(p));
            }
        }
        out.push_str("# HELP luna_matcher_plugin_state 1 for the state a plugin is in.\n# TYPE luna_matcher_plugin_state gauge\n");
        for p in plugins {
            for state in PluginState::ALL {
                let _ = writeln!(out, "luna_matcher_plugin_state{{plugin=\"{}\",state=\"{}\"}} {}", Label(&p.name), state.as_str(), u8::from(p.state == state));
            }
        }
        out.push_str(
            "# HELP luna_matcher_plugin_latency_seconds Mean and p99 latency of a plugin's recent calls.\n# TYPE luna_matcher_plugin_latency_seconds gauge\n",
        );
        for p in plugins {
            for (q, v) in [("mean", p.mean_latency), ("p99", p.p99_latency)] {
                if let Some(v) = v {
                    let _ = writeln!(out, "luna_matcher_plugin_latency_seconds{{plugin=\"{}\",stat=\"{q}\"}} {v}", Label(&p.name));
                }
            }
        }
        if !matchers.is_empty() {
            type Metric = (&'static str, &'static str, &'static str, fn(&RemoteStatus) -> f64);
            let metrics: [Metric; 5] = [
                ("luna_matcher_proxy_matcher_up", "gauge", "1 while a matcher is in rotation and its cache report says ready.", |m| u8::from(m.up).into()),
                ("luna_matcher_proxy_matcher_requests_total", "counter", "Calls the proxy made to a matcher.", |m| m.requests as f64),
                ("luna_matcher_proxy_matcher_errors_total", "counter", "Calls to a matcher that failed or answered something malformed.", |m| m.errors as f64),
                ("luna_matcher_proxy_matcher_retries_total", "counter", "Calls to a matcher carrying sub-requests another matcher failed.", |m| {
                    m.retries as f64
                }),
                (
                    "luna_matcher_proxy_matcher_latency_seconds_total",
                    "counter",
                    "Seconds spent in calls to a matcher (divide by requests for the mean).",
                    |m| m.latency_seconds,
                ),
            ];
            for (name, kind, help, value) in metrics {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
                for m in matchers {
                    let _ = writeln!(out, "{name}{{matcher=\"{}\"}} {}", Label(&m.name), value(m));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::Label;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(Label("/a\"b\\c\nd").to_string(), "/a\\\"b\\\\c\\nd");
        assert_eq!(Label("/1/faces/{face_id}").to_string(), "/1/faces/{face_id}");
    }
}
