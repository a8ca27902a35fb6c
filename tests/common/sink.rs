//! Scripted SMTP sinks: small, independent SMTP servers (not ringpost's
//! code) that record what they receive and answer as a test tells them.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How the sink answers.
#[derive(Clone, Debug, Default)]
pub struct Script {
    /// The first `n` transactions get this reply after the data (e.g. "451 4.3.0 try later").
    pub temp_fail_first: usize,
    pub temp_reply: String,
    /// Recipients refused with "550 5.1.1 no such user".
    pub reject_rcpts: HashSet<String>,
    /// Close the connection after this many body bytes (mid-DATA), once.
    pub drop_mid_data_once: bool,
    /// Wait this long before every reply.
    pub delay: Duration,
    /// Answer the greeting with this instead of 220.
    pub greeting: Option<String>,
    /// Leave SMTPUTF8 out of the EHLO reply.
    pub no_smtputf8: bool,
}

#[derive(Clone, Debug)]
pub struct Received {
    pub from: String,
    pub rcpts: Vec<String>,
    /// The message as the sink read it: dot-unstuffed, CRLF line endings.
    pub data: Vec<u8>,
}

#[derive(Default)]
pub struct State {
    pub accepts: usize,
    pub messages: Vec<Received>,
    /// Transactions that ended in a temporary failure or a dropped connection.
    pub refused: usize,
}

pub struct Sink {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<State>>,
}

impl Sink {
    /// Starts a sink on `ip:port` (port 0: any).
    pub fn start(ip: &str, port: u16, script: Script) -> Sink {
        let listener = TcpListener::bind((ip, port)).expect("bind sink");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let script = Arc::new(Mutex::new(script));
        let st = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                st.lock().unwrap().accepts += 1;
                let (st, script) = (st.clone(), script.clone());
                std::thread::spawn(move || {
                    let _ = session(conn, &st, &script);
                });
            }
        });
        Sink { addr, state }
    }

    pub fn messages(&self) -> Vec<Received> {
        self.state.lock().unwrap().messages.clone()
    }

    pub fn accepts(&self) -> usize {
        self.state.lock().unwrap().accepts
    }

    /// Waits until the sink holds `n` messages (or panics after `secs`).
    pub fn wait_for(&self, n: usize, secs: u64) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let msgs = self.messages();
            if msgs.len() >= n {
                return msgs;
            }
            assert!(
                Instant::now() < deadline,
                "sink {} got {} of {n} messages",
                self.addr,
                msgs.len()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn session(conn: TcpStream, st: &Mutex<State>, script: &Mutex<Script>) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut w = conn.try_clone()?;
    let mut r = BufReader::new(conn);
    let sc = script.lock().unwrap().clone();
    let reply = |w: &mut TcpStream, text: &str| -> std::io::Result<()> {
        if !sc.delay.is_zero() {
            std::thread::sleep(sc.delay);
        }
        w.write_all(format!("{text}\r\n").as_bytes())
    };
    if let Some(g) = &sc.greeting {
        reply(&mut w, g)?;
        return Ok(());
    }
    reply(&mut w, "220 sink.test ESMTP")?;
    let (mut from, mut rcpts) = (String::new(), Vec::new());
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let cmd = line.trim_end().to_string();
        let upper = cmd.to_ascii_uppercase();
        if upper.starts_with("EHLO") {
            let utf8 = if sc.no_smtputf8 {
                ""
            } else {
                "250-SMTPUTF8\r\n"
            };
            reply(
                &mut w,
                &format!(
                    "250-sink.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n{utf8}250 SIZE 100000000"
                ),
            )?;
        } else if upper.starts_with("HELO") || upper == "RSET" || upper == "NOOP" {
            from.clear();
            rcpts.clear();
            reply(&mut w, "250 2.0.0 ok")?;
        } else if upper.starts_with("MAIL FROM:") {
            from = between_brackets(&cmd);
            reply(&mut w, "250 2.1.0 ok")?;
        } else if upper.starts_with("RCPT TO:") {
            let rcpt = between_brackets(&cmd);
            if sc.reject_rcpts.contains(&rcpt) {
                reply(&mut w, "550 5.1.1 no such user")?;
            } else {
                rcpts.push(rcpt);
                reply(&mut w, "250 2.1.5 ok")?;
            }
        } else if upper == "DATA" {
            if rcpts.is_empty() {
                reply(&mut w, "554 5.5.1 no valid recipients")?;
                continue;
            }
            reply(&mut w, "354 go ahead")?;
            let mut data = Vec::new();
            loop {
                let mut l = Vec::new();
                if r.read_until(b'\n', &mut l)? == 0 {
                    return Ok(());
                }
                if l == b".\r\n" {
                    break;
                }
                let unstuffed = if l.starts_with(b".") { &l[1..] } else { &l[..] };
                data.extend_from_slice(unstuffed);
                let drop_now = {
                    let mut s = script.lock().unwrap();
                    std::mem::take(&mut s.drop_mid_data_once)
                };
                if drop_now {
                    st.lock().unwrap().refused += 1;
                    return Ok(()); // connection dropped mid-DATA
                }
            }
            let temp = {
                let mut s = script.lock().unwrap();
                if s.temp_fail_first > 0 {
                    s.temp_fail_first -= 1;
                    Some(s.temp_reply.clone())
                } else {
                    None
                }
            };
            match temp {
                Some(t) => {
                    st.lock().unwrap().refused += 1;
                    reply(&mut w, &t)?;
                }
                None => {
                    st.lock().unwrap().messages.push(Received {
                        from: from.clone(),
                        rcpts: rcpts.clone(),
                        data,
                    });
                    reply(&mut w, "250 2.0.0 queued")?;
                }
            }
            from.clear();
            rcpts.clear();
        } else if upper == "QUIT" {
            reply(&mut w, "221 2.0.0 bye")?;
            return Ok(());
        } else {
            reply(&mut w, "500 5.5.1 unknown")?;
        }
    }
}

fn between_brackets(cmd: &str) -> String {
    let start = cmd.find('<').map_or(0, |i| i + 1);
    let end = cmd[start..].find('>').map_or(cmd.len(), |i| start + i);
    cmd[start..end].to_string()
}
