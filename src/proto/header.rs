//! Taking header fields out of a message's header section.
//!
//! Owns: [`take_fields`] (and [`take_field`] for one name), and
//! [`count_fields`] (the hop count of a loop check), pure functions
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

/// How many `name:` fields (case-insensitive) the header section of
/// `message` holds (continuation lines are not fields).
pub fn count_fields(message: &[u8], name: &str) -> usize {
    let mut n = 0;
    let mut at = 0;
    while at < message.len() {
        let line_end = line_end_of(message, at);
        let line = &message[at..line_end];
        if line == b"\r\n" || line == b"\n" {
            break;
        }
        if line.len() > name.len()
            && line[name.len()] == b':'
            && line[..name.len()].eq_ignore_ascii_case(name.as_bytes())
        {
            n += 1;
        }
        at = line_end;
    }
    n
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
    fn fields_are_counted_in_the_header_section_only() {
        let m = b"Received: a\r\n  folded\r\nreceived: b\r\nReceived-SPF: c\r\nX: Received: d\r\n\r\nReceived: body\r\n";
        assert_eq!(count_fields(m, "Received"), 2);
        assert_eq!(count_fields(b"", "Received"), 0);
        assert_eq!(count_fields(b"Received: only", "Received"), 1);
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
