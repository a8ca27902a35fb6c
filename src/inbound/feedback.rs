//! Reports that come to a feedback address (`[feedback]`), taken at the
//! reception door instead of being queued.
//!
//! Owns: [`Intake`]. For each report: [`crate::feedback::parse`] reads it;
//! a complaint becomes a `Complaint` event per complaining recipient, a
//! DSN an `AsyncBounce` event per failed recipient with its bounce
//! category; both feed the suppression list (stored durably before the
//! door answers, like the admin API's additions). A report that cannot be
//! read is counted and kept, one file per report, in
//! `feedback.malformed_dir` (up to `feedback.malformed_keep`), written and
//! synced before the door answers: the 250 means it is on disk.
//!
//! Mail to `unsubscribe.mailto` is taken here too, by
//! [`super::unsubscribe::Unsubscriber`].
//!
//! May call: `feedback` (parse), `classify`, `suppression`,
//! `events`, `metrics`. Must not: queue or deliver anything.

use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use crate::classify::Classifier;
use crate::config::Config;
use crate::events::{Event, EventKind, EventLog};
use crate::feedback::{Malformed, Report, ReportKind};
use crate::queue::MessageId;
use crate::shard::clock::Clock;
use crate::shard::log_limit::LogLimit;
use crate::suppression::{self, SuppressionList};

/// What must be stored of a report could not be: the reporter should try
/// again.
#[derive(Debug, thiserror::Error)]
pub enum FeedbackError {
    #[error(transparent)]
    Suppressions(#[from] crate::suppression::SuppressionError),
    #[error("keeping a malformed report in {path}: {source}")]
    Keep {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What became of one report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    /// Read; the events written and the suppressions stored.
    Read(ReportKind),
    /// Not a report ringpost can read: counted and kept.
    Malformed(Malformed),
}

pub struct Intake {
    cfg: Arc<Config>,
    suppressions: Option<Arc<SuppressionList>>,
    classifier: Arc<Classifier>,
    events: Rc<EventLog>,
    clock: Clock,
    malformed_dir: PathBuf,
    malformed_logged: LogLimit,
    /// Mail to `unsubscribe.mailto`, when set.
    unsubscriber: Option<super::unsubscribe::Unsubscriber>,
}

impl Intake {
    pub fn new(
        cfg: Arc<Config>,
        suppressions: Option<Arc<SuppressionList>>,
        classifier: Arc<Classifier>,
        events: Rc<EventLog>,
        clock: Clock,
    ) -> Intake {
        let malformed_dir = cfg.feedback.malformed_dir(&cfg.spool.dir);
        Intake {
            cfg,
            suppressions,
            classifier,
            events,
            clock,
            malformed_dir,
            malformed_logged: LogLimit::new(Duration::from_secs(10)),
            unsubscriber: None,
        }
    }

    /// Also takes mail to `unsubscribe.mailto`.
    pub fn with_unsubscriber(mut self, u: super::unsubscribe::Unsubscriber) -> Intake {
        self.unsubscriber = Some(u);
        self
    }

    /// Whether mail to `rcpt` is a report (or an unsubscribe) to take here.
    pub fn is_report_address(&self, rcpt: &str) -> bool {
        self.cfg.feedback.is_report_address(rcpt)
            || (self.unsubscriber.is_some() && self.cfg.unsubscribe.is_mailto(rcpt))
    }

    /// Takes `content`, which came to `rcpts`: an unsubscribe request if
    /// one of them is the mailto address, a report if one is a feedback
    /// address.
    pub fn take_for<'r>(
        &self,
        report_id: MessageId,
        content: &[u8],
        mut rcpts: impl Iterator<Item = &'r str> + Clone,
    ) -> Result<(), FeedbackError> {
        if let Some(u) = &self.unsubscriber
            && rcpts.clone().any(|r| self.cfg.unsubscribe.is_mailto(r))
        {
            u.take_mail(content)?;
        }
        if rcpts.any(|r| self.cfg.feedback.is_report_address(r)) {
            self.take(report_id, content)?;
        }
        Ok(())
    }

    /// Takes the report `content` (the message as the reporter sent it),
    /// which arrived as message `report_id`. Err only when what must be
    /// stored could not be: the reporter should try again.
    pub fn take(&self, report_id: MessageId, content: &[u8]) -> Result<Taken, FeedbackError> {
        match crate::feedback::parse(content, &self.cfg.feedback.tracking_header) {
            Ok(report) => {
                self.act(report_id, &report)?;
                ::metrics::counter!(
                    crate::metrics::FEEDBACK_REPORTS,
                    "kind" => report.kind.as_str(),
                    "result" => "read",
                )
                .increment(1);
                Ok(Taken::Read(report.kind))
            }
            Err(why) => {
                self.keep_malformed(report_id, content, why)?;
                ::metrics::counter!(
                    crate::metrics::FEEDBACK_REPORTS,
                    "kind" => "unknown",
                    "result" => why.as_str(),
                )
                .increment(1);
                Ok(Taken::Malformed(why))
            }
        }
    }

    /// Events and suppressions for a report that was read.
    fn act(&self, report_id: MessageId, report: &Report) -> Result<(), FeedbackError> {
        let original = report.original_id.as_deref().and_then(MessageId::parse);
        let sender = report
            .original_mail_from
            .as_deref()
            .or(report.original_from.as_deref())
            .unwrap_or("");
        let report_hex = report_id.to_string();
        let mut suppress = Vec::new();
        for r in &report.recipients {
            let (kind, category, reply) = match report.kind {
                ReportKind::Complaint => (EventKind::Complaint, None, None),
                ReportKind::Dsn => {
                    // Only failures: "delayed", "delivered", "relayed" and
                    // "expanded" need nothing from us.
                    let failed = r.action.as_deref() == Some("failed")
                        || r.status.as_deref().is_some_and(|s| s.starts_with('5'));
                    if !failed {
                        continue;
                    }
                    let reply = match (&r.diagnostic, &r.status) {
                        (Some(d), _) => d.clone(),
                        (None, Some(s)) => format!("550 {s}"),
                        (None, None) => "550 5.0.0".to_string(),
                    };
                    let category = self.classifier.classify(&reply, false);
                    (EventKind::AsyncBounce, Some(category), Some(reply))
                }
            };
            let mut ev = Event::new(kind, original.unwrap_or(report_id), sender, &r.address);
            ev.report_id = Some(report_hex.clone());
            ev.feedback_type = report.feedback_type.as_deref();
            ev.reporter = report.reporter.as_deref();
            ev.category = category.map(crate::classify::BounceCategory::as_str);
            ev.reply = reply.as_deref();
            self.events.write(&ev);
            let reason = match category {
                None if self.cfg.feedback.suppress_complaints => Some("Complaint"),
                Some(c)
                    if self
                        .cfg
                        .suppression
                        .categories
                        .iter()
                        .any(|s| s == c.as_str()) =>
                {
                    Some(c.as_str())
                }
                _ => None,
            };
            if let Some(reason) = reason {
                let source = match report.kind {
                    ReportKind::Complaint => "complaint",
                    ReportKind::Dsn => "async_bounce",
                };
                suppress.push(suppression::entry_for(
                    &self.cfg.suppression,
                    sender,
                    &r.address,
                    reason,
                    source,
                    self.clock.now(),
                ));
            }
        }
        if let (Some(list), false) = (&self.suppressions, suppress.is_empty()) {
            list.add_durably(&suppress)?;
            for s in &suppress {
                ::metrics::counter!(crate::metrics::SUPPRESSIONS_ADDED, "source" => s.source.clone())
                    .increment(1);
            }
        }
        Ok(())
    }

    /// Keeps a report that could not be read, for the operator to look at.
    fn keep_malformed(
        &self,
        report_id: MessageId,
        content: &[u8],
        why: Malformed,
    ) -> Result<(), FeedbackError> {
        self.malformed_logged.log(log::Level::Warn, || {
            format!(
                "feedback report {report_id}: {why}; kept in {}",
                self.malformed_dir.display()
            )
        });
        let kept = std::fs::read_dir(&self.malformed_dir).map_or(0, |d| d.count());
        if kept >= self.cfg.feedback.malformed_keep {
            return Ok(());
        }
        let path = self.malformed_dir.join(format!("{report_id}.eml"));
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(&self.malformed_dir)?;
            let mut f = std::fs::File::create(&path)?;
            std::io::Write::write_all(&mut f, content)?;
            f.sync_data()
        };
        write().map_err(|source| FeedbackError::Keep {
            path: path.clone(),
            source,
        })
    }
}
