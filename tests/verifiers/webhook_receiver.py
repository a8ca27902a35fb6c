#!/usr/bin/env python3
"""A webhook receiver for the tests, independent of ringpost's code.

Usage: webhook_receiver.py PORT SECRET_FILE EVENTS_OUT [CERT KEY]

With CERT and KEY (PEM files) it serves HTTPS.

POST /hook: checks X-Ringpost-Signature (sha256=HEX) with Python's hmac
against the first line of SECRET_FILE, then answers as the current mode
says. Only when it answers 2xx are the batch's events appended to
EVENTS_OUT, one JSON object per line.

GET /mode/ok|fail500|slow|refuse400|refuse404|poison:TEXT: sets the mode
(slow: sleeps 30 s before a 200, longer than the sender's timeout;
refuse400, refuse404: that status to every batch, as a receiver that is
being deployed; poison:TEXT: a 400 to every batch with an event whose
JSON contains TEXT, the rest taken).
GET /stats: {"requests", "bad_signatures", "events", "taken"} as JSON.
"""
import hashlib
import hmac
import json
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT = int(sys.argv[1])
with open(sys.argv[2]) as f:
    SECRET = f.readline().strip().encode()
OUT = open(sys.argv[3], "a")
LOCK = threading.Lock()
STATE = {"mode": "ok", "requests": 0, "bad_signatures": 0, "events": 0, "taken": 0}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, code, body=b""):
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path.startswith("/mode/"):
            with LOCK:
                STATE["mode"] = self.path[len("/mode/"):]
            return self.answer(200, b"ok")
        if self.path == "/stats":
            with LOCK:
                return self.answer(200, json.dumps(STATE).encode())
        self.answer(404)

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        want = "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()
        got = self.headers.get("X-Ringpost-Signature", "")
        with LOCK:
            STATE["requests"] += 1
            mode = STATE["mode"]
            if not hmac.compare_digest(want, got):
                STATE["bad_signatures"] += 1
                return self.answer(401)
        if mode == "fail500":
            return self.answer(500)
        if mode == "refuse400":
            return self.answer(400)
        if mode == "refuse404":
            return self.answer(404)
        if mode.startswith("poison:"):
            text = mode[len("poison:"):]
            if any(text in json.dumps(e) for e in json.loads(body)):
                return self.answer(400)
        if mode == "slow":
            time.sleep(30)
        events = json.loads(body)
        with LOCK:
            for e in events:
                OUT.write(json.dumps(e) + "\n")
            OUT.flush()
            STATE["events"] += len(events)
            STATE["taken"] += 1
        self.answer(200, b"ok")


ThreadingHTTPServer.daemon_threads = True
server = ThreadingHTTPServer(("127.0.0.1", PORT), Handler)
if len(sys.argv) > 5:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(sys.argv[4], sys.argv[5])
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
server.serve_forever()
