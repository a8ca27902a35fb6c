//! The choice of identities and of signed fields, and why a message goes
//! unsigned. Whether the signatures verify is for independent verifiers
//! (tests/dkim.rs).

use super::key::{KeyKind, generate};
use super::*;
use crate::config::DkimConfig;

fn identity(domain: &str, selector: &str) -> Identity {
    let pem = generate(KeyKind::Ed25519).unwrap();
    Identity::new(
        domain,
        selector,
        SigningKey::from_pem(pem.as_bytes(), "test").unwrap(),
        0,
    )
}

fn signer(tweak: impl FnOnce(&mut DkimConfig)) -> Signer {
    let mut cfg = DkimConfig::default();
    tweak(&mut cfg);
    Signer::new(
        &cfg,
        vec![
            identity("example.com", "a"),
            identity("example.com", "b"),
            identity("news.example.com", "n"),
            identity("esp.example", "e"),
        ],
    )
}

fn chosen(s: &Signer, from: &str) -> Result<Vec<String>, Unsigned> {
    s.identities_for(from).map(|ids| {
        ids.iter()
            .map(|i| format!("{}/{}", i.domain, i.selector))
            .collect()
    })
}

#[test]
fn the_from_domain_or_its_nearest_parent_signs_with_every_identity() {
    let s = signer(|_| {});
    assert_eq!(
        chosen(&s, "example.com").unwrap(),
        ["example.com/a", "example.com/b"]
    );
    assert_eq!(
        chosen(&s, "mail.example.com").unwrap(),
        ["example.com/a", "example.com/b"]
    );
    assert_eq!(
        chosen(&s, "news.example.com").unwrap(),
        ["news.example.com/n"]
    );
    assert_eq!(
        chosen(&s, "x.news.example.com").unwrap(),
        ["news.example.com/n"]
    );
    assert_eq!(chosen(&s, "example.org"), Err(Unsigned::NoIdentity));
    // A parent is a whole label: "badexample.com" is not under example.com.
    assert_eq!(chosen(&s, "badexample.com"), Err(Unsigned::NoIdentity));
}

#[test]
fn mapping_fallback_and_do_not_sign() {
    let s = signer(|c| {
        c.domains
            .insert("brand.example".into(), "esp.example".into());
        c.fallback = "esp.example".into();
        c.do_not_sign = vec!["private.example.com".into()];
    });
    assert_eq!(chosen(&s, "shop.brand.example").unwrap(), ["esp.example/e"]);
    assert_eq!(chosen(&s, "example.org").unwrap(), ["esp.example/e"]);
    assert_eq!(
        chosen(&s, "example.com").unwrap(),
        ["example.com/a", "example.com/b"]
    );
    assert_eq!(chosen(&s, "private.example.com"), Err(Unsigned::DoNotSign));
    assert_eq!(
        chosen(&s, "a.private.example.com"),
        Err(Unsigned::DoNotSign)
    );
}

fn h_of(header: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(header).replace("\r\n\t", "");
    let h = text.split("h=").nth(1).unwrap().split(';').next().unwrap();
    h.split(':')
        .map(|n| n.trim().to_ascii_lowercase())
        .collect()
}

#[test]
fn signed_fields_are_those_present_and_from_once_more() {
    let s = signer(|_| {});
    let msg = b"Received: by us\r\nFrom: A <a@example.com>\r\nTo: b@example.net\r\nSubject: hi\r\nList-Unsubscribe: <https://example.com/u>\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\nX-Other: 1\r\n\r\nbody\r\n";
    let signed = s.sign(msg);
    assert!(matches!(&signed.outcome, DkimOutcome::Signed(v) if v.len() == 2));
    let first = signed.header.split(|&b| b == b'\n').next().unwrap();
    assert!(first.starts_with(b"DKIM-Signature: v=1; a=ed25519-sha256;"));
    let mut h = h_of(&signed.header);
    h.sort();
    assert_eq!(
        h,
        [
            "from",
            "from",
            "list-unsubscribe",
            "list-unsubscribe-post",
            "subject",
            "to"
        ]
    );
    // Two signatures, each a whole folded field ending in CRLF.
    let text = String::from_utf8(signed.header).unwrap();
    assert_eq!(text.matches("DKIM-Signature:").count(), 2);
    assert!(text.ends_with("\r\n"));
    assert!(!text.contains(" x="));
}

#[test]
fn expiry_sets_x() {
    let cfg = DkimConfig {
        expiry_secs: 86_400,
        ..Default::default()
    };
    let mut id = identity("example.com", "a");
    id.expiry_secs = cfg.expiry_secs;
    let s = Signer::new(&cfg, vec![id]);
    let signed = s.sign(b"From: a@example.com\r\n\r\nx\r\n");
    let text = String::from_utf8(signed.header)
        .unwrap()
        .replace("\r\n\t", "");
    let tag = |t: &str| -> u64 {
        text.split(&format!(" {t}="))
            .nth(1)
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(tag("x") - tag("t"), 86_400);
}

#[test]
fn a_message_that_cannot_be_aligned_is_unsigned_with_the_reason() {
    let s = signer(|_| {});
    let cases: &[(&[u8], Unsigned)] = &[
        (b"To: b@example.net\r\n\r\nx\r\n", Unsigned::NoFrom),
        (b"", Unsigned::NoFrom),
        (
            b"From: a@example.com\r\nFrom: evil@example.com\r\n\r\nx\r\n",
            Unsigned::MultipleFrom,
        ),
        (
            b"From: a@example.com, b@example.org\r\n\r\nx\r\n",
            Unsigned::MultipleFrom,
        ),
        (
            b"From: undisclosed-recipients:;\r\n\r\nx\r\n",
            Unsigned::BadFrom,
        ),
        (b"From: nobody\r\n\r\nx\r\n", Unsigned::BadFrom),
        (b"From: a@example.org\r\n\r\nx\r\n", Unsigned::NoIdentity),
    ];
    for (msg, why) in cases {
        let signed = s.sign(msg);
        assert_eq!(
            signed.outcome,
            DkimOutcome::Unsigned(*why),
            "{}",
            String::from_utf8_lossy(msg)
        );
        assert!(signed.header.is_empty());
    }
    // Two mailboxes of one domain, with display names and a comment: fine.
    let ok = s.sign(b"From: \"A, B\" <a@Example.COM>, b@example.com (b)\r\n\r\nx\r\n");
    assert!(
        matches!(ok.outcome, DkimOutcome::Signed(_)),
        "{:?}",
        ok.outcome
    );
}

#[test]
fn rsa_keys_report_their_size_and_ed25519_keys_read_back() {
    let ed = generate(KeyKind::Ed25519).unwrap();
    let key = SigningKey::from_pem(ed.as_bytes(), "ed.pem").unwrap();
    assert_eq!(key.algorithm_name(), "ed25519-sha256");
    assert!(key.dns_record().starts_with("v=DKIM1; k=ed25519; p="));
    assert!(key.expect(Some("rsa-sha256"), "ed.pem").is_err());
    let rsa = generate(KeyKind::Rsa(2048)).unwrap();
    let key = SigningKey::from_pem(rsa.as_bytes(), "rsa.pem").unwrap();
    assert_eq!((key.algorithm_name(), key.bits), ("rsa-sha256", 2048));
    let junk = SigningKey::from_pem(
        b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        "junk.pem",
    );
    assert!(junk.unwrap_err().to_string().starts_with("junk.pem: "));
}
