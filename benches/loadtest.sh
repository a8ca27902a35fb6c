#!/usr/bin/env bash
# ringpost against Postfix on the same loopback load, the fair way: the
# shared harness (../shared/bench/postfix-baseline.sh --mode both) runs
# both MTAs alternately in every repeat against the same smtp-sink.
#
#   benches/loadtest.sh [SCENARIO...]
#       ringpost (release build) vs Postfix; writes, under benches/results/,
#       DATE-loadtest.jsonl (the harness's JSON lines, then the latency
#       line), DATE-loadtest.md (the ratio table) and DATE-loadtest.png (the
#       ratios and CPU per message as a chart; also copied to
#       benches/results/latest-loadtest.png, which the README shows).
#       After the harness's two columns, the same scenarios through the
#       relay floor (benches/relay_floor.rs: a store-and-forward relay that
#       does nothing else, in memory, on io_uring like ringpost), a third
#       column: ringpost's e2e as a share of what a relay reaches here.
#
#   benches/loadtest.sh --ab BIN_A BIN_B [--pairs N] [--config FILE] [SCENARIO...]
#       two ringpost binaries (or one binary with two configs: --config-b
#       FILE) against each other, in alternating pairs A B A B ... (default
#       4 pairs), each run through the same harness (--mode external).
#       Writes DATE-ab.jsonl and prints B/A per pair and the median.
#
# Default scenarios:
#   20:10000:10240:1  20:2000:102400:1  1:3000:1024:1  20:10000:1024:10
#   20:10000:1024:1:reuse
#
# ringpost runs with benches/relay-bench.toml (listen 127.0.0.1:2527,
# relay everything to the sink at 127.0.0.1:2626, spool in /var/tmp like
# Postfix's queue). In the Postfix mode, benches/accept_latency.rs then
# measures the time from end of DATA to 250 at 20 sessions.
#
# Needs root (the harness installs postfix and makes a cgroup), an idle
# machine, python3 with matplotlib for the chart, and about 20-30 minutes on
# 2 cores for the five scenarios.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
HARNESS=${HARNESS:-../shared/bench/postfix-baseline.sh}
BIN=target/release/ringpost
CONFIG=benches/relay-bench.toml
STAMP=$(date -u +%F-%H%M)
AB=0 PAIRS=4 BIN_A= BIN_B= CONFIG_B=
SCENARIOS=()
while [ $# -gt 0 ]; do
    case $1 in
        --ab) AB=1; BIN_A=$2; BIN_B=$3; shift 2 ;;
        --pairs) PAIRS=$2; shift ;;
        --config) CONFIG=$2; shift ;;
        --config-b) CONFIG_B=$2; shift ;;
        *) SCENARIOS+=("$1") ;;
    esac
    shift
done
[ ${#SCENARIOS[@]} -gt 0 ] || SCENARIOS=(20:10000:10240:1 20:2000:102400:1 1:3000:1024:1 20:10000:1024:10 20:10000:1024:1:reuse)
[ -x "$HARNESS" ] || { echo "harness not found: $HARNESS" >&2; exit 1; }
mkdir -p benches/results
mta_cmd() { echo "rm -rf /var/tmp/ringpost-bench-spool; RUST_LOG=warn $1 serve --config $2"; }

if [ "$AB" = 1 ]; then
    OUT=benches/results/$STAMP-ab.jsonl
    CONFIG_B=${CONFIG_B:-$CONFIG}
    echo "# $(date -u +%FT%TZ) A=$BIN_A ($CONFIG) B=$BIN_B ($CONFIG_B) pairs=$PAIRS ${SCENARIOS[*]}" > "$OUT"
    for pair in $(seq 1 "$PAIRS"); do
        for side in A B; do
            if [ $side = A ]; then cmd=$(mta_cmd "$BIN_A" "$CONFIG"); else cmd=$(mta_cmd "$BIN_B" "$CONFIG_B"); fi
            "$HARNESS" --mode external --name "$side" --repeat 1 --no-control --mta-cmd "$cmd" "${SCENARIOS[@]}" |
                sed "s/^{/{\"pair\":$pair,/" | tee -a "$OUT"
        done
    done
    python3 - "$OUT" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith('{')]
key = lambda r: f"{r['sessions']}:{r['msgs']}:{r['size']}:{r['rcpts']}" + (':reuse' if r['conn'] == 'reuse' else '')
for scenario in dict.fromkeys(key(r) for r in rows):
    runs = {}
    for r in rows:
        if key(r) == scenario:
            runs.setdefault(r['pair'], {})[r['mta']] = r
    pairs = [p for p in runs.values() if 'A' in p and 'B' in p]
    for field, label in [('e2e_msgs_per_s', 'e2e msg/s'), ('mta_cpu_us_per_msg', 'CPU us/msg')]:
        ratios = [p['B'][field] / p['A'][field] for p in pairs]
        a = [p['A'][field] for p in pairs]
        b = [p['B'][field] for p in pairs]
        print(f"{scenario} {label}: A {a}, B {b}; B/A per pair "
              f"{[round(x, 3) for x in ratios]}, median {statistics.median(ratios):.3f}")
EOF
    exit 0
fi

OUT=benches/results/$STAMP-loadtest
(cargo build --release --bin ringpost && cargo bench --no-run --bench accept_latency --bench relay_floor)
FLOOR=$(ls -t target/release/deps/relay_floor-* | grep -v '\.d$' | head -1)
CMD=$(mta_cmd "$BIN" "$CONFIG")
echo "# $(date -u +%FT%TZ) $HARNESS --mode both --name ringpost --mta-cmd '$CMD' ${SCENARIOS[*]}" > "$OUT.jsonl"
"$HARNESS" --mode both --name ringpost --mta-cmd "$CMD" "${SCENARIOS[@]}" | tee -a "$OUT.jsonl"
# The relay floor, the same scenarios through the same harness.
"$HARNESS" --mode external --name floor --no-control --mta-cmd "$FLOOR" "${SCENARIOS[@]}" | tee -a "$OUT.jsonl"

# Acceptance latency under the same relay setup.
export PATH=$PATH:/usr/sbin
rm -rf /var/tmp/ringpost-bench-spool
smtp-sink -u nobody -c 127.0.0.1:2626 1024 >/dev/null 2>&1 &
SINK=$!
RUST_LOG=warn "$BIN" serve --config "$CONFIG" 2>/dev/null &
MTA=$!
trap 'kill $SINK $MTA 2>/dev/null || true' EXIT
until (exec 3<>/dev/tcp/127.0.0.1/2527) 2>/dev/null; do sleep 0.1; done
cargo bench --bench accept_latency -- 127.0.0.1:2527 20 10000 10240 | tee -a "$OUT.jsonl"

python3 benches/loadtest-report.py "$OUT.jsonl" "$OUT.md" "$OUT.png"
cp "$OUT.png" benches/results/latest-loadtest.png
cat "$OUT.md"
