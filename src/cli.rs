//! The command line: `serve`, `check-config`, `dump-metrics`,
//! `hash-password`, `queue ls`.
//!
//! Owns: argument parsing (clap), loading the config, and printing. Errors
//! become `anyhow` here, at the binary's edge, and an exit status.
//!
//! Must not: open the spool while a server runs on it (sled's lock refuses;
//! the error says so).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::queue::{Spool, SpoolOptions, existing_shards};
use crate::runtime;

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
    },
    /// Validate a config file without binding ports or opening the spool;
    /// prints every error found.
    CheckConfig {
        /// The TOML file to check.
        file: PathBuf,
    },
    /// Print every metric ringpost exports: name, type and help text.
    DumpMetrics,
    /// Read a password from standard input and print its argon2id hash,
    /// for a line `name:hash` of the submission users file.
    HashPassword,
    /// Inspect the queue.
    Queue {
        #[command(subcommand)]
        command: QueueCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum QueueCommand {
    /// List queued messages: id, sender, recipients, size, age.
    /// Reads the spool directly, so the server must be stopped.
    Ls {
        /// Spool directory (default: from --config, else ./ringpost-spool).
        #[arg(long)]
        spool: Option<PathBuf>,
        /// Config file to take the spool directory from.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

pub fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringpost: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(config: Option<&PathBuf>) -> Result<Config> {
    match config {
        None => Ok(Config::default()),
        Some(p) => Config::load(p).map_err(|e| anyhow::anyhow!("{}:\n{e}", p.display())),
    }
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve { config, shards } => serve(config, shards),
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
            let hash = crate::smtp_in::auth::hash_password(password.as_bytes())
                .map_err(anyhow::Error::msg)?;
            println!("{hash}");
            Ok(())
        }
        Command::CheckConfig { file } => {
            load(Some(&file))?;
            println!("{}: ok", file.display());
            Ok(())
        }
        Command::Queue {
            command: QueueCommand::Ls { spool, config },
        } => {
            let dir = match spool {
                Some(d) => d,
                None => load(config.as_ref())?.spool.dir,
            };
            queue_ls(&dir)
        }
    }
}

fn serve(config: Option<PathBuf>, shards: Option<usize>) -> Result<()> {
    let mut cfg = load(config.as_ref())?;
    if let Some(n) = shards {
        cfg.server.shards = n;
    }
    let server = runtime::start(cfg).context("starting ringpost")?;
    log::info!(
        "ringpost listening for SMTP on {} with {} shards",
        server.smtp_addr,
        server.shards
    );
    let shutdown = server.shutdown_handle();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])
    .context("installing signal handlers")?;
    std::thread::Builder::new()
        .name("ringpost-signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                log::info!("signal {sig}: shutting down gracefully");
                shutdown.request();
            }
        })?;
    server.wait().context("ringpost stopped")?;
    log::info!("ringpost stopped");
    Ok(())
}

fn queue_ls(dir: &std::path::Path) -> Result<()> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    println!(
        "{:<32}  {:>9}  {:>8}  {:<30}  RECIPIENTS",
        "ID", "SIZE", "AGE", "SENDER"
    );
    for shard in existing_shards(dir) {
        let spool = Spool::open(dir, shard, &SpoolOptions::default())?;
        for (id, env) in spool.list() {
            let rcpts: Vec<&str> = env.recipients.iter().map(|r| r.address.as_str()).collect();
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
