#!/usr/bin/env bash
# etcdctl compatibility suite: runs one scripted etcdctl session (tests/etcdctl/session.sh)
# against a 3-member cluster on loopback and compares its normalised transcript with a
# golden transcript recorded against real etcd.
#
#   scripts/etcdctl-suite.sh record   # etcd 3.4 (Debian etcd-server) -> tests/etcdctl/golden.txt
#   scripts/etcdctl-suite.sh check    # concord server (default): diff against golden.txt
#   scripts/etcdctl-suite.sh show [etcd|concord]  # print the normalised transcript only
#
# Environment:
#   CONCORD=path   use this concord binary instead of `cargo build --release -p concord`
#   KEEP=1         keep the temp dir (member logs, raw transcript) and print its path
#
# Every process started here is stopped by PID on exit and the temp dir is removed.
# Needs root (or sudo) only to install etcd-client / etcd-server when they are missing.
# The check run takes well under two minutes; every wait in it is bounded.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
MODE="${1:-check}"
case "$MODE" in
    record) SYSTEM=etcd ;;
    check) SYSTEM=concord ;;
    show) SYSTEM="${2:-concord}" ;;
    *) echo "usage: $0 record|check|show [etcd|concord]" >&2; exit 2 ;;
esac

source "$PWD/scripts/lib/apt.sh"
apt_install etcd-client etcdctl
command -v python3 >/dev/null 2>&1 || apt_install python3-minimal python3
if [ "$SYSTEM" = etcd ]; then
    apt_install etcd-server etcd
    SERVER=("$(command -v etcd)")
else
    if [ -z "${CONCORD:-}" ]; then
        cargo build --release -p concord >&2
        CONCORD="$ROOT/target/release/concord"
    fi
    SERVER=("$CONCORD" server)
fi
ETCDCTL_VERSION="$(etcdctl version 2>/dev/null | sed -n 1p)"
case "$ETCDCTL_VERSION" in
    "etcdctl version: 3.4."*) ;;
    *) echo "warning: golden.txt was recorded with etcdctl 3.4.23; this is ${ETCDCTL_VERSION:-unknown}" >&2 ;;
esac

WORK="$(mktemp -d /tmp/concord-etcdctl.XXXXXX)"
PIDS=()
source "$PWD/scripts/lib/procs.sh"
trap_cleanup

# Member i: client port CLIENT[i], peer port CLIENT[i]+1.
CLIENT=(42379 52379 62379)
CLUSTER="" ENDPOINTS=""
for i in 0 1 2; do
    CLUSTER+="${CLUSTER:+,}m$((i + 1))=http://127.0.0.1:$((CLIENT[i] + 1))"
    ENDPOINTS+="${ENDPOINTS:+,}127.0.0.1:${CLIENT[i]}"
done
for i in 0 1 2; do
    c=${CLIENT[i]} p=$((CLIENT[i] + 1)) name="m$((i + 1))"
    if (exec 3<>"/dev/tcp/127.0.0.1/$c") 2>/dev/null || (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
        echo "error: port $c or $p is already in use" >&2
        exit 1
    fi
    "${SERVER[@]}" --name "$name" \
        --data-dir "$WORK/$name" \
        --listen-client-urls "http://127.0.0.1:$c" --advertise-client-urls "http://127.0.0.1:$c" \
        --listen-peer-urls "http://127.0.0.1:$p" --initial-advertise-peer-urls "http://127.0.0.1:$p" \
        --initial-cluster "$CLUSTER" --initial-cluster-state new \
        --initial-cluster-token etcdctl-suite \
        --heartbeat-interval 100 --election-timeout 1000 >"$WORK/$name.log" 2>&1 &
    PIDS+=($!)
done

# Wait (at most 30 s) until every member answers a linearizable read, i.e. a leader exists.
deadline=$((SECONDS + 30))
for i in 0 1 2; do
    until ETCDCTL_API=3 timeout 3 etcdctl --endpoints "127.0.0.1:${CLIENT[i]}" \
        --command-timeout=2s get health-probe >/dev/null 2>&1; do
        if [ "$SECONDS" -ge "$deadline" ] || ! kill -0 "${PIDS[i]}" 2>/dev/null; then
            echo "error: member m$((i + 1)) did not become ready; its log:" >&2
            tail -30 "$WORK/m$((i + 1)).log" >&2
            exit 1
        fi
        sleep 0.2
    done
done

echo "cluster up (${SERVER[*]}); running the session..." >&2
start=$SECONDS
SESSION_TMPDIR="$WORK" bash "$ROOT/tests/etcdctl/session.sh" "$ENDPOINTS" >"$WORK/transcript.raw" 2>"$WORK/session.err" \
    || { echo "error: session.sh failed:" >&2; cat "$WORK/session.err" >&2; exit 1; }
python3 "$ROOT/tests/etcdctl/normalise.py" <"$WORK/transcript.raw" >"$WORK/transcript.txt"
echo "session done in $((SECONDS - start)) s" >&2

GOLDEN="$ROOT/tests/etcdctl/golden.txt"
case "$MODE" in
    record)
        cp "$WORK/transcript.txt" "$GOLDEN"
        echo "wrote $GOLDEN ($(etcd --version | sed -n 1p), $(etcdctl version | sed -n 1p))" >&2
        ;;
    show)
        cat "$WORK/transcript.txt"
        ;;
    check)
        if diff -u --label golden.txt --label concord.txt "$GOLDEN" "$WORK/transcript.txt"; then
            echo "etcdctl suite: PASS (transcript matches golden.txt)" >&2
        else
            echo "etcdctl suite: FAIL (diff above: - etcd, + concord)" >&2
            exit 1
        fi
        ;;
esac
