//! The SMTP session state machine for the envelope verbs (RFC 5321).
//!
//! Owns: [`Session`]: HELO/EHLO, MAIL, RCPT, RSET, NOOP, VRFY, HELP, QUIT,
//! the sequence rules, the relay decision and the per-session limits. It
//! answers each command with an [`Action`]; it does no I/O, so it is tested
//! without sockets. Reading a body and queueing it is `smtp_in::data`'s job.
//!
//! Must not: write the spool, or send anything itself.
//!
//! Security: the relay rule lives here, in [`Session::may_relay_to`]: a
//! recipient in a non-local domain is accepted only from a client in
//! `relay_networks`. Nothing else opens relaying.

use std::net::IpAddr;

use crate::config::{Config, SuppressionAction};
use crate::proto::command::{BodyType, Command, MailParams, Mailbox, RcptParams};
use crate::proto::reply::{Rejection, Reply};

/// What the connection must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Reply(Reply),
    /// Send 354 and read a DATA body.
    ReadData,
    /// Read a BDAT chunk of `size` bytes (always, even to refuse it).
    ReadBdat {
        size: u64,
        last: bool,
    },
    /// Send the reply and close.
    Close(Reply),
    /// Answer 220 and run the TLS handshake (RFC 3207).
    StartTls,
    /// Run the AUTH exchange (RFC 4954).
    Auth {
        mechanism: String,
        initial: Option<String>,
    },
}

/// The mail transaction in progress (between MAIL and the end of data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    pub from: Option<Mailbox>,
    pub params: MailParams,
    pub rcpts: Vec<Mailbox>,
    /// Each recipient's DSN parameters, in the order of `rcpts`.
    pub rcpt_params: Vec<RcptParams>,
    /// Recipients answered 250 but dropped: suppressed, with
    /// `suppression.action = "drop"`.
    pub dropped: usize,
    /// Set once a BDAT chunk was taken; DATA is then out of sequence.
    pub in_bdat: bool,
    /// Future release (RFC 4865): no attempt before this Unix second.
    pub release_at: Option<u64>,
}

impl Transaction {
    pub fn sender(&self) -> String {
        self.from
            .as_ref()
            .map(Mailbox::to_string)
            .unwrap_or_default()
    }

    pub fn smtputf8(&self) -> bool {
        self.params.smtputf8
    }

    pub fn declared_8bit(&self) -> bool {
        self.params.body == BodyType::EightBitMime
    }
}

pub struct Session<'a> {
    cfg: &'a Config,
    client_ip: IpAddr,
    relay_client: bool,
    pub helo: Option<String>,
    pub esmtp: bool,
    pub tx: Option<Transaction>,
    /// Whether TLS is active on the connection.
    pub tls: bool,
    /// Whether this is the submission listener (AUTH required to send).
    pub submission: bool,
    /// The user who authenticated, if any.
    pub authenticated: Option<String>,
    /// The reception door, asked about suppressed recipients (none in
    /// unit tests).
    door: Option<&'a crate::inbound::Door>,
}

impl<'a> Session<'a> {
    pub fn new(cfg: &'a Config, client_ip: IpAddr, submission: bool) -> Session<'a> {
        Session {
            cfg,
            client_ip,
            relay_client: cfg.is_relay_client(client_ip),
            helo: None,
            esmtp: false,
            tx: None,
            tls: false,
            submission,
            authenticated: None,
            door: None,
        }
    }

    /// The door to ask whether a recipient is suppressed.
    pub fn with_door(mut self, door: &'a crate::inbound::Door) -> Session<'a> {
        self.door = Some(door);
        self
    }

    /// After a TLS handshake the session starts over (RFC 3207 4.2): the
    /// client must say EHLO again, and nothing learned before counts.
    pub fn tls_started(&mut self) {
        self.helo = None;
        self.esmtp = false;
        self.tx = None;
        self.tls = true;
        self.authenticated = None;
    }

    fn offers_starttls(&self) -> bool {
        self.cfg.tls.inbound() && !self.tls
    }

    pub fn client_ip(&self) -> IpAddr {
        self.client_ip
    }

    pub fn greeting(&self) -> Reply {
        Reply::plain(220, vec![format!("{} ESMTP ringpost", self.cfg.hostname())])
    }

    /// Answers a parsed command line.
    pub fn handle(&mut self, parsed: Result<Command, Rejection>) -> Action {
        match parsed {
            Ok(cmd) => self.command(cmd),
            Err(r) => reject(r),
        }
    }

    fn command(&mut self, cmd: Command) -> Action {
        match cmd {
            Command::Ehlo(name) => self.hello(name, true),
            Command::Helo(name) => self.hello(name, false),
            Command::Mail { from, params } => self.mail(from, params),
            Command::Rcpt { to, params } => self.rcpt(to, params),
            Command::Data => self.data(),
            Command::Bdat { size, last } => self.bdat(size, last),
            Command::Rset => {
                self.tx = None;
                Action::Reply(Reply::ok())
            }
            Command::Noop => Action::Reply(Reply::ok()),
            Command::Vrfy => Action::Reply(Reply::new(
                252,
                "2.5.0",
                "Cannot VRFY user, but will accept message and attempt delivery",
            )),
            Command::Help => Action::Reply(Reply::new(
                214,
                "2.0.0",
                "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP VRFY HELP QUIT",
            )),
            Command::Quit => Action::Close(Reply::new(221, "2.0.0", "Bye")),
            Command::StartTls if !self.cfg.tls.inbound() => reject(Rejection::NotImplemented),
            Command::StartTls if self.tls => reject(Rejection::BadSequence("TLS already active")),
            Command::StartTls => Action::StartTls,
            Command::Auth { mechanism, initial } => self.auth(mechanism, initial),
        }
    }

    fn hello(&mut self, name: String, esmtp: bool) -> Action {
        self.tx = None;
        self.esmtp = esmtp;
        self.helo = Some(name);
        let host = self.cfg.hostname().to_string();
        if !esmtp {
            return Action::Reply(Reply::plain(250, vec![host]));
        }
        let mut lines = vec![
            host,
            "PIPELINING".into(),
            format!("SIZE {}", self.cfg.smtp.max_message_size),
            "8BITMIME".into(),
            "SMTPUTF8".into(),
            "ENHANCEDSTATUSCODES".into(),
            "CHUNKING".into(),
            "DSN".into(),
        ];
        if self.offers_starttls() {
            lines.push("STARTTLS".into());
        }
        if self.is_trusted() {
            // RFC 6710, onto the priority lanes (`[priority]`).
            lines.push("MT-PRIORITY".into());
        }
        if self.offers_future_release() {
            // RFC 4865: the longest interval, and the latest date-time.
            let max = self.cfg.delivery.max_hold_secs;
            let latest = chrono::DateTime::from_timestamp(self.now().saturating_add(max) as i64, 0)
                .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
                .unwrap_or_default();
            lines.push(format!("FUTURERELEASE {max} {latest}"));
        }
        if self.submission && self.tls {
            lines.push("AUTH PLAIN LOGIN".into());
        }
        Action::Reply(Reply::plain(250, lines))
    }

    fn auth(&mut self, mechanism: String, initial: Option<String>) -> Action {
        if !self.submission {
            return reject(Rejection::NotImplemented);
        }
        if !self.tls {
            return reject(Rejection::EncryptionRequired);
        }
        if self.helo.is_none() {
            return reject(Rejection::BadSequence("send EHLO first"));
        }
        if self.authenticated.is_some() {
            return reject(Rejection::BadSequence("already authenticated"));
        }
        if self.tx.is_some() {
            return reject(Rejection::BadSequence(
                "AUTH not allowed during a mail transaction",
            ));
        }
        if mechanism != "PLAIN" && mechanism != "LOGIN" {
            return reject(Rejection::AuthMechanism);
        }
        Action::Auth { mechanism, initial }
    }

    fn mail(&mut self, from: Option<Mailbox>, params: MailParams) -> Action {
        if self.helo.is_none() {
            return reject(Rejection::BadSequence("send HELO/EHLO first"));
        }
        if self.submission && self.authenticated.is_none() {
            return reject(Rejection::AuthRequired);
        }
        if self.tx.is_some() {
            return reject(Rejection::BadSequence("nested MAIL command"));
        }
        if !self.esmtp && params != MailParams::default() {
            return reject(Rejection::UnsupportedParameter(
                "parameters need EHLO".into(),
            ));
        }
        if params
            .size
            .is_some_and(|s| s > self.cfg.smtp.max_message_size)
        {
            return reject(Rejection::MessageTooBig);
        }
        if from.as_ref().is_some_and(Mailbox::is_utf8) && !params.smtputf8 {
            return reject(Rejection::NeedsSmtpUtf8);
        }
        let release_at = match self.release_at(&params) {
            Ok(at) => at,
            Err(why) => return reject(why),
        };
        if params.mt_priority.is_some() && !self.is_trusted() {
            return reject(Rejection::UnsupportedParameter(
                "MT-PRIORITY (offered to trusted clients only)".into(),
            ));
        }
        self.tx = Some(Transaction {
            from,
            params,
            rcpts: Vec::new(),
            rcpt_params: Vec::new(),
            dropped: 0,
            in_bdat: false,
            release_at,
        });
        Action::Reply(Reply::new(250, "2.1.0", "Ok"))
    }

    fn rcpt(&mut self, mut to: Mailbox, params: RcptParams) -> Action {
        let Some(tx) = &self.tx else {
            return reject(Rejection::BadSequence("need MAIL command"));
        };
        if !self.esmtp && params != RcptParams::default() {
            return reject(Rejection::UnsupportedParameter(
                "parameters need EHLO".into(),
            ));
        }
        if tx.rcpts.len() >= self.cfg.smtp.max_recipients {
            return reject(Rejection::TooManyRecipients);
        }
        if to.is_utf8() && !tx.smtputf8() {
            return reject(Rejection::NeedsSmtpUtf8);
        }
        if to.is_bare_postmaster() {
            to.domain = self.cfg.hostname().to_string();
        }
        if !self.may_relay_to(&to) {
            return reject(Rejection::RelayDenied);
        }
        let tx = self.tx.as_mut().expect("checked above");
        let (sender, rcpt) = (tx.sender(), to.to_string());
        if let Some(door) = self.door
            && door.suppressed(&sender, &rcpt, "smtp").is_some()
        {
            match self.cfg.suppression.action {
                SuppressionAction::Reject => return reject(Rejection::Suppressed),
                SuppressionAction::Drop => {
                    tx.dropped += 1;
                    return Action::Reply(Reply::new(250, "2.1.5", "Ok"));
                }
            }
        }
        if let Some(why) = self
            .door
            .and_then(|door| door.refused_by_rule(&sender, &rcpt))
        {
            return reject(Rejection::BounceRule(why));
        }
        tx.rcpts.push(to);
        tx.rcpt_params.push(params);
        Action::Reply(Reply::new(250, "2.1.5", "Ok"))
    }

    /// The relay rule: local domains from anyone, others only from relay
    /// networks or authenticated users. For everyone else, a local part that another MTA might
    /// route on (`%` hack, `!` bang path, a quoted `@`) is refused even in a
    /// local domain: ringpost does not route on them, but the next hop might.
    /// A client in `relay_networks` or authenticated: trusted with what
    /// only the sending application may set (`meta.header`, future
    /// release).
    pub fn is_trusted(&self) -> bool {
        self.relay_client || self.authenticated.is_some()
    }

    /// Unix seconds now: the shard's clock (the door's), which tests drive.
    fn now(&self) -> u64 {
        self.door
            .map_or_else(crate::shard::clock::unix_now, crate::inbound::Door::now)
    }

    /// Whether this client is offered future release (RFC 4865).
    fn offers_future_release(&self) -> bool {
        self.is_trusted() && self.cfg.delivery.max_hold_secs > 0
    }

    /// The release time a MAIL command's `HOLDFOR=`/`HOLDUNTIL=` asks
    /// for, if any: only from a client it is offered to, at most
    /// `delivery.max_hold_secs` ahead.
    fn release_at(&self, params: &MailParams) -> Result<Option<u64>, Rejection> {
        let Some(hold) = params.hold else {
            return Ok(None);
        };
        if !self.offers_future_release() {
            return Err(Rejection::UnsupportedParameter(
                "HOLDFOR/HOLDUNTIL (FUTURERELEASE is offered to trusted clients only)".into(),
            ));
        }
        let now = self.now();
        let max = self.cfg.delivery.max_hold_secs;
        hold.release_at(now, max)
            .map(Some)
            .map_err(|asked| Rejection::HoldTooLong(asked, max))
    }

    /// The header fields the door adds when missing: a trusted client's,
    /// as its listener's config says (unsubscribe links as its pool
    /// says); nothing for anyone else's mail.
    pub fn completion(&self) -> crate::queue::Completion {
        let (date, message_id) = match self.submission {
            true => (
                self.cfg.submission.add_date,
                self.cfg.submission.add_message_id,
            ),
            false => (self.cfg.smtp.add_date, self.cfg.smtp.add_message_id),
        };
        let trusted = self.is_trusted();
        crate::queue::Completion {
            date: trusted && date,
            message_id: trusted && message_id,
            // Mail of an untrusted client (to local domains) is no list's.
            unsubscribe: (!trusted).then_some(false),
        }
    }

    pub fn may_relay_to(&self, to: &Mailbox) -> bool {
        if self.relay_client || self.authenticated.is_some() {
            return true;
        }
        let routable_local_part = to.local.contains(['%', '!', '@']);
        self.cfg.is_local_domain(&to.domain) && !routable_local_part
    }

    fn data(&mut self) -> Action {
        match &self.tx {
            None => reject(Rejection::BadSequence("need MAIL command")),
            Some(tx) if tx.rcpts.is_empty() && tx.dropped == 0 => {
                reject(Rejection::BadSequence("need RCPT command"))
            }
            Some(tx) if tx.in_bdat => reject(Rejection::BadSequence("DATA after BDAT")),
            Some(_) => Action::ReadData,
        }
    }

    fn bdat(&mut self, size: u64, last: bool) -> Action {
        if let Some(tx) = self
            .tx
            .as_mut()
            .filter(|tx| !tx.rcpts.is_empty() || tx.dropped > 0)
        {
            tx.in_bdat = true;
        }
        Action::ReadBdat { size, last }
    }

    /// Ends the transaction (after the body was queued or refused).
    pub fn end_transaction(&mut self) -> Option<Transaction> {
        self.tx.take()
    }

    /// Whether a BDAT chunk belongs to a valid transaction.
    pub fn bdat_ready(&self) -> bool {
        self.tx.as_ref().is_some_and(|tx| tx.in_bdat)
    }
}

fn reject(r: Rejection) -> Action {
    Action::Reply(r.reply())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::command::parse;

    fn run(s: &mut Session, line: &str) -> Action {
        s.handle(parse(line.as_bytes()))
    }

    fn code(a: &Action) -> u16 {
        match a {
            Action::Reply(r) | Action::Close(r) => r.code,
            Action::ReadData => 354,
            Action::ReadBdat { .. } => 0,
            Action::StartTls => 220,
            Action::Auth { .. } => 334,
        }
    }

    #[test]
    fn sequence_rules() {
        let cfg = Config::default();
        let mut s = Session::new(&cfg, "127.0.0.1".parse().unwrap(), false);
        assert_eq!(code(&run(&mut s, "MAIL FROM:<a@b.example>")), 503);
        assert_eq!(code(&run(&mut s, "EHLO c.example")), 250);
        assert_eq!(code(&run(&mut s, "RCPT TO:<x@y.example>")), 503);
        assert_eq!(code(&run(&mut s, "DATA")), 503);
        assert_eq!(code(&run(&mut s, "MAIL FROM:<a@b.example>")), 250);
        assert_eq!(code(&run(&mut s, "MAIL FROM:<a@b.example>")), 503);
        assert_eq!(code(&run(&mut s, "DATA")), 503);
        assert_eq!(code(&run(&mut s, "RCPT TO:<x@y.example>")), 250);
        assert_eq!(run(&mut s, "DATA"), Action::ReadData);
        assert_eq!(code(&run(&mut s, "RSET")), 250);
        assert_eq!(code(&run(&mut s, "RCPT TO:<x@y.example>")), 503);
    }

    #[test]
    fn relay_denied_outside_relay_networks_unless_local_domain() {
        let mut cfg = Config::default();
        cfg.smtp.local_domains = vec!["local.example".into()];
        let mut s = Session::new(&cfg, "192.0.2.7".parse().unwrap(), false);
        run(&mut s, "EHLO c.example");
        run(&mut s, "MAIL FROM:<a@b.example>");
        assert_eq!(code(&run(&mut s, "RCPT TO:<x@y.example>")), 554);
        assert_eq!(code(&run(&mut s, "RCPT TO:<x@LOCAL.example>")), 250);
    }

    #[test]
    fn limits() {
        let mut cfg = Config::default();
        cfg.smtp.max_recipients = 2;
        let mut s = Session::new(&cfg, "127.0.0.1".parse().unwrap(), false);
        run(&mut s, "EHLO c.example");
        assert_eq!(
            code(&run(&mut s, "MAIL FROM:<a@b.example> SIZE=999999999999")),
            552
        );
        run(&mut s, "MAIL FROM:<a@b.example>");
        run(&mut s, "RCPT TO:<x1@y.example>");
        run(&mut s, "RCPT TO:<x2@y.example>");
        assert_eq!(code(&run(&mut s, "RCPT TO:<x3@y.example>")), 452);
    }

    #[test]
    fn utf8_needs_smtputf8() {
        let cfg = Config::default();
        let mut s = Session::new(&cfg, "127.0.0.1".parse().unwrap(), false);
        run(&mut s, "EHLO c.example");
        assert_eq!(code(&run(&mut s, "MAIL FROM:<jörg@b.example>")), 553);
        assert_eq!(
            code(&run(&mut s, "MAIL FROM:<jörg@b.example> SMTPUTF8")),
            250
        );
        assert_eq!(code(&run(&mut s, "RCPT TO:<zoë@y.example>")), 250);
    }
}
