//! The client's reply parser: never panics, never consumes more than it was
//! given, and a parsed reply has a valid code and at least one line.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ringpost::proto::server_reply::{MAX_REPLY, parse_reply};

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((reply, used))) = parse_reply(data) {
        assert!(used <= data.len() && used <= MAX_REPLY);
        assert!((200..600).contains(&reply.code));
        assert!(!reply.lines.is_empty());
        let _ = reply.enhanced();
    }
});
