//! The admin listener's endpoint: who may ask (the token, as a bearer
//! token or, for a browser, the password of HTTP Basic; no change from a
//! page of another origin), and which endpoint answers each path: the
//! status pages (`http::status`), the suppression list
//! (`http::suppressions`), refused webhook events (`http::events_failed`),
//! finding messages (`http::find`), the shaping rules' reload, and the
//! queue API (`http::admin`) for everything else.
//!
//! May call: those endpoints. Must not: answer anything itself.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;

use crate::http::admin::Shards;
use crate::http::{Endpoint, Request, Response};
use crate::shard::clock::Clock;
use crate::suppression::SuppressionList;

/// The admin listener's endpoint.
pub struct AdminApi {
    shards: Shards,
    /// The bearer token every request must carry, if configured.
    token: Option<String>,
    /// The node's suppression list (shared), when on.
    suppressions: Option<Arc<SuppressionList>>,
    clock: Clock,
    /// `delivery.log`, read by `/queue/messages/ID/trace`.
    delivery_log: String,
    /// `POST /config/reload`.
    reload: crate::scheduler::reload::Reload,
}

impl AdminApi {
    pub fn new(
        shards: Shards,
        token: Option<String>,
        suppressions: Option<Arc<SuppressionList>>,
        clock: Clock,
        delivery_log: String,
        reload: crate::scheduler::reload::Reload,
    ) -> Rc<AdminApi> {
        Rc::new(AdminApi {
            shards,
            token,
            suppressions,
            clock,
            delivery_log,
            reload,
        })
    }
}

/// The first segment of a request's path.
fn first(req: &Request) -> &str {
    req.segments.first().map_or("", String::as_str)
}

impl Endpoint for AdminApi {
    fn admit(&self, head: &Request) -> Result<(), Response> {
        if !authorized(head, self.token.as_deref()) {
            // The status pages ask a browser for the token (Basic).
            return Err(match first(head) {
                "status" => crate::http::status::unauthorized(),
                _ => crate::http::admin::unauthorized(),
            });
        }
        if head.method != "GET" && head.is_cross_origin() {
            return Err(crate::http::admin::cross_origin());
        }
        Ok(())
    }

    fn answer(self: Rc<Self>, req: Request) -> Pin<Box<dyn Future<Output = Response>>> {
        Box::pin(async move {
            let (shards, clock, log) = (&self.shards, &self.clock, self.delivery_log.as_str());
            match (first(&req), req.route().as_slice()) {
                ("suppressions", _) => {
                    crate::http::suppressions::answer(self.suppressions.as_ref(), clock, &req)
                }
                ("events", _) => crate::http::events_failed::answer(shards, &req).await,
                (_, ["config", "reload"]) => crate::http::admin::reload(&self.reload, &req).await,
                ("status", _) => crate::http::status::answer(shards, clock, log, &req).await,
                (_, ["queue", "actions"]) if req.method == "POST" => {
                    crate::http::actions::answer(shards, &req).await
                }
                (_, ["queue", "bounce-rules", ..]) => {
                    crate::http::bounce_rules::answer(shards, &req).await
                }
                (_, ["queue", "find"]) if req.method == "GET" => {
                    let list = self.suppressions.as_ref();
                    crate::http::find::answer(shards, list, clock, &req).await
                }
                _ => crate::http::admin::answer(shards, log, clock.now(), &req).await,
            }
        })
    }
}

/// The token as a bearer token (the CLI, scripts) or as the password of
/// HTTP Basic authentication (a browser on the status pages).
fn authorized(req: &Request, token: Option<&str>) -> bool {
    token.is_none_or(|t| crate::http::bearer_matches(req, t) || crate::http::basic_matches(req, t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_token_must_match_exactly() {
        let with = |h: &str| Request {
            authorization: h.strip_prefix("Authorization: ").map(str::to_string),
            ..Request::new("GET", "/queue/summary")
        };
        assert!(authorized(&with("X: y"), None));
        assert!(authorized(
            &with("Authorization: Bearer s3cret"),
            Some("s3cret")
        ));
        assert!(!authorized(
            &with("Authorization: Bearer s3cre"),
            Some("s3cret")
        ));
        assert!(!authorized(
            &with("Authorization: Bearer s3cretx"),
            Some("s3cret")
        ));
        assert!(!authorized(&with("Authorization: s3cret"), Some("s3cret")));
        assert!(!authorized(&with("X: y"), Some("s3cret")));
        // A browser's Basic: any user, the token as the password.
        assert!(authorized(
            &with("Authorization: Basic b3A6czNjcmV0"),
            Some("s3cret")
        ));
        assert!(!authorized(
            &with("Authorization: Basic b3A6czNjcmU="),
            Some("s3cret")
        ));
    }
}
