//! Replies from the servers we deliver to.
//!
//! Owns: [`ServerReply`] and [`parse_reply`] (one possibly multi-line reply
//! from a buffer).
//!
//! Must not: do I/O.
//!
//! Security: replies come from remote servers we do not control. A reply is
//! bounded ([`MAX_REPLY`] octets); anything malformed is an error, never a
//! panic.

/// Longest reply accepted (all lines together).
pub const MAX_REPLY: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerReply {
    pub code: u16,
    /// Text of every line, without code and separator.
    pub lines: Vec<String>,
}

impl ServerReply {
    /// The reply as one line, for logs and DSNs: "550 5.1.1 no such user".
    pub fn one_line(&self) -> String {
        format!("{} {}", self.code, self.lines.join(" "))
    }

    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }

    /// The name a greeting (220) or an EHLO reply (250) starts with: the
    /// server's own idea of its host name (RFC 5321 4.2, 4.1.1.1).
    pub fn host_name(&self) -> Option<&str> {
        self.lines.first()?.split_ascii_whitespace().next()
    }

    /// The enhanced status code at the start of the text, if any.
    pub fn enhanced(&self) -> Option<&str> {
        let first = self.lines.first()?.split(' ').next()?;
        let mut parts = first.split('.');
        let ok = matches!(parts.next(), Some("2" | "4" | "5"))
            && parts.next().is_some_and(|p| {
                !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit())
            })
            && parts.next().is_some_and(|p| {
                !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit())
            })
            && parts.next().is_none();
        ok.then_some(first)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("malformed reply line")]
    Malformed,
    #[error("reply longer than {MAX_REPLY} octets")]
    TooLong,
}

/// Parses one reply from the front of `buf`. Ok(None): incomplete, read
/// more. Ok(Some((reply, consumed))) otherwise.
pub fn parse_reply(buf: &[u8]) -> Result<Option<(ServerReply, usize)>, ReplyError> {
    let mut pos = 0;
    let mut lines = Vec::new();
    let mut code = None;
    loop {
        let Some(lf) = buf[pos..].iter().position(|&b| b == b'\n') else {
            return if buf.len() > MAX_REPLY {
                Err(ReplyError::TooLong)
            } else {
                Ok(None)
            };
        };
        let end = pos + lf + 1;
        if end > MAX_REPLY {
            return Err(ReplyError::TooLong);
        }
        let mut line = &buf[pos..pos + lf];
        if line.last() == Some(&b'\r') {
            line = &line[..line.len() - 1];
        }
        if line.len() < 3 || !line[..3].iter().all(u8::is_ascii_digit) {
            return Err(ReplyError::Malformed);
        }
        let this_code =
            (line[0] - b'0') as u16 * 100 + (line[1] - b'0') as u16 * 10 + (line[2] - b'0') as u16;
        if !(200..600).contains(&this_code) || code.is_some_and(|c| c != this_code) {
            return Err(ReplyError::Malformed);
        }
        code = Some(this_code);
        let more = match line.get(3) {
            None | Some(b' ') => false,
            Some(b'-') => true,
            Some(_) => return Err(ReplyError::Malformed),
        };
        let text = line.get(4..).unwrap_or(&[]);
        lines.push(String::from_utf8_lossy(text).into_owned());
        pos = end;
        if !more {
            return Ok(Some((
                ServerReply {
                    code: this_code,
                    lines,
                },
                pos,
            )));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_and_multi_line_replies() {
        let (r, n) = parse_reply(b"250 2.0.0 Ok\r\nextra").unwrap().unwrap();
        assert_eq!(
            (r.code, r.lines.as_slice(), n),
            (250, &["2.0.0 Ok".to_string()][..], 14)
        );
        assert_eq!(r.enhanced(), Some("2.0.0"));
        let (r, _) = parse_reply(b"250-mx.example\r\n250-PIPELINING\r\n250 SIZE 100\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(r.lines, ["mx.example", "PIPELINING", "SIZE 100"]);
        assert_eq!(r.enhanced(), None);
        assert_eq!(parse_reply(b"250-a\r\n250"), Ok(None));
        assert_eq!(parse_reply(b"250 ok\n").unwrap().unwrap().0.code, 250);
    }

    #[test]
    fn malformed_replies_are_errors() {
        for bad in [
            &b"hello\r\n"[..],
            b"25\r\n",
            b"250-a\r\n550 b\r\n",
            b"250xok\r\n",
            b"999 x\r\n",
        ] {
            assert_eq!(parse_reply(bad), Err(ReplyError::Malformed), "{bad:?}");
        }
        assert_eq!(
            parse_reply(&vec![b'2'; MAX_REPLY + 1]),
            Err(ReplyError::TooLong)
        );
    }
}
