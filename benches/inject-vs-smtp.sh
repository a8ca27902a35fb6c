#!/usr/bin/env bash
# HTTP injection (keep-alive, the Rust client benches/inject_load.rs)
# against SMTP (smtp-source) at the same load, alternating in one run:
# each run starts ringpost on benches/relay-bench.toml with a fresh spool
# and smtp-sink behind it, sends N messages of SIZE bytes over C
# connections/sessions, and stops it.
#
#   benches/inject-vs-smtp.sh [PAIRS] [N] [C] [SIZE]      (defaults 4 10000 20 10240)
#
# Prints one line per run and the median ratio injection/SMTP.
set -euo pipefail
PAIRS=${1:-4} N=${2:-10000} C=${3:-20} SIZE=${4:-10240}
source "$(dirname "$0")/inject-bench-common.sh"
smtp_rate() {
  local t0 t1
  t0=$(date +%s.%N)
  smtp-source -s "$C" -m "$N" -l "$SIZE" -f s@example.test -t r@example.test 127.0.0.1:2527
  t1=$(date +%s.%N)
  python3 -c "print(round($N / ($t1 - $t0), 1))"
}
RATIOS=()
for p in $(seq "$PAIRS"); do
  start; s=$(smtp_rate); stop
  start; line=$("$LOAD" 127.0.0.1:8025 "$C" "$N" "$SIZE"); stop
  h=$(python3 -c "import json,sys; print(json.loads(sys.argv[1])['msgs_per_s'])" "$line")
  r=$(python3 -c "print(round($h / $s, 3))")
  RATIOS+=("$r")
  echo "pair $p: smtp $s msg/s, injection $h msg/s ($line), injection/smtp $r"
done
python3 -c "import statistics,sys; print('median injection/smtp', statistics.median(map(float, sys.argv[1:])))" "${RATIOS[@]}"
