//! `[backoff]`: what ringpost does, beyond retrying, when receivers say
//! "slow down".

use serde::{Deserialize, Serialize};

use super::Problems;

/// One reply-driven rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackoffRule {
    /// The bounce category the failure must have (`[bounce_classifier]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    /// A regular expression (case-insensitive) the reply must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// What to do: `"suspend"`, `"throttle"` or `"bounce"` (see the
    /// section).
    pub action: String,
    /// How long the action lasts, in seconds: the suspension, the
    /// throttle's recovery after its last cut, the bouncing.
    pub secs: u64,
    /// For `"throttle"`: what each cut multiplies the path's rate and
    /// connections by, between 0 and 1.
    #[serde(default = "default_factor")]
    pub factor: f64,
}

fn default_factor() -> f64 {
    0.5
}

section! {
    /// Reply-driven back-off. Each rule names a bounce category, a
    /// regular expression over the reply (case-insensitive), or both; a
    /// deferral or bounce that fits a rule (the first that fits) makes
    /// ringpost act on its destination domain (a throttle: on the path):
    ///
    /// - `"suspend"`: no delivery to the domain for `secs` seconds (with
    ///   egress sources: none over the path the reply came over, that
    ///   source to that site, while the pool's other sources carry on),
    ///   stored in the spool like `ringpost queue suspend NAME --for` (it
    ///   survives a restart, shows in `queue summary`, ends by itself, and
    ///   `queue resume` lifts it). A suspension already in force is left
    ///   as it is.
    /// - `"throttle"` (AIMD): the rate and connections of the path the
    ///   reply came over (its egress source and site, see
    ///   `delivery.shaping_file`) are cut to
    ///   `factor` times what they were (the rate measured over the last
    ///   second, or the throttled rate if one holds), at most once a
    ///   second; they then grow back linearly over `secs` seconds after
    ///   the last cut, when the throttle ends. Not stored: a restart ends it.
    /// - `"bounce"`: the domain's queued recipients, and those that come
    ///   due within `secs` seconds, fail without an attempt, with the
    ///   reply that triggered the rule in the DSN.
    ///
    /// The shard that hears the reply acts and tells the node's other
    /// shards, which act too. Actions in force show in
    /// `queue summary`; they are counted in
    /// `ringpost_backoff_actions_total{action,category}`.
    ///
    /// Example: `rules = [{ text = '\[TSS04\]', action = "suspend", secs
    /// = 3600 }, { category = "RateLimited", action = "throttle", factor =
    /// 0.5, secs = 300 }]`. None by default: ringpost then only retries
    /// on its schedule.
    BackoffConfig = "backoff" {
        /// The rules, tried in order.
        rules: Vec<BackoffRule> = Vec::new(),
    }
}

impl BackoffConfig {
    pub fn check(&self, p: &mut Problems) {
        for (i, r) in self.rules.iter().enumerate() {
            let key = format!("backoff.rules[{i}]");
            if !["suspend", "throttle", "bounce"].contains(&r.action.as_str()) {
                p.at(
                    &key,
                    format!(
                        "action {:?}: one of \"suspend\", \"throttle\", \"bounce\"",
                        r.action
                    ),
                );
            }
            if !(r.factor > 0.0 && r.factor < 1.0) {
                p.at(&key, "factor must be between 0 and 1 (exclusive)");
            }
            if r.secs == 0 {
                p.at(&key, "secs must be at least 1");
            }
            if r.category.is_none() && r.text.is_none() {
                p.at(&key, "needs a category, a text, or both");
            }
            if let Some(c) = &r.category
                && !super::BOUNCE_CATEGORIES.contains(&c.as_str())
            {
                p.at(&key, format!("unknown category {c:?}"));
            }
            if let Some(t) = &r.text
                && let Err(e) = regex::Regex::new(t)
            {
                p.at(&key, format!("text: {e}"));
            }
        }
    }
}
