#!/usr/bin/env python3
"""The receiving side of benches/soak-all.py: an SMTP server on loopback
that answers by recipient domain as real receivers do, and records every
transaction, independent of ringpost's code.

    soak_sink.py PORT DIR ADDRESS...

listening on PORT at each loopback ADDRESS (a receiver of its own per
domain, so that each is a site of its own to the sender).

By recipient domain:
  bounce.soak    550 5.1.1 at RCPT (an unknown user: InvalidRecipient,
                 the recipient is suppressed)
  block.soak     554 5.7.1 at RCPT (a blocklist text: SpamBlock)
  defer.soak     451 4.3.0 after the data the first time a recipient is
                 seen, 250 after
  throttle.soak  421 4.7.28 after the data, and the connection closed
                 (RateLimited), to every message over 10 in the same
                 second: a receiver that enforces its rate
  anything else  250

DIR/sink.jsonl gets one line per transaction that reached the end of its
data: {"t", "t_mail" (when its MAIL FROM came: the attempt was under way
since), "peer" (the sending address), "from", "rcpts", "code", "id"
(the X-Ringpost-Id header), "file"}; a 250's message is kept as
DIR/msgs/N.eml (for the DKIM check). Lines are written before the
reply, so nothing answered is missing from the record.
"""
import json
import os
import socket
import sys
import threading
import time

PORT = int(sys.argv[1])
DIR = sys.argv[2]
os.makedirs(os.path.join(DIR, "msgs"), exist_ok=True)
LOG = open(os.path.join(DIR, "sink.jsonl"), "a")
LOCK = threading.Lock()
SEEN_DEFER = set()
COUNT = [0]
THROTTLE_RATE = 10
THROTTLE_SECOND = [0, 0]  # the second, messages taken in it


def domain(rcpt):
    return rcpt.rsplit("@", 1)[-1].lower()


def record(peer, sender, rcpts, code, data, t_mail):
    msg_id = None
    head = data.split(b"\r\n\r\n", 1)[0]
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"x-ringpost-id:"):
            msg_id = line.split(b":", 1)[1].strip().decode()
    with LOCK:
        COUNT[0] += 1
        name = None
        if code == 250:
            name = f"{COUNT[0]}.eml"
            with open(os.path.join(DIR, "msgs", name), "wb") as f:
                f.write(data)
        LOG.write(json.dumps({"t": time.time(), "t_mail": t_mail, "peer": peer, "from": sender, "rcpts": rcpts,
                              "code": code, "id": msg_id, "file": name}) + "\n")
        LOG.flush()


def answer_data(rcpts):
    doms = {domain(r) for r in rcpts}
    if "throttle.soak" in doms:
        with LOCK:
            now = int(time.time())
            if THROTTLE_SECOND[0] != now:
                THROTTLE_SECOND[:] = [now, 0]
            THROTTLE_SECOND[1] += 1
            over = THROTTLE_SECOND[1] > THROTTLE_RATE
        if over:
            return 421, b"421 4.7.28 Rate limited, slow down please\r\n"
    if "defer.soak" in doms:
        with LOCK:
            fresh = [r for r in rcpts if r not in SEEN_DEFER]
            SEEN_DEFER.update(rcpts)
        if fresh:
            return 451, b"451 4.3.0 Temporary failure, try again later\r\n"
    return 250, b"250 2.0.0 Ok: queued\r\n"


def read_data(f):
    lines = []
    while True:
        line = f.readline(1 << 16)
        if not line:
            return None
        if line in (b".\r\n", b".\n"):
            return b"".join(lines)
        if line.startswith(b".."):
            line = line[1:]
        lines.append(line)


def session(conn, peer):
    conn.settimeout(120)
    f = conn.makefile("rb")
    w = conn.makefile("wb")
    sender, rcpts, t_mail = "", [], None

    def say(text):
        w.write(text)
        w.flush()

    say(b"220 sink.soak ESMTP\r\n")
    while True:
        line = f.readline(4096)
        if not line:
            return
        cmd = line.decode("latin-1").strip()
        up = cmd.upper()
        if up.startswith("EHLO"):
            say(b"250-sink.soak\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 104857600\r\n")
        elif up.startswith("HELO") or up in ("RSET", "NOOP"):
            sender, rcpts = "", []
            say(b"250 2.0.0 Ok\r\n")
        elif up.startswith("MAIL FROM:"):
            sender, rcpts = cmd[10:].split()[0].strip("<>") if cmd[10:].strip() else "", []
            t_mail = time.time()
            say(b"250 2.1.0 Ok\r\n")
        elif up.startswith("RCPT TO:"):
            rcpt = cmd[8:].split()[0].strip("<>")
            d = domain(rcpt)
            if d == "bounce.soak":
                say(b"550 5.1.1 <" + rcpt.encode() + b">: Recipient address rejected: User unknown\r\n")
            elif d == "block.soak":
                say(b"554 5.7.1 Service unavailable; Client host [" + peer.encode()
                    + b"] blocked using zen.spamhaus.org\r\n")
            else:
                rcpts.append(rcpt)
                say(b"250 2.1.5 Ok\r\n")
        elif up == "DATA":
            if not rcpts:
                say(b"554 5.5.1 No valid recipients\r\n")
                continue
            say(b"354 End data with <CR><LF>.<CR><LF>\r\n")
            data = read_data(f)
            if data is None:
                return
            code, reply = answer_data(rcpts)
            record(peer, sender, rcpts, code, data, t_mail)
            say(reply)
            sender, rcpts = "", []
            if code == 421:
                return
        elif up == "QUIT":
            say(b"221 2.0.0 Bye\r\n")
            return
        else:
            say(b"502 5.5.2 Error: command not recognized\r\n")


def serve(conn, peer):
    try:
        session(conn, peer)
    except (OSError, ValueError):
        pass
    finally:
        conn.close()


def listen(address):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((address, PORT))
    listener.listen(512)
    while True:
        conn, addr = listener.accept()
        threading.Thread(target=serve, args=(conn, addr[0]), daemon=True).start()


for address in sys.argv[3:]:
    threading.Thread(target=listen, args=(address,), daemon=True).start()
while True:
    time.sleep(3600)
