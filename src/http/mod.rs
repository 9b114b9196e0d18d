//! The HTTP layer: routes, bodies, errors and the request context. Thin by
//! design; all behaviour lives in `luna_core`.

pub mod codec;
pub mod errors;
pub mod handlers;
pub mod middleware;
pub mod openapi;

use std::sync::Arc;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::{web, App, Route};
use luna_actors::Plugins;
use luna_core::Core;

use crate::config::Role;
use crate::telemetry::Telemetry;
use handlers as h;

/// What every handler can reach.
pub struct AppState {
    pub core: Arc<Core>,
    pub telemetry: Arc<Telemetry>,
    /// None when no plugin is active: Python is then never started.
    pub plugins: Option<Arc<Plugins>>,
    pub role: Role,
}

impl AppState {
    /// The plugins that may answer matching sub-requests: the proxy pipeline
    /// of roles standalone and proxy, never the matcher role. None when no
    /// matching plugin runs, so a request then skips the pipeline's work.
    pub fn matching_plugins(&self) -> Option<&Plugins> {
        self.plugins.as_deref().filter(|p| self.role != Role::Matcher && p.has_matchers())
    }
}

/// One resource: its routes, and our 405 body for any other method.
fn resource(path: &str, routes: Vec<Route>) -> actix_web::Resource {
    routes.into_iter().fold(web::resource(path), |r, route| r.route(route)).default_service(web::to(h::method_not_allowed))
}

/// Every route of api.md.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/healthcheck", vec![web::get().to(h::healthcheck)]))
        .service(resource("/1/plugins", vec![web::get().to(h::plugins)]))
        .service(resource("/1/version", vec![web::get().to(h::version)]))
        .service(resource("/1/docs/spec", vec![web::get().to(h::spec)]))
        .service(resource("/metrics", vec![web::get().to(h::metrics)]))
        .service(resource("/1/lists", vec![web::post().to(h::create_list)]))
        .service(resource("/1/lists/{list_id}", vec![web::get().to(h::get_list), web::delete().to(h::delete_list)]))
        .service(resource("/1/lists/{list_id}/faces", vec![web::patch().to(h::patch_list_faces)]))
        .service(resource("/1/faces", vec![web::post().to(h::create_face)]))
        .service(resource("/1/faces/bulk", vec![web::post().to(h::create_faces)]))
        .service(resource("/1/faces/{face_id}", vec![web::get().to(h::get_face), web::delete().to(h::delete_face)]))
        .service(resource("/1/matcher/faces", vec![web::post().to(h::match_faces)]))
        .service(resource("/1/matcher/raw", vec![web::post().to(h::match_raw)]))
        .service(resource("/1/matcher/cache", vec![web::get().to(h::cache)]));
}

/// The application, as the server runs it and as the tests drive it.
pub fn app(
    state: web::Data<AppState>,
) -> App<impl ServiceFactory<ServiceRequest, Config = (), Response = ServiceResponse<impl MessageBody>, Error = actix_web::Error, InitError = ()>> {
    App::new()
        .app_data(state)
        // The size limit is enforced by `codec::Input` with its own error code.
        .app_data(web::PayloadConfig::new(usize::MAX))
        .configure(routes)
        .default_service(web::to(h::fallback))
        .wrap(actix_web::middleware::from_fn(middleware::request_context))
}
