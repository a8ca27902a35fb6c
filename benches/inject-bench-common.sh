# Shared by the injection benches (inject-vs-smtp.sh, inject-idempotency-ab.sh):
# builds ringpost and benches/inject_load.rs ($LOAD), and start/stop a fresh
# ringpost on relay-bench.toml with smtp-sink behind it. Sourced, not run.
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
SPOOL=/var/tmp/ringpost-bench-spool
BIN=$ROOT/target/release/ringpost
cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml"
cargo bench --quiet --manifest-path "$ROOT/Cargo.toml" --bench inject_load --no-run 2>/dev/null
LOAD=$(ls -t "$ROOT"/target/release/deps/inject_load-* | grep -v '\.d$' | head -1)
start() {
  rm -rf "$SPOOL"
  local user=(); [[ $(id -u) == 0 ]] && user=(-u nobody)
  smtp-sink "${user[@]}" 127.0.0.1:2626 1024 >/dev/null & SINK=$!
  "$BIN" serve --config "$HERE/relay-bench.toml" 2>/dev/null & MTA=$!
  for _ in $(seq 100); do curl -sf -o /dev/null http://127.0.0.1:9464/readyz && break; sleep 0.1; done
}
stop() { kill "$MTA"; wait "$MTA" || true; kill "$SINK"; wait "$SINK" 2>/dev/null || true; }
