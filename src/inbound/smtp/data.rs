//! DATA and BDAT: reading a message body and queueing it.
//!
//! Owns: the Received: header, [`BodyInProgress`] (a body being read across
//! BDAT chunks), and turning a finished body into a [`NewMessage`] for the
//! reception door (`inbound::Door::accept`). The final reply (`250 2.0.0
//! Ok: queued as <id>`) is produced only after the door returned Ok, i.e.
//! after the message is on disk.
//!
//! Must not: write sled or files itself; decide anything about the envelope
//! (the session did).
//!
//! Security: every byte read here goes through `proto::body::BodyReader`,
//! which bounds the stored size and enforces the end-of-data rule; a BDAT
//! chunk outside a valid transaction is read and thrown away, never stored.

use super::SmtpService;
use super::conn::{Conn, is_timeout};
use super::session::{Session, Transaction};
use crate::config::LineEndings;
use crate::inbound::Refusal;
use crate::proto::body::{BareEndings, BodyFault, BodyReader, Framing};
use crate::proto::reply::{Rejection, Reply};
use crate::proto::trace::{self, Trace};
use crate::queue::{Completion, Envelope, MessageId, NewMessage};

/// How a step of the session ended for the connection.
pub enum Step {
    Reply(Reply),
    Close(Reply),
    Disconnected,
    /// Nothing to answer (e.g. after a TLS handshake).
    Silent,
}

/// A body being read: its id, the reader state and the bytes so far.
pub struct BodyInProgress {
    id: MessageId,
    reader: BodyReader,
    body: Vec<u8>,
    /// Where the client's message begins (after our Received: header).
    content_start: usize,
    client: String,
    /// A relay-network or authenticated client: may set `meta.header`.
    trusted: bool,
    /// What the door adds when missing (trusted clients only).
    complete: Completion,
}

impl BodyInProgress {
    pub fn start(session: &Session, service: &SmtpService, framing: Framing) -> BodyInProgress {
        let cfg = &service.cfg.smtp;
        let id = service.door.new_id();
        let mut body = Vec::with_capacity(4096);
        received_header(&mut body, session, service.cfg.hostname(), id);
        let content_start = body.len();
        BodyInProgress {
            id,
            reader: BodyReader::new(
                framing,
                BareEndings {
                    reject_lf: cfg.bare_lf == LineEndings::Reject,
                    reject_cr: cfg.bare_cr == LineEndings::Reject,
                },
                cfg.max_message_size as usize,
                cfg.max_line_length,
            ),
            body,
            content_start,
            client: format!(
                "{} [{}]",
                session.helo.as_deref().unwrap_or("unknown"),
                session.client_ip()
            ),
            trusted: session.is_trusted(),
            complete: session.completion(),
        }
    }

    fn feed(&mut self, bytes: &[u8]) -> (usize, bool) {
        self.reader.feed(bytes, &mut self.body)
    }
}

/// Sends 354, reads the body up to CRLF.CRLF and queues it.
pub async fn receive_data(
    conn: &mut Conn,
    session: &mut Session<'_>,
    service: &SmtpService,
) -> Step {
    conn.queue(&Reply::plain(
        354,
        vec!["End data with <CR><LF>.<CR><LF>".into()],
    ));
    let mut body = BodyInProgress::start(session, service, Framing::Data);
    loop {
        let (n, done) = body.feed(conn.pending());
        conn.consume(n);
        if done {
            break;
        }
        if let Err(end) = read_more(conn).await {
            return end;
        }
    }
    let tx = session
        .end_transaction()
        .expect("DATA is only read in a transaction");
    finish(body, &tx, service).await
}

/// Reads one BDAT chunk of `size` bytes into `pending` (started on the
/// first chunk). Without a valid transaction the bytes are discarded.
pub async fn receive_bdat(
    conn: &mut Conn,
    session: &mut Session<'_>,
    service: &SmtpService,
    pending: &mut Option<BodyInProgress>,
    size: u64,
    last: bool,
) -> Step {
    let ready = session.bdat_ready();
    if ready && pending.is_none() {
        *pending = Some(BodyInProgress::start(session, service, Framing::Bdat));
    }
    let mut remaining = size;
    while remaining > 0 {
        if conn.pending().is_empty()
            && let Err(end) = read_more(conn).await
        {
            return end;
        }
        let take = conn
            .pending()
            .len()
            .min(remaining.min(usize::MAX as u64) as usize);
        if let Some(body) = pending.as_mut().filter(|_| ready) {
            body.feed(&conn.pending()[..take]);
        }
        conn.consume(take);
        remaining -= take as u64;
    }
    if !ready {
        return Step::Reply(Rejection::BadSequence("need MAIL and RCPT before BDAT").reply());
    }
    let too_big = pending.as_ref().and_then(|b| b.reader.fault()) == Some(BodyFault::TooBig);
    if !last && !too_big {
        return Step::Reply(Reply::new(
            250,
            "2.0.0",
            format!("Ok: {size} octets received"),
        ));
    }
    let mut body = pending.take().expect("started above");
    body.reader.finish(&mut body.body);
    let tx = session
        .end_transaction()
        .expect("bdat_ready implies a transaction");
    finish(body, &tx, service).await
}

async fn read_more(conn: &mut Conn) -> Result<(), Step> {
    match conn.fill().await {
        Ok(0) => Err(Step::Disconnected),
        Ok(_) => Ok(()),
        Err(e) if is_timeout(&e) => Err(Step::Close(Rejection::Timeout.reply())),
        Err(_) => Err(Step::Disconnected),
    }
}

/// Refuses a faulty body, or queues it and answers 250 once it is durable.
async fn finish(body: BodyInProgress, tx: &Transaction, service: &SmtpService) -> Step {
    match body.reader.fault() {
        Some(BodyFault::TooBig) => return Step::Reply(Rejection::MessageTooBig.reply()),
        Some(BodyFault::LineTooLong) => return Step::Reply(Rejection::TextLineTooLong.reply()),
        Some(BodyFault::BareLf) => return Step::Close(Rejection::BareLf.reply()),
        Some(BodyFault::BareCr) => return Step::Close(Rejection::BareCr.reply()),
        None => {}
    }
    if tx.rcpts.is_empty() {
        // Every recipient was suppressed and dropped (`suppression.action
        // = "drop"`): the client is told it went, and nothing is queued.
        return Step::Reply(Reply::new(
            250,
            "2.0.0",
            "Ok: not queued, every recipient is suppressed",
        ));
    }
    let rcpts = tx.rcpts.iter().map(|r| r.to_string()).collect();
    let mut envelope = Envelope::new(tx.sender(), rcpts, 0);
    envelope.smtputf8 = tx.smtputf8();
    envelope.eight_bit = tx.declared_8bit() || body.reader.has_8bit();
    envelope.client = body.client.into();
    envelope.ret = tx.params.ret;
    envelope.envid = tx.params.envid.as_deref().map(Into::into);
    envelope.release_at = tx.release_at;
    // RFC 6710's -9..9 onto the lanes: above 0 high, below 0 bulk.
    envelope.priority = tx.params.mt_priority.map(|n| match n.signum() {
        1 => crate::config::Priority::High,
        -1 => crate::config::Priority::Bulk,
        _ => crate::config::Priority::Normal,
    });
    for (r, p) in envelope.recipients.iter_mut().zip(&tx.rcpt_params) {
        r.notify = p.notify;
        r.orcpt = p.orcpt.as_deref().map(Into::into);
    }
    let id = body.id;
    let started = std::time::Instant::now();
    let msg = NewMessage {
        id,
        envelope,
        body: body.body,
        content_start: body.content_start,
        trusted: body.trusted,
        complete: body.complete,
    };
    match service.door.accept(msg).await {
        Ok(_) => {
            ::metrics::histogram!(crate::metrics::SMTP_ACCEPT_SECONDS)
                .record(started.elapsed().as_secs_f64());
            Step::Reply(Reply::new(250, "2.0.0", format!("Ok: queued as {id}")))
        }
        Err(refusal) => Step::Reply(refusal_reply(&refusal)),
    }
}

/// The one mapping from the door's refusals to SMTP replies (the door
/// logged them).
fn refusal_reply(refusal: &Refusal) -> Reply {
    match refusal {
        Refusal::Storage(_) | Refusal::Report(_) => Rejection::StorageFailure.reply(),
        Refusal::InsufficientStorage => Rejection::InsufficientStorage.reply(),
        Refusal::BadMeta(why) => Rejection::BadMeta(why.clone()).reply(),
        Refusal::UnknownPool(name) => Rejection::UnknownPool(name.clone()).reply(),
        Refusal::BadPriority(why) => Rejection::BadPriority(why.clone()).reply(),
        Refusal::TooManyHops(_) => Rejection::TooManyHops.reply(),
        Refusal::BounceRule(why) => Rejection::BounceRule(why.clone()).reply(),
    }
}

/// The trace header (RFC 5321 4.4). The HELO name was checked by the
/// command parser to be printable without spaces, so it cannot break the
/// header.
fn received_header(out: &mut Vec<u8>, session: &Session, hostname: &str, id: MessageId) {
    let tx = session.tx.as_ref();
    // RFC 3848 / RFC 6531 protocol names.
    let base = match (tx.is_some_and(Transaction::smtputf8), session.esmtp) {
        (true, _) => "UTF8SMTP",
        (false, true) => "ESMTP",
        (false, false) => "SMTP",
    };
    let suffix = match (session.tls, session.authenticated.is_some()) {
        (true, true) => "SA",
        (true, false) => "S",
        (false, true) => "A",
        (false, false) => "",
    };
    let only_rcpt = match tx.map(|t| t.rcpts.as_slice()) {
        Some([only]) => Some(only),
        _ => None,
    };
    trace::received(
        out,
        &Trace {
            from: session.helo.as_deref().unwrap_or("unknown"),
            ip: session.client_ip(),
            by: hostname,
            with: &format!("{base}{suffix}"),
            id: &id.to_string(),
            only_rcpt,
            date: &chrono::Utc::now().to_rfc2822(),
        },
    );
}
