//! The HTTP injection request parser: never panics; what it accepts has at
//! least one recipient, no more than the limit, addresses without CR, LF
//! or NUL (they go into the Received: header), and content within the size
//! limit made only of CRLF-terminated lines within the line limit (or a
//! template, which renders or says why).
#![no_main]
use libfuzzer_sys::fuzz_target;
use ringpost::http::inject::{ContentLimits, parse};

const LIMITS: ContentLimits = ContentLimits {
    max_message_size: 4096,
    max_line_length: 1000,
    max_recipients: 100,
    max_meta_bytes: 4096,
};

fuzz_target!(|data: &[u8]| {
    let Ok(inj) = parse(data, LIMITS) else {
        return;
    };
    assert!(!inj.recipients.is_empty());
    assert!(inj.recipients.len() + inj.failed.len() <= LIMITS.max_recipients);
    for m in inj.sender.iter().chain(&inj.recipients) {
        let text = m.to_string();
        assert!(!text.contains(['\r', '\n', '\0']), "{text:?}");
    }
    if let Some(plan) = &inj.template {
        // A template renders or says why; it never panics.
        let _ = plan.render(inj.recipients.first().map(|r| r.to_string()).as_deref(), "f@z");
        return;
    }
    assert!(inj.content.len() <= LIMITS.max_message_size);
    let mut lines: Vec<&[u8]> = inj.content.split(|&b| b == b'\n').collect();
    assert_eq!(lines.pop(), Some(&b""[..]), "ends with a line ending");
    for line in lines {
        let line = line.strip_suffix(b"\r").expect("every LF follows a CR");
        assert!(!line.contains(&b'\r'), "no bare CR");
        assert!(line.len() + 2 <= LIMITS.max_line_length);
    }
});
