//! Splits command lines out of a byte stream, with a hard length limit.
//!
//! Owns: [`LineSplitter`], which finds the next line in a buffer and, when a
//! line is longer than the limit, reports it once and then discards input up
//! to the next LF so that the session resynchronises on the next command.
//!
//! Must not: buffer anything itself. The caller owns the buffer; the splitter
//! only says how many bytes it consumed.
//!
//! Security: the limit bounds the caller's buffer, so a peer that never sends
//! LF costs at most `max` bytes of memory.

/// What the splitter found at the front of the buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineEvent {
    /// A complete line: `len` bytes of text (without the line ending) at the
    /// start of the buffer; `consumed` includes the ending. `bare_lf` is set
    /// when the line ended in LF without CR.
    Line {
        len: usize,
        consumed: usize,
        bare_lf: bool,
    },
    /// A line exceeded the limit. Reported once per overlong line.
    TooLong { consumed: usize },
    /// Bytes that belong to an overlong line were skipped (never zero).
    Skipped { consumed: usize },
    /// No complete line yet (or nothing to skip): read more.
    Incomplete,
}

#[derive(Debug, Clone)]
pub struct LineSplitter {
    max: usize,
    discarding: bool,
}

impl LineSplitter {
    /// `max` is the longest line accepted, counting the CRLF.
    pub fn new(max: usize) -> LineSplitter {
        LineSplitter {
            max: max.max(3),
            discarding: false,
        }
    }

    pub fn next(&mut self, buf: &[u8]) -> LineEvent {
        if buf.is_empty() {
            return LineEvent::Incomplete;
        }
        let lf = memchr(b'\n', buf);
        if self.discarding {
            return match lf {
                Some(i) => {
                    self.discarding = false;
                    LineEvent::Skipped { consumed: i + 1 }
                }
                None => LineEvent::Skipped {
                    consumed: buf.len(),
                },
            };
        }
        match lf {
            Some(i) if i < self.max => {
                let bare_lf = i == 0 || buf[i - 1] != b'\r';
                let len = if bare_lf { i } else { i - 1 };
                LineEvent::Line {
                    len,
                    consumed: i + 1,
                    bare_lf,
                }
            }
            Some(i) => LineEvent::TooLong { consumed: i + 1 },
            None if buf.len() >= self.max => {
                self.discarding = true;
                LineEvent::TooLong {
                    consumed: buf.len(),
                }
            }
            None => LineEvent::Incomplete,
        }
    }
}

fn memchr(needle: u8, hay: &[u8]) -> Option<usize> {
    memchr::memchr(needle, hay)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crlf_and_bare_lf_lines() {
        let mut s = LineSplitter::new(100);
        assert_eq!(
            s.next(b"NOOP\r\nQUIT"),
            LineEvent::Line {
                len: 4,
                consumed: 6,
                bare_lf: false
            }
        );
        assert_eq!(
            s.next(b"NOOP\n"),
            LineEvent::Line {
                len: 4,
                consumed: 5,
                bare_lf: true
            }
        );
        assert_eq!(s.next(b"QUIT"), LineEvent::Incomplete);
    }

    #[test]
    fn overlong_line_is_reported_once_then_skipped_to_next_lf() {
        let mut s = LineSplitter::new(8);
        assert_eq!(s.next(b"0123456789"), LineEvent::TooLong { consumed: 10 });
        assert_eq!(s.next(b"abc"), LineEvent::Skipped { consumed: 3 });
        assert_eq!(
            s.next(b"de\r\nNOOP\r\n"),
            LineEvent::Skipped { consumed: 4 }
        );
        assert!(matches!(
            s.next(b"NOOP\r\n"),
            LineEvent::Line { len: 4, .. }
        ));
    }

    #[test]
    fn discarding_with_nothing_buffered_asks_for_more_input() {
        let mut s = LineSplitter::new(8);
        assert_eq!(s.next(b"0123456789"), LineEvent::TooLong { consumed: 10 });
        // Must not report a zero-byte skip: the caller would loop without reading.
        assert_eq!(s.next(b""), LineEvent::Incomplete);
        assert_eq!(s.next(b"x\r\n"), LineEvent::Skipped { consumed: 3 });
    }

    #[test]
    fn overlong_line_with_lf_in_buffer_is_consumed_whole() {
        let mut s = LineSplitter::new(8);
        assert_eq!(
            s.next(b"0123456789\r\nNOOP\r\n"),
            LineEvent::TooLong { consumed: 12 }
        );
        assert!(matches!(
            s.next(b"NOOP\r\n"),
            LineEvent::Line { len: 4, .. }
        ));
    }

    #[test]
    fn line_of_exactly_the_limit_is_accepted() {
        let mut s = LineSplitter::new(6);
        assert!(matches!(
            s.next(b"NOOP\r\n"),
            LineEvent::Line { len: 4, .. }
        ));
        assert_eq!(s.next(b"NOOPX\r\n"), LineEvent::TooLong { consumed: 7 });
    }
}
