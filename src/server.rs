//! Start-up and shutdown of the service: store, plugins, HTTP server.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::{web, HttpServer};
use luna_actors::plugin::ServiceInfo;
use luna_actors::PluginHost;
use luna_core::{Core, CoreConfig};
use tokio::signal::unix;

use crate::config::{Backend, Config, Role};
use crate::data_lock::DataLock;
use crate::http::{self, openapi, AppState};
use crate::proxy::Matchers;
use crate::telemetry::Telemetry;

/// Open the store: the SQLite file, loaded into memory; or PostgreSQL,
/// connected to and migrated, loading into memory in the background.
pub fn core(config: &Config) -> Result<Arc<Core>, String> {
    let (store, setting) = config.store();
    let core = Core::open(CoreConfig {
        store,
        versions: config.versions()?,
        limits: config.limits.clone(),
        threads: config.threads(),
        remote_matching: config.server.role == Role::Proxy,
    })
    .map_err(|e| format!("cannot open the store ({setting}): {}", e.detail))?;
    Ok(Arc::new(core))
}

/// The shared state of the app.
/// The shared state of the app; role proxy's matchers are polled from the
/// current actix System.
pub fn state(config: &Config, core: Arc<Core>, plugins: Option<Arc<PluginHost>>) -> web::Data<AppState> {
    let telemetry = Telemetry::new(config.service_name(), config.instance(), plugins.clone());
    let matchers = (config.server.role == Role::Proxy).then(|| {
        let matchers = Arc::new(Matchers::new(&config.proxy));
        actix_rt::spawn(matchers.clone().poll());
        matchers
    });
    web::Data::new(AppState { core, telemetry: Arc::new(telemetry), plugins, role: config.server.role, body_timeout: config.server.body_timeout, matchers })
}

/// Start the active plugins, if any. Must run inside the actix System.
pub fn plugins(config: &Config, core: &Arc<Core>) -> Result<Option<Arc<PluginHost>>, String> {
    let active = config.active_plugins();
    if active.is_empty() {
        return Ok(None);
    }
    luna_actors::supervisor::check_directory(&config.plugins.directory)?;
    let service = ServiceInfo { name: config.service_name(), url: service_url(&config.server.host, config.port()) };
    let paths = openapi::paths();
    let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
    let plugins = PluginHost::start(&config.plugins, active, service, &paths, core.clone())?;
    log::info!("plugins starting: {}", active.join(", "));
    Ok(Some(Arc::new(plugins)))
}

/// Where plugins reach the service's API (`app.ctx.serviceUrl`): the address
/// it listens on, loopback for a wildcard, an IPv6 address in brackets.
fn service_url(host: &str, port: u16) -> String {
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) if ip.is_unspecified() => format!("http://{}:{port}", Ipv4Addr::LOCALHOST),
        Ok(IpAddr::V6(ip)) if ip.is_unspecified() => format!("http://[{}]:{port}", Ipv6Addr::LOCALHOST),
        Ok(IpAddr::V6(ip)) => format!("http://[{ip}]:{port}"),
        _ => format!("http://{host}:{port}"),
    }
}

/// The HTTP server on `listener`. It handles no signals itself: `run` does.
pub fn serve(config: &Config, state: web::Data<AppState>, listener: TcpListener) -> std::io::Result<Server> {
    let workers = config.workers();
    // actix counts connections per worker.
    let per_worker = config.max_connections(nofile()).div_ceil(workers).max(1);
    Ok(HttpServer::new(move || http::app(state.clone()))
        .workers(workers)
        .max_connections(per_worker)
        .client_request_timeout(config.server.head_timeout)
        .disable_signals()
        .shutdown_timeout(config.shutdown.drain_timeout.as_secs().max(1))
        .listen(listener)?
        .run())
}

/// Why the service did not run to a clean stop.
pub enum Failure {
    /// Start-up refused: a bad setting, a data directory in use, a store that
    /// cannot be opened or is damaged. Exit code 2.
    Refused(String),
    /// Anything else. Exit code 1.
    Failed(String),
}

/// Serve until SIGTERM (or a first SIGINT): stop accepting, drain in-flight
/// requests (actix-http answers them with `Connection: close` and closes
/// idle kept-alive connections), flush plugins' event queues, `close()`
/// every plugin, checkpoint the store. A signal during start-up stops it at
/// once.
pub async fn run(config: Config) -> Result<(), Failure> {
    // First, before the store loads and Python starts: an interpreter that
    // finds SIGINT at its default installs its own handler, which would
    // swallow the signal.
    let mut signals = Signals::install().map_err(|e| Failure::Failed(format!("cannot handle signals: {e}")))?;
    // The embedded store has one owner; instances of a shared store share nothing on disk.
    let _lock = match config.storage.backend {
        Backend::Sqlite => Some(DataLock::acquire(&config.storage.data_dir).map_err(Failure::Refused)?),
        Backend::Postgres => None,
    };
    let nofile = raise_nofile();
    log::info!("descriptor limit {nofile}: at most {} client connections", config.max_connections(nofile));
    let addr = (config.server.host.clone(), config.port());
    let listener = TcpListener::bind(&addr).map_err(|e| Failure::Failed(format!("cannot listen on {}:{}: {e}", addr.0, addr.1)))?;
    log::info!("opening the store ({})", config.store().1);
    let core = tokio::select! {
        core = load_core(&config) => core.map_err(Failure::Refused)?,
        signal = signals.stop() => {
            log::info!("{signal} during start-up: stopped before serving");
            return Ok(());
        }
    };
    // What stops plugins from starting is a setting: the directory, the environment.
    let plugins = plugins(&config, &core).map_err(Failure::Refused)?;
    let state = state(&config, core.clone(), plugins.clone());
    let server = serve(&config, state, listener).map_err(|e| Failure::Failed(e.to_string()))?;
    log::info!("luna-matcher {} listening on {}:{} as {:?}", env!("CARGO_PKG_VERSION"), addr.0, addr.1, config.server.role);
    let handle = server.handle();
    actix_rt::spawn(async move {
        let signal = signals.stop().await;
        log::info!("{signal}: stopping: no new connections, draining in-flight requests");
        let graceful = handle.stop(true);
        // A second SIGINT does not wait for the drain.
        tokio::select! {
            _ = graceful => {}
            _ = signals.interrupt() => {
                log::warn!("second interrupt: stopping without draining");
                handle.stop(false).await;
            }
        }
    });
    let checkpoints = actix_rt::spawn(checkpoints(core.clone(), config.storage.checkpoint_interval));
    server.await.map_err(|e| Failure::Failed(e.to_string()))?;
    checkpoints.abort();
    if let Some(plugins) = plugins {
        log::info!("flushing event queues and closing plugins");
        // A plugin still importing takes its close() only after the import:
        // the process does not wait for it past the close deadline.
        let limit = config.shutdown.flush_timeout + config.plugins.close_timeout + Duration::from_secs(1);
        if tokio::time::timeout(limit, plugins.shutdown(config.shutdown.flush_timeout)).await.is_err() {
            log::warn!("plugins did not close within {} ms; stopping without them", limit.as_millis());
        }
    }
    match actix_web::web::block(move || core.checkpoint()).await {
        Ok(Ok(())) => log::info!("store checkpointed: the WAL is empty"),
        Ok(Err(e)) => log::error!("final checkpoint failed (nothing is lost: the WAL is replayed at the next start): {e}"),
        Err(e) => log::error!("final checkpoint failed: {e}"),
    }
    log::info!("stopped");
    Ok(())
}

/// SIGTERM and SIGINT, listened to from the moment they are installed.
struct Signals {
    term: unix::Signal,
    int: unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        Ok(Signals { term: unix::signal(unix::SignalKind::terminate())?, int: unix::signal(unix::SignalKind::interrupt())? })
    }

    async fn stop(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }

    async fn interrupt(&mut self) {
        self.int.recv().await;
    }
}

/// The store, opened and loaded on its own thread so that a signal meanwhile
/// is answered at once; a store that cannot take writes is said loudly.
async fn load_core(config: &Config) -> Result<Arc<Core>, String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let config = config.clone();
    std::thread::Builder::new()
        .name("store-load".into())
        .spawn(move || {
            let core = core(&config);
            if let Some(Err(e)) = core.as_ref().ok().filter(|_| config.storage.backend == Backend::Sqlite).map(|c| c.check_store()) {
                log::error!(
                    "THE DATA DIRECTORY {} IS NOT WRITABLE: {e}. Writes fail and /healthcheck answers 502 until it is.",
                    config.storage.data_dir.display()
                );
            }
            let _ = tx.send(core);
        })
        .map_err(|e| e.to_string())?;
    rx.await.map_err(|_| "the store loader stopped".to_string())?
}

/// Checkpoint the store every `every`, so the WAL stays short; 0 disables.
async fn checkpoints(core: Arc<Core>, every: Duration) {
    if every.is_zero() {
        return;
    }
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        let core = core.clone();
        if let Ok(Err(e)) = actix_web::web::block(move || core.checkpoint()).await {
            log::warn!("periodic checkpoint failed: {e}");
        }
    }
}

/// The soft limit on open descriptors.
fn nofile() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct it is given.
    match unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } {
        0 => limit.rlim_cur,
        _ => 1024,
    }
}

/// Raise the soft limit on open descriptors to the hard one (as far as 2^20),
/// and return the limit in force.
fn raise_nofile() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit read and write the struct they are given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit { rlim_cur: limit.rlim_max.min(1 << 20), rlim_max: limit.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                log::info!("descriptor limit raised from {} to {}", limit.rlim_cur, raised.rlim_cur);
            }
        }
    }
    nofile()
}

#[cfg(test)]
mod tests {
    use super::service_url;

    #[test]
    fn plugins_reach_the_service_where_it_listens() {
        assert_eq!(service_url("0.0.0.0", 5100), "http://127.0.0.1:5100");
        assert_eq!(service_url("127.0.0.1", 5100), "http://127.0.0.1:5100");
        assert_eq!(service_url("::", 5100), "http://[::1]:5100");
        assert_eq!(service_url("::1", 5100), "http://[::1]:5100");
        assert_eq!(service_url("fe80::1", 80), "http://[fe80::1]:80");
        assert_eq!(service_url("localhost", 5100), "http://localhost:5100");
    }
}
