//! Start-up checks: what a config's files hold ([`Loaded`], read once),
//! and every problem found before anything binds ([`preflight`]: keys,
//! certificates, users, tokens, the classifier, directories that must be
//! writable), as `check-config` and `serve` report them.
//!
//! Must not: bind a port or open the spool.

use crate::config::{Config, Problems};
use crate::inbound::smtp::auth::Users;
use std::sync::Arc;

/// What the files a config names hold, loaded once at start-up.
pub struct Loaded {
    /// Submission users, when submission is on.
    pub users: Option<Arc<Users>>,
    /// Inbound STARTTLS, when a certificate is configured.
    pub inbound_tls: Option<Arc<rustls::ServerConfig>>,
    /// The verified-TLS client, when some destination requires it, and
    /// its verifier (MTA-STS testing mode's TLS reports check with it).
    pub verified: Option<Arc<rustls::ClientConfig>>,
    pub webpki: Option<Arc<dyn rustls::client::danger::ServerCertVerifier>>,
    pub admin_token: Option<String>,
    pub inject_token: Option<String>,
    /// HTTPS on the injection listener, when `inject.cert_file` is set:
    /// the config and the handle that reads the files again (SIGHUP).
    pub inject_tls: Option<(Arc<rustls::ServerConfig>, Arc<crate::tls::CertReloader>)>,
    /// The DKIM signer, when `[dkim]` has identities.
    pub dkim: Option<Arc<crate::dkim::Signer>>,
    /// The bounce classifier: the operator's rules, then ringpost's.
    pub classifier: Arc<crate::classify::Classifier>,
    /// The shaping rules: the operator's file, then ringpost's.
    pub shaping: Arc<crate::scheduler::shaping::Shaping>,
    /// The webhooks, with their secrets and TLS configs.
    pub webhooks: Vec<Arc<crate::events::webhook::Hook>>,
    /// One-click unsubscribe links (`[unsubscribe]`), with their secrets.
    pub unsubscribe: Option<Arc<crate::unsubscribe::Links>>,
    /// HTTPS on the unsubscribe listener, when `unsubscribe.cert_file` is
    /// set.
    pub unsubscribe_tls: Option<(Arc<rustls::ServerConfig>, Arc<crate::tls::CertReloader>)>,
}

/// Every check `serve` makes before it binds anything, on the files the
/// config names: certificates and keys, the CA bundle, the users file,
/// tokens, DKIM keys, the delivery log's directory, and the directories
/// serve writes (spool, suppression list, kept malformed reports), each
/// writable (or creatable) by the user that runs it. Every problem is reported, each
/// with the key that names the file. `check-config` runs it too.
pub fn preflight(cfg: &Config) -> Result<Loaded, Problems> {
    let mut p = Problems::default();
    let mut loaded = Loaded {
        users: None,
        inbound_tls: None,
        verified: None,
        webpki: None,
        admin_token: None,
        inject_token: None,
        inject_tls: None,
        dkim: None,
        classifier: Arc::new(crate::classify::Classifier::default_rules()),
        shaping: Arc::default(),
        webhooks: Vec::new(),
        unsubscribe: None,
        unsubscribe_tls: None,
    };
    load_tls(cfg, &mut loaded, &mut p);
    load_unsubscribe(cfg, &mut loaded, &mut p);
    match crate::events::webhook::Hook::load_all(&cfg.events) {
        Ok(hooks) => loaded.webhooks = hooks,
        Err(e) => p.at("events.webhook", e),
    }
    if cfg.submission.enabled() && !cfg.submission.users_file.is_empty() {
        match Users::load(cfg.submission.users_file.as_ref()) {
            Ok(users) => loaded.users = Some(Arc::new(users)),
            Err(e) => p.at("submission.users_file", e),
        }
    }
    match crate::scheduler::shaping::Shaping::load(&cfg.delivery.shaping_file) {
        Ok(s) => loaded.shaping = Arc::new(s),
        Err(e) => p.at("delivery.shaping_file", e),
    }
    load_verified(cfg, &mut loaded, &mut p);
    for (key, path, token) in [
        (
            "admin.token_file",
            &cfg.admin.token_file,
            &mut loaded.admin_token,
        ),
        (
            "inject.token_file",
            &cfg.inject.token_file,
            &mut loaded.inject_token,
        ),
    ] {
        match read_token(path) {
            Ok(t) => *token = t,
            Err(e) => p.at(key, e),
        }
    }
    match load_classifier(&cfg.bounce_classifier) {
        Ok(c) => loaded.classifier = Arc::new(c),
        Err(e) => p.at("bounce_classifier.rules_file", e),
    }
    match crate::dkim::Signer::load(&cfg.dkim) {
        Ok(signer) => loaded.dkim = signer.map(Arc::new),
        Err(problems) => {
            for (key, e) in problems.0 {
                p.at(key, e.to_string());
            }
        }
    }
    if let Some(problem) = log_target_problem(&cfg.delivery.log) {
        p.at("delivery.log", problem);
    }
    check_written_dirs(cfg, &mut p);
    match p.is_empty() {
        true => Ok(loaded),
        false => Err(p),
    }
}

/// The inbound and injection certificates.
fn load_tls(cfg: &Config, loaded: &mut Loaded, p: &mut Problems) {
    if cfg.inject.tls() {
        let (cert, key) = (&cfg.inject.cert_file, &cfg.inject.key_file);
        match crate::tls::CertReloader::load(cert.as_ref(), key.as_ref()) {
            Ok(loaded_tls) => loaded.inject_tls = Some(loaded_tls),
            Err(e @ crate::tls::TlsError::Key { .. }) => p.at("inject.key_file", e.to_string()),
            Err(e) => p.at("inject.cert_file", e.to_string()),
        }
    }
    if cfg.tls.inbound() && !cfg.tls.key_file.is_empty() {
        match crate::tls::server_config(cfg.tls.cert_file.as_ref(), cfg.tls.key_file.as_ref()) {
            Ok(tls) => loaded.inbound_tls = Some(tls),
            Err(e @ crate::tls::TlsError::Key { .. }) => p.at("tls.key_file", e.to_string()),
            Err(e) => p.at("tls.cert_file", e.to_string()),
        }
    }
}

/// `[unsubscribe]`'s secrets and certificate.
fn load_unsubscribe(cfg: &Config, loaded: &mut Loaded, p: &mut Problems) {
    let u = &cfg.unsubscribe;
    if !u.is_on() || u.secret_file.is_empty() {
        return;
    }
    match crate::unsubscribe::Keyring::load(&u.secret_file) {
        Ok(keyring) => {
            loaded.unsubscribe = Some(Arc::new(crate::unsubscribe::Links {
                keyring,
                base_url: u.base_url.clone(),
                mailto: Some(u.mailto.clone()).filter(|m| !m.is_empty()),
                pools: u.pools.clone(),
            }))
        }
        Err(e) => p.at("unsubscribe.secret_file", e.to_string()),
    }
    if !u.cert_file.is_empty() {
        match crate::tls::CertReloader::load(u.cert_file.as_ref(), u.key_file.as_ref()) {
            Ok(tls) => loaded.unsubscribe_tls = Some(tls),
            Err(e @ crate::tls::TlsError::Key { .. }) => {
                p.at("unsubscribe.key_file", e.to_string())
            }
            Err(e) => p.at("unsubscribe.cert_file", e.to_string()),
        }
    }
}

/// The CA bundle outbound TLS verifies with, when something needs it
/// (after the shaping rules are read).
fn load_verified(cfg: &Config, loaded: &mut Loaded, p: &mut Problems) {
    if cfg.tls.requires_verification() {
        match crate::tls::verified_pair(cfg.tls.ca_file.as_ref()) {
            Ok((v, w)) => (loaded.verified, loaded.webpki) = (Some(v), Some(w)),
            Err(e) => p.at("tls.ca_file", e.to_string()),
        }
    } else if loaded.shaping.requires_tls() || cfg.tls.mta_sts || cfg.tls_reporting.is_on() {
        // Only some sites' rules ask for it (and a reload may add more):
        // without the bundle their mail waits with a clear reason
        // ("TLS is required but no CA file is loaded"), the rest flows.
        match crate::tls::verified_pair(cfg.tls.ca_file.as_ref()) {
            Ok((v, w)) => (loaded.verified, loaded.webpki) = (Some(v), Some(w)),
            Err(e) => log::warn!(
                "tls.ca_file: {e}; mail to sites whose shaping rule requires TLS will wait, \
                 receivers' MTA-STS policies cannot be fetched nor TLS reports posted"
            ),
        }
    }
}

/// The operator's rules file (if any), then ringpost's own rules.
fn load_classifier(
    cfg: &crate::config::BounceClassifierConfig,
) -> Result<crate::classify::Classifier, String> {
    let own = match cfg.rules_file.as_str() {
        "" => None,
        path => Some(std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?),
    };
    let mut files: Vec<(&str, &str)> = Vec::new();
    if let Some(text) = &own {
        files.push((cfg.rules_file.as_str(), text));
    }
    if cfg.default_rules {
        files.push(("ringpost's default rules", crate::classify::DEFAULT_RULES));
    }
    crate::classify::Classifier::new(&files).map_err(|e| e.to_string())
}

/// The directories serve writes, each writable (or creatable) by the user
/// that runs this.
fn check_written_dirs(cfg: &Config, p: &mut Problems) {
    let spool = &cfg.spool.dir;
    let mut dirs = vec![("spool.dir", spool.clone())];
    if cfg.suppression.enabled {
        dirs.push(("suppression.dir", cfg.suppression.dir(spool)));
    }
    if cfg.feedback.is_on() {
        dirs.push(("feedback.malformed_dir", cfg.feedback.malformed_dir(spool)));
    }
    for (key, dir) in dirs {
        if let Some(problem) = unwritable_dir(&dir) {
            p.at(key, problem);
        }
    }
}

/// Why this process could not write in `dir`, or create it (the nearest
/// directory that exists must then be writable): checked with the
/// process's own user and groups (access(2)).
fn unwritable_dir(dir: &std::path::Path) -> Option<String> {
    use std::os::unix::ffi::OsStrExt;
    let can = |p: &std::path::Path| {
        let Ok(c) = std::ffi::CString::new(p.as_os_str().as_bytes()) else {
            return false;
        };
        // SAFETY: a NUL-terminated path, read by the kernel only.
        unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) == 0 }
    };
    if dir.exists() {
        return match (dir.is_dir(), can(dir)) {
            (false, _) => Some(format!("{} is not a directory", dir.display())),
            (true, false) => Some(format!(
                "{}: not writable by this user (uid {})",
                dir.display(),
                // SAFETY: getuid cannot fail.
                unsafe { libc::getuid() }
            )),
            (true, true) => None,
        };
    }
    let parent = dir.ancestors().skip(1).find(|a| a.is_dir())?;
    (!can(parent)).then(|| {
        format!(
            "{} does not exist and {} is not writable by this user (uid {}) to make it",
            dir.display(),
            parent.display(),
            // SAFETY: getuid cannot fail.
            unsafe { libc::getuid() }
        )
    })
}

/// Whether the delivery log can be appended to, without creating it.
fn log_target_problem(target: &str) -> Option<String> {
    if matches!(target, "stdout" | "off") {
        return None;
    }
    let path = std::path::Path::new(target);
    if path.exists() {
        return std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .err()
            .map(|e| format!("{target}: {e}"));
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    match dir.is_dir() {
        true => unwritable_dir(dir).map(|why| format!("{target}: {why}")),
        false => Some(format!(
            "{target}: the directory {} does not exist",
            dir.display()
        )),
    }
}

/// A bearer token (admin or injection): the first line of `path`; none
/// when unset.
fn read_token(path: &str) -> Result<Option<String>, String> {
    if path.is_empty() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    let token = text.lines().next().unwrap_or("").trim().to_string();
    match token.len() {
        16.. => Ok(Some(token)),
        _ => Err(format!("{path}: the token must be at least 16 characters")),
    }
}
