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
#     (20 sessions, 20000 messages of 2 KiB) into the same server, alone
#     and while the delete runs (the delete starts with it);
#   - left_campaign, left_others: what the queue holds after (must be 0
#     and QUEUED - CAMPAIGN + 2 x 20000).
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
LOAD=20000

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
CONF

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
smtp-sink -u nobody -r rcpt 127.0.0.1:2728 1024 >"$WORK/sink.log" 2>&1 &
PIDS+=($!)
RUST_LOG=warn "$BIN" serve --config "$WORK/ringpost.toml" 2>>"$WORK/ringpost.log" &
PIDS+=($!)

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

reception() {
  local a b
  a=$(now)
  smtp-source -s 20 -m $LOAD -l 2048 -f "$1" -t rcpt@load.test 127.0.0.1:2529
  b=$(now)
  python3 -c "print(round($LOAD / ($b - $a), 1))"
}
alone=$(reception load1@shop.test)

reception load2@shop.test > "$WORK/during" &
LOADER=$!
d0=$(now)
"$BIN" queue delete --sender camp@shop.test --yes --admin $ADMIN | tail -2
d1=$(now)
wait $LOADER
during=$(cat "$WORK/during")

left_campaign=$("$BIN" queue delete --sender camp@shop.test --dry-run --json --admin $ADMIN | python3 -c "import json,sys; print(json.load(sys.stdin)['messages'])")
left_all=$(field messages)

line=$(python3 -c "
import json
d = $d1 - $d0
print(json.dumps({'date': '$(date -u +%FT%TZ)', 'queued': $QUEUED, 'campaign': $CAMPAIGN,
  'dry_run_ms': $dry_run_ms, 'delete_s': round(d, 2), 'delete_msgs_per_s': round($CAMPAIGN / d, 1),
  'reception_alone_msgs_per_s': $alone, 'reception_during_msgs_per_s': $during,
  'left_campaign': $left_campaign, 'left_others': $left_all - $left_campaign}))")
echo "$line"
mkdir -p "$ROOT/benches/results"
echo "$line" >> "$ROOT/benches/results/bulk-action.jsonl"
