//! An MTA-STS policy file from whatever a policy host serves:
//! `mta_sts::parse` never panics, and a policy it accepts keeps its rules:
//! a `max_age` within a year, `mx` patterns for any mode but `none`, each
//! lower case without a trailing dot.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ringpost::mta_sts::{MAX_AGE_LIMIT, Mode, parse};

fuzz_target!(|data: &[u8]| {
    if let Ok(policy) = parse(data) {
        assert!(policy.max_age <= MAX_AGE_LIMIT);
        assert!(policy.mode == Mode::None || !policy.mx.is_empty());
        for mx in &policy.mx {
            assert!(!mx.ends_with('.') && *mx == mx.to_ascii_lowercase(), "{mx:?}");
            let _ = policy.allows(mx);
        }
    }
});
