//! TLS reporting (RFC 8460): how this node's outbound TLS sessions to
//! receivers that publish a policy (MTA-STS, DANE) went, counted per UTC
//! day and policy, and the daily report made of the counts.
//!
//! Owns: [`Tally`], one shard's counts (kept in its spool as JSON, merged
//! over the shards for a report), [`Session`] (one session's result),
//! [`result_of_tls_error`] (a failed handshake's rustls error as an RFC
//! 8460 result type), and [`Tally::report`], mail-auth's `TlsReport` of
//! one day and policy domain (mail-auth writes the JSON, the gzip and the
//! `multipart/report` message).
//!
//! A session is one new connection to an MX host of a domain with a
//! policy: TLS established and checked as the policy asks (success), or
//! not (a failure with its result type). A pooled connection's further
//! transactions are the same session, not counted again.
//!
//! May call: nothing else in the crate; mail-auth's report types, rustls's
//! errors. Must not: look anything up or send (the composition root's
//! reporter does both).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use mail_auth::report::tlsrpt::{
    DateRange, FailureDetails, Policy, PolicyDetails, PolicyType, ResultType, Summary, TlsReport,
};
use serde::{Deserialize, Serialize};

/// Seconds in a UTC day: reports cover one each.
pub const DAY: u64 = 86_400;

/// The policy a session was held to, as the report names it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PolicyKey {
    /// The recipient domain (the report goes to its `_smtp._tls` record).
    pub domain: String,
    /// `sts` or `tlsa` (mail-auth's names).
    pub kind: String,
    /// The policy as published: the MTA-STS policy's lines, or the TLSA
    /// records in presentation form.
    pub strings: Vec<String>,
}

impl PolicyKey {
    pub fn sts(domain: &str, lines: Vec<String>) -> PolicyKey {
        PolicyKey {
            domain: domain.to_string(),
            kind: "sts".into(),
            strings: lines,
        }
    }

    pub fn tlsa(domain: &str, records: Vec<String>) -> PolicyKey {
        PolicyKey {
            domain: domain.to_string(),
            kind: "tlsa".into(),
            strings: records,
        }
    }
}

/// One session's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// None when the policy failed before a host was in question (an
    /// MTA-STS policy that could not be fetched).
    pub mx_host: Option<String>,
    pub receiving_ip: Option<IpAddr>,
    pub sending_ip: Option<IpAddr>,
    /// None: success.
    pub failure: Option<(ResultType, String)>,
}

/// A failure, as the report groups them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
struct FailureKey {
    result: String,
    mx_host: Option<String>,
    receiving_ip: Option<IpAddr>,
    sending_ip: Option<IpAddr>,
    /// What went wrong, in words (the first seen for the group).
    info: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Counts {
    mx_hosts: BTreeSet<String>,
    success: u64,
    failures: Vec<(FailureKey, u64)>,
}

/// One shard's counts: per UTC day (its first second) and policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    days: BTreeMap<u64, Vec<(PolicyKey, Counts)>>,
}

/// A result type's name (RFC 8460 §4.3, as mail-auth writes it).
pub fn result_str(r: ResultType) -> &'static str {
    match r {
        ResultType::StartTlsNotSupported => "starttls-not-supported",
        ResultType::CertificateHostMismatch => "certificate-host-mismatch",
        ResultType::CertificateExpired => "certificate-expired",
        ResultType::CertificateNotTrusted => "certificate-not-trusted",
        ResultType::ValidationFailure => "validation-failure",
        ResultType::TlsaInvalid => "tlsa-invalid",
        ResultType::DnssecInvalid => "dnssec-invalid",
        ResultType::DaneRequired => "dane-required",
        ResultType::StsPolicyFetchError => "sts-policy-fetch-error",
        ResultType::StsPolicyInvalid => "sts-policy-invalid",
        ResultType::StsWebpkiInvalid => "sts-webpki-invalid",
        ResultType::Other => "other",
    }
}

/// A failure's result type as a string key.
fn result_name(r: ResultType) -> String {
    result_str(r).to_string()
}

fn result_type(name: &str) -> ResultType {
    serde_json::from_value(serde_json::Value::String(name.to_string())).unwrap_or_default()
}

impl Tally {
    /// Counts `session` under `policy` on the day of `now` (Unix seconds).
    pub fn record(&mut self, now: u64, policy: &PolicyKey, session: &Session) {
        let day = now - now % DAY;
        let list = self.days.entry(day).or_default();
        let i = match list.iter().position(|(k, _)| k == policy) {
            Some(i) => i,
            None => {
                list.push((policy.clone(), Counts::default()));
                list.len() - 1
            }
        };
        let counts = &mut list[i].1;
        if let Some(mx) = &session.mx_host {
            counts.mx_hosts.insert(mx.clone());
        }
        let Some((result, info)) = &session.failure else {
            counts.success += 1;
            return;
        };
        let result = result_name(*result);
        let same = |k: &FailureKey| {
            k.result == result
                && k.mx_host == session.mx_host
                && k.receiving_ip == session.receiving_ip
                && k.sending_ip == session.sending_ip
        };
        match counts.failures.iter_mut().find(|(k, _)| same(k)) {
            Some((_, n)) => *n += 1,
            None => counts.failures.push((
                FailureKey {
                    result,
                    mx_host: session.mx_host.clone(),
                    receiving_ip: session.receiving_ip,
                    sending_ip: session.sending_ip,
                    info: info.chars().take(300).collect(),
                },
                1,
            )),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.days.is_empty()
    }

    /// The days before the one `now` is in, taken out.
    pub fn take_ended(&mut self, now: u64) -> Tally {
        let today = now - now % DAY;
        let keep = self.days.split_off(&today);
        Tally {
            days: std::mem::replace(&mut self.days, keep),
        }
    }

    /// Adds `other`'s counts (another shard's) to these.
    pub fn merge(&mut self, other: Tally) {
        for (day, list) in other.days {
            let mine = self.days.entry(day).or_default();
            for (policy, counts) in list {
                match mine.iter_mut().find(|(k, _)| *k == policy) {
                    Some((_, c)) => {
                        c.mx_hosts.extend(counts.mx_hosts);
                        c.success += counts.success;
                        for (k, n) in counts.failures {
                            match c.failures.iter_mut().find(|(m, _)| m.same_group(&k)) {
                                Some((_, total)) => *total += n,
                                None => c.failures.push((k, n)),
                            }
                        }
                    }
                    None => mine.push((policy, counts)),
                }
            }
        }
    }

    /// The (day, domain) pairs with counts, in order.
    pub fn reports_due(&self) -> Vec<(u64, String)> {
        let mut due: Vec<(u64, String)> = self
            .days
            .iter()
            .flat_map(|(day, list)| list.iter().map(|(k, _)| (*day, k.domain.clone())))
            .collect();
        due.dedup();
        due.sort();
        due.dedup();
        due
    }

    /// The report of `domain`'s policies on `day` (RFC 8460 §4).
    pub fn report(&self, day: u64, domain: &str, from: &Reporter) -> TlsReport {
        let policies = self
            .days
            .get(&day)
            .into_iter()
            .flatten()
            .filter(|(k, _)| k.domain == domain)
            .map(|(k, c)| policy_of(k, c))
            .collect();
        TlsReport {
            organization_name: Some(from.organization.clone()),
            date_range: DateRange::from_timestamps(day as i64, (day + DAY - 1) as i64),
            contact_info: Some(from.contact.clone()),
            report_id: format!(
                "{}_{}_{domain}@{}",
                chrono_day(day),
                from.node,
                from.submitter
            ),
            policies,
        }
    }
}

impl FailureKey {
    fn same_group(&self, other: &FailureKey) -> bool {
        (
            &self.result,
            &self.mx_host,
            self.receiving_ip,
            self.sending_ip,
        ) == (
            &other.result,
            &other.mx_host,
            other.receiving_ip,
            other.sending_ip,
        )
    }
}

/// Who reports (`[tls_reporting]`).
#[derive(Debug, Clone)]
pub struct Reporter {
    pub organization: String,
    pub contact: String,
    /// The submitter's domain (the report's `TLS-Report-Submitter`).
    pub submitter: String,
    /// This node's name, so nodes of a fleet give distinct report ids.
    pub node: String,
}

fn policy_of(k: &PolicyKey, c: &Counts) -> Policy {
    let kind = match k.kind.as_str() {
        "sts" => PolicyType::Sts,
        "tlsa" => PolicyType::Tlsa,
        _ => PolicyType::NoPolicyFound,
    };
    let failed: u64 = c.failures.iter().map(|(_, n)| n).sum();
    Policy {
        policy: PolicyDetails {
            policy_type: kind,
            policy_string: k.strings.clone(),
            policy_domain: k.domain.clone(),
            mx_host: c.mx_hosts.iter().cloned().collect(),
        },
        summary: Summary {
            total_success: c.success.min(u32::MAX as u64) as u32,
            total_failure: failed.min(u32::MAX as u64) as u32,
        },
        failure_details: c
            .failures
            .iter()
            .map(|(f, n)| FailureDetails {
                result_type: result_type(&f.result),
                sending_mta_ip: f.sending_ip,
                receiving_mx_hostname: f.mx_host.clone(),
                receiving_ip: f.receiving_ip,
                failed_session_count: (*n).min(u32::MAX as u64) as u32,
                // RFC 8460 §4.4: the error message goes here;
                // `additional-information` is for a URI.
                failure_reason_code: Some(f.info.clone()),
                ..FailureDetails::default()
            })
            .collect(),
    }
}

/// `YYYY-MM-DD` of a day's first second.
fn chrono_day(day: u64) -> String {
    chrono::DateTime::from_timestamp(day as i64, 0)
        .map(|d| d.format("%Y-%m-%d").to_string())
        .unwrap_or_default()
}

/// The RFC 8460 result type of a TLS handshake that failed with `e`.
pub fn result_of_tls_error(e: &rustls::Error) -> ResultType {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(
            C::NotValidForName | C::NotValidForNameContext { .. },
        ) => ResultType::CertificateHostMismatch,
        rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            ResultType::CertificateExpired
        }
        rustls::Error::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => {
            ResultType::CertificateNotTrusted
        }
        _ => ResultType::ValidationFailure,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(mx: &str, failure: Option<ResultType>) -> Session {
        Session {
            mx_host: Some(mx.into()),
            receiving_ip: Some("192.0.2.1".parse().unwrap()),
            sending_ip: None,
            failure: failure.map(|r| (r, "why".to_string())),
        }
    }

    fn reporter() -> Reporter {
        Reporter {
            organization: "Example Sender".into(),
            contact: "tls@sender.example".into(),
            submitter: "sender.example".into(),
            node: "n1".into(),
        }
    }

    #[test]
    fn a_day_of_sessions_becomes_one_report_per_domain() {
        let sts = PolicyKey::sts("a.example", vec!["version: STSv1".into()]);
        let tlsa = PolicyKey::tlsa("b.example", vec!["3 1 1 00".into()]);
        let day1 = 20 * DAY;
        let mut shard0 = Tally::default();
        shard0.record(day1 + 5, &sts, &session("mx.a.example", None));
        shard0.record(day1 + 6, &sts, &session("mx.a.example", None));
        shard0.record(
            day1 + 7,
            &sts,
            &session("mx.a.example", Some(ResultType::CertificateExpired)),
        );
        let mut shard1 = Tally::default();
        shard1.record(
            day1 + 8,
            &sts,
            &session("mx.a.example", Some(ResultType::CertificateExpired)),
        );
        shard1.record(day1 + 9, &tlsa, &session("mx.b.example", None));
        shard1.record(day1 + DAY + 1, &tlsa, &session("mx.b.example", None));

        let mut merged = shard0.take_ended(day1 + DAY + 10);
        assert!(shard0.is_empty());
        let today = shard1.take_ended(day1 + DAY + 10);
        merged.merge(today);
        assert_eq!(
            merged.reports_due(),
            [(day1, "a.example".into()), (day1, "b.example".into())]
        );
        assert!(!shard1.is_empty(), "the day under way stays");

        let report = merged.report(day1, "a.example", &reporter());
        assert_eq!(report.policies.len(), 1);
        let p = &report.policies[0];
        assert_eq!(p.policy.policy_type, PolicyType::Sts);
        assert_eq!((p.summary.total_success, p.summary.total_failure), (2, 2));
        assert_eq!(p.failure_details.len(), 1);
        assert_eq!(p.failure_details[0].failed_session_count, 2);
        assert_eq!(
            p.failure_details[0].result_type,
            ResultType::CertificateExpired
        );
        assert_eq!(
            result_type(result_str(ResultType::StartTlsNotSupported)),
            ResultType::StartTlsNotSupported,
            "the names are mail-auth's"
        );
        let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(json["date-range"]["start-datetime"], "1970-01-21T00:00:00Z");
        assert_eq!(
            json["policies"][0]["failure-details"][0]["result-type"],
            "certificate-expired"
        );
    }

    #[test]
    fn a_tally_survives_its_json() {
        let mut t = Tally::default();
        let k = PolicyKey::tlsa("b.example", vec!["3 1 1 00".into()]);
        t.record(5, &k, &session("mx", Some(ResultType::ValidationFailure)));
        let back: Tally = serde_json::from_str(&serde_json::to_string(&t).unwrap()).unwrap();
        assert_eq!(back, t);
    }

    #[test]
    fn a_policy_that_could_not_be_had_is_reported_without_a_host() {
        let mut t = Tally::default();
        let k = PolicyKey::sts("c.example", Vec::new());
        let failed = Session {
            mx_host: None,
            receiving_ip: None,
            sending_ip: None,
            failure: Some((ResultType::StsPolicyFetchError, "refused".into())),
        };
        t.record(5, &k, &failed);
        t.record(6, &k, &failed);
        let report = t.report(0, "c.example", &reporter());
        let p = &report.policies[0];
        assert!(p.policy.mx_host.is_empty(), "{p:?}");
        assert_eq!(p.summary.total_failure, 2);
        let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        let detail = &json["policies"][0]["failure-details"][0];
        assert_eq!(detail["result-type"], "sts-policy-fetch-error", "{json}");
        assert!(detail["receiving-mx-hostname"].is_null(), "{json}");
    }

    #[test]
    fn counts_kept_before_hosts_became_optional_read_back() {
        let old = r#"{"days":{"0":[[{"domain":"b.example","kind":"tlsa","strings":[]},
            {"mx_hosts":["mx"],"success":1,"failures":[[{"result":"validation-failure",
            "mx_host":"mx","receiving_ip":"192.0.2.1","sending_ip":null,"info":"why"},2]]}]]}}"#;
        let t: Tally = serde_json::from_str(old).unwrap();
        let report = t.report(0, "b.example", &reporter());
        let detail = &report.policies[0].failure_details[0];
        assert_eq!(detail.receiving_mx_hostname.as_deref(), Some("mx"));
        assert_eq!(detail.failed_session_count, 2);
    }

    #[test]
    fn handshake_errors_map_to_result_types() {
        use rustls::CertificateError as C;
        let of = |c| result_of_tls_error(&rustls::Error::InvalidCertificate(c));
        assert_eq!(of(C::NotValidForName), ResultType::CertificateHostMismatch);
        assert_eq!(of(C::Expired), ResultType::CertificateExpired);
        assert_eq!(of(C::UnknownIssuer), ResultType::CertificateNotTrusted);
        assert_eq!(
            result_of_tls_error(&rustls::Error::General("DANE: no match".into())),
            ResultType::ValidationFailure
        );
    }
}
