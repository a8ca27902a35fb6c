//! AUTH (RFC 4954) on the submission listener: PLAIN and LOGIN, only over
//! TLS, against a file of users with argon2 password hashes.
//!
//! Owns: [`Users`] (the users file), [`FailureLimiter`] (failed attempts
//! per client IP, per shard), and [`authenticate`], the challenge/response
//! exchange. Password hashes are checked on the executor's blocking thread:
//! argon2 is slow on purpose and must not stall the shard's sessions.
//!
//! Must not: decide relay policy (the session does, from the result).
//!
//! Security: credentials are never logged; unknown users cost the same
//! hash check as known ones, so timing does not tell which names exist;
//! an IP over its failure budget is disconnected with 421.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordVerifier};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

use super::SmtpService;
use super::conn::{Conn, is_timeout};
use super::data::Step;
use super::session::Session;
use crate::proto::line::{LineEvent, LineSplitter};
use crate::proto::reply::{Rejection, Reply};

/// A valid argon2id hash of a random password, checked for unknown users.
const DECOY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$2x1Xcd2m7bqsC7fb8BWw6P5Uq0hDb0K5j3PXxWrGS2o";

/// Users who may submit: name -> PHC hash string.
pub struct Users {
    hashes: HashMap<String, String>,
}

impl Users {
    /// Reads `name:hash` lines; `#` starts a comment line.
    pub fn load(path: &Path) -> Result<Users, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Users::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Users, String> {
        let mut hashes = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, hash) = line
                .split_once(':')
                .ok_or(format!("line {}: expected name:hash", n + 1))?;
            PasswordHash::new(hash).map_err(|e| format!("line {}: {e}", n + 1))?;
            hashes.insert(name.to_string(), hash.to_string());
        }
        Ok(Users { hashes })
    }

    /// Blocking: one argon2 verification, for known and unknown names alike.
    pub fn verify(&self, user: &str, password: &[u8]) -> bool {
        let (hash, known) = match self.hashes.get(user) {
            Some(h) => (h.as_str(), true),
            None => (DECOY_HASH, false),
        };
        let ok = PasswordHash::new(hash)
            .map(|h| {
                argon2::Argon2::default()
                    .verify_password(password, &h)
                    .is_ok()
            })
            .unwrap_or(false);
        ok && known
    }
}

/// Failed AUTH attempts per client IP within a window, on one shard.
pub struct FailureLimiter {
    max: u32,
    window: Duration,
    failures: RefCell<HashMap<IpAddr, (u32, Instant)>>,
}

impl FailureLimiter {
    pub fn new(max: u32, window: Duration) -> FailureLimiter {
        FailureLimiter {
            max,
            window,
            failures: RefCell::default(),
        }
    }

    pub fn blocked(&self, ip: IpAddr) -> bool {
        let mut f = self.failures.borrow_mut();
        match f.get(&ip) {
            Some((_, since)) if since.elapsed() > self.window => {
                f.remove(&ip);
                false
            }
            Some((n, _)) => *n >= self.max,
            None => false,
        }
    }

    pub fn record_failure(&self, ip: IpAddr) {
        let mut f = self.failures.borrow_mut();
        if f.len() > 100_000 {
            // Bounded: forget stale entries rather than grow without limit.
            f.retain(|_, (_, since)| since.elapsed() <= self.window);
        }
        let entry = f.entry(ip).or_insert((0, Instant::now()));
        entry.0 += 1;
    }
}

/// Runs the AUTH exchange for `mechanism` (PLAIN or LOGIN).
pub async fn authenticate(
    conn: &mut Conn,
    session: &mut Session<'_>,
    service: &SmtpService,
    mechanism: &str,
    initial: Option<String>,
) -> Step {
    let ip = session.client_ip();
    let (Some(users), limiter) = (&service.users, &service.auth_failures) else {
        return Step::Reply(Rejection::NotImplemented.reply());
    };
    if limiter.blocked(ip) {
        return Step::Close(Rejection::TooManyAuthFailures.reply());
    }
    let credentials = match mechanism {
        "PLAIN" => plain(conn, service, initial).await,
        _ => login(conn, service, initial).await,
    };
    let (user, password) = match credentials {
        Ok(c) => c,
        Err(outcome) => return outcome,
    };
    let users = users.clone();
    let check_user = user.clone();
    let ok = glommio::executor()
        .spawn_blocking(move || users.verify(&check_user, &password))
        .await;
    if ok {
        log::info!("{ip}: authenticated as {user}");
        session.authenticated = Some(user);
        return Step::Reply(Reply::new(235, "2.7.0", "Authentication successful"));
    }
    limiter.record_failure(ip);
    log::warn!("{ip}: failed AUTH {mechanism}");
    if limiter.blocked(ip) {
        return Step::Close(Rejection::TooManyAuthFailures.reply());
    }
    Step::Reply(Rejection::AuthFailed.reply())
}

type Credentials = Result<(String, Vec<u8>), Step>;

/// PLAIN (RFC 4616): authzid NUL authcid NUL password, base64.
async fn plain(conn: &mut Conn, service: &SmtpService, initial: Option<String>) -> Credentials {
    let response = match initial {
        Some(i) => i.into_bytes(),
        None => challenge(conn, service, "").await?,
    };
    let raw = decode(&response)?;
    let mut parts = raw.split(|&b| b == 0);
    let (Some(authz), Some(authc), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Step::Reply(Rejection::AuthCancelled.reply()));
    };
    // No proxy authorization: authzid must be empty or the same user.
    if !authz.is_empty() && authz != authc {
        return Err(Step::Reply(Rejection::AuthFailed.reply()));
    }
    Ok((
        String::from_utf8_lossy(authc).into_owned(),
        password.to_vec(),
    ))
}

/// LOGIN (draft-murchison-sasl-login): username, then password, base64.
async fn login(conn: &mut Conn, service: &SmtpService, initial: Option<String>) -> Credentials {
    let user = match initial {
        Some(i) => decode(i.as_bytes())?,
        None => decode(&challenge(conn, service, "VXNlcm5hbWU6").await?)?,
    };
    let password = decode(&challenge(conn, service, "UGFzc3dvcmQ6").await?)?;
    Ok((String::from_utf8_lossy(&user).into_owned(), password))
}

fn decode(b64: &[u8]) -> Result<Vec<u8>, Step> {
    if b64 == b"*" {
        return Err(Step::Reply(Rejection::AuthCancelled.reply()));
    }
    B64.decode(b64)
        .map_err(|_| Step::Reply(Rejection::Syntax("invalid base64 in AUTH response").reply()))
}

/// Sends a 334 challenge and reads the client's one-line response.
async fn challenge(conn: &mut Conn, service: &SmtpService, text: &str) -> Result<Vec<u8>, Step> {
    conn.queue(&Reply::plain(334, vec![text.to_string()]));
    let mut splitter = LineSplitter::new(service.cfg.smtp.max_command_line);
    loop {
        match splitter.next(conn.pending()) {
            LineEvent::Line { len, consumed, .. } => {
                let line = conn.pending()[..len].to_vec();
                conn.consume(consumed);
                return Ok(line);
            }
            LineEvent::TooLong { .. } | LineEvent::Skipped { .. } => {
                conn.discard_pending();
                return Err(Step::Reply(Rejection::LineTooLong.reply()));
            }
            LineEvent::Incomplete => match conn.fill().await {
                Ok(0) => return Err(Step::Disconnected),
                Ok(_) => {}
                Err(e) if is_timeout(&e) => return Err(Step::Close(Rejection::Timeout.reply())),
                Err(_) => return Err(Step::Disconnected),
            },
        }
    }
}

/// A new argon2id hash of `password`, for the users file.
pub fn hash_password(password: &[u8]) -> Result<String, String> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let salt_bytes: [u8; 16] = rand::random();
    let salt = SaltString::encode_b64(&salt_bytes).map_err(|e| e.to_string())?;
    argon2::Argon2::default()
        .hash_password(password, &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_file_and_verification() {
        let hash = hash_password(b"secret").unwrap();
        let users = Users::parse(&format!("# users\nalice:{hash}\n")).unwrap();
        assert!(users.verify("alice", b"secret"));
        assert!(!users.verify("alice", b"wrong"));
        assert!(!users.verify("bob", b"secret"));
        assert!(Users::parse("alice").is_err());
        assert!(Users::parse("alice:not-a-hash").is_err());
        assert!(PasswordHash::new(DECOY_HASH).is_ok());
    }

    #[test]
    fn limiter_blocks_after_max_failures() {
        let l = FailureLimiter::new(2, Duration::from_secs(60));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(!l.blocked(ip));
        l.record_failure(ip);
        assert!(!l.blocked(ip));
        l.record_failure(ip);
        assert!(l.blocked(ip));
        assert!(!l.blocked("192.0.2.2".parse().unwrap()));
    }
}
