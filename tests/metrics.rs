//! Metrics: what the server records moves by the right amounts, the
//! exposition passes promtool, every metric is declared (dump-metrics), the
//! dashboard queries only declared metrics, and the endpoints answer.
//!
//! The recorder is process-wide, so only one test here sends mail: counter
//! deltas would otherwise include another test's traffic.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::process::Command;

fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    common::http(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
    )
}

/// The value of a sample line `name{labels} value` (labels as given, or none).
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn counters_move_by_what_the_server_did() {
    let ts = common::start_with(1, |_| {});
    let addr = ts.metrics_addr.expect("metrics endpoint");
    assert_eq!(get(addr, "/healthz").0, 200);
    assert_eq!(get(addr, "/readyz").0, 200);
    assert_eq!(get(addr, "/nothing").0, 404);
    let (_, before) = get(addr, "/metrics");

    let mut c = ts.client();
    c.begin("a@b.example", &["x@y.example", "z@y.example"]);
    assert_eq!(c.data(b"Subject: one\r\n\r\nx\r\n").code, 250);
    c.expect("MAIL FROM:<a@b.example>", 250);
    c.expect("RCPT TO:<x@y.example>", 250);
    assert_eq!(c.data(b"Subject: two\r\n\r\nx\r\n").code, 250);
    c.expect("FROB", 500);
    drop(c);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let (code, after) = get(addr, "/metrics");
    assert_eq!(code, 200);

    let delta = |series: &str| value(&after, series) - value(&before, series);
    assert_eq!(delta("ringpost_messages_received_total"), 2.0, "{after}");
    assert_eq!(delta("ringpost_recipients_received_total"), 3.0);
    assert_eq!(
        delta("ringpost_smtp_connections_total{listener=\"smtp\"}"),
        1.0
    );
    assert_eq!(delta("ringpost_smtp_replies_total{class=\"5xx\"}"), 1.0);
    // greeting, EHLO, 2 x (MAIL, RCPT.., DATA 354 excluded, 250 queued)
    assert!(delta("ringpost_smtp_replies_total{class=\"2xx\"}") >= 8.0);
    assert_eq!(delta("ringpost_smtp_replies_total{class=\"3xx\"}"), 2.0);
    assert!(
        delta("ringpost_spool_commit_seconds_count") >= 2.0,
        "{after}"
    );
    // One acceptance latency sample per message queued.
    assert_eq!(delta("ringpost_smtp_accept_seconds_count"), 2.0, "{after}");
    // The next hop is a closed port: each recipient is deferred once.
    assert!(
        delta("ringpost_recipients_deferred_total") >= 2.0,
        "{after}"
    );
    assert!(value(&after, "ringpost_queue_messages") >= 2.0);
    // Both messages wait for y.example: 3 pending recipients on shard 0.
    assert_eq!(
        value(
            &after,
            "ringpost_queue_domain_recipients{domain=\"y.example\",shard=\"0\"}"
        ),
        3.0,
        "{after}"
    );
    assert!(after.contains("# HELP ringpost_messages_received_total "));
    assert!(after.contains("# TYPE ringpost_spool_commit_seconds histogram"));
    promtool_check(&after);
}

fn dump_metrics() -> Vec<(String, String)> {
    let out = Command::new(env!("CARGO_BIN_EXE_ringpost"))
        .arg("dump-metrics")
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let mut f = l.split('\t');
            let (name, kind, help) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap());
            assert!(!help.is_empty(), "{name} has no help text");
            (name.to_string(), kind.to_string())
        })
        .collect()
}

#[test]
fn dump_metrics_lists_every_declared_metric() {
    let listed = dump_metrics();
    assert_eq!(listed.len(), ringpost::metrics::ALL.len());
    for m in ringpost::metrics::ALL {
        assert!(
            listed.contains(&(m.name.to_string(), m.kind.as_str().to_string())),
            "{}",
            m.name
        );
    }
}

#[test]
fn the_dashboard_queries_only_metrics_that_exist() {
    let listed: Vec<String> = dump_metrics().into_iter().map(|(n, _)| n).collect();
    let dashboard = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/grafana/ringpost.json"
    ))
    .unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&dashboard).expect("the dashboard is valid JSON");
    let mut exprs = Vec::new();
    collect_exprs(&json, &mut exprs);
    assert!(exprs.len() >= 8, "the dashboard has panels with queries");
    let mut used = 0;
    for expr in &exprs {
        for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if !word.starts_with("ringpost_") {
                continue;
            }
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    word.strip_suffix(s)
                        .filter(|b| listed.iter().any(|n| n == b))
                })
                .unwrap_or(word);
            assert!(
                listed.iter().any(|n| n == base),
                "dashboard queries unknown metric {word} in {expr}"
            );
            used += 1;
        }
    }
    assert!(used >= 10);
    let vars = json["templating"]["list"].as_array().unwrap();
    assert!(
        vars.iter()
            .any(|v| v["type"] == "datasource" && v["query"] == "prometheus")
    );
}

fn collect_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            if let Some(serde_json::Value::String(e)) = m.get("expr") {
                out.push(e.clone());
            }
            m.values().for_each(|x| collect_exprs(x, out));
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| collect_exprs(x, out)),
        _ => {}
    }
}

/// `promtool check metrics` on a real scrape (histograms included).
fn promtool_check(text: &str) {
    let promtool = Command::new("promtool").arg("--version").output();
    assert!(
        promtool.is_ok_and(|o| o.status.success()),
        "promtool is needed (Debian package prometheus; .ci/run installs it)"
    );
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}\n---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
