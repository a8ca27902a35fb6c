//! Reads a message body out of a DATA or BDAT byte stream.
//!
//! Owns: [`BodyReader`] (reading: DATA and BDAT in) and [`dot_stuff`]
//! (writing: a stored body as sent after DATA, RFC 5321 4.5.2).
//! [`BodyReader`] is a byte-at-a-time state machine that finds the end of
//! DATA, removes dot-stuffing, canonicalises line endings to CRLF, and
//! enforces the size and line-length limits, for input that arrives in
//! arbitrary pieces. Runs of whole lines that need none of that (CRLF, in
//! the limit, no leading dot) skip the machine and are copied whole; a test
//! holds the two paths to the same result.
//!
//! Must not: do I/O or grow its output past the size limit.
//!
//! Security: this is where SMTP smuggling is stopped. DATA ends only at
//! `CRLF . CRLF`: the `.` line must end in CRLF *and* the line before it must
//! have ended in CRLF too (the DATA command itself counts as such a line).
//! `LF . LF`, `LF . CRLF`, `CRLF . LF`, `CR . CR` and every other variant are
//! content. A bare LF or a bare CR (one not followed by LF) is either taken
//! as a line end and stored as CRLF, or flagged ([`BareEndings`]); either
//! way it can never start or end an end-of-data sequence, so one DATA
//! yields at most one message, and what is stored and relayed has only
//! CRLF line ends: a receiver that takes a bare CR (or LF) for a line end
//! sees the same lines we do.

/// Which bare line ends make a body faulty; the others are taken as CRLF.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BareEndings {
    pub reject_lf: bool,
    pub reject_cr: bool,
}

/// How the body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// DATA: dot-stuffed, ends at CRLF.CRLF.
    Data,
    /// BDAT (RFC 3030): raw bytes, the length is given by the command.
    Bdat,
}

/// Why a body that has ended must be refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFault {
    TooBig,
    LineTooLong,
    BareLf,
    BareCr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyState {
    /// At the start of a line that followed a CRLF (may begin end-of-data).
    LineStart,
    /// At the start of a line that followed a bare LF (may not).
    LineStartAfterLf,
    /// Saw `.` at the start of a line.
    Dot,
    /// Saw `.` `CR` at the start of a line.
    DotCr,
    /// Inside a line.
    Mid,
    /// Saw a CR inside a line: CRLF or bare CR, depending on what follows.
    Cr,
}

#[derive(Debug, Clone)]
pub struct BodyReader {
    framing: Framing,
    bare: BareEndings,
    max_size: usize,
    max_line: usize,
    state: BodyState,
    line_len: usize,
    /// Bytes of body seen, including those not stored after a fault.
    size: u64,
    fault: Option<BodyFault>,
    has_8bit: bool,
    /// Whether the `.` line being read followed a CRLF, so may end DATA.
    dot_may_end: bool,
}

impl BodyReader {
    /// `max_size` bounds the stored body; `max_line` the octets in one line
    /// (without its CRLF).
    pub fn new(
        framing: Framing,
        bare: BareEndings,
        max_size: usize,
        max_line: usize,
    ) -> BodyReader {
        BodyReader {
            framing,
            bare,
            max_size,
            max_line,
            state: BodyState::LineStart,
            line_len: 0,
            size: 0,
            fault: None,
            has_8bit: false,
            dot_may_end: false,
        }
    }

    /// Consumes bytes from `input`, appending body bytes to `out`. Returns
    /// how many bytes were consumed and whether the end of DATA was reached
    /// (never true for BDAT). Bytes after the end of DATA are not consumed.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> (usize, bool) {
        let mut i = 0;
        while i < input.len() {
            let lines = self.plain_lines(&input[i..]);
            if lines > 0 {
                self.emit_lines(&input[i..i + lines], out);
                i += lines;
                continue;
            }
            if self.state == BodyState::Mid {
                // Fast path: inside a line, everything up to the next CR or
                // LF is plain content and is copied in one piece.
                let run = memchr::memchr2(b'\r', b'\n', &input[i..]).unwrap_or(input.len() - i);
                if run > 0 {
                    self.emit_run(&input[i..i + run], out);
                    i += run;
                    continue;
                }
            }
            let b = input[i];
            i += 1;
            if self.step(b, out) {
                return (i, true);
            }
        }
        (input.len(), false)
    }

    /// Fastest path: the length of the longest prefix of `input` made of
    /// whole lines that pass through unchanged: each ends in CRLF, is within
    /// the line limit, and the next one does not start with a dot (which may
    /// be stuffing or the end of DATA). Most bodies are nothing but such
    /// lines, so they are checked a line at a time (memchr) and copied in
    /// one piece. 0 if the state machine must look at the next byte.
    fn plain_lines(&self, input: &[u8]) -> usize {
        let mut line_len = match self.state {
            BodyState::Mid => self.line_len,
            BodyState::LineStart if input.first() != Some(&b'.') => 0,
            _ => return 0,
        };
        if self.fault.is_some() {
            return 0;
        }
        let mut start = 0;
        let mut taken = 0;
        for lf in memchr::memchr_iter(b'\n', input) {
            if lf == start || input[lf - 1] != b'\r' {
                break; // a bare LF, or a CR that came in the last piece
            }
            if memchr::memchr(b'\r', &input[start..lf - 1]).is_some() {
                break; // a bare CR inside the line
            }
            line_len += lf - 1 - start;
            if line_len > self.max_line {
                break;
            }
            taken = lf + 1;
            start = lf + 1;
            line_len = 0;
            if input.get(start) == Some(&b'.') {
                break;
            }
        }
        taken
    }

    /// Whole lines found by [`Self::plain_lines`]: copied as they are.
    fn emit_lines(&mut self, lines: &[u8], out: &mut Vec<u8>) {
        if !self.has_8bit && !lines.is_ascii() {
            self.has_8bit = true;
        }
        self.emit(lines, out);
        self.line_len = 0;
        self.state = BodyState::LineStart;
    }

    /// Ends a BDAT body: a CR left pending at the very end is a bare CR.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        match self.state {
            BodyState::Cr => self.bare_cr(out),
            BodyState::DotCr => {
                self.emit_char(b'.', out);
                self.bare_cr(out);
            }
            _ => {}
        }
        self.state = BodyState::LineStart;
    }

    /// The first limit the body broke, if any.
    pub fn fault(&self) -> Option<BodyFault> {
        self.fault
    }

    /// Whether any byte had the high bit set.
    pub fn has_8bit(&self) -> bool {
        self.has_8bit
    }

    /// Body octets seen on the wire so far (after unstuffing).
    pub fn size(&self) -> u64 {
        self.size
    }

    fn step(&mut self, b: u8, out: &mut Vec<u8>) -> bool {
        if b >= 0x80 {
            self.has_8bit = true;
        }
        use BodyState::*;
        match (self.state, b) {
            (LineStart | LineStartAfterLf, b'.') if self.framing == Framing::Data => {
                self.dot_may_end = self.state == LineStart;
                self.state = Dot;
            }
            (DotCr, b'\n') if self.dot_may_end => return true,
            (DotCr, b'\n') => {
                // A lone dot after a bare-LF line: content, kept as a literal dot.
                self.emit_char(b'.', out);
                self.end_line(out, LineStart);
            }
            (DotCr, _) => {
                // ". CR x": a line of one dot ended by a bare CR: content,
                // kept as a literal dot (it cannot end DATA).
                self.emit_char(b'.', out);
                self.bare_cr(out);
                return self.step(b, out);
            }
            (Dot, b'\r') => self.state = DotCr,
            (Dot, b'\n') => {
                // ". LF": not an end (bare LF); keep the line as a literal dot.
                self.emit_char(b'.', out);
                self.bare_newline(out);
            }
            (Dot, _) => {
                // Dot-stuffing: drop the first dot of the line.
                self.state = Mid;
                return self.step(b, out);
            }
            (Cr, b'\n') => self.end_line(out, LineStart),
            (Cr, _) => {
                self.bare_cr(out);
                return self.step(b, out);
            }
            (_, b'\r') => self.state = Cr,
            (_, b'\n') => self.bare_newline(out),
            (_, _) => {
                self.state = Mid;
                self.emit_char(b, out);
            }
        }
        false
    }

    fn bare_newline(&mut self, out: &mut Vec<u8>) {
        if self.bare.reject_lf {
            self.set_fault(BodyFault::BareLf);
        }
        self.end_line(out, BodyState::LineStartAfterLf);
    }

    /// A CR not followed by LF ends the line as a bare LF does: stored as
    /// CRLF, and the next line may not end DATA.
    fn bare_cr(&mut self, out: &mut Vec<u8>) {
        if self.bare.reject_cr {
            self.set_fault(BodyFault::BareCr);
        }
        self.end_line(out, BodyState::LineStartAfterLf);
    }

    fn end_line(&mut self, out: &mut Vec<u8>, next: BodyState) {
        self.emit(b"\r\n", out);
        self.line_len = 0;
        self.state = next;
    }

    /// A run of line content without CR or LF.
    fn emit_run(&mut self, run: &[u8], out: &mut Vec<u8>) {
        if !self.has_8bit && run.iter().any(|&b| b >= 0x80) {
            self.has_8bit = true;
        }
        self.line_len += run.len();
        if self.line_len > self.max_line {
            self.set_fault(BodyFault::LineTooLong);
        }
        self.emit(run, out);
    }

    fn emit_char(&mut self, b: u8, out: &mut Vec<u8>) {
        self.line_len += 1;
        if self.line_len > self.max_line {
            self.set_fault(BodyFault::LineTooLong);
        }
        self.emit(&[b], out);
    }

    fn emit(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        self.size += bytes.len() as u64;
        if self.size > self.max_size as u64 {
            self.set_fault(BodyFault::TooBig);
        }
        if self.fault.is_none() {
            out.extend_from_slice(bytes);
        }
    }

    fn set_fault(&mut self, f: BodyFault) {
        self.fault.get_or_insert(f);
    }
}

/// The body as sent after DATA: every line that starts with `.` gets one
/// more, the body ends in CRLF, and the `.` CRLF terminator follows.
pub fn dot_stuff(body: Vec<u8>) -> Vec<u8> {
    // Most bodies need no stuffing: then only the terminator is appended,
    // in place (spool reads leave room for it), and nothing is copied.
    let needs_dots = body.first() == Some(&b'.') || memchr::memmem::find(&body, b"\n.").is_some();
    let mut out = match needs_dots {
        false => body,
        true => stuffed(&body),
    };
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        if out.ends_with(b"\r") {
            out.push(b'\n');
        } else {
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// A copy of `body` with a dot before every line that starts with one.
fn stuffed(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 8);
    if body.first() == Some(&b'.') {
        out.push(b'.');
    }
    // Lines are found with memchr's searcher, not byte by byte: bodies are
    // copied at memcpy speed between the rare lines that need a dot.
    let mut from = 0;
    for newline in memchr::memmem::find_iter(body, b"\n.") {
        out.extend_from_slice(&body[from..=newline]);
        out.push(b'.');
        from = newline + 1;
    }
    out.extend_from_slice(&body[from..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_data(input: &[u8], bare: BareEndings) -> (Vec<u8>, Option<usize>, Option<BodyFault>) {
        let mut r = BodyReader::new(Framing::Data, bare, 1 << 20, 1000);
        let mut out = Vec::new();
        let (n, done) = r.feed(input, &mut out);
        (out, done.then_some(n), r.fault())
    }

    /// Feeds one byte at a time, to check that splitting never changes the result.
    fn read_bytewise(input: &[u8]) -> (Vec<u8>, Option<usize>) {
        let mut r = BodyReader::new(Framing::Data, BareEndings::default(), 1 << 20, 1000);
        let mut out = Vec::new();
        for i in 0..input.len() {
            let (_, done) = r.feed(&input[i..i + 1], &mut out);
            if done {
                return (out, Some(i + 1));
            }
        }
        (out, None)
    }

    /// Feeds `input` in pieces of the given sizes (cycled): (output, end,
    /// fault, 8-bit).
    fn read_in_pieces(
        input: &[u8],
        pieces: &[usize],
        framing: Framing,
        max_line: usize,
    ) -> (Vec<u8>, Option<usize>, Option<BodyFault>, bool) {
        let mut r = BodyReader::new(framing, BareEndings::default(), 1 << 20, max_line);
        let mut out = Vec::new();
        let mut at = 0;
        for &len in pieces.iter().cycle() {
            if at >= input.len() {
                break;
            }
            let end = (at + len.max(1)).min(input.len());
            let (n, done) = r.feed(&input[at..end], &mut out);
            at += n;
            if done {
                return (out, Some(at), r.fault(), r.has_8bit());
            }
        }
        (out, None, r.fault(), r.has_8bit())
    }

    /// The whole-line fast path and the byte-at-a-time state machine agree
    /// on every input, however it is split.
    #[test]
    fn fast_path_matches_the_state_machine() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(6);
        let alphabet: &[&[u8]] = &[
            b"a",
            b"xyz",
            b"\r\n",
            b"\r",
            b"\n",
            b".",
            b"\r\n.",
            b"\xc3\xa9",
        ];
        for case in 0..20_000 {
            let input: Vec<u8> = (0..rng.random_range(0..40))
                .flat_map(|_| {
                    alphabet[rng.random_range(0..alphabet.len())]
                        .iter()
                        .copied()
                })
                .collect();
            let framing = if case % 4 == 0 {
                Framing::Bdat
            } else {
                Framing::Data
            };
            let max_line = rng.random_range(2..12);
            let slow = read_in_pieces(&input, &[1], framing, max_line);
            let pieces: Vec<usize> = (0..4).map(|_| rng.random_range(1..20)).collect();
            for split in [&[input.len()][..], &pieces] {
                let mut got = read_in_pieces(&input, split, framing, max_line);
                let mut want = slow.clone();
                if want.2.is_some() {
                    // A faulty body is refused whole: what was kept of it
                    // depends on where the fault was noticed.
                    (got.0, want.0) = (Vec::new(), Vec::new());
                }
                assert_eq!(
                    got,
                    want,
                    "input {:?}, pieces {split:?}, {framing:?}, max_line {max_line}",
                    String::from_utf8_lossy(&input)
                );
            }
        }
    }

    #[test]
    fn ends_at_crlf_dot_crlf_and_unstuffs() {
        let input = b"Subject: x\r\n\r\n..hidden\r\n.x\r\nend\r\n.\r\nMAIL FROM:<a@b>\r\n";
        let (out, end, fault) = read_data(input, BareEndings::default());
        assert_eq!(out, b"Subject: x\r\n\r\n.hidden\r\nx\r\nend\r\n");
        assert_eq!(end, Some(input.len() - b"MAIL FROM:<a@b>\r\n".len()));
        assert_eq!(fault, None);
        assert_eq!(read_bytewise(input), (out, end));
    }

    #[test]
    fn empty_body() {
        assert_eq!(
            read_data(b".\r\n", BareEndings::default()),
            (vec![], Some(3), None)
        );
    }

    #[test]
    fn smuggling_variants_are_content_not_end() {
        for variant in [
            &b"a\n.\nMAIL"[..],
            b"a\n.\r\nMAIL",
            b"a\r\n.\nMAIL",
            b"a\r.\rMAIL",
            b"a\r.\r\nMAIL",
            b"a\r\n.\rMAIL",
        ] {
            let (_, end, _) = read_data(variant, BareEndings::default());
            assert_eq!(
                end,
                None,
                "{:?} must not end DATA",
                String::from_utf8_lossy(variant)
            );
            assert_eq!(read_bytewise(variant).1, None);
        }
    }

    #[test]
    fn bare_lf_normalized_or_flagged() {
        let (out, end, fault) = read_data(b"a\nb\r\n.\r\n", BareEndings::default());
        assert_eq!(
            (out.as_slice(), end, fault),
            (&b"a\r\nb\r\n"[..], Some(8), None)
        );
        let reject = BareEndings {
            reject_lf: true,
            reject_cr: false,
        };
        let (_, end, fault) = read_data(b"a\nb\r\n.\r\n", reject);
        assert_eq!((end, fault), (Some(8), Some(BodyFault::BareLf)));
    }

    #[test]
    fn dot_lines_after_bare_lf_are_unstuffed_but_never_end() {
        let (out, end, _) = read_data(b"a\n..x\n.\r\nb\r\n.\r\n", BareEndings::default());
        assert_eq!(out, b"a\r\n.x\r\n.\r\nb\r\n");
        assert_eq!(end, Some(15));
    }

    #[test]
    fn bare_cr_ends_a_line_or_is_flagged() {
        let (out, _, _) = read_data(b"a\rb\r\r\n.\r\n", BareEndings::default());
        assert_eq!(out, b"a\r\nb\r\n\r\n");
        // The CR variant of SMTP smuggling: what is stored (and relayed)
        // has the forged transaction inside one message, as plain lines.
        let input = b"A\r.\rMAIL FROM:<evil@x.example>\r\n.\r\n";
        let (out, end, fault) = read_data(input, BareEndings::default());
        assert_eq!(out, b"A\r\n.\r\nMAIL FROM:<evil@x.example>\r\n");
        assert_eq!((end, fault), (Some(input.len()), None));
        assert_eq!(read_bytewise(input), (out, end));
        let reject = BareEndings {
            reject_lf: false,
            reject_cr: true,
        };
        let (_, end, fault) = read_data(input, reject);
        assert_eq!((end, fault), (Some(input.len()), Some(BodyFault::BareCr)));
        let (_, _, fault) = read_data(b"a\nb\r\n.\r\n", reject);
        assert_eq!(fault, None, "bare LF is its own setting");
    }

    #[test]
    fn limits_flag_but_keep_reading_to_the_end() {
        let mut r = BodyReader::new(Framing::Data, BareEndings::default(), 10, 1000);
        let mut out = Vec::new();
        let (_, done) = r.feed(b"0123456789abcdef\r\n.\r\n", &mut out);
        assert!(done);
        assert_eq!(r.fault(), Some(BodyFault::TooBig));
        assert!(out.len() <= 10);

        let mut r = BodyReader::new(Framing::Data, BareEndings::default(), 1000, 4);
        let (_, done) = r.feed(b"12345\r\n.\r\n", &mut out);
        assert!(done);
        assert_eq!(r.fault(), Some(BodyFault::LineTooLong));
    }

    #[test]
    fn bdat_is_raw_except_line_endings() {
        let mut r = BodyReader::new(Framing::Bdat, BareEndings::default(), 1000, 1000);
        let mut out = Vec::new();
        assert_eq!(r.feed(b".\r\n..x\nend\r", &mut out), (11, false));
        r.finish(&mut out);
        assert_eq!(out, b".\r\n..x\r\nend\r\n");
    }

    #[test]
    fn dot_stuffing_and_termination() {
        assert_eq!(
            dot_stuff(b"a\r\n.b\r\n..c\r\n".to_vec()),
            b"a\r\n..b\r\n...c\r\n.\r\n"
        );
        assert_eq!(dot_stuff(b".\r\nend".to_vec()), b"..\r\nend\r\n.\r\n");
        assert_eq!(dot_stuff(b"".to_vec()), b".\r\n");
        assert_eq!(dot_stuff(b"x\r".to_vec()), b"x\r\n.\r\n");
        assert_eq!(dot_stuff(b"\n.\n..".to_vec()), b"\n..\n...\r\n.\r\n");
        assert_eq!(dot_stuff(b"..\r\n".to_vec()), b"...\r\n.\r\n");
    }

    /// What the server's body reader stores is what dot_stuff sends: the
    /// round trip is the identity for canonical (CRLF) bodies.
    #[test]
    fn round_trip_through_the_server_reader() {
        let body = b"Subject: t\r\n\r\n.\r\n..\r\n.x\r\nend\r\n";
        let wire = dot_stuff(body.to_vec());
        let mut r = BodyReader::new(Framing::Data, BareEndings::default(), 1 << 20, 1000);
        let mut out = Vec::new();
        let (n, done) = r.feed(&wire, &mut out);
        assert!(done && n == wire.len());
        assert_eq!(out, body);
    }
}
