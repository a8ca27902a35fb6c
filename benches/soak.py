#!/usr/bin/env python3
"""Soak under SIGKILL: mixed SMTP and HTTP load into ringpost, deliveries to
`ringpost sink` that defers and refuses some, compaction running, and the
real binary killed with SIGKILL every few seconds, ROUNDS times.

    python3 benches/soak.py [ROUNDS] [SECONDS_PER_ROUND]    (default 100 3)

RINGPOST_BIN picks the binary (default target/release/ringpost); SOAK_PACE
the pause of each of the 6 clients between messages (default 0.02 s).

Every message has its own recipient, so the sink's log tells which arrived
and how often. After each restart it prints the acknowledged messages (250
or 200 answered) and how many of them are accounted for (delivered or
refused by the sink, or queued); at the end, with the load stopped and the
queue drained, every acknowledged message must have reached the sink at
least once, and it prints how many arrived more than once (duplicates:
allowed, each one a delivery the crash cut off before it was recorded).
Appends a summary line to benches/results/soak.jsonl.
"""
import json
import os
import random
import signal
import smtplib
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 100
SECONDS = float(sys.argv[2]) if len(sys.argv) > 2 else 3.0
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("RINGPOST_BIN", os.path.join(ROOT, "target/release/ringpost"))
# Each client waits this long between messages, so that reception does not
# outrun delivery and the queue stays a size that restarts recover quickly.
PACE = float(os.environ.get("SOAK_PACE", "0.02"))
SMTP, HTTP, ADMIN, SINK, METRICS = 2537, 8035, 9475, 2636, 9575
# 1 message in HELD_EVERY goes to a domain the sink defers (450) until the
# load ends: those messages stay deferred while the rest are delivered, so
# their segments become sparse and compaction moves them (under the kills).
HELD_EVERY = 10
HELD = "held.soak.example"

work = tempfile.mkdtemp(prefix="ringpost-soak-")
config = os.path.join(work, "soak.toml")
with open(config, "w") as f:
    f.write(f"""
[server]
hostname = "soak.ringpost.test"
shutdown_grace_secs = 2
[spool]
dir = "{work}/spool"
segment_bytes = 1048576
min_free_bytes = 0
[smtp]
listen = "127.0.0.1:{SMTP}"
[inject]
listen = "127.0.0.1:{HTTP}"
[metrics]
listen = "127.0.0.1:{METRICS}"
[admin]
listen = "127.0.0.1:{ADMIN}"
[delivery]
smarthost = "[127.0.0.1]:{SINK}"
retry_initial_secs = 2
retry_max_secs = 4
log = "off"
""")

sink_log = open(os.path.join(work, "sink.log"), "w")
mta_log = open(os.path.join(work, "ringpost.log"), "a")
SINK_ARGS = [BIN, "sink", "--listen", f"127.0.0.1:{SINK}", "--defer-every", "7", "--reject-every", "50"]
sink = subprocess.Popen(SINK_ARGS + ["--defer-domain", HELD], stdout=sink_log, stderr=subprocess.DEVNULL)

acked = set()
acked_lock = threading.Lock()
running = threading.Event()
counter = iter(range(10**9))
counter_lock = threading.Lock()


def next_rcpt():
    with counter_lock:
        n = next(counter)
    return f"m{n}@{HELD if n % HELD_EVERY == 0 else 'soak.example'}"


def smtp_client():
    while running.is_set():
        rcpt = next_rcpt()
        try:
            with smtplib.SMTP("127.0.0.1", SMTP, timeout=5) as s:
                s.sendmail("shop@sender.example", [rcpt], f"Subject: {rcpt}\r\n\r\n{'x' * 2000}\r\n")
            with acked_lock:
                acked.add(rcpt)
            time.sleep(PACE)
        except Exception:
            time.sleep(0.05)


def http_client():
    while running.is_set():
        rcpt = next_rcpt()
        body = json.dumps({"envelope_sender": "shop@sender.example",
                           "recipients": [{"email": rcpt}],
                           "content": f"Subject: {rcpt}\r\n\r\n{'y' * 2000}\r\n"}).encode()
        try:
            req = urllib.request.Request(f"http://127.0.0.1:{HTTP}/api/inject/v1", data=body,
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=5) as r:
                if r.status == 200:
                    with acked_lock:
                        acked.add(rcpt)
            time.sleep(PACE)
        except Exception:
            time.sleep(0.05)


def start_mta():
    p = subprocess.Popen([BIN, "serve", "--config", config],
                         env=dict(os.environ, RUST_LOG="warn"),
                         stdout=subprocess.DEVNULL, stderr=mta_log)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            smtplib.SMTP("127.0.0.1", SMTP, timeout=1).quit()
            return p
        except Exception:
            time.sleep(0.05)
    raise SystemExit(f"ringpost did not come back: see {work}/ringpost.log")


def sink_seen():
    """Recipient -> list of sink answers (250, 451, 550)."""
    seen = {}
    with open(os.path.join(work, "sink.log")) as f:
        for line in f:
            try:
                rcpts = line.split(" -> ")[1].split(" (")[0]
                code = line.rsplit(": ", 1)[1].strip()
            except IndexError:
                continue
            for r in rcpts.split(", "):
                seen.setdefault(r.strip("<>"), []).append(code)
    return seen


def admin(method, path):
    req = urllib.request.Request(f"http://127.0.0.1:{ADMIN}{path}", method=method, data=b"")
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)


def compacted_bytes():
    """ringpost_spool_compacted_bytes_total of the running server (0 if none yet)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{METRICS}/metrics", timeout=10) as r:
            return sum(float(l.rsplit(" ", 1)[1]) for l in r.read().decode().splitlines()
                       if l.startswith("ringpost_spool_compacted_bytes_total"))
    except Exception:
        return 0.0


def queued():
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{ADMIN}/queue/messages", timeout=10) as r:
            return {rc["address"] for m in json.load(r) for rc in m["recipients"]
                    if rc["status"] == "pending"}
    except Exception:
        return None


mta = start_mta()
compacted = 0.0
running.set()
threads = [threading.Thread(target=smtp_client) for _ in range(4)]
threads += [threading.Thread(target=http_client) for _ in range(2)]
for t in threads:
    t.start()
worst_missing = 0
for rnd in range(1, ROUNDS + 1):
    time.sleep(random.uniform(0.5 * SECONDS, 1.5 * SECONDS))
    compacted += compacted_bytes()
    mta.send_signal(signal.SIGKILL)
    mta.wait()
    mta = start_mta()
    with acked_lock:
        snapshot = set(acked)
    q = queued()
    seen = sink_seen()
    done = {r for r, codes in seen.items() if "250" in codes or "550" in codes}
    missing = len(snapshot - done - (q or set())) if q is not None else -1
    worst_missing = max(worst_missing, missing)
    print(f"round {rnd}: {len(snapshot)} acknowledged, {len(done & snapshot)} delivered or refused, "
          f"{len(q or ())} queued, {missing} unaccounted, {compacted / 1e6:.1f} MB compacted so far",
          flush=True)

running.clear()
for t in threads:
    t.join()
# The held domain is taken from now on, and retried at once.
sink.kill()
sink.wait()
sink = subprocess.Popen(SINK_ARGS, stdout=sink_log, stderr=subprocess.DEVNULL)
time.sleep(0.5)
admin("POST", "/queue/flush")
with acked_lock:
    final = set(acked)
deadline = time.time() + 180
while time.time() < deadline:
    seen = sink_seen()
    done = {r for r, codes in seen.items() if "250" in codes or "550" in codes}
    if final <= done:
        break
    time.sleep(1)
mta.send_signal(signal.SIGTERM)
mta.wait()
sink.kill()
seen = sink_seen()
done = {r for r, codes in seen.items() if "250" in codes or "550" in codes}
lost = sorted(final - done)
duplicates = sum(1 for r in final if seen.get(r, []).count("250") > 1)
summary = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rounds": ROUNDS,
           "seconds_per_round": SECONDS, "acknowledged": len(final), "lost": len(lost),
           "duplicates_delivered": duplicates,
           "refused_by_sink": sum(1 for r in final if "550" in seen.get(r, [])),
           "compacted_mb_before_kills": round(compacted / 1e6, 1)}
print(json.dumps(summary))
os.makedirs(os.path.join(ROOT, "benches/results"), exist_ok=True)
with open(os.path.join(ROOT, "benches/results/soak.jsonl"), "a") as f:
    f.write(json.dumps(summary) + "\n")
if lost:
    print("lost:", lost[:20])
    sys.exit(1)
