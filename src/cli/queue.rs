//! `ringpost queue ...`: the queue commands, through the admin API (or,
//! for `ls --spool`, straight from a stopped spool), rendered for a
//! terminal or as JSON; `drain` with its progress bar.
//!
//! Must not: open a spool a server runs on (sled's lock refuses).

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;

use super::admin_client::encode;
use super::bulk::{ConfirmArgs, SelectArgs};
use super::{AdminArgs, admin_client, parse_duration};
use crate::config::Config;
use crate::http::admin::{MessageDetail, Summary};
use crate::queue::{Spool, SpoolOptions, existing_shards};

#[derive(Subcommand, Debug)]
pub enum QueueCommand {
    /// Per destination domain: messages, recipients, oldest age, last
    /// error; or grouped by site, egress source or pool (`--by`).
    Summary {
        /// Group by `site` (the set of MX hosts), `source` or `pool`.
        #[arg(long, value_parser = ["site", "source", "pool"])]
        by: Option<String>,
    },
    /// List queued messages, oldest first (those a selector matches, if
    /// given).
    Ls {
        #[command(flatten)]
        select: SelectArgs,
        /// At most this many.
        #[arg(long)]
        limit: Option<usize>,
        /// Read this spool directory directly instead (server stopped;
        /// runs the same recovery as a start).
        #[arg(long)]
        spool: Option<PathBuf>,
    },
    /// Find messages by what you know of them: still queued (where each
    /// stands) or already gone (each recipient's outcome and the remote
    /// reply, from the history: `[history]`). Exactly one key.
    #[command(group(clap::ArgGroup::new("key").required(true).args(["rcpt", "sender", "message_id", "idempotency_key", "meta"])))]
    Find {
        /// A recipient's address (the domain part in any case).
        #[arg(long)]
        rcpt: Option<String>,
        /// The envelope sender's address.
        #[arg(long)]
        sender: Option<String>,
        /// The `Message-ID:` header field (with or without <>).
        #[arg(long)]
        message_id: Option<String>,
        /// The injection's `Idempotency-Key`.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// One entry of the application's meta: NAME=VALUE.
        #[arg(long)]
        meta: Option<String>,
        /// Only messages from this recent: seconds, or 30m, 24h, 7d.
        #[arg(long, value_parser = parse_duration)]
        since: Option<u64>,
        /// At most this many (default 100).
        #[arg(long)]
        limit: Option<usize>,
    },
    /// One message: envelope, recipients' state, headers.
    Show { id: String },
    /// Everything that happened to one message: its events in the
    /// delivery log (when that is a file), where it stands if still
    /// queued, or each recipient's outcome from the history if it left.
    Trace { id: String },
    /// Drain the node to another MTA: new mail is refused from now on
    /// (SMTP 421, injection 503), and every queued message, whatever its
    /// domain or holds, is sent to HOST:PORT (`ip:port`, `[ip]:port` or
    /// `host:port`), each removed here only after the peer's 250. The
    /// drain starts only once the peer has answered EHLO. Waits, with a
    /// progress bar, until the queue is empty; a message the peer defers
    /// or refuses, or that cannot reach it, stays queued and is retried
    /// (never bounced), and when only such messages are left the command
    /// says why and fails. Not stored: run it again after a restart.
    Drain {
        #[arg(long)]
        to: String,
        /// Return at once instead of waiting for the queue to empty.
        #[arg(long)]
        no_wait: bool,
    },
    /// Retry deferred messages now (only those a selector matches, if
    /// given: `--domain example.com`, `--meta campaign=spring`, ...).
    Flush {
        #[command(flatten)]
        select: SelectArgs,
        #[command(flatten)]
        confirm: ConfirmArgs,
    },
    /// Hold deliveries to DOMAIN until resumed (or for a while: --for 2h).
    /// Suspensions survive a restart.
    Suspend {
        /// A destination domain, or with `--kind` a site (its MX host
        /// names, as `queue summary --by site` shows them), an egress
        /// source or pool, or a path (`SOURCE|SITE`).
        domain: String,
        /// What NAME is.
        #[arg(long, default_value = "domain", value_parser = ["domain", "site", "source", "pool", "path"])]
        kind: String,
        /// How long: seconds, or with a unit (30m, 2h, 1d).
        #[arg(long = "for", value_parser = parse_duration)]
        duration: Option<u64>,
    },
    /// Release deliveries to DOMAIN (or the site, source, pool or path
    /// `--kind` says).
    Resume {
        #[arg(required_unless_present = "rule")]
        domain: Option<String>,
        #[arg(long, default_value = "domain", value_parser = ["domain", "site", "source", "pool", "path"])]
        kind: String,
        /// Lift the bounce rule with this id instead (`queue bounce
        /// --for`; `queue summary` lists them).
        #[arg(long, conflicts_with = "domain")]
        rule: Option<String>,
    },
    /// Remove a message (ID), or every message a selector matches,
    /// without delivering or bouncing it: `queue delete --meta
    /// campaign=spring` (shows the count and asks first; `--dry-run`).
    Delete {
        id: Option<String>,
        #[command(flatten)]
        select: SelectArgs,
        #[command(flatten)]
        confirm: ConfirmArgs,
    },
    /// Return a message (ID), or every message a selector matches, to its
    /// sender now (a DSN), and remove it.
    Bounce {
        id: Option<String>,
        #[command(flatten)]
        select: SelectArgs,
        #[command(flatten)]
        confirm: ConfirmArgs,
        /// Why (in the DSN and the Bounce events).
        #[arg(long)]
        reason: Option<String>,
        /// With a selector: also refuse new mail it matches (SMTP 550
        /// 5.7.1 with the reason, injection 403) and bounce what it
        /// catches queued, for this long: 30m, 2h, 1d (a bounce rule,
        /// stored and shared with the fleet; `queue resume --rule ID`
        /// lifts it). Needs --reason.
        #[arg(long = "for", value_parser = parse_duration)]
        duration: Option<u64>,
    },
}

/// After `POST /queue/drain`: says so, then (with `wait`) shows the
/// queue emptying until it is empty, or until every message left is
/// waiting for a retry after the peer failed it (then it says why, per
/// reason, and fails: the drain goes on in the server, but cannot finish
/// by itself now).
fn drain_progress(
    api: &admin_client::AdminClient,
    to: &str,
    answer: serde_json::Value,
    wait: bool,
) -> Result<()> {
    let total = answer["queued"].as_u64().unwrap_or(0);
    let peer = answer["peer"].as_str().unwrap_or(to);
    println!("draining to {to} ({peer} answered): {total} messages queued; new mail is refused");
    if !wait {
        return Ok(());
    }
    // Drawn only on a terminal (indicatif hides it otherwise).
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} moved (eta {eta}) {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    // Polls in a row with every message left deferred.
    let mut stuck = 0;
    loop {
        let summary: crate::http::admin::Summary =
            serde_json::from_value(api.call("GET", "/queue/summary")?)?;
        let left = summary.messages as u64;
        bar.set_length(total.max(left));
        bar.set_position(total.saturating_sub(left));
        if left == 0 {
            bar.finish_and_clear();
            println!("drained: the queue is empty");
            return Ok(());
        }
        let reasons = admin_client::deferred_reasons(&summary);
        if let Some((reason, n)) = reasons.first() {
            bar.set_message(format!("{n} deferred: {reason}"));
        }
        stuck = if summary.deferred == summary.messages {
            stuck + 1
        } else {
            0
        };
        if stuck >= 6 {
            bar.finish_and_clear();
            let mut why = format!(
                "the drain to {to} cannot finish now: all {left} messages left are deferred (the peer failed them; they stay queued and are retried to it):\n"
            );
            for (reason, n) in reasons {
                why += &format!("  {n}: {reason}\n");
            }
            why += "`ringpost queue flush` retries them now; `ringpost queue summary` shows where they stand";
            anyhow::bail!(why);
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

pub(super) fn queue(args: AdminArgs, command: QueueCommand) -> Result<()> {
    let json = args.json;
    let api = admin_client(args)?;
    if let Some(done) = by_selector(&api, &command, json) {
        return done;
    }
    let (method, target) = request_of(&command);
    let answer = api.call(method, &target)?;
    if json {
        println!("{answer}");
        return Ok(());
    }
    print!("{}", render(&api, command, answer)?);
    Ok(())
}

/// A command given a selector (or a flush beyond `--domain`): run
/// through `POST /queue/actions`. None for the commands' other forms.
fn by_selector(
    api: &admin_client::AdminClient,
    command: &QueueCommand,
    json: bool,
) -> Option<Result<()>> {
    let mut rule_for = None;
    let (action, id, select, confirm, reason) = match command {
        QueueCommand::Ls { select, limit, .. } if select.beyond_domain() => {
            let limit = limit.unwrap_or(super::bulk::LIST_LIMIT);
            return Some(super::bulk::list(api, select, limit).and_then(|list| {
                match json {
                    true => println!("{}", serde_json::to_value(&list)?),
                    false => print!(
                        "{}",
                        admin_client::render_list(&list, crate::shard::clock::unix_now())
                    ),
                }
                Ok(())
            }));
        }
        QueueCommand::Flush { select, confirm } => {
            if !select.beyond_domain() && !confirm.dry_run {
                return None;
            }
            ("flush", &None, select, confirm, None)
        }
        QueueCommand::Delete {
            id,
            select,
            confirm,
        } => ("delete", id, select, confirm, None),
        QueueCommand::Bounce {
            id,
            select,
            confirm,
            reason,
            duration,
        } => {
            rule_for = *duration;
            if rule_for.is_some() && (id.is_some() || reason.is_none()) {
                return Some(Err(anyhow::anyhow!(
                    "--for makes a bounce rule: it takes a selector and --reason, not a message ID"
                )));
            }
            ("bounce", id, select, confirm, reason.as_deref())
        }
        _ => return None,
    };
    match (id, select.is_empty()) {
        (Some(_), true) if !confirm.dry_run => None,
        (Some(_), _) => Some(Err(anyhow::anyhow!(
            "give a message ID or a selector, not both (--dry-run takes a selector)"
        ))),
        (None, true) => Some(Err(anyhow::anyhow!(
            "give a message ID, or a selector (--meta NAME=VALUE, --domain, --sender, ...; --all for every message)"
        ))),
        (None, false) => {
            let how = super::bulk::How {
                confirm,
                reason,
                rule_for,
                json,
            };
            Some(super::bulk::run(api, action, select, &how))
        }
    }
}

/// `queue resume`'s request: a suspension's end, or a bounce rule's.
fn resume_request(
    domain: &Option<String>,
    kind: &str,
    rule: &Option<String>,
) -> (&'static str, String) {
    match rule {
        Some(id) => ("DELETE", format!("/queue/bounce-rules/{}", encode(id))),
        None => {
            let name = encode(domain.as_deref().unwrap_or(""));
            ("POST", format!("/queue/{kind}s/{name}/resume"))
        }
    }
}

/// The admin API request a queue command makes.
fn request_of(command: &QueueCommand) -> (&'static str, String) {
    let domain_query = |d: &Option<String>| match d {
        Some(d) => format!("?domain={}", encode(d)),
        None => String::new(),
    };
    match command {
        QueueCommand::Summary { by } => match by {
            None => ("GET", "/queue/summary".to_string()),
            Some(by) => ("GET", format!("/queue/summary?by={by}")),
        },
        QueueCommand::Ls { select, limit, .. } => {
            let mut q = domain_query(&select.domain);
            if let Some(n) = limit {
                q += &format!("{}limit={n}", if q.is_empty() { '?' } else { '&' });
            }
            ("GET", format!("/queue/messages{q}"))
        }
        QueueCommand::Find {
            rcpt,
            sender,
            message_id,
            idempotency_key,
            meta,
            since,
            limit,
        } => {
            let keys = [
                ("rcpt", rcpt),
                ("sender", sender),
                ("message_id", message_id),
                ("idempotency_key", idempotency_key),
                ("meta", meta),
            ];
            let mut q: Vec<String> = keys
                .iter()
                .filter_map(|(k, v)| Some(format!("{k}={}", encode(v.as_deref()?))))
                .collect();
            q.extend(since.map(|s| format!("since_secs={s}")));
            q.extend(limit.map(|n| format!("limit={n}")));
            ("GET", format!("/queue/find?{}", q.join("&")))
        }
        QueueCommand::Show { id } => ("GET", format!("/queue/messages/{}", encode(id))),
        QueueCommand::Trace { id } => ("GET", format!("/queue/messages/{}/trace", encode(id))),
        QueueCommand::Flush { select, .. } => (
            "POST",
            format!("/queue/flush{}", domain_query(&select.domain)),
        ),
        QueueCommand::Drain { to, .. } => ("POST", format!("/queue/drain?to={}", encode(to))),
        QueueCommand::Suspend {
            domain,
            kind,
            duration,
        } => {
            let query = duration.map_or(String::new(), |d| format!("?for={d}"));
            (
                "POST",
                format!("/queue/{kind}s/{}/suspend{query}", encode(domain)),
            )
        }
        QueueCommand::Resume { domain, kind, rule } => resume_request(domain, kind, rule),
        QueueCommand::Delete { id, .. } => (
            "DELETE",
            format!("/queue/messages/{}", encode(id.as_deref().unwrap_or(""))),
        ),
        QueueCommand::Bounce { id, .. } => (
            "POST",
            format!(
                "/queue/messages/{}/bounce",
                encode(id.as_deref().unwrap_or(""))
            ),
        ),
    }
}

/// A queue command's answer as text for a terminal (`drain` follows the
/// drain with its progress bar, then has nothing more to say).
fn render(
    api: &admin_client::AdminClient,
    command: QueueCommand,
    answer: serde_json::Value,
) -> Result<String> {
    let now = crate::shard::clock::unix_now();
    Ok(match command {
        QueueCommand::Summary { by: None } => {
            admin_client::render_summary(&serde_json::from_value::<Summary>(answer)?)
        }
        QueueCommand::Summary { by: Some(_) } => {
            admin_client::render_groups(&serde_json::from_value::<
                crate::http::admin::GroupedSummary,
            >(answer)?)
        }
        QueueCommand::Ls { .. } => {
            let list: Vec<crate::scheduler::operations::MessageInfo> =
                serde_json::from_value(answer)?;
            admin_client::render_list(&list, now)
        }
        QueueCommand::Find { .. } => admin_client::render_find(&answer, now),
        QueueCommand::Show { .. } => {
            admin_client::render_show(&serde_json::from_value::<MessageDetail>(answer)?, now)
        }
        QueueCommand::Trace { .. } => admin_client::render_trace(
            &serde_json::from_value::<crate::http::admin::MessageTrace>(answer)?,
            now,
        ),
        QueueCommand::Drain { to, no_wait } => {
            drain_progress(api, &to, answer, !no_wait)?;
            String::new()
        }
        QueueCommand::Flush { .. } => {
            let n = answer["flushed"].as_u64().unwrap_or(0) as usize;
            let mut text = format!("{} flushed\n", admin_client::count(n, "deferred message"));
            let held = answer["held"].as_u64().unwrap_or(0) as usize;
            if held > 0 {
                text += &format!(
                    "{} held, not flushed:\n",
                    admin_client::count(held, "message")
                );
                for m in answer["held_messages"].as_array().into_iter().flatten() {
                    let (id, why) = (
                        m["id"].as_str().unwrap_or("?"),
                        m["reason"].as_str().unwrap_or("?"),
                    );
                    text += &format!("  {id}: {why}\n");
                }
            }
            text
        }
        QueueCommand::Suspend {
            domain, duration, ..
        } => match duration {
            Some(secs) => format!("{domain}: suspended for {}\n", admin_client::age(secs)),
            None => format!("{domain}: suspended until resumed\n"),
        },
        QueueCommand::Resume { rule: Some(id), .. } => format!("bounce rule {id} lifted\n"),
        QueueCommand::Resume { domain, .. } => {
            format!("{}: resumed\n", domain.unwrap_or_default())
        }
        QueueCommand::Delete { id, .. } => format!("{}: deleted\n", id.unwrap_or_default()),
        QueueCommand::Bounce { id, .. } => {
            format!("{}: returned to sender\n", id.unwrap_or_default())
        }
    })
}

pub(super) fn queue_ls(dir: &std::path::Path, cfg: &Config) -> Result<()> {
    let now = crate::shard::clock::unix_now();
    let shards = existing_shards(dir);
    anyhow::ensure!(
        !shards.is_empty(),
        "there is no spool at {} (no shard-N directories)",
        dir.display()
    );
    println!(
        "{:<32}  {:>9}  {:>8}  {:<30}  RECIPIENTS",
        "ID", "SIZE", "AGE", "SENDER"
    );
    for shard in shards {
        let spool = Spool::open(dir, shard, &SpoolOptions::from(&cfg.spool))?;
        // As the server would at start: after a crash some messages may be
        // only in the segments' journal.
        spool.recover()?;
        for (id, env) in spool.list() {
            let rcpts: Vec<&str> = env.recipients.iter().map(|r| &*r.address).collect();
            let sender = if env.sender.is_empty() {
                "<>"
            } else {
                &env.sender
            };
            println!(
                "{:<32}  {:>9}  {:>7}s  {:<30}  {}",
                id.to_string(),
                env.size(),
                now.saturating_sub(env.created),
                sender,
                rcpts.join(", ")
            );
        }
    }
    Ok(())
}
