//! DKIM signing of one 10 KiB message at the reception door: the header
//! scan alone (a From domain nothing signs), Ed25519, RSA-2048, and both
//! side by side (what `Signer::sign` costs per message; the loadtest A/B
//! in benches/results shows what it costs end to end).

use criterion::{Criterion, Throughput, black_box, criterion_group, criterion_main};
use ringpost::config::DkimConfig;
use ringpost::dkim::key::{KeyKind, generate};
use ringpost::dkim::{Identity, Signer, SigningKey};

fn key(kind: KeyKind) -> SigningKey {
    SigningKey::from_pem(generate(kind).unwrap().as_bytes(), "bench").unwrap()
}

fn message(from: &str) -> Vec<u8> {
    let mut msg = format!(
        "Received: from client.example ([192.0.2.1])\r\n\tby mx.example.net (ringpost) with ESMTP id 0123456789abcdef\r\n\tfor <customer@example.org>; Tue, 1 Dec 2026 03:00:00 +0000\r\n\
         From: Shop <{from}>\r\nTo: customer@example.org\r\nSubject: Your receipt\r\n\
         Date: Tue, 01 Dec 2026 03:00:00 +0000\r\nMessage-ID: <r.1@example.com>\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\
         List-Unsubscribe: <https://example.com/u/1>\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n\r\n"
    )
    .into_bytes();
    while msg.len() < 10 * 1024 {
        msg.extend_from_slice(b"Thank you for your order. Line of a typical receipt body...\r\n");
    }
    msg
}

fn sign(c: &mut Criterion) {
    let (ed, rsa) = (key(KeyKind::Ed25519), key(KeyKind::Rsa(2048)));
    let cfg = DkimConfig::default();
    let signer = |keys: &[(&str, &SigningKey)]| {
        let ids = keys
            .iter()
            .map(|(sel, k)| Identity::new("example.com", sel, (*k).clone(), 0))
            .collect();
        Signer::new(&cfg, ids)
    };
    let msg = message("receipts@example.com");
    let mut g = c.benchmark_group("dkim_sign_10k");
    g.throughput(Throughput::Bytes(msg.len() as u64));
    let none = signer(&[("e", &ed)]);
    let unsigned = message("receipts@example.org");
    g.bench_function("scan_only_no_identity", |b| {
        b.iter(|| none.sign(black_box(&unsigned)))
    });
    let s = signer(&[("e", &ed)]);
    g.bench_function("ed25519", |b| b.iter(|| s.sign(black_box(&msg))));
    let s = signer(&[("r", &rsa)]);
    g.bench_function("rsa2048", |b| b.iter(|| s.sign(black_box(&msg))));
    let s = signer(&[("r", &rsa), ("e", &ed)]);
    g.bench_function("rsa2048_and_ed25519", |b| {
        b.iter(|| s.sign(black_box(&msg)))
    });
    g.finish();
}

criterion_group!(benches, sign);
criterion_main!(benches);
