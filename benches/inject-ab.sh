#!/usr/bin/env bash
# HTTP injection, two ringpost binaries in alternating pairs (A B A B ...):
# each run starts the binary on benches/relay-bench.toml with a fresh spool
# and smtp-sink behind it, injects N messages of SIZE bytes from T threads
# with benches/inject-load.py (extra arguments, e.g. --keep-alive, go to
# it), and stops it.
#
#   benches/inject-ab.sh BIN_A BIN_B [PAIRS] [N T SIZE] [-- LOAD_ARGS...]
#
# Prints one line per run; compare the rates within one invocation.
set -euo pipefail
A=$1 B=$2 PAIRS=${3:-3} N=${4:-5000} T=${5:-20} SIZE=${6:-10240}
shift $(( $# < 6 ? $# : 6 ))
[[ "${1:-}" == "--" ]] && shift
HERE=$(cd "$(dirname "$0")" && pwd)
SPOOL=/var/tmp/ringpost-bench-spool
run() {
  local bin=$1; shift
  rm -rf "$SPOOL"
  local user=(); [[ $(id -u) == 0 ]] && user=(-u nobody)
  smtp-sink "${user[@]}" 127.0.0.1:2626 1024 >/dev/null & local sink=$!
  "$bin" serve --config "$HERE/relay-bench.toml" 2>/dev/null & local mta=$!
  for _ in $(seq 100); do curl -sf -o /dev/null http://127.0.0.1:9464/readyz && break; sleep 0.1; done
  printf '%s: ' "$(basename "$bin")"
  python3 "$HERE/inject-load.py" "$@" "$N" "$T" "$SIZE"
  kill "$mta"; wait "$mta" || true
  kill "$sink"; wait "$sink" 2>/dev/null || true
}
for _ in $(seq "$PAIRS"); do
  run "$A" "$@"
  run "$B" "$@"
done
