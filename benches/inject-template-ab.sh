#!/usr/bin/env bash
# Templated injection against single-recipient injection (issue 33): the
# Rust keep-alive client (benches/inject_load.rs) posting N single-
# recipient messages over C connections (A), then N messages as requests
# of R recipients each with values of its own, rendered by ringpost into
# one message per recipient (B, INJECT_TEMPLATE_RCPTS=R, over CT
# connections), alternating in one run, each run on a fresh spool
# (ringpost on benches/relay-bench.toml, smtp-sink behind it). The rate is
# messages answered 200 (on disk) per second.
#
#   benches/inject-template-ab.sh [PAIRS] [N] [C] [R] [CT] [SIZE]   (defaults 4 10000 20 1000 2 10240)
#
# Prints one line per run and the median ratio templated/single.
set -euo pipefail
PAIRS=${1:-4} N=${2:-10000} C=${3:-20} R=${4:-1000} CT=${5:-2} SIZE=${6:-10240}
source "$(dirname "$0")/inject-bench-common.sh"
rate() { python3 -c "import json,sys; print(json.loads(sys.argv[1])['msgs_per_s'])" "$1"; }
RATIOS=()
for p in $(seq "$PAIRS"); do
  start; a=$("$LOAD" 127.0.0.1:8025 "$C" "$N" "$SIZE"); stop
  start; b=$(INJECT_TEMPLATE_RCPTS=$R "$LOAD" 127.0.0.1:8025 "$CT" "$N" "$SIZE"); stop
  r=$(python3 -c "print(round($(rate "$b") / $(rate "$a"), 3))")
  RATIOS+=("$r")
  echo "pair $p: single $(rate "$a") msg/s ($a); templated x$R $(rate "$b") msg/s ($b); templated/single $r"
done
python3 -c "import statistics,sys; print('median templated/single', statistics.median(map(float, sys.argv[1:])))" "${RATIOS[@]}"
