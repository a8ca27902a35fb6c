#!/usr/bin/env bash
# A bulk delete at scale: how long `ringpost queue delete SELECTOR` takes
# to remove a campaign from a full queue, and what reception gets while it
# runs.
#
#   benches/bulk-action.sh [QUEUED] [CAMPAIGN]     (default 200000 50000)
#
# smtp-source fills ringpost (127.0.0.1:2529) with QUEUED - CAMPAIGN
# messages from news@shop.test and CAMPAIGN from camp@shop.test (the
# "campaign", selected by --sender: the queue's index), relayed to an
# smtp-sink on 127.0.0.1:2728 that answers every RCPT with a 4xx, so all
# stay queued. Then, as one JSON line (also appended to
# benches/results/bulk-action.jsonl):
#   - dry_run_ms: `queue delete --sender ... --dry-run` wall time;
#   - delete_s, delete_msgs_per_s: `queue delete --sender ... --yes`;
#   - reception_alone_msgs_per_s, reception_during_msgs_per_s: smtp-source
#     (20 sessions, messages of 2 KiB, in steps of 2000) into the same
#     server, alone for ALONE_SECS (20) and for as long as the delete runs
#     (each once every queued message has had its first attempt);
#   - probe_alone_ms, probe_during_ms: one more client beside that load,
#     sending one message at a time over one session (Python smtplib):
#     p50 and p99 of a transaction's time (MAIL to the 250 after DATA);
#   - webhook_deletion_events: the Deletion events a webhook receiver
#     (`ringpost webhook-sink`, events = ["Deletion"]) took (must be
#     CAMPAIGN);
#   - bulk_cap: admin.bulk_messages_per_second (BULK_CAP, default 5000;
#     0: no cap).
#   - left_campaign, left_others: what the queue holds after (must be 0
#     and QUEUED - CAMPAIGN + what the loads and probes sent);
#   - kill: a second campaign of CAMPAIGN messages deleted with the server
#     killed (SIGKILL) KILL_AFTER (10) seconds in, restarted, and the same
#     command run again: deleted_before_kill + left_at_restart must be
#     CAMPAIGN, left_after_rerun 0, others_after = others_before.
#
# Needs smtp-source and smtp-sink (Debian package postfix) and a release
# build. Loopback only.
set -euo pipefail

QUEUED=${1:-200000}
CAMPAIGN=${2:-50000}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$ROOT/target/release/ringpost
WORK=${WORK:-/var/tmp/ringpost-bulk}
ADMIN=127.0.0.1:9467
ALONE_SECS=${ALONE_SECS:-20}
KILL_AFTER=${KILL_AFTER:-10}
BULK_CAP=${BULK_CAP:-5000}

export PATH=$PATH:/usr/sbin
for tool in smtp-source smtp-sink; do
  command -v $tool >/dev/null || { echo "needs $tool (apt-get install postfix)" >&2; exit 1; }
done
[ -x "$BIN" ] || (cd "$ROOT" && cargo build --release)

rm -rf "$WORK" && mkdir -p "$WORK"
cat > "$WORK/ringpost.toml" <<CONF
[server]
hostname = "ringpost.bulk.test"
[spool]
dir = "$WORK/spool"
[smtp]
listen = "127.0.0.1:2529"
[delivery]
smarthost = "[127.0.0.1]:2728"
log = "off"
retry_initial_secs = 3600
retry_max_secs = 3600
[metrics]
listen = "off"
[admin]
listen = "$ADMIN"
bulk_messages_per_second = $BULK_CAP
[[events.webhook]]
name = "app"
url = "http://127.0.0.1:2729/hooks"
events = ["Deletion"]
CONF

# One client, one message at a time, until $WORK/stop exists: p50, p99 (ms).
cat > "$WORK/probe.py" <<'PY'
import os, smtplib, sys, time
stop, lat = sys.argv[1], []
s = smtplib.SMTP("127.0.0.1", 2529)
s.ehlo("probe.test")
msg = "Subject: probe\r\n\r\n" + "x" * 2000 + "\r\n"
while not os.path.exists(stop):
    t = time.perf_counter()
    s.sendmail("probe@shop.test", ["rcpt@probe.test"], msg)
    lat.append((time.perf_counter() - t) * 1000)
s.quit()
lat.sort()
q = lambda p: round(lat[min(len(lat) - 1, int(p * len(lat)))], 2)
print(f'{{"n": {len(lat)}, "p50": {q(0.5)}, "p99": {q(0.99)}}}')
PY

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
smtp-sink -u nobody -r rcpt 127.0.0.1:2728 1024 >"$WORK/sink.log" 2>&1 &
PIDS+=($!)
"$BIN" webhook-sink --listen 127.0.0.1:2729 2>"$WORK/webhooks.log" &
PIDS+=($!)
serve() {
  RUST_LOG=warn "$BIN" serve --config "$WORK/ringpost.toml" 2>>"$WORK/ringpost.log" &
  SERVER=$!
  PIDS+=($SERVER)
}
serve

now() { date +%s.%N; }
field() { "$BIN" queue summary --json --admin $ADMIN 2>/dev/null | python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])" 2>/dev/null || echo -1; }
until [ "$(field messages)" -ge 0 ]; do sleep 0.1; done

smtp-source -s 20 -m $((QUEUED - CAMPAIGN)) -l 2048 -f news@shop.test -t rcpt@keep.test 127.0.0.1:2529
smtp-source -s 20 -m "$CAMPAIGN" -l 2048 -f camp@shop.test -t rcpt@spring.test 127.0.0.1:2529
until [ "$(field deferred)" -ge "$QUEUED" ]; do sleep 0.5; done

a=$(now)
"$BIN" queue delete --sender camp@shop.test --dry-run --admin $ADMIN | head -1
b=$(now)
dry_run_ms=$(python3 -c "print(round(($b-$a)*1000, 1))")

# Reception (20 sessions, steps of 2000 messages of 2 KiB) and the probe
# until $WORK/stop exists: the rate; the probe's p50/p99 go to $WORK/$2.
# Each starts once every message has had its first attempt, so that no
# earlier wave of attempts is measured with it.
settled() { until [ "$(field deferred)" -ge "$(field messages)" ]; do sleep 0.5; done; }
reception() {
  local a b n=0
  rm -f "$WORK/stop"
  python3 "$WORK/probe.py" "$WORK/stop" > "$WORK/$2" &
  local probe=$!
  a=$(now)
  while [ ! -e "$WORK/stop" ]; do
    smtp-source -s 20 -m 2000 -l 2048 -f "$1" -t rcpt@load.test 127.0.0.1:2529
    n=$((n + 2000))
  done
  b=$(now)
  wait $probe
  python3 -c "print(round($n / ($b - $a), 1))"
}
settled
reception load1@shop.test probe_alone > "$WORK/alone" &
LOADER=$!
sleep "$ALONE_SECS"; touch "$WORK/stop"; wait $LOADER
alone=$(cat "$WORK/alone")

settled
reception load2@shop.test probe_during > "$WORK/during" &
LOADER=$!
d0=$(now)
"$BIN" queue delete --sender camp@shop.test --yes --admin $ADMIN | tail -2
d1=$(now)
touch "$WORK/stop"
wait $LOADER
during=$(cat "$WORK/during")
# Every deleted message's Deletion event at the webhook receiver.
for _ in $(seq 120); do
  events=$(grep -o '^webhook-sink: [0-9]*' "$WORK/webhooks.log" | tail -1 | cut -d' ' -f2)
  [ "${events:-0}" -ge "$CAMPAIGN" ] && break
  sleep 0.5
done

count() { "$BIN" queue delete --sender "$1" --dry-run --json --admin $ADMIN | python3 -c "import json,sys; print(json.load(sys.stdin)['messages'])"; }
left_campaign=$(count camp@shop.test)
left_all=$(field messages)

# A second campaign of the same size, deleted with the server killed
# (SIGKILL) KILL_AFTER seconds in; after the restart the same command is
# run again: exactly the campaign must be gone, nothing else.
smtp-source -s 20 -m "$CAMPAIGN" -l 2048 -f camp2@shop.test -t rcpt@fall.test 127.0.0.1:2529
settled
before_kill=$(field messages)
"$BIN" queue delete --sender camp2@shop.test --yes --admin $ADMIN > "$WORK/killed-run" 2>&1 &
sleep "$KILL_AFTER"
kill -9 "$SERVER"
wait "$SERVER" 2>/dev/null || true
serve
until [ "$(field messages)" -ge 0 ]; do sleep 0.2; done
after_restart=$(field messages)
left_at_restart=$(count camp2@shop.test)
"$BIN" queue delete --sender camp2@shop.test --yes --admin $ADMIN | tail -1
after_rerun=$(field messages)
left_after_rerun=$(count camp2@shop.test)

line=$(python3 -c "
import json
d = $d1 - $d0
print(json.dumps({'date': '$(date -u +%FT%TZ)', 'queued': $QUEUED, 'campaign': $CAMPAIGN,
  'dry_run_ms': $dry_run_ms, 'delete_s': round(d, 2), 'delete_msgs_per_s': round($CAMPAIGN / d, 1),
  'reception_alone_msgs_per_s': $alone, 'reception_during_msgs_per_s': $during,
  'bulk_cap': $BULK_CAP, 'webhook_deletion_events': ${events:-0}, 'probe_alone_ms': $(cat "$WORK/probe_alone"), 'probe_during_ms': $(cat "$WORK/probe_during"),
  'left_campaign': $left_campaign, 'left_others': $left_all - $left_campaign,
  'kill': {'after_s': $KILL_AFTER, 'campaign': $CAMPAIGN, 'deleted_before_kill': $before_kill - $after_restart,
    'left_at_restart': $left_at_restart, 'left_after_rerun': $left_after_rerun,
    'others_before': $before_kill - $CAMPAIGN, 'others_after': $after_rerun - $left_after_rerun}}))")
echo "$line"
mkdir -p "$ROOT/benches/results"
echo "$line" >> "$ROOT/benches/results/bulk-action.jsonl"
