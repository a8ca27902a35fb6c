#!/usr/bin/env bash
# The cost of one-click unsubscribe links at reception: the shared
# harness's relay scenario (default 20:10000:10240:1) in alternating
# pairs through benches/loadtest.sh --ab, one binary, A with
# benches/relay-bench.toml as it is, B with `[unsubscribe]` on for every
# pool: each message (one recipient, from a trusted loopback client) gets
# a token minted (HMAC-SHA256) and List-Unsubscribe and
# List-Unsubscribe-Post inserted into its header before it is stored.
#
#   benches/unsubscribe-ab.sh [PAIRS] [SCENARIO...]      (default 4)
#
# Needs root (the harness).
set -euo pipefail
cd "$(dirname "$0")/.."
PAIRS=${1:-4}; [ $# -gt 0 ] && shift
BIN=${RINGPOST_BIN:-target/release/ringpost}
cargo build --release --bin ringpost
W=$(mktemp -d /tmp/ringpost-unsubscribe-ab.XXXXXX)
trap 'rm -rf "$W"' EXIT
head -c 48 /dev/urandom | base64 > "$W/secret"
cp benches/relay-bench.toml "$W/a.toml"
{ cat benches/relay-bench.toml
  printf '\n[unsubscribe]\nbase_url = "https://unsub.bench.test"\nsecret_file = "%s"\npools = ["*"]\n' "$W/secret"
} > "$W/b.toml"
benches/loadtest.sh --ab "$BIN" "$BIN" --pairs "$PAIRS" \
    --config "$W/a.toml" --config-b "$W/b.toml" "${@:-20:10000:10240:1}"
