//! HTTP: the small HTTP/1.1 server, and the three APIs it serves, one
//! module each: [`admin`] (the queue of a running server), [`metrics`]
//! (Prometheus and health) and [`inject`] (messages as JSON).
//!
//! Owns: [`serve`] (an accept loop on one shard, one request per
//! connection), reading a request with bounded size and time, and writing
//! a [`Response`]. Request heads are parsed by `httparse`; query strings and
//! path segments are percent-decoded by `percent-encoding`.
//!
//! Must not: know what any path means (the handlers do), or keep a
//! connection open after its response: its clients are Prometheus,
//! orchestrators, the `ringpost queue` command and applications injecting
//! mail, not browsers.
//!
//! Security: a request head is read up to 8 KiB and a body up to the
//! listener's limit (64 KiB for the control plane, the message size limit
//! for injection), each read within 10 s; anything larger or slower is
//! answered 4xx and closed. Bearer tokens are compared in constant time
//! ([`bearer_matches`]).

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;

use crate::shard::net::{Bound, Listener};
use crate::shard::stop::StopSignal;
use crate::shard::tasks::TaskSet;

pub mod admin;
pub mod inject;
pub mod metrics;

const MAX_HEAD: usize = 8 * 1024;
/// The body limit of the control-plane endpoints.
pub const MAX_BODY: usize = 64 * 1024;
const IO_TIMEOUT: Duration = Duration::from_secs(10);
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
    /// The client's address (None only in tests of the parser).
    pub peer: Option<std::net::IpAddr>,
    pub body: Vec<u8>,
}

impl Request {
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

pub type Handler = Rc<dyn Fn(Request) -> Pin<Box<dyn Future<Output = Response>>>>;

/// Whether `req` carries `Authorization: Bearer <token>`, compared in
/// constant time.
pub fn bearer_matches(req: &Request, token: &str) -> bool {
    let given = req.authorization.as_deref().unwrap_or("");
    let given = given.strip_prefix("Bearer ").unwrap_or("").as_bytes();
    let want = token.as_bytes();
    given.len() == want.len() && given.iter().zip(want).fold(0, |acc, (a, b)| acc | (a ^ b)) == 0
}

/// What one listener admits.
#[derive(Debug, Clone, Copy)]
pub struct ListenerLimits {
    /// The largest request body read.
    pub max_body: usize,
    /// Connections served at once on this shard; more get 503 at once.
    pub max_connections: usize,
    /// On shutdown, how long requests under way may take to finish.
    pub drain: Duration,
}

impl ListenerLimits {
    /// The metrics and admin endpoints: nothing to finish on shutdown.
    pub const CONTROL: ListenerLimits = ListenerLimits {
        max_body: MAX_BODY,
        max_connections: 64,
        drain: Duration::ZERO,
    };
}

/// Serves `listener` until `stop` is disconnected; each request goes to
/// `handler` on this shard, within `limits`.
pub async fn serve(listener: Bound, handler: Handler, limits: ListenerLimits, stop: StopSignal) {
    let tasks = TaskSet::default();
    let listener = Listener::new(listener, stop.clone());
    loop {
        match listener.next().await {
            None => break,
            Some(Ok(stream)) if tasks.len() < limits.max_connections => {
                tasks.spawn(exchange(stream, handler.clone(), limits.max_body));
            }
            // Over the limit: a short 503 while the overflow is small;
            // beyond that the connection is just closed, so that a flood
            // costs no more than the accept.
            Some(Ok(stream)) if tasks.len() < 2 * limits.max_connections => {
                let busy = Response::text(503, "too many connections, try again\n");
                tasks.spawn(respond(stream, busy, REJECT_TIMEOUT));
            }
            Some(Ok(stream)) => drop(stream),
            Some(Err(_)) => glommio::timer::sleep(Duration::from_millis(50)).await,
        }
    }
    // No new connections now; a request under way (an injection waiting
    // for its group commit) gets `drain` to be answered.
    let deadline = stop.deadline(limits.drain);
    tasks.wait_until_at_most(0, deadline).await;
    tasks.cancel_all();
}

async fn exchange(mut stream: TcpStream, handler: Handler, max_body: usize) {
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let response = match read_request(&mut stream, max_body).await {
        Ok(mut request) => {
            request.peer = stream.peer_addr().ok().map(|a| a.ip());
            handler(request).await
        }
        Err(Some(response)) => response,
        Err(None) => return,
    };
    respond(stream, response, IO_TIMEOUT).await;
}

/// Writes `response` (the connection closes after it).
async fn respond(mut stream: TcpStream, response: Response, timeout: Duration) {
    let _ = stream.set_write_timeout(Some(timeout));
    // Head and body in one write: one send, and no answer cut after its
    // status line by a crash between two.
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        response.status,
        reason(response.status),
        response.content_type,
        response.body.len()
    )
    .into_bytes();
    out.extend_from_slice(&response.body);
    let _ = stream.write_all(&out).await;
    let _ = stream.close().await;
}

/// Reads one request. Err(Some) is an error response to send; Err(None)
/// means the peer went away or timed out.
async fn read_request(
    stream: &mut TcpStream,
    max_body: usize,
) -> Result<Request, Option<Response>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let (mut request, head_len, body_len) = loop {
        match parse_head(&buf, max_body) {
            Ok(Some(parsed)) => break parsed,
            Ok(None) if buf.len() >= MAX_HEAD => {
                return Err(Some(Response::text(431, "request head too large\n")));
            }
            Ok(None) => {}
            Err(response) => return Err(Some(response)),
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return Err(None),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    while buf.len() < head_len + body_len {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return Err(None),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    request.body = buf[head_len..head_len + body_len].to_vec();
    Ok(request)
}

/// Pure: parses a request head. Ok(None) while incomplete; otherwise the
/// request (without body), the head's length and the body's length, which
/// may not exceed `max_body`.
pub fn parse_head(
    buf: &[u8],
    max_body: usize,
) -> Result<Option<(Request, usize, usize)>, Response> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(Response::text(400, format!("bad request: {e}\n"))),
    };
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).into_owned())
    };
    let body_len = match header("content-length") {
        None => 0,
        Some(v) => match v.trim().parse::<usize>() {
            Ok(n) if n <= max_body => n,
            Ok(_) => return Err(Response::text(413, "request body too large\n")),
            Err(_) => return Err(Response::text(400, "bad Content-Length\n")),
        },
    };
    let target = req.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let request = Request {
        method: req.method.unwrap_or("").to_string(),
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
        authorization: header("authorization"),
        peer: None,
        body: Vec::new(),
    };
    Ok(Some((request, head_len, body_len)))
}

fn decode(s: &str) -> String {
    let plus_as_space = s.replace('+', " ");
    percent_encoding::percent_decode_str(&plus_as_space)
        .decode_utf8_lossy()
        .into_owned()
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        507 => "Insufficient Storage",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_path_query_and_authorization() {
        let raw = b"POST /queue/flush?domain=ex%41mple.com&x HTTP/1.1\r\nAuthorization: Bearer t\r\nContent-Length: 2\r\n\r\nhi";
        let (req, head, body) = parse_head(raw, MAX_BODY).unwrap().unwrap();
        assert_eq!(req.method, "POST");
        assert_eq!(req.route(), ["queue", "flush"]);
        assert_eq!(req.param("domain"), Some("exAmple.com"));
        assert_eq!(req.param("x"), Some(""));
        assert_eq!(req.authorization.as_deref(), Some("Bearer t"));
        assert_eq!((head + body, body), (raw.len(), 2));
    }

    #[test]
    fn incomplete_and_bad_heads() {
        assert!(
            parse_head(b"GET / HTTP/1.1\r\n", MAX_BODY)
                .unwrap()
                .is_none()
        );
        assert_eq!(
            parse_head(b"\x00\x01 nonsense\r\n\r\n", MAX_BODY)
                .unwrap_err()
                .status,
            400
        );
        let big = b"POST / HTTP/1.1\r\nContent-Length: 999999999\r\n\r\n";
        assert_eq!(parse_head(big, MAX_BODY).unwrap_err().status, 413);
        let bad = b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n";
        assert_eq!(parse_head(bad, MAX_BODY).unwrap_err().status, 400);
    }
}
