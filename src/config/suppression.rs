//! `[suppression]`: recipients ringpost will not send to.

use serde::{Deserialize, Serialize};

use super::Problems;

/// What reception does with a suppressed recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SuppressionAction {
    /// SMTP: `550 5.7.1 Recipient suppressed` at RCPT; HTTP: the
    /// recipient is in `failed_recipients`.
    #[default]
    Reject,
    /// SMTP: `250` at RCPT, and the recipient is dropped (not queued; a
    /// message whose every recipient was dropped is answered 250 and
    /// discarded), for clients that cannot handle a 5xx.
    Drop,
}

/// Whom a suppression made after a bounce applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SuppressionScope {
    /// Every sender.
    #[default]
    Global,
    /// Senders of the bouncing message's envelope-sender domain only.
    SenderDomain,
}

section! {
    /// The suppression list: recipients whose mail bounced for good (in
    /// the `categories` below) or whom an operator added (`ringpost
    /// suppression add|import`, admin API `/suppressions`). Reception checks
    /// it for every recipient, SMTP at RCPT and HTTP injection alike. It is
    /// one sled database for the node, kept apart from the spool's shards;
    /// an entry reported added by the admin API is on disk.
    SuppressionConfig = "suppression" {
        /// Whether reception checks the list and bounces add to it.
        enabled: bool = true,
        /// `"reject"` or `"drop"` (see above).
        action: SuppressionAction = SuppressionAction::Reject,
        /// Bounce categories (`[bounce_classifier]`) whose recipients are
        /// suppressed when their delivery fails for good.
        categories: Vec<String> = ["InvalidRecipient", "InactiveMailbox", "BadDomain"].map(String::from).to_vec(),
        /// `"global"` (every sender) or `"sender_domain"` (the bouncing
        /// message's envelope-sender domain) for suppressions made after
        /// a bounce.
        scope: SuppressionScope = SuppressionScope::Global,
        /// Lifetime of a suppression made after a bounce, in seconds; 0:
        /// until removed.
        expiry_secs: u64 = 0,
        /// Bounce categories whose cause may pass: a domain that did not
        /// resolve once (a DNS outage of minutes) must not blacklist its
        /// recipients for good. Suppressions made after a bounce in one of
        /// these expire after `passing_expiry_secs` (or `expiry_secs`, if
        /// shorter); the others as `expiry_secs` says.
        passing_categories: Vec<String> = vec!["BadDomain".to_string()],
        /// Lifetime of a suppression in a `passing_categories` category,
        /// in seconds (3 days: mail to the domain is refused meanwhile,
        /// then tried again; a domain still dead bounces and is suppressed
        /// again). 0: as `expiry_secs`.
        passing_expiry_secs: u64 = 3 * 86_400,
        /// Directory of the list's database. Empty: `suppressions` under
        /// `spool.dir`.
        path: String = String::new(),
    }
}

impl SuppressionConfig {
    pub fn check(&self, p: &mut Problems) {
        for (key, c) in self
            .categories
            .iter()
            .map(|c| ("suppression.categories", c))
            .chain(
                self.passing_categories
                    .iter()
                    .map(|c| ("suppression.passing_categories", c)),
            )
        {
            if !crate::config::BOUNCE_CATEGORIES.contains(&c.as_str()) {
                p.at(
                    key,
                    format!(
                        "unknown category {c:?}: use some of {:?}",
                        crate::config::BOUNCE_CATEGORIES
                    ),
                );
            }
        }
    }

    /// How long an automatic suppression for `reason` (a bounce
    /// category) lives, in seconds; 0: until removed.
    pub fn lifetime(&self, reason: &str) -> u64 {
        let passing = self.passing_categories.iter().any(|c| c == reason);
        match (passing, self.passing_expiry_secs, self.expiry_secs) {
            (false, _, all) | (true, 0, all) => all,
            (true, passing, 0) => passing,
            (true, passing, all) => passing.min(all),
        }
    }

    /// Where the list's database lives.
    pub fn dir(&self, spool_dir: &std::path::Path) -> std::path::PathBuf {
        match self.path.as_str() {
            "" => spool_dir.join("suppressions"),
            p => p.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_passing_category_expires_and_the_others_as_configured() {
        let mut c = SuppressionConfig::default();
        assert_eq!(c.lifetime("BadDomain"), 3 * 86_400);
        assert_eq!(c.lifetime("InvalidRecipient"), 0, "until removed");
        c.expiry_secs = 3600;
        assert_eq!(c.lifetime("BadDomain"), 3600, "the shorter");
        assert_eq!(c.lifetime("InvalidRecipient"), 3600);
        c.passing_expiry_secs = 0;
        assert_eq!(c.lifetime("BadDomain"), 3600);
        c.expiry_secs = 0;
        assert_eq!(c.lifetime("BadDomain"), 0);
        let mut p = Problems::default();
        c.passing_categories = vec!["Nonsense".into()];
        c.check(&mut p);
        assert!(!p.is_empty());
    }
}
