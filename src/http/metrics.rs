//! The HTTP endpoint for Prometheus and orchestrators, served by shard 0.
//!
//! Owns: the routes `GET /metrics` (text exposition), `GET /healthz`
//! (liveness: the process answers) and `GET /readyz` (readiness: every
//! shard started and serves). The HTTP plumbing is `crate::http`.
//!
//! Must not: expose the queue or anything that changes state (that is the
//! admin API, on its own listener).

use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use std::future::Future;
use std::pin::Pin;

use crate::http::{Endpoint, Request, Response};
use crate::shard::stop::StopSignal;

/// Serves until `stop` is disconnected. `ready` turns true once every
/// shard has started.
pub async fn serve(listener: crate::shard::net::Bound, ready: Arc<AtomicBool>, stop: StopSignal) {
    crate::http::serve(
        listener,
        Rc::new(MetricsApi { ready }),
        crate::http::ListenerLimits::control("metrics"),
        stop,
    )
    .await;
}

struct MetricsApi {
    ready: Arc<AtomicBool>,
}

impl Endpoint for MetricsApi {
    fn answer(self: Rc<Self>, req: Request) -> Pin<Box<dyn Future<Output = Response>>> {
        let response = route(&req, self.ready.load(Ordering::Acquire));
        Box::pin(async move { response })
    }
}

/// Pure: the response to a request.
fn route(req: &Request, ready: bool) -> Response {
    if req.method != "GET" {
        return Response::text(405, "GET only\n");
    }
    match req.route().as_slice() {
        ["metrics"] => Response {
            status: 200,
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: crate::metrics::render().into_bytes(),
        },
        ["healthz"] => Response::text(200, "ok\n"),
        ["readyz"] if ready => Response::text(200, "ready\n"),
        ["readyz"] => Response::text(503, "starting\n"),
        _ => Response::text(404, "not found\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(raw: &str, ready: bool) -> u16 {
        let (method, target) = raw.split_once(' ').unwrap();
        route(&Request::new(method, target), ready).status
    }

    #[test]
    fn routes() {
        assert_eq!(get("GET /healthz", false), 200);
        assert_eq!(get("GET /readyz", false), 503);
        assert_eq!(get("GET /readyz", true), 200);
        assert_eq!(get("GET /nope", true), 404);
        assert_eq!(get("POST /metrics", true), 405);
    }
}
