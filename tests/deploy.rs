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
fn the_example_configs_are_valid() {
    for file in ["deploy/ringpost.toml", "benches/relay-bench.toml"] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
        if let Err(e) = ringpost::config::Config::load(&path) {
            panic!("{file}:\n{e}");
        }
    }
}

const KUBE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/kubernetes");

/// The Kubernetes manifests pass `kubernetes-validate --strict` (PyPI,
/// offline, its bundled schemas; .ci/run installs it); the PodMonitor, a
/// CRD without a bundled schema, scrapes the port the pods name.
#[test]
fn kubernetes_manifests_validate() {
    let out = Command::new("kubernetes-validate")
        .args(["--strict", "--quiet", "ringpost.yaml", "podmonitor.yaml"])
        .current_dir(KUBE)
        .output()
        .expect("kubernetes-validate is needed (PyPI; .ci/run installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(!text.contains("ERROR"), "{text}");
    let manifests = std::fs::read_to_string(format!("{KUBE}/ringpost.yaml")).unwrap();
    let monitor = std::fs::read_to_string(format!("{KUBE}/podmonitor.yaml")).unwrap();
    assert!(manifests.contains("- name: metrics\n              containerPort: 9464"));
    assert!(monitor.contains("- port: metrics"));
    for probe in [
        "path: /readyz",
        "path: /healthz",
        "preStop:",
        "readOnlyRootFilesystem: true",
    ] {
        assert!(manifests.contains(probe), "{probe}");
    }
}

/// The config in the ConfigMap is a valid ringpost config, and its
/// shutdown grace fits the pod's termination grace after the preStop.
#[test]
fn the_configmaps_config_is_valid_and_fits_the_grace_period() {
    let manifests = std::fs::read_to_string(format!("{KUBE}/ringpost.yaml")).unwrap();
    let start = manifests.find("  ringpost.toml: |\n").unwrap() + "  ringpost.toml: |\n".len();
    let toml: String = manifests[start..]
        .lines()
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| format!("{}\n", l.get(4..).unwrap_or("")))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ringpost.toml");
    std::fs::write(&path, &toml).unwrap();
    let cfg = ringpost::config::Config::load(&path).unwrap_or_else(|e| panic!("{e}\n{toml}"));
    let number_after = |key: &str| -> u64 {
        let at = manifests.find(key).unwrap() + key.len();
        let digits: String = manifests[at..]
            .chars()
            .skip_while(|c| !c.is_ascii_digit())
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().unwrap()
    };
    let grace = number_after("terminationGracePeriodSeconds:");
    let pre_stop = number_after("sleep:\n                seconds:");
    assert!(
        pre_stop + cfg.server.shutdown_grace_secs < grace,
        "preStop {pre_stop} s + shutdown_grace_secs {} s must fit in {grace} s",
        cfg.server.shutdown_grace_secs
    );
    assert_eq!(cfg.smtp.listen.addr().unwrap().port(), 2525);
}

/// The Containerfile parses as a two-stage build whose image holds the
/// binary only, runs it as a non-root user, and builds with the Rust the
/// crate is pinned to.
#[test]
fn the_containerfile_is_a_two_stage_build_of_the_binary_alone() {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/Containerfile"))
            .unwrap();
    let known = [
        "ENV",
        "FROM",
        "WORKDIR",
        "COPY",
        "RUN",
        "USER",
        "EXPOSE",
        "ENTRYPOINT",
        "CMD",
    ];
    let instructions: Vec<(&str, &str)> = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(|l| l.split_once(' ').unwrap_or((l, "")))
        .collect();
    for (word, _) in &instructions {
        assert!(known.contains(word), "unknown instruction {word}");
    }
    let stages: Vec<&str> = instructions
        .iter()
        .filter(|(w, _)| *w == "FROM")
        .map(|(_, a)| *a)
        .collect();
    assert_eq!(stages.len(), 2, "{stages:?}");
    assert!(
        text.contains("\nENV CARGO_PROFILE_RELEASE_DEBUG=0\nRUN cargo build --release"),
        "the image's binary is built without debug info"
    );
    let cargo =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")).unwrap();
    let pinned = cargo
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .unwrap()
        .trim_matches('"');
    assert!(
        stages[0].contains(&format!("rust:{pinned}")),
        "{}",
        stages[0]
    );
    let last_from = text.rfind("\nFROM ").unwrap();
    let final_stage = &text[last_from..];
    let copies: Vec<&str> = final_stage
        .lines()
        .filter(|l| l.starts_with("COPY"))
        .collect();
    assert_eq!(
        copies,
        ["COPY --from=build /src/target/release/ringpost /ringpost"]
    );
    assert!(final_stage.contains("\nUSER 65532:65532"));
    for (word, args) in instructions
        .iter()
        .filter(|(w, _)| ["ENTRYPOINT", "CMD"].contains(w))
    {
        let parsed: Vec<String> = serde_json::from_str(args)
            .unwrap_or_else(|e| panic!("{word} is not an exec-form JSON array: {e}"));
        assert!(!parsed.is_empty());
    }
}

/// deploy/ringpost.service and deploy/ringpost.toml are one pair: every
/// path the config writes (spool, suppression list, kept malformed
/// reports, the delivery log) is writable under the unit's sandbox, the
/// unit reloads with SIGHUP and passes `systemd-analyze verify` (Debian's
/// systemd; .ci/run installs it), and the config passes `check-config`
/// once the files it names exist (made here, under a temporary root, as
/// the README's install steps make them).
#[test]
fn the_unit_and_the_example_config_are_one_pair() {
    use std::path::{Path, PathBuf};
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let unit = std::fs::read_to_string(root.join("deploy/ringpost.service")).unwrap();
    let values = |key: &str| -> Vec<String> {
        let prefix = format!("{key}=");
        unit.lines()
            .filter_map(|l| l.strip_prefix(&prefix).map(str::to_string))
            .collect()
    };
    assert_eq!(values("ExecReload"), ["/bin/kill -HUP $MAINPID"]);
    let mut writable: Vec<PathBuf> = values("ReadWritePaths")
        .iter()
        .flat_map(|v| v.split_whitespace().map(PathBuf::from).collect::<Vec<_>>())
        .collect();
    writable.extend(
        values("LogsDirectory")
            .iter()
            .map(|d| Path::new("/var/log").join(d)),
    );
    let cfg = ringpost::config::Config::load(&root.join("deploy/ringpost.toml")).unwrap();
    let spool = &cfg.spool.dir;
    let written = [
        spool.clone(),
        cfg.suppression.dir(spool),
        cfg.feedback.malformed_dir(spool),
        Path::new(&cfg.delivery.log).parent().unwrap().to_path_buf(),
    ];
    for path in &written {
        assert!(
            writable.iter().any(|w| path.starts_with(w)),
            "{} is written by the config but not writable under the unit ({writable:?})",
            path.display()
        );
    }
    assert!(
        values("ExecStart")[0].ends_with("--config /etc/ringpost/ringpost.toml"),
        "{:?}",
        values("ExecStart")
    );

    // systemd's own check, with ExecStart naming the binary built here.
    let dir = tempfile::tempdir().unwrap();
    let local_unit = dir.path().join("ringpost.service");
    std::fs::write(
        &local_unit,
        unit.replace("/usr/local/bin/ringpost", env!("CARGO_BIN_EXE_ringpost")),
    )
    .unwrap();
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&local_unit)
        .output()
        .expect("systemd-analyze (Debian package systemd; .ci/run installs it)");
    assert!(
        verify.status.success() && verify.stderr.is_empty(),
        "systemd-analyze verify:\n{}",
        String::from_utf8_lossy(&verify.stderr)
    );

    // check-config, with the files the config names made under a root.
    let at = |p: &str| dir.path().join(p.trim_start_matches('/'));
    let text = std::fs::read_to_string(root.join("deploy/ringpost.toml"))
        .unwrap()
        .replace("/etc/ringpost", at("/etc/ringpost").to_str().unwrap())
        .replace(
            "/var/spool/ringpost",
            at("/var/spool/ringpost").to_str().unwrap(),
        )
        .replace(
            "/var/log/ringpost",
            at("/var/log/ringpost").to_str().unwrap(),
        );
    let config = dir.path().join("ringpost.toml");
    std::fs::write(&config, text).unwrap();
    for d in [
        "/etc/ringpost/tls",
        "/etc/ringpost/dkim",
        "/var/spool/ringpost",
        "/var/log/ringpost",
    ] {
        std::fs::create_dir_all(at(d)).unwrap();
    }
    for f in ["inject.token", "admin.token", "webhook.secret"] {
        std::fs::write(
            at(&format!("/etc/ringpost/{f}")),
            "a-long-enough-secret-for-tests\n",
        )
        .unwrap();
    }
    std::fs::write(at("/etc/ringpost/shaping.toml"), "").unwrap();
    let tls = at("/etc/ringpost/tls");
    let openssl = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=mta1.example.com", "-keyout"])
        .arg(tls.join("key.pem"))
        .arg("-out")
        .arg(tls.join("cert.pem"))
        .output()
        .expect("openssl");
    assert!(openssl.status.success(), "{openssl:?}");
    for (selector, algo) in [("s2026r", "rsa"), ("s2026e", "ed25519")] {
        let keygen = Command::new(env!("CARGO_BIN_EXE_ringpost"))
            .args([
                "dkim",
                "keygen",
                "--domain",
                "example.com",
                "--selector",
                selector,
            ])
            .args(["--algo", algo, "--out"])
            .arg(at(&format!(
                "/etc/ringpost/dkim/example.com.{selector}.pem"
            )))
            .output()
            .unwrap();
        assert!(keygen.status.success(), "{keygen:?}");
    }
    let check = Command::new(env!("CARGO_BIN_EXE_ringpost"))
        .arg("check-config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
}
