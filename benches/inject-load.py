#!/usr/bin/env python3
"""Load for the HTTP injection API: N messages from T threads, one request
per connection (as the server answers), SIZE bytes of content each.

Usage: python3 benches/inject-load.py N T SIZE [HOST:PORT]

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


def request(size):
    content = "Subject: bench\r\nFrom: s@example.test\r\n\r\n"
    content += ("x" * 76 + "\r\n") * (size // 78)
    body = json.dumps(
        {
            "envelope_sender": "s@example.test",
            "recipients": [{"email": "r@example.test"}],
            "content": content,
        }
    ).encode()
    head = b"POST /api/inject/v1 HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body)
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


def main():
    if len(sys.argv) not in (4, 5):
        sys.exit(__doc__)
    n, threads, size = (int(a) for a in sys.argv[1:4])
    host, port = (sys.argv[4] if len(sys.argv) == 5 else "127.0.0.1:8025").rsplit(":", 1)
    req = request(size)
    ok, latencies = [], []
    workers = [
        threading.Thread(target=client, args=((host, int(port)), req, n // threads, ok, latencies))
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
