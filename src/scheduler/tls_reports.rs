//! TLS reports (RFC 8460) made of the shards' counts of their outbound TLS
//! sessions (`outbound::Delivery::tls_sessions`, counted per attempt).
//!
//! Each shard keeps its counts in its spool (kept tree `tls_reports`,
//! written from the timer about once a minute when they changed) and
//! reads them back at start: a crash loses what came after the last write.
//! Shard 0, once a UTC day has ended (by the shard's clock), takes every
//! shard's counts of ended days over the shard mesh, merges them, looks
//! up each domain's `_smtp._tls` record and queues one report message to
//! its `mailto:` addresses through the reception door, as DSNs go (signed
//! like any mail), and POSTs it (gzipped JSON, `application/tlsrpt+gzip`)
//! to its `https:` addresses, over TLS verified against `tls.ca_file`,
//! once (a failed POST is logged; the mail copies are retried).
//! A report queued is durable; the shards' stored counts lose the day
//! with their next write, so a crash in between repeats a report rather
//! than losing it.
//!
//! May call: `tlsrpt` (the counts, the report), `dns` (the record),
//! `queue` (the kept tree, the new message), `events` (the HTTP client).
//! Must not: send mail itself.

use std::rc::Rc;

use mail_auth::common::parse::TxtRecordParser;
use mail_auth::mta_sts::{ReportUri, TlsRpt};
use mail_auth::report::tlsrpt::TlsReport;

use super::Scheduler;
use crate::events::client::Poster;
use crate::queue::{Envelope, NewMessage};
use crate::tlsrpt::{DAY, Reporter, Tally};

/// The one key of a shard's counts in its kept tree.
const KEY: &[u8] = b"tally";

/// Longest a report's POST may take.
const POST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// `data` gzipped.
fn gzip(data: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data)?;
    e.finish()
}

/// How often (timer ticks of 200 ms) a shard writes its counts when they
/// changed: about once a minute.
pub(super) const SAVE_EVERY_TICKS: u64 = 300;

impl Scheduler {
    /// The counts this shard kept before a restart.
    pub(super) fn load_tls_sessions(&self) {
        let Some(bytes) = self.tls_kept.get(KEY) else {
            return;
        };
        match serde_json::from_slice::<Tally>(&bytes) {
            Ok(tally) => *self.delivery.tls_sessions.borrow_mut() = tally,
            Err(e) => log::warn!("TLS report counts in the spool unreadable, started anew: {e}"),
        }
    }

    /// Writes this shard's counts if they changed since the last write.
    pub(super) fn save_tls_sessions(&self) {
        let json = match serde_json::to_vec(&*self.delivery.tls_sessions.borrow()) {
            Ok(json) => json,
            Err(_) => return,
        };
        if *self.tls_saved.borrow() == json {
            return;
        }
        match self.tls_kept.put(KEY, &json) {
            Ok(()) => *self.tls_saved.borrow_mut() = json,
            Err(e) => log::warn!("keeping the TLS report counts: {e}"),
        }
    }

    /// This shard's counts of the days before the one `now` is in, taken
    /// out (and the rest written at once).
    fn take_ended_tls_sessions(&self, now: u64) -> Tally {
        let ended = self.delivery.tls_sessions.borrow_mut().take_ended(now);
        if !ended.is_empty() {
            self.save_tls_sessions();
        }
        ended
    }

    /// On shard 0, from the timer: when the day has changed since the
    /// last look, the reports of the days that ended.
    pub(super) async fn report_ended_days(self: &Rc<Self>) {
        let now = self.clock.now();
        let today = now - now % DAY;
        if self.shard != 0 || self.tls_report_day.get() == today {
            return;
        }
        self.tls_report_day.set(today);
        let Some(reporter) = self.reporter() else {
            return;
        };
        let counts = self
            .mesh
            .ask_all(move |s: Rc<Scheduler>| async move { s.take_ended_tls_sessions(now) })
            .await;
        let mut all = Tally::default();
        for shard in counts.into_iter().flatten() {
            all.merge(shard);
        }
        for (day, domain) in all.reports_due() {
            self.report_to(&all, day, &domain, &reporter).await;
        }
    }

    /// POSTs `report` to an `https:` address (RFC 8460 §3: gzipped JSON,
    /// `application/tlsrpt+gzip`).
    async fn post_report(&self, report: &TlsReport, domain: &str, url: &str) {
        let Some(tls) = self.delivery.verified.clone() else {
            log::warn!("TLS report for {domain} not posted to {url}: no CA bundle (tls.ca_file)");
            return;
        };
        let body = match gzip(report.to_json().as_bytes()) {
            Ok(body) => body,
            Err(e) => {
                log::error!("TLS report for {domain}: {e}");
                return;
            }
        };
        let posted = match Poster::new(url, Some(tls), POST_TIMEOUT) {
            Ok(mut poster) => {
                let headers = [("content-type", "application/tlsrpt+gzip".to_string())];
                poster
                    .post(body.into(), &headers)
                    .await
                    .map_err(|e| e.to_string())
            }
            Err(e) => Err(e),
        };
        match posted {
            Ok(status) if (200..300).contains(&status) => {
                ::metrics::counter!(crate::metrics::TLS_REPORTS_SENT).increment(1);
                log::info!("TLS report for {domain} posted to {url}");
            }
            Ok(status) => log::warn!("TLS report for {domain}: {url} answered {status}"),
            Err(e) => log::warn!("TLS report for {domain} not posted to {url}: {e}"),
        }
    }

    fn reporter(&self) -> Option<Reporter> {
        let r = &self.cfg.tls_reporting;
        r.is_on().then(|| Reporter {
            organization: r.organization.clone(),
            contact: r.contact().to_string(),
            submitter: self.cfg.hostname().to_string(),
            node: self.cfg.hostname().to_string(),
        })
    }

    /// `domain`'s report of `day`, to the addresses its `_smtp._tls`
    /// record names (none: no report).
    async fn report_to(&self, all: &Tally, day: u64, domain: &str, reporter: &Reporter) {
        let name = format!("_smtp._tls.{domain}");
        let records = match self.router.resolver().txt(&name).await {
            Ok(records) => records,
            Err(e) => {
                log::info!("no TLS report for {domain}: {name}: {e}");
                return;
            }
        };
        let Some(rpt) = records.iter().find_map(|r| TlsRpt::parse(r).ok()) else {
            return;
        };
        let report = all.report(day, domain, reporter);
        let mut mail = Vec::new();
        for uri in &rpt.rua {
            match uri {
                ReportUri::Mail(to) => mail.push(to.as_str()),
                ReportUri::Http(url) => self.post_report(&report, domain, url).await,
            }
        }
        if mail.is_empty() {
            return;
        }
        let from = self.cfg.tls_reporting.from.as_str();
        let mut body = Vec::new();
        let written = report.write_rfc5322(
            domain,
            &reporter.submitter,
            from,
            mail.iter().copied(),
            &mut body,
        );
        if let Err(e) = written {
            log::error!("TLS report for {domain}: {e}");
            return;
        }
        let rcpts = mail.iter().map(|m| m.to_string()).collect();
        let msg = NewMessage {
            id: self.spool.new_id(),
            envelope: Envelope::new(from.to_string(), rcpts, 0),
            body,
            content_start: 0,
            trusted: true,
            complete: crate::queue::Completion {
                date: true,
                message_id: true,
                unsubscribe: Some(false),
            },
        };
        let sent = match &*self.notifications.borrow() {
            Some(tx) => tx.send(msg).is_ok(),
            None => false,
        };
        match sent {
            true => {
                ::metrics::counter!(crate::metrics::TLS_REPORTS_SENT).increment(1);
                log::info!(
                    "TLS report of {domain} for {} queued to {}",
                    report.date_range.start_datetime.to_rfc3339(),
                    mail.join(", ")
                );
            }
            false => log::error!("TLS report for {domain}: reception is closed"),
        }
    }
}
