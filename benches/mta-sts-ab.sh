#!/usr/bin/env bash
# What applying receivers' MTA-STS policies costs on the relay path: the
# same ringpost binary delivering to the recipients' MX host (not a
# smarthost), with tls.mta_sts off (A) and on (B), in alternating pairs
# through benches/loadtest.sh --ab (the shared harness, --mode external).
#
#   benches/mta-sts-ab.sh [--pairs N] [SCENARIO...]     (default 4, 20:10000:10240:1)
#
# The harness mails rcpt@example.test. Knot DNS on 127.0.0.1:5399 serves
# example.test: its MX is 127.0.0.1 (the harness's smtp-sink on 2626,
# delivery.remote_port), and it publishes `_mta-sts` with a policy in
# testing mode (smtp-sink offers no STARTTLS, so enforce could not
# deliver) at https://mta-sts.example.test/ (127.0.48.1:443, Python's
# http.server over TLS with a CA made here, trusted through tls.ca_file).
# B fetches the policy once, then every attempt looks it up in the
# shard's cache: the cost measured is that lookup (and the record looked
# at again every 5 minutes), the "cached policy" case.
#
# Needs root (port 443, the harness), knot, openssl, python3.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
PAIRS=4
SCENARIOS=()
while [ $# -gt 0 ]; do
    case $1 in
        --pairs) PAIRS=$2; shift ;;
        *) SCENARIOS+=("$1") ;;
    esac
    shift
done
[ ${#SCENARIOS[@]} -gt 0 ] || SCENARIOS=(20:10000:10240:1)
command -v knotd >/dev/null || { echo "needs knotd (Debian package knot)" >&2; exit 1; }
cargo build --release --bin ringpost

W=$(mktemp -d /tmp/ringpost-mta-sts-ab.XXXXXX)
PIDS=()
cleanup() { kill "${PIDS[@]}" 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT

# The policy host's CA and certificate.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj /CN=bench-ca -keyout "$W/ca.key" -out "$W/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -subj /CN=mta-sts.example.test -keyout "$W/host.key" -out "$W/host.csr" 2>/dev/null
printf 'subjectAltName=DNS:mta-sts.example.test\n' > "$W/ext"
openssl x509 -req -in "$W/host.csr" -CA "$W/ca.pem" -CAkey "$W/ca.key" -CAcreateserial \
    -days 2 -extfile "$W/ext" -out "$W/host.pem" 2>/dev/null
mkdir -p "$W/www/.well-known"
printf 'version: STSv1\r\nmode: testing\r\nmx: mx.example.test\r\nmax_age: 86400\r\n' \
    > "$W/www/.well-known/mta-sts.txt"
python3 - "$W" <<'EOF' &
import functools, http.server, ssl, sys
w = sys.argv[1]
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=f"{w}/www")
handler.log_message = lambda *a: None
server = http.server.ThreadingHTTPServer(("127.0.48.1", 443), handler)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(f"{w}/host.pem", f"{w}/host.key")
server.socket = ctx.wrap_socket(server.socket, server_side=True)
server.serve_forever()
EOF
PIDS+=($!)

# example.test's zone.
mkdir -p "$W/knot/db"
cat > "$W/knot/example.test.zone" <<'EOF'
$ORIGIN example.test.
$TTL 3600
@ SOA ns.example.test. hostmaster.example.test. 1 3600 600 86400 3600
@ NS ns.example.test.
ns A 127.0.0.1
@ MX 10 mx.example.test.
mx A 127.0.0.1
_mta-sts TXT "v=STSv1; id=bench1"
mta-sts A 127.0.48.1
EOF
cat > "$W/knot/knot.conf" <<EOF
server:
    listen: 127.0.0.1@5399
    rundir: $W/knot
database:
    storage: $W/knot/db
template:
  - id: default
    storage: $W/knot
zone:
  - domain: example.test
    file: example.test.zone
EOF
knotd -c "$W/knot/knot.conf" > "$W/knot/log" 2>&1 &
PIDS+=($!)
sleep 1
grep -q "\[example.test.\] loaded" "$W/knot/log" ||
    { echo "knotd did not serve example.test (127.0.0.1:5399 taken?):" >&2; cat "$W/knot/log" >&2; exit 1; }

# A and B: MX delivery through Knot; only tls.mta_sts differs.
for side in a b; do
    on=false; [ $side = b ] && on=true
    cat > "$W/$side.toml" <<EOF
[server]
hostname = "ringpost.bench.test"
[spool]
dir = "/var/tmp/ringpost-bench-spool"
[smtp]
listen = "127.0.0.1:2527"
[delivery]
remote_port = 2626
log = "off"
[dns]
nameservers = ["127.0.0.1:5399"]
[tls]
ca_file = "$W/ca.pem"
mta_sts = $on
EOF
done
BIN=target/release/ringpost
benches/loadtest.sh --ab "$BIN" "$BIN" --config "$W/a.toml" --config-b "$W/b.toml" \
    --pairs "$PAIRS" "${SCENARIOS[@]}"
