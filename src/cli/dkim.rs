//! `ringpost dkim keygen` and `ringpost dkim check`: making a signing key
//! with the DNS record to publish, and checking that what DNS publishes
//! matches the key ringpost signs with.
//!
//! May call: `dkim::key`, `dns` (a resolver thread of its own), `config`.
//! Must not: touch a running server or its spool.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use mail_auth::common::parse::TxtRecordParser;
use mail_auth::common::verify::DomainKey;

use crate::config::Config;
use crate::dkim::key::{self, KeyKind, SigningKey};

#[derive(clap::Subcommand, Debug)]
pub enum DkimCommand {
    /// Make a private key (mode 0600; an existing file is never
    /// overwritten) and print the DNS TXT record to publish and the
    /// `[[dkim.identity]]` to configure.
    Keygen {
        /// The signing domain (d=).
        #[arg(long)]
        domain: String,
        /// The selector (s=).
        #[arg(long)]
        selector: String,
        /// rsa (RSA-SHA256, what every receiver verifies) or ed25519
        /// (RFC 8463; sign with both for receivers that know it).
        #[arg(long, default_value = "rsa", value_parser = ["rsa", "ed25519"])]
        algo: String,
        /// RSA key size.
        #[arg(long, default_value_t = 2048)]
        bits: usize,
        /// Where to write the key; default DOMAIN.SELECTOR.pem here.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Look up the DNS record of each identity of a domain in the config
    /// (through its [dns] resolver) and say whether it publishes the
    /// public half of the configured key. Exit status 1 if any does not.
    Check {
        /// The signing domain to check.
        #[arg(long)]
        domain: String,
        /// Only this selector.
        #[arg(long)]
        selector: Option<String>,
        /// The config naming the identities and the resolver.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

pub fn run(command: DkimCommand) -> Result<bool> {
    match command {
        DkimCommand::Keygen {
            domain,
            selector,
            algo,
            bits,
            out,
        } => {
            let kind = match algo.as_str() {
                "ed25519" => KeyKind::Ed25519,
                _ => KeyKind::Rsa(bits),
            };
            let out = out.unwrap_or_else(|| format!("{domain}.{selector}.pem").into());
            keygen(&domain, &selector, kind, &out)?;
            Ok(true)
        }
        DkimCommand::Check {
            domain,
            selector,
            config,
        } => {
            let cfg = match &config {
                Some(p) => Config::load(p).map_err(|e| anyhow::anyhow!("{}:\n{e}", p.display()))?,
                None => Config::default(),
            };
            check(&cfg, &domain, selector.as_deref())
        }
    }
}

fn keygen(domain: &str, selector: &str, kind: KeyKind, out: &Path) -> Result<()> {
    if let KeyKind::Rsa(bits) = kind {
        anyhow::ensure!(
            (key::RSA_SIGNING_MIN_BITS..=8192).contains(&bits),
            "--bits {bits}: use {} to 8192",
            key::RSA_SIGNING_MIN_BITS
        );
    }
    let pem = key::generate(kind)?;
    let loaded = SigningKey::from_pem(pem.as_bytes(), &out.display().to_string())?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .with_context(|| format!("creating {}", out.display()))?;
    file.write_all(pem.as_bytes())
        .and_then(|_| file.sync_all())
        .with_context(|| format!("writing {}", out.display()))?;
    let text = format!(
        "wrote {file} ({algo}, {bits} bits, mode 0600)\n\n\
         Publish this TXT record:\n\n\
         {selector}._domainkey.{domain}. 3600 IN TXT {record}\n\n\
         and add to the config:\n\n\
         [[dkim.identity]]\ndomain = \"{domain}\"\nselector = \"{selector}\"\nkey_file = \"{path}\"\n",
        file = out.display(),
        algo = loaded.algorithm_name(),
        bits = loaded.bits,
        record = zone_strings(&loaded.dns_record()),
        path = std::path::absolute(out)
            .unwrap_or(out.to_path_buf())
            .display(),
    );
    // The key is written: a closed pipe (`| head`) must not end in a panic.
    let _ = std::io::stdout().write_all(text.as_bytes());
    Ok(())
}

/// A TXT record's text as zone-file character-strings of at most 255
/// octets each (RFC 1035 3.3.14), in parentheses when there are several.
fn zone_strings(text: &str) -> String {
    let parts: Vec<String> = text
        .as_bytes()
        .chunks(255)
        .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
        .collect();
    match parts.len() {
        1 => parts[0].clone(),
        _ => format!("( {} )", parts.join(" ")),
    }
}

/// One identity's verdict (also `dns check`'s).
pub(super) fn check_one(
    resolver: &crate::dns::Resolver,
    domain: &str,
    selector: &str,
    key: &SigningKey,
) -> Result<String, String> {
    let name = format!("{selector}._domainkey.{domain}");
    let records =
        futures_lite::future::block_on(resolver.txt(&name)).map_err(|e| format!("{name}: {e}"))?;
    let record = match records.as_slice() {
        [] => {
            return Err(format!(
                "{name}: no TXT record; publish: {}",
                key.dns_record()
            ));
        }
        [one] => one,
        _ => {
            return Err(format!(
                "{name}: {} TXT records: publish exactly one",
                records.len()
            ));
        }
    };
    let published = DomainKey::parse(record).map_err(|e| {
        format!(
            "{name}: not a DKIM key record ({e}): {}",
            String::from_utf8_lossy(record)
        )
    })?;
    let probe = format!("ringpost dkim check {name}");
    let signature = key
        .sign_probe(probe.as_bytes())
        .map_err(|e| format!("{name}: cannot sign with the configured key: {e}"))?;
    published
        .p
        .verify_bytes(probe.as_bytes(), &signature, key.algorithm())
        .map_err(|e| {
            format!(
                "{name}: the published key is not the configured key's ({e}); publish: {}",
                key.dns_record()
            )
        })?;
    Ok(format!(
        "{name}: ok ({}, {} bits)",
        key.algorithm_name(),
        key.bits
    ))
}

fn check(cfg: &Config, domain: &str, selector: Option<&str>) -> Result<bool> {
    let identities: Vec<_> = cfg
        .dkim
        .identity
        .iter()
        .filter(|i| i.domain.eq_ignore_ascii_case(domain))
        .filter(|i| selector.is_none_or(|s| i.selector.eq_ignore_ascii_case(s)))
        .collect();
    anyhow::ensure!(
        !identities.is_empty(),
        "no [[dkim.identity]] for {domain} in the config"
    );
    let resolver = crate::dns::start(
        &cfg.dns.nameservers,
        std::time::Duration::from_secs(cfg.dns.timeout_secs),
        &crate::dns::Dnssec::default(),
    )
    .context("starting the resolver")?;
    let mut all_ok = true;
    for id in identities {
        let verdict = SigningKey::load(id.key_file.as_ref())
            .map_err(|e| e.to_string())
            .and_then(|key| check_one(&resolver, &id.domain, &id.selector, &key));
        match verdict {
            Ok(line) => println!("{line}"),
            Err(line) => {
                all_ok = false;
                println!("{line}");
            }
        }
    }
    Ok(all_ok)
}
