//! The configuration reference, made from the sections' own definitions:
//! docs/configuration.md is this module's output (`ringpost
//! config-reference`), and a test fails when the file and the code differ.

use serde::Serialize;

/// One key: its name, its doc comment, its default as TOML.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyDoc {
    pub key: &'static str,
    pub doc: &'static str,
    pub default: String,
}

/// One section: its name, its doc comment, its keys in order.
#[derive(Debug, Clone, PartialEq)]
pub struct SectionDoc {
    pub name: &'static str,
    pub doc: &'static str,
    pub keys: Vec<KeyDoc>,
}

/// A default as it is written in TOML, with the size or time it means
/// when that is easier to read.
pub fn default_text(key: &str, value: &impl Serialize) -> String {
    let toml = match toml::Value::try_from(value) {
        Ok(v) => v.to_string(),
        Err(_) => return "?".into(),
    };
    let n: Option<u64> = toml.parse().ok();
    let unit = match n {
        Some(n) if (key.contains("bytes") || key.contains("size")) && n >= 1 << 20 => {
            Some(format!("{} MiB", n as f64 / (1 << 20) as f64))
        }
        Some(n) if key.ends_with("_secs") && n >= 86_400 && n % 86_400 == 0 => {
            Some(format!("{} days", n / 86_400))
        }
        _ => None,
    };
    match unit {
        Some(u) => format!("`{toml}` ({u})"),
        None => format!("`{toml}`"),
    }
}

/// Doc comment text as paragraphs (a blank line separates them).
fn paragraphs(doc: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current: Vec<&str> = Vec::new();
    for line in doc.lines().map(str::trim) {
        if line.is_empty() {
            if !current.is_empty() {
                out.push(current.join(" "));
                current.clear();
            }
        } else {
            current.push(line);
        }
    }
    if !current.is_empty() {
        out.push(current.join(" "));
    }
    out
}

const INTRO: &str = "\
# Configuration reference

ringpost runs without a config file: the defaults below *are* the embedded
default config. A TOML file given with `--config FILE` overrides them key by
key; keys it does not mention keep their defaults. Unknown sections and keys
are errors. `ringpost check-config FILE` checks a file as `serve` would before
it binds anything (the values, and the files they name: certificates, keys,
users, tokens, the delivery log's directory) and prints every problem at once
with its line.

This page is generated from the code (`ringpost config-reference`), where each
key is defined once with its default and this text; a test keeps the two the
same.
";

const ENVIRONMENT: &str = "\
## Environment

| variable | meaning |
|---|---|
| `RUST_LOG` | Log filter (`error`, `warn`, `info` (default), `debug`, `trace`, or per module, e.g. `ringpost::queue=debug`). Logs go to stderr; the delivery log (`delivery.log`) goes to stdout by default. |
";

/// The whole reference as Markdown.
pub fn reference_markdown() -> String {
    let sections = [
        super::ServerConfig::reference(),
        super::SpoolConfig::reference(),
        super::SmtpConfig::reference(),
        super::SubmissionConfig::reference(),
        super::InjectConfig::reference(),
        super::DeliveryConfig::reference(),
        super::BounceClassifierConfig::reference(),
        super::SuppressionConfig::reference(),
        super::BackoffConfig::reference(),
        super::FeedbackConfig::reference(),
        super::MetaConfig::reference(),
        super::PriorityConfig::reference(),
        super::EgressConfig::reference(),
        super::EventsConfig::reference(),
        super::HistoryConfig::reference(),
        super::ClusterConfig::reference(),
        super::DnsConfig::reference(),
        super::TlsConfig::reference(),
        super::TlsReportingConfig::reference(),
        super::UnsubscribeConfig::reference(),
        super::DkimConfig::reference(),
        super::MetricsConfig::reference(),
        super::AdminConfig::reference(),
    ];
    let mut out = String::from(INTRO);
    for s in sections {
        out.push_str(&format!("\n## `[{}]`\n\n", s.name));
        let mut paras = paragraphs(s.doc).into_iter();
        if let Some(first) = paras.next() {
            out.push_str(&first);
            out.push_str("\n\n");
        }
        out.push_str("| key | default | meaning |\n|---|---|---|\n");
        for k in &s.keys {
            let meaning = paragraphs(k.doc).join(" ");
            out.push_str(&format!("| `{}` | {} | {} |\n", k.key, k.default, meaning));
        }
        for p in paras {
            out.push('\n');
            out.push_str(&p);
            out.push('\n');
        }
    }
    out.push('\n');
    out.push_str(ENVIRONMENT);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_read_as_toml_with_their_meaning() {
        assert_eq!(
            default_text("cache_bytes", &(64u64 << 20)),
            "`67108864` (64 MiB)"
        );
        assert_eq!(
            default_text("max_age_secs", &432_000u64),
            "`432000` (5 days)"
        );
        assert_eq!(default_text("log", &"stdout"), "`\"stdout\"`");
        assert_eq!(default_text("x", &Vec::<String>::new()), "`[]`");
    }

    #[test]
    fn paragraphs_split_on_blank_lines() {
        assert_eq!(paragraphs(" a\n b\n\n c\n"), ["a b", "c"]);
    }
}
