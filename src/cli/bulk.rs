//! `ringpost queue delete|bounce|flush|ls` with a selector: what the
//! operator knows of the messages (`--meta campaign=spring`, `--domain`,
//! `--sender`, ...), through `POST /queue/actions`. A change shows how
//! many messages match and the oldest few, asks on a terminal (or takes
//! `--yes`), then runs in calls of [`BATCH`] messages with a progress bar
//! until nothing is left, and reports what it did and skipped.
//!
//! Must not: act without the count having been seen (the first call
//! carries it as `expect`; the server refuses if the queue changed).

use anyhow::{Result, bail};
use clap::Args;

use super::admin_client::{self, AdminClient};
use super::parse_duration;
use crate::scheduler::bulk::{BulkReport, Preview};
use crate::scheduler::select::Selector;

/// Messages per call to the server: a progress step.
pub const BATCH: usize = 1_000;
/// Messages `queue ls` with a selector lists when not told.
pub const LIST_LIMIT: usize = 1_000;

/// Which queued messages (every criterion given must hold).
#[derive(Args, Debug, Default, Clone)]
pub struct SelectArgs {
    /// A recipient domain with a pending recipient.
    #[arg(long)]
    pub domain: Option<String>,
    /// The envelope sender.
    #[arg(long)]
    pub sender: Option<String>,
    /// A recipient.
    #[arg(long)]
    pub rcpt: Option<String>,
    /// The egress pool.
    #[arg(long)]
    pub pool: Option<String>,
    /// The egress source a pending recipient was last tried from.
    #[arg(long)]
    pub source: Option<String>,
    /// The site (as `queue summary --by site` names it) a pending
    /// recipient was last tried at.
    #[arg(long)]
    pub site: Option<String>,
    /// One entry of the application's meta: NAME=VALUE.
    #[arg(long)]
    pub meta: Option<String>,
    /// The priority lane: high, normal or bulk.
    #[arg(long)]
    pub priority: Option<String>,
    /// Accepted at least this long ago: seconds, or 30m, 2h, 7d.
    #[arg(long, value_parser = parse_duration)]
    pub older_than: Option<u64>,
    /// deferred, held, queued or delivering.
    #[arg(long)]
    pub state: Option<String>,
    /// Every queued message (needed when no criterion is given).
    #[arg(long)]
    pub all: bool,
}

/// Before a change.
#[derive(Args, Debug, Default, Clone)]
pub struct ConfirmArgs {
    /// Say how many messages and recipients match, show a few, change
    /// nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Do not ask (needed when not on a terminal).
    #[arg(long)]
    pub yes: bool,
}

impl SelectArgs {
    pub fn selector(&self) -> Selector {
        Selector {
            domain: self.domain.clone(),
            sender: self.sender.clone(),
            rcpt: self.rcpt.clone(),
            pool: self.pool.clone(),
            source: self.source.clone(),
            site: self.site.clone(),
            meta: self.meta.clone(),
            priority: self.priority.clone(),
            older_than_secs: self.older_than,
            state: self.state.clone(),
            all: self.all,
        }
    }

    /// Whether anything beyond `--domain` is given (the commands' older
    /// forms take `--domain` alone).
    pub fn beyond_domain(&self) -> bool {
        let mut s = self.selector();
        s.domain = None;
        !s.is_empty() || s.all
    }

    pub fn is_empty(&self) -> bool {
        self.selector().is_empty() && !self.all
    }
}

/// The matching messages, for `queue ls` with a selector: at most
/// `limit`, the oldest first.
pub fn list(
    api: &AdminClient,
    select: &SelectArgs,
    limit: usize,
) -> Result<Vec<crate::scheduler::operations::MessageInfo>> {
    let body = serde_json::json!({
        "action": "preview",
        "selector": select.selector(),
        "dry_run": true,
        "examples": limit,
    });
    let answer = api.call_with_body("POST", "/queue/actions", body.to_string().as_bytes())?;
    let preview: Preview = serde_json::from_value(answer)?;
    Ok(preview.examples)
}

/// How a bulk command runs: its confirmation flags, a bounce's reason,
/// a bounce rule's duration (`--for`), JSON output.
pub struct How<'a> {
    pub confirm: &'a ConfirmArgs,
    pub reason: Option<&'a str>,
    pub rule_for: Option<u64>,
    pub json: bool,
}

/// Runs `action` (delete, bounce or flush) on what `select` matches; a
/// bounce with `rule_for` puts its bounce rule in force first, so that
/// nothing new slips in while the queued ones are bounced.
pub fn run(api: &AdminClient, action: &str, select: &SelectArgs, how: &How) -> Result<()> {
    let selector = select.selector();
    let ask = |body: serde_json::Value| -> Result<serde_json::Value> {
        Ok(api.call_with_body("POST", "/queue/actions", body.to_string().as_bytes())?)
    };
    let answer = ask(serde_json::json!({
        "action": action, "selector": selector, "dry_run": true,
    }))?;
    let preview: Preview = serde_json::from_value(answer.clone())?;
    let rule_note = how.rule_for.map(|secs| {
        format!(
            "and new mail it matches refused for {}\n",
            admin_client::age(secs)
        )
    });
    if how.confirm.dry_run {
        match how.json {
            true => println!("{answer}"),
            false => print!(
                "{}{}",
                render_preview(action, &preview),
                rule_note.unwrap_or_default()
            ),
        }
        return Ok(());
    }
    if preview.messages == 0 && how.rule_for.is_none() {
        println!("no queued message matches: nothing to {action}");
        return Ok(());
    }
    if !how.json {
        print!(
            "{}{}",
            render_preview(action, &preview),
            rule_note.unwrap_or_default()
        );
    }
    if !how.confirm.yes {
        ask_first(action, preview.messages)?;
    }
    if let Some(secs) = how.rule_for {
        let rule = make_rule(api, &selector, how.reason.unwrap_or_default(), secs)?;
        if !how.json {
            println!("bounce rule {rule} in force (lift it: ringpost queue resume --rule {rule})");
        }
    }
    if preview.messages == 0 {
        return Ok(());
    }
    // A rule just made bounces what it catches by itself, so the count
    // seen may already be smaller: the operator has confirmed it.
    let expect = how.rule_for.is_none().then_some(preview.messages);
    let all = in_steps(&ask, action, &selector, &preview, expect, how.reason)?;
    match how.json {
        true => println!("{}", serde_json::to_value(&all)?),
        false => print!("{}", render_report(action, &all)),
    }
    if all.failed > 0 {
        bail!("{} failed", admin_client::count(all.failed, "message"));
    }
    Ok(())
}

/// Puts a bounce rule in force; its id.
fn make_rule(api: &AdminClient, selector: &Selector, reason: &str, secs: u64) -> Result<String> {
    let body = serde_json::json!({ "selector": selector, "reason": reason, "for_secs": secs });
    let answer = api.call_with_body("POST", "/queue/bounce-rules", body.to_string().as_bytes())?;
    Ok(answer["rule"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string())
}

/// Asks on a terminal whether to go ahead; Err when not on one, or the
/// answer is not yes.
fn ask_first(action: &str, messages: usize) -> Result<()> {
    use std::io::IsTerminal;
    if !std::io::stdin().is_terminal() {
        bail!("not on a terminal: add --yes to {action} these messages without being asked");
    }
    eprint!("{action} {messages} messages? [y/N] ");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    if !matches!(line.trim(), "y" | "Y" | "yes") {
        bail!("nothing done");
    }
    Ok(())
}

/// Runs the action in steps (the first with the count the preview saw,
/// `expect`, unless it is None),
/// with a progress bar, until nothing matching is left or a step changes
/// nothing; the steps' reports added up.
fn in_steps(
    ask: &dyn Fn(serde_json::Value) -> Result<serde_json::Value>,
    action: &str,
    selector: &Selector,
    preview: &Preview,
    expect: Option<usize>,
    reason: Option<&str>,
) -> Result<BulkReport> {
    let total = preview.messages as u64;
    // Drawn only on a terminal (indicatif hides it otherwise).
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {per_sec} (eta {eta}) {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut all = BulkReport::default();
    // A flush leaves its messages queued, so one call takes them all; a
    // delete or bounce goes in steps until nothing matches, or a step
    // changes nothing (what is left is busy or failing).
    let limit = match action {
        "flush" => crate::http::actions::MAX_LIMIT,
        _ => BATCH,
    };
    let mut first = true;
    loop {
        let mut body = serde_json::json!({
            "action": action, "selector": selector, "limit": limit,
        });
        match (first, expect) {
            (true, Some(n)) => body["expect"] = n.into(),
            _ => body["force"] = true.into(),
        }
        if let Some(r) = reason {
            body["reason"] = r.into();
        }
        let step: BulkReport = serde_json::from_value(ask(body)?)?;
        first = false;
        bar.inc(step.done as u64);
        let (done, left, busy) = (step.done, step.left, step.busy);
        all.merge(step);
        // A message skipped as busy in one step is taken by a later one
        // (it is still the oldest match): only the last step's are left.
        all.busy = busy;
        if action == "flush" || left == 0 || done == 0 {
            break;
        }
    }
    all.matched = preview.messages;
    bar.finish_and_clear();
    Ok(all)
}

fn render_preview(action: &str, p: &Preview) -> String {
    let now = crate::shard::clock::unix_now();
    let mut out = format!(
        "{} ({}) would be {}\n",
        admin_client::count(p.messages, "message"),
        admin_client::count(p.recipients, "pending recipient"),
        match action {
            "delete" => "deleted",
            "bounce" => "returned to their senders",
            _ => "flushed (deferred ones only)",
        }
    );
    if !p.examples.is_empty() {
        out += "the oldest:\n";
        out += &admin_client::render_list(&p.examples, now);
    }
    out
}

fn render_report(action: &str, r: &BulkReport) -> String {
    let did = match action {
        "delete" => "deleted",
        "bounce" => "returned to sender",
        _ => "flushed",
    };
    let mut out = format!("{} {did}\n", admin_client::count(r.done, "message"));
    if r.busy > 0 {
        out += &format!(
            "{} skipped: a delivery attempt was under way (run the command again)\n",
            admin_client::count(r.busy, "message")
        );
    }
    if r.held > 0 {
        out += &format!(
            "{} left: a suspension holds them\n",
            admin_client::count(r.held, "message")
        );
    }
    if r.not_deferred > 0 {
        out += &format!(
            "{} left: not deferred (already being tried)\n",
            admin_client::count(r.not_deferred, "message")
        );
    }
    if r.failed > 0 {
        out += &format!("{} failed:\n", admin_client::count(r.failed, "message"));
        for f in &r.failures {
            out += &format!("  {f}\n");
        }
    }
    out
}
