//! Taking a header field out of whatever a client sends:
//! `proto::header::take_field` never panics, returns a value without CR or
//! LF, changes nothing when it finds nothing, and otherwise removes only
//! header lines: what comes before the start and the body stay as they were.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ringpost::proto::header::take_field;

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let start = usize::from(split) % (rest.len() + 1);
    let mut message = rest.to_vec();
    let value = take_field(&mut message, start, "X-Ringpost-Meta");
    if let Some(v) = &value {
        assert!(!v.contains(['\r', '\n']), "{v:?}");
    }
    assert_eq!(message[..start.min(message.len())], rest[..start.min(message.len())]);
    match value {
        // Nothing found: nothing changed.
        None => assert_eq!(message, rest),
        // Found: only header lines went; the body is as it was.
        Some(_) => {
            assert!(message.len() < rest.len());
            let body = header_end(rest, start);
            assert!(message.ends_with(&rest[body..]));
        }
    }
});

/// Where the header section that begins at `start` ends: the first empty
/// line (or the end).
fn header_end(message: &[u8], start: usize) -> usize {
    let mut at = start.min(message.len());
    while at < message.len() {
        let end = message[at..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(message.len(), |i| at + i + 1);
        let line = &message[at..end];
        if line == b"\r\n" || line == b"\n" {
            return at;
        }
        at = end;
    }
    message.len()
}
