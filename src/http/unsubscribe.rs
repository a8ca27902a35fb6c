//! The public unsubscribe listener (`unsubscribe.listen`, shard 0): what
//! a receiver's "Unsubscribe" button and a recipient's click reach.
//!
//! Owns: [`UnsubscribeApi`], two routes:
//! - `POST /u/TOKEN` with the body `List-Unsubscribe=One-Click` (RFC 8058
//!   §3.2; form-encoded or `multipart/form-data`): the recipient is
//!   suppressed for the sender domain and an `Unsubscribe` event written
//!   (`inbound::unsubscribe`), then `200` with a short page, no redirect.
//! - `GET /u/TOKEN`: a page naming the address and the sender domain, with
//!   a button that makes that POST. A GET never unsubscribes: mail
//!   scanners and link previews follow every link.
//!
//! A token that is not one (`400`), or that no secret in force signed,
//! that was altered or that expired (`404`), changes nothing. Each client
//! address (an IPv6 client by its /64) may make
//! `unsubscribe.max_requests_per_ip_per_minute` requests a minute
//! ([`PerIpRate`]); more get `429` before any body is read. Nothing is
//! logged per request: each is counted in
//! `ringpost_unsubscribe_requests_total`.
//!
//! May call: `inbound` (the unsubscriber), `unsubscribe` (token limits),
//! `http` (the server, escaping), `metrics`, `shard`.
//! Must not: ask for a token or a password: the link is the credential.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::http::status::render::escape;
use crate::http::{Endpoint, Request, Response};
use crate::inbound::unsubscribe::{Unsubscribed, Unsubscriber, count};
use crate::shard::log_limit::LogLimit;
use crate::unsubscribe::{Claim, TokenError};

/// Client addresses tracked at most by the rate limit; past it, those
/// whose allowance has refilled are forgotten (and, under a flood of
/// distinct addresses, all).
const MAX_TRACKED: usize = 100_000;

pub struct UnsubscribeApi {
    unsubscriber: Unsubscriber,
    rate: RefCell<PerIpRate>,
    failures_logged: LogLimit,
}

impl UnsubscribeApi {
    pub fn new(unsubscriber: Unsubscriber, per_minute: u32) -> UnsubscribeApi {
        UnsubscribeApi {
            unsubscriber,
            rate: RefCell::new(PerIpRate::new(per_minute)),
            failures_logged: LogLimit::new(Duration::from_secs(10)),
        }
    }

    /// The listener's limits: small bodies, the control listeners' pace.
    pub fn limits(max_connections: usize) -> crate::http::ListenerLimits {
        crate::http::ListenerLimits {
            max_body: 8 * 1024,
            max_connections,
            max_connections_per_ip: 8,
            ..crate::http::ListenerLimits::control("unsubscribe")
        }
    }

    /// The claim of a token, or the page that says why there is none.
    fn claim(&self, token: &str, via: &'static str) -> Result<Claim, Response> {
        self.unsubscriber.claim(token).map_err(|e| {
            count(via, e.as_str());
            match e {
                TokenError::Malformed => page(400, "Not an unsubscribe link", INVALID),
                _ => page(404, "Unknown unsubscribe link", UNKNOWN),
            }
        })
    }

    fn confirmation(&self, token: &str) -> Response {
        let claim = match self.claim(token, "page") {
            Ok(c) => c,
            Err(page) => return page,
        };
        count("page", "shown");
        let (rcpt, domain) = (escape(&claim.recipient), escape(&claim.sender_domain));
        if self.unsubscriber.is_suppressed(&claim) {
            let text = format!("<p>{rcpt} receives no more mail from {domain}.</p>");
            return page(200, "Unsubscribed", &text);
        }
        let text = format!(
            "<p>Stop mail from <b>{domain}</b> to <b>{rcpt}</b>?</p>\
             <form method=\"post\"><input type=\"hidden\" name=\"List-Unsubscribe\" \
             value=\"One-Click\"><button type=\"submit\">Unsubscribe</button></form>"
        );
        page(200, "Unsubscribe", &text)
    }

    fn one_click(&self, token: &str, req: &Request) -> Response {
        if !crate::unsubscribe::is_one_click(req.content_type.as_deref(), &req.body) {
            count("one-click", "not_one_click");
            return page(
                400,
                "Not a one-click request",
                "<p>The request must carry <code>List-Unsubscribe=One-Click</code> (RFC 8058).</p>",
            );
        }
        let claim = match self.claim(token, "one-click") {
            Ok(c) => c,
            Err(page) => return page,
        };
        match self.unsubscriber.apply(&claim, "one-click") {
            Ok(done) => {
                count(
                    "one-click",
                    match done {
                        Unsubscribed::Now => "unsubscribed",
                        Unsubscribed::Already => "already",
                    },
                );
                let text = format!(
                    "<p>{} receives no more mail from {}.</p>",
                    escape(&claim.recipient),
                    escape(&claim.sender_domain)
                );
                page(200, "Unsubscribed", &text)
            }
            Err(e) => {
                self.failures_logged
                    .log(log::Level::Error, || format!("unsubscribe: {e}"));
                page(
                    503,
                    "Try again",
                    "<p>The request could not be stored now.</p>",
                )
            }
        }
    }
}

const INVALID: &str = "<p>This is not an unsubscribe link of ours.</p>";
const UNKNOWN: &str =
    "<p>This unsubscribe link is not known or has expired: use the one in a recent message.</p>";

/// A small page with no external resource.
fn page(status: u16, title: &str, body: &str) -> Response {
    Response::html(
        status,
        format!(
            "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{title}</title>\
             <meta name=\"viewport\" content=\"width=device-width\"><style>\
             body{{font:16px/1.5 system-ui,sans-serif;margin:3em auto;max-width:32em;padding:0 1em}}\
             button{{font-size:1em;padding:.4em 1.2em}}</style></head>\
             <body><h1>{title}</h1>{body}</body></html>"
        ),
    )
}

impl Endpoint for UnsubscribeApi {
    /// The route, the method and the client's allowance, from the head.
    fn admit(&self, head: &Request) -> Result<(), Response> {
        match (head.method.as_str(), head.route().as_slice()) {
            (_, ["u", token]) if token.len() > crate::unsubscribe::MAX_TOKEN => {
                return Err(page(400, "Not an unsubscribe link", INVALID));
            }
            ("GET" | "POST", ["u", _]) => {}
            (_, ["u", _]) => return Err(Response::text(405, "use GET or POST\n")),
            _ => return Err(Response::text(404, "no such page\n")),
        }
        let ip = head.peer.unwrap_or(IpAddr::from([0, 0, 0, 0]));
        if !self.rate.borrow_mut().allow(ip, Instant::now()) {
            count(
                if head.method == "POST" {
                    "one-click"
                } else {
                    "page"
                },
                "rate_limited",
            );
            return Err(Response::text(
                429,
                "too many requests: try again in a minute\n",
            ));
        }
        Ok(())
    }

    fn answer(self: Rc<Self>, req: Request) -> Pin<Box<dyn Future<Output = Response>>> {
        Box::pin(async move {
            let token = req.segments.get(1).cloned().unwrap_or_default();
            match req.method.as_str() {
                "POST" => self.one_click(&token, &req),
                _ => self.confirmation(&token),
            }
        })
    }
}

/// Requests per client address per minute: a bucket of `per_minute`
/// that refills evenly. Time is given (`now`), so tests drive it.
pub struct PerIpRate {
    per_minute: f64,
    buckets: HashMap<IpAddr, (f64, Instant)>,
}

impl PerIpRate {
    pub fn new(per_minute: u32) -> PerIpRate {
        PerIpRate {
            per_minute: per_minute.max(1) as f64,
            buckets: HashMap::new(),
        }
    }

    /// Whether `ip` may make a request at `now` (and takes it).
    pub fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        let ip = client_of(ip);
        if self.buckets.len() >= MAX_TRACKED && !self.buckets.contains_key(&ip) {
            let full = self.per_minute;
            self.buckets
                .retain(|_, (left, at)| refill(*left, *at, now, full) < full);
            if self.buckets.len() >= MAX_TRACKED {
                self.buckets.clear();
            }
        }
        let full = self.per_minute;
        let (left, at) = self.buckets.entry(ip).or_insert((full, now));
        let mut have = refill(*left, *at, now, full);
        let allowed = have >= 1.0;
        if allowed {
            have -= 1.0;
        }
        (*left, *at) = (have, now);
        allowed
    }
}

/// A bucket of `left` at `at`, refilled at `full` a minute until `now`.
fn refill(left: f64, at: Instant, now: Instant, full: f64) -> f64 {
    let elapsed = now.saturating_duration_since(at).as_secs_f64();
    (left + elapsed * full / 60.0).min(full)
}

/// The address a client is counted by: an IPv6 address by its /64 (one
/// host holds a whole /64), an IPv4 address as it is.
fn client_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
            let mut seg = v6.segments();
            seg[4..].fill(0);
            IpAddr::from(seg)
        }
        IpAddr::V6(v6) => IpAddr::V4(v6.to_ipv4_mapped().expect("mapped")),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_address_gets_its_allowance_a_minute() {
        let mut rate = PerIpRate::new(3);
        let t0 = Instant::now();
        let a = IpAddr::from([192, 0, 2, 1]);
        let b = IpAddr::from([192, 0, 2, 2]);
        assert!((0..3).all(|_| rate.allow(a, t0)));
        assert!(!rate.allow(a, t0), "the fourth in the same instant");
        assert!(rate.allow(b, t0), "another address has its own");
        assert!(!rate.allow(a, t0 + Duration::from_secs(10)));
        assert!(
            rate.allow(a, t0 + Duration::from_secs(20)),
            "one back after 20 s"
        );
        assert!(!rate.allow(a, t0 + Duration::from_secs(21)));
        // An IPv6 host is counted by its /64.
        let v6 = |last: u16| IpAddr::from([0x2001, 0xdb8, 0, 1, 0, 0, 0, last]);
        assert!((1..=3).all(|i| rate.allow(v6(i), t0)));
        assert!(!rate.allow(v6(99), t0));
    }

    #[test]
    fn the_tracked_addresses_are_bounded() {
        let mut rate = PerIpRate::new(1);
        let t0 = Instant::now();
        for i in 0..(MAX_TRACKED as u32 + 10) {
            rate.allow(IpAddr::from(i.to_be_bytes()), t0);
        }
        assert!(rate.buckets.len() <= MAX_TRACKED);
    }
}
