#!/usr/bin/env bash
# Re-creates this directory's etcd 3.4 snapshot and what etcd answered about it, with
# Debian's etcd-server and etcd-client (3.4.23): one member on loopback, a scripted
# history (overwrites, a multi-op txn, deletes, leases, a compaction, a value larger than
# a bbolt page, enough keys for branch pages), then `etcdctl snapshot save`.
#
#   bash crates/concord-storage/testdata/etcd-3.4/make.sh
#
# Output: snapshot.db, status.json (`etcdctl snapshot status -w json`), and
# get-<rev>.json (`etcdctl get "" --from-key --rev <rev> -w json`), lease.json.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
WORK="$(mktemp -d /tmp/concord-etcd-testdata.XXXXXX)"
PID=""
cleanup() {
    if [ -n "$PID" ]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT
EP=127.0.0.1:42391
etcd --name t --data-dir "$WORK/data" --listen-client-urls "http://$EP" \
    --advertise-client-urls "http://$EP" --listen-peer-urls http://127.0.0.1:42392 \
    --initial-advertise-peer-urls http://127.0.0.1:42392 \
    --initial-cluster t=http://127.0.0.1:42392 >"$WORK/etcd.log" 2>&1 &
PID=$!
export ETCDCTL_API=3
ctl() { etcdctl --endpoints="$EP" "$@"; }
for _ in $(seq 1 100); do ctl endpoint health >/dev/null 2>&1 && break; sleep 0.1; done
ctl put a 1 >/dev/null                 # 2
ctl put b 2 >/dev/null                 # 3
ctl put a 11 >/dev/null                # 4
printf '\nput c 3\nput d 4\ndel b\n\n\n' | ctl txn >/dev/null   # 5: subs 0, 1, 2
LEASE=$(ctl lease grant 600 | awk '{print $2}')
ctl put l1 v1 --lease="$LEASE" >/dev/null  # 6
ctl put l2 v2 --lease="$LEASE" >/dev/null  # 7
ctl put a 111 >/dev/null               # 8
ctl del a >/dev/null                   # 9
ctl put a again >/dev/null             # 10
ctl put c 33 >/dev/null                # 11
ctl compact 9 >/dev/null
ctl put big "$(head -c 10000 /dev/zero | tr '\0' x)" >/dev/null  # 12
for i in $(seq -w 0 299); do ctl put "k$i" "value-$i" >/dev/null; done  # 13..312
ctl del k1 --prefix >/dev/null         # 313
sleep 1 # let the compaction finish
ctl snapshot save "$WORK/snapshot.db" >/dev/null
cp "$WORK/snapshot.db" "$HERE/snapshot.db"
etcdctl snapshot status "$HERE/snapshot.db" -w json >"$HERE/status.json"
for rev in 9 10 12 313; do
    ctl get "" --from-key --rev "$rev" -w json >"$HERE/get-$rev.json"
done
ctl lease timetolive "$LEASE" --keys -w json >"$HERE/lease.json"
echo "wrote $HERE"
