//! The SMTP DSN extension's parameters (RFC 3461): `RET` and `ENVID` on
//! MAIL, `NOTIFY` and `ORCPT` on RCPT, and the xtext encoding they use.
//!
//! Owns: [`Notify`], [`Ret`], [`xtext_decode`] and [`xtext_encode`], and the
//! parsers of each parameter's value. Pure functions over bytes.
//!
//! Must not: decide which notices to send (the scheduler does).

use serde::{Deserialize, Serialize};

/// Longest ENVID (RFC 3461 4.4: 100 characters) and ORCPT address (RFC
/// 3461 4.2: 500 characters) accepted, after xtext decoding.
pub const MAX_ENVID: usize = 100;
pub const MAX_ORCPT: usize = 500;

/// What a sender asked to be told of about one recipient: `NEVER`, or
/// any of `SUCCESS`, `FAILURE`, `DELAY`. Stored as its SMTP text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Notify(u8);

impl Notify {
    const SUCCESS: u8 = 1;
    const FAILURE: u8 = 2;
    const DELAY: u8 = 4;

    pub const NEVER: Notify = Notify(0);

    pub fn success(self) -> bool {
        self.0 & Self::SUCCESS != 0
    }
    pub fn failure(self) -> bool {
        self.0 & Self::FAILURE != 0
    }
    pub fn delay(self) -> bool {
        self.0 & Self::DELAY != 0
    }

    /// A NOTIFY value: `NEVER`, or a comma-separated list of `SUCCESS`,
    /// `FAILURE`, `DELAY` (any case, each at most once).
    pub fn parse(v: &str) -> Option<Notify> {
        if v.eq_ignore_ascii_case("NEVER") {
            return Some(Notify::NEVER);
        }
        let mut bits = 0u8;
        for word in v.split(',') {
            let bit = match word.to_ascii_uppercase().as_str() {
                "SUCCESS" => Self::SUCCESS,
                "FAILURE" => Self::FAILURE,
                "DELAY" => Self::DELAY,
                _ => return None,
            };
            if bits & bit != 0 {
                return None;
            }
            bits |= bit;
        }
        Some(Notify(bits))
    }

    /// The SMTP text: `NEVER` or e.g. `SUCCESS,FAILURE`.
    pub fn as_text(self) -> String {
        if self.0 == 0 {
            return "NEVER".into();
        }
        let words = [
            (Self::SUCCESS, "SUCCESS"),
            (Self::FAILURE, "FAILURE"),
            (Self::DELAY, "DELAY"),
        ];
        words
            .iter()
            .filter(|(b, _)| self.0 & b != 0)
            .map(|(_, w)| *w)
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl Serialize for Notify {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.as_text())
    }
}

impl<'de> Deserialize<'de> for Notify {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Notify, D::Error> {
        let text = String::deserialize(d)?;
        Notify::parse(&text).ok_or_else(|| serde::de::Error::custom(format!("NOTIFY {text:?}")))
    }
}

/// How much of the message a failure notice returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Ret {
    Full,
    Hdrs,
}

impl Ret {
    pub fn parse(v: &str) -> Option<Ret> {
        match v.to_ascii_uppercase().as_str() {
            "FULL" => Some(Ret::Full),
            "HDRS" => Some(Ret::Hdrs),
            _ => None,
        }
    }

    pub fn as_text(self) -> &'static str {
        match self {
            Ret::Full => "FULL",
            Ret::Hdrs => "HDRS",
        }
    }
}

/// Decodes xtext (RFC 3461 4): printable ASCII but `+` and `=`, with
/// `+XX` (upper-case hex) for any other byte. None if malformed or if it
/// decodes to anything but printable ASCII and spaces.
pub fn xtext_decode(v: &[u8]) -> Option<String> {
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        match v[i] {
            b'+' => {
                let hex = v.get(i + 1..i + 3)?;
                if !hex
                    .iter()
                    .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(b))
                {
                    return None;
                }
                let s = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(s, 16).ok()?);
                i += 3;
            }
            b'!'..=b'~' if v[i] != b'=' => {
                out.push(v[i]);
                i += 1;
            }
            _ => return None,
        }
    }
    if !out.iter().all(|b| (b' '..=b'~').contains(b)) {
        return None;
    }
    String::from_utf8(out).ok()
}

/// Encodes printable ASCII as xtext; other characters as `+XX` per byte.
pub fn xtext_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'!'..=b'~' if b != b'+' && b != b'=' => out.push(b as char),
            _ => out.push_str(&format!("+{b:02X}")),
        }
    }
    out
}

/// An ORCPT value `addr-type;xtext` (e.g. `rfc822;bob+2Bx@b.example`):
/// the address type and the decoded address.
pub fn parse_orcpt(v: &[u8]) -> Option<String> {
    let semi = v.iter().position(|&b| b == b';')?;
    let addr = xtext_decode(&v[semi + 1..])?;
    orcpt_text(std::str::from_utf8(&v[..semi]).ok()?, &addr)
}

/// An original recipient given as plain text, `type;address` (the HTTP
/// injection's `orcpt`).
pub fn parse_orcpt_text(v: &str) -> Option<String> {
    let (kind, addr) = v.split_once(';')?;
    orcpt_text(kind, addr)
}

fn orcpt_text(kind: &str, addr: &str) -> Option<String> {
    let kind_ok = !kind.is_empty() && kind.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    let addr_ok = !addr.is_empty()
        && addr.len() <= MAX_ORCPT
        && addr.bytes().all(|b| (b' '..=b'~').contains(&b));
    (kind_ok && addr_ok).then(|| format!("{kind};{addr}"))
}

/// The ORCPT value to pass on for a stored `type;address`.
pub fn orcpt_param(stored: &str) -> String {
    match stored.split_once(';') {
        Some((kind, addr)) => format!("{kind};{}", xtext_encode(addr)),
        None => format!("rfc822;{}", xtext_encode(stored)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_values() {
        assert_eq!(Notify::parse("NEVER"), Some(Notify::NEVER));
        let n = Notify::parse("success,Delay").unwrap();
        assert!(n.success() && n.delay() && !n.failure());
        assert_eq!(n.as_text(), "SUCCESS,DELAY");
        assert_eq!(Notify::parse("NEVER,SUCCESS"), None);
        assert_eq!(Notify::parse("SUCCESS,SUCCESS"), None);
        assert_eq!(Notify::parse(""), None);
        assert_eq!(Notify::parse("SOMETIMES"), None);
        let json = serde_json::to_string(&n).unwrap();
        assert_eq!(serde_json::from_str::<Notify>(&json).unwrap(), n);
    }

    #[test]
    fn xtext_round_trips_and_refuses_what_is_malformed() {
        assert_eq!(xtext_decode(b"a+2Bb+3Dc").as_deref(), Some("a+b=c"));
        assert_eq!(xtext_encode("a+b=c d"), "a+2Bb+3Dc+20d");
        assert_eq!(
            xtext_decode(xtext_encode("q=1 +x").as_bytes()).as_deref(),
            Some("q=1 +x")
        );
        assert_eq!(xtext_decode(b"a+2b"), None, "lower-case hex");
        assert_eq!(xtext_decode(b"a+2"), None);
        assert_eq!(xtext_decode(b"a=b"), None);
        assert_eq!(xtext_decode(b"a+0Ab"), None, "a control character");
    }

    #[test]
    fn orcpt_values() {
        assert_eq!(
            parse_orcpt(b"rfc822;bob+2Bx@b.example").as_deref(),
            Some("rfc822;bob+x@b.example")
        );
        assert_eq!(parse_orcpt(b"bob@b.example"), None);
        assert_eq!(parse_orcpt(b";bob@b.example"), None);
        assert_eq!(
            parse_orcpt_text("rfc822;bob@b.example").as_deref(),
            Some("rfc822;bob@b.example")
        );
        assert_eq!(parse_orcpt_text("rfc822;bob\n@b.example"), None);
        assert_eq!(
            orcpt_param("rfc822;bob+x@b.example"),
            "rfc822;bob+2Bx@b.example"
        );
    }

    #[test]
    fn ret_values() {
        assert_eq!(Ret::parse("hdrs"), Some(Ret::Hdrs));
        assert_eq!(Ret::parse("FULL"), Some(Ret::Full));
        assert_eq!(Ret::parse("SOME"), None);
    }
}
