//! The command parser never panics, and what it accepts is clean: no control
//! characters in any address or argument that reaches a header or a log.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ringpost::proto::command::{Command, parse};

fn clean(s: &str) -> bool {
    !s.bytes().any(|b| b == 0 || b == b'\r' || b == b'\n')
}

fuzz_target!(|data: &[u8]| {
    match parse(data) {
        Ok(Command::Helo(h) | Command::Ehlo(h)) => assert!(clean(&h) && !h.contains(' ')),
        Ok(Command::Mail { from: Some(m), .. }) | Ok(Command::Rcpt { to: m }) => {
            assert!(clean(&m.local) && clean(&m.domain));
        }
        _ => {}
    }
});
