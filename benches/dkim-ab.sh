#!/usr/bin/env bash
# The cost of DKIM signing end to end: the shared harness's relay scenario
# (default 20:10000:10240:1) in alternating pairs, A without signing, B
# signing every message (smtp-source's From: is sender@example.test) with
#   ed25519   one Ed25519 identity
#   rsa       one RSA-2048 identity
#   both      RSA-2048 and Ed25519 side by side
# Keys are made with `ringpost dkim keygen` under /var/tmp/ringpost-bench-dkim.
#
#   benches/dkim-ab.sh ed25519|rsa|both [PAIRS] [SCENARIO...]
#
# Writes benches/results/DATE-ab.jsonl (through benches/loadtest.sh --ab)
# and prints B/A per pair and the median.
set -euo pipefail
cd "$(dirname "$0")/.."
ALGO=${1:?ed25519, rsa or both}; shift
PAIRS=${1:-4}; [ $# -gt 0 ] && shift
BIN=${RINGPOST_BIN:-target/release/ringpost}
DIR=/var/tmp/ringpost-bench-dkim
cargo build --release --bin ringpost
mkdir -p "$DIR"
key() { # selector algo
    [ -f "$DIR/$1.pem" ] || "$BIN" dkim keygen --domain example.test --selector "$1" --algo "$2" --out "$DIR/$1.pem" >/dev/null
    printf '\n[[dkim.identity]]\ndomain = "example.test"\nselector = "%s"\nkey_file = "%s"\n' "$1" "$DIR/$1.pem"
}
CONFIG_B=$DIR/relay-bench-$ALGO.toml
{
    cat benches/relay-bench.toml
    case $ALGO in
        ed25519) key e1 ed25519 ;;
        rsa) key r1 rsa ;;
        both) key r1 rsa; key e1 ed25519 ;;
        *) echo "unknown: $ALGO" >&2; exit 2 ;;
    esac
} > "$CONFIG_B"
"$BIN" check-config "$CONFIG_B"
benches/loadtest.sh --ab "$BIN" "$BIN" --pairs "$PAIRS" --config benches/relay-bench.toml --config-b "$CONFIG_B" "${@:-20:10000:10240:1}"
