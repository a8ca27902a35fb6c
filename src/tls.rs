//! TLS configuration for both directions (rustls with the ring provider).
//!
//! Owns: the inbound [`server_config`] built from the configured certificate
//! and key (STARTTLS is offered only when one is configured), the
//! injection listener's [`CertReloader`] (a certificate read again on
//! SIGHUP), and the client configs: [`opportunistic_client`] (encrypt
//! whatever the certificate: RFC 7435 opportunistic security, as MTAs do
//! on port 25), [`verified_client`], and [`web_client`] for webhooks.
//!
//! Exactly one crypto provider (ring) is compiled in, and every config is
//! built with it explicitly: with two providers, rustls's implicit default
//! panics.
//!
//! Also owns [`Stream`], a connection that is plain or TLS, shared by the
//! inbound and outbound sides.
//!
//! May call: nothing else in the crate; rustls.
//! Must not: decide when to start TLS; sessions call the acceptor/connector.
//!
//! Security: the key file is read once at start-up.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::io::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, ring};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme};

/// A TCP connection before or after STARTTLS (`T` is the server or client
/// TLS stream). Socket timeouts set on the TCP stream keep working under
/// TLS: glommio applies them in its reads and writes.
pub enum Stream<T> {
    Plain(TcpStream),
    Tls(Box<T>),
    /// Only while STARTTLS swaps one for the other.
    Upgrading,
}

/// A connection a listener accepted (SMTP, HTTP), plain or TLS.
pub type ServerStream = Stream<futures_rustls::server::TlsStream<TcpStream>>;

impl<T> Stream<T> {
    /// Takes the plain TCP stream out for a handshake.
    pub fn take_plain(&mut self) -> io::Result<TcpStream> {
        match std::mem::replace(self, Stream::Upgrading) {
            Stream::Plain(tcp) => Ok(tcp),
            other => {
                *self = other;
                Err(io::Error::other("TLS is already active"))
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Stream<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Upgrading => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Stream<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Upgrading => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Upgrading => Poll::Ready(Ok(())),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_close(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_close(cx),
            Stream::Upgrading => Poll::Ready(Ok(())),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("certificate file {path}: {reason}")]
    Cert { path: String, reason: String },
    #[error("key file {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// The one crypto provider (ring) every config here is built with.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

/// The inbound config from PEM files: the certificate chain and its key.
pub fn server_config(cert_file: &Path, key_file: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = read_chain(cert_file)?;
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| TlsError::Key {
        path: key_file.display().to_string(),
        reason: e.to_string(),
    })?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(Arc::new(config))
}

/// A server certificate that can be read again while serving (SIGHUP):
/// a rustls certificate resolver over the key in force, swapped whole
/// when the files are read again and found good.
#[derive(Debug)]
pub struct CertReloader {
    cert_file: std::path::PathBuf,
    key_file: std::path::PathBuf,
    current: std::sync::RwLock<Arc<rustls::sign::CertifiedKey>>,
}

impl CertReloader {
    /// Reads the files; the config that serves them and the handle that
    /// reloads them.
    pub fn load(
        cert_file: &Path,
        key_file: &Path,
    ) -> Result<(Arc<ServerConfig>, Arc<CertReloader>), TlsError> {
        let key = certified_key(cert_file, key_file)?;
        let reloader = Arc::new(CertReloader {
            cert_file: cert_file.to_path_buf(),
            key_file: key_file.to_path_buf(),
            current: std::sync::RwLock::new(key),
        });
        let config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(reloader.clone());
        Ok((Arc::new(config), reloader))
    }

    /// Reads the files again; on any problem the certificate in force
    /// stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let key = certified_key(&self.cert_file, &self.key_file)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = key;
        Ok(())
    }
}

impl rustls::server::ResolvesServerCert for CertReloader {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

fn certified_key(
    cert_file: &Path,
    key_file: &Path,
) -> Result<Arc<rustls::sign::CertifiedKey>, TlsError> {
    let certs = read_chain(cert_file)?;
    let key_err = |reason: String| TlsError::Key {
        path: key_file.display().to_string(),
        reason,
    };
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| key_err(e.to_string()))?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| key_err(e.to_string()))?;
    let certified = rustls::sign::CertifiedKey::new(certs, signing);
    certified
        .keys_match()
        .map_err(|e| key_err(format!("does not match the certificate: {e}")))?;
    Ok(Arc::new(certified))
}

/// A PEM certificate chain; refused when empty.
fn read_chain(cert_file: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |reason: String| TlsError::Cert {
        path: cert_file.display().to_string(),
        reason,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| err(e.to_string()))?;
    match certs.is_empty() {
        true => Err(err("no certificate in the file".into())),
        false => Ok(certs),
    }
}

/// Outbound, opportunistic: any certificate is accepted, because on port 25
/// the alternative to an unverified certificate is plaintext, not a refusal
/// (RFC 7435). Signatures are still checked, so the handshake is real.
pub fn opportunistic_client() -> Arc<ClientConfig> {
    client_with(any_certificate())
}

/// Outbound, verified: the server's certificate must chain to a CA in
/// `ca_file` and name the MX host (RFC 6125 matching, by webpki).
pub fn verified_client(ca_file: &Path) -> Result<Arc<ClientConfig>, TlsError> {
    verified_pair(ca_file).map(|(client, _)| client)
}

/// [`verified_client`], and the verifier it uses (for [`observing_client`]).
pub fn verified_pair(
    ca_file: &Path,
) -> Result<(Arc<ClientConfig>, Arc<dyn ServerCertVerifier>), TlsError> {
    let err = |reason: String| TlsError::Cert {
        path: ca_file.display().to_string(),
        reason,
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_file).map_err(|e| err(e.to_string()))? {
        roots
            .add(cert.map_err(|e| err(e.to_string()))?)
            .map_err(|e| err(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(err("no CA certificate in the file".into()));
    }
    let verifier: Arc<dyn ServerCertVerifier> =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| err(e.to_string()))?;
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    Ok((Arc::new(config), verifier))
}

/// A certificate check of a verifier's own; the handshake's signatures
/// are checked as another verifier checks them ([`CheckedBy`]). DANE's
/// verifier and [`Observe`] are such checks.
pub trait CertCheck: std::fmt::Debug + Send + Sync {
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        now: UnixTime,
    ) -> Result<(), rustls::Error>;
}

/// A verifier: `check` for the certificate, `signatures` for the rest.
#[derive(Debug)]
pub struct CheckedBy<C> {
    pub check: C,
    pub signatures: Arc<dyn ServerCertVerifier>,
}

impl<C: CertCheck> ServerCertVerifier for CheckedBy<C> {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check
            .check(end_entity, intermediates, server_name, now)
            .map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.signatures.supported_verify_schemes()
    }
}

/// A client config whose server certificates `verifier` checks.
pub fn client_with(verifier: Arc<dyn ServerCertVerifier>) -> Arc<ClientConfig> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Arc::new(config)
}

/// Checks a server's certificate as `inner` does (the CA bundle, the host
/// name) but accepts it either way, keeping what it found: TLS as
/// opportunistic delivery has it, with the verdict a policy in testing
/// mode reports (MTA-STS, RFC 8461 §5; TLS-RPT). One per connection.
#[derive(Debug)]
pub struct Observe {
    inner: Arc<dyn ServerCertVerifier>,
    found: std::sync::Mutex<Option<rustls::Error>>,
}

impl Observe {
    /// Why the certificate would not verify, if it would not.
    pub fn found(&self) -> Option<rustls::Error> {
        self.found.lock().ok()?.clone()
    }
}

impl CertCheck for Observe {
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        let verdict =
            self.inner
                .verify_server_cert(end_entity, intermediates, server_name, &[], now);
        if let (Err(e), Ok(mut found)) = (verdict, self.found.lock()) {
            *found = Some(e);
        }
        Ok(())
    }
}

/// A client config for one connection, and its observing verifier.
pub fn observing_client(
    inner: &Arc<dyn ServerCertVerifier>,
) -> (Arc<ClientConfig>, Arc<CheckedBy<Observe>>) {
    let observing = Arc::new(CheckedBy {
        check: Observe {
            inner: inner.clone(),
            found: std::sync::Mutex::new(None),
        },
        signatures: inner.clone(),
    });
    (client_with(observing.clone()), observing)
}

/// For HTTPS clients (webhooks): the Web PKI's roots (webpki-roots), or
/// only the CAs in `ca_file` when one is given.
pub fn web_client(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, TlsError> {
    if let Some(ca) = ca_file {
        return verified_client(ca);
    }
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Accepts any certificate, verifying only the handshake signatures:
/// opportunistic TLS's verifier, and the handshake half of others (DANE's).
pub fn any_certificate() -> Arc<dyn ServerCertVerifier> {
    Arc::new(AnyCertificate(provider()))
}

/// Accepts any certificate, verifying only the handshake signatures.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A futures-io stream (a [`Stream`]) as hyper's IO, for the HTTP clients
/// (webhooks, MTA-STS policies).
pub struct HyperIo<T>(pub T);

impl<T: AsyncRead + Unpin> hyper::rt::Read for HyperIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let mut scratch = [0u8; 16 * 1024];
        let want = buf.remaining().min(scratch.len());
        match Pin::new(&mut self.get_mut().0).poll_read(cx, &mut scratch[..want]) {
            Poll::Ready(Ok(n)) => {
                buf.put_slice(&scratch[..n]);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncWrite + Unpin> hyper::rt::Write for HyperIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_close(cx)
    }
}
