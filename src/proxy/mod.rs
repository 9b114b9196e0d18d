//! Role proxy: the remote matchers that answer default sub-requests. What
//! each matcher can answer comes from its own `GET /1/matcher/cache`, polled;
//! a matcher whose calls keep failing leaves rotation and comes back once its
//! cache report answers again. Routing and the calls themselves are in
//! [`routing`].

pub mod routing;

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use luna_core::api::{CacheReport, ComponentError};
use parking_lot::RwLock;

use crate::config::Proxy as ProxyConfig;

/// One remote matcher, as the proxy knows it.
pub struct Remote {
    /// Its base URL, without a trailing slash.
    url: String,
    /// Its name in metrics and monitoring points: host:port of the URL.
    name: String,
    /// Its last cache report; None until one answered, or after a failed poll.
    report: RwLock<Option<CacheReport>>,
    /// Calls under way: "least busy" is the fewest.
    in_flight: AtomicUsize,
    /// Failed calls or polls since the last success.
    failures: AtomicU32,
    in_rotation: AtomicBool,
    requests: AtomicU64,
    errors: AtomicU64,
    retries: AtomicU64,
    /// Microseconds of all calls, for the mean latency.
    latency_us: AtomicU64,
}

/// A matcher's counters and state, for `/metrics`.
pub struct RemoteStatus {
    pub name: String,
    /// In rotation with a cache report that says ready.
    pub up: bool,
    pub requests: u64,
    pub errors: u64,
    pub retries: u64,
    pub latency_seconds: f64,
}

/// The matchers of a proxy.
pub struct Matchers {
    remotes: Vec<Arc<Remote>>,
    config: ProxyConfig,
    /// Where ties between equally busy matchers start, so they take turns.
    turn: AtomicUsize,
}

thread_local! {
    /// One HTTP client (and keep-alive pool) per thread: each actix worker
    /// runs its own runtime, whose connections stay on it.
    static CLIENT: RefCell<Option<reqwest::Client>> = const { RefCell::new(None) };
}

impl Matchers {
    /// The matchers of `config`, none known to be up until polled.
    pub fn new(config: &ProxyConfig) -> Matchers {
        let remotes = config
            .matchers
            .iter()
            .map(|url| {
                let url = url.trim_end_matches('/').to_owned();
                let name = url.parse::<reqwest::Url>().ok().map(|u| format!("{}:{}", u.host_str().unwrap_or(""), u.port_or_known_default().unwrap_or(80)));
                Arc::new(Remote {
                    name: name.unwrap_or_else(|| url.clone()),
                    url,
                    report: RwLock::new(None),
                    in_flight: AtomicUsize::new(0),
                    failures: AtomicU32::new(0),
                    in_rotation: AtomicBool::new(true),
                    requests: AtomicU64::new(0),
                    errors: AtomicU64::new(0),
                    retries: AtomicU64::new(0),
                    latency_us: AtomicU64::new(0),
                })
            })
            .collect();
        Matchers { remotes, config: config.clone(), turn: AtomicUsize::new(0) }
    }

    /// This thread's HTTP client.
    fn client(&self) -> reqwest::Client {
        CLIENT.with(|c| {
            c.borrow_mut()
                .get_or_insert_with(|| {
                    reqwest::Client::builder()
                        .no_proxy()
                        .tcp_nodelay(true)
                        .connect_timeout(self.config.connect_timeout)
                        .timeout(self.config.request_timeout)
                        .pool_max_idle_per_host(64)
                        // The proxy retries on another matcher itself.
                        .retry(reqwest::retry::never())
                        .build()
                        .expect("an HTTP client without TLS builds")
                })
                .clone()
        })
    }

    /// Read every matcher's cache report now, then every `poll_interval`
    /// (`probe_interval` for one out of rotation). Runs for the life of the
    /// process.
    pub async fn poll(self: Arc<Self>) {
        let mut last_probe = vec![None::<Instant>; self.remotes.len()];
        loop {
            let due: Vec<usize> = (0..self.remotes.len())
                .filter(|&i| {
                    let every = if self.remotes[i].in_rotation.load(Ordering::Relaxed) { self.config.poll_interval } else { self.config.probe_interval };
                    last_probe[i].is_none_or(|t: Instant| t.elapsed() >= every)
                })
                .collect();
            let polls = due.iter().map(|&i| self.poll_one(&self.remotes[i]));
            futures_util::future::join_all(polls).await;
            for i in due {
                last_probe[i] = Some(Instant::now());
            }
            tokio::time::sleep(self.config.poll_interval.min(self.config.probe_interval)).await;
        }
    }

    async fn poll_one(&self, remote: &Remote) {
        let answer = self.client().get(format!("{}/1/matcher/cache", remote.url)).timeout(self.config.request_timeout).send().await;
        let report = match answer {
            Ok(r) if r.status().is_success() => {
                r.bytes().await.map_err(|e| e.to_string()).and_then(|b| serde_json::from_slice::<CacheReport>(&b).map_err(|e| e.to_string()))
            }
            Ok(r) => Err(format!("status {}", r.status())),
            Err(e) => Err(describe(&e)),
        };
        match report {
            Ok(report) => {
                *remote.report.write() = Some(report);
                if !remote.in_rotation.swap(true, Ordering::Relaxed) {
                    remote.failures.store(0, Ordering::Relaxed);
                    log::info!("matcher {} answers again: back in rotation", remote.name);
                }
            }
            Err(why) => {
                if remote.report.write().take().is_some() {
                    log::warn!("matcher {}: cache report failed: {why}", remote.name);
                }
                self.failed(remote, &why);
            }
        }
    }

    /// Count a failure of `remote`; past the threshold it leaves rotation.
    fn failed(&self, remote: &Remote, why: &str) {
        let failures = remote.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= self.config.failure_threshold && remote.in_rotation.swap(false, Ordering::Relaxed) {
            log::warn!("matcher {} failed {failures} times in a row ({why}): out of rotation until its cache report answers", remote.name);
        }
    }

    /// Every matcher's state and counters.
    pub fn statuses(&self) -> Vec<RemoteStatus> {
        self.remotes
            .iter()
            .map(|r| RemoteStatus {
                name: r.name.clone(),
                up: r.in_rotation.load(Ordering::Relaxed) && r.report.read().as_ref().is_some_and(|c| c.ready),
                requests: r.requests.load(Ordering::Relaxed),
                errors: r.errors.load(Ordering::Relaxed),
                retries: r.retries.load(Ordering::Relaxed),
                latency_seconds: r.latency_us.load(Ordering::Relaxed) as f64 / 1e6,
            })
            .collect()
    }

    /// Ask every matcher's `/healthcheck` now. The errors of those that do
    /// not answer healthy, and whether any did.
    pub async fn health(&self) -> (Vec<ComponentError>, bool) {
        let checks = self.remotes.iter().map(|r| async move {
            // A health check waits less than a match may: a matcher's own check is a ping of the store.
            let answer = self.client().get(format!("{}/healthcheck", r.url)).timeout(self.config.connect_timeout + Duration::from_secs(2)).send().await;
            match answer {
                Ok(a) if a.status().is_success() => None,
                Ok(a) => Some(ComponentError { component: format!("matcher:{}", r.name), error: format!("/healthcheck answered {}", a.status()) }),
                Err(e) => Some(ComponentError { component: format!("matcher:{}", r.name), error: describe(&e) }),
            }
        });
        let errors: Vec<ComponentError> = futures_util::future::join_all(checks).await.into_iter().flatten().collect();
        let any_up = errors.len() < self.remotes.len();
        (errors, any_up)
    }
}

/// A failed call, said in a few words.
fn describe(e: &reqwest::Error) -> String {
    use std::error::Error;
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    if e.is_timeout() {
        text = format!("timed out: {text}");
    }
    text
}
