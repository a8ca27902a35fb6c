#!/usr/bin/env bash
# Runs one integration test binary again and again, to catch what happens
# rarely (a hang, a flaky failure), and counts the outcomes.
#
#   benches/repeat-test.sh TEST RUNS [LIMIT_SECS]
#
# TEST is a file under tests/ without .rs (e.g. delivery, shutdown). A run
# that takes longer than LIMIT_SECS (default 60) is killed and counted as
# a hang; its output is kept under $TMPDIR (default /tmp).
set -uo pipefail
cd "$(dirname "$0")/.."
OLDPWD_ROOT=$PWD
test=$1 runs=$2 limit=${3:-60}
bin=$(cargo test --release --test "$test" --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["kind"] == ["test"] and m.get("executable"):
        print(m["executable"])' | tail -1)
[ -x "$bin" ] || { echo "no test binary for $test" >&2; exit 1; }
out=${TMPDIR:-/tmp}/repeat-$test
mkdir -p "$out"
# A copy: a build during the loop must not change what is run.
cp "$bin" "$out/test-binary"
bin=$out/test-binary
pass=0 fail=0 hang=0 slowest=0
for i in $(seq 1 "$runs"); do
    start=$(date +%s%N)
    (cd "$OLDPWD_ROOT" && timeout -s KILL "$limit" "$bin" -q) >"$out/run-$i.log" 2>&1
    rc=$?
    ms=$((($(date +%s%N) - start) / 1000000))
    [ "$ms" -gt "$slowest" ] && slowest=$ms
    case $rc in
        0) pass=$((pass + 1)); rm -f "$out/run-$i.log" ;;
        137) hang=$((hang + 1)); echo "run $i: killed after ${limit}s (log: $out/run-$i.log)" ;;
        *) fail=$((fail + 1)); echo "run $i: failed, exit $rc (log: $out/run-$i.log)" ;;
    esac
done
echo "$test: $runs runs: $pass passed, $fail failed, $hang hung (limit ${limit}s); slowest run ${slowest} ms"
[ $((fail + hang)) -eq 0 ]
