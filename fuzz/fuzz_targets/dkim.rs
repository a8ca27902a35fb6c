//! DKIM signing of whatever a client sends: `dkim::Signer::sign` over
//! arbitrary message bytes (mail-parser reads the From:, mail-auth
//! canonicalizes and signs) never panics; it signs or says why not, and
//! what it adds is whole `DKIM-Signature:` fields ending in CRLF, with
//! nothing a header could smuggle (no bare CR or LF, no NUL).
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use ringpost::config::DkimConfig;
use ringpost::dkim::key::{KeyKind, generate};
use ringpost::dkim::{DkimOutcome, Identity, Signer, SigningKey};

fn signer() -> &'static Signer {
    static SIGNER: OnceLock<Signer> = OnceLock::new();
    SIGNER.get_or_init(|| {
        let pem = generate(KeyKind::Ed25519).unwrap();
        let key = SigningKey::from_pem(pem.as_bytes(), "fuzz").unwrap();
        let mut cfg = DkimConfig::default();
        cfg.fallback = "example.com".into();
        Signer::new(&cfg, vec![Identity::new("example.com", "fuzz", key, 0)])
    })
}

fuzz_target!(|data: &[u8]| {
    let signed = signer().sign(data);
    match signed.outcome {
        DkimOutcome::Signed(made) => {
            assert_eq!(made.len(), 1);
            let text = std::str::from_utf8(&signed.header).expect("ASCII header");
            assert!(text.starts_with("DKIM-Signature: "));
            assert!(text.ends_with("\r\n"));
            let unfolded = text.trim_end_matches("\r\n").replace("\r\n\t", "");
            assert!(!unfolded.contains(['\r', '\n', '\0']), "{text:?}");
        }
        DkimOutcome::Unsigned(_) => assert!(signed.header.is_empty()),
    }
});
