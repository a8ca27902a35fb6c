#!/usr/bin/env bash
# Queue at scale: fill ringpost's queue with N deferred messages and measure
# what an operator feels.
#
#   benches/queue-at-scale.sh [MESSAGES] [SIZE]      (default 100000 2048)
#
# smtp-source injects MESSAGES messages of SIZE body bytes over 20 sessions
# into ringpost on 127.0.0.1:2528, which relays to an smtp-sink on
# 127.0.0.1:2727 that answers every RCPT with a 4xx: each message is tried
# once, deferred for an hour, and stays queued. Then it reports, as one JSON
# line (also appended to benches/results/queue-at-scale.jsonl):
#   - inject_msgs_per_s: the injection rate, deferral included;
#   - rss_mib: ringpost's resident memory with the queue full;
#   - spool_mib: the spool's size on disk (du);
#   - summary_ms: `ringpost queue summary` wall time (median of 5);
#   - find_rcpt_of_all_ms, find_rcpt_of_none_ms: `ringpost queue find
#     --rcpt` wall time (median of 5) for the recipient of every message
#     (the newest 100 answered) and for one no message has;
#   - status_page_ms: `GET /status` wall time with curl (median of 5);
#   - restart_s: SIGTERM, start again, until `queue summary` answers with
#     every message (recovery + scheduler load + listener up).
#
# Needs smtp-source and smtp-sink (Debian package postfix) and a release
# build (cargo build --release). Loopback only.
set -euo pipefail

MESSAGES=${1:-100000}
SIZE=${2:-2048}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$ROOT/target/release/ringpost
WORK=${WORK:-/var/tmp/ringpost-scale}
ADMIN=127.0.0.1:9466

for tool in smtp-source smtp-sink; do
  command -v $tool >/dev/null || [ -x /usr/sbin/$tool ] || {
    echo "needs $tool (apt-get install postfix)" >&2
    exit 1
  }
done
export PATH=$PATH:/usr/sbin
[ -x "$BIN" ] || (cd "$ROOT" && cargo build --release)

rm -rf "$WORK" && mkdir -p "$WORK"
cat > "$WORK/ringpost.toml" <<EOF
[server]
hostname = "ringpost.scale.test"
[spool]
dir = "$WORK/spool"
[smtp]
listen = "127.0.0.1:2528"
[delivery]
smarthost = "[127.0.0.1]:2727"
log = "off"
retry_initial_secs = 3600
retry_max_secs = 3600
[metrics]
listen = "off"
[admin]
listen = "$ADMIN"
EOF

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

smtp-sink -u nobody -r rcpt 127.0.0.1:2727 1024 >"$WORK/sink.log" 2>&1 &
PIDS+=($!)

start_ringpost() {
  RUST_LOG=warn "$BIN" serve --config "$WORK/ringpost.toml" 2>>"$WORK/ringpost.log" &
  RP=$!
  PIDS+=($RP)
}

now() { date +%s.%N; }
summary_field() { "$BIN" queue summary --json --admin $ADMIN 2>/dev/null | python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])" 2>/dev/null || echo -1; }
queued() { summary_field messages; }

start_ringpost
until [ "$(queued)" -ge 0 ]; do sleep 0.1; done

t0=$(now)
smtp-source -s 20 -m "$MESSAGES" -l "$SIZE" -f sender@example.test -t rcpt@example.test 127.0.0.1:2528
t1=$(now)
# Every message must have had its first try and be deferred.
until [ "$(summary_field deferred)" -ge "$MESSAGES" ]; do sleep 0.5; done

rss_kib=$(awk '/VmRSS/ {print $2}' /proc/$RP/status)
spool_kib=$(du -sk "$WORK/spool" | cut -f1)
times=()
for _ in 1 2 3 4 5; do
  a=$(now); "$BIN" queue summary --admin $ADMIN >/dev/null; b=$(now)
  times+=("$(python3 -c "print(round(($b-$a)*1000, 1))")")
done
summary_ms=$(printf '%s\n' "${times[@]}" | sort -n | sed -n 3p)
# `queue find` (CLI start, admin API, every shard): the recipient every
# message has (the newest 100 of them), and one no message has.
median_ms() {
  local t=()
  for _ in 1 2 3 4 5; do
    a=$(now); "$BIN" queue find "$@" --admin $ADMIN >/dev/null; b=$(now)
    t+=("$(python3 -c "print(round(($b-$a)*1000, 1))")")
  done
  printf '%s\n' "${t[@]}" | sort -n | sed -n 3p
}
find_all_ms=$(median_ms --rcpt rcpt@example.test --limit 100)
find_none_ms=$(median_ms --rcpt nobody@example.test)
# The status page (every shard's overview, the age table walks the queue).
st=()
for _ in 1 2 3 4 5; do
  a=$(now); curl -s -o /dev/null "http://$ADMIN/status"; b=$(now)
  st+=("$(python3 -c "print(round(($b-$a)*1000, 1))")")
done
status_page_ms=$(printf '%s\n' "${st[@]}" | sort -n | sed -n 3p)
"$BIN" queue summary --admin $ADMIN | tail -3

kill -TERM $RP; wait $RP || true
r0=$(now)
start_ringpost
until [ "$(queued)" -ge "$MESSAGES" ]; do sleep 0.05; done
r1=$(now)
rss_after_kib=$(awk '/VmRSS/ {print $2}' /proc/$RP/status)

line=$(python3 -c "
import json
print(json.dumps({'date': '$(date -u +%FT%TZ)', 'messages': $MESSAGES, 'size': $SIZE,
  'inject_msgs_per_s': round($MESSAGES / ($t1 - $t0), 1),
  'rss_mib': round($rss_kib / 1024, 1), 'rss_after_restart_mib': round($rss_after_kib / 1024, 1),
  'spool_mib': round($spool_kib / 1024, 1), 'summary_ms': $summary_ms,
  'summary_runs_ms': [$(IFS=,; echo "${times[*]}")], 'restart_s': round($r1 - $r0, 2),
  'find_rcpt_of_all_ms': $find_all_ms, 'find_rcpt_of_none_ms': $find_none_ms,
  'status_page_ms': $status_page_ms}))")
echo "$line"
mkdir -p "$ROOT/benches/results"
echo "$line" >> "$ROOT/benches/results/queue-at-scale.jsonl"
