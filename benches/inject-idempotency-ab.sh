#!/usr/bin/env bash
# The cost of Idempotency-Key on HTTP injection: the Rust keep-alive client
# (benches/inject_load.rs) without keys (A) and with a key of its own on
# every request (B, INJECT_IDEMPOTENCY=1), alternating in one run, each
# run on a fresh spool (ringpost on benches/relay-bench.toml, smtp-sink
# behind it).
#
#   benches/inject-idempotency-ab.sh [PAIRS] [N] [C] [SIZE]   (defaults 4 10000 20 10240)
#
# Prints one line per run and the median ratio keyed/unkeyed.
set -euo pipefail
PAIRS=${1:-4} N=${2:-10000} C=${3:-20} SIZE=${4:-10240}
source "$(dirname "$0")/inject-bench-common.sh"
rate() { python3 -c "import json,sys; print(json.loads(sys.argv[1])['msgs_per_s'])" "$1"; }
RATIOS=()
for p in $(seq "$PAIRS"); do
  start; a=$(INJECT_IDEMPOTENCY=0 "$LOAD" 127.0.0.1:8025 "$C" "$N" "$SIZE"); stop
  start; b=$(INJECT_IDEMPOTENCY=1 "$LOAD" 127.0.0.1:8025 "$C" "$N" "$SIZE"); stop
  r=$(python3 -c "print(round($(rate "$b") / $(rate "$a"), 3))")
  RATIOS+=("$r")
  echo "pair $p: no key $(rate "$a") msg/s, keyed $(rate "$b") msg/s ($b), keyed/no key $r"
done
python3 -c "import statistics,sys; print('median keyed/no key', statistics.median(map(float, sys.argv[1:])))" "${RATIOS[@]}"
