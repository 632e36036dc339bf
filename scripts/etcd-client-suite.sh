#!/usr/bin/env bash
# The etcd-client crate's own integration tests (the tests/ its crates.io package ships,
# the version in Cargo.lock) against a 3-member Concord cluster, set up the way that
# crate's CI sets up etcd (its Justfile and docker-compose.yml): the first member on
# localhost:2379, a `root` user with password `rootpwd` and the root role, auth tokens
# living 2 seconds; the tests enable and disable auth themselves.
#
#   CONCORD=target/release/concord bash scripts/etcd-client-suite.sh
#
# Tests the crate marks #[ignore] (etcd 3.7 features, a 4-node join) stay ignored, as in
# its own default run. Needs port 2379 free. Every process is stopped by PID on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
CONCORD=${CONCORD:-$ROOT/target/release/concord}
source "$ROOT/scripts/lib/apt.sh"
apt_install etcd-client etcdctl
command -v python3 >/dev/null 2>&1 || apt_install python3-minimal python3

WORK="$(mktemp -d /tmp/concord-etcd-client.XXXXXX)"
PIDS=()
source "$ROOT/scripts/lib/procs.sh"
trap_cleanup

# The crate's source, as cargo fetched it.
SRC=$(cargo metadata --format-version 1 --locked 2>/dev/null | python3 -c '
import json, sys, os
m = json.load(sys.stdin)
p = [p for p in m["packages"] if p["name"] == "etcd-client"][0]
print(os.path.dirname(p["manifest_path"]))')
[ -d "$SRC/tests" ] || { echo "error: $SRC has no tests/" >&2; exit 1; }
VERSION=$(basename "$SRC")
cp -r "$SRC" "$WORK/crate"
chmod -R u+w "$WORK/crate"

CLIENT=(2379 2479 2579)
CLUSTER=""
for i in 0 1 2; do CLUSTER+="${CLUSTER:+,}n$((i + 1))=http://127.0.0.1:$((CLIENT[i] + 1))"; done
for i in 0 1 2; do
    c=${CLIENT[i]} p=$((CLIENT[i] + 1)) name="n$((i + 1))"
    if (exec 3<>"/dev/tcp/127.0.0.1/$c") 2>/dev/null; then
        echo "error: port $c is in use" >&2
        exit 1
    fi
    "$CONCORD" server --name "$name" --data-dir "$WORK/$name" \
        --listen-client-urls "http://127.0.0.1:$c" --advertise-client-urls "http://127.0.0.1:$c" \
        --listen-peer-urls "http://127.0.0.1:$p" --initial-advertise-peer-urls "http://127.0.0.1:$p" \
        --initial-cluster "$CLUSTER" --initial-cluster-token etcd-client \
        --auth-token-ttl 2 --log-level warn >"$WORK/$name.log" 2>&1 &
    PIDS+=($!)
done
deadline=$((SECONDS + 30))
until ETCDCTL_API=3 etcdctl --endpoints "127.0.0.1:2379,127.0.0.1:2479,127.0.0.1:2579" \
    --command-timeout=2s endpoint health >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$deadline" ]; then
        echo "error: the cluster did not become healthy" >&2
        tail -20 "$WORK"/n*.log >&2
        exit 1
    fi
    sleep 0.2
done
# The crate's CI runs against one etcd, which is always the leader; its MoveLeader test
# calls the member on localhost:2379 (etcd answers "not leader" elsewhere, as Concord
# does), so that member leads here too.
EPS="127.0.0.1:2379,127.0.0.1:2479,127.0.0.1:2579"
read -r N1 LEADER < <(etcdctl --endpoints 127.0.0.1:2379 endpoint status -w json | python3 -c '
import json, sys
s = json.load(sys.stdin)[0]["Status"]
print("%x %x" % (s["header"]["member_id"], s["leader"]))')
if [ "$N1" != "$LEADER" ]; then
    LEADER_EP=$(etcdctl --endpoints "$EPS" endpoint status -w json | python3 -c '
import json, sys
for s in json.load(sys.stdin):
    if s["Status"]["header"]["member_id"] == s["Status"]["leader"]:
        print(s["Endpoint"])')
    etcdctl --endpoints "$LEADER_EP" move-leader "$N1" >/dev/null
fi
etcdctl --endpoints 127.0.0.1:2379 user add root --new-user-password=rootpwd >/dev/null
etcdctl --endpoints 127.0.0.1:2379 user grant-role root root >/dev/null

echo "running $VERSION's tests against concord ($CONCORD)..." >&2
start=$SECONDS
cd "$WORK/crate"
status=0
CARGO_TARGET_DIR="$ROOT/target/etcd-client-suite" cargo test --test client --test namespace \
    2>&1 | tee "$WORK/tests.log" | grep -E '^test |test result|panicked|FAILED' || true
grep -q "test result: FAILED" "$WORK/tests.log" && status=1
grep -q "test result: ok" "$WORK/tests.log" || status=1
if [ "$status" -ne 0 ]; then
    echo "etcd-client suite: FAIL ($VERSION)" >&2
    tail -40 "$WORK/tests.log" >&2
    for f in "$WORK"/n*.log; do echo "--- $f" >&2; tail -20 "$f" >&2; done
    exit 1
fi
echo "etcd-client suite: PASS ($VERSION, $((SECONDS - start)) s)" >&2
