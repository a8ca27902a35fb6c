//! The queue record of one message: its envelope and per-recipient state.
//!
//! Owns: [`Envelope`], its on-disk encoding (JSON: small, readable with
//! `queue show`, and tolerant of fields added later through serde defaults).
//!
//! Must not: hold the body; bodies live in files (see `queue::body`).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecipientStatus {
    Pending,
    Delivered,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipient {
    pub address: String,
    pub status: RecipientStatus,
    #[serde(default)]
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reply: Option<String>,
}

impl Recipient {
    pub fn pending(address: String) -> Recipient {
        Recipient {
            address,
            status: RecipientStatus::Pending,
            attempts: 0,
            last_reply: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Reverse-path; empty for the null sender `<>`.
    pub sender: String,
    pub recipients: Vec<Recipient>,
    /// Unix seconds when the message was accepted.
    pub created: u64,
    /// Delivery attempts made for the message as a whole.
    #[serde(default)]
    pub attempts: u32,
    /// Unix seconds when the next delivery attempt is due.
    pub next_due: u64,
    /// Body size in bytes, as stored (with the Received: header).
    pub size: u64,
    #[serde(default)]
    pub smtputf8: bool,
    #[serde(default)]
    pub eight_bit: bool,
    /// Who sent it: `helo [ip]`, for logs and `queue show`.
    #[serde(default)]
    pub client: String,
}

impl Envelope {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an Envelope always serializes")
    }

    pub fn decode(bytes: &[u8]) -> Result<Envelope, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let e = Envelope {
            sender: "a@b.example".into(),
            recipients: vec![Recipient::pending("c@d.example".into())],
            created: 1,
            attempts: 0,
            next_due: 1,
            size: 10,
            smtputf8: false,
            eight_bit: true,
            client: "h [127.0.0.1]".into(),
        };
        assert_eq!(Envelope::decode(&e.encode()).unwrap(), e);
        assert!(Envelope::decode(b"{not json").is_err());
    }
}
