//! The SMTP DSN extension's parameters (RFC 3461): `RET` and `ENVID` on
//! MAIL, `NOTIFY` and `ORCPT` on RCPT, and the xtext encoding they use.
//!
//! Owns: [`xtext_decode`] and [`xtext_encode`], and the parsers of each
//! parameter's value (NOTIFY's and RET's values are `dsn`'s [`Notify`]
//! and [`Ret`], which the queue stores). Pure functions over bytes.
//!
//! Must not: decide which notices to send (the scheduler does).

pub use crate::dsn::{Notify, Ret};

/// Longest ENVID (RFC 3461 4.4: 100 characters) and ORCPT address (RFC
/// 3461 4.2: 500 characters) accepted, after xtext decoding.
pub const MAX_ENVID: usize = 100;
pub const MAX_ORCPT: usize = 500;

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
}
