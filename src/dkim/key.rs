//! DKIM private keys: reading them from their files (and judging them),
//! making new ones, and the DNS record that publishes a key.
//!
//! Owns: [`SigningKey`] (a loaded key, shared read-only by every shard),
//! [`KeyError`], [`generate`] and [`dns_record`].
//!
//! The signing itself is ring's, through mail-auth; the `rsa` crate is
//! used only to make RSA keys and to read an RSA key's size for a clear
//! message (ring refuses small keys without saying how small). It never
//! signs or decrypts here.
//!
//! Must not: know about messages, config sections or the network.

use std::path::Path;
use std::sync::Arc;

use base64::Engine;
use mail_auth::common::crypto::{Algorithm, DkimKey, Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::Writable;
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey, LineEnding};
use rsa::traits::PublicKeyParts;
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;

/// RSA keys under this many bits are refused outright (RFC 8301 3.2).
pub const RSA_MIN_BITS: usize = 1024;
/// ring, which signs, takes no RSA key under this many bits; RFC 8301
/// says signers SHOULD use at least this many.
pub const RSA_SIGNING_MIN_BITS: usize = 2048;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{file}: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}: not a PEM private key (PKCS#1 RSA or PKCS#8 RSA/Ed25519): {reason}")]
    Format { file: String, reason: String },
    #[error(
        "{file}: RSA key of {bits} bits: keys under {RSA_MIN_BITS} bits are refused (RFC 8301)"
    )]
    TooWeak { file: String, bits: usize },
    #[error(
        "{file}: RSA key of {bits} bits: use at least {RSA_SIGNING_MIN_BITS} (RFC 8301; ring, which signs, takes nothing smaller)"
    )]
    Weak { file: String, bits: usize },
    #[error("{file}: the key is {found}, but the identity says algorithm = {wanted:?}")]
    WrongAlgorithm {
        file: String,
        found: &'static str,
        wanted: String,
    },
    #[error("{file}: the key does not load: {reason}")]
    Rejected { file: String, reason: String },
    #[error("making the key: {0}")]
    Generate(String),
}

/// A loaded private key. Cheap to clone (shared).
#[derive(Clone)]
pub struct SigningKey {
    key: Arc<DkimKey>,
    /// The public key as it goes in the DNS record's `p=`.
    public: Arc<[u8]>,
    /// RSA modulus bits; 256 for Ed25519.
    pub bits: usize,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SigningKey({}, {} bits)",
            self.algorithm_name(),
            self.bits
        )
    }
}

impl SigningKey {
    /// Reads a PEM private key file.
    pub fn load(path: &Path) -> Result<SigningKey, KeyError> {
        let file = path.display().to_string();
        let pem = std::fs::read(path).map_err(|source| KeyError::Read {
            file: file.clone(),
            source,
        })?;
        SigningKey::from_pem(&pem, &file)
    }

    /// Reads a PEM private key; `file` names it in errors.
    pub fn from_pem(pem: &[u8], file: &str) -> Result<SigningKey, KeyError> {
        let der = PrivateKeyDer::from_pem_slice(pem).map_err(|e| KeyError::Format {
            file: file.into(),
            reason: e.to_string(),
        })?;
        let rejected = |e: mail_auth::Error| KeyError::Rejected {
            file: file.into(),
            reason: e.to_string(),
        };
        // An Ed25519 PKCS#8 key is the one ring's Ed25519 parser takes.
        if let PrivateKeyDer::Pkcs8(p8) = &der
            && let Ok(ed) = Ed25519Key::from_pkcs8_maybe_unchecked_der(p8.secret_pkcs8_der())
        {
            let public = ed.public_key();
            return Ok(SigningKey {
                key: Arc::new(DkimKey::Ed25519(ed)),
                public: public.into(),
                bits: 256,
            });
        }
        let rsa =
            match &der {
                PrivateKeyDer::Pkcs1(k) => rsa::RsaPrivateKey::from_pkcs1_der(k.secret_pkcs1_der())
                    .map_err(|e| e.to_string()),
                PrivateKeyDer::Pkcs8(k) => rsa::RsaPrivateKey::from_pkcs8_der(k.secret_pkcs8_der())
                    .map_err(|e| e.to_string()),
                _ => Err("neither PKCS#1 nor PKCS#8".to_string()),
            }
            .map_err(|reason| KeyError::Format {
                file: file.into(),
                reason,
            })?;
        let bits = rsa.size() * 8;
        if bits < RSA_MIN_BITS {
            return Err(KeyError::TooWeak {
                file: file.into(),
                bits,
            });
        }
        if bits < RSA_SIGNING_MIN_BITS {
            return Err(KeyError::Weak {
                file: file.into(),
                bits,
            });
        }
        let public = rsa
            .to_public_key()
            .to_public_key_der()
            .map_err(|e| KeyError::Format {
                file: file.into(),
                reason: e.to_string(),
            })?
            .into_vec();
        let key = RsaKey::<Sha256>::from_key_der(der).map_err(rejected)?;
        Ok(SigningKey {
            key: Arc::new(DkimKey::Rsa(key)),
            public: public.into(),
            bits,
        })
    }

    /// Checks the key against an identity's `algorithm`, when it names one.
    pub fn expect(&self, wanted: Option<&str>, file: &str) -> Result<(), KeyError> {
        match wanted {
            Some(w) if w != self.algorithm_name() => Err(KeyError::WrongAlgorithm {
                file: file.into(),
                found: self.algorithm_name(),
                wanted: w.into(),
            }),
            _ => Ok(()),
        }
    }

    pub fn algorithm(&self) -> Algorithm {
        mail_auth::common::crypto::SigningKey::algorithm(&*self.key)
    }

    /// `a=` of the signatures it makes.
    pub fn algorithm_name(&self) -> &'static str {
        match self.algorithm() {
            Algorithm::Ed25519Sha256 => "ed25519-sha256",
            _ => "rsa-sha256",
        }
    }

    /// The DNS TXT record that publishes this key.
    pub fn dns_record(&self) -> String {
        dns_record(self.algorithm(), &self.public)
    }

    /// Signs `data` directly (not as a DKIM message): `dkim check` signs a
    /// probe and lets the published key verify it.
    pub fn sign_probe(&self, data: &[u8]) -> Result<Vec<u8>, mail_auth::Error> {
        mail_auth::common::crypto::SigningKey::sign(&*self.key, data)
    }
}

/// The shared key as mail-auth's signer wants it (it takes its key by
/// value; every identity's key is loaded once and shared by every shard).
pub(crate) struct Shared(pub(crate) Arc<DkimKey>);

impl mail_auth::common::crypto::SigningKey for Shared {
    type Hasher = Sha256;

    fn sign(&self, input: impl Writable) -> mail_auth::Result<Vec<u8>> {
        self.0.sign(input)
    }

    fn algorithm(&self) -> Algorithm {
        self.0.algorithm()
    }
}

impl SigningKey {
    pub(crate) fn shared(&self) -> Shared {
        Shared(self.key.clone())
    }
}

/// `v=DKIM1; k=...; p=...` for a public key: SubjectPublicKeyInfo DER for
/// RSA (what `openssl rsa -pubout` gives, which every verifier reads), the
/// raw 32 bytes for Ed25519 (RFC 8463 4.2).
pub fn dns_record(algorithm: Algorithm, public: &[u8]) -> String {
    let k = match algorithm {
        Algorithm::Ed25519Sha256 => "ed25519",
        _ => "rsa",
    };
    let p = base64::engine::general_purpose::STANDARD.encode(public);
    format!("v=DKIM1; k={k}; p={p}")
}

/// Which kind of key to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Rsa(usize),
    Ed25519,
}

/// Makes a new private key: its PEM (PKCS#8) text.
pub fn generate(kind: KeyKind) -> Result<String, KeyError> {
    let err = |e: &dyn std::fmt::Display| KeyError::Generate(e.to_string());
    match kind {
        KeyKind::Rsa(bits) => {
            let key =
                rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, bits).map_err(|e| err(&e))?;
            Ok(key
                .to_pkcs8_pem(LineEnding::LF)
                .map_err(|e| err(&e))?
                .to_string())
        }
        KeyKind::Ed25519 => {
            // ring writes PKCS#8 v2 (with the public key), which OpenSSL
            // 3.0 and older tools do not read; write the plain v1 form of
            // RFC 8410 instead (ring reads both).
            use rsa::pkcs8::der::{Decode, Encode};
            let v2 = Ed25519Key::generate_pkcs8().map_err(|e| err(&e))?;
            let mut info = rsa::pkcs8::PrivateKeyInfo::from_der(&v2).map_err(|e| err(&e))?;
            info.public_key = None;
            let v1 = info.to_der().map_err(|e| err(&e))?;
            rsa::pkcs8::der::pem::encode_string("PRIVATE KEY", LineEnding::LF, &v1)
                .map_err(|e| err(&e))
        }
    }
}
