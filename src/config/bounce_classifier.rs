//! `[bounce_classifier]`: the rules that give every failed or deferred
//! delivery its category.

use super::Problems;

/// The bounce categories (`classify::BounceCategory`, whose names a test
/// holds to this list), for the keys that name them.
pub const BOUNCE_CATEGORIES: &[&str] = &[
    "InvalidRecipient",
    "BadDomain",
    "InactiveMailbox",
    "QuotaIssues",
    "MessageTooLarge",
    "SpamBlock",
    "SpamContent",
    "PolicyRelated",
    "AuthFailure",
    "TLSRequired",
    "RateLimited",
    "TransientFailure",
    "ProtocolError",
    "Other",
];

section! {
    /// Every failed or deferred delivery gets a category
    /// (InvalidRecipient, BadDomain, InactiveMailbox, QuotaIssues,
    /// MessageTooLarge, SpamBlock, SpamContent, PolicyRelated,
    /// AuthFailure, TLSRequired, RateLimited, TransientFailure,
    /// ProtocolError, Other), written in the delivery log's
    /// TransientFailure and Bounce events (`category`) and counted in
    /// `ringpost_delivery_failures_total{category,result}`.
    ///
    /// Rules are `[[rule]]` tables with a `category` and a `status` (an
    /// enhanced status code; `"x.1.1"` matches 4.1.1 and 5.1.1), a `text`
    /// (a regular expression, case-insensitive, searched in the reply
    /// line), or both; the first rule that matches decides, and a reply
    /// none matches is TransientFailure if temporary, else Other.
    /// ringpost's own rules (src/classify/default-rules.toml: large
    /// providers' replies first, then RFC 3463 codes, then text) come
    /// after the operator's file.
    BounceClassifierConfig = "bounce_classifier" {
        /// The operator's rules file (TOML, `[[rule]]` tables as above),
        /// read at start-up before ringpost's own rules, so that its rules
        /// win. Empty: none. A file that does not load, or a rule with an
        /// unknown category, a malformed status or a bad expression, stops
        /// `serve` and is reported by `check-config`.
        rules_file: String = String::new(),
        /// Whether ringpost's own rules follow the operator's. Off: only
        /// the operator's file classifies.
        default_rules: bool = true,
    }
}

impl BounceClassifierConfig {
    pub fn check(&self, p: &mut Problems) {
        if !self.default_rules && self.rules_file.is_empty() {
            p.at(
                "bounce_classifier.default_rules",
                "off, and no rules_file: nothing would classify",
            );
        }
    }
}
