//! The command line splitter: never panics, never reports a line longer than
//! its limit, and always makes progress.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ringpost::proto::line::{LineEvent, LineSplitter};

fuzz_target!(|data: &[u8]| {
    let mut s = LineSplitter::new(64);
    let mut rest = data;
    loop {
        match s.next(rest) {
            LineEvent::Line { len, consumed, .. } => {
                assert!(consumed <= 64 && len < consumed && consumed <= rest.len());
                rest = &rest[consumed..];
            }
            LineEvent::TooLong { consumed } | LineEvent::Skipped { consumed } => {
                assert!(consumed > 0 && consumed <= rest.len());
                rest = &rest[consumed..];
            }
            LineEvent::Incomplete => break,
        }
        if rest.is_empty() {
            break;
        }
    }
});
