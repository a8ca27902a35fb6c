//! `ringpost sink`: a small SMTP server that takes mail and throws it away,
//! for trying ringpost without the internet (the Quick start routes mail
//! to it) and for benchmarks (it can defer or refuse every Nth message,
//! or defer every recipient at one domain).
//!
//! Owns: [`run`]. One thread per connection (it is a test tool, not part
//! of the MTA), bounded: at most 256 connections, lines of 4 KiB, a minute
//! of silence, and data is counted, not kept (with `--print`, the first
//! MiB of each message is kept until it is printed: [`Print`]).
//!
//! Must not: be used as a real MX: it accepts anything and keeps nothing.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

const MAX_CONNECTIONS: usize = 256;
const MAX_LINE: u64 = 4096;
const IDLE: Duration = Duration::from_secs(60);

/// How the sink answers.
#[derive(Debug, Clone, Copy, Default)]
pub struct SinkOptions {
    /// Answer `451 4.3.0` to every Nth message (0: never).
    pub defer_every: u64,
    /// Answer `550 5.1.1` to every Nth message (0: never).
    pub reject_every: u64,
    /// Answer `450 4.2.1` to every recipient at this domain (a receiver
    /// that throttles one domain: the mail waits in the queue).
    pub defer_domain: Option<&'static str>,
    /// Print one line per message.
    pub verbose: bool,
    /// Print each message's header section, or all of it, after its line.
    pub print: Print,
}

/// What of each message the sink prints (`--print`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Print {
    /// Only the envelope line.
    #[default]
    Envelope,
    /// The envelope line, then the header section.
    Headers,
    /// The envelope line, then the whole message (its first MiB).
    Message,
}

/// Most of a message kept for printing.
const MAX_PRINT: usize = 1 << 20;

struct Counters {
    messages: AtomicU64,
    connections: AtomicUsize,
}

/// Serves `listen` until the process ends.
pub fn run(listen: SocketAddr, opts: SinkOptions) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen)?;
    let every = |n: u64, what: &str| match n {
        0 => None,
        1 => Some(format!("{what} every message")),
        n => Some(format!("{what} 1 message in {n}")),
    };
    let answers: Vec<String> = [
        every(opts.defer_every, "451 to"),
        every(opts.reject_every, "550 to"),
    ]
    .into_iter()
    .flatten()
    .collect();
    let mut answers = answers;
    if let Some(d) = opts.defer_domain {
        answers.push(format!("450 to every recipient at {d}"));
    }
    let answers = match answers.is_empty() {
        true => "250 to every message".to_string(),
        false => format!("{}, 250 to the rest", answers.join(", ")),
    };
    eprintln!(
        "ringpost sink: listening on {} ({answers})",
        listener.local_addr()?
    );
    let counters = Arc::new(Counters {
        messages: AtomicU64::new(0),
        connections: AtomicUsize::new(0),
    });
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        if counters.connections.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
            let _ = stream.write_all(b"421 4.7.0 too many connections\r\n");
            continue;
        }
        counters.connections.fetch_add(1, Ordering::Relaxed);
        let counters = counters.clone();
        std::thread::spawn(move || {
            let _ = session(stream, opts, &counters);
            counters.connections.fetch_sub(1, Ordering::Relaxed);
        });
    }
    Ok(())
}

fn read_line(r: &mut BufReader<TcpStream>, line: &mut Vec<u8>) -> std::io::Result<bool> {
    line.clear();
    let n = r.by_ref().take(MAX_LINE).read_until(b'\n', line)?;
    Ok(n > 0)
}

/// Reads a message after DATA up to its final dot, and answers it as the
/// options say (`--reject-every`, `--defer-every`), printing what was
/// asked for. None when the client went away mid-message.
fn take_data(
    r: &mut BufReader<TcpStream>,
    line: &mut Vec<u8>,
    opts: &SinkOptions,
    counters: &Counters,
    from: &str,
    rcpts: &[String],
) -> std::io::Result<Option<&'static [u8]>> {
    let (mut size, mut line_start) = (0u64, true);
    let mut kept = Vec::new();
    loop {
        if !read_line(r, line)? {
            return Ok(None);
        }
        if line_start && (line[..] == b".\r\n"[..] || line[..] == b".\n"[..]) {
            break;
        }
        if opts.print != Print::Envelope && kept.len() < MAX_PRINT {
            // Dot-unstuffed, as the message is.
            let unstuffed = match line_start && line.starts_with(b"..") {
                true => &line[1..],
                false => &line[..],
            };
            kept.extend_from_slice(unstuffed);
        }
        // A line longer than MAX_LINE comes in pieces.
        line_start = line.ends_with(b"\n");
        size += line.len() as u64;
    }
    let n = counters.messages.fetch_add(1, Ordering::Relaxed) + 1;
    let every = |k: u64| k > 0 && n.is_multiple_of(k);
    let answer: &'static [u8] = if every(opts.reject_every) {
        b"550 5.1.1 refused by the sink\r\n"
    } else if every(opts.defer_every) {
        b"451 4.3.0 deferred by the sink\r\n"
    } else {
        b"250 2.0.0 taken by the sink\r\n"
    };
    if opts.verbose {
        let code = String::from_utf8_lossy(&answer[..3]);
        println!("{n}: {from} -> {} ({size} bytes): {code}", rcpts.join(", "));
    }
    if opts.print != Print::Envelope {
        let text = String::from_utf8_lossy(&kept);
        let shown = match opts.print {
            Print::Headers => text.split("\r\n\r\n").next().unwrap_or(&text),
            _ => &text,
        };
        for l in shown.lines() {
            println!("  {l}");
        }
        println!();
    }
    Ok(Some(answer))
}

fn session(stream: TcpStream, opts: SinkOptions, counters: &Counters) -> std::io::Result<()> {
    stream.set_read_timeout(Some(IDLE))?;
    stream.set_write_timeout(Some(IDLE))?;
    let mut out = stream.try_clone()?;
    let mut r = BufReader::new(stream);
    let mut line = Vec::new();
    let (mut from, mut rcpts) = (String::new(), Vec::<String>::new());
    out.write_all(b"220 sink ESMTP ringpost sink\r\n")?;
    while read_line(&mut r, &mut line)? {
        let cmd = String::from_utf8_lossy(&line).trim_end().to_string();
        let upper = cmd.to_ascii_uppercase();
        let reply: &[u8] = if upper.starts_with("EHLO") {
            b"250-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 SIZE 1073741824\r\n"
        } else if upper.starts_with("HELO") || upper == "RSET" || upper == "NOOP" {
            from.clear();
            rcpts.clear();
            b"250 2.0.0 ok\r\n"
        } else if upper.starts_with("MAIL FROM:") {
            from = cmd[10..].trim().to_string();
            b"250 2.1.0 ok\r\n"
        } else if upper.starts_with("RCPT TO:") {
            let rcpt = cmd[8..].trim();
            let deferred = opts.defer_domain.is_some_and(|d| {
                rcpt.trim_end_matches('>')
                    .rsplit_once('@')
                    .is_some_and(|(_, domain)| domain.eq_ignore_ascii_case(d))
            });
            match deferred {
                true => b"450 4.2.1 this domain is deferred by the sink\r\n",
                false => {
                    rcpts.push(rcpt.to_string());
                    b"250 2.1.5 ok\r\n"
                }
            }
        } else if upper == "DATA" {
            out.write_all(b"354 go ahead\r\n")?;
            let Some(answer) = take_data(&mut r, &mut line, &opts, counters, &from, &rcpts)? else {
                return Ok(());
            };
            from.clear();
            rcpts.clear();
            answer
        } else if upper == "QUIT" {
            out.write_all(b"221 2.0.0 bye\r\n")?;
            return Ok(());
        } else {
            b"502 5.5.1 not here\r\n"
        };
        out.write_all(reply)?;
    }
    Ok(())
}
