#!/usr/bin/env python3
"""Slowloris against a running ringpost: SLOW connections from 127.0.0.1
to the injection port send a request line and then one header byte every
5 s, while a client from 127.0.0.2 injects 10 requests/s and another from
127.0.0.3 scrapes /metrics once a second, for SECONDS. Prints what each
got; every injection and every scrape must be answered 200.

    python3 benches/http-slowloris.py [SLOW] [SECONDS] [INJECT] [METRICS]
        (default 150 60 127.0.0.1:8025 127.0.0.1:9464)
"""
import json
import socket
import sys
import threading
import time

SLOW = int(sys.argv[1]) if len(sys.argv) > 1 else 150
SECONDS = float(sys.argv[2]) if len(sys.argv) > 2 else 60
INJECT = (sys.argv[3] if len(sys.argv) > 3 else "127.0.0.1:8025").rsplit(":", 1)
METRICS = (sys.argv[4] if len(sys.argv) > 4 else "127.0.0.1:9464").rsplit(":", 1)
INJECT = (INJECT[0], int(INJECT[1]))
METRICS = (METRICS[0], int(METRICS[1]))


def connect(src, addr):
    s = socket.socket()
    s.bind((src, 0))
    s.settimeout(10)
    s.connect(addr)
    return s


def answer(s):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(l.split(b":")[1]) for l in head.split(b"\r\n")
                   if l.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        chunk = s.recv(65536)
        if not chunk:
            break
        body += chunk
    return head


stop = time.time() + SECONDS
slow_stats = {"opened": 0, "refused_503": 0, "closed_by_server": 0, "failed_connect": 0}


def slowloris():
    conns = []
    for _ in range(SLOW):
        try:
            s = connect("127.0.0.1", INJECT)
            s.sendall(b"POST /api/inject/v1 HTTP/1.1\r\n")
            conns.append(s)
            slow_stats["opened"] += 1
        except OSError:
            slow_stats["failed_connect"] += 1
    while time.time() < stop:
        time.sleep(5)
        alive = []
        for s in conns:
            try:
                s.sendall(b"X")
                s.setblocking(False)
                try:
                    data = s.recv(4096)
                    if data.startswith(b"HTTP/1.1 503"):
                        slow_stats["refused_503"] += 1
                    else:
                        slow_stats["closed_by_server"] += 1
                    s.close()
                    continue
                except BlockingIOError:
                    pass
                s.setblocking(True)
                alive.append(s)
            except OSError:
                slow_stats["closed_by_server"] += 1
        # A slowloris reopens what the server closed.
        while len(alive) < SLOW and time.time() < stop:
            try:
                s = connect("127.0.0.1", INJECT)
                s.sendall(b"POST /api/inject/v1 HTTP/1.1\r\n")
                alive.append(s)
                slow_stats["opened"] += 1
            except OSError:
                slow_stats["failed_connect"] += 1
                break
        conns = alive


results = {"inject": {}, "metrics": {}}


def count(kind, head):
    status = head[9:12].decode() or "no answer"
    results[kind][status] = results[kind].get(status, 0) + 1


def injector():
    body = json.dumps({"envelope_sender": "s@example.test",
                       "recipients": [{"email": "r@example.test"}],
                       "content": "Subject: x\r\n\r\nx\r\n"}).encode()
    req = b"POST /api/inject/v1 HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    while time.time() < stop:
        t = time.time()
        try:
            with connect("127.0.0.2", INJECT) as s:
                s.sendall(req)
                count("inject", answer(s))
        except OSError as e:
            count("inject", str(e).encode().rjust(12))
        time.sleep(max(0, 0.1 - (time.time() - t)))


def scraper():
    while time.time() < stop:
        try:
            with connect("127.0.0.3", METRICS) as s:
                s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                count("metrics", answer(s))
        except OSError as e:
            count("metrics", str(e).encode().rjust(12))
        time.sleep(1)


threads = [threading.Thread(target=f) for f in (slowloris, injector, scraper)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps({"slow_connections": SLOW, "seconds": SECONDS, "slow": slow_stats, **results}))
ok = set(results["inject"]) == {"200"} and set(results["metrics"]) == {"200"}
sys.exit(0 if ok else 1)
