#!/usr/bin/env bash
# The cost of observability, measured in one run on this machine: etcd Put throughput and
# latency of a 3-member cluster (a) with tracing off, (b) with 1% and (c) 100% of requests
# traced and exported over OTLP/HTTP to a local receiver that discards them, (d) with every
# member's /metrics scraped every second, and the CPU time the member serving the
# dashboard spends when /v1/dashboard is polled every second (what an open /ui costs)
# against the same member idle.
#
#   CONCORD=target/release/concord bash scripts/bench-observability.sh
#
# Environment: DURATION (seconds per run, default 15), CLIENTS (default 32).
set -euo pipefail
cd "$(dirname "$0")/.."
CONCORD=${CONCORD:-target/release/concord}
DURATION=${DURATION:-15}
CLIENTS=${CLIENTS:-32}
WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

# A port that is free now.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# An OTLP/HTTP receiver that answers 200 and keeps nothing.
RECEIVER_PORT=$(free_port)
python3 - "$RECEIVER_PORT" <<'EOF' &
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200); self.send_header("content-length", "0"); self.end_headers()
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
EOF
PIDS+=($!)

CLUSTER_PIDS=()
CLIENT_PORTS=()
# start_cluster EXTRA_FLAGS...: three members on fresh ports and data directories.
start_cluster() {
    local ports=() peers=() initial=""
    CLUSTER_PIDS=(); CLIENT_PORTS=()
    for i in 0 1 2; do ports+=("$(free_port)"); peers+=("$(free_port)"); done
    for i in 0 1 2; do initial+="${initial:+,}m$i=http://127.0.0.1:${peers[$i]}"; done
    rm -rf "$WORK/data"; mkdir -p "$WORK/data"
    for i in 0 1 2; do
        "$CONCORD" server --name "m$i" --data-dir "$WORK/data/m$i" \
            --listen-client-urls "http://127.0.0.1:${ports[$i]}" \
            --listen-peer-urls "http://127.0.0.1:${peers[$i]}" \
            --initial-advertise-peer-urls "http://127.0.0.1:${peers[$i]}" \
            --initial-cluster "$initial" --log-level warn "$@" >"$WORK/m$i.log" 2>&1 &
        CLUSTER_PIDS+=($!); PIDS+=($!)
        CLIENT_PORTS+=("${ports[$i]}")
    done
    for _ in $(seq 100); do
        curl -sf "127.0.0.1:${CLIENT_PORTS[0]}/ready" >/dev/null && return 0
        sleep 0.1
    done
    echo "the cluster did not become ready" >&2; exit 1
}
stop_cluster() {
    for p in "${CLUSTER_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${CLUSTER_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
}

endpoints() { local e=""; for p in "${CLIENT_PORTS[@]}"; do e+="${e:+,}http://127.0.0.1:$p"; done; echo "$e"; }

# bench NAME: one Put run; prints a row of the table.
bench() {
    local json
    json=$("$CONCORD" bench --endpoints "$(endpoints)" --op put --clients "$CLIENTS" \
        --duration "$DURATION" 2>/dev/null | tail -1)
    python3 - "$1" "$json" <<'EOF'
import json, sys
name, j = sys.argv[1], json.loads(sys.argv[2])
def pick(*names):
    for n in names:
        if n in j: return j[n]
    return float("nan")
print(f"| {name} | {pick('throughput','ops_per_sec','rps'):.0f} | {pick('p50_ms','p50'):.2f} | {pick('p99_ms','p99'):.2f} |")
EOF
}

echo "| run | Put/s | p50 ms | p99 ms |"
echo "|---|---|---|---|"
start_cluster; bench "tracing off"; stop_cluster
start_cluster --otlp-endpoint "http://127.0.0.1:$RECEIVER_PORT" --otlp-sampling-ratio 0.01
bench "1% of requests traced"; stop_cluster
start_cluster --otlp-endpoint "http://127.0.0.1:$RECEIVER_PORT" --otlp-sampling-ratio 1
bench "100% of requests traced"; stop_cluster
start_cluster
( while true; do for p in "${CLIENT_PORTS[@]}"; do curl -sf "127.0.0.1:$p/metrics" >/dev/null; done; sleep 1; done ) &
SCRAPER=$!; PIDS+=($SCRAPER)
bench "tracing off, /metrics of every member scraped every second"
kill $SCRAPER 2>/dev/null || true
stop_cluster

# The dashboard's cost: CPU seconds of the serving member over DURATION, idle and polled.
start_cluster
cpu() { awk '{print ($14 + $15) / 100}' "/proc/$1/stat"; }
serving=${CLUSTER_PIDS[0]}
a=$(cpu "$serving"); sleep "$DURATION"; b=$(cpu "$serving")
( while true; do curl -sf "127.0.0.1:${CLIENT_PORTS[0]}/v1/dashboard" >/dev/null; curl -sf "127.0.0.1:${CLIENT_PORTS[0]}/v1/ap" >/dev/null; curl -sf "127.0.0.1:${CLIENT_PORTS[0]}/v1/members" >/dev/null; sleep 1; done ) &
POLLER=$!; PIDS+=($POLLER)
c=$(cpu "$serving"); sleep "$DURATION"; d=$(cpu "$serving")
kill $POLLER 2>/dev/null || true
stop_cluster
python3 - "$a" "$b" "$c" "$d" "$DURATION" <<'EOF'
import sys
a, b, c, d, t = map(float, sys.argv[1:])
idle, polled = (b - a) / t * 100, (d - c) / t * 100
print()
print(f"dashboard: serving member CPU {idle:.2f}% idle, {polled:.2f}% with /ui polling every second "
      f"(+{polled - idle:.2f}% of one core)")
EOF
