//! The TLS a destination's receivers ask for, applied to an attempt's
//! targets before it connects: DANE (RFC 7672) per MX host, then the
//! domain's MTA-STS policy (RFC 8461).
//!
//! DANE: with `dns.dnssec` and `tls.dane`, each MX host whose MX and
//! address answers were DNSSEC-secure has its TLSA records looked up at
//! `_PORT._tcp.HOST` (hickory caches them per their TTL). Secure records
//! go with the target (`Target::dane`): outbound then requires TLS
//! checked against them. A TLSA answer that fails validation or cannot
//! be had takes the host out of this attempt; with no host left the mail
//! waits (`451 4.7.5`), never going out with less, and is counted as
//! `dnssec-invalid` for TLS reports. A shaping rule with `dane = false`
//! or `mta_sts = false` leaves that policy out for the mail it fits.
//!
//! May call: `outbound` (targets, the router's resolver), `dane` (the
//! TLSA set), `mta_sts` (the policy's mode) through `outbound::sts`,
//! `tlsrpt` (the policy as a TLS report names it, and the shard's tally of
//! sessions, `outbound::Delivery::tls_sessions`, for failed TLSA lookups).
//! Must not: connect, or change the schedule's state.

use std::collections::HashMap;
use std::sync::Arc;

use super::Scheduler;
use super::shaping::Rule;
use crate::config::OutboundTls;
use crate::dane::TlsaSet;
use crate::outbound::sts::PolicyFailure;
use crate::outbound::{DeliveryOutcome, Target};
use crate::tlsrpt::{PolicyKey, Session};
use mail_auth::report::tlsrpt::ResultType;

/// The targets an attempt may use, and the TLS they need.
pub(super) struct Destination {
    pub targets: Vec<Target>,
    /// At least this, before a shaping rule raises it; a target with TLSA
    /// records needs TLS checked against them whatever this says.
    pub tls: OutboundTls,
    /// The domain's MTA-STS policy (enforce or testing), as a TLS report
    /// names it, and whether it is in testing mode.
    pub sts: Option<PolicyKey>,
    pub sts_testing: bool,
    /// An MTA-STS policy (enforce or testing) holds (the delivery log's
    /// `tls_policy`).
    pub mta_sts: bool,
    /// The domain publishes an MTA-STS policy that could not be had:
    /// delivered to as before, the sessions reported as this failure.
    pub sts_failure: Option<PolicyFailure>,
}

/// An attempt the destination's TLS policy stops before it connects: the
/// outcome, the policy (as the delivery log's `tls_policy` names it) and
/// the failure (as TLS reports name it).
pub(super) struct Refused {
    pub outcome: DeliveryOutcome,
    pub policy: &'static str,
    pub failure: &'static str,
}

impl Destination {
    fn plain(targets: Vec<Target>, tls: OutboundTls) -> Destination {
        Destination {
            targets,
            tls,
            sts: None,
            sts_testing: false,
            mta_sts: false,
            sts_failure: None,
        }
    }
}

impl Scheduler {
    /// The targets mail for `domain` may go to now, with the TLS each
    /// needs: DANE's TLSA records per host, then MTA-STS for the rest;
    /// either left out where the shaping rule that fits says so.
    pub(super) async fn tls_policy(
        &self,
        domain: &str,
        targets: Vec<Target>,
        rule: Option<&Rule>,
    ) -> Result<Destination, Refused> {
        // DANE only for hosts whose MX and address answers were secure.
        let targets = match targets.iter().any(|t| t.secure) && self.dane_applies(domain, rule) {
            true => self.under_dane(domain, targets).await?,
            false => targets,
        };
        if rule.is_some_and(|r| !r.mta_sts) && self.sts.is_some() && self.router.is_mx(domain) {
            ::metrics::counter!(crate::metrics::MTA_STS_LOOKUPS, "result" => "ignored")
                .increment(1);
            return Ok(Destination::plain(targets, self.cfg.tls.policy_for(domain)));
        }
        self.under_sts(domain, targets).await
    }

    /// Whether DANE is looked for in mail to `domain` (that `rule` fits).
    fn dane_applies(&self, domain: &str, rule: Option<&Rule>) -> bool {
        let tls = &self.cfg.tls;
        if !(self.cfg.dns.dnssec && tls.dane && self.router.is_mx(domain)) {
            return false;
        }
        if rule.is_some_and(|r| !r.dane)
            || tls
                .dane_ignore
                .iter()
                .any(|d| d.eq_ignore_ascii_case(domain))
        {
            looked_up("ignored");
            return false;
        }
        true
    }

    /// The TLSA records of `host` for delivery on `port`.
    async fn tlsa_of(&self, host: &str, port: u16) -> TlsaLookup {
        let name = format!("_{port}._tcp.{host}");
        match self.router.resolver().tlsa(&name).await {
            Ok(Some(records)) if !records.is_empty() => {
                let set = TlsaSet::new(&name, &records);
                looked_up(match set.usable.is_empty() {
                    true => "unusable",
                    false => "records",
                });
                Ok(Some(Arc::new(set)))
            }
            Ok(_) => {
                looked_up("none");
                Ok(None)
            }
            Err(e) => {
                looked_up("failed");
                Err(e.to_string())
            }
        }
    }

    /// `targets` with their TLSA records (DANE) where DNSSEC-secure ones
    /// exist; hosts whose TLSA answer failed are left out.
    async fn under_dane(&self, domain: &str, targets: Vec<Target>) -> Result<Vec<Target>, Refused> {
        let mut found: HashMap<(String, u16), TlsaLookup> = HashMap::new();
        for t in targets.iter().filter(|t| t.secure) {
            if let std::collections::hash_map::Entry::Vacant(slot) =
                found.entry((t.host.clone(), t.addr.port()))
            {
                slot.insert(self.tlsa_of(&t.host, t.addr.port()).await);
            }
        }
        let mut failed = Vec::new();
        let kept: Vec<Target> = targets
            .into_iter()
            .filter_map(|mut t| {
                if !t.secure {
                    return Some(t);
                }
                match &found[&(t.host.clone(), t.addr.port())] {
                    Ok(set) => {
                        t.dane = set.clone();
                        Some(t)
                    }
                    Err(why) => {
                        failed.push((t.host.clone(), format!("{}: {why}", t.host)));
                        None
                    }
                }
            })
            .collect();
        failed.dedup();
        for (host, why) in &failed {
            self.tlsa_failed(domain, host, why);
        }
        if kept.is_empty() {
            let failed: Vec<String> = failed.into_iter().map(|(_, why)| why).collect();
            return Err(Refused {
                outcome: DeliveryOutcome::Temporary {
                    reply: format!(
                        "451 4.7.5 DANE: no MX host of {domain} can be checked: {}",
                        failed.join("; ")
                    ),
                },
                policy: "dane",
                failure: crate::tlsrpt::result_str(ResultType::DnssecInvalid),
            });
        }
        Ok(kept)
    }

    /// Counts an MX host left out because its TLSA records could not be
    /// had (bogus, SERVFAIL, no answer): RFC 8460's `dnssec-invalid`, in
    /// the metric and, with reports on, as a failed session of the
    /// domain's DANE policy (one per attempt it kept from the host).
    fn tlsa_failed(&self, domain: &str, host: &str, why: &str) {
        let result = ResultType::DnssecInvalid;
        ::metrics::counter!(crate::metrics::OUTBOUND_TLS_SESSIONS, "policy" => "dane", "result" => crate::tlsrpt::result_str(result))
            .increment(1);
        if !self.cfg.tls_reporting.is_on() {
            return;
        }
        let session = Session {
            mx_host: Some(host.to_string()),
            receiving_ip: None,
            sending_ip: None,
            failure: Some((result, why.to_string())),
        };
        self.delivery.tls_sessions.borrow_mut().record(
            self.clock.now(),
            &PolicyKey::tlsa(domain, Vec::new()),
            &session,
        );
    }

    /// The targets mail for `domain` may go to and the TLS it needs
    /// there (before a shaping rule raises it): `[tls]`'s policy, unless
    /// the domain's MTA-STS policy (`outbound::sts`) is enforced: then
    /// only the MX hosts it names, over verified TLS, and none at all (a
    /// deferral that says why) when it names none of them.
    pub(super) async fn under_sts(
        &self,
        domain: &str,
        targets: Vec<Target>,
    ) -> Result<Destination, Refused> {
        let tls = self.cfg.tls.policy_for(domain);
        let Some(sts) = self.sts.as_ref().filter(|_| self.router.is_mx(domain)) else {
            return Ok(Destination::plain(targets, tls));
        };
        let Some(policy) = sts.policy_for(domain).await else {
            return Ok(Destination {
                sts_failure: sts.failure_of(domain),
                ..Destination::plain(targets, tls)
            });
        };
        // Named for TLS reports only when they are made.
        let key = self
            .cfg
            .tls_reporting
            .is_on()
            .then(|| PolicyKey::sts(domain, policy.lines()));
        let mode = policy.mode.as_str();
        let applied = |result: &'static str| {
            ::metrics::counter!(crate::metrics::MTA_STS_APPLIED, "mode" => mode, "result" => result)
                .increment(1);
        };
        if policy.mode != crate::mta_sts::Mode::Enforce {
            applied(match targets.iter().any(|t| policy.allows(&t.host)) {
                true => "ok",
                false => "mx_mismatch",
            });
            let testing = policy.mode == crate::mta_sts::Mode::Testing;
            return Ok(Destination {
                sts: key.filter(|_| testing),
                sts_testing: testing,
                mta_sts: testing,
                ..Destination::plain(targets, tls)
            });
        }
        // A host DANE covers is checked by its TLSA records instead
        // (RFC 8461 §2: DANE wins where both apply).
        let (kept, outside): (Vec<Target>, Vec<Target>) = targets
            .into_iter()
            .partition(|t| t.dane.is_some() || policy.allows(&t.host));
        if kept.is_empty() {
            applied("mx_mismatch");
            let hosts: Vec<&str> = outside.iter().map(|t| t.host.as_str()).collect();
            return Err(Refused {
                outcome: DeliveryOutcome::Temporary {
                    reply: format!(
                        "451 4.7.5 MTA-STS: no MX host of {domain} ({}) is in its enforced policy (mx: {}); waiting",
                        hosts.join(", "),
                        policy.mx.join(" ")
                    ),
                },
                policy: "mta-sts",
                // RFC 8460 §4.3.1: no category above fits an MX host
                // outside the policy.
                failure: crate::tlsrpt::result_str(ResultType::ValidationFailure),
            });
        }
        applied("ok");
        Ok(Destination {
            targets: kept,
            tls: OutboundTls::Require,
            sts: key,
            sts_testing: false,
            mta_sts: true,
            sts_failure: None,
        })
    }
}

/// A host's TLSA records (DANE) if it has secure ones; Err: why they
/// could not be had.
type TlsaLookup = Result<Option<Arc<TlsaSet>>, String>;

/// Counts a TLSA lookup by its result.
fn looked_up(result: &'static str) {
    ::metrics::counter!(crate::metrics::DANE_LOOKUPS, "result" => result).increment(1);
}
