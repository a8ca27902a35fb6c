//! `[priority]`: delivery priority lanes, so that a few urgent messages
//! are never stuck behind a bulk campaign.

use serde::{Deserialize, Serialize};

use super::Problems;

/// A message's delivery priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Password resets, one-time codes, receipts.
    High,
    #[default]
    Normal,
    /// Newsletters, campaigns.
    Bulk,
}

impl Priority {
    pub const ALL: [Priority; 3] = [Priority::High, Priority::Normal, Priority::Bulk];

    /// Its lane: 0 (high) to 2 (bulk).
    pub fn lane(self) -> usize {
        self as usize
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Bulk => "bulk",
        }
    }

    /// From a header field or an injection field, case-insensitive.
    pub fn parse(text: &str) -> Result<Priority, String> {
        Priority::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(text.trim()))
            .ok_or_else(|| format!("priority {text:?}: want high, normal or bulk"))
    }
}

section! {
    /// Priority lanes. A message's priority is `high`, `normal` or
    /// `bulk`: the HTTP injection's `priority` field, else the `header`
    /// below from a trusted SMTP client (taken out of every message),
    /// else its egress pool's `priority`, else `normal`. Wherever
    /// messages wait for the same destination (a domain's queue, a path's
    /// free connection), the lanes take turns in proportion to their
    /// weights (smooth weighted round-robin over the lanes that have
    /// mail): urgent mail goes first, and bulk always keeps its share. An
    /// unknown value is refused (SMTP `550 5.6.0`, HTTP 400).
    PriorityConfig = "priority" {
        /// The header a trusted SMTP client names the priority in. Empty:
        /// none read (and none removed).
        header: String = "X-Ringpost-Priority".to_string(),
        /// Turns of the high lane, among those with mail waiting.
        weight_high: u32 = 16,
        /// Turns of the normal lane.
        weight_normal: u32 = 4,
        /// Turns of the bulk lane (at least 1: never starved).
        weight_bulk: u32 = 1,
    }
}

impl PriorityConfig {
    pub fn check(&self, p: &mut Problems) {
        let h = &self.header;
        if !h.is_empty() && !h.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
            p.at("priority.header", format!("{h:?} is not a header name"));
        }
        for (key, w) in [
            ("priority.weight_high", self.weight_high),
            ("priority.weight_normal", self.weight_normal),
            ("priority.weight_bulk", self.weight_bulk),
        ] {
            if w == 0 || w > 1000 {
                p.at(key, "must be between 1 and 1000");
            }
        }
    }

    /// The weights by lane.
    pub fn weights(&self) -> [u32; 3] {
        [self.weight_high, self.weight_normal, self.weight_bulk]
    }
}
