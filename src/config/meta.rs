//! `[meta]`: the application's own data carried with a message.

use super::Problems;

section! {
    /// The sending application's own data for a message (its message id,
    /// customer, campaign, ...): a JSON object given as the HTTP
    /// injection's `meta` field, or in the `header` below by a trusted
    /// SMTP client (one in `smtp.relay_networks` or authenticated). It is
    /// stored with the message and copied into every event of it
    /// (`"meta"` in the delivery log), so the application can tie each
    /// outcome to its own records. The header is removed before the
    /// message is stored, whoever sent it: it never reaches a recipient,
    /// and an untrusted client cannot set it. A value that is not a JSON
    /// object, or is longer than `max_bytes`, is refused (SMTP `550
    /// 5.6.0`, HTTP 400).
    MetaConfig = "meta" {
        /// The header a trusted SMTP client puts the JSON object in.
        /// Empty: none read (and none removed).
        header: String = "X-Ringpost-Meta".to_string(),
        /// Longest meta, in bytes of JSON.
        max_bytes: usize = 2048,
    }
}

impl MetaConfig {
    pub fn check(&self, p: &mut Problems) {
        let h = &self.header;
        if !h.is_empty() && !h.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
            p.at("meta.header", format!("{h:?} is not a header name"));
        }
        if self.max_bytes == 0 || self.max_bytes > 65_536 {
            p.at("meta.max_bytes", "must be between 1 and 65536");
        }
    }

    /// `text` as a meta value: a JSON object of at most `max_bytes`.
    pub fn parse(&self, text: &str) -> Result<serde_json::Value, String> {
        if text.len() > self.max_bytes {
            return Err(format!(
                "meta is {} bytes, over meta.max_bytes ({})",
                text.len(),
                self.max_bytes
            ));
        }
        match serde_json::from_str::<serde_json::Value>(text) {
            Ok(v) if v.is_object() => Ok(v),
            Ok(_) => Err("meta must be a JSON object".into()),
            Err(e) => Err(format!("meta is not JSON: {e}")),
        }
    }
}
