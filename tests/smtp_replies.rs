//! Every reply code of the inbound SMTP dialogue, driven over a real socket
//! against a real server, with the input that must produce it.

mod common;

use common::{Client, start, start_with};
use ringpost::config::LineEndings;

#[test]
fn greeting_ehlo_helo_and_simple_verbs() {
    let ts = start();
    let mut c = ts.client();
    let ehlo = c.expect("EHLO client.test.example", 250);
    assert_eq!(ehlo.lines[0], "mx.test.example");
    for ext in [
        "PIPELINING",
        "8BITMIME",
        "SMTPUTF8",
        "ENHANCEDSTATUSCODES",
        "CHUNKING",
    ] {
        assert!(
            ehlo.lines.iter().any(|l| l == ext),
            "{ext} missing from {ehlo:?}"
        );
    }
    assert!(ehlo.lines.iter().any(|l| l == "SIZE 36700160"), "{ehlo:?}");
    assert_eq!(
        c.expect("HELO client.test.example", 250).lines,
        ["mx.test.example"]
    );
    assert_eq!(c.expect("NOOP", 250).text(), "2.0.0 Ok");
    assert_eq!(c.expect("RSET", 250).text(), "2.0.0 Ok");
    assert!(c.expect("VRFY someone", 252).text().starts_with("2.5.0 "));
    assert!(c.expect("HELP", 214).text().starts_with("2.0.0 "));
    assert!(c.expect("QUIT", 221).text().starts_with("2.0.0 "));
    assert!(c.is_closed());
}

#[test]
fn sequence_errors_are_503_5_5_1() {
    let ts = start();
    let mut c = ts.client();
    for (line, why) in [
        ("MAIL FROM:<a@sender.example>", "before EHLO"),
        ("RCPT TO:<b@rcpt.example>", "before MAIL"),
        ("DATA", "before MAIL"),
    ] {
        let r = c.expect(line, 503);
        assert!(r.text().starts_with("5.5.1 "), "{why}: {r:?}");
    }
    c.expect("EHLO client.test.example", 250);
    c.expect("MAIL FROM:<a@sender.example>", 250);
    assert!(
        c.expect("MAIL FROM:<a@sender.example>", 503)
            .text()
            .starts_with("5.5.1")
    );
    assert!(c.expect("DATA", 503).text().starts_with("5.5.1"));
}

#[test]
fn syntax_errors_are_500_and_501() {
    let ts = start();
    let mut c = ts.client();
    assert!(c.expect("FROB", 500).text().starts_with("5.5.1 "));
    assert!(c.expect("EHLO", 501).text().starts_with("5.5.4 "));
    c.expect("EHLO client.test.example", 250);
    assert!(
        c.expect("MAIL TO:<a@b.example>", 501)
            .text()
            .starts_with("5.5.4 ")
    );
    assert!(
        c.expect("MAIL FROM:<a@@b.example>", 501)
            .text()
            .starts_with("5.1.7 ")
    );
    assert!(
        c.expect("MAIL FROM:<a@b.example> BODY=BINARYMIME", 555)
            .text()
            .starts_with("5.5.4 ")
    );
    c.expect("MAIL FROM:<a@b.example>", 250);
    assert!(
        c.expect("RCPT TO:<not an address>", 501)
            .text()
            .starts_with("5.1.3 ")
    );
    assert!(c.expect("DATA now", 501).text().starts_with("5.5.4 "));
    assert!(c.expect("BDAT x", 501).text().starts_with("5.5.4 "));
}

#[test]
fn overlong_command_line_is_500_5_5_2_and_the_session_resynchronises() {
    let ts = start();
    let mut c = ts.client();
    let long = format!("NOOP {}", "x".repeat(5000));
    let r = c.cmd(&long);
    assert_eq!(
        (r.code, r.text().as_str()),
        (500, "5.5.2 Error: line too long")
    );
    // The rest of the long line was skipped: the next command works.
    c.expect("NOOP", 250);
    // A line of exactly 2048 octets with its CRLF is still accepted.
    let exact = format!("NOOP {}", "y".repeat(2048 - 2 - 5));
    c.expect(&exact, 250);
    c.expect(&format!("{exact}z"), 500);
}

#[test]
fn overlong_command_line_sent_in_pieces_is_skipped_without_spinning() {
    let ts = start();
    let mut c = ts.client();
    c.send(format!("NOOP {}", "x".repeat(3000)).as_bytes());
    std::thread::sleep(std::time::Duration::from_millis(100));
    c.send("x".repeat(3000).as_bytes());
    std::thread::sleep(std::time::Duration::from_millis(100));
    c.send(b"\r\nNOOP\r\n");
    assert_eq!(c.reply().code, 500);
    assert_eq!(c.reply().code, 250);
}

#[test]
fn size_limits_552_5_3_4() {
    let mut ts = start_with(1, |c| c.smtp.max_message_size = 2000);
    let mut c = ts.client();
    c.expect("EHLO client.test.example", 250);
    let r = c.expect("MAIL FROM:<a@b.example> SIZE=2001", 552);
    assert!(r.text().starts_with("5.3.4 "));
    c.expect("MAIL FROM:<a@b.example> SIZE=1000", 250);
    c.expect("RCPT TO:<x@y.example>", 250);
    let big = "x"
        .repeat(70)
        .repeat(40)
        .replace(&"x".repeat(70), &format!("{}\r\n", "x".repeat(70)));
    let r = c.data(big.as_bytes());
    assert_eq!(r.code, 552, "{r:?}");
    assert!(r.text().starts_with("5.3.4 "));
    // The transaction is over; a small message goes through.
    c.expect("MAIL FROM:<a@b.example>", 250);
    c.expect("RCPT TO:<x@y.example>", 250);
    let small = c.data(b"Subject: small\r\n\r\nok\r\n");
    assert_eq!(small.code, 250);
    drop(c);
    let ids: Vec<_> = ts
        .messages()
        .iter()
        .map(|(id, _, _)| id.to_string())
        .collect();
    assert_eq!(
        ids,
        [small.queued_id()],
        "only the small message was queued"
    );
}

#[test]
fn more_than_1000_recipients_get_452_4_5_3() {
    let ts = start();
    let mut c = ts.client();
    c.expect("EHLO client.test.example", 250);
    c.expect("MAIL FROM:<a@b.example>", 250);
    let mut batch = String::new();
    for i in 0..1001 {
        batch.push_str(&format!("RCPT TO:<r{i}@y.example>\r\n"));
    }
    c.send(batch.as_bytes());
    for i in 0..1000 {
        assert_eq!(c.reply().code, 250, "recipient {i}");
    }
    let r = c.reply();
    assert_eq!(
        (r.code, r.text().as_str()),
        (452, "4.5.3 Error: too many recipients")
    );
}

#[test]
fn relay_is_denied_to_clients_outside_relay_networks() {
    let ts = start_with(1, |c| {
        c.smtp.relay_networks.clear();
        c.smtp.local_domains = vec!["local.example".into()];
    });
    let mut c = ts.client();
    c.expect("EHLO client.test.example", 250);
    c.expect("MAIL FROM:<a@b.example>", 250);
    let r = c.expect("RCPT TO:<victim@elsewhere.example>", 554);
    assert_eq!(r.text(), "5.7.1 Relay access denied");
    c.expect("RCPT TO:<user@local.example>", 250);
    assert_eq!(c.data(b"Subject: in\r\n\r\nx\r\n").code, 250);
    let msgs = {
        let mut ts = ts;
        ts.stop_and_list()
    };
    assert_eq!(msgs.len(), 1);
    let rcpts: Vec<_> = msgs[0]
        .1
        .recipients
        .iter()
        .map(|r| r.address.to_string())
        .collect();
    assert_eq!(rcpts, ["user@local.example"]);
}

#[test]
fn utf8_addresses_need_smtputf8() {
    let mut ts = start();
    let mut c = ts.client();
    c.expect("EHLO client.test.example", 250);
    assert!(
        c.expect("MAIL FROM:<jörg@b.example>", 553)
            .text()
            .starts_with("5.6.7 ")
    );
    c.expect("MAIL FROM:<jörg@b.example> SMTPUTF8 BODY=8BITMIME", 250);
    c.expect("RCPT TO:<zoë@bücher.example>", 250);
    let r = c.data("Subject: ünïcode\r\n\r\nnaïve\r\n".as_bytes());
    assert_eq!(r.code, 250);
    drop(c);
    let body = ts.body(&r.queued_id());
    assert!(String::from_utf8_lossy(&body).contains("with UTF8SMTP"));
}

#[test]
fn too_many_errors_close_with_421() {
    let ts = start_with(1, |c| c.smtp.max_errors = 3);
    let mut c = ts.client();
    c.expect("BAD1", 500);
    c.expect("BAD2", 500);
    c.expect("BAD3", 500);
    let r = c.reply();
    assert_eq!(
        (r.code, r.text().as_str()),
        (421, "4.7.0 Error: too many errors, closing")
    );
    assert!(c.is_closed());
}

#[test]
fn idle_client_gets_421_4_4_2() {
    let ts = start_with(1, |c| c.smtp.idle_timeout_secs = 1);
    let mut c = ts.client();
    c.expect("EHLO client.test.example", 250);
    let t = std::time::Instant::now();
    let r = c.reply();
    assert_eq!(
        (r.code, r.text().as_str()),
        (421, "4.4.2 Error: timeout exceeded, closing")
    );
    assert!(t.elapsed() >= std::time::Duration::from_millis(900));
    assert!(c.is_closed());
}

#[test]
fn overlong_text_line_is_refused_after_end_of_data() {
    let mut ts = start_with(1, |c| c.smtp.max_line_length = 1000);
    let mut c = ts.client();
    c.begin("a@b.example", &["x@y.example"]);
    // 999 octets: over RFC 5321's 998, under our limit: accepted unchanged.
    let ok_line = format!("Subject: long\r\n\r\n{}\r\n", "h".repeat(999));
    let r = c.data(ok_line.as_bytes());
    assert_eq!(r.code, 250);
    c.expect("MAIL FROM:<a@b.example>", 250);
    c.expect("RCPT TO:<x@y.example>", 250);
    let r = c.data(format!("{}\r\n", "h".repeat(1001)).as_bytes());
    assert_eq!(
        (r.code, r.text().starts_with("5.6.0 ")),
        (554, true),
        "{r:?}"
    );
    drop(c);
    let msgs = ts.messages();
    assert_eq!(msgs.len(), 1, "only the first message was queued");
    assert!(msgs[0].2.ends_with(ok_line.as_bytes()));
}

#[test]
fn bare_lf_reject_mode_closes_with_550_5_5_2() {
    let mut ts = start_with(1, |c| c.smtp.bare_lf = LineEndings::Reject);
    let mut c = ts.client();
    c.begin("a@b.example", &["x@y.example"]);
    c.expect("DATA", 354);
    c.send(b"Subject: x\n\nbody\r\n.\r\n");
    let r = c.reply();
    assert_eq!(
        (r.code, r.text().as_str()),
        (550, "5.5.2 Error: bare <LF> received")
    );
    assert!(c.is_closed());
    let mut c = Client::connect(ts.addr);
    c.send(b"NOOP\n");
    assert_eq!(c.reply().code, 550);
    drop(c);
    assert_eq!(ts.messages().len(), 0);
}
