//! `[feedback]`: complaint (ARF) and asynchronous bounce (DSN) intake.

use super::Problems;

section! {
    /// Reports that receivers send back. Mail to a feedback address is
    /// read instead of queued: a spam complaint (ARF, RFC 5965) or a
    /// delivery status notification (RFC 3464) is tied back to the
    /// message it is about (its queue id, from `tracking_header` or the
    /// `Received:` header ringpost wrote, in the copy of the message or
    /// headers the report carries), logged as a `Complaint` or
    /// `AsyncBounce` event, classified (`[bounce_classifier]`), and feeds
    /// the suppression list: a complainer always (`suppress_complaints`),
    /// a failed recipient when its category is one of
    /// `suppression.categories`. A report that cannot be read is answered
    /// 250 all the same (the reporter cannot do better), counted, and kept
    /// in `malformed_dir` for inspection. Feedback addresses must be in
    /// `smtp.local_domains`, so that reporters may send to them.
    FeedbackConfig = "feedback" {
        /// Addresses whose mail is a report, e.g. `"fbl@mail.example.com"`
        /// (give these to the providers' feedback loops).
        addresses: Vec<String> = Vec::new(),
        /// Domains every address of which is a report address (a bounce
        /// domain: use an address under it as the envelope sender, and
        /// asynchronous bounces come back here).
        domains: Vec<String> = Vec::new(),
        /// A header ringpost adds to every message at reception, holding
        /// its queue id, to tie reports back (e.g. `"X-Ringpost-Id"`).
        /// Empty: none added; reports are then tied back by the
        /// `Received:` header ringpost writes, which carries the same id.
        tracking_header: String = String::new(),
        /// Whether a complaint puts the complaining recipient on the
        /// suppression list (scope as `suppression.scope`, reason
        /// "Complaint").
        suppress_complaints: bool = true,
        /// Where reports that could not be read are kept, one file each.
        /// Empty: `feedback-malformed` under `spool.dir`.
        malformed_dir: String = String::new(),
        /// Malformed reports kept at most; beyond this they are counted
        /// only.
        malformed_keep: usize = 1000,
    }
}

impl FeedbackConfig {
    pub fn check(&self, local_domains: &[String], p: &mut Problems) {
        let local = |d: &str| local_domains.iter().any(|l| l.eq_ignore_ascii_case(d));
        for a in &self.addresses {
            match a.rsplit_once('@') {
                Some((l, d)) if !l.is_empty() && !d.is_empty() => {
                    if !local(d) {
                        p.at(
                            "feedback.addresses",
                            format!("{a}: {d} is not in smtp.local_domains, so no reporter could send to it"),
                        );
                    }
                }
                _ => p.at("feedback.addresses", format!("{a:?} is not an address")),
            }
        }
        for d in &self.domains {
            if !local(d) {
                p.at(
                    "feedback.domains",
                    format!("{d} is not in smtp.local_domains, so no reporter could send to it"),
                );
            }
        }
        let h = &self.tracking_header;
        if !h.is_empty() && !h.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
            p.at(
                "feedback.tracking_header",
                format!("{h:?} is not a header name"),
            );
        }
    }

    /// Whether mail to `rcpt` is a report to read.
    pub fn is_report_address(&self, rcpt: &str) -> bool {
        let domain = rcpt.rsplit_once('@').map_or("", |(_, d)| d);
        self.addresses.iter().any(|a| a.eq_ignore_ascii_case(rcpt))
            || self.domains.iter().any(|d| d.eq_ignore_ascii_case(domain))
    }

    /// Whether any report address is configured.
    pub fn is_on(&self) -> bool {
        !self.addresses.is_empty() || !self.domains.is_empty()
    }

    pub fn malformed_dir(&self, spool_dir: &std::path::Path) -> std::path::PathBuf {
        match self.malformed_dir.as_str() {
            "" => spool_dir.join("feedback-malformed"),
            d => d.into(),
        }
    }
}
