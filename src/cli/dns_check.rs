//! `ringpost dns check`: what the live DNS publishes for a sending domain,
//! read against the config, with the record to publish where something is
//! missing. What receivers (Gmail, Yahoo, Microsoft) look at before they
//! take bulk mail: SPF covering every egress source, the DKIM keys
//! ringpost signs with, DMARC, forward-confirmed reverse DNS of every
//! source with its EHLO name, MTA-STS and TLS-RPT.
//!
//! Owns: the checks and their report (text, or `--json`). Each check is a
//! [`Finding`]: pass, warn (allowed, but receivers may mind) or fail (exit
//! status 1).
//!
//! May call: `dns` (the config's resolver; mail-auth's SPF evaluation over
//! the same name servers), `dkim` (the identities that would sign),
//! `mta_sts` (the policy file, on an executor sized like the server's:
//! `server::IO_MEMORY`), `tls`, `config`. Must not: touch a running
//! server or its spool.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use futures_lite::future::block_on;
use mail_auth::common::parse::TxtRecordParser;
use mail_auth::spf::{Macro, Mechanism, Spf};
use mail_auth::{Parameters, SpfResult};

use crate::config::Config;
use crate::dns::{DnsError, Resolver};

/// RFC 7208 §4.6.4: at most 10 terms that cause DNS lookups.
pub const SPF_LOOKUP_LIMIT: u32 = 10;

#[derive(clap::Subcommand, Debug)]
pub enum DnsCommand {
    /// Check a sending domain's DNS against the config: SPF covers every
    /// egress source, DKIM keys published, DMARC, PTR of every source
    /// confirmed forward and equal to its EHLO name, MTA-STS and TLS-RPT.
    /// Prints the record to publish for what is missing; exit status 1
    /// if any check fails.
    Check {
        /// The sending domain (envelope sender and From domain).
        #[arg(long)]
        domain: String,
        /// The config naming the sources, DKIM identities and resolver.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Print the findings as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    Warn,
    Fail,
}

/// One check's result.
#[derive(Debug, serde::Serialize)]
pub struct Finding {
    /// spf, dkim, dmarc, ptr, ehlo, mta-sts or tls-rpt.
    pub check: &'static str,
    pub verdict: Verdict,
    /// What was checked and what was found.
    pub detail: String,
    /// The record to publish (zone-file line), when one would mend it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publish: Option<String>,
}

/// An address mail leaves from, with the name it greets with.
struct Source {
    label: String,
    address: IpAddr,
    ehlo: String,
}

#[derive(Default)]
struct Report(Vec<Finding>);

impl Report {
    fn add(&mut self, check: &'static str, verdict: Verdict, detail: String) {
        self.0.push(Finding {
            check,
            verdict,
            detail,
            publish: None,
        });
    }

    fn fix(&mut self, check: &'static str, verdict: Verdict, detail: String, publish: String) {
        self.0.push(Finding {
            check,
            verdict,
            detail,
            publish: Some(publish),
        });
    }
}

/// Runs the command; `Ok(false)` when a check failed.
pub fn run(command: DnsCommand) -> Result<bool> {
    let DnsCommand::Check {
        domain,
        config,
        json,
    } = command;
    let cfg = match &config {
        Some(p) => Config::load(p).map_err(|e| anyhow::anyhow!("{}:\n{e}", p.display()))?,
        None => Config::default(),
    };
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    let findings = check(&cfg, &domain)?;
    let failed = findings.iter().any(|f| f.verdict == Verdict::Fail);
    if json {
        println!("{}", serde_json::to_string_pretty(&findings)?);
    } else {
        print!("{}", render(&domain, &findings));
    }
    Ok(!failed)
}

/// Every check for `domain`, in the order they are printed.
pub fn check(cfg: &Config, domain: &str) -> Result<Vec<Finding>> {
    let timeout = Duration::from_secs(cfg.dns.timeout_secs);
    let resolver = crate::dns::start(
        &cfg.dns.nameservers,
        timeout,
        &crate::dns::Dnssec::default(),
    )
    .context("starting the resolver")?;
    let mut report = Report::default();
    let sources = sources(cfg, &resolver, &mut report);
    spf(cfg, &resolver, domain, &sources, &mut report)?;
    // The keys are read once, for the DKIM check and DMARC's alignment.
    let signer = crate::dkim::Signer::load(&cfg.dkim);
    dkim(&signer, &resolver, domain, &mut report);
    let signing = signer.as_ref().ok().and_then(Option::as_ref);
    dmarc(signing, &resolver, domain, &mut report);
    for source in &sources {
        reverse_dns(&resolver, source, &mut report);
    }
    mta_sts(cfg, &resolver, domain, &mut report);
    tls_rpt(&resolver, domain, &mut report);
    Ok(report.0)
}

fn render(domain: &str, findings: &[Finding]) -> String {
    let mut out = format!("DNS of {domain}, as receivers see it:\n");
    for f in findings {
        let verdict = match f.verdict {
            Verdict::Pass => "PASS",
            Verdict::Warn => "WARN",
            Verdict::Fail => "FAIL",
        };
        out += &format!("{verdict}  {:<8} {}\n", f.check, f.detail);
        if let Some(record) = &f.publish {
            out += &format!("      {:<8} publish: {record}\n", "");
        }
    }
    let count = |v| findings.iter().filter(|f| f.verdict == v).count();
    out += &format!(
        "{} passed, {} warnings, {} failed\n",
        count(Verdict::Pass),
        count(Verdict::Warn),
        count(Verdict::Fail)
    );
    out
}

/// The egress sources; without any, the addresses `server.hostname`
/// resolves to (where the kernel's choice of source should be).
fn sources(cfg: &Config, resolver: &Resolver, report: &mut Report) -> Vec<Source> {
    if !cfg.egress.source.is_empty() {
        return cfg
            .egress
            .source
            .iter()
            .map(|s| Source {
                label: format!("source {}", s.name),
                address: s.address,
                ehlo: match s.ehlo.as_str() {
                    "" => cfg.hostname().to_string(),
                    name => name.to_string(),
                },
            })
            .collect();
    }
    let host = cfg.hostname().to_string();
    match block_on(resolver.host(&host)) {
        Ok(addrs) => addrs
            .into_iter()
            .map(|address| Source {
                label: format!("address of {host}"),
                address,
                ehlo: host.clone(),
            })
            .collect(),
        Err(e) => {
            report.fix(
                "ptr",
                Verdict::Fail,
                format!(
                    "no [[egress.source]] in the config, and server.hostname {host} does not \
                     resolve ({e}): the addresses mail leaves from cannot be checked"
                ),
                format!("{host}. A <the address mail leaves from>"),
            );
            Vec::new()
        }
    }
}

/// TXT records at `name` as text; none when the name or records are absent.
fn txt(resolver: &Resolver, name: &str) -> Result<Vec<String>, DnsError> {
    match block_on(resolver.txt(name)) {
        Ok(records) => Ok(records
            .iter()
            .map(|r| String::from_utf8_lossy(r).into_owned())
            .collect()),
        Err(DnsError::NoSuchDomain | DnsError::NoAddress) => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// The TXT records at `name` that start with `tag` (`v=spf1`, ...), case
/// aside; `None` (reported as a `check` failure) when the lookup fails.
fn tagged(
    resolver: &Resolver,
    name: &str,
    tag: &str,
    check: &'static str,
    report: &mut Report,
) -> Option<Vec<String>> {
    match txt(resolver, name) {
        Ok(all) => Some(
            all.into_iter()
                .filter(|t| t.to_ascii_lowercase().starts_with(tag))
                .collect(),
        ),
        Err(e) => {
            report.add(
                check,
                Verdict::Fail,
                format!("{name}: TXT lookup failed: {e}"),
            );
            None
        }
    }
}

fn spf_record_for(sources: &[Source]) -> String {
    let mut terms = vec!["v=spf1".to_string()];
    for s in sources {
        terms.push(match s.address {
            IpAddr::V4(ip) => format!("ip4:{ip}"),
            IpAddr::V6(ip) => format!("ip6:{ip}"),
        });
    }
    terms.push("-all".into());
    terms.join(" ")
}

fn spf(
    cfg: &Config,
    resolver: &Resolver,
    domain: &str,
    sources: &[Source],
    report: &mut Report,
) -> Result<()> {
    let Some(records) = tagged(resolver, domain, "v=spf1", "spf", report) else {
        return Ok(());
    };
    let record = match records.as_slice() {
        [] => {
            report.fix(
                "spf",
                Verdict::Fail,
                format!("{domain}: no SPF record (TXT \"v=spf1 ...\")"),
                format!("{domain}. TXT \"{}\"", spf_record_for(sources)),
            );
            return Ok(());
        }
        [one] => one.clone(),
        many => {
            report.add(
                "spf",
                Verdict::Fail,
                format!(
                    "{domain}: {} SPF records: receivers answer permerror (RFC 7208 §4.5); keep one",
                    many.len()
                ),
            );
            return Ok(());
        }
    };
    let parsed = match Spf::parse(record.as_bytes()) {
        Ok(p) => p,
        Err(e) => {
            report.add(
                "spf",
                Verdict::Fail,
                format!("{domain}: \"{record}\" does not parse: {e:?}"),
            );
            return Ok(());
        }
    };
    let lookups = lookups(resolver, &parsed, 0);
    let verdict = match lookups > SPF_LOOKUP_LIMIT {
        true => Verdict::Fail,
        false => Verdict::Pass,
    };
    report.add(
        "spf",
        verdict,
        format!(
            "{domain}: \"{record}\": {lookups} DNS lookups (RFC 7208 allows {SPF_LOOKUP_LIMIT})"
        ),
    );
    spf_authorizes(cfg, domain, sources, report)
}

/// SPF's verdict (mail-auth's `check_host`) for mail from each source.
fn spf_authorizes(
    cfg: &Config,
    domain: &str,
    sources: &[Source],
    report: &mut Report,
) -> Result<()> {
    let authenticator = crate::dns::authenticator(
        &cfg.dns.nameservers,
        Duration::from_secs(cfg.dns.timeout_secs),
    )
    .map_err(anyhow::Error::msg)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let sender = format!("postmaster@{domain}");
    for s in sources {
        let params = mail_auth::spf::verify::SpfParameters::verify_mail_from(
            s.address,
            &s.ehlo,
            cfg.hostname(),
            &sender,
        );
        let result = runtime
            .block_on(authenticator.check_host(Parameters::new(params)))
            .result();
        let what = format!("{domain} for {} ({})", s.address, s.label);
        match result {
            SpfResult::Pass => report.add("spf", Verdict::Pass, format!("{what}: pass")),
            other => {
                let term = match s.address {
                    IpAddr::V4(ip) => format!("ip4:{ip}"),
                    IpAddr::V6(ip) => format!("ip6:{ip}"),
                };
                let why = match other {
                    SpfResult::PermError => " (the record breaks a rule: see above)",
                    SpfResult::TempError => " (a lookup failed: try again)",
                    _ => "",
                };
                report.add(
                    "spf",
                    Verdict::Fail,
                    format!(
                        "{what}: {}{why}, not pass: add {term} to the record, before its `all`",
                        other.to_string().to_ascii_lowercase()
                    ),
                )
            }
        }
    }
    Ok(())
}

/// Terms of `spf` that cost a DNS lookup (include, a, mx, ptr, exists,
/// redirect), counting those of the records it includes.
fn lookups(resolver: &Resolver, spf: &Spf, depth: u32) -> u32 {
    let literal = |m: &Macro| match m {
        Macro::Literal(d) => Some(String::from_utf8_lossy(d).into_owned()),
        _ => None,
    };
    let nested = |target: Option<String>| -> u32 {
        let Some(domain) = target.filter(|_| depth < SPF_LOOKUP_LIMIT) else {
            return 0;
        };
        let record = txt(resolver, &domain).ok().and_then(|all| {
            all.into_iter()
                .find(|t| t.to_ascii_lowercase().starts_with("v=spf1"))
        });
        record
            .and_then(|r| Spf::parse(r.as_bytes()).ok())
            .map_or(0, |inner| lookups(resolver, &inner, depth + 1))
    };
    let mut count = 0;
    for directive in spf.directives.iter() {
        count += match &directive.mechanism {
            Mechanism::Include { macro_string } => 1 + nested(literal(macro_string)),
            Mechanism::A { .. }
            | Mechanism::Mx { .. }
            | Mechanism::Ptr { .. }
            | Mechanism::Exists { .. } => 1,
            _ => 0,
        };
    }
    if let Some(redirect) = &spf.redirect {
        count += 1 + nested(literal(redirect));
    }
    count
}

type Loaded = Result<Option<crate::dkim::Signer>, crate::dkim::LoadProblems>;

fn dkim(signer: &Loaded, resolver: &Resolver, domain: &str, report: &mut Report) {
    let signer = match signer {
        Ok(Some(signer)) => signer,
        Ok(None) => {
            report.add(
                "dkim",
                Verdict::Fail,
                format!(
                    "no [[dkim.identity]] in the config: mail from {domain} leaves unsigned \
                     (make one: ringpost dkim keygen --domain {domain} --selector s1)"
                ),
            );
            return;
        }
        Err(e) => {
            for (key, problem) in &e.0 {
                report.add("dkim", Verdict::Fail, format!("{key}: {problem}"));
            }
            return;
        }
    };
    let identities = match signer.identities_for(domain) {
        Ok(ids) => ids,
        Err(why) => {
            report.add(
                "dkim",
                Verdict::Fail,
                format!("mail from {domain} leaves unsigned: {}", why.as_str()),
            );
            return;
        }
    };
    for id in identities {
        let aligned = domain == id.domain || domain.ends_with(&format!(".{}", id.domain));
        match super::dkim::check_one(resolver, &id.domain, &id.selector, &id.key) {
            Ok(line) if aligned => report.add("dkim", Verdict::Pass, line),
            Ok(line) => report.add(
                "dkim",
                Verdict::Warn,
                format!(
                    "{line}; but d={} is not aligned with {domain} for DMARC",
                    id.domain
                ),
            ),
            Err(line) => {
                let (detail, publish) = match line.split_once("; publish: ") {
                    Some((d, p)) => (d.to_string(), Some(p.to_string())),
                    None => (line, None),
                };
                report.0.push(Finding {
                    check: "dkim",
                    verdict: Verdict::Fail,
                    detail,
                    publish: publish
                        .map(|p| format!("{}._domainkey.{}. TXT \"{p}\"", id.selector, id.domain)),
                });
            }
        }
    }
}

fn dmarc(
    signer: Option<&crate::dkim::Signer>,
    resolver: &Resolver,
    domain: &str,
    report: &mut Report,
) {
    use mail_auth::dmarc::{Alignment, Dmarc, Policy};
    let name = format!("_dmarc.{domain}");
    let Some(records) = tagged(resolver, &name, "v=dmarc1", "dmarc", report) else {
        return;
    };
    let record = match records.as_slice() {
        [one] => one,
        [] => {
            report.fix(
                "dmarc",
                Verdict::Fail,
                format!("{name}: no DMARC record (Gmail and Yahoo require one of bulk senders)"),
                format!("{name}. TXT \"v=DMARC1; p=none; rua=mailto:dmarc-reports@{domain}\""),
            );
            return;
        }
        many => {
            report.add(
                "dmarc",
                Verdict::Fail,
                format!(
                    "{name}: {} DMARC records: receivers ignore all of them; keep one",
                    many.len()
                ),
            );
            return;
        }
    };
    let parsed = match Dmarc::parse(record.as_bytes()) {
        Ok(p) => p,
        Err(e) => {
            report.add(
                "dmarc",
                Verdict::Fail,
                format!("{name}: \"{record}\" does not parse: {e:?}"),
            );
            return;
        }
    };
    let (verdict, policy) = match parsed.p {
        Policy::Reject => (Verdict::Pass, "p=reject"),
        Policy::Quarantine => (Verdict::Pass, "p=quarantine"),
        Policy::None | Policy::Unspecified => (Verdict::Warn, "p=none: monitoring only"),
    };
    report.add("dmarc", verdict, format!("{name}: \"{record}\": {policy}"));
    // Alignment: the envelope sender's domain is `domain` (SPF aligned);
    // DKIM's d= is the identity's domain.
    let strict = parsed.adkim == Alignment::Strict;
    if let Some(signer) = signer
        && let Ok(ids) = signer.identities_for(domain)
    {
        for id in ids.iter().filter(|id| id.domain != domain && strict) {
            report.add(
                "dmarc",
                Verdict::Fail,
                format!(
                    "adkim=s but mail from {domain} is signed d={}: DKIM does not align; \
                     sign with an identity for {domain}, or use adkim=r",
                    id.domain
                ),
            );
        }
    }
}

/// The name a PTR record for `ip` lives at.
fn reverse_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.in-addr.arpa.", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            let mut name = String::new();
            for byte in v6.octets().iter().rev() {
                name += &format!("{:x}.{:x}.", byte & 0xf, byte >> 4);
            }
            name + "ip6.arpa."
        }
    }
}

/// Forward-confirmed reverse DNS of one source, and its EHLO name.
fn reverse_dns(resolver: &Resolver, source: &Source, report: &mut Report) {
    let (ip, ehlo) = (source.address, source.ehlo.as_str());
    let what = format!("{ip} ({})", source.label);
    let rr = match ip {
        IpAddr::V4(_) => "A",
        IpAddr::V6(_) => "AAAA",
    };
    let names = match block_on(resolver.ptr(ip)) {
        Ok(names) => names,
        Err(e) => {
            report.add(
                "ptr",
                Verdict::Fail,
                format!("{what}: PTR lookup failed: {e}"),
            );
            return;
        }
    };
    if names.is_empty() {
        report.fix(
            "ptr",
            Verdict::Fail,
            format!("{what}: no PTR record (receivers refuse mail from addresses without one)"),
            format!("{} PTR {ehlo}.", reverse_name(ip)),
        );
        return;
    }
    let confirmed: Vec<&String> = names
        .iter()
        .filter(|n| block_on(resolver.host(n)).is_ok_and(|addrs| addrs.contains(&ip)))
        .collect();
    let Some(name) = confirmed.first() else {
        report.fix(
            "ptr",
            Verdict::Fail,
            format!(
                "{what}: PTR {} does not resolve back to {ip} (forward-confirmed reverse DNS fails)",
                names.join(", ")
            ),
            format!("{}. {rr} {ip}", names[0]),
        );
        return;
    };
    report.add(
        "ptr",
        Verdict::Pass,
        format!("{what}: PTR {name}, which resolves back to it"),
    );
    if confirmed.iter().any(|n| n.eq_ignore_ascii_case(ehlo)) {
        report.add(
            "ehlo",
            Verdict::Pass,
            format!("{what}: EHLO {ehlo} is its PTR name"),
        );
    } else {
        report.add(
            "ehlo",
            Verdict::Fail,
            format!(
                "{what}: EHLO {ehlo} is not its PTR name {name}: set the source's `ehlo = \"{name}\"` \
                 (or server.hostname), or point the PTR at {ehlo}"
            ),
        );
    }
}

fn mta_sts(cfg: &Config, resolver: &Resolver, domain: &str, report: &mut Report) {
    use mail_auth::mta_sts::MtaSts;
    let name = format!("_mta-sts.{domain}");
    let Some(records) = tagged(resolver, &name, "v=stsv1", "mta-sts", report) else {
        return;
    };
    let record =
        match records.as_slice() {
            [one] => one,
            [] => {
                report.fix(
                "mta-sts",
                Verdict::Warn,
                format!(
                    "{name}: no MTA-STS record: senders to {domain} cannot require TLS; publish it \
                     and the policy at https://mta-sts.{domain}{} (\"version: STSv1\", \
                     \"mode: testing\", one \"mx: HOST\" per MX, \"max_age: 604800\")",
                    crate::mta_sts::POLICY_PATH
                ),
                format!("{name}. TXT \"v=STSv1; id={}\"", chrono::Utc::now().format("%Y%m%d01")),
            );
                return;
            }
            many => {
                report.add(
                    "mta-sts",
                    Verdict::Fail,
                    format!("{name}: {} records; keep one", many.len()),
                );
                return;
            }
        };
    if let Err(e) = MtaSts::parse(record.as_bytes()) {
        report.add(
            "mta-sts",
            Verdict::Fail,
            format!("{name}: \"{record}\" does not parse: {e:?}"),
        );
        return;
    }
    policy_covers_mx(
        cfg,
        resolver,
        domain,
        &format!("{name}: \"{record}\""),
        report,
    );
}

/// The policy fetched over verified TLS, and every MX host of `domain`
/// in it (`published`: the record, for the report's line).
fn policy_covers_mx(
    cfg: &Config,
    resolver: &Resolver,
    domain: &str,
    published: &str,
    report: &mut Report,
) {
    let name = format!("_mta-sts.{domain}");
    let mx: Vec<String> = block_on(resolver.mx(domain))
        .map(|hosts| {
            hosts
                .into_iter()
                .map(|h| h.name.trim_end_matches('.').to_string())
                .collect()
        })
        .unwrap_or_default();
    let fetched = policy(cfg, resolver, domain);
    match fetched {
        Err(e) => report.add(
            "mta-sts",
            Verdict::Fail,
            format!(
                "{name} is published, but the policy at https://mta-sts.{domain}{}: {e}",
                crate::mta_sts::POLICY_PATH
            ),
        ),
        Ok(p) => {
            let outside: Vec<&String> = mx.iter().filter(|h| !p.allows(h)).collect();
            let detail = format!(
                "{published}; policy mode {}, mx {}, max_age {}",
                p.mode.as_str(),
                p.mx.join(" "),
                p.max_age
            );
            if outside.is_empty() {
                report.add("mta-sts", Verdict::Pass, detail);
            } else {
                report.add(
                    "mta-sts",
                    Verdict::Fail,
                    format!(
                        "{detail}: MX {} not in the policy: senders that enforce it will not deliver there",
                        outside.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                    ),
                );
            }
        }
    }
}

/// The policy file, fetched on an executor of its own.
pub(super) fn policy(
    cfg: &Config,
    resolver: &Resolver,
    domain: &str,
) -> Result<crate::mta_sts::Policy, String> {
    let tls = crate::tls::web_client(Some(std::path::Path::new(&cfg.tls.ca_file)))
        .map_err(|e| format!("tls.ca_file: {e}"))?;
    let timeout = Duration::from_secs(cfg.dns.timeout_secs.max(10));
    let (resolver, domain) = (resolver.clone(), domain.to_string());
    glommio::LocalExecutorBuilder::default()
        .name("ringpost-dns-check")
        .io_memory(crate::server::IO_MEMORY)
        .spawn(move || async move {
            crate::mta_sts::fetch(&resolver, &domain, tls, timeout)
                .await
                .map_err(|e| e.to_string())
        })
        .map_err(|e| format!("cannot start an executor: {e}"))?
        .join()
        .map_err(|e| format!("the fetch failed: {e}"))?
}

fn tls_rpt(resolver: &Resolver, domain: &str, report: &mut Report) {
    use mail_auth::mta_sts::TlsRpt;
    let name = format!("_smtp._tls.{domain}");
    let Some(records) = tagged(resolver, &name, "v=tlsrptv1", "tls-rpt", report) else {
        return;
    };
    match records.as_slice() {
        [] => report.fix(
            "tls-rpt",
            Verdict::Warn,
            format!(
                "{name}: no TLS-RPT record: senders cannot report TLS failures reaching {domain}"
            ),
            format!("{name}. TXT \"v=TLSRPTv1; rua=mailto:tls-reports@{domain}\""),
        ),
        [one] => match TlsRpt::parse(one.as_bytes()) {
            Ok(_) => report.add("tls-rpt", Verdict::Pass, format!("{name}: \"{one}\"")),
            Err(e) => report.add(
                "tls-rpt",
                Verdict::Fail,
                format!("{name}: \"{one}\" does not parse: {e:?}"),
            ),
        },
        many => report.add(
            "tls-rpt",
            Verdict::Fail,
            format!("{name}: {} records; keep one", many.len()),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reverse_names_are_written_as_dns_wants_them() {
        assert_eq!(
            reverse_name("192.0.2.10".parse().unwrap()),
            "10.2.0.192.in-addr.arpa."
        );
        assert!(reverse_name("2001:db8::1".parse().unwrap()).starts_with("1.0.0.0.0.0.0.0."));
        assert!(
            reverse_name("2001:db8::1".parse().unwrap()).ends_with("8.b.d.0.1.0.0.2.ip6.arpa.")
        );
    }
}
