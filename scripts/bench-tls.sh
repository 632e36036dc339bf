#!/usr/bin/env bash
# The cost of TLS, measured in one run on this machine: Put and linearizable Range
# throughput and latency of a 3-member `concord dev` cluster in plain text, then of one
# started with `--tls` (TLS on every client and peer connection, members authenticating
# each other), same load, side by side.
#
#   CONCORD=target/release/concord bash scripts/bench-tls.sh
#
# Environment: DURATION (seconds per run, default 15), CLIENTS (default 32).
set -euo pipefail
cd "$(dirname "$0")/.."
CONCORD=${CONCORD:-target/release/concord}
DURATION=${DURATION:-15}
CLIENTS=${CLIENTS:-32}
WORK=$(mktemp -d)
DEV_PID=""
stop_dev() {
    if [ -n "$DEV_PID" ]; then
        kill "$DEV_PID" 2>/dev/null || true
        wait "$DEV_PID" 2>/dev/null || true
        DEV_PID=""
    fi
}
trap 'stop_dev; rm -rf "$WORK"' EXIT

# start NAME [--tls]: a 3-member dev cluster in $WORK/NAME; sets ENDPOINTS.
start() {
    local name=$1; shift
    "$CONCORD" dev --base-port 0 --data-dir "$WORK/$name" "$@" >"$WORK/$name.out" 2>&1 &
    DEV_PID=$!
    for _ in $(seq 1 300); do
        grep -q '^export ENDPOINTS=' "$WORK/$name.out" && break
        kill -0 "$DEV_PID" 2>/dev/null || { cat "$WORK/$name.out"; exit 1; }
        sleep 0.1
    done
    ENDPOINTS=$(sed -n 's/^export ENDPOINTS=//p' "$WORK/$name.out")
    [ -n "$ENDPOINTS" ] || { echo "dev cluster $name did not start" >&2; cat "$WORK/$name.out"; exit 1; }
}

# bench OP TLS-FLAGS...: "ops/s p50 p99" of one run.
bench() {
    local op=$1; shift
    "$CONCORD" bench --endpoints "$ENDPOINTS" --op "$op" --clients "$CLIENTS" --conns 8 \
        --duration "$DURATION" --total 100000000 --no-progress "$@" 2>/dev/null | tail -1 |
        python3 -c 'import json,sys; s=json.load(sys.stdin); print("%.0f %.2f %.2f" % (s["throughput"], s["p50_ms"], s["p99_ms"]))'
}

declare -A R
start plain
R[plain-put]=$(bench put)
R[plain-range]=$(bench range)
stop_dev
start tls --tls
CA="$WORK/tls/tls/ca.pem"
R[tls-put]=$(bench put --cacert "$CA")
R[tls-range]=$(bench range --cacert "$CA")
stop_dev

echo "| run | op | ops/s | p50 ms | p99 ms |"
echo "|---|---|---:|---:|---:|"
for run in plain tls; do
    for op in put range; do
        read -r t p50 p99 <<<"${R[$run-$op]}"
        echo "| $run | $op | $t | $p50 | $p99 |"
    done
done
for op in put range; do
    read -r a _ _ <<<"${R[plain-$op]}"
    read -r b _ _ <<<"${R[tls-$op]}"
    python3 -c "print('$op: TLS/plain = %.2f' % ($b / $a))"
done
