//! Message bodies end to end: what a real client sends is what the spool
//! holds (plus the Received: header), through DATA, BDAT and pipelining,
//! and no end-of-data trick turns one DATA into two messages.

mod common;

use common::TestServer;
use lettre::message::header::ContentType;
use lettre::{Message, SmtpTransport, Transport};

/// A server that stores what the client sent byte for byte after its
/// `Received:` (the `Date:` and `Message-ID:` a submission server adds to
/// mail that lacks them are tested in tests/dkim.rs).
fn start() -> TestServer {
    common::start_with(1, |c| {
        c.smtp.add_date = false;
        c.smtp.add_message_id = false;
    })
}

/// Splits a stored body into its Received: header (first one, folded) and the rest.
fn split_received(stored: &[u8]) -> (String, &[u8]) {
    assert!(
        stored.starts_with(b"Received: from "),
        "{:?}",
        String::from_utf8_lossy(&stored[..40])
    );
    let mut end = 0;
    while let Some(i) = stored[end..].windows(2).position(|w| w == b"\r\n") {
        end += i + 2;
        if stored.get(end) != Some(&b'\t') {
            break;
        }
    }
    (
        String::from_utf8_lossy(&stored[..end]).into_owned(),
        &stored[end..],
    )
}

#[test]
fn lettre_message_is_in_the_spool_byte_for_byte() {
    let mut ts = start();
    let email = Message::builder()
        .from("Shop <orders@shop.example>".parse().unwrap())
        .to("Customer <customer@dest.example>".parse().unwrap())
        .subject("Your receipt")
        .header(ContentType::TEXT_PLAIN)
        .body(String::from(
            "Thanks.\r\n.leading dot\r\n..two dots\r\n.\r\nend",
        ))
        .unwrap();
    let transport = SmtpTransport::builder_dangerous("127.0.0.1")
        .port(ts.addr.port())
        .build();
    let response = transport.send(&email).expect("lettre sends");
    assert_eq!(response.code().to_string(), "250");
    let id = common::lettre_queued_id(&response);

    let stored = ts.body(&id);
    let (received, rest) = split_received(&stored);
    let mut expected = email.formatted();
    expected.extend_from_slice(b"\r\n"); // lettre always sends CRLF . CRLF after the message
    assert_eq!(rest, expected.as_slice());
    assert!(
        received.contains("by mx.test.example (ringpost) with ESMTP id"),
        "{received}"
    );
    assert!(received.contains(&id), "{received}");
    assert!(
        received.contains("for <customer@dest.example>"),
        "{received}"
    );
}

#[test]
fn dot_stuffed_lines_come_out_unstuffed() {
    let mut ts = start();
    let mut c = ts.client();
    c.begin("a@b.example", &["x@y.example"]);
    let r = c.data(b"Subject: dots\r\n\r\n..x\r\n...\r\n. \r\nplain\r\n");
    assert_eq!(r.code, 250);
    let stored = ts.body(&r.queued_id());
    let (_, rest) = split_received(&stored);
    assert_eq!(rest, b"Subject: dots\r\n\r\n.x\r\n..\r\n \r\nplain\r\n");
}

#[test]
fn pipelined_commands_are_answered_in_order_in_one_write() {
    let ts = start();
    let mut c = ts.client();
    c.expect("EHLO client.test.example", 250);
    c.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<x@y.example>\r\nRCPT TO:<bad address>\r\nRCPT TO:<z@y.example>\r\nDATA\r\n");
    // All five replies were written together: one read sees them all.
    let codes: Vec<u16> = (0..5).map(|_| c.reply().code).collect();
    assert_eq!(codes, [250, 250, 501, 250, 354]);
    c.send(b"Subject: p\r\n\r\nbody\r\n.\r\nRSET\r\nNOOP\r\nQUIT\r\n");
    let r = c.reply();
    assert_eq!(r.code, 250);
    assert_eq!(
        [c.reply().code, c.reply().code, c.reply().code],
        [250, 250, 221]
    );
    let mut ts = ts;
    let msgs = ts.stop_and_list();
    assert_eq!(msgs.len(), 1);
    let rcpts: Vec<_> = msgs[0].1.recipients.iter().map(|r| &*r.address).collect();
    assert_eq!(rcpts, ["x@y.example", "z@y.example"]);
    assert_eq!(msgs[0].0.to_string(), r.queued_id());
}

#[test]
fn pipelined_replies_arrive_in_a_single_segment() {
    use std::io::Read;
    use std::net::TcpStream;
    let ts = start();
    let mut s = TcpStream::connect(ts.addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"220 "));
    use std::io::Write;
    s.write_all(b"EHLO c.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<x@y.example>\r\nNOOP\r\n")
        .unwrap();
    let mut got = Vec::new();
    while !got.ends_with(b"250 2.0.0 Ok\r\n") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
        // One write from the server: the first read already holds everything.
        assert!(
            got.ends_with(b"250 2.0.0 Ok\r\n"),
            "partial read: {:?}",
            String::from_utf8_lossy(&got)
        );
    }
}

#[test]
fn bdat_with_several_chunks() {
    let mut ts = start();
    let mut c = ts.client();
    c.begin("a@b.example", &["x@y.example"]);
    let chunks: [&[u8]; 3] = [
        b"Subject: chunked\r\n",
        b"\r\n.not stuffed\r\nline",
        b" end\r\n",
    ];
    for chunk in &chunks[..2] {
        c.send(format!("BDAT {}\r\n", chunk.len()).as_bytes());
        c.send(chunk);
        let r = c.reply();
        assert_eq!(r.code, 250, "{r:?}");
    }
    c.send(format!("BDAT {} LAST\r\n", chunks[2].len()).as_bytes());
    c.send(chunks[2]);
    let r = c.reply();
    assert_eq!(r.code, 250, "{r:?}");
    // BDAT 0 LAST alone ends a message too; DATA after BDAT is out of sequence.
    c.expect("MAIL FROM:<a@b.example>", 250);
    c.expect("RCPT TO:<x@y.example>", 250);
    c.send(b"BDAT 4\r\nab\r\n");
    assert_eq!(c.reply().code, 250);
    assert!(c.expect("DATA", 503).text().starts_with("5.5.1"));
    let second = c.cmd("BDAT 0 LAST");
    assert_eq!(second.code, 250);
    drop(c);
    let stored = ts.body(&r.queued_id());
    let (_, rest) = split_received(&stored);
    assert_eq!(rest, chunks.concat().as_slice());
    let stored = ts.body(&second.queued_id());
    assert_eq!(split_received(&stored).1, b"ab\r\n");
}

#[test]
fn bdat_without_transaction_is_consumed_and_refused() {
    let mut ts = start();
    let mut c = ts.client();
    c.expect("EHLO c.example", 250);
    // The chunk holds something that looks like a command: it must not run.
    c.send(b"BDAT 6 LAST\r\nQUIT\r\n");
    let r = c.reply();
    assert_eq!(r.code, 503);
    c.expect("NOOP", 250);
    drop(c);
    assert_eq!(ts.messages().len(), 0);
}

#[test]
fn one_data_never_yields_two_messages() {
    let mut ts = start();
    let mut ids = Vec::new();
    for trick in [
        &b"\n.\nMAIL FROM:<evil@x.example>\nRCPT TO:<v@y.example>\nDATA\nsmuggled\n"[..],
        b"\r\n.\nMAIL FROM:<evil@x.example>\r\nRCPT TO:<v@y.example>\r\nDATA\r\nsmuggled\r\n",
        b"\n.\r\nMAIL FROM:<evil@x.example>\r\nRCPT TO:<v@y.example>\r\nDATA\r\nsmuggled\r\n",
        b"\r.\rMAIL FROM:<evil@x.example>\r\nRCPT TO:<v@y.example>\r\nDATA\r\nsmuggled\r\n",
    ] {
        let mut c = ts.client();
        c.begin("a@b.example", &["x@y.example"]);
        c.expect("DATA", 354);
        c.send(b"Subject: smuggle\r\n\r\nfirst");
        c.send(trick);
        c.send(b"\r\n.\r\n");
        let r = c.reply();
        assert_eq!(r.code, 250, "{r:?}");
        ids.push(r.queued_id());
        // Nothing else was executed: the next reply is for our NOOP.
        c.expect("NOOP", 250);
    }
    let msgs = ts.messages();
    assert_eq!(msgs.len(), ids.len(), "exactly one message per DATA");
    for (id, env, body) in msgs {
        assert!(ids.contains(&id.to_string()));
        assert_eq!(
            env.sender, "a@b.example",
            "no message from the smuggled MAIL"
        );
        assert!(
            body.windows(8).any(|w| w == b"smuggled"),
            "smuggled text is content of the first message"
        );
    }
}
