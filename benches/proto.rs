//! Parser hot paths: one command line, and reading a DATA body.

use criterion::{Criterion, Throughput, black_box, criterion_group, criterion_main};
use ringpost::proto::body::BareEndings;
use ringpost::proto::body::{BodyReader, Framing};
use ringpost::proto::command::parse;
use ringpost::proto::line::LineSplitter;

fn commands(c: &mut Criterion) {
    let mut g = c.benchmark_group("command");
    for (name, line) in [
        (
            "mail",
            &b"MAIL FROM:<receipts@shop.example.com> SIZE=10240 BODY=8BITMIME"[..],
        ),
        ("rcpt", b"RCPT TO:<customer.name+tag@mail.example.org>"),
        ("noop", b"NOOP"),
    ] {
        g.bench_function(name, |b| b.iter(|| parse(black_box(line))));
    }
    g.bench_function("split_and_parse_pipelined_envelope", |b| {
        let input = b"MAIL FROM:<a@shop.example>\r\nRCPT TO:<c@dest.example>\r\nDATA\r\n";
        b.iter(|| {
            let mut s = LineSplitter::new(2048);
            let mut rest = &input[..];
            while let ringpost::proto::line::LineEvent::Line { len, consumed, .. } = s.next(rest) {
                black_box(parse(&rest[..len]).ok());
                rest = &rest[consumed..];
            }
        })
    });
    g.finish();
}

fn body(c: &mut Criterion) {
    let mut g = c.benchmark_group("data_body");
    let mut msg = b"Subject: receipt\r\nFrom: shop@example.com\r\n\r\n".to_vec();
    while msg.len() < 10 * 1024 {
        msg.extend_from_slice(b"Thank you for your order. Line of a typical receipt body...\r\n");
    }
    msg.extend_from_slice(b".\r\n");
    g.throughput(Throughput::Bytes(msg.len() as u64));
    g.bench_function("10KiB", |b| {
        let mut out = Vec::with_capacity(16 * 1024);
        b.iter(|| {
            out.clear();
            let mut r = BodyReader::new(Framing::Data, BareEndings::default(), 1 << 26, 65536);
            black_box(r.feed(black_box(&msg), &mut out))
        })
    });
    g.finish();
}

/// `meta.header` at reception: the header section of a typical 10 KiB
/// receipt searched for a field that is not there (the common case), and
/// one that is taken out.
fn meta_header(c: &mut Criterion) {
    let mut g = c.benchmark_group("meta_header");
    let mut msg = b"Received: from c (c [127.0.0.1])\r\n\tby mx (ringpost) with ESMTP id 0;\r\n\tTue, 1 Dec 2026 06:00:00 +0000\r\nFrom: Shop <shop@example.com>\r\nTo: <a@example.net>\r\nSubject: receipt\r\nDate: Tue, 1 Dec 2026 06:00:00 +0000\r\nMessage-ID: <1@example.com>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\n".to_vec();
    while msg.len() < 10 * 1024 {
        msg.extend_from_slice(b"Thank you for your order. Line of a typical receipt body...\r\n");
    }
    g.bench_function("absent_10KiB", |b| {
        let mut m = msg.clone();
        b.iter(|| {
            black_box(ringpost::proto::header::take_field(
                &mut m,
                0,
                "X-Ringpost-Meta",
            ))
        })
    });
    let mut with = b"X-Ringpost-Meta: {\"app_id\": \"order-1234\"}\r\n".to_vec();
    with.extend_from_slice(&msg);
    g.bench_function("present_10KiB", |b| {
        b.iter(|| {
            let mut m = with.clone();
            black_box(ringpost::proto::header::take_field(
                &mut m,
                0,
                "X-Ringpost-Meta",
            ))
        })
    });
    g.finish();
}

criterion_group!(benches, commands, body, meta_header);
criterion_main!(benches);
