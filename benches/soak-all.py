#!/usr/bin/env python3
"""The everything-on soak: two ringpost nodes sharing one redis-server,
everything a production node runs switched on, faults on a schedule, and
at the end every acknowledged message accounted for from the sink's,
the webhook receiver's and the clients' own records.

    python3 benches/soak-all.py [--minutes M] [--short] [--bulk N]

--short is the form tests/soak_all.rs runs in CI (38 s of lighter load,
a node killed every 4-8 s, Redis killed once, the receiver away and
flapping every 10-12 s, one reload).
The long form (the default, 60 minutes) kills node b every 5-30 s (node a
lives the whole run, for its memory and file descriptors), Redis
every 2-4 minutes (restarted empty), takes the webhook receiver away for
one to two minutes every five, and reloads a broken and then a good
shaping file every ten. --bulk N adds N smtp-source sessions of one
message per connection (Postfix's tool) to a domain routed to
`ringpost sink`, for the connection count; those messages are not
tracked one by one.

What runs (all on loopback): two nodes (`ringpost serve`, separate
spools, SMTP, injection, admin and metrics listeners each) with [cluster]
on one redis-server; DKIM with an RSA and an Ed25519 identity; egress
sources (127.0.0.2/.3 on node A, .4/.5 on node B, named s1/s2 on both,
so a path's limit is the fleet's); a shaping file with a rate-limited
site; [backoff] throttling on RateLimited; priority lanes (a tenth of
the mail high); a feedback address taking ARF complaints; a webhook
(tests/verifiers/webhook_receiver.py, signatures checked) that goes away,
answers 500 and 404 for a while and comes back; benches/soak_sink.py
answering 250, 451 (first try), 550 5.1.1, 554 blocklist texts and
421 4.7.28 by domain. Clients: SMTP (one message per connection) and
HTTP injection (half with an Idempotency-Key, repeated; a fifth
templated), every message to a recipient of its own; an operator adding
suppressions for queued recipients; complaints about delivered mail and
new mail to the complainers.

Checked at the end (exit status 1 if a hard check fails):
  lost        acknowledged (250/200) and neither delivered nor bounced
  refused     answered 4xx/5xx and delivered all the same
  dkim        delivered messages whose RSA or Ed25519 signature fails
              (dkimpy; all of them with --short, a sample of 20,000 else)
  events      deliveries and bounces without their webhook event
  suppressed  deliveries after the suppression was acknowledged (by the
              node that acknowledged it; by the other, after 5 s)
  limits      5-second windows over 110% of a path's fleet-wide rate
              (outside Redis outages)
Reported: duplicates (deliveries of one recipient after its first) per
node kill, RSS and open files per node each minute, connections. A line
goes to benches/results/soak-all.jsonl (the short form's only with --record).
"""
import argparse
import base64
import json
import os
import random
import re
import signal
import smtplib
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("RINGPOST_BIN", os.path.join(ROOT, "target/release/ringpost"))
RECEIVER = os.path.join(ROOT, "tests/verifiers/webhook_receiver.py")
ARF = os.path.join(ROOT, "tests/data/feedback/arf-rfc5965.eml")
BASE = int(os.environ.get("SOAK_PORT_BASE", "27100"))
REDIS, HOOK, SINK, BULK_SINK = BASE, BASE + 1, BASE + 2, BASE + 3
LIMIT = 5.0  # messages a second per path to limited.soak, for the fleet
# Each domain has a receiver address of its own (a site of its own).
DOMAINS = ["ok.soak", "limited.soak", "throttle.soak", "defer.soak", "bounce.soak", "block.soak"]
RECEIVER_IP = {d: f"127.0.1.{i + 1}" for i, d in enumerate(DOMAINS)}
WEIGHTS = [("ok.soak", 66), ("limited.soak", 6), ("defer.soak", 10), ("bounce.soak", 5),
           ("block.soak", 3), ("throttle.soak", 10)]

p = argparse.ArgumentParser()
p.add_argument("--minutes", type=float, default=60)
p.add_argument("--short", action="store_true")
p.add_argument("--bulk", type=int, default=0)
p.add_argument("--record", action="store_true", help="append the short form's line too")
p.add_argument("--pace", type=float, default=None)
ARGS = p.parse_args()
# Each client's pause between messages: the short form's load is lighter
# (CI has 2 cores for everything), the long form's about 150 msgs/s.
PACE = ARGS.pace if ARGS.pace is not None else (0.08 if ARGS.short else 0.03)
SECONDS = 38 if ARGS.short else ARGS.minutes * 60
KILL_EVERY = (4, 8) if ARGS.short else (5, 30)
REDIS_EVERY = (20, 24) if ARGS.short else (120, 240)
HOOK_DOWN = ((10, 12), (5, 8)) if ARGS.short else ((300, 300), (60, 120))
RELOAD_EVERY = (24, 28) if ARGS.short else (600, 600)

def port_in_use(port):
    import socket
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


# A node or server left from an earlier run would answer in our parts'
# places (and a node's start would seem to succeed): refuse to begin.
busy = [p for p in range(BASE, BASE + 40) if port_in_use(p)]
if busy:
    raise SystemExit(f"ports {busy} are in use (an earlier soak still running?); "
                     "stop it or set SOAK_PORT_BASE")
work = tempfile.mkdtemp(prefix="ringpost-soak-all-")
T0 = time.time()


def log(text):
    print(f"[{time.time() - T0:7.1f}s] {text}", flush=True)


# --- the parts -----------------------------------------------------------

def keygen(sel, algo):
    out = subprocess.run([BIN, "dkim", "keygen", "--domain", "soak.example", "--selector", sel,
                          "--algo", algo, "--out", f"{work}/{sel}.pem"],
                         capture_output=True, text=True, check=True).stdout
    txt = next(l for l in out.splitlines() if "_domainkey" in l)
    # An RSA key's record is several quoted strings, read as one.
    return f"{sel}._domainkey.soak.example.", "".join(re.findall(r'"([^"]*)"', txt))


DKIM_KEYS = dict([keygen("r", "rsa"), keygen("e", "ed25519")])
with open(f"{work}/hook.secret", "w") as f:
    f.write("soak-webhook-secret-0123456789\n")
SHAPING_GOOD = f"""
[[site]]
name = "limited"
domains = ["limited.soak"]
max_messages_per_second = {LIMIT}
max_connections = 4

[[site]]
name = "throttled"
domains = ["throttle.soak"]
max_connections = 4
max_messages_per_second = 20
"""
SHAPING = f"{work}/shaping.toml"
with open(SHAPING, "w") as f:
    f.write(SHAPING_GOOD)


faults = {"node_kills": 0, "redis_kills": 0, "hook_downs": 0, "reloads": 0, "refused_starts": 0}


class Node:
    def __init__(self, name, n, ips):
        self.name, self.ips = name, ips
        self.smtp, self.http, self.admin, self.metrics = (BASE + 10 + 10 * n + k for k in range(4))
        self.dir = f"{work}/{name}"
        os.makedirs(self.dir)
        self.config = f"{self.dir}/ringpost.toml"
        routes = ", ".join(f'"{d}" = "[{ip}]:{SINK}"' for d, ip in RECEIVER_IP.items())
        sources = "".join(f'[[egress.source]]\nname = "s{i + 1}"\naddress = "{ip}"\n'
                          f'ehlo = "{name}-s{i + 1}.soak.test"\n' for i, ip in enumerate(ips))
        with open(self.config, "w") as f:
            f.write(f"""
[server]
hostname = "{name}.soak.test"
shutdown_grace_secs = 2
[spool]
dir = "{self.dir}/spool"
segment_bytes = 4194304
min_free_bytes = 0
[smtp]
listen = "127.0.0.1:{self.smtp}"
local_domains = ["fb.soak.test"]
[inject]
listen = "127.0.0.1:{self.http}"
[admin]
listen = "127.0.0.1:{self.admin}"
[metrics]
listen = "127.0.0.1:{self.metrics}"
[delivery]
smarthost = "[127.0.0.1]:{SINK}"
routes = {{ "bulk.soak" = "[127.0.0.1]:{BULK_SINK}", {routes} }}
shaping_file = "{SHAPING}"
retry_initial_secs = 2
retry_max_secs = 8
log = "{self.dir}/delivery.log"
[cluster]
redis = "redis://127.0.0.1:{REDIS}"
nodes = 2
[backoff]
rules = [{{ category = "RateLimited", action = "throttle", factor = 0.5, secs = 10 }}]
[feedback]
addresses = ["fbl@fb.soak.test"]
tracking_header = "X-Ringpost-Id"
[dkim]
fallback = "soak.example"
[[dkim.identity]]
domain = "soak.example"
selector = "r"
key_file = "{work}/r.pem"
[[dkim.identity]]
domain = "soak.example"
selector = "e"
key_file = "{work}/e.pem"
algorithm = "ed25519-sha256"
[[events.webhook]]
name = "app"
url = "http://127.0.0.1:{HOOK}/hook"
secret_file = "{work}/hook.secret"
retry_initial_ms = 200
retry_max_secs = 5
{sources}
[[egress.pool]]
name = "main"
sources = [{{ source = "s1" }}, {{ source = "s2" }}]
""")
        self.stderr = open(f"{self.dir}/stderr.log", "a")
        self.proc = None
        self.kills = []

    def start(self):
        """Starts the node and waits for its greeting. A start the config
        refuses (the reloader's broken shaping file, for its two seconds)
        is tried again, as a supervisor would."""
        deadline = time.time() + 120
        while time.time() < deadline:
            self.proc = subprocess.Popen([BIN, "serve", "--config", self.config],
                                         env=dict(os.environ, RUST_LOG="warn"),
                                         stdout=subprocess.DEVNULL, stderr=self.stderr)
            while time.time() < deadline and self.proc.poll() is None:
                try:
                    smtplib.SMTP("127.0.0.1", self.smtp, timeout=2).quit()
                    return
                except Exception:
                    time.sleep(0.05)
            faults["refused_starts"] += 1
            time.sleep(0.5)
        raise SystemExit(f"{self.name} did not start: see {self.dir}/stderr.log")

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.kills.append(time.time())

    def get(self, path, timeout=10):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}{path}", timeout=timeout) as r:
            return json.load(r)

    def post(self, path, body):
        req = urllib.request.Request(f"http://127.0.0.1:{self.admin}{path}", method="POST",
                                     data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status

    def usage(self):
        try:
            status = open(f"/proc/{self.proc.pid}/status").read()
            rss = int(next(l for l in status.splitlines() if l.startswith("VmRSS")).split()[1])
            return rss // 1024, len(os.listdir(f"/proc/{self.proc.pid}/fd"))
        except (OSError, StopIteration):
            return None, None


def start_redis():
    p = subprocess.Popen(["redis-server", "--port", str(REDIS), "--save", "", "--appendonly", "no",
                          "--bind", "127.0.0.1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.3)
    return p


def start_hook():
    return subprocess.Popen([sys.executable, RECEIVER, str(HOOK), f"{work}/hook.secret",
                             f"{work}/events.jsonl"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def hook_mode(mode):
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{HOOK}/mode/{mode}", timeout=5).read()
    except Exception:
        pass


redis = start_redis()
hook = start_hook()
sink = subprocess.Popen([sys.executable, os.path.join(ROOT, "benches/soak_sink.py"), str(SINK),
                         f"{work}/sink", "127.0.0.1", *RECEIVER_IP.values()],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
bulk_sink = subprocess.Popen([BIN, "sink", "--listen", f"127.0.0.1:{BULK_SINK}"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
nodes = [Node("a", 0, ["127.0.0.2", "127.0.0.3"]), Node("b", 1, ["127.0.0.4", "127.0.0.5"])]
NODE_OF_IP = {ip: n.name for n in nodes for ip in n.ips}
PATH_OF_IP = {ip: f"s{i + 1}" for n in nodes for i, ip in enumerate(n.ips)}
for n in nodes:
    n.start()
log(f"work directory {work}; nodes up")

# --- the clients' own records ---------------------------------------------

LOCK = threading.Lock()
acked = {}          # recipient -> node that answered 250/200
refused = set()     # recipients answered 4xx/5xx (and never retried)
suppressed = {}     # recipient -> (node, time the suppression was acknowledged)
complained = []     # recipients whose complaint was answered 250
stats = {"smtp_connections": 0, "smtp_errors": 0, "http_requests": 0, "http_errors": 0,
         "idempotent_repeats": 0, "idempotent_mismatch": 0, "idempotent_refused": 0,
         "idempotent_new_while_redis_down": 0,
         "complaints": 0, "bulk_runs_cut_short": 0,
         "http_uncertain": 0,
         "suppressed_refused_at_rcpt": 0}
running = threading.Event()
redis_up = threading.Event()
redis_up.set()
mismatches = []     # (recipient, when, Redis up) of keyed repeats given a new id
counter = iter(range(10 ** 9))


def next_rcpt(domain=None):
    with LOCK:
        n = next(counter)
    if domain is None:
        r = random.uniform(0, sum(w for _, w in WEIGHTS))
        for domain, w in WEIGHTS:
            r -= w
            if r <= 0:
                break
    return f"m{n}@{domain}"


def message(rcpt, priority=False):
    prio = "X-Ringpost-Priority: high\r\n" if priority else ""
    return (f"From: News <news@soak.example>\r\nTo: <{rcpt}>\r\nSubject: soak {rcpt}\r\n{prio}"
            f"\r\nHello {rcpt},\r\n\r\n" + "lorem ipsum dolor sit amet " * 40 + "\r\n").encode()


def smtp_send(node, rcpt, data, sender="news@soak.example"):
    """'acked', 'refused', or 'unknown' (the connection broke before a reply to the data)."""
    with LOCK:
        stats["smtp_connections"] += 1
    try:
        with smtplib.SMTP("127.0.0.1", node.smtp, timeout=15) as s:
            s.sendmail(sender, [rcpt], data)
        return "acked"
    except (smtplib.SMTPRecipientsRefused, smtplib.SMTPDataError, smtplib.SMTPSenderRefused) as e:
        return "refused"
    except Exception:
        with LOCK:
            stats["smtp_errors"] += 1
        return "unknown"


def smtp_client():
    while running.is_set():
        node = random.choice(nodes)
        rcpt = next_rcpt()
        data = message(rcpt, random.random() < 0.1)
        if random.random() < 0.02:
            # An unknown priority: refused after the data (550 5.6.0),
            # so never to be delivered.
            data = b"X-Ringpost-Priority: soonish\r\n" + data
        result = smtp_send(node, rcpt, data)
        with LOCK:
            if result == "acked":
                acked[rcpt] = node.name
            elif result == "refused":
                refused.add(rcpt)
        time.sleep(PACE if result != "unknown" else 0.2)


def inject(node, body, key=None):
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Idempotency-Key"] = key
    req = urllib.request.Request(f"http://127.0.0.1:{node.http}/api/inject/v1",
                                 data=json.dumps(body).encode(), headers=headers)
    with LOCK:
        stats["http_requests"] += 1
    try:
        with urllib.request.urlopen(req, timeout=15) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:
        return {"status": e.code}
    except Exception:
        with LOCK:
            stats["http_errors"] += 1
        return None


def http_client():
    while running.is_set():
        node = random.choice(nodes)
        rcpt = next_rcpt()
        body = {"envelope_sender": "news@soak.example", "recipients": [{"email": rcpt}],
                "content": message(rcpt).decode()}
        if random.random() < 0.2:
            body["recipients"][0]["substitutions"] = {"name": rcpt.split("@")[0]}
            body["content"] = body["content"].replace("Hello ", "Hello {{ name }} ")
        if random.random() < 0.1:
            body["priority"] = "high"
        key = f"k-{rcpt}" if random.random() < 0.5 else None
        answer = inject(node, body, key)
        # A keyed request whose answer was lost is sent again, to either node.
        retried = False
        while key and answer is None and running.is_set():
            time.sleep(0.2)
            retried = True
            answer = inject(random.choice(nodes), body, key)
        # A refusal of a retry (or a 409: the first is still under way)
        # says nothing of the first request, which may have been queued.
        uncertain = key and answer and answer.get("status") and (retried or answer["status"] == 409)
        if key and answer and "id" in answer and random.random() < 0.5:
            again = inject(random.choice(nodes), body, key)
            with LOCK:
                stats["idempotent_repeats"] += 1
                if again and "status" in again:
                    stats["idempotent_refused"] += 1
                elif again and again.get("id") != answer.get("id"):
                    stats["idempotent_mismatch" if redis_up.is_set() else
                          "idempotent_new_while_redis_down"] += 1
                    mismatches.append((rcpt, round(time.time() - T0, 1), redis_up.is_set()))
        with LOCK:
            if answer and answer.get("success_count") == 1:
                acked[rcpt] = node.name
            elif uncertain:
                stats["http_uncertain"] += 1
            elif answer and "status" in answer:
                refused.add(rcpt)
        time.sleep(PACE)


def json_lines(path):
    """The whole lines of a JSON-lines file another process is writing."""
    out = []
    try:
        with open(path) as f:
            for line in f:
                if line.endswith("\n"):
                    out.append(json.loads(line))
    except FileNotFoundError:
        pass
    return out


def sink_records():
    return json_lines(f"{work}/sink/sink.jsonl")


def operator():
    """Suppresses recipients whose first try was deferred, and complains
    about delivered mail (then mails the complainer again)."""
    arf = open(ARF).read().replace("\n", "\r\n")
    while running.is_set():
        time.sleep(2)
        recs = sink_records()
        deferred = [r["rcpts"][0] for r in recs if r["code"] == 451][-20:]
        with LOCK:
            fresh = [r for r in deferred if r in acked and r not in suppressed]
        if fresh:
            rcpt = random.choice(fresh)
            node = random.choice(nodes)
            try:
                if node.post("/suppressions", [{"address": rcpt, "reason": "soak operator"}]) == 200:
                    with LOCK:
                        suppressed[rcpt] = (node.name, time.time())
            except Exception:
                pass
        delivered = [r for r in recs[-200:] if r["code"] == 250 and r["id"]
                     and r["rcpts"][0].endswith("@ok.soak")]
        if not delivered:
            continue
        r = random.choice(delivered)
        rcpt = r["rcpts"][0]
        if rcpt in suppressed:
            continue
        original = f"X-Ringpost-Id: {r['id']}\r\nFrom: news@soak.example\r\nSubject: x\r\n\r\nx"
        report = (arf.replace("{{ORIGINAL}}", original).replace("{{HEADERS}}", original.split("\r\n\r\n")[0])
                  .replace("{{RCPT2}}", "").replace("{{RCPT}}", rcpt)
                  .replace("{{SENDER}}", "news@soak.example")).encode()
        node = random.choice(nodes)
        if smtp_send(node, "fbl@fb.soak.test", report, sender="fbl@isp.example") == "acked":
            with LOCK:
                suppressed.setdefault(rcpt, (node.name, time.time()))
                stats["complaints"] += 1
            # Mail to the complainer now: refused at RCPT, or (by the
            # other node, before it learnt) accepted and then not sent.
            time.sleep(0.5)
            result = smtp_send(node, rcpt, message(rcpt))
            with LOCK:
                if result == "acked":
                    acked[rcpt] = node.name
                elif result == "refused":
                    stats["suppressed_refused_at_rcpt"] += 1


def limited_bursts():
    """Bursts to the rate-limited site, over one node's single connection
    and over both, so its paths have a backlog to pace."""
    while running.is_set():
        node = random.choice(nodes)
        try:
            with smtplib.SMTP("127.0.0.1", node.smtp, timeout=15) as s:
                with LOCK:
                    stats["smtp_connections"] += 1
                for _ in range(int(LIMIT * 2 * (6 if ARGS.short else 12))):
                    rcpt = next_rcpt("limited.soak")
                    s.sendmail("news@soak.example", [rcpt], message(rcpt))
                    with LOCK:
                        acked[rcpt] = node.name
        except Exception:
            pass
        wait_until(time.time() + (15 if ARGS.short else 30))


def bulk_load(n):
    """smtp-source sessions, one message per connection, to bulk.soak."""
    while running.is_set():
        node = random.choice(nodes)
        try:
            done = subprocess.run(["smtp-source", "-s", str(n), "-m", str(n * 50), "-l", "512",
                                   "-f", "news@soak.example", "-t", "x@bulk.soak",
                                   f"127.0.0.1:{node.smtp}"], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, timeout=600).returncode == 0
        except subprocess.TimeoutExpired:
            done = False
        # Counted only when the whole run went through (a kill cuts some
        # short): the count is a floor.
        with LOCK:
            stats["smtp_connections"] += n * 50 if done else 0
            stats["bulk_runs_cut_short"] += 0 if done else 1


# --- faults ---------------------------------------------------------------

outages = []        # (from, to) of Redis outages


def wait_until(t):
    """Sleeps until time t or the end of the load; whether t came first."""
    while running.is_set() and time.time() < t:
        time.sleep(0.1)
    return running.is_set()


def at_intervals(span):
    """Yields at random intervals in `span` seconds while the load runs."""
    while wait_until(time.time() + random.uniform(*span)):
        yield


def node_killer():
    # The long form kills node b only: node a lives the whole run, so that
    # what grows with time or connections in one process (memory, file
    # descriptors, counters) has the hour to show.
    victims = nodes if ARGS.short else nodes[1:]
    for _ in at_intervals(KILL_EVERY):
        node = random.choice(victims)
        node.kill()
        node.start()
        faults["node_kills"] += 1
        log(f"killed and restarted node {node.name} ({faults['node_kills']} kills)")


def redis_killer():
    global redis
    for _ in at_intervals(REDIS_EVERY):
        redis.kill()
        redis.wait()
        redis_up.clear()
        down = time.time()
        time.sleep(5)
        redis = start_redis()
        redis_up.set()
        outages.append((down, time.time()))
        faults["redis_kills"] += 1
        log("killed Redis; restarted empty after 5 s")


def hook_flapper():
    """The webhook receiver goes away, comes back answering 500, then 404
    (a deploy), then well."""
    global hook
    for _ in at_intervals(HOOK_DOWN[0]):
        hook.kill()
        hook.wait()
        faults["hook_downs"] += 1
        away = random.uniform(*HOOK_DOWN[1])
        log(f"webhook receiver down for {away:.0f} s, then 500s for 5 s, 404s for 10 s")
        time.sleep(away)
        hook = start_hook()
        time.sleep(0.5)
        hook_mode("fail500")
        time.sleep(5)
        hook_mode("refuse404")
        time.sleep(10)
        hook_mode("ok")


def reloader():
    """SIGHUP with a broken shaping file (the running rules must stay),
    then with the good one."""
    for _ in at_intervals(RELOAD_EVERY):
        with open(SHAPING, "w") as f:
            f.write("[[site]]\nname = broken\n")
        node = random.choice(nodes)
        node.proc.send_signal(signal.SIGHUP)
        time.sleep(2)
        with open(SHAPING, "w") as f:
            f.write(SHAPING_GOOD)
        node.proc.send_signal(signal.SIGHUP)
        faults["reloads"] += 1
        log(f"node {node.name}: reloaded a broken shaping file, then the good one")


usage = []


def sampler():
    while running.is_set():
        row = {"t": round(time.time() - T0)}
        for n in nodes:
            row[f"{n.name}_rss_mib"], row[f"{n.name}_fds"] = n.usage()
        usage.append(row)
        for _ in range(60):
            if running.is_set():
                time.sleep(1)


# --- the run --------------------------------------------------------------

running.set()
threads = [threading.Thread(target=smtp_client) for _ in range(4)]
threads += [threading.Thread(target=http_client) for _ in range(2)]
threads += [threading.Thread(target=f) for f in (operator, limited_bursts, sampler, node_killer,
                                                 redis_killer, hook_flapper, reloader)]
if ARGS.bulk:
    threads.append(threading.Thread(target=bulk_load, args=(ARGS.bulk,)))
for t in threads:
    t.start()
while time.time() - T0 < SECONDS:
    time.sleep(5)
    with LOCK:
        log(f"{len(acked)} acknowledged, {len(refused)} refused, {len(suppressed)} suppressed, "
            f"{stats['smtp_connections']} SMTP connections")
running.clear()
for t in threads:
    t.join()
usage.append({"t": round(time.time() - T0), **{f"{n.name}_{k}": v for n in nodes
                                               for k, v in zip(("rss_mib", "fds"), n.usage())}})
hook_mode("ok")
log("load stopped; waiting for the queues to empty")
for n in nodes:
    try:
        n.post("/queue/flush", {})
    except Exception:
        pass


def queued():
    total = 0
    for n in nodes:
        try:
            total += n.get("/queue/summary")["messages"]
        except Exception:
            return None
    return total


deadline = time.time() + 300
while time.time() < deadline and queued() != 0:
    time.sleep(2)
left = queued()


def events():
    """The webhook events of tracked mail: the bulk load's (millions in
    the long form) are skipped before they are parsed."""
    out = []
    try:
        with open(f"{work}/events.jsonl") as f:
            for line in f:
                if line.endswith("\n") and "@bulk.soak" not in line:
                    out.append(json.loads(line))
    except FileNotFoundError:
        pass
    return out


def wanted_events():
    """(recipient, kind) the sink's and clients' records call for."""
    recs = sink_records()
    delivered = {r["rcpts"][0] for r in recs if r["code"] == 250 and r["peer"] in NODE_OF_IP}
    bounced_at_sink = {r for r in acked if r.split("@")[1] in ("bounce.soak", "block.soak")}
    return recs, delivered, bounced_at_sink


deadline = time.time() + 120
while time.time() < deadline:
    recs, delivered, bounced = wanted_events()
    ev = events()
    have = {(e.get("recipient"), e.get("event")) for e in ev}
    missing_ev = [r for r in delivered if (r, "Delivery") not in have]
    if not missing_ev:
        break
    time.sleep(2)
for n in nodes:
    n.proc.send_signal(signal.SIGTERM)
for n in nodes:
    n.proc.wait()
for proc in (hook, sink, bulk_sink, redis):
    proc.kill()

# --- the checks -----------------------------------------------------------

recs, delivered, _ = wanted_events()
ev = events()
kinds = {}
for e in ev:
    kinds.setdefault(e.get("recipient"), set()).add(e.get("event"))
bounced = {r for r, k in kinds.items() if "Bounce" in k}
tracked = [r for r in recs if r["peer"] in NODE_OF_IP]
lost = sorted(r for r in acked if r not in delivered and r not in bounced)
refused_delivered = sorted(r for r in refused if r in delivered)
# A kill within a flush of a delivery loses the delivery's record and its
# event together (docs/webhooks-and-dsn.md): the message is tried again
# after the restart, and if its recipient was suppressed meanwhile, that
# attempt's Bounce is its event. Counted, not failed, when the node that
# delivered it was killed within a second of the delivery.
FLUSH_WINDOW = 1.0


def lost_with_kill(rcpt):
    if "Bounce" not in kinds.get(rcpt, ()) or rcpt not in suppressed:
        return False
    for r in recs:
        if r["code"] == 250 and r["rcpts"][0] == rcpt and r["peer"] in NODE_OF_IP:
            node = next(n for n in nodes if n.name == NODE_OF_IP[r["peer"]])
            if any(r["t"] <= k <= r["t"] + FLUSH_WINDOW for k in node.kills):
                return True
    return False


no_delivery_event = sorted(r for r in delivered if "Delivery" not in kinds.get(r, ()))
delivery_events_lost_with_kill = [r for r in no_delivery_event if lost_with_kill(r)]
missing_delivery_events = [r for r in no_delivery_event if r not in delivery_events_lost_with_kill]
missing_bounce_events = sorted(r for r in acked if r.split("@")[1] in ("bounce.soak", "block.soak")
                               and "Bounce" not in kinds.get(r, ()))

# Duplicates: deliveries of a recipient after its first, each put on the
# last kill of the node that made it.
firsts, dupes_per_kill, dupes_unexplained = {}, {}, 0
for r in sorted(tracked, key=lambda r: r["t"]):
    if r["code"] != 250:
        continue
    rcpt = r["rcpts"][0]
    if rcpt not in acked:
        continue  # DSNs (all to the one sender) and the like
    if rcpt not in firsts:
        firsts[rcpt] = r
        continue
    node = next(n for n in nodes if n.name == NODE_OF_IP[r["peer"]])
    before = [k for k in node.kills if k <= r["t"]]
    if before:
        key = f"{node.name}@{before[-1] - T0:.0f}s"
        dupes_per_kill[key] = dupes_per_kill.get(key, 0) + 1
    else:
        dupes_unexplained += 1

# Suppressions: no delivery attempt begun after the acknowledgement (the
# other node: 5 s). Queued mail is checked before each attempt
# (docs/bounces-and-suppression.md), so an attempt under way at the
# acknowledgement may still deliver: the sink's time of its MAIL FROM
# counts, with half a second for the check before it (connection, pool).
late = []
for r in tracked:
    rcpt = r["rcpts"][0]
    if r["code"] != 250 or rcpt not in suppressed:
        continue
    node, at = suppressed[rcpt]
    grace = 0.5 if NODE_OF_IP[r["peer"]] == node else 5
    began = r.get("t_mail") or r["t"]
    if began > at + grace:
        late.append((rcpt, round(began - at, 2), round(r["t"] - at, 2), NODE_OF_IP[r["peer"]], node))

# Path limits: 5-second windows per path (source name) to limited.soak.
windows = {}
for r in tracked:
    if r["code"] == 250 and r["rcpts"][0].endswith("@limited.soak"):
        if any(a - 1 <= r["t"] <= b + 15 for a, b in outages):
            continue
        key = (PATH_OF_IP[r["peer"]], int(r["t"] // 5))
        windows[key] = windows.get(key, 0) + 1
rates = sorted(c / 5 for c in windows.values())
over = [(k, c / 5) for k, c in windows.items() if c / 5 > LIMIT * 1.1]
busy = [c / 5 for c in windows.values() if c / 5 >= LIMIT * 0.5]

# DKIM: every delivered message (or a sample), both signatures, dkimpy.
import dkim  # noqa: E402


def dnsfunc(name, timeout=5):
    return DKIM_KEYS.get(name.decode() if isinstance(name, bytes) else name, "").encode()


files = [r["file"] for r in tracked if r["code"] == 250 and r["file"]]
sample = files if ARGS.short or len(files) <= 20000 else random.sample(files, 20000)
dkim_checked, dkim_failed = 0, []
for name in sample:
    data = open(f"{work}/sink/msgs/{name}", "rb").read()
    d = dkim.DKIM(data)
    sigs = [l for l in data.split(b"\r\n\r\n")[0].split(b"\r\n") if l.lower().startswith(b"dkim-signature:")]
    algos = set()
    for i in range(len(sigs)):
        ok = d.verify(idx=i, dnsfunc=dnsfunc)
        algos.add(d.signature_fields.get(b"a", b"?").decode() if ok else "failed")
    dkim_checked += 1
    if algos != {"rsa-sha256", "ed25519-sha256"}:
        dkim_failed.append((name, sorted(algos)))

summary = {
    "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    "form": "short" if ARGS.short else "long", "seconds": round(time.time() - T0),
    "load_seconds": SECONDS, **stats, **faults,
    "acknowledged": len(acked), "refused_by_ringpost": len(refused),
    "delivered": len(delivered & set(acked)),
    "dsns_delivered": sum(1 for r in tracked if r["code"] == 250 and r["from"] == ""), "bounced": len(bounced & set(acked)),
    "lost": len(lost), "refused_but_delivered": len(refused_delivered),
    "left_queued": left,
    "events_received": len(ev), "delivery_events_missing": len(missing_delivery_events),
    "delivery_events_lost_with_kill": len(delivery_events_lost_with_kill),
    "bounce_events_missing": len(missing_bounce_events),
    "suppressed": len(suppressed), "delivered_after_suppression": len(late),
    "dkim_checked": dkim_checked, "dkim_failed": len(dkim_failed),
    "limited_windows": len(rates), "limited_busy_windows": len(busy),
    "limited_max_per_s": max(rates, default=0),
    "limited_median_busy_per_s": busy[len(busy) // 2] if busy else None,
    "limited_windows_over_110pct": len(over), "limit_per_path": LIMIT,
    "redis_outages": len(outages),
    "duplicates": sum(dupes_per_kill.values()) + dupes_unexplained,
    "duplicates_per_kill": dupes_per_kill, "idempotent_mismatches": mismatches[:20], "duplicates_without_kill": dupes_unexplained,
    "usage_per_minute": usage,
}
print(json.dumps(summary, indent=1))
if not ARGS.short or ARGS.record:
    with open(os.path.join(ROOT, "benches/results/soak-all.jsonl"), "a") as f:
        f.write(json.dumps(summary) + "\n")


def usage_svg(rows, path):
    """Each node's RSS (MiB) and open files per minute, as an SVG chart
    (no plotting library needed)."""
    w, h, pad = 720, 300, 40
    series = [(f"{n.name}_{k}", c) for n, cs in zip(nodes, (("#1f77b4", "#9ecae1"), ("#d62728", "#fc9272")))
              for k, c in zip(("rss_mib", "fds"), cs)]
    tmax = max((r["t"] for r in rows), default=1) or 1
    vmax = max((r.get(k) or 0 for r in rows for k, _ in series), default=1) or 1
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-size="11">',
           f'<rect width="{w}" height="{h}" fill="white"/>',
           f'<text x="{pad}" y="14">RSS (MiB) and open files per node, each minute, over '
           f'{tmax / 60:.0f} minutes (max {vmax})</text>']
    for i, (key, color) in enumerate(series):
        pts = " ".join(f"{pad + (w - 2 * pad) * r['t'] / tmax:.1f},"
                       f"{h - pad - (h - 2 * pad) * (r.get(key) or 0) / vmax:.1f}" for r in rows)
        out.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{pts}"/>')
        out.append(f'<text x="{pad + 130 * i}" y="{h - 10}" fill="{color}">{key}</text>')
    out.append(f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="black"/>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


if not ARGS.short:
    chart = os.path.join(ROOT, "benches/results",
                         time.strftime("soak-all-%Y-%m-%d-%H%M.svg", time.gmtime(T0)))
    usage_svg(usage, chart)
    print(f"RSS and open files per minute: {chart}")
problems = {"lost": lost[:10], "refused_but_delivered": refused_delivered[:10],
            "delivery_events_missing": missing_delivery_events[:10],
            "bounce_events_missing": missing_bounce_events[:10],
            "delivered_after_suppression": late[:10], "dkim_failed": dkim_failed[:10],
            "limited_windows_over_110pct": over[:10]}
problems = {k: v for k, v in problems.items() if v}
if problems or left:
    print("FAILED:", json.dumps(problems, indent=1), f"left queued: {left}; work: {work}")
    sys.exit(1)
print(f"ok; work directory {work}")
