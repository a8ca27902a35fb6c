//! Reception: every way mail comes in, and the one door it all goes
//! through into the queue.
//!
//! Owns: [`Door`], one per shard. A receiver (the SMTP front end in
//! [`smtp`], HTTP injection in `http::inject`, and the scheduler's
//! delivery status notifications, which arrive on the door's DSN channel)
//! mints an id, builds a [`NewMessage`] (envelope, our trace header and
//! the content) and calls [`Door::accept`]. The door takes our own header
//! fields out of the content (`meta.header`, `egress.pool_header`: set in
//! the envelope when the client is trusted, never delivered), merges
//! recipients listed twice (`queue::envelope::merge_duplicate_recipients`),
//! refuses a message an administrator's bounce rule matches
//! (`scheduler::rules`) and one that has been through too many hops (a
//! loop), adds `Date:` and
//! `Message-ID:` to a trusted client's message that lacks them (a
//! submission server's duty, RFC 6409 8; counted, never added, for
//! others) and one-click unsubscribe links (`[unsubscribe]`), reads the
//! reports that come to feedback addresses instead of queueing them
//! ([`feedback::Intake`]), adds the tracking header, signs the message
//! (DKIM, when configured: the spooled bytes are the signed bytes, so
//! every retry sends what was signed), stores it durably
//! (`Spool::enqueue`, which returns only after the group commit), counts
//! it, writes its Reception events and hands it to the shard's scheduler,
//! which starts delivering at once. Whatever reception must do for every
//! message (these steps, [`Steps`], and the suppression check the front
//! ends ask for at RCPT) belongs here, once, and nowhere else.
//!
//! Concurrency: a door serves the sessions and requests of its own shard;
//! the messages it accepts are minted for and stored in that shard's spool.
//!
//! Beside the door: [`idempotency`], the per-shard index of injection
//! requests' `Idempotency-Key`s (the injection front end asks it).
//!
//! May call: `queue` (enqueue), `scheduler` (submit), `dkim` (sign),
//! `feedback` (reports), `classify` (their categories), `suppression`,
//! `proto` (header fields, the SMTP codecs), `unsubscribe` (the links it
//! adds), `events`, `tls`, `config`, `metrics`, `shard`.
//! Must not: speak a protocol (the front ends do) or deliver anything.

pub mod feedback;
pub mod idempotency;
pub mod smtp;
pub mod unsubscribe;

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use crate::dkim::Signer;
use crate::events::EventLog;
use crate::queue::{MessageId, NewMessage, Spool, SpoolError};
use crate::scheduler::Scheduler;
use crate::shard::clock::Clock;
use crate::shard::log_limit::LogLimit;
use crate::suppression::{Suppression, SuppressionList};

/// Why the door did not take a message. Each front end maps it to its own
/// answer (SMTP: one reply code in `proto::reply`; HTTP: a status).
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// The spool could not store it: the client should try again.
    #[error(transparent)]
    Storage(#[from] SpoolError),
    /// A feedback report's suppressions or copy could not be stored: the
    /// reporter should try again.
    #[error(transparent)]
    Report(#[from] feedback::FeedbackError),
    /// The spool's file system is under its free-space reserve
    /// (`spool.min_free_bytes`): the client should try again later.
    #[error("the spool's free space is under its reserve")]
    InsufficientStorage,
    /// The `meta.header` a trusted client set is not a JSON object of at
    /// most `meta.max_bytes`: the client should fix it.
    #[error("{0}")]
    BadMeta(String),
    /// A trusted client named an egress pool that does not exist.
    #[error("no egress pool named {0:?}")]
    UnknownPool(String),
    /// A trusted client's priority is not high, normal or bulk.
    #[error("{0}")]
    BadPriority(String),
    /// More `Received:` fields than `smtp.max_received_headers`: a loop.
    #[error("too many hops: {0} Received: header fields")]
    TooManyHops(usize),
    /// An administrator's bounce rule (`scheduler::rules`) matches it:
    /// the rule's reason.
    #[error("refused by a bounce rule: {0}")]
    BounceRule(String),
}

/// What the door took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    /// Recipients queued.
    pub recipients: usize,
    /// Recipients listed again in the same message, merged into their
    /// first occurrence (`queue::merge_duplicate_recipients`).
    pub merged: usize,
}

pub struct Door {
    spool: Rc<Spool>,
    scheduler: Rc<Scheduler>,
    events: Rc<EventLog>,
    clock: Clock,
    steps: Steps,
    /// Refusals can come by the thousand a second (a full disk): logged
    /// once, then counted.
    refusals_logged: LogLimit,
}

/// What the door does to every message besides storing it, each part
/// optional; assembled by the composition root.
#[derive(Default)]
pub struct Steps {
    /// DKIM signing (shared by every shard).
    pub dkim: Option<Arc<Signer>>,
    /// The node's suppression list (shared by every shard).
    pub suppressions: Option<Arc<SuppressionList>>,
    /// Reads reports that come to feedback addresses.
    pub feedback: Option<feedback::Intake>,
    /// `feedback.tracking_header`, when set: added to every message.
    pub tracking_header: Option<String>,
    /// `[meta]`: the header trusted clients carry the application's data
    /// in (removed from every message), and its bound.
    pub meta: crate::config::MetaConfig,
    /// `[egress]`: the pools a message may name, the header naming one,
    /// and the sender-domain mapping.
    pub egress: crate::config::EgressConfig,
    /// `priority.header`: where trusted clients name a message's priority.
    pub priority_header: String,
    /// `smtp.max_received_headers`: more is a mail loop.
    pub max_received_headers: usize,
    /// `server.hostname`: the right side of the Message-IDs the door adds.
    pub hostname: String,
    /// `[unsubscribe]`: the one-click links added to one-recipient
    /// messages of the pools (or injections) that want them.
    pub unsubscribe: Option<Arc<crate::unsubscribe::Links>>,
}

/// `secs` (Unix time) as an RFC 5322 date-time in UTC.
fn rfc5322_date(secs: u64) -> String {
    chrono::DateTime::from_timestamp(secs as i64, 0)
        .unwrap_or_default()
        .to_rfc2822()
}

impl Door {
    pub fn new(
        spool: Rc<Spool>,
        scheduler: Rc<Scheduler>,
        events: Rc<EventLog>,
        clock: Clock,
        steps: Steps,
    ) -> Door {
        Door {
            spool,
            scheduler,
            events,
            clock,
            steps,
            refusals_logged: LogLimit::new(Duration::from_secs(10)),
        }
    }

    /// Whether a new message would be taken now: free space above the
    /// reserve, and the webhooks' backlog under `events.max_backlog` (with
    /// `on_backlog_full = "defer"`). The SMTP front end asks at MAIL,
    /// before the body comes.
    pub fn has_room(&self) -> bool {
        self.spool.has_room() && !self.events.backlog_full()
    }

    /// Whether the webhooks' backlog is full and new mail must wait
    /// (`events.on_backlog_full = "defer"`); the spool's own room is
    /// checked by [`Door::accept`].
    pub fn events_backlog_full(&self) -> bool {
        self.events.backlog_full()
    }

    /// Whether the node is being drained (`queue drain`): the front ends
    /// take no new mail then; the door still queues the scheduler's own
    /// notices, which leave with the rest.
    pub fn draining(&self) -> bool {
        self.scheduler.handing_over()
    }

    /// The suppression that refuses mail from `sender` to `rcpt`, if any
    /// (counted by `listener`: "smtp", "http"). Every front end asks, for
    /// every recipient, before it takes the message.
    pub fn suppressed(
        &self,
        sender: &str,
        rcpt: &str,
        listener: &'static str,
    ) -> Option<Suppression> {
        let found = self
            .steps
            .suppressions
            .as_ref()?
            .check(sender, rcpt, self.clock.now())?;
        ::metrics::counter!(crate::metrics::SUPPRESSED_RECIPIENTS, "listener" => listener)
            .increment(1);
        Some(found)
    }

    /// The reason of an administrator's bounce rule that refuses mail
    /// from `sender` to `rcpt` (a rule naming only the envelope): the
    /// SMTP front end asks at RCPT.
    pub fn refused_by_rule(&self, sender: &str, rcpt: &str) -> Option<String> {
        let why = self.scheduler.rule_refusing_rcpt(sender, rcpt)?;
        ::metrics::counter!(crate::metrics::RECEPTION_REFUSED, "reason" => "bounce_rule")
            .increment(1);
        Some(why)
    }

    /// A new id owned by this shard, for the message about to be received
    /// (the trace header names it before the body is complete).
    pub fn new_id(&self) -> MessageId {
        self.spool.new_id()
    }

    /// Unix seconds now, by the shard's clock.
    pub fn now(&self) -> u64 {
        self.clock.now()
    }

    /// Reads the reports to feedback addresses (not queued; their effects
    /// are stored before the answer, like a queued message) and takes
    /// those addresses off the envelope: Some(answer) when no recipient is
    /// left to queue for.
    fn take_reports(
        &self,
        id: MessageId,
        envelope: &mut crate::queue::Envelope,
        body: &[u8],
        content_start: usize,
    ) -> Result<Option<Accepted>, Refusal> {
        let Some(intake) = &self.steps.feedback else {
            return Ok(None);
        };
        if !envelope
            .recipients
            .iter()
            .any(|r| intake.is_report_address(&r.address))
        {
            return Ok(None);
        }
        let content = body.get(content_start..).unwrap_or(body);
        let rcpts = envelope.recipients.iter().map(|r| &*r.address);
        if let Err(e) = intake.take_for(id, content, rcpts) {
            return Err(self.refused(id, Refusal::Report(e)));
        }
        let all = envelope.recipients.len();
        envelope
            .recipients
            .retain(|r| !intake.is_report_address(&r.address));
        Ok(envelope.recipients.is_empty().then_some(Accepted {
            recipients: all,
            merged: 0,
        }))
    }

    /// Signs the message as stored (our Received: is not among the signed
    /// fields, so where it sits does not matter to a verifier); the
    /// signature goes on top (see `dkim::Signer::sign`).
    fn sign(&self, body: &mut Vec<u8>) -> Option<crate::dkim::DkimOutcome> {
        let signer = self.steps.dkim.as_ref()?;
        let signed = signer.sign(body);
        if !signed.header.is_empty() {
            let mut with = Vec::with_capacity(signed.header.len() + body.len());
            with.extend_from_slice(&signed.header);
            with.extend_from_slice(body);
            *body = with;
        }
        Some(signed.outcome)
    }

    /// Makes `msg` durable and scheduled. Only once this returned Ok may
    /// the client be told the message is accepted.
    pub async fn accept(&self, msg: NewMessage) -> Result<Accepted, Refusal> {
        self.accept_with(msg, None).await
    }

    /// [`Door::accept`], with a record made from what was accepted, just
    /// before the message is stored, to ride in its journal frame
    /// (`queue::KeptRider`: durable with the message, in the same commit
    /// round). Not called when nothing is stored (a report taken whole).
    pub async fn accept_with(
        &self,
        msg: NewMessage,
        rider: Option<&dyn Fn(Accepted) -> Option<crate::queue::KeptRider>>,
    ) -> Result<Accepted, Refusal> {
        let NewMessage {
            id,
            mut envelope,
            mut body,
            content_start,
            trusted,
            complete,
        } = msg;
        // Only the disk's reserve here: the webhooks' backlog is the front
        // ends' to check (at MAIL, before an injection), so that the
        // scheduler's own notices are never refused for it.
        if !self.spool.has_room() {
            return Err(self.refused(id, Refusal::InsufficientStorage));
        }
        if let Err(why) = self.take_own_fields(&mut envelope, &mut body, content_start, trusted) {
            return Err(self.refused(id, why));
        }
        // A recipient listed twice gets the message once, as Postfix's
        // cleanup does.
        let merged = crate::queue::envelope::merge_duplicate_recipients(&mut envelope.recipients);
        if merged > 0 {
            ::metrics::counter!(crate::metrics::RECIPIENTS_MERGED).increment(merged as u64);
        }
        if let Some(reason) = self.scheduler.rule_refusing(&envelope) {
            return Err(self.refused(id, Refusal::BounceRule(reason)));
        }
        let survey = crate::proto::header::survey(&body);
        // A loop (RFC 5321 6.3): the header section only, ours included.
        if survey.received > self.steps.max_received_headers {
            return Err(self.refused(id, Refusal::TooManyHops(survey.received)));
        }
        let added_id = self.complete(id, &mut body, content_start, &survey, complete);
        envelope.message_id = survey
            .message_id_value
            .as_deref()
            .map(Into::into)
            .or(added_id.map(Into::into));
        if let Some(done) = self.take_reports(id, &mut envelope, &body, content_start)? {
            return Ok(Accepted { merged, ..done });
        }
        self.add_unsubscribe(id, &envelope, &mut body, content_start, &survey, complete);
        if let Some(h) = &self.steps.tracking_header {
            let line = format!("{h}: {id}\r\n");
            let at = content_start.min(body.len());
            body.splice(at..at, line.into_bytes());
        }
        let dkim = self.sign(&mut body);
        envelope.dkim = dkim.as_ref().map(|d| d.summary().into());
        let now = self.clock.now();
        envelope.created = now;
        // Scheduled mail (`release_at`) waits for its time like a retry.
        envelope.next_due = envelope.release_at.map_or(now, |at| at.max(now));
        let accepted = Accepted {
            recipients: envelope.recipients.len(),
            merged,
        };
        envelope.rider = rider.and_then(|make| make(accepted)).map(Box::new);
        let stored = match self.spool.enqueue(id, envelope, body).await {
            Ok(stored) => stored,
            Err(e) => return Err(self.refused(id, Refusal::Storage(e))),
        };
        ::metrics::counter!(crate::metrics::MESSAGES_RECEIVED).increment(1);
        ::metrics::counter!(crate::metrics::RECIPIENTS_RECEIVED)
            .increment(stored.recipients.len() as u64);
        ::metrics::counter!(crate::metrics::BYTES_RECEIVED).increment(stored.size());
        self.events.reception(id, &stored, dkim.as_ref());
        self.scheduler.submit(id, stored);
        Ok(accepted)
    }

    /// Our own header fields: taken out of every message (they must never
    /// reach a recipient), honoured only from trusted clients.
    fn take_own_fields(
        &self,
        envelope: &mut crate::queue::Envelope,
        body: &mut Vec<u8>,
        content_start: usize,
        trusted: bool,
    ) -> Result<(), Refusal> {
        let [meta, pool, priority] = crate::proto::header::take_fields(
            body,
            content_start,
            [
                &self.steps.meta.header,
                &self.steps.egress.pool_header,
                &self.steps.priority_header,
            ],
        );
        let fields = match trusted {
            true => [meta, pool, priority],
            false => [None, None, None],
        };
        self.set_own_fields(envelope, fields)
    }

    /// Whether a message from `sender` through `pool` (empty: as the
    /// door would choose it) would get one-click unsubscribe links, the
    /// injection having asked `asked`: such a request is split into a
    /// message per recipient, since a link names its recipient.
    pub fn unsubscribe_applies(&self, pool: &str, sender: &str, asked: Option<bool>) -> bool {
        let Some(links) = &self.steps.unsubscribe else {
            return false;
        };
        let pool = self.steps.egress.pool_for(pool, sender);
        !sender.is_empty() && links.wanted(pool, asked)
    }

    /// RFC 8058's `List-Unsubscribe` and `List-Unsubscribe-Post`, at the
    /// top of the content, when the message's pool (or its injection)
    /// wants them: only for a message to one recipient (the link names
    /// it), never for the null sender's, never over the application's
    /// own (counted by what was done).
    fn add_unsubscribe(
        &self,
        id: MessageId,
        envelope: &crate::queue::Envelope,
        body: &mut Vec<u8>,
        content_start: usize,
        survey: &crate::proto::header::Survey,
        complete: crate::queue::Completion,
    ) {
        let Some(links) = &self.steps.unsubscribe else {
            return;
        };
        if envelope.sender.is_empty() || !links.wanted(&envelope.pool, complete.unsubscribe) {
            return;
        }
        let result = match (survey.list_unsubscribe, envelope.recipients.as_slice()) {
            (true, _) => "kept",
            (false, [only]) => {
                let claim = crate::unsubscribe::Claim {
                    message: id,
                    recipient: only.address.to_string(),
                    sender_domain: crate::queue::domain_of(&envelope.sender),
                    issued: self.clock.now(),
                };
                let at = content_start.min(body.len());
                body.splice(at..at, links.fields(&claim).into_bytes());
                "added"
            }
            (false, _) => "several_recipients",
        };
        ::metrics::counter!(crate::metrics::UNSUBSCRIBE_LINKS, "result" => result).increment(1);
    }

    /// A submission server's duties (RFC 6409 8): `Date:` and
    /// `Message-ID:` added at the top of the client's header when missing
    /// and `complete` asks (a trusted client's listener); left alone, and
    /// counted, when there are several or a broken one, or when the client
    /// is not trusted. The Message-ID added, if one was (without its
    /// angle brackets).
    fn complete(
        &self,
        id: MessageId,
        body: &mut Vec<u8>,
        content_start: usize,
        survey: &crate::proto::header::Survey,
        complete: crate::queue::Completion,
    ) -> Option<String> {
        use crate::proto::header::FieldState;
        let mut added = String::new();
        let mut added_id = None;
        for (field, state, wanted) in [
            ("Date", survey.date, complete.date),
            ("Message-ID", survey.message_id, complete.message_id),
        ] {
            let flaw = match state {
                FieldState::Valid => continue,
                FieldState::Missing if wanted => {
                    ::metrics::counter!(crate::metrics::HEADER_FIELDS_ADDED, "field" => field)
                        .increment(1);
                    added += &match field {
                        "Date" => format!("Date: {}\r\n", rfc5322_date(self.clock.now())),
                        _ => {
                            let value = format!("{id}@{}", self.steps.hostname);
                            let line = format!("Message-ID: <{value}>\r\n");
                            added_id = Some(value);
                            line
                        }
                    };
                    continue;
                }
                FieldState::Missing => "missing",
                FieldState::Malformed => "malformed",
                FieldState::Several => "several",
            };
            ::metrics::counter!(crate::metrics::HEADER_FIELDS_FLAWED, "field" => field, "flaw" => flaw)
                .increment(1);
        }
        if !added.is_empty() {
            let at = content_start.min(body.len());
            body.splice(at..at, added.into_bytes());
        }
        added_id
    }

    /// The application's data, the egress pool and the priority from a
    /// trusted client's header fields, unless the injection set them;
    /// else the pool by `egress.sender_domains` (empty: the default
    /// pool) and the pool's priority.
    fn set_own_fields(
        &self,
        envelope: &mut crate::queue::Envelope,
        [meta, pool, priority]: [Option<String>; 3],
    ) -> Result<(), Refusal> {
        if let Some(text) = meta
            && envelope.meta.is_none()
        {
            envelope.meta = Some(Box::new(
                self.steps.meta.parse(&text).map_err(Refusal::BadMeta)?,
            ));
        }
        let egress = &self.steps.egress;
        if let Some(name) = pool
            && envelope.pool.is_empty()
        {
            if !egress.has_pool(&name) {
                return Err(Refusal::UnknownPool(name));
            }
            envelope.pool = name;
        }
        if envelope.pool.is_empty() {
            envelope.pool = egress.pool_for("", &envelope.sender).to_string();
        }
        if let Some(text) = priority
            && envelope.priority.is_none()
        {
            let p = crate::config::Priority::parse(&text).map_err(Refusal::BadPriority)?;
            envelope.priority = Some(p);
        }
        if envelope.priority.is_none() {
            envelope.priority = egress.pool_priority(&envelope.pool);
        }
        Ok(())
    }

    /// Counts a refusal, and logs (rate-limited) the ones that are the
    /// server's trouble; a client's bad header field is its own.
    fn refused(&self, id: MessageId, why: Refusal) -> Refusal {
        let (reason, ours) = match why {
            Refusal::Storage(_) | Refusal::Report(_) => ("storage", true),
            Refusal::InsufficientStorage => ("space", true),
            Refusal::BadMeta(_) => ("meta", false),
            Refusal::UnknownPool(_) => ("pool", false),
            Refusal::BadPriority(_) => ("priority", false),
            // A client's, but a loop is the operator's to hear of.
            Refusal::TooManyHops(_) => ("hops", true),
            Refusal::BounceRule(_) => ("bounce_rule", false),
        };
        ::metrics::counter!(crate::metrics::RECEPTION_REFUSED, "reason" => reason).increment(1);
        if ours {
            self.refusals_logged
                .log(log::Level::Error, || format!("message {id} refused: {why}"));
        }
        why
    }

    /// Takes the delivery status notifications the scheduler makes until
    /// it closes its side (at the end of its drain), each through
    /// [`Door::accept`] like any other message.
    pub async fn take_notifications(self: Rc<Self>, dsns: flume::Receiver<NewMessage>) {
        while let Ok(dsn) = dsns.recv_async().await {
            let (id, to) = (dsn.id, dsn.envelope.recipients.first().cloned());
            if let Err(e) = self.accept(dsn).await {
                let to = to.map(|r| r.address).unwrap_or_default();
                log::error!("{id}: cannot queue the delivery status notification to <{to}>: {e}");
            }
        }
    }
}
