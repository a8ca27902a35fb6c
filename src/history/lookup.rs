//! What a message can be looked up by, as values: [`Lookup`] (a kind and
//! a normalized value), parsed from what an operator types, and the keys
//! of a message ([`keys_of`]). Pure functions over strings: the queue's
//! in-memory index (`scheduler::index`) and the history's key tables
//! ([`super::History`]) use the same keys, so a lookup means the same in
//! both.
//!
//! Normalization: addresses compare with the domain part in lower case
//! and the local part as given (RFC 5321 2.4); a Message-ID without its
//! angle brackets; meta by a top-level key and its scalar value
//! (`campaign=spring`; numbers and booleans as JSON writes them).

use serde::{Deserialize, Serialize};

/// What a message is looked up by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LookupKind {
    /// A recipient's address.
    Rcpt,
    /// The envelope sender's address.
    Sender,
    /// The `Message-ID:` header field.
    MessageId,
    /// The injection's `Idempotency-Key`.
    IdempotencyKey,
    /// One `KEY=VALUE` of the application's meta.
    Meta,
}

impl LookupKind {
    pub const ALL: [LookupKind; 5] = [
        LookupKind::Rcpt,
        LookupKind::Sender,
        LookupKind::MessageId,
        LookupKind::IdempotencyKey,
        LookupKind::Meta,
    ];

    /// The name in the API's query and the CLI's flags.
    pub fn name(self) -> &'static str {
        match self {
            LookupKind::Rcpt => "rcpt",
            LookupKind::Sender => "sender",
            LookupKind::MessageId => "message_id",
            LookupKind::IdempotencyKey => "idempotency_key",
            LookupKind::Meta => "meta",
        }
    }

    /// Its byte in the history's key hashes (on disk: keep stable).
    pub(super) fn tag(self) -> u8 {
        match self {
            LookupKind::Rcpt => b'r',
            LookupKind::Sender => b's',
            LookupKind::MessageId => b'm',
            LookupKind::IdempotencyKey => b'k',
            LookupKind::Meta => b'x',
        }
    }
}

/// Longest value looked up or indexed, in bytes (an address is at most
/// 320, a Message-ID rarely over 200).
pub const MAX_VALUE: usize = 512;

/// Meta entries of one message indexed at most (the first ones, in the
/// object's order).
const MAX_META_KEYS: usize = 16;

/// One key: a kind and its normalized value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Lookup {
    pub kind: LookupKind,
    pub value: String,
}

/// Why a lookup cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    #[error("unknown key `{0}`: rcpt, sender, message_id, idempotency_key or meta")]
    UnknownKind(String),
    #[error("`{0}` is empty, longer than 512 bytes, or has control characters")]
    BadValue(String),
    #[error("meta lookups are KEY=VALUE, not `{0}`")]
    BadMeta(String),
}

impl Lookup {
    /// A lookup from the API's or the CLI's `kind` and `value`.
    pub fn parse(kind: &str, value: &str) -> Result<Lookup, LookupError> {
        let kind = LookupKind::ALL
            .into_iter()
            .find(|k| k.name() == kind || k.name().replace('_', "-") == kind)
            .ok_or_else(|| LookupError::UnknownKind(kind.to_string()))?;
        let bad = || LookupError::BadValue(value.to_string());
        if kind == LookupKind::Meta && !value.contains('=') {
            return Err(LookupError::BadMeta(value.to_string()));
        }
        Lookup::of(kind, value).ok_or_else(bad)
    }

    /// `value` normalized as a `kind` key; None when it cannot be one
    /// (empty, too long, a control character).
    pub fn of(kind: LookupKind, value: &str) -> Option<Lookup> {
        let value = value.trim();
        let value = match kind {
            LookupKind::Rcpt | LookupKind::Sender => {
                let bare = value.strip_prefix('<').unwrap_or(value);
                normalize_address(bare.strip_suffix('>').unwrap_or(bare))
            }
            LookupKind::MessageId => {
                let bare = value.strip_prefix('<').unwrap_or(value);
                bare.strip_suffix('>').unwrap_or(bare).to_string()
            }
            LookupKind::IdempotencyKey | LookupKind::Meta => value.to_string(),
        };
        let fits = !value.is_empty() && value.len() <= MAX_VALUE;
        (fits && !value.chars().any(char::is_control)).then_some(Lookup { kind, value })
    }
}

/// The 64-bit hash of a key made of `parts` (its normalized value, in
/// pieces) under `tag`: xxh3 over the tag and the bytes, so pieces hash as
/// their concatenation. `seed` 0 is the history's (its tables are on disk:
/// the function must not change); the queue's in-memory index picks a
/// random one.
pub fn hash_parts(seed: u64, tag: u8, parts: &[&[u8]]) -> u64 {
    // Keys are short: gathered on the stack and hashed in one call (the
    // same value as streaming them, by xxh3's definition, and cheaper).
    let mut buf = [0u8; 1 + 2 * MAX_VALUE];
    let len = 1 + parts.iter().map(|p| p.len()).sum::<usize>();
    if len > buf.len() {
        let mut h = xxhash_rust::xxh3::Xxh3::with_seed(seed);
        h.update(&[tag]);
        for p in parts {
            h.update(p);
        }
        return h.digest();
    }
    buf[0] = tag;
    let mut at = 1;
    for p in parts {
        buf[at..at + p.len()].copy_from_slice(p);
        at += p.len();
    }
    xxhash_rust::xxh3::xxh3_64_with_seed(&buf[..len], seed)
}

impl Lookup {
    /// This key's hash (see [`hash_parts`]).
    pub fn hash(&self, seed: u64) -> u64 {
        hash_parts(seed, self.kind.tag(), &[self.value.as_bytes()])
    }
}

/// Whether `len` bytes of `text` can be a key's value (as [`Lookup::of`]
/// decides).
fn fits(len: usize, pieces: &[&str]) -> bool {
    len > 0 && len <= MAX_VALUE && !pieces.iter().any(|p| p.chars().any(char::is_control))
}

/// The hashes of every key of a queued message, as [`keys_of_envelope`]
/// would make them but without building them: what the queue's index
/// keeps for each of a million messages, with no allocation per key.
pub fn key_hashes(seed: u64, env: &crate::queue::Envelope) -> Vec<u64> {
    let keyed = Keyed {
        sender: &env.sender,
        message_id: env.message_id.as_deref(),
        idempotency_key: env.idempotency_key.as_deref(),
        meta: env.meta.as_deref(),
    };
    hashes_of(seed, keyed, env.recipients.iter().map(|r| &*r.address))
}

/// [`key_hashes`] of any message: its recipients and the rest of what it
/// is keyed by.
pub fn hashes_of<'r>(
    seed: u64,
    m: Keyed<'_>,
    recipients: impl Iterator<Item = &'r str>,
) -> Vec<u64> {
    let mut out = Vec::with_capacity(recipients.size_hint().0 + 4);
    let mut domain_buf = [0u8; MAX_VALUE];
    let mut address = |kind: LookupKind, a: &str, out: &mut Vec<u64>| {
        let a = a.trim();
        let a = a.strip_prefix('<').unwrap_or(a);
        let a = a.strip_suffix('>').unwrap_or(a);
        if !fits(a.len(), &[a]) {
            return;
        }
        match a.rsplit_once('@') {
            Some((local, domain)) => {
                let d = &mut domain_buf[..domain.len()];
                d.copy_from_slice(domain.as_bytes());
                d.make_ascii_lowercase();
                out.push(hash_parts(seed, kind.tag(), &[local.as_bytes(), b"@", d]));
            }
            None => out.push(hash_parts(seed, kind.tag(), &[a.as_bytes()])),
        }
    };
    for r in recipients {
        address(LookupKind::Rcpt, r, &mut out);
    }
    address(LookupKind::Sender, m.sender, &mut out);
    let mut plain = |kind: LookupKind, v: &str| {
        let v = v.trim();
        let v = match kind {
            LookupKind::MessageId => {
                let v = v.strip_prefix('<').unwrap_or(v);
                v.strip_suffix('>').unwrap_or(v)
            }
            _ => v,
        };
        if fits(v.len(), &[v]) {
            out.push(hash_parts(seed, kind.tag(), &[v.as_bytes()]));
        }
    };
    if let Some(id) = m.message_id {
        plain(LookupKind::MessageId, id);
    }
    if let Some(k) = m.idempotency_key {
        plain(LookupKind::IdempotencyKey, k);
    }
    if let Some(serde_json::Value::Object(map)) = m.meta {
        for (k, v) in map.iter().take(MAX_META_KEYS) {
            let number;
            let v = match v {
                serde_json::Value::String(s) => s.as_str(),
                serde_json::Value::Number(n) => {
                    number = n.to_string();
                    number.as_str()
                }
                serde_json::Value::Bool(true) => "true",
                serde_json::Value::Bool(false) => "false",
                _ => continue,
            };
            // As `Lookup::of` trims `k=v` as a whole.
            let text = format!("{k}={v}");
            plain(LookupKind::Meta, &text);
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

impl std::fmt::Display for Lookup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}", self.kind.name(), self.value)
    }
}

impl Lookup {
    /// Whether queued message `env` has this key: what
    /// `keys_of_envelope(env).contains(self)` says, without building
    /// every key (a bulk action checks tens of thousands of candidates).
    pub fn found_in(&self, env: &crate::queue::Envelope) -> bool {
        let is = |kind, value: &str| Lookup::of(kind, value).is_some_and(|k| k == *self);
        match self.kind {
            LookupKind::Rcpt => env
                .recipients
                .iter()
                .any(|r| same_address(&r.address, &self.value) && is(self.kind, &r.address)),
            LookupKind::Sender => {
                same_address(&env.sender, &self.value) && is(self.kind, &env.sender)
            }
            LookupKind::MessageId => env.message_id.as_deref().is_some_and(|v| is(self.kind, v)),
            LookupKind::IdempotencyKey => env
                .idempotency_key
                .as_deref()
                .is_some_and(|v| is(self.kind, v)),
            LookupKind::Meta => {
                let Some(serde_json::Value::Object(map)) = env.meta.as_deref() else {
                    return false;
                };
                map.iter().take(MAX_META_KEYS).any(|(k, v)| {
                    let v = match v {
                        serde_json::Value::String(s) => s.clone(),
                        serde_json::Value::Number(n) => n.to_string(),
                        serde_json::Value::Bool(b) => b.to_string(),
                        _ => return false,
                    };
                    self.value.contains(k.trim()) && is(self.kind, &format!("{k}={v}"))
                })
            }
        }
    }
}

/// A cheap first test of whether `address` may normalize to `key`: the
/// same length once trimmed of space and `<>` (normalizing changes only
/// the domain's case).
fn same_address(address: &str, key: &str) -> bool {
    let a = address.trim();
    let a = a.strip_prefix('<').unwrap_or(a);
    let a = a.strip_suffix('>').unwrap_or(a);
    a.len() == key.len()
}

/// `local@Domain` as `local@domain`.
fn normalize_address(address: &str) -> String {
    match address.rsplit_once('@') {
        Some((local, domain)) => format!("{local}@{}", domain.to_ascii_lowercase()),
        None => address.to_string(),
    }
}

/// What of a message its keys are made from (besides its recipients).
pub struct Keyed<'a> {
    pub sender: &'a str,
    pub message_id: Option<&'a str>,
    pub idempotency_key: Option<&'a str>,
    pub meta: Option<&'a serde_json::Value>,
}

/// Every key a message can be found by: each recipient, the sender (not
/// the null sender), its Message-ID, its Idempotency-Key, and its meta's
/// top-level scalar entries. A value that cannot be a key is left out.
pub fn keys_of<'r>(m: Keyed<'_>, recipients: impl Iterator<Item = &'r str>) -> Vec<Lookup> {
    let mut keys = Vec::new();
    keys.extend(recipients.filter_map(|r| Lookup::of(LookupKind::Rcpt, r)));
    keys.extend(Lookup::of(LookupKind::Sender, m.sender));
    keys.extend(
        m.message_id
            .and_then(|v| Lookup::of(LookupKind::MessageId, v)),
    );
    keys.extend(
        m.idempotency_key
            .and_then(|v| Lookup::of(LookupKind::IdempotencyKey, v)),
    );
    if let Some(serde_json::Value::Object(map)) = m.meta {
        for (k, v) in map.iter().take(MAX_META_KEYS) {
            let v = match v {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::Bool(b) => b.to_string(),
                _ => continue,
            };
            keys.extend(Lookup::of(LookupKind::Meta, &format!("{k}={v}")));
        }
    }
    // A recipient listed in two cases is one key.
    keys.sort_by(|a, b| (a.kind.tag(), &a.value).cmp(&(b.kind.tag(), &b.value)));
    keys.dedup();
    keys
}

/// The keys of a queued message.
pub fn keys_of_envelope(env: &crate::queue::Envelope) -> Vec<Lookup> {
    let keyed = Keyed {
        sender: &env.sender,
        message_id: env.message_id.as_deref(),
        idempotency_key: env.idempotency_key.as_deref(),
        meta: env.meta.as_deref(),
    };
    keys_of(keyed, env.recipients.iter().map(|r| &*r.address))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_found_in_a_message_exactly_when_it_is_among_its_keys() {
        let mut env = crate::queue::Envelope::new(
            "News@Shop.EXAMPLE".into(),
            vec!["a@X.org".into(), "<b@y.org>".into(), "".into()],
            0,
        );
        env.message_id = Some("<m1@shop.example>".into());
        env.idempotency_key = Some("order 42".into());
        env.meta = Some(Box::new(
            serde_json::json!({"c": "spring", "n": 7.5, "t": true, "o": {}, "k=x": "y"}),
        ));
        let keys = keys_of_envelope(&env);
        for k in &keys {
            assert!(k.found_in(&env), "{k:?}");
        }
        for (kind, v) in [
            ("rcpt", "A@x.org"),
            ("rcpt", "a@x.orgg"),
            ("sender", "news@shop.example"),
            ("message_id", "m2@shop.example"),
            ("idempotency_key", "order 43"),
            ("meta", "c=fall"),
            ("meta", "n=7"),
            ("meta", "o={}"),
        ] {
            let k = Lookup::parse(kind, v).unwrap();
            assert!(!keys.contains(&k) && !k.found_in(&env), "{k:?}");
        }
        for (kind, v) in [("rcpt", "a@x.ORG"), ("meta", "k=x=y"), ("meta", "t=true")] {
            let k = Lookup::parse(kind, v).unwrap();
            assert!(keys.contains(&k) && k.found_in(&env), "{k:?}");
        }
    }

    #[test]
    fn addresses_compare_with_the_domain_in_lower_case_only() {
        let a = Lookup::parse("rcpt", "<Bob@Example.COM>").unwrap();
        assert_eq!(a.value, "Bob@example.com");
        assert_ne!(a, Lookup::parse("rcpt", "bob@example.com").unwrap());
        assert_eq!(a, Lookup::of(LookupKind::Rcpt, "Bob@example.com").unwrap());
    }

    #[test]
    fn the_hashes_without_the_keys_are_the_keys_hashes() {
        let mut env = crate::queue::Envelope::new(
            "News@Shop.EXAMPLE".into(),
            vec!["a@X.org".into(), "a@x.ORG".into(), "b".into(), "".into()],
            0,
        );
        env.message_id = Some("m1@shop.example".into());
        env.idempotency_key = Some("order 42".into());
        env.meta = Some(Box::new(
            serde_json::json!({"c": "spring", "n": 7.5, "t": true, "o": {}, "s": " x "}),
        ));
        let mut want: Vec<u64> = keys_of_envelope(&env).iter().map(|k| k.hash(9)).collect();
        want.sort_unstable();
        assert_eq!(key_hashes(9, &env), want);
    }

    #[test]
    fn a_key_hashes_the_same_in_one_piece_or_many_and_long() {
        let long = "x".repeat(3 * MAX_VALUE);
        for value in ["a@b.example", long.as_str()] {
            let (l, r) = value.split_at(3);
            let whole = hash_parts(5, b'r', &[value.as_bytes()]);
            assert_eq!(hash_parts(5, b'r', &[l.as_bytes(), r.as_bytes()]), whole);
            let mut h = xxhash_rust::xxh3::Xxh3::with_seed(5);
            h.update(b"r");
            h.update(value.as_bytes());
            assert_eq!(h.digest(), whole);
        }
    }

    #[test]
    fn bad_lookups_are_refused_with_the_reason() {
        assert!(matches!(
            Lookup::parse("subject", "x"),
            Err(LookupError::UnknownKind(_))
        ));
        assert!(matches!(
            Lookup::parse("rcpt", ""),
            Err(LookupError::BadValue(_))
        ));
        assert!(matches!(
            Lookup::parse("rcpt", &"a".repeat(600)),
            Err(LookupError::BadValue(_))
        ));
        assert!(matches!(
            Lookup::parse("meta", "campaign"),
            Err(LookupError::BadMeta(_))
        ));
        assert!(matches!(
            Lookup::parse("sender", "a\u{0}b@c"),
            Err(LookupError::BadValue(_))
        ));
        assert_eq!(
            Lookup::parse("message-id", "<x@y>").unwrap().kind,
            LookupKind::MessageId
        );
    }

    #[test]
    fn a_message_is_keyed_by_everything_it_can_be_found_by() {
        let meta =
            serde_json::json!({"campaign": "spring", "n": 7, "vip": true, "nested": {"a": 1}});
        let keyed = Keyed {
            sender: "news@Shop.example",
            message_id: Some("m1@shop.example"),
            idempotency_key: Some("order-42"),
            meta: Some(&meta),
        };
        let keys = keys_of(keyed, ["a@x.org", "a@X.ORG", "b@y.org"].into_iter());
        let shown: Vec<String> = keys.iter().map(Lookup::to_string).collect();
        assert_eq!(
            shown,
            [
                "idempotency_key=order-42",
                "message_id=m1@shop.example",
                "rcpt=a@x.org",
                "rcpt=b@y.org",
                "sender=news@shop.example",
                "meta=campaign=spring",
                "meta=n=7",
                "meta=vip=true",
            ]
        );
        let nothing = Keyed {
            sender: "",
            message_id: None,
            idempotency_key: None,
            meta: None,
        };
        let null_sender = keys_of(nothing, std::iter::empty());
        assert!(null_sender.is_empty());
    }
}
