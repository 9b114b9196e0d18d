//! Calls to the plugin's HTTP routes.

use std::time::Instant;

use actix::prelude::*;

use super::{Fault, PluginActor};
use crate::failure::Failure;
use crate::host::Wait;
use crate::python::host;
use crate::status::PluginState;

/// A request to one of the plugin's routes.
#[derive(Message)]
#[rtype(result = "Result<RouteReply, RouteError>")]
pub struct CallRoute {
    /// The route's template, as the plugin registered it.
    pub template: String,
    /// Values of its `{name}` segments.
    pub params: Vec<(String, String)>,
    /// The HTTP method.
    pub method: String,
    /// The request's path.
    pub path: String,
    /// The query string, without `?`.
    pub query: String,
    /// The request's headers.
    pub headers: Vec<(String, String)>,
    /// The request's body.
    pub body: Vec<u8>,
}

/// A plugin route's answer.
#[derive(Debug)]
pub struct RouteReply {
    /// The HTTP status.
    pub status: u16,
    /// Its headers.
    pub headers: Vec<(String, String)>,
    /// Its body.
    pub body: Vec<u8>,
}

/// Why a plugin route gave no answer; the HTTP layer maps each to an error code.
#[derive(Debug)]
pub enum RouteError {
    /// The plugin is not running (restarting or failed).
    Unavailable(PluginState),
    /// The handler raised, or answered something that is not a response.
    Failed(String),
    /// The handler did not answer within the plugin's timeout.
    TimedOut(String),
}

impl Handler<CallRoute> for PluginActor {
    type Result = ResponseFuture<Result<RouteReply, RouteError>>;

    fn handle(&mut self, msg: CallRoute, ctx: &mut Self::Context) -> Self::Result {
        let (PluginState::Running, Some(context)) = (self.state, &self.context) else {
            let state = self.state;
            return Box::pin(async move { Err(RouteError::Unavailable(state)) });
        };
        let route = format!("route {} {}", msg.method, msg.path);
        // No GIL here: the request is made on the loop thread.
        let served = host().serve(msg, self.setup.settings.timeout, context);
        let (status, me, generation) = (self.setup.status.clone(), ctx.address(), self.generation);
        Box::pin(async move {
            let start = Instant::now();
            let outcome = served.answer(Wait::Caller).await;
            status.call(start.elapsed());
            match outcome {
                Ok((code, headers, body)) => Ok(RouteReply { status: code, headers: headers.into_iter().collect(), body }),
                Err(Failure::TimedOut(e)) => {
                    status.error(format!("{route}: {e}"), None);
                    Err(RouteError::TimedOut(e))
                }
                // The event loop did not answer in time: not the plugin's own doing.
                Err(Failure::NoAnswer(e)) => Err(RouteError::TimedOut(e)),
                Err(e @ Failure::Panic(_)) => {
                    me.do_send(Fault { generation, error: format!("{route}: {}", e.summary()), traceback: None });
                    Err(RouteError::Failed(e.summary()))
                }
                Err(e) => {
                    status.error(format!("{route}: {}", e.summary()), e.traceback());
                    Err(RouteError::Failed(e.summary()))
                }
            }
        })
    }
}
