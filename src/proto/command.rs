//! Parses one SMTP command line (without its line ending) into a [`Command`].
//!
//! Owns: verb recognition, reverse-path and forward-path syntax (RFC 5321
//! 4.1.2, with RFC 6531 UTF-8 mailboxes), and the MAIL/RCPT parameters that
//! ringpost advertises (SIZE, BODY, SMTPUTF8).
//!
//! Must not: decide policy (relay, limits, sequence); the session does.
//!
//! Security: input is straight from the network. Control characters (NUL,
//! CR, LF) are never accepted inside an address or a parameter, so nothing
//! parsed here can carry a line break into a header or a log line.

use super::dsn_params::{MAX_ENVID, Notify, Ret, xtext_decode};
use super::reply::Rejection;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Helo(String),
    Ehlo(String),
    Mail {
        /// None is the null reverse-path `<>`.
        from: Option<Mailbox>,
        params: MailParams,
    },
    Rcpt {
        to: Mailbox,
        params: RcptParams,
    },
    Data,
    Bdat {
        size: u64,
        last: bool,
    },
    Rset,
    Noop,
    Quit,
    Vrfy,
    Help,
    StartTls,
    /// AUTH (RFC 4954): mechanism (upper-cased) and optional initial response.
    Auth {
        mechanism: String,
        initial: Option<String>,
    },
}

/// A mailbox `local@domain`. `Postmaster` without a domain (RFC 5321 4.5.1)
/// has an empty domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mailbox {
    pub local: String,
    pub domain: String,
}

impl Mailbox {
    /// Whether any part needs SMTPUTF8 (RFC 6531).
    pub fn is_utf8(&self) -> bool {
        !self.local.is_ascii() || !self.domain.is_ascii()
    }

    pub fn is_bare_postmaster(&self) -> bool {
        self.domain.is_empty()
    }
}

impl std::fmt::Display for Mailbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.domain.is_empty() {
            write!(f, "{}", self.local)
        } else {
            write!(f, "{}@{}", self.local, self.domain)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BodyType {
    #[default]
    SevenBit,
    EightBitMime,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MailParams {
    pub size: Option<u64>,
    pub body: BodyType,
    pub smtputf8: bool,
    /// DSN (RFC 3461): how much of the message a failure notice returns.
    pub ret: Option<Ret>,
    /// DSN: the sender's id for the transaction (xtext-decoded).
    pub envid: Option<String>,
    /// Future release (RFC 4865): `HOLDFOR=` or `HOLDUNTIL=`.
    pub hold: Option<HoldRequest>,
    /// Message transfer priority (RFC 6710): `MT-PRIORITY=` -9 to 9.
    pub mt_priority: Option<i8>,
}

/// A future release request (RFC 4865).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldRequest {
    /// `HOLDFOR=`: this many seconds from now.
    For(u64),
    /// `HOLDUNTIL=`: until this Unix second (an RFC 3339 time).
    Until(i64),
}

impl HoldRequest {
    /// The Unix second of release, given `now`; Err: how far ahead it is,
    /// when that is beyond `max_secs`.
    pub fn release_at(self, now: u64, max_secs: u64) -> Result<u64, u64> {
        let at = match self {
            HoldRequest::For(secs) => now.saturating_add(secs),
            HoldRequest::Until(t) => (t.max(0) as u64).max(now),
        };
        match at - now > max_secs {
            true => Err(at - now),
            false => Ok(at),
        }
    }
}

/// RCPT parameters: the DSN extension's (RFC 3461).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RcptParams {
    pub notify: Option<Notify>,
    /// `type;address`, xtext-decoded.
    pub orcpt: Option<String>,
}

/// Parses one command line. The line must not contain its CRLF.
pub fn parse(line: &[u8]) -> Result<Command, Rejection> {
    if line.iter().any(|&b| b == 0 || b == b'\r' || b == b'\n') {
        return Err(Rejection::Syntax("control character in command"));
    }
    let (verb, rest) = split_verb(line);
    let verb = verb.to_ascii_uppercase();
    match verb.as_slice() {
        b"HELO" => domain_arg(rest).map(Command::Helo),
        b"EHLO" => domain_arg(rest).map(Command::Ehlo),
        b"MAIL" => parse_mail(rest),
        b"RCPT" => parse_rcpt(rest),
        b"DATA" => no_args(rest, Command::Data, "DATA"),
        b"BDAT" => parse_bdat(rest),
        b"RSET" => no_args(rest, Command::Rset, "RSET"),
        b"NOOP" => Ok(Command::Noop),
        b"QUIT" => no_args(rest, Command::Quit, "QUIT"),
        b"VRFY" => Ok(Command::Vrfy),
        b"HELP" => Ok(Command::Help),
        b"STARTTLS" => no_args(rest, Command::StartTls, "STARTTLS"),
        b"AUTH" => parse_auth(rest),
        _ => Err(Rejection::UnknownCommand),
    }
}

fn split_verb(line: &[u8]) -> (&[u8], &[u8]) {
    match line.iter().position(|&b| b == b' ') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, &[]),
    }
}

fn no_args(rest: &[u8], cmd: Command, name: &'static str) -> Result<Command, Rejection> {
    if trim(rest).is_empty() {
        Ok(cmd)
    } else {
        Err(Rejection::Syntax(match name {
            "DATA" => "DATA takes no arguments",
            "RSET" => "RSET takes no arguments",
            "QUIT" => "QUIT takes no arguments",
            _ => "STARTTLS takes no arguments",
        }))
    }
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(start, |e| e + 1);
    &s[start..end]
}

/// The HELO/EHLO argument: a domain or an address literal. Kept permissive
/// (clients send all kinds of names) but printable and without spaces, since
/// it goes into the Received: header.
fn domain_arg(rest: &[u8]) -> Result<String, Rejection> {
    let arg = trim(rest);
    let ok = !arg.is_empty()
        && arg.len() <= 255
        && arg.iter().all(|&b| b > b' ' && b != 0x7f)
        && std::str::from_utf8(arg).is_ok();
    if ok {
        Ok(String::from_utf8_lossy(arg).into_owned())
    } else {
        Err(Rejection::Syntax("HELO/EHLO hostname"))
    }
}

/// Strips `FROM:`/`TO:` (case-insensitive, optional space after the colon).
fn after_keyword<'a>(rest: &'a [u8], kw: &[u8]) -> Option<&'a [u8]> {
    let rest = trim(rest);
    if rest.len() < kw.len() || !rest[..kw.len()].eq_ignore_ascii_case(kw) {
        return None;
    }
    Some(trim(&rest[kw.len()..]))
}

fn parse_mail(rest: &[u8]) -> Result<Command, Rejection> {
    let args = after_keyword(rest, b"FROM:").ok_or(Rejection::Syntax("MAIL FROM:<address>"))?;
    let (path, params) = split_path(args).ok_or(Rejection::BadSender)?;
    let from = if path.is_empty() {
        None
    } else {
        Some(parse_mailbox(path).ok_or(Rejection::BadSender)?)
    };
    let params = parse_mail_params(params)?;
    Ok(Command::Mail { from, params })
}

fn parse_rcpt(rest: &[u8]) -> Result<Command, Rejection> {
    let args = after_keyword(rest, b"TO:").ok_or(Rejection::Syntax("RCPT TO:<address>"))?;
    let (path, params) = split_path(args).ok_or(Rejection::BadRecipient)?;
    let params = parse_rcpt_params(params)?;
    if path.eq_ignore_ascii_case(b"postmaster") {
        return Ok(Command::Rcpt {
            to: Mailbox {
                local: "postmaster".into(),
                domain: String::new(),
            },
            params,
        });
    }
    let to = parse_mailbox(path).ok_or(Rejection::BadRecipient)?;
    Ok(Command::Rcpt { to, params })
}

fn parse_auth(rest: &[u8]) -> Result<Command, Rejection> {
    let mut w = words(rest);
    let mechanism = w
        .next()
        .filter(|m| {
            m.len() <= 20
                && m.iter()
                    .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
        })
        .map(|m| String::from_utf8_lossy(m).to_ascii_uppercase())
        .ok_or(Rejection::Syntax("AUTH mechanism [initial-response]"))?;
    let initial = w.next().map(|i| String::from_utf8_lossy(i).into_owned());
    if w.next().is_some() {
        return Err(Rejection::Syntax("AUTH mechanism [initial-response]"));
    }
    Ok(Command::Auth { mechanism, initial })
}

fn parse_bdat(rest: &[u8]) -> Result<Command, Rejection> {
    let mut w = words(rest);
    let size = w
        .next()
        .filter(|s| !s.is_empty() && s.len() <= 19 && s.iter().all(u8::is_ascii_digit))
        .and_then(|s| std::str::from_utf8(s).ok()?.parse::<u64>().ok())
        .ok_or(Rejection::Syntax("BDAT chunk-size [LAST]"))?;
    let last = match w.next() {
        None => false,
        Some(l) if l.eq_ignore_ascii_case(b"LAST") => true,
        Some(_) => return Err(Rejection::Syntax("BDAT chunk-size [LAST]")),
    };
    if w.next().is_some() {
        return Err(Rejection::Syntax("BDAT chunk-size [LAST]"));
    }
    Ok(Command::Bdat { size, last })
}

fn words(s: &[u8]) -> impl Iterator<Item = &[u8]> {
    s.split(|&b| b == b' ').filter(|w| !w.is_empty())
}

fn lossy_word(w: &[u8]) -> String {
    String::from_utf8_lossy(&w[..w.len().min(64)]).into_owned()
}

/// Splits `<path> params` (or a bare `path params`, which Postfix accepts
/// too) into the path's inside and the rest. The path's inside has any
/// source route (`@a,@b:`) removed, as RFC 5321 4.1.2 allows.
fn split_path(args: &[u8]) -> Option<(&[u8], &[u8])> {
    let (inside, rest) = if args.first() == Some(&b'<') {
        let close = closing_bracket(args)?;
        (&args[1..close], &args[close + 1..])
    } else {
        let end = args.iter().position(|&b| b == b' ').unwrap_or(args.len());
        (&args[..end], &args[end..])
    };
    if !rest.is_empty() && rest[0] != b' ' {
        return None;
    }
    Some((strip_source_route(inside)?, rest))
}

/// Index of the `>` that closes the path, skipping quoted strings.
fn closing_bracket(args: &[u8]) -> Option<usize> {
    let mut in_quote = false;
    let mut escaped = false;
    for (i, &b) in args.iter().enumerate().skip(1) {
        match (in_quote, escaped, b) {
            (true, true, _) => escaped = false,
            (true, false, b'\\') => escaped = true,
            (_, false, b'"') => in_quote = !in_quote,
            (false, _, b'>') => return Some(i),
            _ => {}
        }
    }
    None
}

fn strip_source_route(path: &[u8]) -> Option<&[u8]> {
    if path.first() != Some(&b'@') {
        return Some(path);
    }
    let colon = path.iter().position(|&b| b == b':')?;
    Some(&path[colon + 1..])
}

/// Parses `local@domain` per RFC 5321 (Dot-string or Quoted-string local
/// part; a domain name or an address literal), with UTF-8 allowed in both
/// (RFC 6531); the session decides whether UTF-8 was permitted.
pub fn parse_mailbox(s: &[u8]) -> Option<Mailbox> {
    let s = std::str::from_utf8(s).ok()?;
    let at = local_part_end(s)?;
    let (local, domain) = (&s[..at], &s[at + 1..]);
    if !valid_local(local) || !valid_domain(domain) {
        return None;
    }
    Some(Mailbox {
        local: local.to_string(),
        domain: domain.to_string(),
    })
}

/// Position of the `@` that ends the local part (outside any quotes).
fn local_part_end(s: &str) -> Option<usize> {
    if s.starts_with('"') {
        let b = s.as_bytes();
        let mut i = 1;
        while i < b.len() {
            match b[i] {
                b'\\' => i += 2,
                b'"' => return (b.get(i + 1) == Some(&b'@')).then_some(i + 1),
                _ => i += 1,
            }
        }
        None
    } else {
        s.rfind('@')
    }
}

fn valid_local(local: &str) -> bool {
    if local.is_empty() || local.len() > 256 {
        return false;
    }
    if local.starts_with('"') {
        return valid_quoted(local);
    }
    local
        .split('.')
        .all(|atom| !atom.is_empty() && atom.chars().all(is_atext))
}

fn valid_quoted(q: &str) -> bool {
    if q.len() < 2 || !q.ends_with('"') {
        return false;
    }
    let inner = &q.as_bytes()[1..q.len() - 1];
    let mut i = 0;
    while i < inner.len() {
        match inner[i] {
            b'\\' => {
                let Some(&next) = inner.get(i + 1) else {
                    return false;
                };
                if !(b' '..=b'~').contains(&next) {
                    return false;
                }
                i += 2;
            }
            b'"' => return false,
            b if b < b' ' || b == 0x7f => return false,
            _ => i += 1,
        }
    }
    true
}

fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii()
}

fn valid_domain(d: &str) -> bool {
    if d.is_empty() || d.len() > 255 {
        return false;
    }
    if let Some(lit) = d.strip_prefix('[') {
        return valid_address_literal(lit);
    }
    d.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || !c.is_ascii())
    })
}

fn valid_address_literal(lit: &str) -> bool {
    let Some(inner) = lit.strip_suffix(']') else {
        return false;
    };
    match inner.get(..5) {
        Some(p) if p.eq_ignore_ascii_case("IPv6:") => {
            inner[5..].parse::<std::net::Ipv6Addr>().is_ok()
        }
        _ => inner.parse::<std::net::Ipv4Addr>().is_ok(),
    }
}

/// A parameter `KEY=value` (or a bare `KEY`): the key upper-cased, and
/// the value.
fn key_value(word: &[u8]) -> (Vec<u8>, Option<&[u8]>) {
    match word.iter().position(|&b| b == b'=') {
        Some(i) => (word[..i].to_ascii_uppercase(), Some(&word[i + 1..])),
        None => (word.to_ascii_uppercase(), None),
    }
}

fn parse_mail_params(params: &[u8]) -> Result<MailParams, Rejection> {
    let mut out = MailParams::default();
    for word in words(params) {
        let (key, value) = key_value(word);
        match (key.as_slice(), value) {
            (b"SIZE", Some(v)) => {
                let n = std::str::from_utf8(v)
                    .ok()
                    .filter(|s| {
                        !s.is_empty() && s.len() <= 19 && s.bytes().all(|b| b.is_ascii_digit())
                    })
                    .and_then(|s| s.parse::<u64>().ok())
                    .ok_or(Rejection::Syntax("SIZE=<number>"))?;
                out.size = Some(n);
            }
            (b"BODY", Some(v)) if v.eq_ignore_ascii_case(b"7BIT") => out.body = BodyType::SevenBit,
            (b"BODY", Some(v)) if v.eq_ignore_ascii_case(b"8BITMIME") => {
                out.body = BodyType::EightBitMime
            }
            (b"SMTPUTF8", None) => out.smtputf8 = true,
            (b"RET", Some(v)) if out.ret.is_none() => {
                let v = std::str::from_utf8(v).ok().and_then(Ret::parse);
                out.ret = Some(v.ok_or(Rejection::Syntax("RET=FULL or RET=HDRS"))?);
            }
            (b"ENVID", Some(v)) if out.envid.is_none() => {
                let v = xtext_decode(v).filter(|v| !v.is_empty() && v.len() <= MAX_ENVID);
                out.envid = Some(v.ok_or(Rejection::Syntax("ENVID=<xtext, at most 100>"))?);
            }
            (b"MT-PRIORITY", Some(v)) if out.mt_priority.is_none() => {
                let n = std::str::from_utf8(v)
                    .ok()
                    .and_then(|s| s.parse::<i8>().ok())
                    .filter(|n| (-9..=9).contains(n))
                    .ok_or(Rejection::Syntax("MT-PRIORITY=<-9 to 9>"))?;
                out.mt_priority = Some(n);
            }
            (b"HOLDFOR", Some(v)) if out.hold.is_none() => {
                let secs = std::str::from_utf8(v)
                    .ok()
                    .filter(|s| {
                        !s.is_empty() && s.len() <= 10 && s.bytes().all(|b| b.is_ascii_digit())
                    })
                    .and_then(|s| s.parse().ok())
                    .ok_or(Rejection::Syntax("HOLDFOR=<seconds>"))?;
                out.hold = Some(HoldRequest::For(secs));
            }
            (b"HOLDUNTIL", Some(v)) if out.hold.is_none() => {
                let t = std::str::from_utf8(v)
                    .ok()
                    .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
                    .ok_or(Rejection::Syntax("HOLDUNTIL=<RFC 3339 date-time>"))?;
                out.hold = Some(HoldRequest::Until(t.timestamp()));
            }
            _ => return Err(Rejection::UnsupportedParameter(lossy_word(word))),
        }
    }
    Ok(out)
}

fn parse_rcpt_params(params: &[u8]) -> Result<RcptParams, Rejection> {
    let mut out = RcptParams::default();
    for word in words(params) {
        let (key, value) = key_value(word);
        match (key.as_slice(), value) {
            (b"NOTIFY", Some(v)) if out.notify.is_none() => {
                let v = std::str::from_utf8(v).ok().and_then(Notify::parse);
                out.notify = Some(v.ok_or(Rejection::Syntax(
                    "NOTIFY=NEVER or NOTIFY=SUCCESS,FAILURE,DELAY",
                ))?);
            }
            (b"ORCPT", Some(v)) if out.orcpt.is_none() => {
                let v = super::dsn_params::parse_orcpt(v);
                out.orcpt = Some(v.ok_or(Rejection::Syntax("ORCPT=rfc822;<xtext address>"))?);
            }
            _ => return Err(Rejection::UnsupportedParameter(lossy_word(word))),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mb(local: &str, domain: &str) -> Mailbox {
        Mailbox {
            local: local.into(),
            domain: domain.into(),
        }
    }

    #[test]
    fn verbs_are_case_insensitive() {
        assert_eq!(parse(b"noop"), Ok(Command::Noop));
        assert_eq!(parse(b"QuIt"), Ok(Command::Quit));
        assert_eq!(
            parse(b"EHLO client.example"),
            Ok(Command::Ehlo("client.example".into()))
        );
        assert_eq!(parse(b"FOO"), Err(Rejection::UnknownCommand));
    }

    #[test]
    fn mail_from_forms() {
        let ok = |line: &[u8], from: Option<Mailbox>| {
            assert_eq!(
                parse(line),
                Ok(Command::Mail {
                    from,
                    params: MailParams::default()
                })
            )
        };
        ok(b"MAIL FROM:<a@b.example>", Some(mb("a", "b.example")));
        ok(b"mail from: <a@b.example>", Some(mb("a", "b.example")));
        ok(b"MAIL FROM:<>", None);
        ok(b"MAIL FROM:a@b.example", Some(mb("a", "b.example")));
        ok(
            b"MAIL FROM:<@relay.example:a@b.example>",
            Some(mb("a", "b.example")),
        );
        ok(
            b"MAIL FROM:<\"a b\"@b.example>",
            Some(mb("\"a b\"", "b.example")),
        );
        ok(b"MAIL FROM:<a@[192.0.2.1]>", Some(mb("a", "[192.0.2.1]")));
    }

    #[test]
    fn mail_params() {
        let Ok(Command::Mail { params, .. }) =
            parse(b"MAIL FROM:<a@b.example> SIZE=1000 BODY=8BITMIME SMTPUTF8")
        else {
            panic!("should parse")
        };
        assert_eq!(params.size, Some(1000));
        assert_eq!(params.body, BodyType::EightBitMime);
        assert!(params.smtputf8);
        assert!(matches!(
            parse(b"MAIL FROM:<a@b.example> BODY=BINARYMIME"),
            Err(Rejection::UnsupportedParameter(_))
        ));
        assert_eq!(
            parse(b"MAIL FROM:<a@b.example> SIZE=x"),
            Err(Rejection::Syntax("SIZE=<number>"))
        );
    }

    #[test]
    fn future_release_and_priority_params() {
        let params = |line: &[u8]| match parse(line) {
            Ok(Command::Mail { params, .. }) => Ok(params),
            Ok(_) => panic!("not MAIL"),
            Err(e) => Err(e),
        };
        let p = params(b"MAIL FROM:<a@b.example> HOLDFOR=600 MT-PRIORITY=-3").unwrap();
        assert_eq!(p.hold, Some(HoldRequest::For(600)));
        assert_eq!(p.mt_priority, Some(-3));
        let p = params(b"MAIL FROM:<a@b.example> HOLDUNTIL=2027-01-01T09:00:00+01:00").unwrap();
        assert_eq!(p.hold, Some(HoldRequest::Until(1_798_761_600 + 8 * 3600)));
        assert_eq!(HoldRequest::For(600).release_at(1_000, 3_600), Ok(1_600));
        assert_eq!(HoldRequest::For(7_200).release_at(1_000, 3_600), Err(7_200));
        assert_eq!(
            HoldRequest::Until(10).release_at(1_000, 3_600),
            Ok(1_000),
            "a time past: now"
        );
        for bad in [
            &b"MAIL FROM:<a@b.example> HOLDFOR=-1"[..],
            b"MAIL FROM:<a@b.example> HOLDUNTIL=tomorrow",
            b"MAIL FROM:<a@b.example> MT-PRIORITY=10",
        ] {
            assert!(matches!(params(bad), Err(Rejection::Syntax(_))), "{bad:?}");
        }
        assert!(
            params(b"MAIL FROM:<a@b.example> HOLDFOR=1 HOLDUNTIL=2027-01-01T00:00:00Z").is_err(),
            "one hold at most"
        );
    }

    #[test]
    fn bad_addresses() {
        for bad in [
            &b"MAIL FROM:<a@>"[..],
            b"MAIL FROM:<@b.example>",
            b"MAIL FROM:<a@b..example>",
            b"MAIL FROM:<a@b.example.>",
            b"MAIL FROM:<a..b@b.example>",
            b"MAIL FROM:<a@b.example",
            b"MAIL FROM:<a@[300.1.1.1]>",
            b"MAIL FROM:<a(b)@b.example>",
        ] {
            assert_eq!(
                parse(bad),
                Err(Rejection::BadSender),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            parse(b"MAIL TO:<a@b>"),
            Err(Rejection::Syntax("MAIL FROM:<address>"))
        );
        assert_eq!(parse(b"RCPT TO:<nobody>"), Err(Rejection::BadRecipient));
    }

    #[test]
    fn rcpt_forms() {
        assert_eq!(
            parse(b"RCPT TO:<x@y.example>"),
            Ok(Command::Rcpt {
                to: mb("x", "y.example"),
                params: RcptParams::default(),
            })
        );
        assert_eq!(
            parse(b"RCPT TO:<Postmaster>"),
            Ok(Command::Rcpt {
                to: mb("postmaster", ""),
                params: RcptParams::default(),
            })
        );
        let Ok(Command::Rcpt { params, .. }) =
            parse(b"RCPT TO:<x@y.example> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;x+2By@y.example")
        else {
            panic!("DSN parameters");
        };
        assert_eq!(params.notify, Notify::parse("SUCCESS,DELAY"));
        assert_eq!(params.orcpt.as_deref(), Some("rfc822;x+y@y.example"));
        assert!(matches!(
            parse(b"RCPT TO:<x@y.example> NOTIFY=NEVER,SUCCESS"),
            Err(Rejection::Syntax(_))
        ));
        assert!(matches!(
            parse(b"RCPT TO:<x@y.example> NOTIFY=NEVER NOTIFY=NEVER"),
            Err(Rejection::UnsupportedParameter(_))
        ));
        assert!(matches!(
            parse(b"RCPT TO:<x@y.example> FOO=BAR"),
            Err(Rejection::UnsupportedParameter(_))
        ));
        let Ok(Command::Rcpt { to, .. }) = parse("RCPT TO:<jörg@bücher.example>".as_bytes())
        else {
            panic!()
        };
        assert!(to.is_utf8());
    }

    #[test]
    fn bdat_forms() {
        assert_eq!(
            parse(b"BDAT 100"),
            Ok(Command::Bdat {
                size: 100,
                last: false
            })
        );
        assert_eq!(
            parse(b"BDAT 0 LAST"),
            Ok(Command::Bdat {
                size: 0,
                last: true
            })
        );
        assert!(parse(b"BDAT").is_err());
        assert!(parse(b"BDAT -1").is_err());
        assert!(parse(b"BDAT 99999999999999999999999").is_err());
        assert!(parse(b"BDAT 10 LAST x").is_err());
    }

    #[test]
    fn auth_forms() {
        assert_eq!(
            parse(b"AUTH plain AGFsaWNlAHNlY3JldA=="),
            Ok(Command::Auth {
                mechanism: "PLAIN".into(),
                initial: Some("AGFsaWNlAHNlY3JldA==".into())
            })
        );
        assert_eq!(
            parse(b"AUTH LOGIN"),
            Ok(Command::Auth {
                mechanism: "LOGIN".into(),
                initial: None
            })
        );
        assert!(parse(b"AUTH").is_err());
        assert!(parse(b"AUTH PLAIN a b").is_err());
    }

    #[test]
    fn control_characters_are_refused() {
        assert!(parse(b"MAIL FROM:<a\0@b.example>").is_err());
        assert!(parse(b"RCPT TO:<a@b.example>\rDATA").is_err());
    }
}
