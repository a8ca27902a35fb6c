//! Bounce classification: what a receiver's reply means, as one of a
//! small set of categories a sender can act on (suppress the address,
//! slow down, fix authentication, ...).
//!
//! Owns: [`BounceCategory`], [`Classifier`] (ordered rules, first match
//! wins; each rule an enhanced status code and/or a regular expression
//! over the reply line) and the default rules (`default-rules.toml`,
//! embedded; an operator's file is read before them). The reply parsing
//! ([`parse_reply`]) is a pure function over the text.
//!
//! Used by the scheduler for every failed or deferred delivery (the
//! category goes in the delivery log and `ringpost_delivery_failures_total`).
//!
//! May call: `config` (its section).
//! Must not: do I/O (the caller reads the operator's file), or decide what
//! to do about a category.

use regex::{RegexSet, RegexSetBuilder};
use serde::{Deserialize, Serialize};

/// What a failure means to the sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BounceCategory {
    /// The mailbox does not exist, or the address is malformed.
    InvalidRecipient,
    /// The recipient's domain does not exist or takes no mail.
    BadDomain,
    /// The mailbox exists but is disabled, closed or has moved.
    InactiveMailbox,
    /// The mailbox is full.
    QuotaIssues,
    /// The message is over a size limit.
    MessageTooLarge,
    /// The sending IP or domain is blocked: blocklists, reputation.
    SpamBlock,
    /// This message's content was refused as spam or malware.
    SpamContent,
    /// A local policy refused it: relaying, sender rules, format rules.
    PolicyRelated,
    /// SPF, DKIM or DMARC failed or was missing.
    AuthFailure,
    /// The receiver requires TLS.
    #[serde(rename = "TLSRequired")]
    TlsRequired,
    /// The receiver is throttling: too fast, too many connections.
    RateLimited,
    /// A temporary problem on the way or at the receiver.
    TransientFailure,
    /// SMTP was misused (by either side).
    ProtocolError,
    /// Anything else.
    Other,
}

impl BounceCategory {
    pub const ALL: [BounceCategory; 14] = [
        BounceCategory::InvalidRecipient,
        BounceCategory::BadDomain,
        BounceCategory::InactiveMailbox,
        BounceCategory::QuotaIssues,
        BounceCategory::MessageTooLarge,
        BounceCategory::SpamBlock,
        BounceCategory::SpamContent,
        BounceCategory::PolicyRelated,
        BounceCategory::AuthFailure,
        BounceCategory::TlsRequired,
        BounceCategory::RateLimited,
        BounceCategory::TransientFailure,
        BounceCategory::ProtocolError,
        BounceCategory::Other,
    ];

    /// The name in logs, metrics and rule files.
    pub fn as_str(self) -> &'static str {
        match self {
            BounceCategory::InvalidRecipient => "InvalidRecipient",
            BounceCategory::BadDomain => "BadDomain",
            BounceCategory::InactiveMailbox => "InactiveMailbox",
            BounceCategory::QuotaIssues => "QuotaIssues",
            BounceCategory::MessageTooLarge => "MessageTooLarge",
            BounceCategory::SpamBlock => "SpamBlock",
            BounceCategory::SpamContent => "SpamContent",
            BounceCategory::PolicyRelated => "PolicyRelated",
            BounceCategory::AuthFailure => "AuthFailure",
            BounceCategory::TlsRequired => "TLSRequired",
            BounceCategory::RateLimited => "RateLimited",
            BounceCategory::TransientFailure => "TransientFailure",
            BounceCategory::ProtocolError => "ProtocolError",
            BounceCategory::Other => "Other",
        }
    }

    pub fn parse(name: &str) -> Option<BounceCategory> {
        BounceCategory::ALL.into_iter().find(|c| c.as_str() == name)
    }
}

/// An enhanced status code (RFC 3463): class.subject.detail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusCode {
    pub class: u8,
    pub subject: u16,
    pub detail: u16,
}

/// The reply code and enhanced status code at the start of a reply line.
/// A line our own client made ("greeting: 554 5.7.1 ...") has them after
/// its `stage: ` prefix; "#5.1.0" counts as 5.1.0.
pub fn parse_reply(line: &str) -> (Option<u16>, Option<StatusCode>) {
    let line = line.trim_start();
    let line = match line.as_bytes().first() {
        Some(b) if b.is_ascii_digit() => line,
        _ => match line.split_once(": ") {
            Some((_, rest)) => rest,
            None => return (None, None),
        },
    };
    let bytes = line.as_bytes();
    let code = match bytes.get(..3) {
        Some(d)
            if d.iter().all(u8::is_ascii_digit)
                && matches!(bytes.get(3), None | Some(b' ' | b'-')) =>
        {
            std::str::from_utf8(d)
                .ok()
                .and_then(|s| s.parse::<u16>().ok())
        }
        _ => None,
    };
    let Some(code) = code.filter(|c| (200..600).contains(c)) else {
        return (None, None);
    };
    let rest = line
        .get(4..)
        .unwrap_or("")
        .trim_start()
        .trim_start_matches('#');
    let token = rest.split(|c: char| c.is_whitespace()).next().unwrap_or("");
    let mut parts = token.trim_end_matches([',', ';', ':']).split('.');
    let status = (|| {
        let class: u8 = parts.next()?.parse().ok()?;
        let subject: u16 = parts.next()?.parse().ok()?;
        let detail: u16 = parts.next()?.parse().ok()?;
        let ok =
            matches!(class, 2 | 4 | 5) && parts.next().is_none() && subject < 1000 && detail < 1000;
        ok.then_some(StatusCode {
            class,
            subject,
            detail,
        })
    })();
    (Some(code), status)
}

/// One rule as written in a rules file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleText {
    category: String,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    text: Option<String>,
    /// Documentation only.
    #[serde(default)]
    #[allow(dead_code)]
    note: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    #[serde(default)]
    rule: Vec<RuleText>,
}

/// A status condition: class (None for "x") . subject . detail.
#[derive(Debug, Clone, Copy)]
struct StatusPattern {
    class: Option<u8>,
    subject: u16,
    detail: u16,
}

impl StatusPattern {
    fn parse(s: &str) -> Option<StatusPattern> {
        let mut p = s.split('.');
        let class = match p.next()? {
            "x" | "X" => None,
            c => Some(c.parse().ok().filter(|c| matches!(c, 2 | 4 | 5))?),
        };
        let subject = p.next()?.parse().ok()?;
        let detail = p.next()?.parse().ok()?;
        p.next().is_none().then_some(StatusPattern {
            class,
            subject,
            detail,
        })
    }

    fn matches(&self, s: &StatusCode) -> bool {
        self.class.is_none_or(|c| c == s.class)
            && self.subject == s.subject
            && self.detail == s.detail
    }
}

struct Rule {
    category: BounceCategory,
    status: Option<StatusPattern>,
    /// Index of its expression in the set.
    text: Option<usize>,
}

/// A rules file that does not make sense, with the rule at fault.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("{file}: not a rules file: {reason}")]
    Syntax { file: String, reason: String },
    #[error("{file}: rule {index}: {reason}")]
    Rule {
        file: String,
        index: usize,
        reason: String,
    },
}

/// The rules, compiled: one pass of a [`RegexSet`] over a reply, then the
/// first rule whose conditions hold.
pub struct Classifier {
    rules: Vec<Rule>,
    set: RegexSet,
}

/// The rules shipped with ringpost.
pub const DEFAULT_RULES: &str = include_str!("default-rules.toml");

impl Classifier {
    /// The default rules alone.
    pub fn default_rules() -> Classifier {
        Classifier::new(&[("default rules", DEFAULT_RULES)])
            .expect("the default rules compile (tested)")
    }

    /// Rules from several files' texts, in order (`(name, text)`; the name
    /// is for errors).
    pub fn new(files: &[(&str, &str)]) -> Result<Classifier, RulesError> {
        let mut rules = Vec::new();
        let mut patterns = Vec::new();
        for (source, text) in files {
            let parsed: RulesFile = toml::from_str(text).map_err(|e| RulesError::Syntax {
                file: source.to_string(),
                reason: e.message().to_string(),
            })?;
            for (index, r) in parsed.rule.into_iter().enumerate() {
                let bad = |reason: String| RulesError::Rule {
                    file: source.to_string(),
                    index: index + 1,
                    reason,
                };
                let category = BounceCategory::parse(&r.category)
                    .ok_or_else(|| bad(format!("unknown category {:?}", r.category)))?;
                let status = match &r.status {
                    Some(s) => Some(StatusPattern::parse(s).ok_or_else(|| {
                        bad(format!("status {s:?} is not like \"5.1.1\" or \"x.1.1\""))
                    })?),
                    None => None,
                };
                if status.is_none() && r.text.is_none() {
                    return Err(bad("needs a status, a text, or both".into()));
                }
                let text = match r.text {
                    Some(t) => {
                        regex::Regex::new(&t).map_err(|e| bad(format!("text: {e}")))?;
                        patterns.push(t);
                        Some(patterns.len() - 1)
                    }
                    None => None,
                };
                rules.push(Rule {
                    category,
                    status,
                    text,
                });
            }
        }
        let set = RegexSetBuilder::new(&patterns)
            .case_insensitive(true)
            .size_limit(64 << 20)
            .build()
            .map_err(|e| RulesError::Syntax {
                file: "rules".into(),
                reason: e.to_string(),
            })?;
        Ok(Classifier { rules, set })
    }

    /// The category of a failure whose reply (or our description of what
    /// went wrong) is `reply`; `temporary` says how the delivery ended.
    pub fn classify(&self, reply: &str, temporary: bool) -> BounceCategory {
        let (_, status) = parse_reply(reply);
        let hits = self.set.matches(reply);
        self.rules
            .iter()
            .find(|r| {
                r.status
                    .is_none_or(|p| status.as_ref().is_some_and(|s| p.matches(s)))
                    && r.text.is_none_or(|i| hits.matched(i))
            })
            .map_or(
                match temporary {
                    true => BounceCategory::TransientFailure,
                    false => BounceCategory::Other,
                },
                |r| r.category,
            )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn category_names_are_the_configs() {
        let names: Vec<&str> = BounceCategory::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(names, crate::config::BOUNCE_CATEGORIES);
    }

    #[test]
    fn reply_codes_are_read_from_the_line() {
        let s = |c, sj, d| {
            Some(StatusCode {
                class: c,
                subject: sj,
                detail: d,
            })
        };
        assert_eq!(
            parse_reply("550 5.1.1 user unknown"),
            (Some(550), s(5, 1, 1))
        );
        assert_eq!(
            parse_reply("550-5.7.26 unauthenticated"),
            (Some(550), s(5, 7, 26))
        );
        assert_eq!(
            parse_reply("550 #5.1.0 Address rejected"),
            (Some(550), s(5, 1, 0))
        );
        assert_eq!(
            parse_reply("greeting: 554 5.7.1 go away"),
            (Some(554), s(5, 7, 1))
        );
        assert_eq!(parse_reply("421 RP-001 too many"), (Some(421), None));
        assert_eq!(parse_reply("550 5.7.1; x"), (Some(550), s(5, 7, 1)));
        assert_eq!(parse_reply("550 5.7.x no"), (Some(550), None));
        assert_eq!(parse_reply("connect: Connection refused"), (None, None));
        assert_eq!(parse_reply(""), (None, None));
        assert_eq!(parse_reply("5500 x"), (None, None));
        assert_eq!(parse_reply("550 5.1.1.1 x"), (Some(550), None));
        assert_eq!(parse_reply("999 x"), (None, None));
    }

    #[test]
    fn the_first_matching_rule_decides_and_the_class_is_the_fallback() {
        let c = Classifier::default_rules();
        assert_eq!(
            c.classify("550 5.1.1 nope", false),
            BounceCategory::InvalidRecipient
        );
        assert_eq!(
            c.classify("connect: Connection refused", true),
            BounceCategory::TransientFailure
        );
        assert_eq!(
            c.classify("554 something odd", false),
            BounceCategory::Other
        );
        let mine = "[[rule]]\ncategory = \"SpamBlock\"\ntext = 'nope'\n";
        let c = Classifier::new(&[("mine", mine), ("default", DEFAULT_RULES)]).unwrap();
        assert_eq!(
            c.classify("550 5.1.1 nope", false),
            BounceCategory::SpamBlock
        );
    }

    #[test]
    fn a_bad_rules_file_names_the_rule() {
        for (text, wanted) in [
            (
                "[[rule]]\ncategory = \"Nope\"\ntext = 'x'\n",
                "rule 1: unknown category",
            ),
            ("[[rule]]\ncategory = \"Other\"\n", "rule 1: needs a status"),
            (
                "[[rule]]\ncategory = \"Other\"\nstatus = \"5.1\"\n",
                "rule 1: status",
            ),
            (
                "[[rule]]\ncategory = \"Other\"\ntext = '('\n",
                "rule 1: text",
            ),
            (
                "[[rule]]\ncategory = \"Other\"\nbogus = 1\n",
                "not a rules file",
            ),
        ] {
            let err = Classifier::new(&[("f.toml", text)])
                .err()
                .unwrap()
                .to_string();
            assert!(err.starts_with("f.toml: ") && err.contains(wanted), "{err}");
        }
    }
}
