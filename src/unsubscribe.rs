//! One-click unsubscribe (RFC 8058): the links ringpost writes into a
//! message's `List-Unsubscribe` field, and what such a link says when it
//! comes back.
//!
//! Owns: [`Secrets`] (the HMAC-SHA256 keys of `unsubscribe.secret_file`:
//! the first line mints, every line verifies, so that a secret rotated
//! out keeps its links working while it stays listed), [`Keyring`] (the
//! secrets in force, read again on SIGHUP), [`Claim`] (what a link says),
//! [`mint`] and [`verify`], the header fields ([`Links::fields`]) and the
//! parser of a one-click request's body ([`is_one_click`]). Pure functions
//! over bytes, but for the keyring's lock.
//!
//! A token is base64url (no padding) of
//!
//! ```text
//!  version 1 (1 byte) | key id (4 bytes: SHA-256 of the secret, first 4)
//!  | issued (u32, big-endian Unix seconds) | the message's queue id (16)
//!  | recipient length (1) | recipient | sender domain
//!  | HMAC-SHA256 of everything before it (32)
//! ```
//!
//! so a link is verified without a lookup: the MAC under the key its id
//! names, then its age against `unsubscribe.link_lifetime_days`. The
//! recipient and the sender's domain travel in the link (readable, like
//! every ESP's): the MAC is what makes them trusted.
//!
//! May call: `queue` (message ids).
//! Must not: suppress anything or write events (`inbound::unsubscribe`
//! does), or know HTTP.

use std::sync::{Arc, RwLock};

use base64::Engine;
use ring::hmac;

use crate::queue::MessageId;

const VERSION: u8 = 1;
const KEY_ID: usize = 4;
const TAG: usize = 32;
/// The fixed part before the recipient: version, key id, issued, id,
/// recipient length.
const FIXED: usize = 1 + KEY_ID + 4 + 16 + 1;
/// A secret's shortest line.
pub const MIN_SECRET: usize = 32;
/// A token's longest text (a 255-byte recipient and a 255-byte domain).
pub const MAX_TOKEN: usize = 1024;

/// What a link says: recipient `recipient` of message `message` (from a
/// sender at `sender_domain`) asks to receive no more of that domain's
/// mail. Issued at `issued` (Unix seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub message: MessageId,
    pub recipient: String,
    pub sender_domain: String,
    pub issued: u64,
}

/// Why a token is not honoured. A malformed one is the client's mistake
/// (400); the others name no subscription ringpost issued (404).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("not an unsubscribe token")]
    Malformed,
    #[error("signed with no secret in force")]
    UnknownKey,
    #[error("its signature does not match")]
    Forged,
    #[error("issued longer ago than the links live")]
    Expired,
}

impl TokenError {
    /// The label in `ringpost_unsubscribe_requests_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenError::Malformed => "malformed",
            TokenError::UnknownKey => "unknown_key",
            TokenError::Forged => "forged",
            TokenError::Expired => "expired",
        }
    }
}

/// A problem with the secret file.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}: no secret in it (one per line, the first mints)")]
    Empty(String),
    #[error("{0}: line {1} is shorter than {MIN_SECRET} characters")]
    Short(String, usize),
}

/// The keys: the first mints, all verify.
pub struct Secrets {
    keys: Vec<([u8; KEY_ID], hmac::Key)>,
}

impl Secrets {
    /// One secret per line (blank lines and `#` comments skipped), the
    /// current one first.
    pub fn parse(path: &str, text: &str) -> Result<Secrets, SecretsError> {
        let mut keys = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if line.len() < MIN_SECRET {
                return Err(SecretsError::Short(path.to_string(), n + 1));
            }
            let digest = ring::digest::digest(&ring::digest::SHA256, line.as_bytes());
            let mut id = [0u8; KEY_ID];
            id.copy_from_slice(&digest.as_ref()[..KEY_ID]);
            keys.push((id, hmac::Key::new(hmac::HMAC_SHA256, line.as_bytes())));
        }
        match keys.is_empty() {
            true => Err(SecretsError::Empty(path.to_string())),
            false => Ok(Secrets { keys }),
        }
    }

    pub fn load(path: &str) -> Result<Secrets, SecretsError> {
        let text = std::fs::read_to_string(path).map_err(|source| SecretsError::Read {
            path: path.to_string(),
            source,
        })?;
        Secrets::parse(path, &text)
    }

    /// How many secrets verify.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// The secrets in force, shared by every shard (each message's link is
/// minted with the current one); replaced whole on SIGHUP.
pub struct Keyring {
    path: String,
    secrets: RwLock<Arc<Secrets>>,
}

impl Keyring {
    pub fn load(path: &str) -> Result<Keyring, SecretsError> {
        Ok(Keyring {
            path: path.to_string(),
            secrets: RwLock::new(Arc::new(Secrets::load(path)?)),
        })
    }

    pub fn current(&self) -> Arc<Secrets> {
        self.secrets
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reads the file again; a bad file keeps the secrets in force.
    pub fn reload(&self) -> Result<usize, SecretsError> {
        let fresh = Secrets::load(&self.path)?;
        let n = fresh.len();
        *self.secrets.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(fresh);
        Ok(n)
    }
}

/// The token for `claim`, under the current secret.
pub fn mint(secrets: &Secrets, claim: &Claim) -> String {
    let (id, key) = &secrets.keys[0];
    let rcpt = &claim.recipient.as_bytes()[..claim.recipient.len().min(255)];
    let mut raw = Vec::with_capacity(FIXED + rcpt.len() + claim.sender_domain.len() + TAG);
    raw.push(VERSION);
    raw.extend_from_slice(id);
    raw.extend_from_slice(&(claim.issued.min(u32::MAX as u64) as u32).to_be_bytes());
    raw.extend_from_slice(claim.message.as_bytes());
    raw.push(rcpt.len() as u8);
    raw.extend_from_slice(rcpt);
    raw.extend_from_slice(claim.sender_domain.as_bytes());
    let tag = hmac::sign(key, &raw);
    raw.extend_from_slice(tag.as_ref());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

/// What `token` says, if a secret in force signed it and it was issued
/// within `lifetime_secs` of `now`.
pub fn verify(
    secrets: &Secrets,
    token: &str,
    now: u64,
    lifetime_secs: u64,
) -> Result<Claim, TokenError> {
    if token.len() > MAX_TOKEN {
        return Err(TokenError::Malformed);
    }
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| TokenError::Malformed)?;
    if raw.len() < FIXED + TAG || raw[0] != VERSION {
        return Err(TokenError::Malformed);
    }
    let (signed, tag) = raw.split_at(raw.len() - TAG);
    let rcpt_len = signed[FIXED - 1] as usize;
    if signed.len() < FIXED + rcpt_len {
        return Err(TokenError::Malformed);
    }
    let key = secrets
        .keys
        .iter()
        .find(|(id, _)| id[..] == signed[1..1 + KEY_ID])
        .map(|(_, key)| key)
        .ok_or(TokenError::UnknownKey)?;
    hmac::verify(key, signed, tag).map_err(|_| TokenError::Forged)?;
    let issued = u32::from_be_bytes(signed[5..9].try_into().expect("4 bytes")) as u64;
    if now > issued.saturating_add(lifetime_secs) {
        return Err(TokenError::Expired);
    }
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| TokenError::Malformed);
    let mut id = [0u8; 16];
    id.copy_from_slice(&signed[9..25]);
    Ok(Claim {
        message: MessageId::from_bytes(id),
        recipient: text(&signed[FIXED..FIXED + rcpt_len])?,
        sender_domain: text(&signed[FIXED + rcpt_len..])?,
        issued,
    })
}

/// Whether a POST's body is RFC 8058's `List-Unsubscribe=One-Click`,
/// form-encoded (Gmail's, and the confirmation page's) or as
/// `multipart/form-data` (which the RFC allows too).
pub fn is_one_click(content_type: Option<&str>, body: &[u8]) -> bool {
    let ct = content_type.unwrap_or("").to_ascii_lowercase();
    if let Some(boundary) = ct.strip_prefix("multipart/form-data").and_then(|rest| {
        rest.split(';')
            .find_map(|p| p.trim().strip_prefix("boundary="))
    }) {
        // The boundary as sent (it is case-sensitive): taken again from
        // the original header value.
        let original = content_type.unwrap_or("");
        let at = ct.find(boundary).unwrap_or(0);
        let boundary = original[at..at + boundary.len()].trim_matches('"');
        return multipart_one_click(body, boundary);
    }
    let Ok(text) = std::str::from_utf8(body) else {
        return false;
    };
    text.trim_end().split('&').any(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(&s.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        };
        decode(k) == "List-Unsubscribe" && decode(v) == "One-Click"
    })
}

/// A `multipart/form-data` body with a part named `List-Unsubscribe`
/// whose value is `One-Click`.
fn multipart_one_click(body: &[u8], boundary: &str) -> bool {
    let Ok(text) = std::str::from_utf8(body) else {
        return false;
    };
    let delimiter = format!("--{boundary}");
    text.split(delimiter.as_str()).any(|part| {
        let Some((head, value)) = part
            .split_once("\r\n\r\n")
            .or_else(|| part.split_once("\n\n"))
        else {
            return false;
        };
        let named = head.lines().any(|l| {
            let l = l.to_ascii_lowercase();
            l.starts_with("content-disposition:") && l.contains("name=\"list-unsubscribe\"")
        });
        named && value.trim_end_matches(['\r', '\n']) == "One-Click"
    })
}

/// Where links point and which mail gets them (`[unsubscribe]`).
pub struct Links {
    pub keyring: Keyring,
    /// `https://host[/prefix]`, without a trailing `/`.
    pub base_url: String,
    /// The mailto address, if any.
    pub mailto: Option<String>,
    /// Egress pools whose mail gets the fields (`*`: all).
    pub pools: Vec<String>,
}

impl Links {
    /// Whether a message of `pool` gets the fields: the injection's own
    /// choice (`asked`), else its pool's.
    pub fn wanted(&self, pool: &str, asked: Option<bool>) -> bool {
        asked.unwrap_or_else(|| self.pools.iter().any(|p| p == "*" || p == pool))
    }

    /// `List-Unsubscribe` (the HTTPS link, then the mailto one, folded)
    /// and `List-Unsubscribe-Post`, each ending in CRLF.
    pub fn fields(&self, claim: &Claim) -> String {
        let token = mint(&self.keyring.current(), claim);
        let mut out = format!("List-Unsubscribe: <{}/u/{token}>", self.base_url);
        if let Some(address) = &self.mailto {
            out += &format!(",\r\n <mailto:{address}?subject=unsubscribe%20{token}>");
        }
        out += "\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n";
        out
    }
}

/// The token in a mailto request's subject (its last word), if any.
pub fn token_of_subject(subject: &str) -> Option<&str> {
    subject.split_whitespace().last()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef-one";
    const OLD: &str = "0123456789abcdef0123456789abcdef-old";

    fn claim() -> Claim {
        Claim {
            message: MessageId::from_bytes([7; 16]),
            recipient: "Bob@example.net".into(),
            sender_domain: "shop.example".into(),
            issued: 1_800_000_000,
        }
    }

    #[test]
    fn a_minted_token_verifies_under_every_listed_secret_until_it_expires() {
        let secrets = Secrets::parse("f", &format!("{SECRET}\n")).unwrap();
        let token = mint(&secrets, &claim());
        assert!(token.len() < 200, "{}", token.len());
        assert!(
            token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        let day = 86_400;
        assert_eq!(
            verify(&secrets, &token, 1_800_000_000 + day, 90 * day),
            Ok(claim())
        );
        assert_eq!(
            verify(&secrets, &token, 1_800_000_000 + 91 * day, 90 * day),
            Err(TokenError::Expired)
        );
        // Rotated: a new secret first, the old one kept.
        let rotated = Secrets::parse("f", &format!("# new\n{OLD}\n\n{SECRET}\n")).unwrap();
        assert_eq!(rotated.len(), 2);
        assert_eq!(verify(&rotated, &token, 1_800_000_000, day), Ok(claim()));
        assert_ne!(mint(&rotated, &claim()), token, "minted under the new one");
        // Dropped: the link names no secret in force.
        let only_new = Secrets::parse("f", OLD).unwrap();
        assert_eq!(
            verify(&only_new, &token, 1_800_000_000, day),
            Err(TokenError::UnknownKey)
        );
    }

    #[test]
    fn altered_tokens_are_refused() {
        let secrets = Secrets::parse("f", SECRET).unwrap();
        let token = mint(&secrets, &claim());
        let mut raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&token)
            .unwrap();
        // Another recipient of the same length, the MAC left as it was.
        let at = FIXED;
        raw[at] = b'R';
        let altered = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&raw);
        assert_eq!(
            verify(&secrets, &altered, 1_800_000_000, 86_400),
            Err(TokenError::Forged)
        );
        // Cut short: what is left is no longer signed.
        assert_eq!(
            verify(&secrets, &token[..token.len() - 3], 1_800_000_000, 86_400),
            Err(TokenError::Forged)
        );
        for bad in ["", "x", "!!!!", &token[..40], &"A".repeat(2000)] {
            assert_eq!(
                verify(&secrets, bad, 1_800_000_000, 86_400),
                Err(TokenError::Malformed),
                "{bad}"
            );
        }
        assert!(Secrets::parse("f", "short").is_err());
        assert!(Secrets::parse("f", "# only a comment\n").is_err());
    }

    /// Rotation as an operator does it: the new secret on top, the old
    /// one below; a reload mints with the new one and still verifies the
    /// old links; a bad file keeps the secrets in force.
    #[test]
    fn a_reload_rotates_the_secret_and_keeps_old_links() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, format!("{SECRET}\n")).unwrap();
        let keyring = Keyring::load(path.to_str().unwrap()).unwrap();
        let old_link = mint(&keyring.current(), &claim());
        std::fs::write(&path, format!("{OLD}\n{SECRET}\n")).unwrap();
        assert_eq!(keyring.reload().unwrap(), 2);
        let secrets = keyring.current();
        assert_ne!(mint(&secrets, &claim()), old_link);
        assert_eq!(verify(&secrets, &old_link, 1_800_000_000, 60), Ok(claim()));
        std::fs::write(&path, "short\n").unwrap();
        assert!(keyring.reload().is_err());
        assert_eq!(keyring.current().len(), 2, "the secrets in force stay");
    }

    #[test]
    fn the_one_click_body_is_recognised_in_both_encodings() {
        assert!(is_one_click(None, b"List-Unsubscribe=One-Click"));
        assert!(is_one_click(
            Some("application/x-www-form-urlencoded"),
            b"List-Unsubscribe=One-Click\r\n"
        ));
        assert!(is_one_click(None, b"a=b&List-Unsubscribe=One%2DClick"));
        assert!(!is_one_click(None, b"List-Unsubscribe=Yes"));
        assert!(!is_one_click(None, b""));
        assert!(!is_one_click(None, b"\xff\xfe"));
        let multipart = b"--XyZ\r\nContent-Disposition: form-data; name=\"List-Unsubscribe\"\r\n\r\nOne-Click\r\n--XyZ--\r\n";
        assert!(is_one_click(
            Some("multipart/form-data; boundary=XyZ"),
            multipart
        ));
        assert!(!is_one_click(
            Some("multipart/form-data; boundary=Other"),
            multipart
        ));
    }

    #[test]
    fn the_fields_carry_the_link_and_the_mailto() {
        let links = Links {
            keyring: Keyring {
                path: String::new(),
                secrets: RwLock::new(Arc::new(Secrets::parse("f", SECRET).unwrap())),
            },
            base_url: "https://u.shop.example".into(),
            mailto: Some("unsub@bounce.shop.example".into()),
            pools: vec!["news".into()],
        };
        let fields = links.fields(&claim());
        let token = mint(&links.keyring.current(), &claim());
        assert_eq!(
            fields,
            format!(
                "List-Unsubscribe: <https://u.shop.example/u/{token}>,\r\n \
                 <mailto:unsub@bounce.shop.example?subject=unsubscribe%20{token}>\r\n\
                 List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
            )
        );
        assert!(links.wanted("news", None));
        assert!(!links.wanted("", None));
        assert!(links.wanted("", Some(true)));
        assert!(!links.wanted("news", Some(false)));
        assert_eq!(token_of_subject("Re: unsubscribe abc"), Some("abc"));
    }
}
