//! The everything-on soak's short form (issue 35): `benches/soak-all.py
//! --short` against this build. Two nodes of the real binary sharing a
//! real redis-server, DKIM, webhooks, egress sources, shaping, priority
//! lanes, feedback and suppression, SMTP and HTTP clients, with nodes
//! killed (SIGKILL) every 4-8 s, Redis killed and restarted empty, the
//! webhook receiver away and then flapping (500s, 404s), and a reload
//! of a broken then a good shaping file, for 38 s of load; then every
//! acknowledged message must be delivered or bounced, none refused
//! delivered, every delivery DKIM-verified (dkimpy) and with its webhook
//! event, no suppressed recipient delivered after the acknowledgement,
//! and the fleet's path limit held within 10%. The script checks it all
//! from the sink's, the receiver's and the clients' own records, prints
//! the report and exits 1 on any failure; the long form is a bench
//! (docs/operations.md, "The soak").

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn everything_on_under_kills_loses_nothing() {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut child = Command::new("python3")
        .arg(format!("{root}/benches/soak-all.py"))
        .arg("--short")
        .env("RINGPOST_BIN", env!("CARGO_BIN_EXE_ringpost"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    // Read as it comes, so the script never waits on a full pipe.
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut out).unwrap();
        out
    });
    let deadline = Instant::now() + Duration::from_secs(600);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the soak did not finish in 10 minutes");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let out = reader.join().unwrap();
    println!("{out}");
    assert!(status.success(), "the soak found a problem:\n{out}");
    // The report is the script's; check that it ran the faults it claims.
    let report: serde_json::Value = serde_json::from_str(
        &out[out.find("\n{").expect("a JSON report") + 1..out.rfind("\n}").unwrap() + 2],
    )
    .unwrap();
    for (key, at_least) in [
        ("node_kills", 4),
        ("redis_kills", 1),
        ("hook_downs", 1),
        ("reloads", 1),
        ("acknowledged", 1000),
        ("dkim_checked", 1000),
        ("complaints", 1),
        ("suppressed", 1),
    ] {
        assert!(
            report[key].as_u64().unwrap() >= at_least,
            "{key}: {}",
            report[key]
        );
    }
    assert_eq!(report["lost"], 0);
}
