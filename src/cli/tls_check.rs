//! `ringpost tls check DOMAIN`: the TLS that mail to a destination would
//! be held to, and why, from what its DNS and policy host publish now, as
//! delivery applies them (`scheduler::tls_policy`): each MX host with its
//! DNSSEC standing and TLSA records (DANE, `dns.dnssec`, `tls.dane`), the
//! domain's MTA-STS record and policy and which MX hosts it names
//! (`tls.mta_sts`), and the `_smtp._tls` addresses its TLS reports go to.
//!
//! May call: `dns` (a resolver built like the server's, validating when
//! `dns.dnssec` is on), `dane` (which records are usable), `cli::dns_check`
//! (the policy fetch on an executor of its own), `config`.
//! Must not: touch a running server or its spool.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use futures_lite::future::block_on;
use mail_auth::common::parse::TxtRecordParser;
use mail_auth::mta_sts::{MtaSts, ReportUri, TlsRpt};

use crate::config::Config;
use crate::dns::{Dnssec, MxHost, Resolver};

#[derive(clap::Subcommand, Debug)]
pub enum TlsCommand {
    /// Print the TLS policy mail to DOMAIN would be held to and why: MX
    /// hosts (DNSSEC-secure or not), their TLSA records (DANE), the
    /// MTA-STS policy and the MX hosts it names, TLS-RPT addresses.
    Check {
        /// The destination domain.
        domain: String,
        /// The config (resolver, DNSSEC, `[tls]`).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

pub fn run(command: TlsCommand) -> Result<()> {
    let TlsCommand::Check { domain, config } = command;
    let cfg = match &config {
        Some(p) => Config::load(p).map_err(|e| anyhow::anyhow!("{}:\n{e}", p.display()))?,
        None => Config::default(),
    };
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    let resolver = crate::dns::start(
        &cfg.dns.nameservers,
        Duration::from_secs(cfg.dns.timeout_secs),
        &Dnssec {
            validate: cfg.dns.dnssec,
            trust_anchor_file: cfg.dns.trust_anchors(),
        },
    )
    .context("starting the resolver")?;
    print!("{}", check(&cfg, &resolver, &domain));
    Ok(())
}

/// The report for `domain`, as printed.
pub fn check(cfg: &Config, resolver: &Resolver, domain: &str) -> String {
    let mut out = format!("TLS policy for mail to {domain}\n");
    let hosts = match block_on(resolver.mx(domain)) {
        Ok(hosts) => hosts,
        Err(e) => {
            let _ = writeln!(out, "  MX: {e}: nothing is delivered now");
            return out;
        }
    };
    let dane = dane_section(cfg, resolver, domain, &hosts, &mut out);
    let sts = sts_section(cfg, resolver, domain, &hosts, &mut out);
    let _ = writeln!(out, "  Verdict:");
    for h in &hosts {
        let why = match (dane.iter().find(|(n, _)| *n == h.name), &sts) {
            (Some((_, v)), _) => v.clone(),
            (None, Some(sts)) => match sts.allows(&h.name) {
                true => {
                    "mta-sts enforce: TLS required, certificate verified for the MX name".into()
                }
                false => "mta-sts enforce: never used (not in the policy)".into(),
            },
            (None, None) => format!(
                "{:?} (tls.outbound / tls.policy)",
                cfg.tls.policy_for(domain)
            )
            .to_lowercase(),
        };
        let _ = writeln!(out, "    {}: {why}", h.name);
    }
    tls_rpt_section(resolver, domain, &mut out);
    out
}

/// The MX hosts and their TLSA records; the verdict of each host DANE
/// decides.
fn dane_section(
    cfg: &Config,
    resolver: &Resolver,
    domain: &str,
    hosts: &[MxHost],
    out: &mut String,
) -> Vec<(String, String)> {
    let on = cfg.dns.dnssec && cfg.tls.dane;
    let ignored = cfg
        .tls
        .dane_ignore
        .iter()
        .any(|d| d.eq_ignore_ascii_case(domain));
    let _ = writeln!(
        out,
        "  DANE: {}",
        match (cfg.dns.dnssec, cfg.tls.dane, ignored) {
            (false, _, _) => "off (dns.dnssec = false)",
            (true, false, _) => "off (tls.dane = false)",
            (true, true, true) => "off for this domain (tls.dane_ignore)",
            (true, true, false) => "on",
        }
    );
    let mut verdicts = Vec::new();
    for h in hosts {
        let secure = match h.secure {
            true => "DNSSEC-secure",
            false => "not DNSSEC-secure",
        };
        let _ = writeln!(
            out,
            "    MX {} {} {:?}: {secure}",
            h.preference, h.name, h.addrs
        );
        if !on || ignored || !h.secure {
            continue;
        }
        let name = format!("_{}._tcp.{}", cfg.delivery.remote_port, h.name);
        match block_on(resolver.tlsa(&name)) {
            Ok(Some(records)) if !records.is_empty() => {
                let set = crate::dane::TlsaSet::new(&name, &records);
                for r in &records {
                    let usable = match crate::dane::usable(r) {
                        true => "usable",
                        false => "not usable for SMTP",
                    };
                    let _ = writeln!(out, "      {name} TLSA {} ({usable})", r.presentation());
                }
                let verdict = match set.usable.is_empty() {
                    true => "dane: TLS required, any certificate (no usable TLSA record)",
                    false => "dane: TLS required, the certificate must match a TLSA record",
                };
                verdicts.push((h.name.clone(), verdict.to_string()));
            }
            Ok(_) => {
                let _ = writeln!(out, "      {name}: no TLSA records (a secure denial)");
            }
            Err(e) => {
                let _ = writeln!(out, "      {name}: {e}");
                verdicts.push((
                    h.name.clone(),
                    format!("not used: its TLSA answer failed ({e})"),
                ));
            }
        }
    }
    verdicts
}

/// The MTA-STS record and policy; the policy if it is enforced (it then
/// decides for the hosts DANE does not).
fn sts_section(
    cfg: &Config,
    resolver: &Resolver,
    domain: &str,
    hosts: &[MxHost],
    out: &mut String,
) -> Option<crate::mta_sts::Policy> {
    let name = format!("_mta-sts.{domain}");
    let record = block_on(resolver.txt(&name))
        .unwrap_or_default()
        .into_iter()
        .find(|r| MtaSts::parse(r).is_ok());
    let Some(record) = record else {
        let _ = writeln!(out, "  MTA-STS: no {name} record");
        return None;
    };
    let _ = writeln!(
        out,
        "  MTA-STS: {name} \"{}\"",
        String::from_utf8_lossy(&record)
    );
    if !cfg.tls.mta_sts
        || cfg
            .tls
            .mta_sts_ignore
            .iter()
            .any(|d| d.eq_ignore_ascii_case(domain))
    {
        let _ = writeln!(out, "    not applied (tls.mta_sts / tls.mta_sts_ignore)");
        return None;
    }
    let policy = match super::dns_check::policy(cfg, resolver, domain) {
        Ok(p) => p,
        Err(e) => {
            let _ = writeln!(out, "    policy: {e} (a cached policy would stay in force)");
            return None;
        }
    };
    let _ = writeln!(
        out,
        "    policy: mode {}, mx {}, max_age {}",
        policy.mode.as_str(),
        policy.mx.join(" "),
        policy.max_age
    );
    for h in hosts {
        let _ = writeln!(
            out,
            "    {}: {}",
            h.name,
            match policy.allows(&h.name) {
                true => "in the policy",
                false => "not in the policy",
            }
        );
    }
    (policy.mode == crate::mta_sts::Mode::Enforce).then_some(policy)
}

fn tls_rpt_section(resolver: &Resolver, domain: &str, out: &mut String) {
    let name = format!("_smtp._tls.{domain}");
    let rpt = block_on(resolver.txt(&name))
        .unwrap_or_default()
        .into_iter()
        .find_map(|r| TlsRpt::parse(&r).ok());
    match rpt {
        None => {
            let _ = writeln!(out, "  TLS-RPT: no {name} record (no reports asked for)");
        }
        Some(rpt) => {
            let to: Vec<&str> = rpt
                .rua
                .iter()
                .map(|u| match u {
                    ReportUri::Mail(m) => m.as_str(),
                    ReportUri::Http(h) => h.as_str(),
                })
                .collect();
            let _ = writeln!(out, "  TLS-RPT: reports to {}", to.join(", "));
        }
    }
}
