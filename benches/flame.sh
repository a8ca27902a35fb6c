#!/usr/bin/env bash
# Where ringpost's CPU goes under one harness scenario: a perf profile of
# the running relay, drawn as a flame graph, and the share of each part of
# the data path (issue 34 point 2).
#
#   benches/flame.sh SCENARIO [SECONDS]      e.g. 20:10000:1024:1:reuse 8
#
# Starts smtp-sink (127.0.0.1:2626) and ringpost on benches/relay-bench.toml
# (or $FLAME_CONFIG; a fresh spool), sends the scenario with smtp-source as the shared harness
# does (S sessions, N messages of SIZE bytes to R recipients; `reuse` keeps
# each session's connection; repeated until the sample ends), and samples ringpost with `perf record -e
# cpu-clock` (the event this VM has) for SECONDS once the load is running.
# Writes benches/results/flame-DATE-SCENARIO.svg and prints the table of
# shares (the same rows go to benches/results/flame-DATE-SCENARIO.txt).
#
# FLAME_BIN profiles another build (default target/release/ringpost) and
# FLAME_LABEL is added to the output names (e.g. before, after).
#
# Needs perf, smtp-source and smtp-sink (Debian: linux-perf, postfix),
# inferno (`cargo install inferno`) and a release build. Loopback only.
set -euo pipefail

SCENARIO=${1:?usage: benches/flame.sh SCENARIO [SECONDS]}
SECONDS_SAMPLED=${2:-8}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${FLAME_BIN:-$ROOT/target/release/ringpost}
OUT=$ROOT/benches/results
WORK=$(mktemp -d /tmp/ringpost-flame.XXXXXX)
export PATH=$PATH:/usr/sbin:$HOME/.cargo/bin

IFS=: read -r sessions msgs size rcpts conn <<<"$SCENARIO"
for tool in perf smtp-source smtp-sink inferno-collapse-perf inferno-flamegraph; do
  command -v $tool >/dev/null || { echo "needs $tool" >&2; exit 1; }
done
[ -x "$BIN" ] || (cd "$ROOT" && cargo build --release)

PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$WORK" /var/tmp/ringpost-bench-spool
}
trap cleanup EXIT

rm -rf /var/tmp/ringpost-bench-spool
smtp-sink -c -u nobody -h sink.example.test -m 1024 127.0.0.1:2626 1024 >"$WORK/sink.log" 2>&1 &
PIDS+=($!)
RUST_LOG=warn "$BIN" serve --config "${FLAME_CONFIG:-$ROOT/benches/relay-bench.toml}" 2>"$WORK/ringpost.log" &
RP=$!
PIDS+=($RP)
for _ in $(seq 100); do
  (exec 3<>/dev/tcp/127.0.0.1/2527) 2>/dev/null && break
  sleep 0.1
done

# The harness's smtp-source arguments (../shared/bench/postfix-baseline.sh).
args=(-s "$sessions" -m "$msgs" -l "$size" -r "$rcpts" -M client.example.test
  -f sender@example.test -t rcpt@example.test)
[ "${conn:-new}" = reuse ] && args+=(-d)

# The scenario again and again, so the load outlasts the sample.
(while :; do smtp-source "${args[@]}" 127.0.0.1:2527 || exit; done) &
SRC=$!
PIDS+=($SRC)
sleep 1
perf record -q -F 499 -e cpu-clock --call-graph dwarf,16384 -p "$RP" \
  -o "$WORK/perf.data" -- sleep "$SECONDS_SAMPLED" 2>/dev/null
kill "$SRC" 2>/dev/null || true
pkill -P "$SRC" smtp-source 2>/dev/null || true

name=flame-$(date -u +%Y-%m-%d)-${SCENARIO//:/-}${FLAME_LABEL:+-$FLAME_LABEL}
perf script -i "$WORK/perf.data" 2>/dev/null | inferno-collapse-perf --all >"$WORK/folded"
inferno-flamegraph --title "ringpost, $SCENARIO (cpu-clock, $SECONDS_SAMPLED s)" \
  <"$WORK/folded" >"$OUT/$name.svg"
# The folded stacks stay in /tmp for a closer look (too big for the repo).
gzip -c "$WORK/folded" >"/tmp/$name.folded.gz"
python3 "$ROOT/benches/flame-shares.py" "$WORK/folded" | tee "$OUT/$name.txt"
echo "wrote $OUT/$name.svg"
