//! Turning the recipients a round failed into a delivery status
//! notification for the sender.
//!
//! Owns: [`notification`], a pure function from the failed message, its
//! failures and its original bytes to the [`NewMessage`] that carries the
//! DSN (`dsn::build` writes the report itself). The scheduler sends it to
//! the reception door, which queues it like any other message.
//!
//! Must not: queue anything itself; never bounce a message from the null
//! sender (no bounce of a bounce).

use super::state::Failure;
use crate::dsn::{self, FailedRcpt, Notice};
use crate::queue::{Envelope, MessageId, NewMessage};

/// The DSN for `failures` of message `id`, to be queued as `dsn_id`; None
/// for a message from the null sender.
pub fn notification(
    reporting_mta: &str,
    id: MessageId,
    env: &Envelope,
    failures: &[Failure],
    expired: bool,
    original: &[u8],
    dsn_id: MessageId,
) -> Option<NewMessage> {
    if env.sender.is_empty() {
        return None;
    }
    let list: Vec<FailedRcpt> = failures
        .iter()
        .map(|f| FailedRcpt {
            recipient: &env.recipients[f.index].address,
            status: &f.status,
            diagnostic: &f.reply,
            remote_mta: f.remote.as_deref(),
        })
        .collect();
    let id_text = id.to_string();
    let body = dsn::build(
        &Notice {
            reporting_mta,
            original_id: &id_text,
            original_sender: &env.sender,
            arrival: env.created,
            expired,
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
        let n = notification("mx.test", id, &env, &failures, false, original, dsn_id).unwrap();
        assert_eq!(n.id, dsn_id);
        assert_eq!(n.envelope.sender, "");
        assert_eq!(n.envelope.recipients[0].address, "alice@a.example");
        let text = String::from_utf8(n.body).unwrap();
        assert!(
            text.contains("Final-Recipient: rfc822; bob@b.example"),
            "{text}"
        );
        assert!(text.contains("Subject: hi"), "{text}");

        let bounce = Envelope::new(String::new(), vec!["x@y.example".into()], 7);
        assert!(notification("mx.test", id, &bounce, &failures, false, original, dsn_id).is_none());
    }
}
