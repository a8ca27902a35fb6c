//! Reading feedback reports: `feedback::parse` over arbitrary bytes (what
//! anyone may send to a feedback address) never panics; it reads a report
//! or says why not, and a report it reads names at least one recipient,
//! each an address.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(report) = ringpost::feedback::parse(data, "X-Ringpost-Id") {
        assert!(!report.recipients.is_empty());
        for r in &report.recipients {
            assert!(r.address.contains('@'), "{r:?}");
        }
        if let Some(id) = &report.original_id {
            assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id:?}");
        }
    }
});
