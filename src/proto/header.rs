//! Taking header fields out of a message's header section.
//!
//! Owns: [`take_fields`] (and [`take_field`] for one name; [`field_value`]
//! reads one without taking it), and
//! [`survey`] (the hop count of a loop check, and whether `Date:` and
//! `Message-ID:` are there, once and well formed), pure functions
//! over the message bytes: they remove every occurrence of the named
//! fields (with their folded lines) from the header section, in one pass,
//! and return each name's first value, unfolded. Used by the reception
//! door for `meta.header` and `egress.pool_header`, which must never reach
//! a recipient. Must not: look past the header section (the first empty
//! line), or change anything else in the message.

/// Removes every `name:` field (case-insensitive, folded lines included)
/// from the header section of `message[start..]`; the first one's value,
/// unfolded and trimmed, if there was one.
pub fn take_field(message: &mut Vec<u8>, start: usize, name: &str) -> Option<String> {
    let [value] = take_fields(message, start, [name]);
    value
}

/// The first `name:` field's value in the header section, unfolded and
/// trimmed; the message is left as it is.
pub fn field_value(message: &[u8], name: &str) -> Option<String> {
    let end = memchr::memmem::find(message, b"\r\n\r\n").map_or(message.len(), |i| i + 4);
    take_field(&mut message[..end].to_vec(), 0, name)
}

/// [`take_field`] for several names in one pass over the header section:
/// each name's first value, in the order of `names`. Empty names match
/// nothing.
pub fn take_fields<const N: usize>(
    message: &mut Vec<u8>,
    start: usize,
    names: [&str; N],
) -> [Option<String>; N] {
    let mut first = [const { None }; N];
    let mut at = start.min(message.len());
    loop {
        let line_end = line_end_of(message, at);
        let line = &message[at..line_end];
        if line.is_empty() || line == b"\r\n" || line == b"\n" {
            return first;
        }
        let Some(i) = names.iter().position(|name| {
            !name.is_empty()
                && line.len() > name.len()
                && line[..name.len()].eq_ignore_ascii_case(name.as_bytes())
                && line[name.len()] == b':'
        }) else {
            at = line_end;
            continue;
        };
        // The field and its continuation lines (starting with WSP).
        let mut end = line_end;
        while matches!(message.get(end), Some(b' ' | b'\t')) {
            end = line_end_of(message, end);
        }
        if first[i].is_none() {
            let raw = String::from_utf8_lossy(&message[at + names[i].len() + 1..end]);
            let value: Vec<&str> = raw
                .split(['\r', '\n'])
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            first[i] = Some(value.join(" ").trim().to_string());
        }
        message.drain(at..end);
    }
}

/// What the reception door needs to know of a header section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Survey {
    /// `Received:` fields: the hops the message has made.
    pub received: usize,
    pub date: FieldState,
    pub message_id: FieldState,
    /// The `Message-ID:` without its angle brackets, when there is
    /// exactly one and it is valid.
    pub message_id_value: Option<String>,
    /// Whether the message has a `List-Unsubscribe` field of its own.
    pub list_unsubscribe: bool,
}

/// One header field that a message should have exactly once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldState {
    Missing,
    Valid,
    /// Once, but its value does not parse (RFC 5322 3.3 date-time, 3.6.4
    /// msg-id).
    Malformed,
    Several,
}

impl FieldState {
    fn seen(self, valid: bool) -> FieldState {
        match (self, valid) {
            (FieldState::Missing, true) => FieldState::Valid,
            (FieldState::Missing, false) => FieldState::Malformed,
            _ => FieldState::Several,
        }
    }
}

/// One pass over the header section of `message`: the `Received:` count
/// and the state of `Date:` and `Message-ID:`.
pub fn survey(message: &[u8]) -> Survey {
    let mut s = Survey {
        received: 0,
        date: FieldState::Missing,
        message_id: FieldState::Missing,
        message_id_value: None,
        list_unsubscribe: false,
    };
    let named = |line: &[u8], name: &str| {
        line.len() > name.len()
            && line[name.len()] == b':'
            && line[..name.len()].eq_ignore_ascii_case(name.as_bytes())
    };
    let mut at = 0;
    while at < message.len() {
        let line_end = line_end_of(message, at);
        let line = &message[at..line_end];
        if line == b"\r\n" || line == b"\n" {
            break;
        }
        if named(line, "Received") {
            s.received += 1;
        } else if named(line, "List-Unsubscribe") {
            s.list_unsubscribe = true;
        } else if named(line, "Date") {
            let v = unfolded(message, at + 5);
            s.date = s
                .date
                .seen(chrono::DateTime::parse_from_rfc2822(v.trim()).is_ok());
        } else if named(line, "Message-ID") {
            let v = unfolded(message, at + 11);
            let valid = is_msg_id(v.trim());
            s.message_id = s.message_id.seen(valid);
            s.message_id_value = match s.message_id {
                FieldState::Valid => Some(v.trim()[1..v.trim().len() - 1].to_string()),
                _ => None,
            };
        }
        at = line_end;
    }
    s
}

/// The value of the field whose value starts at `from`, continuation
/// lines joined.
fn unfolded(message: &[u8], from: usize) -> String {
    let mut end = line_end_of(message, from);
    while matches!(message.get(end), Some(b' ' | b'\t')) {
        end = line_end_of(message, end);
    }
    String::from_utf8_lossy(&message[from.min(end)..end])
        .split(['\r', '\n'])
        .collect::<Vec<_>>()
        .join("")
}

/// `<left@right>` (RFC 5322 3.6.4, without comments or white space).
fn is_msg_id(v: &str) -> bool {
    let Some(inner) = v.strip_prefix('<').and_then(|v| v.strip_suffix('>')) else {
        return false;
    };
    let Some((left, right)) = inner.split_once('@') else {
        return false;
    };
    !left.is_empty()
        && !right.is_empty()
        && !right.contains('@')
        && inner
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'<' | b'>'))
}

/// The index just past the LF ending the line at `at` (or the end).
fn line_end_of(message: &[u8], at: usize) -> usize {
    message[at..]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(message.len(), |i| at + i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_every_occurrence_with_folded_lines_and_nothing_else() {
        let mut m = b"Received: x\r\nSubject: a\r\nx-ringpost-meta: {\"a\":\r\n  1}\r\nTo: b\r\nX-Ringpost-Meta: {}\r\n\r\nX-Ringpost-Meta: body\r\n".to_vec();
        let v = take_field(&mut m, 13, "X-Ringpost-Meta");
        assert_eq!(v.as_deref(), Some("{\"a\": 1}"));
        assert_eq!(
            m,
            b"Received: x\r\nSubject: a\r\nTo: b\r\n\r\nX-Ringpost-Meta: body\r\n"
        );
    }

    #[test]
    fn absent_or_prefixed_names_are_left() {
        let mut m = b"X-Ringpost-Metadata: 1\r\n\r\nbody".to_vec();
        assert_eq!(take_field(&mut m, 0, "X-Ringpost-Meta"), None);
        assert_eq!(m, b"X-Ringpost-Metadata: 1\r\n\r\nbody");
        let mut empty = Vec::new();
        assert_eq!(take_field(&mut empty, 5, "X"), None);
    }

    #[test]
    fn a_survey_counts_hops_and_checks_date_and_message_id_in_the_header_only() {
        let m = b"Received: a\r\n  folded\r\nreceived: b\r\nReceived-SPF: c\r\nX: Received: d\r\n\r\nReceived: body\r\nDate: x\r\n";
        let s = survey(m);
        assert_eq!(s.received, 2);
        assert_eq!(
            (s.date, s.message_id),
            (FieldState::Missing, FieldState::Missing)
        );
        assert_eq!(survey(b"").received, 0);
        assert_eq!(survey(b"Received: only").received, 1);
        let good =
            b"Date: Sun, 6 Dec 2026 12:00:00 +0000\r\nMessage-ID: <a.1@host.example>\r\n\r\n";
        let s = survey(good);
        assert_eq!(
            (s.date, s.message_id),
            (FieldState::Valid, FieldState::Valid)
        );
        let folded = b"date: Sun, 6 Dec 2026\r\n 12:00:00 +0000\r\nmessage-id:\r\n <a@b>\r\n\r\n";
        let s = survey(folded);
        assert_eq!(
            (s.date, s.message_id),
            (FieldState::Valid, FieldState::Valid)
        );
        let bad = b"Date: yesterday\r\nMessage-ID: no-brackets@host\r\n\r\n";
        let s = survey(bad);
        assert_eq!(
            (s.date, s.message_id),
            (FieldState::Malformed, FieldState::Malformed)
        );
        let twice = b"Date: Sun, 6 Dec 2026 12:00:00 +0000\r\nDate: Sun, 6 Dec 2026 12:00:00 +0000\r\nMessage-ID: <a@b>\r\nMessage-ID: <c@d>\r\n\r\n";
        let s = survey(twice);
        assert_eq!(
            (s.date, s.message_id),
            (FieldState::Several, FieldState::Several)
        );
        for bad_id in ["<@b>", "<a@>", "<a b@c>", "<a@b@c>", "a@b", "<ab>"] {
            assert!(!is_msg_id(bad_id), "{bad_id}");
        }
    }

    #[test]
    fn several_names_in_one_pass() {
        let mut m = b"X-Pool: bulk\r\nSubject: a\r\nX-Meta: {}\r\n\r\nbody".to_vec();
        let [meta, pool, none] = take_fields(&mut m, 0, ["x-meta", "X-Pool", ""]);
        assert_eq!(meta.as_deref(), Some("{}"));
        assert_eq!(pool.as_deref(), Some("bulk"));
        assert_eq!(none, None);
        assert_eq!(m, b"Subject: a\r\n\r\nbody");
    }
}
