//! Receivers' MTA-STS policies (RFC 8461), as delivery applies them: which
//! policy holds for a domain now, from a cache per shard.
//!
//! Owns: [`Policies`], one per shard. For a domain it looks up the
//! `_mta-sts` TXT record (at most every [`RECHECK_SECS`] per domain),
//! fetches the policy when the record's `id` is new (`mta_sts::fetch`,
//! over TLS verified against `tls.ca_file`), and keeps it until its
//! `max_age` runs out. As RFC 8461 §5.1 says: a record that disappears,
//! or a fetch that fails, leaves a cached policy in force until it
//! expires; a domain with no policy known is delivered to as before.
//! Fetched policies are kept in the shard's spool (`queue::kept`) and
//! read back at start-up, so a restart does not forget them.
//! What a policy does to an attempt (only matching MX hosts, verified
//! TLS) is the scheduler's (`scheduler::attempt`).
//!
//! May call: `dns` (the TXT record), `mta_sts` (the policy file),
//! `queue` (its kept tree `mta_sts`), the shard's clock. Must not: block a domain's mail on another's fetch: a
//! fetch runs in the attempt of the domain that needs it, bounded by the
//! fetch timeout.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use mail_auth::common::parse::TxtRecordParser;
use mail_auth::mta_sts::MtaSts;

use crate::dns::{DnsError, Resolver};
use crate::mta_sts::{FetchError, Mode, Policy};
use crate::queue::kept::Kept;
use crate::shard::clock::Clock;
use mail_auth::report::tlsrpt::ResultType;

/// How often a domain's `_mta-sts` record is looked at again while its
/// policy is cached (a changed `id` means a new policy to fetch).
pub const RECHECK_SECS: u64 = 300;

/// Longest a policy fetch may take (connect to the end of the file).
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// A policy fetched, under the TXT record `id` it was published with;
/// kept in the shard's spool (`queue::kept`) as JSON, so that a restart
/// keeps it in force while its policy host is down.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct Fetched {
    id: String,
    policy: Policy,
    /// Unix seconds: the policy's `max_age` from its fetch.
    expires: u64,
}

/// What a shard knows of a domain: when its record was last looked at,
/// and its policy, if one was fetched and has not expired.
struct Known {
    checked: u64,
    fetched: Option<Fetched>,
    /// The domain publishes a policy that could not be had (and none is
    /// cached): why, as a TLS report names it (RFC 8460 §4.3.2.2).
    failed: Option<PolicyFailure>,
}

/// A policy that could not be had: the result type and what went wrong.
pub type PolicyFailure = (ResultType, String);

/// The RFC 8460 result type of a policy fetch that failed with `e`.
pub fn result_of_fetch_error(e: &FetchError) -> ResultType {
    match e {
        FetchError::Tls(..) => ResultType::StsWebpkiInvalid,
        FetchError::Policy(_) | FetchError::ContentType(_) | FetchError::TooLarge => {
            ResultType::StsPolicyInvalid
        }
        _ => ResultType::StsPolicyFetchError,
    }
}

/// The policies of the domains a shard delivers to.
pub struct Policies {
    resolver: Resolver,
    /// Verifies the policy hosts' certificates.
    tls: Arc<rustls::ClientConfig>,
    /// Domains whose policy is not applied (`tls.mta_sts_ignore`).
    ignore: HashSet<String>,
    clock: Clock,
    /// Where fetched policies are kept across restarts.
    kept: Kept,
    known: RefCell<HashMap<String, Known>>,
    /// Domains whose record is being looked at, and the attempts waiting
    /// for the answer.
    waiting: RefCell<HashMap<String, Vec<Waiter>>>,
}

type Waiter = futures::channel::oneshot::Sender<Option<Fetched>>;

/// The attempt that looks at a domain's record: however it ends (done,
/// or dropped mid-way), the domain is no longer being looked at, and
/// waiters left unanswered see their sender dropped.
struct Looking<'a> {
    waiting: &'a RefCell<HashMap<String, Vec<Waiter>>>,
    domain: &'a str,
}

impl Drop for Looking<'_> {
    fn drop(&mut self) {
        self.waiting.borrow_mut().remove(self.domain);
    }
}

impl Policies {
    pub fn new(
        resolver: Resolver,
        tls: Arc<rustls::ClientConfig>,
        ignore: &[String],
        clock: Clock,
        kept: Kept,
    ) -> Policies {
        // What earlier runs fetched, its record to be looked at again.
        let known = kept
            .entries()
            .into_iter()
            .filter_map(|(domain, json)| {
                let fetched = serde_json::from_slice::<Fetched>(&json).ok()?;
                Some((
                    domain,
                    Known {
                        checked: 0,
                        fetched: Some(fetched),
                        failed: None,
                    },
                ))
            })
            .collect();
        Policies {
            resolver,
            tls,
            ignore: ignore.iter().map(|d| d.to_ascii_lowercase()).collect(),
            clock,
            kept,
            known: RefCell::new(known),
            waiting: RefCell::new(HashMap::new()),
        }
    }

    /// The policy in force for `domain` (lower case), if any (`mode:
    /// none` counts as none). Most calls answer from what the shard knows;
    /// every [`RECHECK_SECS`] the record is looked at again, by one
    /// attempt while the domain's others wait for its answer (no mail
    /// goes out under less than a policy being fetched).
    pub async fn policy_for(&self, domain: &str) -> Option<Policy> {
        if self.ignore.contains(domain) {
            counted("ignored");
            return None;
        }
        let now = self.clock.now();
        // The common case: looked at lately; only the policy is copied.
        if let Some(k) = self.known.borrow().get(domain)
            && now < k.checked + RECHECK_SECS
        {
            return k
                .fetched
                .as_ref()
                .filter(|f| now < f.expires && f.policy.mode != Mode::None)
                .map(|f| f.policy.clone());
        }
        let kept = self
            .known
            .borrow()
            .get(domain)
            .and_then(|k| k.fetched.as_ref().filter(|f| now < f.expires).cloned());
        // One attempt looks; the others wait for its answer (no borrow is
        // held across an await).
        let waiter = {
            let mut waiting = self.waiting.borrow_mut();
            match waiting.get_mut(domain) {
                Some(list) => {
                    let (tx, rx) = futures::channel::oneshot::channel();
                    list.push(tx);
                    Some(rx)
                }
                None => {
                    waiting.insert(domain.to_string(), Vec::new());
                    None
                }
            }
        };
        let fetched = match waiter {
            // The looker was dropped (its attempt cancelled): what is kept.
            Some(rx) => rx.await.unwrap_or(kept),
            None => {
                let _looking = Looking {
                    waiting: &self.waiting,
                    domain,
                };
                let (fetched, failed) = self.refresh(domain, kept).await;
                self.known.borrow_mut().insert(
                    domain.to_string(),
                    Known {
                        checked: now,
                        fetched: fetched.clone(),
                        failed,
                    },
                );
                let waiters = self.waiting.borrow_mut().remove(domain);
                for tx in waiters.unwrap_or_default() {
                    let _ = tx.send(fetched.clone());
                }
                fetched
            }
        };
        fetched.map(|f| f.policy).filter(|p| p.mode != Mode::None)
    }

    /// Why `domain`'s published policy could not be had when its record
    /// was last looked at, if it could not and none is cached (for TLS
    /// reports).
    pub fn failure_of(&self, domain: &str) -> Option<PolicyFailure> {
        self.known.borrow().get(domain)?.failed.clone()
    }

    /// Looks at the TXT record again and fetches the policy when its id
    /// is new. `kept` (the unexpired policy known) stays in force through
    /// a missing record or a failed lookup or fetch (RFC 8461 §5.1). With
    /// no policy: why the one published could not be had, if one is.
    async fn refresh(
        &self,
        domain: &str,
        kept: Option<Fetched>,
    ) -> (Option<Fetched>, Option<PolicyFailure>) {
        let id = match self.record_id(domain).await {
            Ok(Some(id)) => id,
            Ok(None) => {
                counted(if kept.is_some() { "cached" } else { "none" });
                return (kept, None);
            }
            Err(e) => {
                counted("dns_failed");
                log::debug!("MTA-STS record of {domain}: {e}");
                return (kept, None);
            }
        };
        if kept.as_ref().is_some_and(|k| k.id == id) {
            counted("cached");
            return (kept, None);
        }
        let fetched =
            crate::mta_sts::fetch(&self.resolver, domain, self.tls.clone(), FETCH_TIMEOUT).await;
        match fetched {
            Ok(policy) => {
                counted("fetched");
                let fetched = Fetched {
                    id,
                    expires: self.clock.now().saturating_add(policy.max_age),
                    policy,
                };
                let stored = serde_json::to_vec(&fetched)
                    .map_err(|e| e.to_string())
                    .and_then(|json| self.kept.put(domain, &json).map_err(|e| e.to_string()));
                if let Err(e) = stored {
                    log::warn!("keeping the MTA-STS policy of {domain}: {e}");
                }
                (Some(fetched), None)
            }
            Err(e) => {
                counted("fetch_failed");
                log::debug!("MTA-STS policy of {domain}: {e}");
                let failed = kept.is_none().then(|| {
                    (
                        result_of_fetch_error(&e),
                        format!("the MTA-STS policy of {domain} could not be fetched: {e}"),
                    )
                });
                (kept, failed)
            }
        }
    }

    /// The `id` of `_mta-sts.DOMAIN`'s one valid record; None when there
    /// is none (or several: RFC 8461 §3.1, as none).
    async fn record_id(&self, domain: &str) -> Result<Option<String>, DnsError> {
        let records = match self.resolver.txt(&format!("_mta-sts.{domain}")).await {
            Ok(r) => r,
            Err(DnsError::NoSuchDomain | DnsError::NoAddress) => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut valid = records
            .iter()
            .filter(|r| r.len() >= 7 && r[..7].eq_ignore_ascii_case(b"v=STSv1"))
            .filter_map(|r| MtaSts::parse(r).ok());
        match (valid.next(), valid.next()) {
            (Some(one), None) => Ok(Some(one.id.clone())),
            _ => Ok(None),
        }
    }
}

fn counted(result: &'static str) {
    ::metrics::counter!(crate::metrics::MTA_STS_LOOKUPS, "result" => result).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_fetch_is_named_as_tls_reports_name_it() {
        let io = || std::io::Error::other("x");
        assert_eq!(
            result_of_fetch_error(&FetchError::Connect("h".into(), io())),
            ResultType::StsPolicyFetchError
        );
        assert_eq!(
            result_of_fetch_error(&FetchError::Status(404)),
            ResultType::StsPolicyFetchError
        );
        assert_eq!(
            result_of_fetch_error(&FetchError::Tls("h".into(), io())),
            ResultType::StsWebpkiInvalid
        );
        assert_eq!(
            result_of_fetch_error(&FetchError::Policy(crate::mta_sts::PolicyError::Mode)),
            ResultType::StsPolicyInvalid
        );
    }
}
