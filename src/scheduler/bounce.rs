//! Turning what happened to a message's recipients into delivery status
//! notifications for the sender: failures (bounces), delays, and "relayed"
//! notices, as the sender's DSN request (RFC 3461 NOTIFY) asks.
//!
//! Owns: [`notification`], a pure function from the message, the
//! recipients to report on and its original bytes to the [`NewMessage`]
//! that carries the DSN (`dsn::build` writes the report itself). The
//! scheduler sends the notice to the reception door, which queues it like
//! any other message.
//!
//! Must not: queue anything itself; never notify of a message from the
//! null sender (no bounce of a bounce).

use super::state::Failure;
use crate::dsn::{self, FailedRcpt, Notice, NoticeKind};
use crate::queue::{Envelope, MessageId, NewMessage, Recipient};

/// Whether `r`'s sender asked for a notice of this kind: failures unless
/// NOTIFY leaves them out; delays and successes only when asked for.
pub fn wants(r: &Recipient, kind: NoticeKind) -> bool {
    match (kind, r.notify) {
        (NoticeKind::Failure { .. }, None) => true,
        (NoticeKind::Failure { .. }, Some(n)) => n.failure(),
        (NoticeKind::Delay, n) => n.is_some_and(|n| n.delay()),
        (NoticeKind::Relayed, n) => n.is_some_and(|n| n.success()),
    }
}

/// The DSN for `reports` of message `id` (those whose recipients asked for
/// `kind`), to be queued as `dsn_id`; None for a message from the null
/// sender or when no recipient asked.
pub fn notification(
    reporting_mta: &str,
    id: MessageId,
    env: &Envelope,
    reports: &[Failure],
    kind: NoticeKind,
    original: &[u8],
    dsn_id: MessageId,
) -> Option<NewMessage> {
    if env.sender.is_empty() {
        return None;
    }
    let list: Vec<FailedRcpt> = reports
        .iter()
        .filter(|f| wants(&env.recipients[f.index], kind))
        .map(|f| FailedRcpt {
            recipient: &env.recipients[f.index].address,
            status: &f.status,
            diagnostic: &f.reply,
            remote_mta: f.remote.as_deref(),
            original_recipient: env.recipients[f.index].orcpt.as_deref(),
        })
        .collect();
    if list.is_empty() {
        return None;
    }
    let id_text = id.to_string();
    let body = dsn::build(
        &Notice {
            reporting_mta,
            original_id: &id_text,
            original_sender: &env.sender,
            arrival: env.created,
            kind,
            envid: env.envid.as_deref(),
            full: env.ret == Some(crate::dsn::Ret::Full),
            failures: &list,
        },
        original,
    );
    let mut envelope = Envelope::new(String::new(), vec![env.sender.clone()], 0);
    envelope.smtputf8 = env.smtputf8;
    envelope.client = "local (delivery status notification)".into();
    Some(NewMessage {
        id: dsn_id,
        envelope,
        body,
        content_start: 0,
        trusted: false,
        // The notice has both already (`dsn::build`).
        complete: Default::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::IdGenerator;

    #[test]
    fn a_notification_goes_from_the_null_sender_to_the_sender() {
        let mut ids = IdGenerator::new(0);
        let (id, dsn_id) = (ids.next_id(), ids.next_id());
        let env = Envelope::new("alice@a.example".into(), vec!["bob@b.example".into()], 7);
        let failures = [Failure {
            index: 0,
            status: "5.1.1".into(),
            reply: "550 5.1.1 no such user".into(),
            remote: Some("mx.b.example".into()),
        }];
        let original = b"Subject: hi\r\n\r\nbody\r\n";
        let failure = NoticeKind::Failure { expired: false };
        let n = notification("mx.test", id, &env, &failures, failure, original, dsn_id).unwrap();
        assert_eq!(n.id, dsn_id);
        assert_eq!(n.envelope.sender, "");
        assert_eq!(&*n.envelope.recipients[0].address, "alice@a.example");
        let text = String::from_utf8(n.body).unwrap();
        assert!(
            text.contains("Final-Recipient: rfc822; bob@b.example"),
            "{text}"
        );
        assert!(text.contains("Subject: hi"), "{text}");

        let bounce = Envelope::new(String::new(), vec!["x@y.example".into()], 7);
        assert!(
            notification("mx.test", id, &bounce, &failures, failure, original, dsn_id).is_none()
        );
    }
}
