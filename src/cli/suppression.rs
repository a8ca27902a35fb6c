//! `ringpost suppression ls|add|rm|import`: the suppression list of the
//! running server, through its admin API (`/suppressions`).
//!
//! May call: `cli::admin_client`. Must not: open the list's database
//! (the server holds it).

use std::io::BufRead;
use std::path::PathBuf;

use anyhow::{Context, Result};
use serde_json::json;

use super::admin_client::{AdminClient, encode};
use crate::suppression::Suppression;

#[derive(clap::Subcommand, Debug)]
pub enum SuppressionCommand {
    /// List entries in key order (scope, then address).
    Ls {
        /// At most this many (the API pages by 10,000).
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// Suppress an address: for every sender, or only for one sender
    /// domain (--scope).
    Add {
        address: String,
        /// A sender domain; default `*`, every sender.
        #[arg(long)]
        scope: Option<String>,
        /// Why (shown in `ls`).
        #[arg(long, default_value = "operator")]
        reason: String,
        /// Lift it after this many seconds.
        #[arg(long = "for")]
        for_secs: Option<u64>,
    },
    /// Lift a suppression.
    Rm {
        address: String,
        #[arg(long)]
        scope: Option<String>,
    },
    /// Add every line of a CSV file: `address[,scope[,reason[,expires_in_secs]]]`
    /// (`#` comments and an `address,...` header line are skipped), 10,000
    /// to a request, each answered once on disk. Shows progress on a
    /// terminal.
    Import { file: PathBuf },
}

pub fn run(api: &AdminClient, command: SuppressionCommand, json_out: bool) -> Result<()> {
    let scope_query = |s: &Option<String>| {
        s.as_ref()
            .map_or(String::new(), |s| format!("?scope={}", encode(s)))
    };
    match command {
        SuppressionCommand::Ls { limit } => {
            let mut all: Vec<Suppression> = Vec::new();
            let mut after: Option<String> = None;
            while all.len() < limit {
                let page_size = (limit - all.len()).min(crate::http::suppressions::MAX_BATCH);
                let mut target = format!("/suppressions?limit={page_size}");
                if let Some(a) = &after {
                    target += &format!("&after={}", encode(a));
                }
                let page: Vec<Suppression> = serde_json::from_value(api.call("GET", &target)?)?;
                let done = page.len() < page_size;
                after = page.last().map(|s| format!("{}:{}", s.scope, s.address));
                all.extend(page);
                if done {
                    break;
                }
            }
            if json_out {
                println!("{}", serde_json::to_string(&all)?);
                return Ok(());
            }
            println!(
                "{:<40} {:<20} {:<18} {:<8} expires",
                "address", "scope", "reason", "source"
            );
            for s in &all {
                let expires = match s.expires {
                    0 => "never".to_string(),
                    t => chrono::DateTime::from_timestamp(t as i64, 0)
                        .map_or(t.to_string(), |d| d.format("%Y-%m-%d %H:%M").to_string()),
                };
                println!(
                    "{:<40} {:<20} {:<18} {:<8} {expires}",
                    s.address, s.scope, s.reason, s.source
                );
            }
            Ok(())
        }
        SuppressionCommand::Add {
            address,
            scope,
            reason,
            for_secs,
        } => {
            let body = json!([{ "address": address, "scope": scope, "reason": reason, "expires_in_secs": for_secs }]);
            api.call_with_body("POST", "/suppressions", body.to_string().as_bytes())?;
            println!("{address}: suppressed");
            Ok(())
        }
        SuppressionCommand::Rm { address, scope } => {
            let answer = api.call(
                "DELETE",
                &format!("/suppressions/{}{}", encode(&address), scope_query(&scope)),
            )?;
            match answer["removed"].as_bool() {
                Some(true) => println!("{address}: no longer suppressed"),
                _ => println!("{address}: was not suppressed"),
            }
            Ok(())
        }
        SuppressionCommand::Import { file } => import(api, &file),
    }
}

/// One CSV line as an entry for the API; None for comments and the header.
fn entry(line: &str) -> Result<Option<serde_json::Value>, String> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') || line.to_ascii_lowercase().starts_with("address,")
    {
        return Ok(None);
    }
    let mut cols = line.split(',').map(str::trim);
    let address = cols.next().unwrap_or_default();
    let scope = cols.next().filter(|s| !s.is_empty());
    let reason = cols.next().filter(|s| !s.is_empty()).unwrap_or("import");
    let expires = match cols.next().filter(|s| !s.is_empty()) {
        Some(n) => Some(
            n.parse::<u64>()
                .map_err(|_| format!("expires_in_secs `{n}` is not a number"))?,
        ),
        None => None,
    };
    Ok(Some(json!({
        "address": address, "scope": scope, "reason": reason,
        "expires_in_secs": expires, "source": "import"
    })))
}

fn import(api: &AdminClient, file: &PathBuf) -> Result<()> {
    let size = std::fs::metadata(file)
        .with_context(|| format!("{}", file.display()))?
        .len();
    let reader = std::io::BufReader::new(
        std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?,
    );
    let bar = indicatif::ProgressBar::new(size);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {msg} (eta {eta})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let (mut batch, mut added) = (Vec::new(), 0u64);
    let send = |batch: &mut Vec<serde_json::Value>, added: &mut u64| -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let body = serde_json::to_vec(&batch)?;
        let answer = api.call_with_body("POST", "/suppressions", &body)?;
        *added += answer["added"].as_u64().unwrap_or(0);
        batch.clear();
        Ok(())
    };
    for (n, line) in reader.lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", file.display()))?;
        bar.inc(line.len() as u64 + 1);
        match entry(&line) {
            Ok(Some(e)) => batch.push(e),
            Ok(None) => {}
            Err(e) => anyhow::bail!("{} line {}: {e}", file.display(), n + 1),
        }
        if batch.len() == crate::http::suppressions::MAX_BATCH {
            send(&mut batch, &mut added)
                .with_context(|| format!("{} up to line {}", file.display(), n + 1))?;
            bar.set_message(format!("{added} added"));
        }
    }
    send(&mut batch, &mut added)?;
    bar.finish_and_clear();
    println!("{}: {added} addresses suppressed", file.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_lines() {
        assert_eq!(entry("address,scope,reason").unwrap(), None);
        assert_eq!(entry("# note").unwrap(), None);
        assert_eq!(entry("").unwrap(), None);
        let e = entry("a@b.example").unwrap().unwrap();
        assert_eq!(e["address"], "a@b.example");
        assert!(e["scope"].is_null());
        let e = entry("a@b.example, brand.example ,complaint, 86400")
            .unwrap()
            .unwrap();
        assert_eq!(
            (e["scope"].as_str(), e["reason"].as_str()),
            (Some("brand.example"), Some("complaint"))
        );
        assert_eq!(e["expires_in_secs"], 86400);
        assert!(entry("a@b.example,,,soon").is_err());
    }
}
