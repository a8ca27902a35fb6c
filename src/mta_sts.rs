//! MTA-STS policies (RFC 8461): the policy file's parser and its fetch
//! from `https://mta-sts.DOMAIN/.well-known/mta-sts.txt`.
//!
//! Owns: [`Policy`] and [`parse`] (a pure function over the file's bytes,
//! unit-tested and fuzzed), [`Policy::allows`] (does an MX host match the
//! policy's `mx` patterns, RFC 8461 §4.1), and [`fetch`]: one GET over
//! verified TLS, no redirects, `200` and `text/plain` only, at most
//! [`MAX_POLICY`] bytes, within a timeout. The `_mta-sts` TXT record is
//! mail-auth's to parse (`mail_auth::mta_sts::MtaSts`).
//!
//! May call: `dns` (the policy host's addresses), `tls` (the stream and
//! hyper's IO over it).
//! Must not: decide what a policy does to a delivery, or cache (its callers
//! do).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use glommio::net::TcpStream;
use http_body_util::{BodyExt, Empty, Limited};
use rustls::pki_types::ServerName;

use crate::dns::Resolver;
use crate::tls::{HyperIo, Stream};

/// The largest policy file read (RFC 8461 §3.3 suggests 64 KiB).
pub const MAX_POLICY: usize = 64 << 10;

/// Where the policy is published, under `mta-sts.DOMAIN`.
pub const POLICY_PATH: &str = "/.well-known/mta-sts.txt";

/// The longest `max_age` a policy may ask (RFC 8461 §3.2: a year).
pub const MAX_AGE_LIMIT: u64 = 31_557_600;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Deliver only to matching MX hosts over verified TLS.
    Enforce,
    /// Deliver as before; report failures.
    Testing,
    /// The domain withdrew its policy.
    None,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Testing => "testing",
            Mode::None => "none",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Policy {
    pub mode: Mode,
    /// The `mx` patterns, lower case, without a trailing dot: a name, or
    /// `*.` and a name (one leftmost label).
    pub mx: Vec<String>,
    /// Seconds the policy may be cached.
    pub max_age: u64,
}

impl Policy {
    /// The policy as lines of its file (`version: STSv1`, `mode`, each
    /// `mx`, `max_age`), as a TLS report's `policy-string` gives it.
    pub fn lines(&self) -> Vec<String> {
        let mut lines = vec![
            "version: STSv1".to_string(),
            format!("mode: {}", self.mode.as_str()),
        ];
        lines.extend(self.mx.iter().map(|m| format!("mx: {m}")));
        lines.push(format!("max_age: {}", self.max_age));
        lines
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("the policy is not UTF-8 text")]
    NotText,
    #[error("line {0}: not `key: value`")]
    Line(usize),
    #[error("no `version: STSv1`")]
    Version,
    #[error("no valid `mode` (enforce, testing or none)")]
    Mode,
    #[error("no valid `max_age` (0 to 31557600 seconds)")]
    MaxAge,
    #[error("`mode: {0}` without any `mx` pattern")]
    NoMx(&'static str),
    #[error("`mx: {0}` is not a host name or `*.` and a host name")]
    BadMx(String),
}

/// Reads a policy file (RFC 8461 §3.2): `key: value` lines ending in CRLF
/// or LF; `version`, `mode` and `max_age` once, `mx` any number of times;
/// unknown keys are ignored (§3.2: for extensions).
pub fn parse(file: &[u8]) -> Result<Policy, PolicyError> {
    let text = std::str::from_utf8(file).map_err(|_| PolicyError::NotText)?;
    let (mut version, mut mode, mut max_age, mut mx) = (None, None, None, Vec::new());
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let (key, value) = line.split_once(':').ok_or(PolicyError::Line(n + 1))?;
        let value = value.trim();
        match key.trim() {
            "version" => version = version.or(Some(value == "STSv1")),
            "mode" => {
                mode = mode.or(Some(match value {
                    "enforce" => Some(Mode::Enforce),
                    "testing" => Some(Mode::Testing),
                    "none" => Some(Mode::None),
                    _ => None,
                }))
            }
            "max_age" => {
                max_age = max_age.or(Some(
                    value
                        .parse::<u64>()
                        .ok()
                        .filter(|&s| value.len() <= 10 && s <= MAX_AGE_LIMIT),
                ))
            }
            "mx" => mx.push(mx_pattern(value)?),
            _ => {}
        }
    }
    if version != Some(true) {
        return Err(PolicyError::Version);
    }
    let mode = mode.flatten().ok_or(PolicyError::Mode)?;
    let max_age = max_age.flatten().ok_or(PolicyError::MaxAge)?;
    if mx.is_empty() && mode != Mode::None {
        return Err(PolicyError::NoMx(mode.as_str()));
    }
    Ok(Policy { mode, mx, max_age })
}

fn mx_pattern(value: &str) -> Result<String, PolicyError> {
    let pattern = value.trim_end_matches('.').to_ascii_lowercase();
    let name = pattern.strip_prefix("*.").unwrap_or(&pattern);
    let labels_ok = !name.is_empty()
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if labels_ok && name.len() <= 253 {
        Ok(pattern)
    } else {
        Err(PolicyError::BadMx(value.to_string()))
    }
}

impl Policy {
    /// Whether MX host `host` matches one of the `mx` patterns (RFC 8461
    /// §4.1: a wildcard stands for exactly one leftmost label).
    pub fn allows(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.mx
            .iter()
            .any(|pattern| match pattern.strip_prefix("*.") {
                Some(parent) => host
                    .split_once('.')
                    .is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
                None => *pattern == host,
            })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{0} does not resolve: {1}")]
    Resolve(String, crate::dns::DnsError),
    #[error("connecting to {0}: {1}")]
    Connect(String, io::Error),
    #[error("TLS with {0}: {1}")]
    Tls(String, io::Error),
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("answer {0} (only 200 is a policy; redirects are not followed)")]
    Status(u16),
    #[error("Content-Type {0:?}, not text/plain")]
    ContentType(String),
    #[error("the policy is larger than {MAX_POLICY} bytes")]
    TooLarge,
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("bad policy: {0}")]
    Policy(#[from] PolicyError),
}

/// Fetches and parses `domain`'s policy from `https://mta-sts.DOMAIN` on
/// port 443 over TLS verified by `tls` (Web PKI roots, or a CA file in
/// tests). Runs on a glommio executor.
pub async fn fetch(
    resolver: &Resolver,
    domain: &str,
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<Policy, FetchError> {
    let host = format!("mta-sts.{}", domain.trim_end_matches('.'));
    let work = async {
        let addrs = resolver
            .host(&host)
            .await
            .map_err(|e| FetchError::Resolve(host.clone(), e))?;
        let addrs: Vec<SocketAddr> = addrs.into_iter().map(|ip| (ip, 443).into()).collect();
        get(&host, &addrs, tls, timeout).await
    };
    futures_lite::future::or(work, async {
        glommio::timer::sleep(timeout).await;
        Err(FetchError::Timeout(timeout))
    })
    .await
}

async fn get(
    host: &str,
    addrs: &[SocketAddr],
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<Policy, FetchError> {
    let mut last = io::Error::from(io::ErrorKind::NotFound);
    let mut tcp = None;
    for addr in addrs {
        match TcpStream::connect_timeout(*addr, timeout).await {
            Ok(s) => {
                tcp = Some(s);
                break;
            }
            Err(e) => last = e.into(),
        }
    }
    let tcp = tcp.ok_or_else(|| FetchError::Connect(host.to_string(), last))?;
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| FetchError::Tls(host.to_string(), io::Error::other(e.to_string())))?;
    let stream = futures_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(|e| FetchError::Tls(host.to_string(), e))?;
    let io: Stream<_> = Stream::Tls(Box::new(stream));
    let (mut sender, connection) = hyper::client::conn::http1::handshake(HyperIo(io)).await?;
    glommio::spawn_local(async move {
        let _ = connection.await;
    })
    .detach();
    let request = http::Request::get(POLICY_PATH)
        .header(http::header::HOST, host)
        .header(http::header::USER_AGENT, "ringpost")
        .body(Empty::<Bytes>::new())
        .expect("a constant request is valid");
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    if status != 200 {
        return Err(FetchError::Status(status));
    }
    let content_type = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    if !content_type
        .to_ascii_lowercase()
        .trim_start()
        .starts_with("text/plain")
    {
        return Err(FetchError::ContentType(content_type));
    }
    let body = Limited::new(response.into_body(), MAX_POLICY)
        .collect()
        .await
        .map_err(|_| FetchError::TooLarge)?
        .to_bytes();
    Ok(parse(&body)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_with_crlf_and_unknown_keys_is_read() {
        let p = parse(
            b"version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.Example.NET.\r\nmax_age: 604800\r\nfuture: x\r\n",
        )
        .unwrap();
        assert_eq!(p.mode, Mode::Enforce);
        assert_eq!(p.mx, vec!["mail.example.com", "*.example.net"]);
        assert_eq!(p.max_age, 604800);
    }

    #[test]
    fn missing_or_bad_fields_are_named() {
        assert_eq!(
            parse(b"mode: enforce\nmx: a.b\nmax_age: 1\n"),
            Err(PolicyError::Version)
        );
        assert_eq!(
            parse(b"version: STSv2\nmode: enforce\nmx: a.b\nmax_age: 1\n"),
            Err(PolicyError::Version)
        );
        assert_eq!(
            parse(b"version: STSv1\nmode: strict\nmx: a.b\nmax_age: 1\n"),
            Err(PolicyError::Mode)
        );
        assert_eq!(
            parse(b"version: STSv1\nmode: enforce\nmx: a.b\nmax_age: 31557601\n"),
            Err(PolicyError::MaxAge)
        );
        assert_eq!(
            parse(b"version: STSv1\nmode: testing\nmax_age: 1\n"),
            Err(PolicyError::NoMx("testing"))
        );
        assert!(matches!(
            parse(b"version: STSv1\nmode: enforce\nmx: a..b\nmax_age: 1\n"),
            Err(PolicyError::BadMx(_))
        ));
        assert_eq!(parse(b"version STSv1\n"), Err(PolicyError::Line(1)));
        assert_eq!(parse(&[0xff, 0xfe]), Err(PolicyError::NotText));
        let none = parse(b"version: STSv1\nmode: none\nmax_age: 0\n").unwrap();
        assert_eq!((none.mode, none.mx.len()), (Mode::None, 0));
    }

    #[test]
    fn a_wildcard_stands_for_one_leftmost_label() {
        let p = parse(
            b"version: STSv1\nmode: enforce\nmx: mx.example.com\nmx: *.example.net\nmax_age: 60\n",
        )
        .unwrap();
        assert!(p.allows("MX.example.com."));
        assert!(p.allows("a.example.net"));
        assert!(!p.allows("example.net"));
        assert!(!p.allows("a.b.example.net"));
        assert!(!p.allows("other.example.com"));
    }
}
