#!/usr/bin/env python3
"""Load for the HTTP injection API: N messages from T threads, SIZE bytes of
content each, one request per connection (`Connection: close`), or with
--keep-alive one connection per thread for all its requests.

Usage: python3 benches/inject-load.py [--keep-alive] N T SIZE [HOST:PORT]

Prints the messages answered 200, the rate, and the latency of a request
(connect to answer read) at p50 and p99. Start ringpost first, e.g. with
benches/relay-bench.toml and `smtp-sink -c 127.0.0.1:2626 1024` behind it
(the injection port is the default, 127.0.0.1:8025). Python's threads
are the limit well before ringpost is on 2 cores: compare runs, not
absolute numbers.
"""

import json
import socket
import sys
import threading
import time


def request(size, keep_alive):
    content = "Subject: bench\r\nFrom: s@example.test\r\n\r\n"
    content += ("x" * 76 + "\r\n") * (size // 78)
    body = json.dumps(
        {
            "envelope_sender": "s@example.test",
            "recipients": [{"email": "r@example.test"}],
            "content": content,
        }
    ).encode()
    connection = b"" if keep_alive else b"Connection: close\r\n"
    head = b"POST /api/inject/v1 HTTP/1.1\r\n%sContent-Length: %d\r\n\r\n" % (connection, len(body))
    return head + body


def client(addr, req, count, ok, latencies):
    for _ in range(count):
        start = time.perf_counter()
        with socket.create_connection(addr) as s:
            s.sendall(req)
            answer = b""
            while chunk := s.recv(4096):
                answer += chunk
        latencies.append(time.perf_counter() - start)
        if answer.startswith(b"HTTP/1.1 200"):
            ok.append(1)


def read_answer(f):
    """One answer from a kept-alive connection, read by its Content-Length."""
    status = f.readline()
    length = 0
    while (line := f.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    f.read(length)
    return status


def keep_alive_client(addr, req, count, ok, latencies):
    with socket.create_connection(addr) as s:
        f = s.makefile("rb")
        for _ in range(count):
            start = time.perf_counter()
            s.sendall(req)
            status = read_answer(f)
            latencies.append(time.perf_counter() - start)
            if status.startswith(b"HTTP/1.1 200"):
                ok.append(1)


def main():
    args = sys.argv[1:]
    keep_alive = "--keep-alive" in args
    args = [a for a in args if a != "--keep-alive"]
    if len(args) not in (3, 4):
        sys.exit(__doc__)
    n, threads, size = (int(a) for a in args[:3])
    host, port = (args[3] if len(args) == 4 else "127.0.0.1:8025").rsplit(":", 1)
    req = request(size, keep_alive)
    target = keep_alive_client if keep_alive else client
    ok, latencies = [], []
    workers = [
        threading.Thread(target=target, args=((host, int(port)), req, n // threads, ok, latencies))
        for _ in range(threads)
    ]
    start = time.time()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.time() - start
    latencies.sort()
    print(
        "injected %d/%d in %.2f s: %.0f msgs/s, p50 %.2f ms, p99 %.2f ms"
        % (
            len(ok),
            n // threads * threads,
            elapsed,
            len(ok) / elapsed,
            latencies[len(latencies) // 2] * 1e3,
            latencies[int(len(latencies) * 0.99)] * 1e3,
        )
    )


if __name__ == "__main__":
    main()
