//! The DSN extension (RFC 3461), end to end: every NOTIFY value with every
//! RET, to next hops with and without DSN, delivered, refused and
//! delayed. The notices ringpost sends are read with mail-parser and with
//! Python's `email` package (tests/verifiers/parse_dsn.py).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use common::sink::{Received, Script, Sink};
use common::{Client, start_with_clock};
use ringpost::shard::clock::Clock;

const NOTIFIES: [Option<&str>; 6] = [
    None,
    Some("NEVER"),
    Some("SUCCESS"),
    Some("FAILURE"),
    Some("DELAY"),
    Some("SUCCESS,FAILURE,DELAY"),
];
const RETS: [Option<&str>; 3] = [None, Some("FULL"), Some("HDRS")];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dest {
    /// Delivered to a next hop that offers DSN.
    DsnOk,
    /// Delivered to a next hop without DSN.
    PlainOk,
    /// Refused (550) by a next hop with DSN.
    DsnFail,
    /// Refused (550) by a next hop without DSN.
    PlainFail,
    /// Deferred (451) every time.
    Delay,
}

const DESTS: [Dest; 5] = [
    Dest::DsnOk,
    Dest::PlainOk,
    Dest::DsnFail,
    Dest::PlainFail,
    Dest::Delay,
];

impl Dest {
    /// Case `i`'s recipient (each refused one is its own: a refusal puts
    /// the address on the suppression list).
    fn address(self, i: usize) -> String {
        match self {
            Dest::DsnOk => "ok@dsn.test".into(),
            Dest::PlainOk => "ok@plain.test".into(),
            Dest::DsnFail => format!("fail-{i}@dsn.test"),
            Dest::PlainFail => format!("fail-{i}@plain.test"),
            Dest::Delay => "later@delay.test".into(),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Case {
    notify: Option<&'static str>,
    ret: Option<&'static str>,
    dest: Dest,
}

impl Case {
    fn asks(&self, what: &str) -> bool {
        self.notify.is_some_and(|n| n.split(',').any(|w| w == what))
    }

    /// The notice ringpost owes the sender for it, if any.
    fn expected_action(&self) -> Option<&'static str> {
        match self.dest {
            Dest::DsnOk => None,
            Dest::PlainOk => self.asks("SUCCESS").then_some("relayed"),
            Dest::DsnFail | Dest::PlainFail => {
                (self.notify.is_none() || self.asks("FAILURE")).then_some("failed")
            }
            Dest::Delay => self.asks("DELAY").then_some("delayed"),
        }
    }
}

fn cases() -> Vec<Case> {
    let mut out = Vec::new();
    for notify in NOTIFIES {
        for ret in RETS {
            for dest in DESTS {
                out.push(Case { notify, ret, dest });
            }
        }
    }
    out
}

fn send(client: &mut Client, i: usize, case: &Case) {
    let ret = case.ret.map_or(String::new(), |r| format!(" RET={r}"));
    client.expect(
        &format!("MAIL FROM:<app@sender.test>{ret} ENVID=case+2B{i}"),
        250,
    );
    let notify = case
        .notify
        .map_or(String::new(), |n| format!(" NOTIFY={n}"));
    client.expect(
        &format!(
            "RCPT TO:<{}>{notify} ORCPT=rfc822;orig-{i}+2Bx@app.test",
            case.dest.address(i)
        ),
        250,
    );
    let body = format!("Subject: case {i}\r\nFrom: app@sender.test\r\n\r\nsecret body {i}\r\n");
    assert_eq!(client.data(body.as_bytes()).code, 250);
}

/// The case a notice is about (its Original-Envelope-Id), its action, and
/// whether the original body is in it, read with mail-parser.
fn read_notice(r: &Received) -> (usize, String, bool) {
    use mail_parser::MimeHeaders;
    let msg = mail_parser::MessageParser::default()
        .parse(&r.data)
        .expect("mail-parser reads the notice");
    let ct = msg.content_type().expect("a content type");
    assert_eq!(ct.ctype(), "multipart");
    assert_eq!(ct.subtype(), Some("report"));
    assert_eq!(ct.attribute("report-type"), Some("delivery-status"));
    let status = msg
        .parts
        .iter()
        .find(|p| {
            p.content_type()
                .is_some_and(|c| c.subtype() == Some("delivery-status"))
        })
        .expect("a message/delivery-status part");
    let text = String::from_utf8_lossy(status.contents()).to_string();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {text}"))
            .trim()
            .to_string()
    };
    let envid = field("Original-Envelope-Id:");
    let case: usize = envid.strip_prefix("case+").unwrap().parse().unwrap();
    assert_eq!(
        field("Original-Recipient:"),
        format!("rfc822;orig-{case}+x@app.test")
    );
    let body = String::from_utf8_lossy(&r.data).contains(&format!("secret body {case}"));
    (case, field("Action:"), body)
}

#[test]
fn every_notify_and_ret_against_next_hops_with_and_without_dsn() {
    let dsn_sink = Sink::start(
        "127.0.0.1",
        0,
        Script {
            dsn: true,
            reject_rcpts: (0..200).map(|i| Dest::DsnFail.address(i)).collect(),
            ..Script::default()
        },
    );
    let plain_sink = Sink::start(
        "127.0.0.1",
        0,
        Script {
            reject_rcpts: (0..200).map(|i| Dest::PlainFail.address(i)).collect(),
            ..Script::default()
        },
    );
    let delay_sink = Sink::start(
        "127.0.0.1",
        0,
        Script::temp_failing(usize::MAX, "451 4.3.0 try again later"),
    );
    let notices = Sink::start("127.0.0.1", 0, Script::default());
    let clock = Clock::manual(ringpost::shard::clock::unix_now());
    let hop = |s: &Sink| format!("[127.0.0.1]:{}", s.addr.port());
    let routes: BTreeMap<String, String> = [
        ("dsn.test", hop(&dsn_sink)),
        ("plain.test", hop(&plain_sink)),
        ("delay.test", hop(&delay_sink)),
        ("sender.test", hop(&notices)),
    ]
    .into_iter()
    .map(|(d, h)| (d.to_string(), h))
    .collect();
    let ts = start_with_clock(1, clock.clone(), |c| {
        c.delivery.routes = routes;
        c.delivery.delay_notice_after_secs = 600;
    });
    let cases = cases();
    let mut client = Client::connect(ts.addr);
    let ehlo = client.cmd("EHLO app.test");
    assert!(
        ehlo.text().contains("DSN"),
        "DSN advertised: {}",
        ehlo.text()
    );
    for (i, case) in cases.iter().enumerate() {
        send(&mut client, i, case);
    }
    let delivered = |d: Dest| cases.iter().filter(|c| c.dest == d).count();
    let ok_dsn = dsn_sink.wait_for(delivered(Dest::DsnOk), 30);
    let ok_plain = plain_sink.wait_for(delivered(Dest::PlainOk), 30);

    // What went on: the DSN request to the hop that offers DSN, nothing
    // to the one without (it would have refused it).
    for m in &ok_dsn {
        let i: usize = String::from_utf8_lossy(&m.data)
            .split("secret body ")
            .nth(1)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let case = cases[i];
        assert!(
            m.mail_cmd.contains(&format!(" ENVID=case+2B{i}")),
            "{}",
            m.mail_cmd
        );
        match case.ret {
            Some(r) => assert!(m.mail_cmd.contains(&format!(" RET={r}")), "{}", m.mail_cmd),
            None => assert!(!m.mail_cmd.contains("RET="), "{}", m.mail_cmd),
        }
        let rcpt = &m.rcpt_cmds[0];
        match case.notify {
            Some(n) => assert!(rcpt.contains(&format!(" NOTIFY={n}")), "{rcpt}"),
            None => assert!(!rcpt.contains("NOTIFY="), "{rcpt}"),
        }
        assert!(
            rcpt.contains(&format!(" ORCPT=rfc822;orig-{i}+2Bx@app.test")),
            "{rcpt}"
        );
    }
    for m in &ok_plain {
        assert!(!m.mail_cmd.contains("ENVID"), "{}", m.mail_cmd);
        assert!(!m.rcpt_cmds[0].contains("NOTIFY"), "{}", m.rcpt_cmds[0]);
    }

    // Two retry rounds past the delay: one delay notice, not two.
    for _ in 0..2 {
        let attempts = delay_sink.state.lock().unwrap().refused;
        clock.advance(3600);
        let deadline = Instant::now() + Duration::from_secs(30);
        while delay_sink.state.lock().unwrap().refused < attempts + delivered(Dest::Delay) {
            assert!(
                Instant::now() < deadline,
                "the deferred mail was not retried"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let expected: HashMap<usize, &str> = cases
        .iter()
        .enumerate()
        .filter_map(|(i, c)| c.expected_action().map(|a| (i, a)))
        .collect();
    let got = notices.wait_for(expected.len(), 30);
    std::thread::sleep(Duration::from_millis(500));
    let got_all = notices.messages();
    assert_eq!(
        got_all.len(),
        got.len().max(expected.len()),
        "no notice beyond those due"
    );
    let mut seen = HashMap::new();
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (n, r) in got_all.iter().enumerate() {
        assert_eq!(r.from, "", "notices come from the null sender");
        assert_eq!(r.rcpts, vec!["app@sender.test".to_string()]);
        let (case, action, body) = read_notice(r);
        assert_eq!(
            Some(action.as_str()),
            expected.get(&case).copied(),
            "case {case}: {:?}",
            cases[case]
        );
        let full = cases[case].ret == Some("FULL") && action == "failed";
        assert_eq!(
            body, full,
            "case {case}: the body only with RET=FULL on failure"
        );
        assert!(
            seen.insert(case, action).is_none(),
            "case {case}: two notices"
        );
        let file = dir.path().join(format!("{n}.eml"));
        std::fs::write(&file, &r.data).unwrap();
        files.push((file, case));
    }
    assert_eq!(seen.len(), expected.len());

    // The same notices through Python's email package.
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/verifiers/parse_dsn.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .args(files.iter().map(|(f, _)| f))
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), files.len());
    for (v, (_, case)) in lines.iter().zip(&files) {
        let c = cases[*case];
        let action = expected[case];
        assert_eq!(v["content_type"], "multipart/report", "{v}");
        assert_eq!(v["report_type"], "delivery-status", "{v}");
        assert_eq!(v["envid"], format!("case+{case}"), "{v}");
        let rcpt = &v["recipients"][0];
        assert_eq!(rcpt["action"], action, "{v}");
        assert_eq!(
            rcpt["final_recipient"],
            format!("rfc822; {}", c.dest.address(*case))
        );
        assert_eq!(
            rcpt["original_recipient"],
            format!("rfc822;orig-{case}+x@app.test")
        );
        let status = rcpt["status"].as_str().unwrap();
        let class = match action {
            "failed" => "5.",
            "delayed" => "4.",
            _ => "2.",
        };
        assert!(status.starts_with(class), "{v}");
        if c.ret == Some("FULL") && action == "failed" {
            assert_eq!(v["returned_type"], "message/rfc822", "{v}");
            assert!(
                v["returned_body"].as_str().unwrap().contains("secret body"),
                "{v}"
            );
        } else {
            assert_eq!(v["returned_type"], "text/rfc822-headers", "{v}");
        }
    }
    eprintln!(
        "{} cases, {} notices: {:?}",
        cases.len(),
        seen.len(),
        seen.values()
            .fold(BTreeMap::<&str, usize>::new(), |mut m, a| {
                *m.entry(a.as_str()).or_default() += 1;
                m
            })
    );
}

/// Malformed DSN parameters are refused with 501 and the transaction goes
/// on; DSN parameters after HELO (not EHLO) are refused too.
#[test]
fn malformed_dsn_parameters_are_refused() {
    let ts = common::start();
    let mut c = Client::connect(ts.addr);
    c.expect("EHLO app.test", 250);
    for bad in [
        "MAIL FROM:<a@sender.test> RET=SOME",
        "MAIL FROM:<a@sender.test> ENVID=a=b",
        "MAIL FROM:<a@sender.test> RET=FULL RET=HDRS",
    ] {
        let r = c.cmd(bad);
        assert!(r.code == 501 || r.code == 555, "{bad}: {}", r.text());
    }
    c.expect("MAIL FROM:<a@sender.test> RET=HDRS ENVID=x", 250);
    for bad in [
        "RCPT TO:<b@dest.test> NOTIFY=NEVER,SUCCESS",
        "RCPT TO:<b@dest.test> NOTIFY=SOMETIMES",
        "RCPT TO:<b@dest.test> ORCPT=b@dest.test",
        "RCPT TO:<b@dest.test> ORCPT=rfc822;b+2x@dest.test",
    ] {
        let r = c.cmd(bad);
        assert!(r.code == 501 || r.code == 555, "{bad}: {}", r.text());
    }
    c.expect(
        "RCPT TO:<b@dest.test> NOTIFY=FAILURE ORCPT=rfc822;b@dest.test",
        250,
    );
    let mut h = Client::connect(ts.addr);
    h.expect("HELO app.test", 250);
    h.expect("MAIL FROM:<a@sender.test>", 250);
    let r = h.cmd("RCPT TO:<b@dest.test> NOTIFY=NEVER");
    assert_eq!(r.code, 555, "{}", r.text());
}

/// The HTTP injection takes the same DSN request as fields: `ret`,
/// `envid`, and per recipient `notify` and `orcpt`.
#[test]
fn injection_takes_the_dsn_request_as_fields() {
    let dsn_sink = Sink::start(
        "127.0.0.1",
        0,
        Script {
            dsn: true,
            ..Script::default()
        },
    );
    let plain_sink = Sink::start(
        "127.0.0.1",
        0,
        Script {
            reject_rcpts: ["gone@plain.test".to_string()].into(),
            ..Script::default()
        },
    );
    let notices = Sink::start("127.0.0.1", 0, Script::default());
    let hop = |s: &Sink| format!("[127.0.0.1]:{}", s.addr.port());
    let ts = common::start_with(1, |c| {
        c.delivery.routes = [
            ("dsn.test".to_string(), hop(&dsn_sink)),
            ("plain.test".to_string(), hop(&plain_sink)),
            ("sender.test".to_string(), hop(&notices)),
        ]
        .into();
    });
    let post = |body: serde_json::Value| {
        let body = serde_json::to_vec(&body).unwrap();
        let mut req = format!(
            "POST /api/inject/v1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(&body);
        common::http(ts.inject_addr.unwrap(), &req)
    };
    let (status, text) = post(serde_json::json!({
        "envelope_sender": "app@sender.test",
        "ret": "FULL",
        "envid": "order 42",
        "recipients": [
            {"email": "ok@dsn.test", "notify": "SUCCESS,FAILURE", "orcpt": "rfc822;orig@app.test"},
            {"email": "gone@plain.test", "notify": "NEVER"},
            {"email": "ok@plain.test", "notify": "SUCCESS"},
        ],
        "content": "Subject: injected\r\n\r\nbody\r\n",
    }));
    assert_eq!(status, 200, "{text}");
    let got = dsn_sink.wait_for(1, 30);
    assert!(
        got[0].mail_cmd.contains(" RET=FULL ENVID=order+2042"),
        "{}",
        got[0].mail_cmd
    );
    assert!(
        got[0].rcpt_cmds[0].contains(" NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;orig@app.test"),
        "{}",
        got[0].rcpt_cmds[0]
    );
    plain_sink.wait_for(1, 30);
    // ok@plain.test: relayed; gone@plain.test: NEVER, so nothing.
    let n = notices.wait_for(1, 30);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(notices.messages().len(), 1);
    let text = String::from_utf8_lossy(&n[0].data).to_string();
    assert!(text.contains("Action: relayed"), "{text}");
    assert!(
        text.contains("Final-Recipient: rfc822; ok@plain.test"),
        "{text}"
    );
    assert!(text.contains("Original-Envelope-Id: order 42"), "{text}");
    assert!(!text.contains("gone@plain.test"), "{text}");

    for (field, value) in [("notify", "SOMETIMES"), ("orcpt", "no-type")] {
        let (status, text) = post(serde_json::json!({
            "envelope_sender": "app@sender.test",
            "recipients": [{"email": "ok@dsn.test", field: value}],
            "content": "Subject: x\r\n\r\nx\r\n",
        }));
        assert_eq!(status, 400, "{field}: {text}");
        assert!(text.contains(field), "{text}");
    }
    let (status, text) = post(serde_json::json!({
        "envelope_sender": "app@sender.test",
        "ret": "MOST",
        "recipients": [{"email": "ok@dsn.test"}],
        "content": "Subject: x\r\n\r\nx\r\n",
    }));
    assert_eq!(status, 400, "{text}");
}
