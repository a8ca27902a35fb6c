//! An HTTP/1.1 client for posting to one URL: hyper's client connection
//! over a glommio TCP stream, with TLS by rustls for `https`.
//!
//! Owns: [`Poster`], one kept-alive connection to one URL, opened again
//! when the receiver closed it. Every post is bounded by a timeout
//! (connect to the end of the answer); the answer's body is read up to
//! [`MAX_ANSWER`] and dropped.
//!
//! Must not: retry (the caller decides), or run on another thread than
//! the shard's (hyper's connection task is a glommio task).

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use glommio::net::TcpStream;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use rustls::pki_types::ServerName;

use crate::tls::{HyperIo, Stream};

/// Longest answer body read (and dropped).
pub const MAX_ANSWER: usize = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum PostError {
    #[error("{0} does not resolve: {1}")]
    Resolve(String, io::Error),
    #[error("connecting to {0}: {1}")]
    Connect(String, io::Error),
    #[error("TLS with {0}: {1}")]
    Tls(String, io::Error),
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("bad request: {0}")]
    Request(#[from] http::Error),
}

type Io = Stream<futures_rustls::client::TlsStream<TcpStream>>;

/// Posts to one URL over a kept-alive connection.
pub struct Poster {
    uri: http::Uri,
    host: String,
    port: u16,
    tls: Option<futures_rustls::TlsConnector>,
    timeout: Duration,
    conn: Option<SendRequest<Full<Bytes>>>,
}

impl Poster {
    /// `url`: `http://` or `https://` (config checked); `tls`: the client
    /// config for https.
    pub fn new(
        url: &str,
        tls: Option<Arc<rustls::ClientConfig>>,
        timeout: Duration,
    ) -> Result<Poster, String> {
        let uri: http::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
        let https = uri.scheme_str() == Some("https");
        let host = uri.host().ok_or(format!("{url}: no host"))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tls = match (https, tls) {
            (false, _) => None,
            (true, Some(config)) => Some(futures_rustls::TlsConnector::from(config)),
            (true, None) => return Err(format!("{url}: https without a TLS config")),
        };
        Ok(Poster {
            uri,
            host,
            port,
            tls,
            timeout,
            conn: None,
        })
    }

    /// Posts `body` with `headers` (`Content-Type: application/json`
    /// unless they name another); the answer's status code.
    pub async fn post(
        &mut self,
        body: Bytes,
        headers: &[(&'static str, String)],
    ) -> Result<u16, PostError> {
        let reused = self.conn.as_ref().is_some_and(|s| !s.is_closed());
        let mut result = self.timed(body.clone(), headers).await;
        if reused && matches!(result, Err(PostError::Http(_))) {
            // The receiver closed the kept-alive connection as we used
            // it (an idle timeout): once more on a new one. A repeat is
            // harmless; events are sent at least once anyway.
            result = self.timed(body, headers).await;
        }
        result
    }

    async fn timed(
        &mut self,
        body: Bytes,
        headers: &[(&'static str, String)],
    ) -> Result<u16, PostError> {
        let timeout = self.timeout;
        let result = futures_lite::future::or(self.exchange(body, headers), async {
            glommio::timer::sleep(timeout).await;
            Err(PostError::Timeout(timeout))
        })
        .await;
        if result.is_err() {
            // Half a request may be on the wire: never reuse it.
            self.conn = None;
        }
        result
    }

    async fn exchange(
        &mut self,
        body: Bytes,
        headers: &[(&'static str, String)],
    ) -> Result<u16, PostError> {
        let mut sender = match self.conn.take() {
            Some(s) if !s.is_closed() => s,
            _ => self.connect().await?,
        };
        sender.ready().await?;
        let target = self.uri.path_and_query().map_or("/", |p| p.as_str());
        let mut request = http::Request::post(target)
            .header(http::header::HOST, self.authority())
            .header(http::header::USER_AGENT, "ringpost");
        // JSON unless the caller says otherwise.
        if !headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("content-type"))
        {
            request = request.header(http::header::CONTENT_TYPE, "application/json");
        }
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let response = sender.send_request(request.body(Full::new(body))?).await?;
        let status = response.status().as_u16();
        let whole = Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .is_ok();
        if whole {
            self.conn = Some(sender);
        }
        Ok(status)
    }

    fn authority(&self) -> String {
        self.uri
            .authority()
            .map_or_else(|| self.host.clone(), |a| a.to_string())
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, PostError> {
        let (host, port) = (self.host.clone(), self.port);
        let addrs = glommio::executor()
            .spawn_blocking(move || {
                std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))
                    .map(|a| a.collect::<Vec<_>>())
            })
            .await
            .map_err(|e| PostError::Resolve(self.host.clone(), e))?;
        let mut last = io::Error::from(io::ErrorKind::NotFound);
        let mut tcp = None;
        for addr in addrs {
            match TcpStream::connect_timeout(addr, self.timeout).await {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => last = e.into(),
            }
        }
        let where_ = format!("{}:{}", self.host, self.port);
        let tcp = tcp.ok_or_else(|| PostError::Connect(where_.clone(), last))?;
        let _ = tcp.set_nodelay(true);
        let io: Io = match &self.tls {
            None => Stream::Plain(tcp),
            Some(connector) => {
                let name = ServerName::try_from(self.host.clone())
                    .map_err(|e| PostError::Tls(where_.clone(), io::Error::other(e.to_string())))?;
                let tls = connector
                    .connect(name, tcp)
                    .await
                    .map_err(|e| PostError::Tls(where_.clone(), e))?;
                Stream::Tls(Box::new(tls))
            }
        };
        let (sender, connection) = hyper::client::conn::http1::handshake(HyperIo(io)).await?;
        glommio::spawn_local(async move {
            let _ = connection.await;
        })
        .detach();
        Ok(sender)
    }
}
