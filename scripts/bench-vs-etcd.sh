#!/usr/bin/env bash
# Runs the same `concord bench` workloads against etcd (Debian's etcd-server) and Concord,
# started in the same shape (1 and 3 members on loopback, fsync on, same flags), and
# prints one table with both figures and the ratio. `cpu/1k` is the members' CPU time per
# 1,000 operations (milliseconds, mean per member).
#
#   scripts/bench-vs-etcd.sh                 # both shapes, default workloads
#   NODES="3" DURATION=15 scripts/bench-vs-etcd.sh
#   CONCORD=/path/to/concord scripts/bench-vs-etcd.sh   # use a given binary, no build
#   MEMORY_KEYS=1000000 WORKLOADS= NODES=3 scripts/bench-vs-etcd.sh
#       # also: resident memory per member after writing that many distinct keys
#   AT=leader WORKLOADS="put:1 range:1" NODES=3 scripts/bench-vs-etcd.sh
#       # every client of both systems talks to the leader (AT=follower: to one follower;
#       # default AT=any: connections spread over every member, so a single client lands
#       # on whichever member is first, leader or not, differently for the two systems)
#   CONCORD_FLAGS=--lease-reads AT=leader WORKLOADS="range:1 range:64" NODES=3 scripts/bench-vs-etcd.sh
#       # extra flags for Concord's members only (here: leader lease reads)
#   DEFRAG_MB=1024 WORKLOADS= NODES=3 scripts/bench-vs-etcd.sh
#       # also: a store file of about that many MB (60 kB values written twice, the
#       # first versions compacted away) defragmented on member 1 while one client reads
#       # from it: how long the defragment took and the longest request meanwhile
#
# Every process started here is stopped by PID on exit; data lives in a temp dir that is
# removed. Needs root (or sudo) only to install etcd-server when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

NODES="${NODES:-1 3}"
DURATION="${DURATION:-10}"      # seconds per workload and system
TOTAL="${TOTAL:-1000000}"       # request cap per run (the duration usually ends it first)
VALUE_SIZE="${VALUE_SIZE:-256}"
KEY_SPACE="${KEY_SPACE:-100000}"
CONNS="${CONNS:-8}"
# op:clients, or op:clients:watchers (that many extra watchers held open during the run,
# e.g. watch-latency:16:10000)
WORKLOADS="${WORKLOADS-put:1 put:64 put:256 range:1 range:64 range-serializable:64 txn-cas:64}"
MEMORY_KEYS="${MEMORY_KEYS:-0}" # 0: skip the memory run
DEFRAG_MB="${DEFRAG_MB:-0}"     # 0: skip the defragment run
AT="${AT:-any}"                 # any | leader | follower: which members the clients talk to
read -r -a CONCORD_FLAGS <<<"${CONCORD_FLAGS:-}" # extra flags of Concord's members

source "$PWD/scripts/lib/apt.sh"
apt_install etcd-server etcd
[ "$DEFRAG_MB" -eq 0 ] || apt_install etcd-client etcdctl
if [ -z "${CONCORD:-}" ]; then
    cargo build --release -p concord >&2
    CONCORD="$PWD/target/release/concord"
fi
ETCD="$(command -v etcd)"

WORK="$(mktemp -d /tmp/concord-vs-etcd.XXXXXX)"
PIDS=()
cleanup() {
    for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -TERM "$p" 2>/dev/null || true; done
    sleep 1
    for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -KILL "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

SERVER_FLAGS=()
# Ports below Linux's ephemeral range (32768-60999 by default), where an outgoing
# connection of a member that started first could hold one of the next member's ports.
base_port() { echo $((20000 + $1 * 100)); }
# start SYSTEM N: starts an N-member cluster of `etcd` or `concord` on loopback.
start() {
    local sys=$1 n=$2 base=$3 i cluster="" eps=""
    PIDS=()
    for i in $(seq 1 "$n"); do
        cluster+="${cluster:+,}m$i=http://127.0.0.1:$((base + 10 * i + 1))"
        eps+="${eps:+,}http://127.0.0.1:$((base + 10 * i))"
    done
    for i in $(seq 1 "$n"); do
        local c=$((base + 10 * i)) p=$((base + 10 * i + 1)) bin
        if [ "$sys" = etcd ]; then bin=("$ETCD"); else bin=("$CONCORD" server "${CONCORD_FLAGS[@]}"); fi
        ETCD_UNSUPPORTED_ARCH=arm64 "${bin[@]}" --name "m$i" --data-dir "$WORK/$sys-$n-m$i" \
            --listen-client-urls "http://127.0.0.1:$c" --advertise-client-urls "http://127.0.0.1:$c" \
            --listen-peer-urls "http://127.0.0.1:$p" --initial-advertise-peer-urls "http://127.0.0.1:$p" \
            --initial-cluster "$cluster" --initial-cluster-state new \
            --initial-cluster-token "bench-$sys-$n" "${SERVER_FLAGS[@]}" >"$WORK/$sys-$n-m$i.log" 2>&1 &
        PIDS+=($!)
    done
    for i in $(seq 1 "$n"); do
        local c=$((base + 10 * i)) ok=""
        for _ in $(seq 1 300); do
            if curl -fsS "http://127.0.0.1:$c/health" 2>/dev/null | grep '"health":"true"' >/dev/null; then ok=1; break; fi
            sleep 0.1
        done
        [ -n "$ok" ] || { echo "$sys m$i did not become healthy; log:" >&2; tail -20 "$WORK/$sys-$n-m$i.log" >&2; exit 1; }
    done
    ENDPOINTS="$eps"
}

stop() {
    for p in "${PIDS[@]:-}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]:-}"; do wait "$p" 2>/dev/null || true; done
    PIDS=()
}

rss_mib() { # total resident memory of the running members, MiB
    local total=0 p
    for p in "${PIDS[@]}"; do
        total=$((total + $(awk '/VmRSS/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)))
    done
    echo $((total / 1024 / ${#PIDS[@]}))
}

cpu_jiffies() { # CPU time (user + system, clock ticks) of the running members, summed
    local total=0 p
    for p in "${PIDS[@]}"; do
        total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)))
    done
    echo "$total"
}

# The endpoints of ENDPOINTS the clients talk to, as AT says: the leader's, a follower's
# (the first), or all of them. Read through the JSON API both systems serve
# (`/v3/maintenance/status`: this member's id and the leader's).
targets() {
    [ "$AT" = any ] && { echo "$ENDPOINTS"; return; }
    local ep status
    for ep in ${ENDPOINTS//,/ }; do
        status=$(curl -fsS -X POST -d '{}' "$ep/v3/maintenance/status")
        if python3 -c "import json,sys; d=json.loads(sys.argv[1]); \
sys.exit(0 if (d['header']['member_id'] == d['leader']) == (sys.argv[2] == 'leader') else 1)" \
            "$status" "$AT"; then
            echo "$ep"
            return
        fi
    done
    echo "no $AT among $ENDPOINTS" >&2
    exit 1
}

run_bench() { # run_bench OP:CLIENTS[:WATCHERS] -> JSON line
    local op="${1%%:*}" rest="${1#*:}"
    local clients="${rest%%:*}" watchers=0
    [ "$rest" = "$clients" ] || watchers="${rest#*:}"
    "$CONCORD" bench --endpoints "$(targets)" --op "$op" --clients "$clients" --conns "$CONNS" \
        --total "$TOTAL" --duration "$DURATION" --value-size "$VALUE_SIZE" \
        --key-space "$KEY_SPACE" --watchers "$watchers" --no-progress | tail -1
}

field() { python3 -c "import json,sys; d=json.loads(sys.argv[1]); print(d.get('$2', 0))" "$1"; }

printf '%-6s %-20s %8s | %12s %9s %9s %8s | %12s %9s %9s %8s | %7s %7s\n' \
    nodes workload clients "etcd ops/s" "p50 ms" "p99 ms" "cpu/1k" "concord" "p50 ms" "p99 ms" "cpu/1k" "x tput" "x p99"
for n in $NODES; do
    declare -A RES=()
    for sys in etcd concord; do
        start "$sys" "$n" $(base_port "$n")
        # Preload the key space so reads find values.
        ENDPOINTS="$ENDPOINTS" "$CONCORD" bench --endpoints "$ENDPOINTS" --op put --clients 64 \
            --conns "$CONNS" --total "$KEY_SPACE" --duration 120 --value-size "$VALUE_SIZE" \
            --key-space "$KEY_SPACE" --no-progress >/dev/null
        for w in $WORKLOADS; do
            before=$(cpu_jiffies)
            RES["$sys/$w"]="$(run_bench "$w")"
            # CPU milliseconds per 1,000 operations, per member (mean over members).
            RES["$sys/$w/cpu"]=$(python3 -c "import json,sys; d=json.loads(sys.argv[1]); \
print(round(($(cpu_jiffies) - $before) * 1000 / $(getconf CLK_TCK) / max(d.get('ok', 0), 1) * 1000 / ${#PIDS[@]}, 1))" "${RES[$sys/$w]}")
        done
        RES["$sys/rss"]="$(rss_mib)"
        stop
    done
    for w in $WORKLOADS; do
        e="${RES[etcd/$w]}"; c="${RES[concord/$w]}"
        et=$(field "$e" throughput); ct=$(field "$c" throughput)
        ep99=$(field "$e" p99_ms); cp99=$(field "$c" p99_ms)
        printf '%-6s %-20s %8s | %12.0f %9.3f %9.3f %8s | %12.0f %9.3f %9.3f %8s | %7.2f %7.2f\n' \
            "$n" "${w%%:*}" "${w#*:}" "$et" "$(field "$e" p50_ms)" "$ep99" "${RES[etcd/$w/cpu]}" \
            "$ct" "$(field "$c" p50_ms)" "$cp99" "${RES[concord/$w/cpu]}" \
            "$(python3 -c "print($ct / max($et, 1e-9))")" "$(python3 -c "print($cp99 / max($ep99, 1e-9))")"
    done
    echo "$n nodes: resident memory per member after the runs: etcd ${RES[etcd/rss]} MiB, concord ${RES[concord/rss]} MiB"
    if [ "$MEMORY_KEYS" -gt 0 ]; then
        for sys in etcd concord; do
            start "$sys" "$n" $(base_port "$n")
            "$CONCORD" bench --endpoints "$ENDPOINTS" --op put --clients 64 --conns "$CONNS" \
                --total "$MEMORY_KEYS" --key-space "$MEMORY_KEYS" --sequential-keys \
                --duration 3600 --value-size "$VALUE_SIZE" --key-prefix mem/ --no-progress >/dev/null
            sleep 5
            RES["$sys/mem"]="$(rss_mib)"
            stop
        done
        echo "$n nodes: resident memory per member after writing $MEMORY_KEYS distinct keys of $VALUE_SIZE bytes: etcd ${RES[etcd/mem]} MiB, concord ${RES[concord/mem]} MiB"
    fi
    if [ "$DEFRAG_MB" -gt 0 ]; then
        # Values of 60,000 bytes, each written twice. (Not 64 KiB: redb allocates pages in
        # powers of two, so a row just over 64 KiB would take 128 KiB.)
        keys=$((DEFRAG_MB * 1024 * 1024 / 2 / 60000))
        # Room for the file (redb's grows to about twice the data before a defragment).
        SERVER_FLAGS=(--quota-backend-bytes $((DEFRAG_MB * 8 * 1024 * 1024)))
        for sys in etcd concord; do
            start "$sys" "$n" $(base_port "$n")
            for _ in 1 2; do
                fill=$("$CONCORD" bench --endpoints "$ENDPOINTS" --op put --clients 16 --conns "$CONNS" \
                    --total "$keys" --key-space "$keys" --sequential-keys --duration 3600 \
                    --value-size 60000 --key-prefix dfg/ --no-progress | tail -1)
                [ "$(field "$fill" errors)" = 0 ] || { echo "$sys: filling the store failed: $fill" >&2; exit 1; }
            done
            ep1="${ENDPOINTS%%,*}"
            rev=$(ETCDCTL_API=3 etcdctl --endpoints "$ep1" endpoint status -w json \
                | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["Status"]["header"]["revision"])')
            ETCDCTL_API=3 etcdctl --endpoints "$ep1" --command-timeout 600s compaction --physical "$rev" >/dev/null
            # The store file only (the WAL is not defragmented).
            size_mb() {
                local f="$WORK/$sys-$n-m1/state.redb"
                [ "$sys" = etcd ] && f="$WORK/$sys-$n-m1/member/snap/db"
                du -sm "$f" | cut -f1
            }
            before=$(size_mb)
            "$CONCORD" bench --endpoints "$ep1" --op range --clients 1 --conns 1 --total "$TOTAL" \
                --duration 40 --key-space "$keys" --key-prefix dfg/ --no-progress >"$WORK/defrag-reads.txt" &
            reader=$!
            sleep 3
            t0=$(date +%s.%N)
            ETCDCTL_API=3 etcdctl --endpoints "$ep1" --command-timeout 600s defrag >/dev/null
            took=$(python3 -c "print(round($(date +%s.%N) - $t0, 2))")
            wait "$reader"
            r=$(tail -1 "$WORK/defrag-reads.txt")
            RES["$sys/defrag"]="store file ${before} MB -> $(size_mb) MB, defragment took ${took} s; one client's linearizable gets meanwhile: max $(field "$r" max_ms) ms, p99.9 $(field "$r" p999_ms) ms, p50 $(field "$r" p50_ms) ms, $(field "$r" errors) errors"
            if [ "$sys" = concord ]; then
                RES["$sys/defrag"]+="; switch pause logged by m1: $(sed -n 's/.*defragmented pause_ms=\([0-9.]*\).*/\1/p' "$WORK/$sys-$n-m1.log" | tail -1) ms"
            fi
            stop
        done
        SERVER_FLAGS=()
        echo "$n nodes, etcd:    ${RES[etcd/defrag]}"
        echo "$n nodes, concord: ${RES[concord/defrag]}"
    fi
    unset RES
done
