//! The unsubscribe token and one-click body parsers: never panic; a
//! token that verifies says what was minted into it (minting what it
//! says gives a token that verifies to the same claim).
#![no_main]
use libfuzzer_sys::fuzz_target;
use ringpost::unsubscribe::{Secrets, is_one_click, mint, verify};

fuzz_target!(|data: &[u8]| {
    let secrets = Secrets::parse("fuzz", "a-fuzzing-secret-0123456789abcdefgh").unwrap();
    let text = String::from_utf8_lossy(data);
    if let Ok(claim) = verify(&secrets, &text, 0, u64::MAX) {
        let again = mint(&secrets, &claim);
        assert_eq!(verify(&secrets, &again, 0, u64::MAX), Ok(claim));
    }
    let (ctype, body) = text.split_once('\n').unwrap_or(("", &text));
    let _ = is_one_click(Some(ctype), body.as_bytes());
    let _ = is_one_click(None, data);
});
