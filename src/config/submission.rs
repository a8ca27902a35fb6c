//! `[submission]`: message submission for authenticated users.

use super::{Listen, Problems};

section! {
    /// Message submission (RFC 6409) for authenticated users, on its own
    /// listener. AUTH (RFC 4954, mechanisms PLAIN and LOGIN) is offered
    /// only after STARTTLS, so `[tls]` must be configured. Without AUTH,
    /// MAIL gets `530 5.7.0`; an authenticated user may relay to any
    /// domain (`Received: ... with ESMTPSA`). Unknown user names cost the
    /// same argon2 check as known ones; hashes are checked on the blocking
    /// thread, not on the shard's executor.
    SubmissionConfig = "submission" {
        /// Address and port of the submission listener (usually port 587),
        /// or `"off"`. Needs `users_file` and `[tls]`.
        listen: Listen = Listen::Off,
        /// One `name:hash` per line (`#` comments), the hash an argon2 PHC
        /// string from `ringpost hash-password` (reads the password on
        /// stdin).
        users_file: String = String::new(),
        /// Failed AUTH attempts from one IP (per shard) within the window
        /// before its sessions get `421 4.7.0` and are closed.
        max_auth_failures: u32 = 5,
        /// The window for `max_auth_failures`, in seconds.
        auth_failure_window_secs: u64 = 300,
        /// Add `Date:` to submitted mail whose header has none (RFC 6409
        /// 8.2), before DKIM signing.
        add_date: bool = true,
        /// Add `Message-ID: <queue id@server.hostname>` to submitted mail
        /// whose header has none (RFC 6409 8.3), before DKIM signing.
        add_message_id: bool = true,
    }
}

impl SubmissionConfig {
    pub fn enabled(&self) -> bool {
        self.listen.is_on()
    }

    pub fn check(&self, p: &mut Problems) {
        if self.listen.is_on() && self.users_file.is_empty() {
            p.at(
                "submission.users_file",
                "submission.listen is on: set the users file",
            );
        }
        if !self.listen.is_on() && !self.users_file.is_empty() {
            p.at(
                "submission.listen",
                "users_file is set but the listener is off",
            );
        }
        if self.max_auth_failures == 0 {
            p.at("submission.max_auth_failures", "must be at least 1");
        }
    }
}
