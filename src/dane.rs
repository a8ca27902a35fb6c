//! DANE for SMTP (RFC 7672, RFC 7671): a receiver's TLSA records, as a
//! certificate check for its MX host.
//!
//! Owns: [`TlsaSet`], the TLSA records of one MX host found in a
//! DNSSEC-secure answer, and [`client_config`], a rustls client whose
//! [`ServerCertVerifier`] accepts the host's certificate only if one of
//! those records matches:
//!
//! - DANE-EE (`3 s m`): the end-entity certificate (selector 0) or its
//!   public key (selector 1), exactly (matching 0) or by SHA-256 (1) or
//!   SHA-512 (2). Nothing else is checked: no name, no expiry, no chain
//!   (RFC 7672 §3.1.1).
//! - DANE-TA (`2 s m`): a certificate of the chain the server sent is the
//!   trust anchor; the end-entity certificate must chain to it (signatures,
//!   validity dates, server-auth key usage, through the Web PKI verifier
//!   with that one anchor) and carry the MX host name (RFC 7672 §3.2).
//! - PKIX-TA and PKIX-EE (`0`, `1`) are unusable for SMTP (RFC 7672
//!   §3.1.3). A host whose records are all unusable still gets TLS
//!   mandatorily, with any certificate (RFC 7672 §2.2).
//!
//! A set is compared whole ([`TlsaSet::digest`]): a pooled connection
//! verified against one set never carries mail for another.
//!
//! May call: `dns` (the TLSA record type), `tls` (the crypto provider),
//! `tlsrpt` (a failure's result type for TLS reports).
//! Must not: look anything up, or decide what a failed check does to a
//! delivery (the scheduler and outbound do).

use std::sync::Arc;

use ring::digest;
use rustls::ClientConfig;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

use crate::tls::{CertCheck, CheckedBy};

use crate::dns::Tlsa;
use mail_auth::report::tlsrpt::ResultType;

/// Certificate usages (RFC 6698 §2.1.1, RFC 7218 names).
pub const DANE_TA: u8 = 2;
pub const DANE_EE: u8 = 3;

/// The TLSA records of one MX host, from a DNSSEC-secure answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsaSet {
    /// `_PORT._tcp.HOST`, for messages.
    pub name: String,
    /// The usable records (DANE-TA, DANE-EE with known selector and
    /// matching type); empty when every published record is unusable.
    pub usable: Vec<Tlsa>,
    /// Every record published, usable or not (the TLS report names the
    /// policy by them).
    pub published: Vec<Tlsa>,
    /// Identifies the set (xxh3 of its records, as published).
    pub digest: u64,
}

impl TlsaSet {
    /// The set of `records` published at `name`.
    pub fn new(name: &str, records: &[Tlsa]) -> TlsaSet {
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        let mut sorted: Vec<&Tlsa> = records.iter().collect();
        sorted.sort_by(|a, b| {
            (a.usage, a.selector, a.matching, &a.data)
                .cmp(&(b.usage, b.selector, b.matching, &b.data))
        });
        for r in sorted {
            hasher.update(&[r.usage, r.selector, r.matching]);
            hasher.update(&(r.data.len() as u32).to_be_bytes());
            hasher.update(&r.data);
        }
        TlsaSet {
            name: name.to_string(),
            usable: records.iter().filter(|r| usable(r)).cloned().collect(),
            published: records.to_vec(),
            digest: hasher.digest(),
        }
    }
}

impl TlsaSet {
    /// The records published in presentation form (`3 1 1 <hex>`), as a
    /// TLS report names the policy.
    pub fn presentation(&self) -> Vec<String> {
        self.published.iter().map(Tlsa::presentation).collect()
    }
}

/// A record SMTP can use (RFC 7672 §3.1): DANE-TA or DANE-EE, full
/// certificate or public key, exact or SHA-256/512 with a digest of that
/// digest's length (RFC 7671 §5.1: a malformed record is unusable).
pub fn usable(r: &Tlsa) -> bool {
    let data_fits = match r.matching {
        0 => !r.data.is_empty(),
        1 => r.data.len() == 32,
        2 => r.data.len() == 64,
        _ => false,
    };
    matches!(r.usage, DANE_TA | DANE_EE) && r.selector <= 1 && data_fits
}

/// Why a certificate chain matched no record.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DaneError {
    #[error("the certificate matches none of the TLSA records at {0}")]
    NoMatch(String),
    #[error("the certificate chains to a DANE-TA anchor of {name} but does not verify: {why}")]
    TaChain { name: String, why: rustls::Error },
    #[error("the certificate could not be read: {0}")]
    BadCertificate(String),
}

impl DaneError {
    /// The failure as a TLS report names it (RFC 8460 §4.3).
    pub fn result_type(&self) -> ResultType {
        match self {
            DaneError::TaChain { why, .. } => crate::tlsrpt::result_of_tls_error(why),
            DaneError::NoMatch(_) | DaneError::BadCertificate(_) => ResultType::ValidationFailure,
        }
    }
}

/// The data `selector` picks from a certificate: the whole DER (0) or its
/// SubjectPublicKeyInfo (1).
fn selected(cert: &CertificateDer<'_>, selector: u8) -> Result<Vec<u8>, DaneError> {
    match selector {
        0 => Ok(cert.as_ref().to_vec()),
        _ => {
            let parsed = webpki::EndEntityCert::try_from(cert)
                .map_err(|e| DaneError::BadCertificate(format!("{e:?}")))?;
            Ok(parsed.subject_public_key_info().as_ref().to_vec())
        }
    }
}

/// Whether `cert` matches record `r` (its selector and matching type).
pub fn matches(r: &Tlsa, cert: &CertificateDer<'_>) -> Result<bool, DaneError> {
    let data = selected(cert, r.selector)?;
    Ok(match r.matching {
        0 => data == r.data,
        1 => digest::digest(&digest::SHA256, &data).as_ref() == r.data.as_slice(),
        2 => digest::digest(&digest::SHA512, &data).as_ref() == r.data.as_slice(),
        _ => false,
    })
}

/// Checks a server's chain against `set`: Ok when a DANE-EE record matches
/// the end-entity certificate, or when a DANE-TA record matches a
/// certificate of the chain and the end-entity certificate verifies to it
/// for `host`. An empty set (only unusable records) accepts any chain.
pub fn check(
    set: &TlsaSet,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    host: &ServerName<'_>,
    now: UnixTime,
    provider: &Arc<CryptoProvider>,
) -> Result<(), DaneError> {
    if set.usable.is_empty() {
        return Ok(());
    }
    for r in set.usable.iter().filter(|r| r.usage == DANE_EE) {
        if matches(r, end_entity)? {
            return Ok(());
        }
    }
    let mut last = DaneError::NoMatch(set.name.clone());
    for r in set.usable.iter().filter(|r| r.usage == DANE_TA) {
        for anchor in intermediates.iter().chain(std::iter::once(end_entity)) {
            if !matches(r, anchor)? {
                continue;
            }
            match chain_to(anchor, end_entity, intermediates, host, now, provider) {
                Ok(()) => return Ok(()),
                Err(why) => {
                    last = DaneError::TaChain {
                        name: set.name.clone(),
                        why,
                    }
                }
            }
        }
    }
    Err(last)
}

/// The Web PKI check of `end_entity` for `host` with `anchor` as the only
/// trusted root.
fn chain_to(
    anchor: &CertificateDer<'_>,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    host: &ServerName<'_>,
    now: UnixTime,
    provider: &Arc<CryptoProvider>,
) -> Result<(), rustls::Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(anchor.clone().into_owned())?;
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
    verifier
        .verify_server_cert(end_entity, intermediates, host, &[], now)
        .map(|_| ())
}

/// A client config that accepts a server only as [`check`] says.
pub fn client_config(set: TlsaSet) -> Arc<ClientConfig> {
    crate::tls::client_with(Arc::new(CheckedBy {
        check: DaneCheck {
            set,
            provider: crate::tls::provider(),
        },
        signatures: crate::tls::any_certificate(),
    }))
}

/// [`check`] as a verifier's certificate check: a failure is rustls's
/// `InvalidCertificate(Other)` carrying the [`DaneError`], which the
/// client reads back (its words, its TLS report result type).
#[derive(Debug)]
struct DaneCheck {
    set: TlsaSet,
    provider: Arc<CryptoProvider>,
}

impl CertCheck for DaneCheck {
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        check(
            &self.set,
            end_entity,
            intermediates,
            server_name,
            now,
            &self.provider,
        )
        .map_err(|e| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
                Arc::new(e),
            )))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tlsa(usage: u8, selector: u8, matching: u8, data: &[u8]) -> Tlsa {
        Tlsa {
            usage,
            selector,
            matching,
            data: data.to_vec(),
        }
    }

    fn sha256(data: &[u8]) -> Vec<u8> {
        digest::digest(&digest::SHA256, data).as_ref().to_vec()
    }

    struct Chain {
        ca: CertificateDer<'static>,
        leaf: CertificateDer<'static>,
        leaf_spki: Vec<u8>,
    }

    /// A CA and a leaf for `name` it signed.
    fn chain(name: &str) -> Chain {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca = rcgen::CertifiedIssuer::self_signed(params, ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        let ca_cert: &rcgen::Certificate = ca.as_ref();
        Chain {
            ca: ca_cert.der().clone(),
            leaf: leaf.der().clone(),
            leaf_spki: rcgen::PublicKeyData::subject_public_key_info(&key),
        }
    }

    fn run(set: &TlsaSet, c: &Chain, host: &str) -> Result<(), DaneError> {
        let name = ServerName::try_from(host.to_string()).unwrap();
        check(
            set,
            &c.leaf,
            std::slice::from_ref(&c.ca),
            &name,
            UnixTime::now(),
            &crate::tls::provider(),
        )
    }

    #[test]
    fn dane_ee_matches_the_key_or_the_certificate_whatever_the_name() {
        let c = chain("mx.example");
        for r in [
            tlsa(3, 1, 1, &sha256(&c.leaf_spki)),
            tlsa(3, 1, 0, &c.leaf_spki),
            tlsa(3, 0, 1, &sha256(&c.leaf)),
            tlsa(
                3,
                1,
                2,
                digest::digest(&digest::SHA512, &c.leaf_spki).as_ref(),
            ),
        ] {
            let set = TlsaSet::new("_25._tcp.mx.example", std::slice::from_ref(&r));
            assert_eq!(run(&set, &c, "other.example"), Ok(()), "{r:?}");
        }
        let wrong = TlsaSet::new("_25._tcp.mx.example", &[tlsa(3, 1, 1, &[0; 32])]);
        assert!(matches!(
            run(&wrong, &c, "mx.example"),
            Err(DaneError::NoMatch(_))
        ));
    }

    #[test]
    fn dane_ta_needs_the_chain_and_the_name() {
        let c = chain("mx.example");
        let set = TlsaSet::new("_25._tcp.mx.example", &[tlsa(2, 0, 1, &sha256(&c.ca))]);
        assert_eq!(run(&set, &c, "mx.example"), Ok(()));
        assert!(matches!(
            run(&set, &c, "other.example"),
            Err(DaneError::TaChain { .. })
        ));
        // The anchor of another CA: no match at all.
        let other = chain("mx.example");
        let set = TlsaSet::new("_25._tcp.mx.example", &[tlsa(2, 0, 1, &sha256(&other.ca))]);
        assert!(matches!(
            run(&set, &c, "mx.example"),
            Err(DaneError::NoMatch(_))
        ));
    }

    #[test]
    fn unusable_records_leave_tls_mandatory_but_unauthenticated() {
        let c = chain("mx.example");
        // PKIX-EE, an unknown selector, a SHA-256 digest cut short.
        let records = [
            tlsa(1, 1, 1, &[0; 32]),
            tlsa(3, 7, 1, &[0; 32]),
            tlsa(3, 1, 1, &[0; 31]),
        ];
        let set = TlsaSet::new("_25._tcp.mx.example", &records);
        assert!(set.usable.is_empty());
        assert_eq!(set.presentation().len(), 3, "the report names them all");
        assert_eq!(run(&set, &c, "mx.example"), Ok(()));
    }

    #[test]
    fn a_set_is_known_by_its_records_in_any_order() {
        let (a, b) = (tlsa(3, 1, 1, &[1; 32]), tlsa(2, 0, 1, &[2; 32]));
        let one = TlsaSet::new("n", &[a.clone(), b.clone()]);
        assert_eq!(one.digest, TlsaSet::new("n", &[b, a.clone()]).digest);
        assert_ne!(one.digest, TlsaSet::new("n", &[a]).digest);
    }
}
