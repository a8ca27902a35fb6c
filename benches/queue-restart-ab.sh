#!/usr/bin/env bash
# Restart, old build against new, on the queue benches/queue-at-scale.sh
# left behind:
#
#   benches/queue-at-scale.sh 1000000 2048      # fills /var/tmp/ringpost-scale
#   benches/queue-restart-ab.sh BIN_A BIN_B [PAIRS] [MESSAGES]
#
# Starts A, then B, PAIRS times (default 3) on the same spool, each until
# `queue summary` answers with every message (MESSAGES, default 1000000),
# and prints per start: restart_s (start to that answer), rss_mib then,
# rss_5s_mib five seconds later, and summary_ms (`queue summary` wall time,
# median of 5); then SIGTERM. The two builds must read the same spool
# format. No smtp-sink runs: queue-at-scale defers every message for an
# hour, so none is due. Loopback only.
set -euo pipefail

A=${1:?BIN_A}
B=${2:?BIN_B}
PAIRS=${3:-3}
MESSAGES=${4:-1000000}
WORK=${WORK:-/var/tmp/ringpost-scale}
ADMIN=127.0.0.1:9466
[ -f "$WORK/ringpost.toml" ] || {
  echo "no queue in $WORK: run benches/queue-at-scale.sh first" >&2
  exit 1
}

now() { date +%s.%N; }
queued() { "$1" queue summary --json --admin $ADMIN 2>/dev/null | python3 -c "import json,sys; print(json.load(sys.stdin)['messages'])" 2>/dev/null || echo -1; }
rss_mib() { awk '/VmRSS/ {print int($2 / 1024)}' "/proc/$1/status"; }

one() {
  local bin=$1 label=$2 a b p rss rss5 t=()
  a=$(now)
  RUST_LOG=warn "$bin" serve --config "$WORK/ringpost.toml" 2>>"$WORK/restart-ab.log" &
  p=$!
  until [ "$(queued "$bin")" -ge "$MESSAGES" ]; do sleep 0.05; done
  b=$(now)
  rss=$(rss_mib $p)
  sleep 5
  rss5=$(rss_mib $p)
  for _ in 1 2 3 4 5; do
    local x y
    x=$(now); "$bin" queue summary --admin $ADMIN >/dev/null; y=$(now)
    t+=("$(python3 -c "print(round(($y-$x)*1000, 1))")")
  done
  kill -TERM $p
  wait $p || true
  echo "$label restart_s $(python3 -c "print(round($b-$a, 2))") rss_mib $rss rss_5s_mib $rss5 summary_ms $(printf '%s\n' "${t[@]}" | sort -n | sed -n 3p)"
}

for _ in $(seq 1 "$PAIRS"); do
  one "$A" A
  one "$B" B
done
