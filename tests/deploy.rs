//! The files in deploy/ are valid for the tools that read them, and the
//! alert rules query only metrics ringpost exports.

use std::process::Command;

fn promtool(args: &[&str]) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy"))
        .output()
        .expect("promtool is needed (Debian package prometheus; .ci/run installs it)");
    assert!(
        out.status.success(),
        "promtool {args:?}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn prometheus_config_and_alert_rules_pass_promtool() {
    promtool(&["check", "rules", "ringpost-alerts.yml"]);
    promtool(&["check", "config", "prometheus.yml"]);
}

#[test]
fn alert_rules_use_only_exported_metrics() {
    let rules = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/ringpost-alerts.yml"
    ))
    .unwrap();
    let names: Vec<&str> = ringpost::metrics::ALL.iter().map(|m| m.name).collect();
    for word in rules.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if word.starts_with("ringpost_") {
            let base = word
                .strip_suffix("_bucket")
                .filter(|b| names.contains(b))
                .unwrap_or(word);
            assert!(
                names.contains(&base),
                "alert rules use unknown metric {word}"
            );
        }
    }
}

#[test]
fn example_config_passes_check_config() {
    let out = Command::new(env!("CARGO_BIN_EXE_ringpost"))
        .args([
            "check-config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/ringpost.toml"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_example_configs_are_valid() {
    for file in ["deploy/ringpost.toml", "benches/relay-bench.toml"] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
        if let Err(e) = ringpost::config::Config::load(&path) {
            panic!("{file}:\n{e}");
        }
    }
}
