#!/usr/bin/env bash
# Runs redis-benchmark against Concord's Redis front door (3 members on loopback, the AP
# buckets' defaults N=3 W=2 R=2) and against Redis 7 in a comparable shape (a master and
# two replicas via --replicaof, all three with --appendonly yes --appendfsync always),
# plus Concord's own CP put (`concord bench --op put`, etcd API, Raft) at 256 clients, and
# prints one table with the figures, the ratios and the targets:
#
#   Concord SET  >= 0.5 x Redis SET            (redis-benchmark -c 50 -d 256, req/s)
#   Concord GET  >= 0.5 x Redis GET
#   Concord SET  >= 2 x Concord CP put@256
#   single-client SET p50: Concord <= 2 x Redis
#
# and, without targets: SADD and HSET at -c 50 (random keys); compare-and-set (`SET k v GET` through
# Paxos on Concord, a plain `SET ... GET` on Redis) at -c 50 and -c 1 with p50/p99; and
# Concord's CP compare-and-set (`concord bench --op txn-cas`, etcd Txn) at 50 clients.
#
#   scripts/bench-vs-redis.sh
#   CONCORD=/path/to/concord scripts/bench-vs-redis.sh   # use a given binary, no build
#   REQUESTS=50000 REDIS_REQUESTS=300000 CP_DURATION=20 scripts/bench-vs-redis.sh
#   KEEP=1 scripts/bench-vs-redis.sh                     # keep the temp dir (logs)
#
# Environment: REQUESTS (-n of Concord's -c 50 runs, default 20000), REDIS_REQUESTS (-n of
# Redis's, 100000: Redis is that much faster, and each run should last a few seconds),
# SINGLE_REQUESTS (-n of the -c 1 SET runs, 3000), CLIENTS (50), VALUE_SIZE (256), KEY_SPACE
# (-r, 100000), CP_CLIENTS (256), CP_DURATION (seconds, 10), BENCH_TIMEOUT (cap on each
# redis-benchmark run, seconds, 300), BASE_PORT (23610: Concord member i uses BASE+10i
# client, +1 peer, +5 Redis protocol; Redis uses BASE+40..BASE+42), PARTITION_SECS (30; 0
# skips the convergence run), CONVERGE_TIMEOUT (180 s). The defaults take about three
# minutes on a 2-core machine.
#
# After the throughput runs, member 3 is cut off for PARTITION_SECS under write load and
# the script reports the hints kept, how fast they are replayed once it is back, and when
# the three replicas agree again.
#
# Every process started here is stopped by PID on exit; data lives in a temp dir that is
# removed. Needs root (or sudo) only to install redis-server / redis-tools when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

REQUESTS="${REQUESTS:-20000}"
REDIS_REQUESTS="${REDIS_REQUESTS:-100000}"
CLIENTS="${CLIENTS:-50}"
SINGLE_REQUESTS="${SINGLE_REQUESTS:-3000}"
VALUE_SIZE="${VALUE_SIZE:-256}"
KEY_SPACE="${KEY_SPACE:-100000}"
CP_CLIENTS="${CP_CLIENTS:-256}"
CP_DURATION="${CP_DURATION:-10}"
BENCH_TIMEOUT="${BENCH_TIMEOUT:-300}"
BASE_PORT="${BASE_PORT:-23610}"
PARTITION_SECS="${PARTITION_SECS:-30}"
CONVERGE_TIMEOUT="${CONVERGE_TIMEOUT:-180}"

source "$PWD/scripts/lib/apt.sh"
apt_install redis-server redis-server
apt_install redis-tools redis-benchmark
apt_install redis-tools redis-cli
command -v python3 >/dev/null 2>&1 || apt_install python3-minimal python3
if [ -z "${CONCORD:-}" ]; then
    cargo build --release -p concord >&2
    CONCORD="$PWD/target/release/concord"
fi
REDIS_SERVER="$(command -v redis-server)"
case "$("$REDIS_SERVER" --version)" in
    *"v=7."*) ;;
    *) echo "warning: this is not Redis 7: $("$REDIS_SERVER" --version)" >&2 ;;
esac

WORK="$(mktemp -d /tmp/concord-vs-redis.XXXXXX)"
PIDS=()
source "$PWD/scripts/lib/procs.sh"
trap_cleanup

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# --- Concord: 3 members -------------------------------------------------------------------
cluster=""
for i in 1 2 3; do cluster+="${cluster:+,}m$i=http://127.0.0.1:$((BASE_PORT + 10 * i + 1))"; done
for i in 1 2 3; do
    c=$((BASE_PORT + 10 * i)) p=$((BASE_PORT + 10 * i + 1)) r=$((BASE_PORT + 10 * i + 5))
    for port in $c $p $r; do port_free "$port" || { echo "error: port $port is in use" >&2; exit 1; }; done
    "$CONCORD" server --name "m$i" --data-dir "$WORK/concord-m$i" \
        --listen-client-urls "http://127.0.0.1:$c" --advertise-client-urls "http://127.0.0.1:$c" \
        --listen-peer-urls "http://127.0.0.1:$p" --initial-advertise-peer-urls "http://127.0.0.1:$p" \
        --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token bench-redis \
        --listen-redis-urls "redis://127.0.0.1:$r" >"$WORK/concord-m$i.log" 2>&1 &
    PIDS+=($!)
done
for i in 1 2 3; do
    c=$((BASE_PORT + 10 * i)) r=$((BASE_PORT + 10 * i + 5)) ok=""
    for _ in $(seq 1 300); do
        if curl -fsS "http://127.0.0.1:$c/health" 2>/dev/null | grep '"health":"true"' >/dev/null \
            && [ "$(redis-cli -p "$r" PING 2>/dev/null)" = PONG ]; then ok=1; break; fi
        sleep 0.1
    done
    [ -n "$ok" ] || { echo "concord m$i did not become healthy; log:" >&2; tail -20 "$WORK/concord-m$i.log" >&2; exit 1; }
done
CONCORD_REDIS=$((BASE_PORT + 15))
CONCORD_CLIENT="http://127.0.0.1:$((BASE_PORT + 10))"
# A write through the AP path, so gossip has seen every member before the clock starts.
for _ in $(seq 1 100); do
    [ "$(redis-cli -p "$CONCORD_REDIS" SET bench:warmup 1 2>/dev/null)" = OK ] && break
    sleep 0.1
done

# --- Redis: a master and two replicas ------------------------------------------------------
REDIS_MASTER=$((BASE_PORT + 40))
for i in 0 1 2; do
    port=$((REDIS_MASTER + i))
    port_free "$port" || { echo "error: port $port is in use" >&2; exit 1; }
    mkdir -p "$WORK/redis-$i"
    args=(--port "$port" --bind 127.0.0.1 --dir "$WORK/redis-$i" --daemonize no --save ''
          --appendonly yes --appendfsync always)
    [ "$i" -eq 0 ] || args+=(--replicaof 127.0.0.1 "$REDIS_MASTER")
    "$REDIS_SERVER" "${args[@]}" >"$WORK/redis-$i.log" 2>&1 &
    PIDS+=($!)
done
ok=""
for _ in $(seq 1 300); do
    up=0
    for i in 1 2; do
        redis-cli -p $((REDIS_MASTER + i)) INFO replication 2>/dev/null | grep -q 'master_link_status:up' && up=$((up + 1))
    done
    if [ "$up" -eq 2 ] && redis-cli -p "$REDIS_MASTER" INFO replication 2>/dev/null | grep -q 'connected_slaves:2'; then
        ok=1; break
    fi
    sleep 0.1
done
[ -n "$ok" ] || { echo "redis replicas did not connect; log:" >&2; tail -20 "$WORK/redis-0.log" >&2; exit 1; }

# --- The runs ------------------------------------------------------------------------------
# rb NAME PORT ARGS...: redis-benchmark --csv into $WORK/NAME.csv (bounded by BENCH_TIMEOUT).
rb() {
    local name=$1 port=$2
    shift 2
    echo "redis-benchmark $name (port $port): $*" >&2
    timeout "$BENCH_TIMEOUT" redis-benchmark -h 127.0.0.1 -p "$port" --csv "$@" \
        >"$WORK/$name.csv" 2>"$WORK/$name.err" \
        || { echo "error: redis-benchmark $name failed or timed out:" >&2; cat "$WORK/$name.err" "$WORK/$name.csv" >&2; exit 1; }
    # redis-benchmark counts an error reply as a request; it reports them on stderr.
    if grep -q "Error from server" "$WORK/$name.err"; then
        echo "warning: $name got error replies (the figures include them), e.g.: $(grep -m1 -o 'Error from server.*' "$WORK/$name.err")" >&2
    fi
}
for sys in concord redis; do
    port=$CONCORD_REDIS n=$REQUESTS
    [ "$sys" = redis ] && port=$REDIS_MASTER n=$REDIS_REQUESTS
    rb "$sys-c$CLIENTS" "$port" -d "$VALUE_SIZE" -c "$CLIENTS" -t set,get,incr -n "$n" -r "$KEY_SPACE"
    rb "$sys-c1" "$port" -d "$VALUE_SIZE" -c 1 -t set -n "$SINGLE_REQUESTS" -r "$KEY_SPACE"
    # Many small collections (redis-benchmark's own -t sadd,hset write one key each, and a
    # Concord set travels whole: see docs/ap.md).
    rb "$sys-sadd" "$port" -c "$CLIENTS" -n "$((n / 2))" -r "$KEY_SPACE" \
        SADD set:__rand_int__ m:__rand_int__
    rb "$sys-hset" "$port" -c "$CLIENTS" -n "$((n / 2))" -r "$KEY_SPACE" \
        HSET hash:__rand_int__ f:__rand_int__ __rand_int__
    # Compare-and-set over 100x the key space: at 50 clients over 100,000 keys about two
    # pairs of requests per run race for one key, and a request whose refused proposal the
    # other may have finished is answered TRYAGAIN (indefinite, docs/ap.md), which
    # redis-benchmark treats as fatal. This measures the uncontended path.
    rb "$sys-cas-c$CLIENTS" "$port" -c "$CLIENTS" -n "$((n / 4))" -r "$((KEY_SPACE * 100))" \
        SET cas:__rand_int__ __rand_int__ GET
    rb "$sys-cas-c1" "$port" -c 1 -n "$SINGLE_REQUESTS" -r "$KEY_SPACE" \
        SET cas:__rand_int__ __rand_int__ GET
done
# Sibling reads (Concord only): bucket 4 keeps siblings; key sib<k> gets k blind writes,
# so k siblings; CONCORD.SGET reads all of them at R=2.
redis-cli -p "$CONCORD_REDIS" CONCORD.BUCKET SET 4 SIBLINGS yes >/dev/null
for k in 2 10 100; do
    for i in $(seq 1 "$k"); do
        printf 'CONCORD.SPUT sib%s "" value-%s-%0200d\n' "$k" "$i" 0
    done | redis-cli -p "$CONCORD_REDIS" -n 4 >/dev/null
    rb "concord-sib$k" "$CONCORD_REDIS" -c "$CLIENTS" -n "$((REQUESTS / 4))" --dbnum 4 \
        CONCORD.SGET "sib$k"
done
echo "concord bench --op txn-cas --clients $CLIENTS (${CP_DURATION} s)" >&2
timeout $((CP_DURATION + 120)) "$CONCORD" bench --endpoints "$CONCORD_CLIENT" --op txn-cas \
    --clients "$CLIENTS" --total 100000000 --duration "$CP_DURATION" --value-size "$VALUE_SIZE" \
    --key-space "$KEY_SPACE" --no-progress >"$WORK/cp-cas.txt" 2>"$WORK/cp-cas.err" \
    || { echo "error: concord bench txn-cas failed:" >&2; cat "$WORK/cp-cas.err" >&2; exit 1; }
echo "concord bench --op put --clients $CP_CLIENTS (${CP_DURATION} s)" >&2
timeout $((CP_DURATION + 120)) "$CONCORD" bench --endpoints "$CONCORD_CLIENT" --op put \
    --clients "$CP_CLIENTS" --total 100000000 --duration "$CP_DURATION" --value-size "$VALUE_SIZE" \
    --key-space "$KEY_SPACE" --no-progress >"$WORK/cp-put.txt" 2>"$WORK/cp-put.err" \
    || { echo "error: concord bench failed:" >&2; cat "$WORK/cp-put.err" >&2; exit 1; }
# Redis replicas must have kept up (a sanity check that replication was on).
for i in 1 2; do
    redis-cli -p $((REDIS_MASTER + i)) INFO replication | grep -q 'master_link_status:up' \
        || echo "warning: redis replica $i lost its link during the run" >&2
done

# --- Convergence after a partition heals ---------------------------------------------------
# Member 3 is cut off (SIGSTOP: it answers nobody, as behind a partition) for
# PARTITION_SECS while writes go to member 1 (W=2 on members 1 and 2; member 1 keeps a
# hint for member 3 per key). Then it is let back (SIGCONT) and the clock runs until no
# member holds a hint and the three hold the same number of keys in bucket 0.
echo '{}' >"$WORK/converge.json"
if [ "$PARTITION_SECS" -gt 0 ]; then
    ap_json() { curl -fsS --max-time 2 "http://127.0.0.1:$((BASE_PORT + 10 * $1))$2" 2>/dev/null || echo '{}'; }
    hints_total() {
        local t=0 i
        for i in 1 2; do
            t=$((t + $(ap_json "$i" /v1/ap | python3 -c 'import json,sys; d=json.load(sys.stdin); print(sum(m.get("hints_held_here",0) for m in d.get("ring",[])))')))
        done
        echo "$t"
    }
    held() { ap_json "$1" /v1/buckets/0 | python3 -c 'import json,sys; print(json.load(sys.stdin).get("keys_held_here",-1))'; }
    echo "partition: member 3 cut off for ${PARTITION_SECS} s under SET -c $CLIENTS to member 1" >&2
    kill -STOP "${PIDS[2]}"
    timeout "$PARTITION_SECS" redis-benchmark -h 127.0.0.1 -p "$CONCORD_REDIS" -d "$VALUE_SIZE" \
        -c "$CLIENTS" -t set -n 100000000 -r "$KEY_SPACE" -q >/dev/null 2>&1 || true
    hints=$(hints_total)
    kill -CONT "${PIDS[2]}"
    start=$(date +%s.%N) replayed="" converged=""
    while :; do
        now=$(date +%s.%N)
        elapsed=$(python3 -c "print($now - $start)")
        if [ -z "$replayed" ] && [ "$(hints_total)" -eq 0 ]; then replayed=$elapsed; fi
        if [ -n "$replayed" ]; then
            a=$(held 1) b=$(held 2) c=$(held 3)
            if [ "$a" -ge 0 ] && [ "$a" = "$b" ] && [ "$b" = "$c" ]; then converged=$elapsed; break; fi
        fi
        python3 -c "import sys; sys.exit(0 if $elapsed < $CONVERGE_TIMEOUT else 1)" || break
        sleep 0.1
    done
    printf '{"partition_secs": %s, "hints": %s, "replayed_secs": %s, "converged_secs": %s}\n' \
        "$PARTITION_SECS" "$hints" "${replayed:-null}" "${converged:-null}" >"$WORK/converge.json"
fi

# --- The table -----------------------------------------------------------------------------
python3 - "$WORK" "$CLIENTS" "$CP_CLIENTS" "$VALUE_SIZE" "$REQUESTS" "$REDIS_REQUESTS" "$SINGLE_REQUESTS" "$KEY_SPACE" <<'EOF'
import csv, json, sys
work, clients, cp_clients, size, n, rn, n1, space = sys.argv[1:]

def load(name):
    rows = {}
    with open("%s/%s.csv" % (work, name)) as f:
        for row in csv.DictReader(f):
            rows[row["test"]] = row
    return rows

def num(rows, test, col):
    try:
        return float(rows[test][col])
    except (KeyError, ValueError):
        return float("nan")

def only(rows, col):
    # A run of one custom command: its single row, whatever redis-benchmark named it.
    return num(rows, next(iter(rows), ""), col)

c, r = load("concord-c" + clients), load("redis-c" + clients)
c1, r1 = load("concord-c1"), load("redis-c1")
cp = json.loads(open(work + "/cp-put.txt").read().strip().splitlines()[-1])
cp_rate = float(cp.get("throughput", 0))

def ratio(a, b):
    return a / b if b else float("nan")

rows = []  # workload, concord, redis, ratio, target, met
for test in ("SET", "GET", "INCR"):
    a, b = num(c, test, "rps"), num(r, test, "rps")
    target, met = "-", "-"
    if test in ("SET", "GET"):
        target = "concord >= 0.5x redis"
        met = "yes" if ratio(a, b) >= 0.5 else "NO"
    rows.append(("%s -c %s (req/s)" % (test, clients), "%.0f" % a, "%.0f" % b, ratio(a, b), target, met))
for test in ("SET", "GET", "INCR"):
    a, b = num(c, test, "p99_latency_ms"), num(r, test, "p99_latency_ms")
    rows.append(("%s -c %s p99 (ms)" % (test, clients), "%.3f" % a, "%.3f" % b, ratio(a, b), "-", "-"))
a, b = num(c1, "SET", "p50_latency_ms"), num(r1, "SET", "p50_latency_ms")
rows.append(("SET -c 1 p50 (ms)", "%.3f" % a, "%.3f" % b, ratio(a, b), "concord <= 2x redis",
             "yes" if ratio(a, b) <= 2 else "NO"))
a, b = num(c1, "SET", "rps"), num(r1, "SET", "rps")
rows.append(("SET -c 1 (req/s)", "%.0f" % a, "%.0f" % b, ratio(a, b), "-", "-"))
rows.append(("CP put@%s, etcd API (req/s)" % cp_clients, "%.0f" % cp_rate, "-", float("nan"), "-", "-"))
for test in ("SADD", "HSET"):
    ct, rt = load("concord-" + test.lower()), load("redis-" + test.lower())
    a, b = only(ct, "rps"), only(rt, "rps")
    rows.append(("%s -c %s (req/s)" % (test, clients), "%.0f" % a, "%.0f" % b, ratio(a, b), "-", "-"))
for sfx, label in (("c" + clients, "-c " + clients), ("c1", "-c 1")):
    cc, rc = load("concord-cas-" + sfx), load("redis-cas-" + sfx)
    for col, unit in (("rps", "req/s"), ("p50_latency_ms", "p50 ms"), ("p99_latency_ms", "p99 ms")):
        a, b = only(cc, col), only(rc, col)
        shown = "%.0f" if col == "rps" else "%.3f"
        rows.append(("CAS SET..GET %s (%s)" % (label, unit), shown % a, shown % b, ratio(a, b), "-", "-"))
for k in (2, 10, 100):
    sib = load("concord-sib%d" % k)
    rows.append(("SGET of %d siblings -c %s (req/s)" % (k, clients), "%.0f" % only(sib, "rps"), "-",
                 float("nan"), "-", "-"))
    rows.append(("SGET of %d siblings p50 (ms)" % k, "%.3f" % only(sib, "p50_latency_ms"), "-",
                 float("nan"), "-", "-"))
cas = json.loads(open(work + "/cp-cas.txt").read().strip().splitlines()[-1])
rows.append(("CP txn-cas@%s (req/s)" % clients, "%.0f" % float(cas.get("throughput", 0)), "-",
             float("nan"), "-", "-"))
a = num(c, "SET", "rps")
rows.append(("SET -c %s / CP put@%s" % (clients, cp_clients), "%.0f" % a, "%.0f (CP)" % cp_rate,
             ratio(a, cp_rate), "SET >= 2x CP put", "yes" if ratio(a, cp_rate) >= 2 else "NO"))

print("Concord: 3 members on loopback (AP N=3 W=2 R=2, fsync per write); Redis 7: master + 2")
print("replicas (--replicaof, async), --appendonly yes --appendfsync always on all three.")
print("redis-benchmark -d %s -r %s: -c %s -t set,get,incr -n %s (Concord) / %s (Redis), and"
      % (size, space, clients, n, rn))
print("-c 1 -t set -n %s; against Concord member 1 and the Redis master. CP put: `concord bench" % n1)
print("--op put` (etcd API) to member 1.")
print()
fmt = "%-30s %12s %14s %7s  %-22s %s"
print(fmt % ("workload", "concord", "redis", "ratio", "target", "met"))
for w, a, b, x, t, m in rows:
    print(fmt % (w, a, b, "-" if x != x else "%.2f" % x, t, m))
print()
print("CP put@%s: %s ok, %s errors, p50 %s ms, p99 %s ms"
      % (cp_clients, cp.get("ok"), cp.get("errors"), cp.get("p50_ms"), cp.get("p99_ms")))
print("CP txn-cas@%s: %s ok, %s errors, p50 %s ms, p99 %s ms"
      % (clients, cas.get("ok"), cas.get("errors"), cas.get("p50_ms"), cas.get("p99_ms")))
print("CAS on Concord: SET ... GET decided by Paxos among the key's 3 owners (prepare with read,")
print("propose, commit; each an fsync on a majority); on Redis the same command is a plain write.")
print("ratio = concord / redis (for latencies lower is better); last row: Concord SET / Concord CP put.")
conv = json.loads(open(work + "/converge.json").read())
if conv:
    print()
    print("partition of member 3 for %s s under SET load: %s hints kept"
          % (conv["partition_secs"], conv["hints"]))
    if conv["replayed_secs"] is None:
        print("  hints NOT all replayed in time")
    else:
        rate = conv["hints"] / conv["replayed_secs"] if conv["replayed_secs"] else float("nan")
        print("  hints replayed %.1f s after healing (%.0f hints/s, failure detection included)"
              % (conv["replayed_secs"], rate))
    if conv["converged_secs"] is None:
        print("  replicas NOT converged in time")
    else:
        print("  replicas converged (no hint left, same key count on all three) %.1f s after healing"
              % conv["converged_secs"])
EOF
