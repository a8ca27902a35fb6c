#!/usr/bin/env bash
# How much disk the spool holds for mail that waits, once the rest is
# delivered: N messages of SIZE bytes through ringpost to `ringpost sink`,
# which defers every 100th (retries an hour away, as for mail deferred for
# days), with compaction off and on.
#
#   benches/deferral-disk.sh [N] [SIZE]      (default 30000 10240)
#
# Needs smtp-source (Debian package postfix). Prints, for each run, the
# bytes queued (ringpost_queue_bytes), the segment files and the sled index
# on disk, every 10 s for 2 minutes after the deliveries, and appends the
# last line of each run to benches/results/deferral-disk.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-30000}
SIZE=${2:-10240}
BIN=target/release/ringpost
SPOOL=/var/tmp/ringpost-deferral-spool
export PATH=$PATH:/usr/sbin
cargo build --release --bin ringpost >/dev/null
mkdir -p benches/results

metric() { curl -s 127.0.0.1:9464/metrics | awk -v m="$1" '$1 == m {s += $2} END {printf "%d", s}'; }
bytes() { du -sb "$@" 2>/dev/null | awk '{s += $1} END {printf "%d", s}'; }

run() {
    local percent=$1
    rm -rf "$SPOOL"
    cat > /tmp/deferral-disk.toml <<EOF
[server]
hostname = "ringpost.bench.test"
[spool]
dir = "$SPOOL"
compact_below_percent = $percent
[smtp]
listen = "127.0.0.1:2527"
[inject]
listen = "off"
[delivery]
smarthost = "[127.0.0.1]:2626"
retry_initial_secs = 3600
retry_max_secs = 3600
log = "off"
EOF
    "$BIN" sink --listen 127.0.0.1:2626 --defer-every 100 --quiet 2>/dev/null &
    local sink=$!
    RUST_LOG=warn "$BIN" serve --config /tmp/deferral-disk.toml &
    local mta=$!
    trap 'kill $sink $mta 2>/dev/null || true' RETURN
    until (exec 3<>/dev/tcp/127.0.0.1/2527) 2>/dev/null; do sleep 0.1; done
    smtp-source -s 20 -m "$N" -l "$SIZE" -f a@b.example -t rcpt@x.example 127.0.0.1:2527
    local want=$((N - N / 100))
    until [ "$(metric ringpost_recipients_delivered_total)" -ge "$want" ]; do sleep 0.5; done
    local shards
    shards=$(ls -d "$SPOOL"/shard-* | wc -l)
    for t in 0 10 20 30 40 50 60 70 80 90 100 110 120; do
        local queued segments index
        queued=$(metric ringpost_queue_bytes)
        segments=$(bytes "$SPOOL"/shard-*/segments)
        index=$(bytes "$SPOOL"/shard-*/queue)
        local line="{\"messages\":$N,\"size\":$SIZE,\"compact_below_percent\":$percent,\"shards\":$shards,\"secs_after_delivery\":$t,\"queued_bytes\":$queued,\"segment_bytes_on_disk\":$segments,\"index_bytes_on_disk\":$index,\"limit\":$((3 * queued + 2 * shards * 16777216))}"
        echo "$line"
        [ "$t" = 120 ] && echo "$line" >> benches/results/deferral-disk.jsonl
        [ "$t" = 120 ] || sleep 10
    done
    kill $sink $mta 2>/dev/null || true
    wait $mta 2>/dev/null || true
}

run 0
run 50
