//! Prometheus metrics: every metric ringpost exports, declared once.
//!
//! Owns: [`ALL`], the one table of metric names, types and help texts (what
//! `ringpost dump-metrics` prints and what the Grafana dashboard is checked
//! against), the process-wide recorder ([`install`]) and its text
//! exposition ([`render`], served at `/metrics` by `http::metrics`). Code that records a metric names it through a
//! constant from here, never a string of its own.
//!
//! Concurrency: the `metrics` crate's recorder is process-global and
//! lock-free; shards record from their own threads and one scrape sees the
//! sum. Gauges are adjusted up and down by each shard, so they add up too.
//!
//! May call: `shard`.
//! Must not: decide anything from a metric's value.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

pub struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
}

macro_rules! metrics_table {
    ($($const:ident = $name:literal, $kind:ident, $help:literal;)*) => {
        $(pub const $const: &str = $name;)*
        /// Every metric, with its type and help text.
        pub const ALL: &[Metric] = &[$(Metric { name: $name, kind: Kind::$kind, help: $help }),*];
    };
}

metrics_table! {
    MESSAGES_RECEIVED = "ringpost_messages_received_total", Counter, "Messages accepted (250 after DATA/BDAT) and queued.";
    RECIPIENTS_RECEIVED = "ringpost_recipients_received_total", Counter, "Recipients of accepted messages.";
    RECIPIENTS_MERGED = "ringpost_recipients_merged_total", Counter, "Recipients listed again in one message (SMTP transaction or injection; the domain compared without case) and merged into their first occurrence: the message goes to each once.";
    BYTES_RECEIVED = "ringpost_received_bytes_total", Counter, "Bytes of accepted messages, as stored.";
    RECIPIENTS_DELIVERED = "ringpost_recipients_delivered_total", Counter, "Recipients a remote server accepted.";
    RECIPIENTS_DEFERRED = "ringpost_recipients_deferred_total", Counter, "Delivery attempts per recipient that failed temporarily.";
    RECIPIENTS_BOUNCED = "ringpost_recipients_bounced_total", Counter, "Recipients that failed permanently (a DSN was sent unless the sender was <>).";
    DELIVERY_FAILURES = "ringpost_delivery_failures_total", Counter, "Failed delivery attempts per recipient, by bounce category (see [bounce_classifier]) and result (deferred: to be retried; bounced: failed for good, including expiry).";
    WEBHOOK_EVENTS = "ringpost_webhook_events_total", Counter, "Events posted to a webhook, by webhook and result (sent: the receiver answered 2xx; refused: refused alone by a receiver that took the events after it, kept in the spool for the operator: ringpost events-failed).";
    WEBHOOK_REQUESTS = "ringpost_webhook_requests_total", Counter, "Requests to a webhook, by webhook and result (taken: 2xx; refused: 4xx other than 408/429, the batch halved or the receiver taken as down; failed: anything else, tried again after a back-off).";
    WEBHOOK_BACKLOG = "ringpost_webhook_backlog", Gauge, "Events stored and not yet taken by a webhook's receiver, by webhook.";
    EVENTS_DROPPED = "ringpost_events_dropped_total", Counter, "Unsent webhook events dropped because events.max_backlog was reached with on_backlog_full = \"drop_oldest\".";
    CLUSTER_REDIS_UP = "ringpost_cluster_redis_up", Gauge, "1 while Redis answers and the limits are shared by the cluster; 0 while this node holds its 1/N share of each ([cluster], set only when cluster.redis is).";
    CLUSTER_FALLBACKS = "ringpost_cluster_fallbacks_total", Counter, "Times Redis became unreachable and this node fell back to its 1/nodes share of each limit (kept by its own shards).";
    CLUSTER_REQUESTS = "ringpost_cluster_requests_total", Counter, "Requests to Redis, by op (tokens, acquire, renew, release, holds, idempotency, lists) and result (ok, error; down: not sent, Redis being unreachable).";
    CLUSTER_LEASES = "ringpost_cluster_leases", Gauge, "Connection leases this node's shards hold, by source and site: from Redis with [cluster], else from the node's own book of path limits.";
    CLUSTER_SUPPRESSION_CHANGES = "ringpost_cluster_suppression_changes_total", Counter, "Suppression list changes (adds and removals) shared through Redis, by direction (published: made on this node and sent; applied: read from the fleet's log, this node's own included).";
    CLUSTER_SUPPRESSION_UNPUBLISHED = "ringpost_cluster_suppression_changes_unpublished", Gauge, "Suppression list changes made on this node and not yet in Redis (they wait while Redis is unreachable).";
    CLUSTER_SUPPRESSION_RESYNCS = "ringpost_cluster_suppression_resyncs_total", Counter, "Times this node read the fleet's whole suppression list, by merge (union: first sync, or Redis lost its data; this node's entries are published again; mirror: the log was trimmed past this node's place; entries the fleet no longer has are removed).";
    INJECT_RENDERED = "ringpost_inject_rendered_messages_total", Counter, "Messages rendered from templated injection requests (one per recipient when recipients have substitutions of their own, else one per request).";
    INJECT_REPLAYS = "ringpost_inject_idempotent_replays_total", Counter, "Injection requests answered with the stored answer of an earlier one with the same Idempotency-Key (nothing queued).";
    SUPPRESSED_RECIPIENTS = "ringpost_suppressed_recipients_total", Counter, "Recipients refused (or dropped) at reception because they are on the suppression list, by listener (smtp, http).";
    DELIVERY_SUPPRESSED = "ringpost_delivery_suppressed_total", Counter, "Queued recipients failed without an attempt because they were put on the suppression list after their message was queued (a complaint, an unsubscribe, an operator's add): each a Bounce event and a DSN.";
    SUPPRESSIONS_ADDED = "ringpost_suppressions_added_total", Counter, "Entries put on the suppression list, by source (bounce, async_bounce, complaint, unsubscribe, admin, import).";
    UNSUBSCRIBE_LINKS = "ringpost_unsubscribe_links_total", Counter, "Messages of pools (or injections) that want one-click unsubscribe links ([unsubscribe]), by result: added, kept (the message has its own List-Unsubscribe), several_recipients (a link names one recipient: none added).";
    UNSUBSCRIBE_REQUESTS = "ringpost_unsubscribe_requests_total", Counter, "Unsubscribe requests, by via (one-click: POST /u/TOKEN; page: GET /u/TOKEN, which changes nothing; mailto) and result: unsubscribed, already (suppressed before), shown (the confirmation page), not_one_click (a POST without List-Unsubscribe=One-Click), rate_limited, or the token's fault: malformed, unknown_key, forged, expired.";
    FEEDBACK_REPORTS = "ringpost_feedback_reports_total", Counter, "Reports that came to a [feedback] address, by kind (arf, dsn, unknown) and result (read, or why not: not_a_message, not_a_report, no_report_part, no_recipient).";
    BACKOFF_ACTIONS = "ringpost_backoff_actions_total", Counter, "Back-off actions taken on receivers' replies ([backoff] rules), by action (suspend, throttle, bounce) and the reply's bounce category.";
    CONFIG_RELOADS = "ringpost_config_reloads_total", Counter, "Reloads of the shaping rules (SIGHUP or POST /config/reload), by result (ok; failed: the file was not valid and the rules in force stayed).";
    PATH_CONNECTIONS = "ringpost_path_connections", Gauge, "Outbound connections in use now per path, by egress source (\"default\" without [egress]) and site (the shaping rule's name, \"default\" where none fits).";
    PATH_WAITING = "ringpost_path_waiting", Gauge, "Delivery attempts waiting for a connection on a path at its limit, by source and site (as ringpost_path_connections).";
    PATH_ATTEMPTS = "ringpost_path_attempts_total", Counter, "Delivery attempts per path, by source, site (as ringpost_path_connections) and result (delivered: every recipient; deferred; bounced: some recipient failed for good).";
    PATH_CAPPED = "ringpost_path_capped_total", Counter, "Messages that found a path's hourly or daily cap (a shaping rule's, or its source's warm-up) reached: they went from another source of the pool, or waited. By source and site (as ringpost_path_connections).";
    PATH_THROTTLED = "ringpost_path_throttled", Gauge, "Shards holding a [backoff] throttle on a path now, by source and site (as ringpost_path_connections); throttled time is its sum_over_time.";
    RECIPIENTS_EXPIRED = "ringpost_recipients_expired_total", Counter, "Recipients still failing at max_age_secs.";
    SMTP_CONNECTIONS_TOTAL = "ringpost_smtp_connections_total", Counter, "Inbound SMTP connections accepted, by listener.";
    SMTP_CONNECTIONS_REJECTED = "ringpost_smtp_connections_rejected_total", Counter, "Inbound connections turned away over the connection limits.";
    SMTP_CONNECTIONS = "ringpost_smtp_connections", Gauge, "Inbound SMTP connections open now.";
    SMTP_REPLIES = "ringpost_smtp_replies_total", Counter, "Replies sent to SMTP clients, by class (2xx, 3xx, 4xx, 5xx).";
    OUTBOUND_CONNECTIONS_TOTAL = "ringpost_outbound_connections_total", Counter, "Outbound SMTP connections, by result (ok, failed).";
    OUTBOUND_STALE_CONNECTIONS = "ringpost_outbound_stale_connections_total", Counter, "Pooled connections found dead when reused (the message went again at once on a fresh connection, not counted as an attempt).";
    QUEUE_MESSAGES = "ringpost_queue_messages", Gauge, "Messages in the queue.";
    QUEUE_BYTES = "ringpost_queue_bytes", Gauge, "Bytes of message bodies in the queue.";
    QUEUE_DOMAIN_RECIPIENTS = "ringpost_queue_domain_recipients", Gauge, "Pending recipients per destination domain and shard: each shard's top 10 domains, the rest as domain=\"other\".";
    SPOOL_COMPACTED_BYTES = "ringpost_spool_compacted_bytes_total", Counter, "Bytes of queued message bodies moved out of sparse segments by compaction.";
    SPOOL_FREE_BYTES = "ringpost_spool_free_bytes", Gauge, "Free bytes on the spool's file system, as last looked at; below spool.min_free_bytes reception stops.";
    RECEPTION_REFUSED = "ringpost_reception_refused_total", Counter, "Messages refused at reception, by reason (storage: the spool could not store it; space: free space under the reserve; meta, pool, priority: a trusted client's X-Ringpost-Meta, pool or priority field was bad; hops: more Received: fields than smtp.max_received_headers, a mail loop; bounce_rule: an administrator's bounce rule matched, a recipient at RCPT or a message after DATA).";
    HEADER_FIELDS_ADDED = "ringpost_header_fields_added_total", Counter, "Date: and Message-ID: fields added to trusted clients' messages that had none (RFC 6409 8), by field.";
    HEADER_FIELDS_FLAWED = "ringpost_header_fields_flawed_total", Counter, "Messages taken with a Date: or Message-ID: field left as it was, by field and flaw (missing: an untrusted client's message, or adding is off; malformed; several).";
    SPOOL_COMMIT_SECONDS = "ringpost_spool_commit_seconds", Histogram, "Duration of one group-commit round (segment fdatasync, then the records into sled).";
    SMTP_ACCEPT_SECONDS = "ringpost_smtp_accept_seconds", Histogram, "Time from the end of a message's data to its 250: the queue write and the wait for a group commit.";
    SPOOL_COMMIT_BATCH = "ringpost_spool_commit_batch_messages", Histogram, "Queue records made durable by one group-commit round.";
    DELIVERY_ATTEMPT_SECONDS = "ringpost_delivery_attempt_seconds", Histogram, "Duration of one delivery attempt to one destination domain.";
    MTA_STS_LOOKUPS = "ringpost_mta_sts_lookups_total", Counter, "Receivers' MTA-STS records looked at again (at most every 5 minutes per domain and shard), by result: none (no policy), fetched (a new policy), cached (the record's id unchanged, or gone while a policy is cached), fetch_failed and dns_failed (a cached policy, if any, stays in force), ignored (the domain is in tls.mta_sts_ignore, or the shaping rule that fits says mta_sts = false; counted per attempt).";
    MTA_STS_APPLIED = "ringpost_mta_sts_applied_total", Counter, "Delivery attempts under a receiver's MTA-STS policy, by mode (enforce, testing) and result (ok: some MX host is in the policy; mx_mismatch: none is; in enforce mode the mail waits, never goes elsewhere).";
    DANE_LOOKUPS = "ringpost_dane_tlsa_lookups_total", Counter, "TLSA lookups for receivers' MX hosts whose MX and address answers were DNSSEC-secure (dns.dnssec, tls.dane), by result: records (usable DANE records: TLS checked against them), unusable (only records SMTP cannot use: TLS mandatory, any certificate), none (no records, or an insecure answer), failed (bogus or no answer: the host is not used), ignored (the domain is in tls.dane_ignore, or the shaping rule that fits says dane = false).";
    TLS_REPORTS_SENT = "ringpost_tls_reports_sent_total", Counter, "Daily TLS reports (RFC 8460), one per policy domain and day ([tls_reporting]): queued to the domain's mailto: addresses (one message for all of them), or posted to an https: address (counted when answered 2xx).";
    OUTBOUND_TLS_SESSIONS = "ringpost_outbound_tls_sessions_total", Counter, "New connections to MX hosts of domains with a TLS policy, by policy (dane, mta-sts) and result: success, or the failure as TLS reports name it (starttls-not-supported, certificate-host-mismatch, certificate-expired, certificate-not-trusted, validation-failure), or the policy's own failure: sts-policy-fetch-error, sts-webpki-invalid, sts-policy-invalid (a published MTA-STS policy could not be had), tlsa-invalid (no usable TLSA record), dnssec-invalid (an MX host's TLSA answer could not be had: counted per attempt it was left out of). Counted whether or not [tls_reporting] is on; in MTA-STS testing mode the certificate is checked (and a bad one counted) only while it is on.";
    DNS_LOOKUP_SECONDS = "ringpost_dns_lookup_seconds", Histogram, "Duration of MX or address resolution for one destination.";
    HTTP_REQUESTS = "ringpost_http_requests_total", Counter, "HTTP requests answered, by listener (inject, admin, metrics) and status class (2xx, 4xx, 5xx).";
    HTTP_CONNECTIONS_REJECTED = "ringpost_http_connections_rejected_total", Counter, "HTTP connections refused with 503 before any request was read, by listener and reason (limit, per_address_limit).";
    HTTP_TIMEOUTS = "ringpost_http_timeouts_total", Counter, "HTTP connections closed at a deadline, by listener and phase: idle (no request began), head (a request head came too slowly), body (a body under the minimum rate).";
    DKIM_SIGNATURES = "ringpost_dkim_signatures_total", Counter, "DKIM signatures made at reception, by signing domain, selector and algorithm (rsa-sha256, ed25519-sha256).";
    DKIM_UNSIGNED = "ringpost_dkim_unsigned_total", Counter, "Messages queued without a DKIM signature while signing is configured, by reason (no_from, multiple_from, bad_from, no_identity, do_not_sign, error).";
    DKIM_SIGN_SECONDS = "ringpost_dkim_sign_seconds", Histogram, "CPU time to sign one message with every identity its From domain calls for (header scan, canonicalization, hashing, signatures).";
    TLS_HANDSHAKES = "ringpost_tls_handshakes_total", Counter, "TLS handshakes, by direction (inbound, outbound) and result (ok, failed).";
}

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder (once) and describes every metric.
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let handle = PrometheusBuilder::new()
            .set_buckets(&[
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0,
            ])
            .and_then(|b| {
                b.set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full(SPOOL_COMMIT_BATCH.into()),
                    &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0],
                )
            })
            .and_then(|b| {
                b.set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full(DKIM_SIGN_SECONDS.into()),
                    &[
                        0.00002, 0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01,
                    ],
                )
            })
            .expect("valid buckets")
            .install_recorder()
            .expect("the metrics recorder is installed once");
        for m in ALL {
            match m.kind {
                Kind::Counter => ::metrics::describe_counter!(m.name, m.help),
                Kind::Gauge => ::metrics::describe_gauge!(m.name, m.help),
                Kind::Histogram => ::metrics::describe_histogram!(m.name, m.help),
            }
        }
        handle
    })
}

/// Folds recorded histogram samples into their buckets every few seconds,
/// until `stop` is disconnected. Without it, samples pile up between
/// scrapes (or forever, with the endpoint off). Shard 0 runs it.
pub async fn upkeep(stop: crate::shard::stop::StopSignal) {
    loop {
        let tick = futures_lite::future::or(
            async {
                glommio::timer::sleep(std::time::Duration::from_secs(5)).await;
                true
            },
            async {
                stop.wait().await;
                false
            },
        )
        .await;
        if !tick {
            return;
        }
        install().run_upkeep();
    }
}

/// The Prometheus text exposition of every metric recorded so far.
pub fn render() -> String {
    install().render()
}

thread_local! {
    /// One registered counter per reply class and shard thread: a reply is
    /// counted with an atomic add, not a labelled key lookup (hot path).
    static REPLY_COUNTERS: [::metrics::Counter; 4] = ["2xx", "3xx", "4xx", "5xx"]
        .map(|class| ::metrics::counter!(SMTP_REPLIES, "class" => class));
}

/// Counts one SMTP reply by class.
pub fn count_reply(code: u16) {
    let class = match code / 100 {
        2 => 0,
        3 => 1,
        4 => 2,
        _ => 3,
    };
    REPLY_COUNTERS.with(|c| c[class].increment(1));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prometheus_conventions() {
        let mut seen = std::collections::HashSet::new();
        for m in ALL {
            assert!(m.name.starts_with("ringpost_"), "{}", m.name);
            assert!(seen.insert(m.name), "{} declared twice", m.name);
            assert_eq!(
                m.kind == Kind::Counter,
                m.name.ends_with("_total"),
                "{}",
                m.name
            );
            assert!(!m.help.is_empty());
        }
    }
}
