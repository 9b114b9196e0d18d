//! The HTTP layer: routes, bodies, errors and the request context. Thin by
//! design; all behaviour lives in `luna_core`.

pub mod codec;
pub mod errors;
pub mod handlers;
pub mod middleware;
pub mod openapi;

use std::sync::Arc;
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{HttpServiceFactory, ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::middleware::from_fn;
use actix_web::{guard, web, App, FromRequest, Handler, HttpRequest, Responder, Route};
use luna_actors::PluginHost;
use luna_core::Core;

use crate::config::Role;
use crate::proxy::Matchers;
use crate::telemetry::Telemetry;
use handlers as h;

/// What every handler can reach.
pub struct AppState {
    pub core: Arc<Core>,
    pub telemetry: Arc<Telemetry>,
    /// None when no plugin is active: Python is then never started.
    pub plugins: Option<Arc<PluginHost>>,
    pub role: Role,
    /// Longest wait for a request's whole body.
    pub body_timeout: Duration,
    /// Role proxy: the matchers that answer default sub-requests.
    pub matchers: Option<Arc<Matchers>>,
}

impl AppState {
    /// The plugins that may answer matching sub-requests: the proxy pipeline
    /// of roles standalone and proxy, never the matcher role. None when no
    /// matching plugin runs, so a request then skips the pipeline's work.
    pub fn matching_plugins(&self) -> Option<&PluginHost> {
        self.plugins.as_deref().filter(|p| self.role != Role::Matcher && p.has_matchers())
    }
}

/// A route for `method`; GET routes answer HEAD as well.
fn on<F, Args>(method: Method, handler: F) -> (Method, Route)
where
    F: Handler<Args>,
    Args: FromRequest + 'static,
    F::Output: Responder + 'static,
{
    let route = if method == Method::GET { web::route().guard(guard::Any(guard::Get()).or(guard::Head())) } else { web::route().method(method.clone()) };
    (method, route.to(handler))
}

/// One resource: its routes, our 405 with `Allow` for any other method, and,
/// for the methods it serves, the check of `Luna-Request-Id`: the method is
/// checked first.
fn resource(path: &str, routes: Vec<(Method, Route)>) -> impl HttpServiceFactory {
    let mut allowed: Vec<Method> = routes.iter().map(|(m, _)| m.clone()).collect();
    if allowed.contains(&Method::GET) {
        allowed.push(Method::HEAD);
    }
    let allow = allowed.iter().map(Method::as_str).collect::<Vec<_>>().join(", ");
    let allowed = Arc::new(allowed);
    routes
        .into_iter()
        .fold(web::resource(path), |r, (_, route)| r.route(route))
        .default_service(web::to(move |req: HttpRequest| h::method_not_allowed(req, Some(allow.clone()))))
        .wrap(from_fn(move |req, next| middleware::reject_bad_request_id(allowed.clone(), req, next)))
}

/// Every route of docs/api.md.
pub fn routes(cfg: &mut web::ServiceConfig) {
    use Method as M;
    cfg.service(resource("/healthcheck", vec![on(M::GET, h::healthcheck)]))
        .service(resource("/1/plugins", vec![on(M::GET, h::plugins)]))
        .service(resource("/1/version", vec![on(M::GET, h::version)]))
        .service(resource("/1/docs/spec", vec![on(M::GET, h::spec)]))
        .service(resource("/1/docs/errors", vec![on(M::GET, h::errors_page)]))
        .service(resource("/metrics", vec![on(M::GET, h::metrics)]))
        .service(resource("/1/lists", vec![on(M::POST, h::create_list)]))
        .service(resource("/1/lists/{list_id}", vec![on(M::GET, h::get_list), on(M::DELETE, h::delete_list)]))
        .service(resource("/1/lists/{list_id}/faces", vec![on(M::PATCH, h::patch_list_faces)]))
        .service(resource("/1/faces", vec![on(M::POST, h::create_face)]))
        .service(resource("/1/faces/bulk", vec![on(M::POST, h::create_faces)]))
        .service(resource("/1/faces/{face_id}", vec![on(M::GET, h::get_face), on(M::DELETE, h::delete_face)]))
        .service(resource("/1/matcher/faces", vec![on(M::POST, h::match_faces)]))
        .service(resource("/1/matcher/raw", vec![on(M::POST, h::match_raw)]))
        .service(resource("/1/matcher/cache", vec![on(M::GET, h::cache)]))
        .service(resource("/1/internal/matcher/subrequests", vec![on(M::POST, h::subrequests)]));
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
