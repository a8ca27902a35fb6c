#!/usr/bin/env bash
# ringpost against Postfix on the same loopback load, the fair way: the
# shared harness (../shared/bench/postfix-baseline.sh --mode both) runs
# both MTAs alternately in every repeat against the same smtp-sink.
#
#   benches/loadtest.sh [SCENARIO...]
#
# Default scenarios (the targets of issue #6):
#   20:10000:10240:1  20:2000:102400:1  1:3000:1024:1  20:10000:1024:10
#   20:10000:1024:1:reuse
#
# ringpost runs the release build with benches/relay-bench.toml (listen
# 127.0.0.1:2527, relay everything to the sink at 127.0.0.1:2626, spool in
# /var/tmp like Postfix's queue). Then, with ringpost and smtp-sink started
# again, benches/accept_latency.rs measures the time from end of DATA to
# 250 at 20 sessions.
#
# Writes, under benches/results/:
#   DATE-loadtest.jsonl  the harness's JSON lines, then the latency line
#   DATE-loadtest.md     the ratio table (also printed)
#
# Needs root (the harness installs postfix and makes a cgroup), an idle
# machine, and about 20-30 minutes on 2 cores.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
HARNESS=${HARNESS:-$ROOT/../shared/bench/postfix-baseline.sh}
BIN=$ROOT/target/release/ringpost
CONFIG=$ROOT/benches/relay-bench.toml
STAMP=$(date -u +%F-%H%M)
OUT=$ROOT/benches/results/$STAMP-loadtest
SCENARIOS=("$@")
[ ${#SCENARIOS[@]} -gt 0 ] || SCENARIOS=(20:10000:10240:1 20:2000:102400:1 1:3000:1024:1 20:10000:1024:10 20:10000:1024:1:reuse)

[ -x "$HARNESS" ] || { echo "harness not found: $HARNESS" >&2; exit 1; }
(cd "$ROOT" && cargo build --release --bin ringpost && cargo bench --no-run --bench accept_latency)
mkdir -p "$ROOT/benches/results"

CMD="rm -rf /var/tmp/ringpost-bench-spool; RUST_LOG=warn $BIN serve --config $CONFIG"
echo "# $(date -u +%FT%TZ) $HARNESS --mode both --name ringpost --mta-cmd '$CMD' ${SCENARIOS[*]}" > "$OUT.jsonl"
"$HARNESS" --mode both --name ringpost --mta-cmd "$CMD" "${SCENARIOS[@]}" | tee -a "$OUT.jsonl"

# Acceptance latency under the same relay setup.
export PATH=$PATH:/usr/sbin
rm -rf /var/tmp/ringpost-bench-spool
smtp-sink -u nobody -c 127.0.0.1:2626 1024 >/dev/null 2>&1 &
SINK=$!
RUST_LOG=warn "$BIN" serve --config "$CONFIG" 2>/dev/null &
MTA=$!
trap 'kill $SINK $MTA 2>/dev/null || true' EXIT
until (exec 3<>/dev/tcp/127.0.0.1/2527) 2>/dev/null; do sleep 0.1; done
(cd "$ROOT" && cargo bench --bench accept_latency -- 127.0.0.1:2527 20 10000 10240) | tee -a "$OUT.jsonl"

python3 - "$OUT.jsonl" > "$OUT.md" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith('{')]
runs = [r for r in rows if 'mta' in r]
lat = [r for r in rows if 'p99_ms' in r]
key = lambda r: f"{r['sessions']}:{r['msgs']}:{r['size']}:{r['rcpts']}" + (':reuse' if r['conn'] == 'reuse' else '')
by = {}
for r in runs:
    by.setdefault(key(r), {})[r['mta']] = r
print('| scenario | Postfix e2e msg/s | ringpost e2e msg/s | e2e ratio | accept ratio | Postfix CPU µs/msg | ringpost CPU µs/msg | CPU ratio | ringpost e2e / sink-direct |')
print('|---|---:|---:|---:|---:|---:|---:|---:|---:|')
for k, m in by.items():
    p, r = m.get('postfix'), m.get('ringpost')
    if not (p and r):
        continue
    print(f"| `{k}` | {p['e2e_msgs_per_s']:.0f} | {r['e2e_msgs_per_s']:.0f} | "
          f"**{r['e2e_msgs_per_s'] / p['e2e_msgs_per_s']:.2f}x** | "
          f"{r['accept_msgs_per_s'] / p['accept_msgs_per_s']:.2f}x | "
          f"{p['mta_cpu_us_per_msg']} | {r['mta_cpu_us_per_msg']} | "
          f"1/{p['mta_cpu_us_per_msg'] / r['mta_cpu_us_per_msg']:.1f} | "
          f"{100 * r['e2e_msgs_per_s'] / r['sink_direct_msgs_per_s']:.0f}% |")
for l in lat:
    print(f"\nAcceptance latency (end of DATA to 250), {l['sessions']} sessions, "
          f"{l['messages']} x {l['size']} B: p50 {l['p50_ms']:.2f} ms, p90 {l['p90_ms']:.2f} ms, "
          f"**p99 {l['p99_ms']:.2f} ms**, max {l['max_ms']:.2f} ms ({l['failed']} failed).")
EOF
cat "$OUT.md"
