//! The binary's command line: check-config, start-up failures, queue ls.

mod common;

use std::process::Command;

fn ringpost() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ringpost"))
}

#[test]
fn check_config_accepts_a_good_file_and_reports_every_error_of_a_bad_one() {
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good.toml");
    std::fs::write(
        &good,
        "[smtp]\nlisten = \"127.0.0.1:2600\"\nbare_lf = \"reject\"\n",
    )
    .unwrap();
    let out = ringpost().arg("check-config").arg(&good).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let bad = tmp.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[smtp]\nlisten = \"127.0.0.1:2600\"\nmax_command_line = 100\ntypo = 1\n[spool]\ndir = 5\n[nonsense]\n",
    )
    .unwrap();
    let out = ringpost().arg("check-config").arg(&bad).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "line 3: smtp.max_command_line: must be at least 512",
        "line 4: smtp.typo: unknown key",
        "line 6: spool.dir: invalid type",
        "line 7: nonsense: unknown section",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
}

#[test]
fn port_in_use_fails_after_a_short_wait_with_a_clear_message() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[spool]\ndir = \"{}\"\n[smtp]\nlisten = \"{}\"\n[metrics]\nlisten = \"off\"\n[admin]\nlisten = \"off\"\n[inject]\nlisten = \"off\"\n",
            tmp.path().join("spool").display(),
            taken.local_addr().unwrap()
        ),
    )
    .unwrap();
    let out = ringpost()
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot listen on") && err.contains("Address already in use"),
        "{err}"
    );
    assert_eq!(
        err.matches("Address already in use").count(),
        1,
        "said once: {err}"
    );
}

#[test]
fn queue_ls_on_a_directory_without_a_spool_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let out = ringpost()
        .args(["queue", "ls", "--spool"])
        .arg(tmp.path().join("nothing-here"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("there is no spool at"), "{err}");
    assert!(out.stdout.is_empty(), "no empty table");
}

#[test]
fn check_config_checks_the_files_a_config_names() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("c.toml");
    std::fs::write(
        &cfg,
        "[submission]\nlisten = \"127.0.0.1:5870\"\nusers_file = \"/nonexistent/users\"\n\
         [tls]\ncert_file = \"/nonexistent/cert.pem\"\nkey_file = \"/nonexistent/key.pem\"\n\
         [delivery]\nlog = \"/nonexistent/dir/delivery.log\"\n[spool]\ndir = \"\"\n",
    )
    .unwrap();
    let out = ringpost().arg("check-config").arg(&cfg).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "line 3: submission.users_file: /nonexistent/users",
        "line 5: tls.cert_file: certificate file /nonexistent/cert.pem",
        "line 8: delivery.log: /nonexistent/dir/delivery.log: the directory /nonexistent/dir does not exist",
        "line 10: spool.dir: must not be empty",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
}

#[test]
fn a_failing_shard_stops_the_process_with_an_error() {
    // Shard 0's spool directory is a file, so that shard fails to open
    // its spool (the spool directory itself is fine: check-config's
    // checks pass).
    let tmp = tempfile::tempdir().unwrap();
    let not_a_dir = tmp.path().join("spool");
    std::fs::create_dir(&not_a_dir).unwrap();
    std::fs::write(not_a_dir.join("shard-0"), b"").unwrap();
    let cfg = tmp.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            // The suppression list elsewhere: it opens before the shards.
            "[spool]\ndir = \"{}\"\n[suppression]\npath = \"{}\"\n[smtp]\nlisten = \"127.0.0.1:0\"\n[metrics]\nlisten = \"off\"\n[admin]\nlisten = \"off\"\n[inject]\nlisten = \"off\"\n",
            not_a_dir.display(),
            tmp.path().join("suppressions").display()
        ),
    )
    .unwrap();
    let out = ringpost()
        .args(["serve", "--shards", "2", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("shard") && err.contains("spool"), "{err}");
}

#[test]
fn queue_ls_lists_what_was_queued() {
    let mut ts = common::start_with(2, |_| {});
    let mut c = ts.client();
    c.begin(
        "shop@sender.example",
        &["one@dest.example", "two@dest.example"],
    );
    let id = c.data(b"Subject: ls\r\n\r\nbody\r\n").queued_id();
    drop(c);
    ts.stop_and_list();
    let out = ringpost()
        .args(["queue", "ls", "--spool"])
        .arg(&ts.spool_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("{id} not in:\n{text}"));
    assert!(line.contains("shop@sender.example"), "{line}");
    assert!(
        line.contains("one@dest.example, two@dest.example"),
        "{line}"
    );
}

#[test]
fn help_documents_every_command() {
    let out = ringpost().arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in ["serve", "check-config", "queue"] {
        assert!(text.contains(cmd), "{text}");
    }
    let out = ringpost().args(["serve", "--help"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("--config") && text.contains("--shards"),
        "{text}"
    );
}

/// check-config checks what serve needs as the user that runs it: run as
/// `nobody` (setpriv, util-linux), it names a spool, a suppression list
/// and a log directory that user cannot write, and a key it cannot read,
/// each by its key; run as their owner, the same file passes.
#[test]
fn check_config_checks_permissions_as_the_user_that_runs_it() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
    for d in ["spool", "log"] {
        std::fs::create_dir(root.join(d)).unwrap();
        std::fs::set_permissions(root.join(d), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let token = root.join("admin.token");
    std::fs::write(&token, "a-long-enough-token-for-tests\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cfg = root.join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[spool]\ndir = \"{spool}\"\n[delivery]\nlog = \"{log}\"\n[admin]\ntoken_file = \"{token}\"\n",
            spool = root.join("spool").display(),
            log = root.join("log/delivery.log").display(),
            token = token.display(),
        ),
    )
    .unwrap();
    let as_nobody = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_ringpost"))
        .arg("check-config")
        .arg(&cfg)
        .output()
        .expect("setpriv (util-linux)");
    assert!(!as_nobody.status.success());
    let err = String::from_utf8_lossy(&as_nobody.stderr);
    for expected in [
        "line 2: spool.dir: ",
        "not writable by this user (uid 65534)",
        "suppression.dir: ",
        "line 4: delivery.log: ",
        "line 6: admin.token_file: ",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
    let as_owner = ringpost().arg("check-config").arg(&cfg).output().unwrap();
    assert!(
        as_owner.status.success(),
        "{}",
        String::from_utf8_lossy(&as_owner.stderr)
    );
}
