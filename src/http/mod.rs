//! HTTP: one HTTP/1.1 server for the APIs, one module each:
//! [`admin`] (the queue of a running server, with its endpoints
//! [`suppressions`] and [`trace`] in files of their own), [`metrics`]
//! (Prometheus and health), [`inject`] (messages as JSON) and
//! [`unsubscribe`] (the public one-click unsubscribe pages).
//!
//! Owns: [`serve`] (a listener's accept loop on one shard, with its
//! connection limits; [`serve_maybe_tls`] with a TLS handshake first,
//! for HTTPS injection), the connection's deadlines ([`Io`]), turning a
//! request into a [`Request`] for an [`Endpoint`] and its [`Response`]
//! back. HTTP/1.1 itself (framing, chunked bodies, `Expect: 100-continue`,
//! keep-alive) is hyper's: we chose it over our own `httparse` loop
//! because RFC 9112's framing rules are where hand-written servers go
//! wrong; it costs a few percent per connection and gains more with
//! keep-alive (benches/inject-ab.sh; figures in benches/results/README.md).
//! Paths and query strings are percent-decoded by `percent-encoding`.
//!
//! Order of a request, which is what keeps an unauthorised client cheap:
//! the head (at most 16 KiB, within the listener's head timeout), then the endpoint's
//! [`Endpoint::admit`] on the head alone (a 401/403/404/405/413 goes out
//! before any body byte is read, and the connection closes; hyper sends
//! `100 Continue` only when the body is first read, so a refused client
//! never gets one), then the body up to the listener's limit at no less
//! than [`MIN_BODY_RATE`] after that timeout, then the answer.
//!
//! May call: `inbound` (the door, for injection; the unsubscriber),
//! `unsubscribe` (token limits), `scheduler` (the admin
//! API's operations), `queue`, `history` (lookups), `suppression`, `cluster` (the fleet's state),
//! `proto` (addresses and DSN parameters in requests), `tls`, `config`,
//! `metrics`, `shard`.
//! Must not: know what any path means (the endpoints do).
//!
//! Security: each listener admits a number of connections per shard and
//! per client address ([`ListenerLimits`]); more get a short `503` and are
//! counted (`ringpost_http_connections_rejected_total`) and logged at most
//! once per 10 s. Bearer tokens are compared in constant time
//! ([`bearer_matches`]).

use std::cell::Cell;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{AsyncRead, AsyncWrite, AsyncWriteExt};
use glommio::net::TcpStream;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Body as _, Incoming};

use crate::shard::admission::{Admission, Full as AdmissionFull};
use crate::shard::log_limit::LogLimit;
use crate::shard::net::{Bound, Listener};
use crate::shard::stop::StopSignal;
use crate::shard::tasks::TaskSet;
use crate::tls::ServerStream;

pub mod actions;
pub mod admin;
pub mod admin_listener;
pub mod bounce_rules;
pub mod events_failed;
pub mod find;
pub mod inject;
pub mod metrics;
pub mod status;
pub mod suppressions;
pub mod template;
pub mod trace;
pub mod unsubscribe;

/// The largest request head (request line and header fields).
const MAX_HEAD: usize = 16 * 1024;
/// The body limit of the control-plane endpoints.
pub const MAX_BODY: usize = 64 * 1024;
/// The control listeners' [`ListenerLimits::head_timeout`].
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// The slowest body upload accepted, in bytes per second.
pub const MIN_BODY_RATE: u64 = 32 * 1024;
/// How long a single write of an answer may wait for the client to read.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection over the limit gets to take its 503.
const REJECT_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The path, split on `/` and percent-decoded; empty segments dropped.
    pub segments: Vec<String>,
    /// Query parameters, percent-decoded, in order.
    pub query: Vec<(String, String)>,
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
    /// The `Idempotency-Key` header, if any (as sent; the injection API
    /// checks it).
    pub idempotency_key: Option<String>,
    /// The client's address (None only in tests).
    pub peer: Option<IpAddr>,
    /// The `Origin` and `Host` headers, if any: a browser names the page
    /// a request comes from (the admin listener refuses changes a page of
    /// another origin asks for).
    pub origin: Option<String>,
    pub host: Option<String>,
    /// The `Content-Type` header, if any.
    pub content_type: Option<String>,
    /// Empty while the endpoint decides on the head alone.
    pub body: Vec<u8>,
}

impl Request {
    /// A request from its method and target (`/path?query`), without
    /// header fields or body.
    pub fn new(method: &str, target: &str) -> Request {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        Request {
            method: method.to_string(),
            segments: path
                .split('/')
                .filter(|s| !s.is_empty())
                .map(decode)
                .collect(),
            query: query
                .split('&')
                .filter(|s| !s.is_empty())
                .map(|pair| {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    (decode(k), decode(v))
                })
                .collect(),
            authorization: None,
            idempotency_key: None,
            peer: None,
            origin: None,
            host: None,
            content_type: None,
            body: Vec::new(),
        }
    }

    fn from_head(head: &http::request::Parts, peer: IpAddr) -> Request {
        let target = head.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let mut request = Request::new(head.method.as_str(), target);
        request.authorization = head
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        request.idempotency_key = head
            .headers
            .get("idempotency-key")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        request.peer = Some(peer);
        let header = |name: http::header::HeaderName| {
            head.headers
                .get(name)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        };
        request.origin = header(http::header::ORIGIN);
        request.host = header(http::header::HOST);
        request.content_type = header(http::header::CONTENT_TYPE);
        request
    }

    /// Whether a browser sent it from a page of another origin than this
    /// listener (its `Origin` is not `http://` + its `Host`): a change
    /// such a page asks for is cross-site request forgery. Clients that
    /// are not browsers send no `Origin`.
    pub fn is_cross_origin(&self) -> bool {
        match (&self.origin, &self.host) {
            (None, _) => false,
            (Some(origin), Some(host)) => origin != &format!("http://{host}"),
            (Some(_), None) => true,
        }
    }

    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The segments as `&str`s, for matching.
    pub fn route(&self) -> Vec<&str> {
        self.segments.iter().map(String::as_str).collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into().into_bytes(),
        }
    }

    /// A page (the admin listener's status pages).
    pub fn html(status: u16, body: String) -> Response {
        Response {
            status,
            content_type: "text/html; charset=utf-8",
            body: body.into_bytes(),
        }
    }

    pub fn json(status: u16, value: &impl serde::Serialize) -> Response {
        match serde_json::to_vec(value) {
            Ok(mut body) => {
                body.push(b'\n');
                Response {
                    status,
                    content_type: "application/json",
                    body,
                }
            }
            Err(e) => Response::text(500, format!("cannot encode the answer: {e}\n")),
        }
    }
}

/// What an API does with requests.
pub trait Endpoint {
    /// Decides from the head alone (method, path, authorization, client):
    /// `Err` is the answer, sent before any of the body is read. Default:
    /// every request is read whole.
    fn admit(&self, head: &Request) -> Result<(), Response> {
        let _ = head;
        Ok(())
    }

    /// The answer to an admitted request, its body read.
    fn answer(self: Rc<Self>, request: Request) -> Pin<Box<dyn Future<Output = Response>>>;
}

/// Whether `req` carries `Authorization: Bearer <token>`, compared in
/// constant time.
pub fn bearer_matches(req: &Request, token: &str) -> bool {
    let given = req.authorization.as_deref().unwrap_or("");
    let given = given.strip_prefix("Bearer ").unwrap_or("").as_bytes();
    same_bytes(given, token.as_bytes())
}

/// Whether the request carries `token` as the password of HTTP Basic
/// authentication (any user name): how a browser sends it to the status
/// pages, after asking its user once.
pub fn basic_matches(req: &Request, token: &str) -> bool {
    use base64::Engine;
    let given = req.authorization.as_deref().unwrap_or("");
    let Some(encoded) = given.strip_prefix("Basic ") else {
        return false;
    };
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
        return false;
    };
    let password = decoded
        .iter()
        .position(|&b| b == b':')
        .map_or(&[][..], |at| &decoded[at + 1..]);
    same_bytes(password, token.as_bytes())
}

/// Compares in time that does not depend on where they differ.
fn same_bytes(given: &[u8], want: &[u8]) -> bool {
    given.len() == want.len() && given.iter().zip(want).fold(0, |acc, (a, b)| acc | (a ^ b)) == 0
}

/// What one listener admits on one shard.
#[derive(Debug, Clone, Copy)]
pub struct ListenerLimits {
    /// The listener's name in metrics and logs: inject, admin, metrics.
    pub name: &'static str,
    /// The largest request body read.
    pub max_body: usize,
    /// Connections served at once on this shard; more get 503 at once.
    pub max_connections: usize,
    /// Connections from one client address at once on this shard.
    pub max_connections_per_ip: usize,
    /// A request head must arrive whole within this time (from the
    /// connection's start, or from the previous answer on a kept-alive
    /// connection); a body gets this long plus its length at
    /// [`MIN_BODY_RATE`].
    pub head_timeout: Duration,
    /// On shutdown, how long requests under way may take to finish.
    pub drain: Duration,
}

impl ListenerLimits {
    /// The metrics and admin endpoints (served by one shard): 64
    /// connections, 16 from one address, nothing to finish on shutdown.
    pub const fn control(name: &'static str) -> ListenerLimits {
        ListenerLimits {
            name,
            max_body: MAX_BODY,
            max_connections: 64,
            max_connections_per_ip: 16,
            head_timeout: HEAD_TIMEOUT,
            drain: Duration::ZERO,
        }
    }
}

/// What every connection of one listener on one shard shares.
struct ListenerSite {
    endpoint: Rc<dyn Endpoint>,
    limits: ListenerLimits,
    /// HTTPS: the handshake comes first, within the head's time.
    tls: Option<futures_rustls::TlsAcceptor>,
    /// Rejected connections and timeouts, logged at most once per 10 s.
    rejections_logged: LogLimit,
    timeouts_logged: LogLimit,
}

/// Serves `listener` until `stop` fires; each request goes to `endpoint`
/// on this shard, within `limits`.
pub async fn serve(
    listener: Bound,
    endpoint: Rc<dyn Endpoint>,
    limits: ListenerLimits,
    stop: StopSignal,
) {
    serve_maybe_tls(listener, endpoint, limits, None, stop).await
}

/// [`serve`], over TLS when `tls` is given (the injection listener with
/// `inject.cert_file`).
pub async fn serve_maybe_tls(
    listener: Bound,
    endpoint: Rc<dyn Endpoint>,
    limits: ListenerLimits,
    tls: Option<futures_rustls::TlsAcceptor>,
    stop: StopSignal,
) {
    let tasks = TaskSet::default();
    let admission = Admission::new(limits.max_connections, limits.max_connections_per_ip, None);
    let site = Rc::new(ListenerSite {
        endpoint,
        limits,
        tls,
        rejections_logged: LogLimit::new(Duration::from_secs(10)),
        timeouts_logged: LogLimit::new(Duration::from_secs(10)),
    });
    let listener = Listener::new(listener, stop.clone());
    loop {
        let stream = match listener.next().await {
            None => break,
            Some(Ok(stream)) => stream,
            Some(Err(_)) => {
                glommio::timer::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(peer) = stream.peer_addr() else {
            continue;
        };
        match admission.admit(peer.ip()) {
            Ok(ticket) => {
                let (site, stop) = (site.clone(), stop.clone());
                tasks.spawn(async move {
                    connection(stream, peer.ip(), site, stop).await;
                    drop(ticket);
                });
            }
            Err(full) => {
                site.rejected(peer.ip(), full);
                // A short 503 while the overflow is small; beyond that the
                // connection is just closed, so that a flood costs no more
                // than the accept.
                if tasks.len() < 2 * limits.max_connections {
                    tasks.spawn(turn_away(stream));
                }
            }
        }
    }
    // No new connections now; idle kept-alive connections close at once
    // (see `connection`), a request under way (an injection waiting for
    // its group commit) gets `drain` to be answered.
    let deadline = stop.deadline(limits.drain);
    tasks.wait_until_at_most(0, deadline).await;
    tasks.cancel_all();
}

impl ListenerSite {
    fn rejected(&self, ip: IpAddr, full: AdmissionFull) {
        ::metrics::counter!(
            crate::metrics::HTTP_CONNECTIONS_REJECTED,
            "listener" => self.limits.name,
            "reason" => full.as_str()
        )
        .increment(1);
        self.rejections_logged.log(log::Level::Warn, || {
            let why = match full {
                AdmissionFull::Total => "this shard's connection limit is reached",
                AdmissionFull::PerAddress => "the client holds its connection limit",
            };
            format!(
                "{}: connection from {ip} refused (503): {why}",
                self.limits.name
            )
        });
    }

    fn timed_out(&self, ip: IpAddr, phase: &'static str) {
        ::metrics::counter!(
            crate::metrics::HTTP_TIMEOUTS,
            "listener" => self.limits.name,
            "phase" => phase
        )
        .increment(1);
        self.timeouts_logged.log(log::Level::Info, || {
            format!(
                "{}: connection from {ip} closed: the request {phase} came too slowly",
                self.limits.name
            )
        });
    }
}

/// Over the limits: a 503 and close, without reading anything.
async fn turn_away(mut stream: TcpStream) {
    let body = "too many connections, try again\n";
    let out = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.set_write_timeout(Some(REJECT_TIMEOUT));
    let _ = stream.write_all(out.as_bytes()).await;
    let _ = stream.close().await;
}

/// Serves one connection: requests one after another (keep-alive) until
/// the client closes, a deadline passes, or the server stops.
async fn connection(stream: TcpStream, peer: IpAddr, site: Rc<ListenerSite>, stop: StopSignal) {
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let stream = match &site.tls {
        None => ServerStream::Plain(stream),
        Some(acceptor) => {
            let timeout = site.limits.head_timeout;
            let handshake =
                futures_lite::future::or(async { Some(acceptor.accept(stream).await) }, async {
                    glommio::timer::sleep(timeout).await;
                    None
                });
            match handshake.await {
                Some(Ok(tls)) => ServerStream::Tls(Box::new(tls)),
                Some(Err(_)) => return,
                None => {
                    site.timed_out(peer, "tls");
                    return;
                }
            }
        }
    };
    let phase = Rc::new(Cell::new(Phase::head()));
    let io = Io {
        stream,
        phase: phase.clone(),
        head_timeout: site.limits.head_timeout,
        timer: None,
        on_timeout: {
            let site = site.clone();
            Box::new(move |p| site.timed_out(peer, p))
        },
    };
    let service = hyper::service::service_fn(move |request| {
        let (site, phase) = (site.clone(), phase.clone());
        async move { Ok::<_, Infallible>(exchange(request, peer, &site, &phase).await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .keep_alive(true)
        .max_buf_size(MAX_HEAD)
        .header_read_timeout(None);
    let conn = builder.serve_connection(io, service);
    futures::pin_mut!(conn);
    let stopped = stop.wait();
    futures::pin_mut!(stopped);
    match futures::future::select(conn.as_mut(), stopped).await {
        futures::future::Either::Left(_) => {}
        futures::future::Either::Right(((), _)) => {
            // Idle: closes now; a request under way is answered first.
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// One request: the head to the endpoint, then (if admitted) the body,
/// then the answer.
async fn exchange(
    request: hyper::Request<Incoming>,
    peer: IpAddr,
    site: &ListenerSite,
    phase: &Cell<Phase>,
) -> hyper::Response<Full<Bytes>> {
    let (head, body) = request.into_parts();
    let mut request = Request::from_head(&head, peer);
    let response = match read_body(&mut request, body, site, phase).await {
        Err(refusal) => closing(refusal),
        Ok(()) => {
            phase.set(Phase::Answering);
            encode(site.endpoint.clone().answer(request).await)
        }
    };
    ::metrics::counter!(
        crate::metrics::HTTP_REQUESTS,
        "listener" => site.limits.name,
        "status" => status_class(response.status().as_u16())
    )
    .increment(1);
    response
}

/// Admits the request on its head and reads its body into it; `Err` is
/// the answer to a request refused or unreadable.
async fn read_body(
    request: &mut Request,
    body: Incoming,
    site: &ListenerSite,
    phase: &Cell<Phase>,
) -> Result<(), Response> {
    site.endpoint.admit(request)?;
    let max = site.limits.max_body;
    if body.size_hint().lower() > max as u64 {
        return Err(Response::text(
            413,
            format!("request body over {max} bytes\n"),
        ));
    }
    phase.set(Phase::Body {
        since: Instant::now(),
        read: 0,
    });
    match Limited::new(body, max).collect().await {
        Ok(collected) => {
            request.body = Vec::from(collected.to_bytes());
            Ok(())
        }
        Err(e) if e.is::<LengthLimitError>() => Err(Response::text(
            413,
            format!("request body over {max} bytes\n"),
        )),
        Err(e) => Err(Response::text(
            400,
            format!("cannot read the request body: {e}\n"),
        )),
    }
}

fn encode(response: Response) -> hyper::Response<Full<Bytes>> {
    let mut out = hyper::Response::new(Full::new(Bytes::from(response.body)));
    *out.status_mut() = http::StatusCode::from_u16(response.status)
        .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    out.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(response.content_type),
    );
    if response.content_type.starts_with("text/html") {
        // A page loads nothing from elsewhere and runs only its own
        // script; no other site may frame it.
        let headers = out.headers_mut();
        headers.insert(
            http::header::CONTENT_SECURITY_POLICY,
            http::HeaderValue::from_static(
                "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'",
            ),
        );
        headers.insert(
            http::header::X_FRAME_OPTIONS,
            http::HeaderValue::from_static("DENY"),
        );
        headers.insert(
            http::header::CACHE_CONTROL,
            http::HeaderValue::from_static("no-store"),
        );
        if response.status == 401 {
            headers.insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static(
                    "Basic realm=\"ringpost admin: any user, the admin token as password\", charset=\"UTF-8\"",
                ),
            );
        }
    }
    out
}

/// An answer after which the connection closes: the body that may follow
/// the head is not read.
fn closing(response: Response) -> hyper::Response<Full<Bytes>> {
    let mut out = encode(response);
    out.headers_mut().insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
    out
}

fn status_class(status: u16) -> &'static str {
    match status / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        _ => "5xx",
    }
}

fn decode(s: &str) -> String {
    let plus_as_space = s.replace('+', " ");
    percent_encoding::percent_decode_str(&plus_as_space)
        .decode_utf8_lossy()
        .into_owned()
}

/// Where a connection is, which decides its read deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for a request head, since the connection's start or the
    /// previous answer; whether any of it has come (a client that sends
    /// nothing is idle, one that sends a head too slowly is not).
    Head { since: Instant, started: bool },
    /// Reading a body begun at `since`, `read` bytes so far.
    Body { since: Instant, read: u64 },
    /// The endpoint is at work: nothing is expected from the client.
    Answering,
}

impl Phase {
    fn head() -> Phase {
        Phase::Head {
            since: Instant::now(),
            started: false,
        }
    }

    /// The instant by which the next bytes must have come, if any.
    fn deadline(self, head_timeout: Duration) -> Option<Instant> {
        match self {
            Phase::Head { since, .. } => Some(since + head_timeout),
            Phase::Body { since, read } => {
                Some(since + head_timeout + Duration::from_millis(read * 1000 / MIN_BODY_RATE))
            }
            Phase::Answering => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Phase::Head { started: false, .. } => "idle",
            Phase::Head { started: true, .. } => "head",
            Phase::Body { .. } => "body",
            Phase::Answering => "answer",
        }
    }
}

/// The connection as hyper sees it: glommio's stream, with the read
/// deadline of the connection's [`Phase`] (hyper is given no timer of its
/// own: its timer must be `Send`, glommio's are per thread).
struct Io {
    stream: ServerStream,
    phase: Rc<Cell<Phase>>,
    head_timeout: Duration,
    /// The timer armed for the current deadline.
    timer: Option<(Instant, glommio::timer::Timer)>,
    on_timeout: Box<dyn Fn(&'static str)>,
}

impl Io {
    /// Pending until the phase's deadline; Ready once it has passed.
    ///
    /// A body's deadline moves later with every read, so one timer is kept
    /// while the deadline only moves later: when it fires early, it is set
    /// again for what is left. Only an earlier deadline replaces it.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(at) = self.phase.get().deadline(self.head_timeout) else {
            self.timer = None;
            return Poll::Pending;
        };
        loop {
            let now = Instant::now();
            if now >= at {
                return Poll::Ready(());
            }
            if self.timer.as_ref().is_none_or(|(armed, _)| *armed > at) {
                self.timer = Some((at, glommio::timer::Timer::new(at - now)));
            }
            match &mut self.timer {
                Some((_, timer)) => match Pin::new(timer).poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    // Fired for an earlier deadline that has since moved.
                    Poll::Ready(_) => self.timer = None,
                },
                None => return Poll::Pending,
            }
        }
    }
}

impl hyper::rt::Read for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let mut scratch = [0u8; 16 * 1024];
        let want = buf.remaining().min(scratch.len());
        match Pin::new(&mut this.stream).poll_read(cx, &mut scratch[..want]) {
            Poll::Ready(Ok(n)) => {
                buf.put_slice(&scratch[..n]);
                match this.phase.get() {
                    Phase::Body { since, read } => {
                        let read = read + n as u64;
                        this.phase.set(Phase::Body { since, read });
                    }
                    Phase::Head { since, .. } if n > 0 => {
                        this.phase.set(Phase::Head {
                            since,
                            started: true,
                        });
                    }
                    _ => {}
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match this.poll_deadline(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(()) => {
                    (this.on_timeout)(this.phase.get().name());
                    Poll::Ready(Err(io::ErrorKind::TimedOut.into()))
                }
            },
        }
    }
}

impl hyper::rt::Write for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // The answer is going out: the next head's time starts now. (A
        // `100 Continue` is written in the body phase and changes nothing.)
        if this.phase.get() == Phase::Answering {
            this.phase.set(Phase::head());
        }
        Pin::new(&mut this.stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_queries_are_decoded() {
        let req = Request::new("POST", "/queue/flush?domain=ex%41mple.com&x&to=a+b");
        assert_eq!(req.method, "POST");
        assert_eq!(req.route(), ["queue", "flush"]);
        assert_eq!(req.param("domain"), Some("exAmple.com"));
        assert_eq!(req.param("x"), Some(""));
        assert_eq!(req.param("to"), Some("a b"));
        assert_eq!(Request::new("GET", "//a///b/").route(), ["a", "b"]);
    }

    #[test]
    fn a_body_may_be_slow_but_not_slower_than_the_minimum_rate() {
        let t = Instant::now();
        let limit = Duration::from_secs(3);
        let head = Phase::Head {
            since: t,
            started: true,
        };
        assert_eq!(head.deadline(limit), Some(t + limit));
        let body = |read| Phase::Body { since: t, read }.deadline(limit).unwrap();
        assert_eq!(body(0), t + limit);
        assert_eq!(
            body(10 * MIN_BODY_RATE),
            t + limit + Duration::from_secs(10)
        );
        assert_eq!(Phase::Answering.deadline(limit), None);
    }
}
