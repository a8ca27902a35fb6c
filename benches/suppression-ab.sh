#!/usr/bin/env bash
# The cost of the suppression check at reception: the shared harness's
# relay scenario (default 20:10000:10240:1) in alternating pairs, A with
# an empty suppression list, B with N entries (default 1,000,000, imported
# once with `ringpost suppression import` and kept under
# /var/tmp/ringpost-bench-suppressions-N). Every recipient is looked up
# (scope * and the sender's domain); none is suppressed.
#
#   benches/suppression-ab.sh [N] [PAIRS] [SCENARIO...]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000000}; [ $# -gt 0 ] && shift
PAIRS=${1:-4}; [ $# -gt 0 ] && shift
BIN=${RINGPOST_BIN:-target/release/ringpost}
FULL=/var/tmp/ringpost-bench-suppressions-$N
EMPTY=/var/tmp/ringpost-bench-suppressions-empty
cargo build --release --bin ringpost
if [ ! -f "$FULL/.complete" ]; then
    rm -rf "$FULL" /var/tmp/ringpost-bench-fill
    CSV=/var/tmp/ringpost-bench-suppressions-$N.csv
    python3 -c "
import sys
n = int(sys.argv[1])
with open(sys.argv[2], 'w') as f:
    f.write('address,scope,reason\n')
    for i in range(n):
        f.write(f'user{i}@bulk{i % 997}.example,{\"*\" if i % 4 else \"news.example\"},InvalidRecipient\n')
" "$N" "$CSV"
    printf '[spool]\ndir = "/var/tmp/ringpost-bench-fill"\n[smtp]\nlisten = "127.0.0.1:2599"\n[inject]\nlisten = "off"\n[metrics]\nlisten = "off"\n[admin]\nlisten = "127.0.0.1:9599"\n[delivery]\nlog = "off"\n[suppression]\npath = "%s"\n' "$FULL" > /var/tmp/ringpost-bench-fill.toml
    RUST_LOG=warn "$BIN" serve --config /var/tmp/ringpost-bench-fill.toml & FILL=$!
    until (exec 3<>/dev/tcp/127.0.0.1/9599) 2>/dev/null; do sleep 0.1; done
    start=$(date +%s.%N)
    "$BIN" suppression --admin 127.0.0.1:9599 import "$CSV"
    echo "imported $N in $(echo "$(date +%s.%N) - $start" | bc) s"
    kill "$FILL"; wait "$FILL" || true
    du -sh "$FULL"
    touch "$FULL/.complete"
fi
rm -rf "$EMPTY"
mkdir -p /var/tmp/ringpost-bench-suppr
for side in empty full; do
    dir=$EMPTY; [ $side = full ] && dir=$FULL
    { cat benches/relay-bench.toml; printf '\n[suppression]\npath = "%s"\n' "$dir"; } > /var/tmp/ringpost-bench-suppr/$side.toml
done
benches/loadtest.sh --ab "$BIN" "$BIN" --pairs "$PAIRS" \
    --config /var/tmp/ringpost-bench-suppr/empty.toml \
    --config-b /var/tmp/ringpost-bench-suppr/full.toml "${@:-20:10000:10240:1}"
