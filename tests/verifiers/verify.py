"""Verifies ringpost's DKIM signatures with verifiers that share no code
with it: dkimpy (Python), Mail::DKIM (Perl; RSA only: Debian's version has
no Ed25519) and OpenDKIM (libopendkim, through opendkim-testmsg).

Run by tests/dkim.rs as
    unshare -nm python3 verify.py KEYS.json DIR
It must run in a new network and mount namespace: it brings up loopback,
puts a resolv.conf naming 127.0.0.1 over /etc/resolv.conf (in that mount
namespace only) and serves the keys of KEYS.json ({"sel._domainkey.dom":
"v=DKIM1; ..."}) from a DNS server on 127.0.0.1:53, so every verifier
finds the keys through its own ordinary DNS lookups.

Each message in DIR (*.eml) is split into one copy per DKIM-Signature
(the others removed: DKIM-Signature is never a signed field, so removing
one cannot change another's result) and each copy goes to every verifier
that knows its algorithm. Prints one JSON object: per verifier and
algorithm, the signatures checked and those that passed, and the files of
up to 10 that did not."""
import json
import os
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def namespace_dns(records):
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    conf = tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False)
    conf.write("nameserver 127.0.0.1\noptions attempts:1 timeout:2\n")
    conf.close()
    subprocess.run(["mount", "--bind", conf.name, "/etc/resolv.conf"], check=True)
    import dns_txt
    dns_txt.serve(records)


def split_signatures(raw):
    """[(algorithm, message with only that signature)]"""
    end = raw.find(b"\r\n\r\n")
    head, body = (raw, b"") if end < 0 else (raw[: end + 2], raw[end + 2:])
    fields = re.findall(rb"[^\r\n]*\r\n(?:[ \t][^\r\n]*\r\n)*", head)
    sigs = [i for i, f in enumerate(fields) if f.lower().startswith(b"dkim-signature:")]
    out = []
    for i in sigs:
        m = re.search(rb"\ba=([a-z0-9-]+)", re.sub(rb"\s+", b"", fields[i]).replace(b";", b"; "))
        algo = m.group(1).decode() if m else "?"
        kept = b"".join(f for j, f in enumerate(fields) if j == i or j not in sigs)
        out.append((algo, kept + body))
    return out


def main():
    records = {k.lower(): v for k, v in json.load(open(sys.argv[1])).items()}
    msg_dir = sys.argv[2]
    namespace_dns(records)
    import dkim

    work = tempfile.mkdtemp()
    results = {}

    def tally(verifier, algo, ok, path):
        r = results.setdefault(verifier, {}).setdefault(algo, {"checked": 0, "passed": 0, "failed": []})
        r["checked"] += 1
        if ok:
            r["passed"] += 1
        elif len(r["failed"]) < 10:
            r["failed"].append(path)

    rsa_copies = []
    names = sorted(n for n in os.listdir(msg_dir) if n.endswith(".eml"))
    for name in names:
        raw = open(os.path.join(msg_dir, name), "rb").read()
        copies = split_signatures(raw)
        if not copies:
            tally("none", "unsigned", False, name)
        for n, (algo, copy) in enumerate(copies):
            path = os.path.join(work, "%s.%d.%s" % (name, n, algo))
            with open(path, "wb") as f:
                f.write(copy)
            try:
                ok = dkim.verify(copy)
            except Exception:
                ok = False
            tally("dkimpy", algo, ok, path)
            p = subprocess.run(["opendkim-testmsg"], input=copy, capture_output=True)
            tally("opendkim", algo, p.returncode == 0 and not p.stdout and not p.stderr, path)
            if algo == "rsa-sha256":
                rsa_copies.append(path)
    p = subprocess.run(
        ["perl", os.path.join(HERE, "verify.pl")],
        input="\n".join(rsa_copies) + "\n",
        capture_output=True,
        text=True,
        check=True,
    )
    for line in p.stdout.splitlines():
        path, result = line.split("\t")[:2]
        tally("mail-dkim", "rsa-sha256", result == "pass", path)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
