//! The relay floor (issue 34 point 1): the least work any store-and-forward
//! SMTP relay does, so that ringpost's rate can be read as a share of what
//! a relay can reach on this machine at all.
//!
//! Like ringpost it runs one glommio executor per core, each accepting on
//! the same port (SO_REUSEPORT), answers the client itself and pools its
//! connections to the next hop; unlike ringpost it does nothing else: the
//! message is kept in memory (no spool, no fsync), the client's lines are
//! only framed (no address parsing, no headers added, no signing), and
//! each shard's messages go out over `OUT` pipelined connections of its
//! own (MAIL, RCPT..., DATA in one write, the data as received, dot
//! stuffing included). A message answered 250 here is lost on a crash:
//! it is a measuring stick, never an MTA.
//!
//!     cargo bench --bench relay_floor -- [LISTEN] [NEXT_HOP] [OUT]
//!
//! Defaults: 127.0.0.1:2527 (where the harness injects) to 127.0.0.1:2626
//! (its smtp-sink), 10 connections per shard (ringpost's 20 per path,
//! shared by two shards). Loopback addresses only.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::Rc;

use futures::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use glommio::net::{TcpListener, TcpStream};
use glommio::{LocalExecutorPoolBuilder, PoolPlacement};

fn arg<T: std::str::FromStr>(i: usize, default: &str) -> T {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let text = args.get(i).map_or(default, String::as_str);
    text.parse()
        .unwrap_or_else(|_| panic!("bad argument {text:?}"))
}

/// One message as received: the envelope commands' arguments and the data
/// up to and including the final `.` line.
struct Message {
    from: Vec<u8>,
    rcpts: Vec<Vec<u8>>,
    data: Vec<u8>,
}

/// A shard's messages waiting for a connection, and the senders waiting
/// for a message.
#[derive(Default)]
struct Queue {
    messages: VecDeque<Message>,
    idle: Vec<futures::channel::oneshot::Sender<()>>,
}

impl Queue {
    fn push(q: &RefCell<Queue>, m: Message) {
        let mut q = q.borrow_mut();
        q.messages.push_back(m);
        if let Some(w) = q.idle.pop() {
            let _ = w.send(());
        }
    }

    async fn pop(q: &RefCell<Queue>) -> Message {
        loop {
            let wait = {
                let mut q = q.borrow_mut();
                if let Some(m) = q.messages.pop_front() {
                    return m;
                }
                let (tx, rx) = futures::channel::oneshot::channel();
                q.idle.push(tx);
                rx
            };
            let _ = wait.await;
        }
    }
}

/// The argument of `MAIL FROM:` / `RCPT TO:` as sent, for the next hop.
fn argument(line: &[u8], verb_len: usize) -> Vec<u8> {
    line.get(verb_len..)
        .unwrap_or_default()
        .trim_ascii_end()
        .to_vec()
}

/// Reads the data of one message, through its final `.` line, into `out`
/// after a CRLF of its own (so that the end is found the same way in an
/// empty message; the sender leaves those two bytes out):
/// whole buffers at a time, the end found with memchr's two-way search
/// (the data is never looked at line by line).
async fn read_data(
    r: &mut BufReader<futures::io::ReadHalf<TcpStream>>,
    out: &mut Vec<u8>,
) -> Option<()> {
    // The end may be the very first line (an empty message).
    out.extend_from_slice(b"\r\n");
    let finder = memchr::memmem::Finder::new(b"\r\n.\r\n");
    loop {
        let searched_from = out.len().saturating_sub(4);
        let (taken, found) = {
            let buf = r.fill_buf().await.ok()?;
            if buf.is_empty() {
                return None;
            }
            out.extend_from_slice(buf);
            match finder.find(&out[searched_from..]) {
                // Keep only through the end; the rest is the next command.
                Some(at) => {
                    let end = searched_from + at + 5;
                    let extra = out.len() - end;
                    out.truncate(end);
                    (buf.len() - extra, true)
                }
                None => (buf.len(), false),
            }
        };
        r.consume_unpin(taken);
        if found {
            return Some(());
        }
    }
}

/// One client session: every command answered at once; a message is
/// queued, and 250 said, as soon as its final `.` arrives.
async fn session(client: TcpStream, queue: Rc<RefCell<Queue>>) -> Option<()> {
    let _ = client.set_nodelay(true);
    let (r, mut w) = client.split();
    let mut r = BufReader::with_capacity(64 * 1024, r);
    w.write_all(b"220 floor ESMTP\r\n").await.ok()?;
    let (mut from, mut rcpts) = (Vec::new(), Vec::new());
    let (mut line, mut replies) = (Vec::new(), Vec::new());
    loop {
        line.clear();
        if r.read_until(b'\n', &mut line).await.ok()? == 0 {
            return None;
        }
        let verb = line.get(..4).unwrap_or_default().to_ascii_uppercase();
        match &verb[..] {
            b"EHLO" => {
                replies.extend_from_slice(b"250-floor\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
            }
            b"MAIL" => {
                from = argument(&line, 10);
                replies.extend_from_slice(b"250 2.1.0 ok\r\n");
            }
            b"RCPT" => {
                rcpts.push(argument(&line, 8));
                replies.extend_from_slice(b"250 2.1.5 ok\r\n");
            }
            b"DATA" => {
                replies.extend_from_slice(b"354 go on\r\n");
                w.write_all(&replies).await.ok()?;
                replies.clear();
                let mut data = Vec::with_capacity(16 * 1024);
                read_data(&mut r, &mut data).await?;
                let m = Message {
                    from: std::mem::take(&mut from),
                    rcpts: std::mem::take(&mut rcpts),
                    data,
                };
                Queue::push(&queue, m);
                replies.extend_from_slice(b"250 2.0.0 queued\r\n");
            }
            b"QUIT" => {
                replies.extend_from_slice(b"221 2.0.0 bye\r\n");
                w.write_all(&replies).await.ok()?;
                return Some(());
            }
            b"RSET" => {
                from.clear();
                rcpts.clear();
                replies.extend_from_slice(b"250 2.0.0 ok\r\n");
            }
            _ => replies.extend_from_slice(b"250 ok\r\n"),
        }
        // Commands pipelined behind this one are answered in one write.
        if r.buffer().is_empty() {
            w.write_all(&replies).await.ok()?;
            replies.clear();
        }
    }
}

/// Reads one reply (all its lines) from the next hop.
async fn reply(r: &mut BufReader<futures::io::ReadHalf<TcpStream>>) -> Option<()> {
    let mut line = Vec::new();
    loop {
        line.clear();
        if r.read_until(b'\n', &mut line).await.ok()? == 0 {
            return None;
        }
        if line.get(3) != Some(&b'-') {
            return Some(());
        }
    }
}

/// One pooled connection to the next hop, sending whatever the shard has.
async fn sender(next_hop: SocketAddr, queue: Rc<RefCell<Queue>>) {
    loop {
        let Ok(conn) = TcpStream::connect(next_hop).await else {
            glommio::timer::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        };
        let _ = conn.set_nodelay(true);
        let (r, mut w) = conn.split();
        let mut r = BufReader::new(r);
        if reply(&mut r).await.is_none() || w.write_all(b"EHLO floor\r\n").await.is_err() {
            continue;
        }
        if reply(&mut r).await.is_none() {
            continue;
        }
        while send_one(&mut r, &mut w, Queue::pop(&queue).await)
            .await
            .is_some()
        {}
    }
}

/// MAIL, RCPT... and DATA in one write, then the data; None if the
/// connection broke (the message is dropped: a floor keeps no promises).
async fn send_one(
    r: &mut BufReader<futures::io::ReadHalf<TcpStream>>,
    w: &mut futures::io::WriteHalf<TcpStream>,
    m: Message,
) -> Option<()> {
    let mut head = Vec::with_capacity(64 + 48 * m.rcpts.len());
    head.extend_from_slice(b"MAIL FROM:");
    head.extend_from_slice(&m.from);
    head.extend_from_slice(b"\r\n");
    for rcpt in &m.rcpts {
        head.extend_from_slice(b"RCPT TO:");
        head.extend_from_slice(rcpt);
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"DATA\r\n");
    w.write_all(&head).await.ok()?;
    for _ in 0..m.rcpts.len() + 2 {
        reply(r).await?;
    }
    w.write_all(&m.data[2..]).await.ok()?;
    reply(r).await
}

fn main() {
    let listen: SocketAddr = arg(0, "127.0.0.1:2527");
    let next_hop: SocketAddr = arg(1, "127.0.0.1:2626");
    let out: usize = arg(2, "10");
    assert!(
        listen.ip().is_loopback() && next_hop.ip().is_loopback(),
        "loopback only"
    );
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    LocalExecutorPoolBuilder::new(PoolPlacement::MaxSpread(cores, None))
        .on_all_shards(move || async move {
            let queue = Rc::new(RefCell::new(Queue::default()));
            for _ in 0..out {
                glommio::spawn_local(sender(next_hop, queue.clone())).detach();
            }
            let listener = TcpListener::bind(listen).expect("bind");
            loop {
                let Ok(client) = listener.accept().await else {
                    continue;
                };
                glommio::spawn_local(session(client, queue.clone())).detach();
            }
        })
        .expect("executors")
        .join_all();
}
