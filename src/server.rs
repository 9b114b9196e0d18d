//! Start-up and shutdown of the service: store, plugins, HTTP server.

use std::net::TcpListener;
use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::{web, HttpServer};
use luna_actors::plugin::ServiceInfo;
use luna_actors::Plugins;
use luna_core::{Core, CoreConfig};

use crate::config::{Config, Role};
use crate::http::{self, openapi, AppState};
use crate::telemetry::Telemetry;

/// Open the store: the SQLite file, loaded into memory; or PostgreSQL,
/// connected to and migrated, loading into memory in the background.
pub fn core(config: &Config) -> Result<Arc<Core>, String> {
    let (store, setting) = config.store();
    let core = Core::open(CoreConfig { store, versions: config.versions()?, limits: config.limits.clone(), threads: config.threads() })
        .map_err(|e| format!("cannot open the store ({setting}): {}", e.detail))?;
    Ok(Arc::new(core))
}

/// Why the service stopped without serving: exit code 2 for a setting that
/// keeps it from starting (as a bad configuration does), 1 otherwise.
#[derive(Debug)]
pub struct Failure {
    pub message: String,
    pub exit_code: u8,
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Failure { message, exit_code: 1 }
    }
}

/// The shared state of the app.
pub fn state(config: &Config, core: Arc<Core>, plugins: Option<Arc<Plugins>>) -> web::Data<AppState> {
    let telemetry = Telemetry::new(config.service_name(), plugins.clone());
    web::Data::new(AppState { core, telemetry: Arc::new(telemetry), plugins, role: config.server.role })
}

/// Start the active plugins, if any. Must run inside the actix System.
pub fn plugins(config: &Config, core: &Arc<Core>) -> Result<Option<Arc<Plugins>>, String> {
    let active = config.active_plugins();
    if active.is_empty() {
        return Ok(None);
    }
    luna_actors::supervisor::check_directory(&config.plugins.directory)?;
    let host = if config.server.host == "0.0.0.0" { "127.0.0.1" } else { config.server.host.as_str() };
    let service = ServiceInfo { name: config.service_name(), url: format!("http://{host}:{}", config.port()) };
    let plugins = Plugins::start(&config.plugins, active, service, &openapi::PATHS, core.clone())?;
    log::info!("plugins starting: {}", active.join(", "));
    Ok(Some(Arc::new(plugins)))
}

/// The HTTP server on `listener`. It handles no signals itself: `run` does.
pub fn serve(config: &Config, state: web::Data<AppState>, listener: TcpListener) -> std::io::Result<Server> {
    let workers = match config.server.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    Ok(HttpServer::new(move || http::app(state.clone()))
        .workers(workers)
        .disable_signals()
        .shutdown_timeout(config.shutdown.drain_timeout.as_secs().max(1))
        .listen(listener)?
        .run())
}

/// Serve until SIGTERM (or a first SIGINT): stop accepting, drain in-flight
/// requests, flush plugins' event queues, `close()` every plugin.
pub async fn run(config: Config) -> Result<(), Failure> {
    if config.server.role == Role::Proxy {
        return Err(String::from("role proxy is not available yet: it needs the matching-plugin pipeline; run matcher or standalone").into());
    }
    let addr = (config.server.host.clone(), config.port());
    let listener = TcpListener::bind(&addr).map_err(|e| format!("cannot listen on {}:{}: {e}", addr.0, addr.1))?;
    let core = core(&config).map_err(|message| Failure { message, exit_code: 2 })?;
    let plugins = plugins(&config, &core)?;
    let state = state(&config, core, plugins.clone());
    let server = serve(&config, state, listener).map_err(|e| e.to_string())?;
    log::info!("luna-matcher {} listening on {}:{} as {:?}", env!("CARGO_PKG_VERSION"), addr.0, addr.1, config.server.role);
    let handle = server.handle();
    actix_rt::spawn(async move {
        stop_signal().await;
        log::info!("stopping: no new connections, draining in-flight requests");
        let graceful = handle.stop(true);
        // A second SIGINT does not wait for the drain.
        tokio::select! {
            _ = graceful => {}
            _ = tokio::signal::ctrl_c() => {
                log::warn!("second interrupt: stopping without draining");
                handle.stop(false).await;
            }
        }
    });
    server.await.map_err(|e| e.to_string())?;
    if let Some(plugins) = plugins {
        log::info!("flushing event queues and closing plugins");
        plugins.shutdown(config.shutdown.flush_timeout).await;
    }
    log::info!("stopped");
    Ok(())
}

async fn stop_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
