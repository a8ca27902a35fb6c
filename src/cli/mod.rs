//! The command line: `serve`, `check-config`, `dump-metrics`,
//! `hash-password`, `dkim keygen|check`, `dns check`, `tls check`, `suppression ...` and `queue ...` (through the admin API of the running
//! server; `queue ls --spool` reads a stopped server's spool).
//!
//! Owns: argument parsing (clap), loading the config, and printing. Errors
//! become `anyhow` here, at the binary's edge, and an exit status.
//!
//! May call: `server` (to run one), `config`, `queue`, `events`,
//! `suppression` (the stopped spool's and list's tools), `http` and
//! `inbound` (the admin API's shapes, injection), `scheduler` (summaries),
//! `history` (what `queue find` and `trace` show of a finished message),
//! `dkim`, `dns`, `mta_sts`, `dane`, `tls` (keygen and the DNS, DKIM and
//! TLS checks),
//! `metrics`, `shard`.
//! Must not: open the spool while a server runs on it (sled's lock refuses;
//! the error says so).

pub mod admin_client;
pub mod bulk;
pub mod dkim;
pub mod dns_check;
pub mod queue;
pub mod sink;
pub mod suppression;
pub mod tls_check;
pub mod webhook_sink;

use queue::QueueCommand;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::queue::{Spool, SpoolOptions, existing_shards};
use crate::server;
use crate::shard::clock::parse_duration;

#[derive(Parser, Debug)]
#[command(
    name = "ringpost",
    version,
    about = "A queueing mail transfer agent, thread-per-core on io_uring"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per run: the size of the largest command (the queue's, with
// its selector flags) costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the MTA. Without --config it runs on the embedded default:
    /// SMTP on 127.0.0.1:2525, spool in ./ringpost-spool, relay from loopback.
    Serve {
        /// TOML file overriding the defaults field by field.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Number of shards (executors); default one per online CPU.
        #[arg(long)]
        shards: Option<usize>,
        /// Relay all mail to this host instead of the recipients' MX hosts
        /// (`delivery.smarthost`): `[ip]:port` or `host:port`.
        #[arg(long)]
        smarthost: Option<String>,
    },
    /// Check a config file as `serve` would before it binds anything: the
    /// values, and the files they name (certificates, keys, users, tokens,
    /// the delivery log's directory). Prints every problem with its line.
    CheckConfig {
        /// The TOML file to check.
        file: PathBuf,
    },
    /// Print the configuration reference (every key, its default and its
    /// meaning) as Markdown: docs/configuration.md is this output.
    ConfigReference {
        /// Print the shaping rules' keys instead: the table in
        /// docs/shaping.md.
        #[arg(long)]
        shaping: bool,
    },
    /// Print every metric ringpost exports: name, type and help text.
    DumpMetrics,
    /// A test SMTP server that takes mail and discards it: for trying
    /// ringpost without the internet (see the README's Quick start) and
    /// for benchmarks. Never a real MX.
    Sink {
        /// Where to listen.
        #[arg(long, default_value = "127.0.0.1:2626")]
        listen: std::net::SocketAddr,
        /// Answer 451 (try later) to every Nth message.
        #[arg(long, default_value_t = 0)]
        defer_every: u64,
        /// Answer 550 (no such user) to every Nth message.
        #[arg(long, default_value_t = 0)]
        reject_every: u64,
        /// Answer 450 to every recipient at this domain.
        #[arg(long)]
        defer_domain: Option<String>,
        /// Print nothing per message.
        #[arg(long)]
        quiet: bool,
        /// Also print each message's header section (`headers`) or all of
        /// it (`message`): what ringpost added, as a receiver sees it.
        #[arg(long, value_enum, default_value = "envelope")]
        print: sink::Print,
    },
    /// A test HTTP server that takes webhook batches (`[[events.webhook]]`)
    /// and counts them, checking signatures when given the secret: for
    /// trying webhooks locally and for benchmarks.
    WebhookSink {
        /// Where to listen.
        #[arg(long, default_value = "127.0.0.1:2680")]
        listen: std::net::SocketAddr,
        /// The webhook's secret file (first line): requests whose
        /// X-Ringpost-Signature does not match get 401.
        #[arg(long)]
        secret_file: Option<PathBuf>,
    },
    /// Read a password from standard input and print its argon2id hash,
    /// for a line `name:hash` of the submission users file.
    HashPassword,
    /// DKIM signing keys: make one, or check the DNS record of one.
    Dkim {
        #[command(subcommand)]
        command: dkim::DkimCommand,
    },
    /// A sending domain's DNS, checked against the config (SPF, DKIM,
    /// DMARC, reverse DNS, MTA-STS, TLS-RPT).
    Dns {
        #[command(subcommand)]
        command: dns_check::DnsCommand,
    },
    /// A destination's TLS: what mail to it would be held to (DANE,
    /// MTA-STS, `[tls]`) and why.
    Tls {
        #[command(subcommand)]
        command: tls_check::TlsCommand,
    },
    /// The suppression list of the running server (admin API).
    Suppression {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(subcommand)]
        command: suppression::SuppressionCommand,
    },
    /// Webhook events a receiver refused for good (refused alone while
    /// it took the events after them), kept in the spool: list them, or
    /// send them again (admin API, the server running).
    EventsFailed {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(subcommand)]
        command: EventsFailedCommand,
    },
    /// Inspect and act on the queue of the running server (admin API).
    Queue {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(subcommand)]
        command: QueueCommand,
    },
}

/// Where the admin API is and how to talk to it.
#[derive(clap::Args, Debug)]
pub struct AdminArgs {
    /// Config file to take [admin] listen and token_file from.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// The admin API address (default: from --config, else 127.0.0.1:9465).
    #[arg(long, global = true)]
    admin: Option<std::net::SocketAddr>,
    /// File holding the bearer token (default: [admin] token_file).
    #[arg(long, global = true)]
    token_file: Option<PathBuf>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand, Debug)]
pub enum EventsFailedCommand {
    /// List them as JSON lines (webhook, shard, seq, time, the event).
    Ls {
        /// Only this webhook's.
        #[arg(long)]
        webhook: Option<String>,
        /// Only events of the last 90s, 30m, 2h, 1d...
        #[arg(long, value_parser = parse_duration)]
        since: Option<u64>,
        /// Read this spool directory directly instead (server stopped).
        #[arg(long)]
        spool: Option<PathBuf>,
    },
    /// Send them again to their webhook, in order, at least once: each
    /// shard's sender posts them before anything new; one refused again
    /// is kept as failed again.
    Replay {
        /// Only this webhook's.
        #[arg(long)]
        webhook: Option<String>,
        /// Only events of the last 90s, 30m, 2h, 1d...
        #[arg(long, value_parser = parse_duration)]
        since: Option<u64>,
    },
}

pub fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringpost: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes, each said once: a cause whose text the message
/// before it already carries is left out.
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

fn load(config: Option<&PathBuf>) -> Result<Config> {
    match config {
        None => Ok(Config::default()),
        Some(p) => Config::load(p).map_err(|e| anyhow::anyhow!("{}:\n{e}", p.display())),
    }
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve {
            config,
            shards,
            smarthost,
        } => serve(config, shards, smarthost),
        Command::Sink {
            listen,
            defer_every,
            reject_every,
            defer_domain,
            quiet,
            print,
        } => {
            let opts = sink::SinkOptions {
                print,
                defer_every,
                reject_every,
                // Lives as long as the process.
                defer_domain: defer_domain.map(|d| &*Box::leak(d.into_boxed_str())),
                verbose: !quiet,
            };
            sink::run(listen, opts).with_context(|| format!("sink on {listen}"))
        }
        Command::WebhookSink {
            listen,
            secret_file,
        } => {
            let secret = secret_file.as_deref().map(first_line).transpose()?;
            webhook_sink::run(listen, secret).with_context(|| format!("webhook-sink on {listen}"))
        }
        Command::DumpMetrics => {
            for m in crate::metrics::ALL {
                println!("{}\t{}\t{}", m.name, m.kind.as_str(), m.help);
            }
            Ok(())
        }
        Command::HashPassword => {
            let mut password = String::new();
            std::io::stdin().read_line(&mut password)?;
            let password = password.trim_end_matches(['\r', '\n']);
            anyhow::ensure!(!password.is_empty(), "empty password");
            let hash = crate::inbound::smtp::auth::hash_password(password.as_bytes())
                .map_err(anyhow::Error::msg)?;
            println!("{hash}");
            Ok(())
        }
        Command::CheckConfig { file } => check_config(&file),
        Command::Dkim { command } => match dkim::run(command)? {
            true => Ok(()),
            false => anyhow::bail!("DNS does not publish every key checked"),
        },
        Command::Tls { command } => tls_check::run(command),
        Command::Dns { command } => match dns_check::run(command)? {
            true => Ok(()),
            false => anyhow::bail!("the domain's DNS fails a check (see FAIL above)"),
        },
        Command::ConfigReference { shaping } => {
            match shaping {
                true => print!("{}", crate::scheduler::shaping::key_table()),
                false => print!("{}", crate::config::reference_markdown()),
            }
            Ok(())
        }
        Command::Queue {
            command: QueueCommand::Ls {
                spool: Some(dir), ..
            },
            admin,
        } => queue::queue_ls(&dir, &load(admin.config.as_ref())?),
        Command::Queue { admin, command } => queue::queue(admin, command),
        Command::EventsFailed { admin, command } => events_failed(admin, command),
        Command::Suppression { admin, command } => {
            let json = admin.json;
            let api = admin_client(admin)?;
            suppression::run(&api, command, json)
        }
    }
}

/// The admin API client of `--config`/`--admin`/`--token-file`.
fn admin_client(args: AdminArgs) -> Result<admin_client::AdminClient> {
    let cfg = load(args.config.as_ref())?;
    let addr = match args.admin {
        Some(a) => a,
        None => cfg
            .admin
            .listen
            .addr()
            .context("[admin] listen is off in this config")?,
    };
    let token_file = args
        .token_file
        .or_else(|| (!cfg.admin.token_file.is_empty()).then(|| cfg.admin.token_file.into()));
    let token = token_file.as_deref().map(first_line).transpose()?;
    Ok(admin_client::AdminClient { addr, token })
}

/// The first line of a token or secret file, trimmed.
fn first_line(path: &std::path::Path) -> Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text.lines().next().unwrap_or("").trim().to_string())
}

/// `check-config`: the values, then the files, all problems at once.
fn check_config(file: &std::path::Path) -> Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let (cfg, mut problems) =
        Config::parse(&text).map_err(|e| anyhow::anyhow!("{}:\n{e}", file.display()))?;
    if let Err(mut files) = server::preflight(&cfg) {
        crate::config::locate(&text, &mut files);
        problems.extend(files);
    }
    if problems.is_empty() {
        let mut names = next_hops_resolve(&cfg);
        crate::config::locate(&text, &mut names);
        problems.extend(names);
    }
    if !problems.is_empty() {
        anyhow::bail!(
            "{}:\n{}",
            file.display(),
            crate::config::ConfigErrors(problems)
        );
    }
    println!("{}: ok", file.display());
    Ok(())
}

/// `check-config`: every next hop named by host name (smarthost, routes)
/// resolves, through the resolver `serve` would use. At start-up a name
/// that does not resolve only defers mail (4.4.3), so this is where an
/// operator hears of a typo before the mail waits.
fn next_hops_resolve(cfg: &Config) -> crate::config::Problems {
    let mut problems = crate::config::Problems::default();
    let hops = std::iter::once(("delivery.smarthost".to_string(), &cfg.delivery.smarthost))
        .filter(|(_, h)| !h.is_empty())
        .chain(
            cfg.delivery
                .routes
                .iter()
                .map(|(domain, hop)| (format!("delivery.routes.{domain}"), hop)),
        );
    let named: Vec<(String, String)> = hops
        .filter_map(|(key, hop)| {
            let hop = crate::config::NextHop::parse(hop).ok()?;
            Some((key, hop.host_name()?.to_string()))
        })
        .collect();
    if named.is_empty() {
        return problems;
    }
    let resolver = match crate::dns::start(
        &cfg.dns.nameservers,
        std::time::Duration::from_secs(cfg.dns.timeout_secs),
        &crate::dns::Dnssec::default(),
    ) {
        Ok(r) => r,
        Err(e) => {
            problems.at("dns", format!("cannot start the resolver: {e}"));
            return problems;
        }
    };
    for (key, host) in named {
        if let Err(e) = futures::executor::block_on(resolver.host(&host)) {
            problems.at(key, format!("`{host}` does not resolve: {e}"));
        }
    }
    problems
}

fn serve(config: Option<PathBuf>, shards: Option<usize>, smarthost: Option<String>) -> Result<()> {
    let mut cfg = load(config.as_ref())?;
    if let Some(n) = shards {
        cfg.server.shards = n;
    }
    if let Some(host) = smarthost {
        cfg.delivery.smarthost = host;
        let mut problems = crate::config::Problems::default();
        cfg.delivery.check(&mut problems);
        if !problems.is_empty() {
            anyhow::bail!("--smarthost:\n{}", crate::config::ConfigErrors(problems));
        }
    }
    // Before anything listens: a SIGTERM that arrives while the shards
    // start must be taken (and acted on once they run), not kill the
    // process with its default action.
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ])
    .context("installing signal handlers")?;
    let summary = startup_summary(&cfg);
    let server = server::start(cfg).context("starting ringpost")?;
    for line in summary.lines(&server) {
        log::info!("{line}");
    }
    for warning in summary.warnings {
        log::warn!("{warning}");
    }
    let shutdown = server.shutdown_handle();
    let reload = server.reload_handle();
    let certificate = server.certificate_handle();
    let unsubscribe = server.unsubscribe_links();
    std::thread::Builder::new()
        .name("ringpost-signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if sig == signal_hook::consts::SIGHUP {
                    // Logged (and counted) by the reload either way.
                    let _ = reload.run_blocking();
                    match certificate.as_ref().map(|c| c.reload()) {
                        Some(Ok(())) => log::info!("inject: certificate read again"),
                        Some(Err(e)) => {
                            log::error!(
                                "inject: certificate not reloaded (the one in force stays): {e}"
                            )
                        }
                        None => {}
                    }
                    match unsubscribe.as_ref().map(|u| u.keyring.reload()) {
                        Some(Ok(n)) => log::info!("unsubscribe: {n} secret(s) read again"),
                        Some(Err(e)) => log::error!(
                            "unsubscribe: secrets not reloaded (those in force stay): {e}"
                        ),
                        None => {}
                    }
                    continue;
                }
                log::info!("signal {sig}: shutting down gracefully");
                shutdown.request();
                break;
            }
        })?;
    server.wait().context("ringpost stopped")?;
    log::info!("ringpost stopped");
    Ok(())
}

/// What start-up tells the operator: where everything is.
struct StartupSummary {
    hostname: String,
    spool: String,
    log: String,
    warnings: Vec<String>,
}

fn startup_summary(cfg: &Config) -> StartupSummary {
    let hostname = cfg.hostname().to_string();
    let mut warnings = Vec::new();
    if !hostname.contains('.') {
        warnings.push(format!(
            "the host name `{hostname}` (greeting, EHLO, Received:) is not a fully qualified \
             domain name: receivers may refuse mail from it; set server.hostname"
        ));
    }
    StartupSummary {
        hostname,
        spool: cfg.spool.dir.display().to_string(),
        log: match cfg.delivery.log.as_str() {
            "stdout" => "standard output".into(),
            "off" => "off".into(),
            path => path.into(),
        },
        warnings,
    }
}

impl StartupSummary {
    fn lines(&self, server: &server::Server) -> Vec<String> {
        let l = &server.listeners;
        let at = |a: Option<std::net::SocketAddr>| a.map_or("off".into(), |a| a.to_string());
        vec![
            format!(
                "ringpost {} serving as {} with {} shards, spool {}",
                env!("CARGO_PKG_VERSION"),
                self.hostname,
                server.shards,
                self.spool
            ),
            format!(
                "listening: smtp {}, submission {}, injection {}, metrics {}, admin {}, unsubscribe {}",
                at(l.smtp),
                at(l.submission),
                at(l.inject),
                at(l.metrics),
                at(l.admin),
                at(l.unsubscribe)
            ),
            format!("delivery log: {} (logs: standard error)", self.log),
        ]
    }
}

fn events_failed(args: AdminArgs, command: EventsFailedCommand) -> Result<()> {
    use admin_client::encode;
    let query = |webhook: &Option<String>, since: Option<u64>| {
        let mut q = Vec::new();
        if let Some(w) = webhook {
            q.push(format!("webhook={}", encode(w)));
        }
        if let Some(ago) = since {
            q.push(format!(
                "since={}",
                crate::shard::clock::unix_now().saturating_sub(ago)
            ));
        }
        match q.is_empty() {
            true => String::new(),
            false => format!("?{}", q.join("&")),
        }
    };
    match command {
        EventsFailedCommand::Ls {
            webhook,
            since,
            spool: Some(dir),
        } => {
            let cfg = load(args.config.as_ref())?;
            let since_ms = since.map_or(0, |ago| {
                crate::shard::clock::unix_now().saturating_sub(ago) * 1000
            });
            for shard in existing_shards(&dir) {
                let spool = Spool::open(&dir, shard, &SpoolOptions::from(&cfg.spool))?;
                let outbox = crate::events::outbox::Outbox::open(&spool);
                for (name, e) in outbox.failed_matching(webhook.as_deref(), since_ms) {
                    let event: serde_json::Value = serde_json::from_slice(&e.json)?;
                    println!(
                        "{}",
                        serde_json::json!({"webhook": name, "shard": shard, "seq": e.seq, "at_ms": e.at_ms, "event": event})
                    );
                }
            }
        }
        EventsFailedCommand::Ls { webhook, since, .. } => {
            let api = admin_client(args)?;
            let list = api.call("GET", &format!("/events/failed{}", query(&webhook, since)))?;
            for e in list.as_array().into_iter().flatten() {
                println!("{e}");
            }
        }
        EventsFailedCommand::Replay { webhook, since } => {
            let api = admin_client(args)?;
            let answer = api.call(
                "POST",
                &format!("/events/failed/replay{}", query(&webhook, since)),
            )?;
            println!(
                "{} events sent again to their webhooks",
                answer["replayed"].as_u64().unwrap_or(0)
            );
        }
    }
    Ok(())
}
