//! `[tls_reporting]`: the daily TLS reports (RFC 8460) ringpost sends to
//! the receivers it delivered to.

use super::Problems;

section! {
    /// Daily TLS reports (TLS-RPT, RFC 8460) to receivers that ask for
    /// them in a `_smtp._tls` TXT record: for each domain with an MTA-STS
    /// policy (enforce or testing) or DANE records, how many TLS sessions
    /// succeeded and which failed why (`starttls-not-supported`,
    /// `certificate-host-mismatch`, `certificate-expired`,
    /// `certificate-not-trusted`, `validation-failure`), per UTC day. The
    /// counts are kept in the spool (written each minute). After the
    /// day ends, a `mailto:` address gets a `multipart/report;
    /// report-type=tlsrpt` message with the gzipped JSON, queued like any
    /// mail (and DKIM-signed like any, when the `from` domain has a key);
    /// an `https:` address gets a POST. Off while `from` is empty.
    TlsReportingConfig = "tls_reporting" {
        /// The reports' sender (From: and the envelope sender), e.g.
        /// `"tls-reports@example.com"`. Empty: no reports are made.
        from: String = String::new(),
        /// The `organization-name` of the reports.
        organization: String = String::new(),
        /// The `contact-info` of the reports (an address or URL). Empty:
        /// `from`.
        contact: String = String::new(),
    }
}

impl TlsReportingConfig {
    pub fn check(&self, p: &mut Problems) {
        if self.is_on() && !self.from.contains('@') {
            p.at("tls_reporting.from", "must be an address (local@domain)");
        }
        if self.is_on() && self.organization.is_empty() {
            p.at(
                "tls_reporting.organization",
                "must name the reporting organization when reports are on",
            );
        }
    }

    /// Whether TLS sessions are counted and reports sent.
    pub fn is_on(&self) -> bool {
        !self.from.is_empty()
    }

    /// The reports' contact: `contact`, or `from`.
    pub fn contact(&self) -> &str {
        match self.contact.is_empty() {
            true => &self.from,
            false => &self.contact,
        }
    }
}
