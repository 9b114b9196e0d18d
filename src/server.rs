//! Start-up and shutdown of the service: store, plugins, HTTP server.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, TcpListener};
use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::{web, HttpServer};
use luna_actors::plugin::ServiceInfo;
use luna_actors::PluginHost;
use luna_core::{Core, CoreConfig};

use crate::config::{Config, Role};
use crate::http::{self, openapi, AppState};
use crate::telemetry::Telemetry;

/// Open the store: the SQLite file, loaded into memory.
pub fn core(config: &Config) -> Result<Arc<Core>, String> {
    let core = Core::open(CoreConfig { db_path: config.db_path(), versions: config.versions()?, limits: config.limits.clone(), threads: config.threads() })
        .map_err(|e| format!("cannot open the store {}: {e}", config.db_path().display()))?;
    Ok(Arc::new(core))
}

/// The shared state of the app.
pub fn state(config: &Config, core: Arc<Core>, plugins: Option<Arc<PluginHost>>) -> web::Data<AppState> {
    let telemetry = Telemetry::new(config.service_name(), plugins.clone());
    web::Data::new(AppState { core, telemetry: Arc::new(telemetry), plugins, role: config.server.role })
}

/// Start the active plugins, if any. Must run inside the actix System.
pub fn plugins(config: &Config, core: &Arc<Core>) -> Result<Option<Arc<PluginHost>>, String> {
    let active = config.active_plugins();
    if active.is_empty() {
        return Ok(None);
    }
    luna_actors::supervisor::check_directory(&config.plugins.directory)?;
    let service = ServiceInfo { name: config.service_name(), url: service_url(&config.server.host, config.port()) };
    let plugins = PluginHost::start(&config.plugins, active, service, &openapi::PATHS, core.clone())?;
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
pub async fn run(config: Config) -> Result<(), String> {
    if config.server.role == Role::Proxy {
        return Err("role proxy is not available yet: it needs the matching-plugin pipeline; run matcher or standalone".into());
    }
    let addr = (config.server.host.clone(), config.port());
    let listener = TcpListener::bind(&addr).map_err(|e| format!("cannot listen on {}:{}: {e}", addr.0, addr.1))?;
    let core = core(&config)?;
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
