#!/usr/bin/env bash
# Migration both ways between etcd 3.4 and Concord, with real processes on loopback:
#
#  1. A 3-member etcd 3.4 cluster (Debian's etcd-server) gets a history: overwrites, a
#     multi-op txn, deletes, leases with keys, a compaction, a value larger than a bbolt
#     page, 500 more keys. A dump is taken: every key at every revision from the compacted
#     one to the current one (etcdctl get -w json), the leases with their keys, and the
#     error for a revision below the compacted one.
#  2. `etcdctl snapshot save` from etcd. `concord snapshot status` must print exactly what
#     `etcdctl snapshot status` prints for it.
#  3. `concord snapshot restore` into three data dirs; a 3-member Concord cluster starts
#     from them; the same dump, taken from Concord with etcdctl, must be identical.
#  4. The way back: `etcdctl snapshot save` from Concord; `etcdctl snapshot status`
#     accepts it; `etcdctl snapshot restore` into three etcd data dirs; etcd starts; the
#     dump is identical again, and a write after the restore works on both.
#
#   scripts/etcd-migration.sh            # builds concord unless CONCORD=path is set
#
# Every process started here is stopped by PID on exit and the temp dir is removed
# (KEEP=1 keeps it). Needs root (or sudo) only to install etcd-server / etcd-client.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

source "$PWD/scripts/lib/apt.sh"
apt_install etcd-client etcdctl
apt_install etcd-server etcd
command -v python3 >/dev/null 2>&1 || apt_install python3-minimal python3
if [ -z "${CONCORD:-}" ]; then
    cargo build --release -p concord >&2
    CONCORD="$ROOT/target/release/concord"
fi
export ETCDCTL_API=3

WORK="$(mktemp -d /tmp/concord-migration.XXXXXX)"
PIDS=()
stop_all() {
    local p
    for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -TERM "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]:-}"; do
        [ -n "$p" ] || continue
        for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    PIDS=()
}
cleanup() {
    stop_all
    if [ -n "${KEEP:-}" ]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

fail() { echo "etcd migration: FAIL: $*" >&2; exit 1; }

# start_cluster KIND PREFIX BASEPORT CMD...: three members named PREFIX1..3, client port
# BASEPORT+10*i, peer port +1, data dirs $WORK/PREFIXi (created by a restore or new).
# The fixed ports lie below Linux's ephemeral range (32768-60999), so no outgoing
# connection of the members (peer streams, gossip) can hold one when a later cluster
# binds it (a CI run failed on exactly that: "bind: address already in use").
start_cluster() {
    local kind=$1 prefix=$2 base=$3
    shift 3
    local cluster="" i
    for i in 1 2 3; do cluster+="${cluster:+,}$prefix$i=http://127.0.0.1:$((base + 10 * i + 1))"; done
    ENDPOINTS=""
    for i in 1 2 3; do
        local c=$((base + 10 * i)) p=$((base + 10 * i + 1))
        if (exec 3<>"/dev/tcp/127.0.0.1/$c") 2>/dev/null || (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            fail "port $c or $p is already in use"
        fi
        ENDPOINTS+="${ENDPOINTS:+,}127.0.0.1:$c"
        "$@" --name "$prefix$i" --data-dir "$WORK/$prefix$i" \
            --listen-client-urls "http://127.0.0.1:$c" --advertise-client-urls "http://127.0.0.1:$c" \
            --listen-peer-urls "http://127.0.0.1:$p" --initial-advertise-peer-urls "http://127.0.0.1:$p" \
            --initial-cluster "$cluster" --initial-cluster-state new \
            --initial-cluster-token "$prefix-migration" \
            --heartbeat-interval 100 --election-timeout 1000 >"$WORK/$prefix$i.log" 2>&1 &
        PIDS+=($!)
    done
    local deadline=$((SECONDS + 30))
    for i in 1 2 3; do
        until timeout 3 etcdctl --endpoints "127.0.0.1:$((base + 10 * i))" --command-timeout=2s \
            get health-probe >/dev/null 2>&1; do
            [ "$SECONDS" -lt "$deadline" ] || { tail -20 "$WORK/$prefix$i.log" >&2; fail "$kind member $prefix$i not ready"; }
            sleep 0.2
        done
    done
    echo "$kind cluster up ($ENDPOINTS)" >&2
}

ctl() { etcdctl --endpoints "${ENDPOINTS%%,*}" --command-timeout=10s "$@"; }

# dump FILE: every key at every revision from the compacted one to the current one, the
# leases and their keys, the error below the compacted revision: all a client can see.
dump() {
    ENDPOINT="${ENDPOINTS%%,*}" COMPACTED="$COMPACTED" python3 - "$1" <<'PY'
import json, os, subprocess, sys
ep, compacted = os.environ["ENDPOINT"], int(os.environ["COMPACTED"])
def ctl(*args, check=True):
    r = subprocess.run(["etcdctl", "--endpoints", ep, "--command-timeout=10s", *args],
                       capture_output=True, text=True)
    if check and r.returncode != 0:
        sys.exit(f"etcdctl {' '.join(args)} failed: {r.stderr}")
    return r
current = json.loads(ctl("get", "probe", "-w", "json").stdout)["header"]["revision"]
out = [f"current revision {current}"]
for rev in range(compacted, current + 1):
    got = json.loads(ctl("get", "", "--from-key", "--rev", str(rev), "-w", "json").stdout)
    out.append(f"rev {rev} count {got.get('count', 0)}")
    for kv in got.get("kvs", []):
        out.append("  " + json.dumps({k: kv.get(k, 0) for k in
            ("key", "create_revision", "mod_revision", "version", "value", "lease")}, sort_keys=True))
below = ctl("get", "", "--from-key", "--rev", str(compacted - 1), check=False)
out.append("below compacted: " + " ".join(l for l in below.stderr.split("\n") if l.startswith("Error")))
# etcd lists leases in map order: sort them.
for lid in sorted(l.split()[0] for l in ctl("lease", "list").stdout.split("\n")[1:] if l.strip()):
    t = json.loads(ctl("lease", "timetolive", lid, "--keys", "-w", "json").stdout)
    out.append(f"lease {lid} granted {t['granted-ttl']} keys {sorted(t.get('keys') or [])}")
open(sys.argv[1], "w").write("\n".join(out) + "\n")
PY
}

revision() { ctl get probe -w json | python3 -c 'import json,sys; print(json.load(sys.stdin)["header"]["revision"])'; }

# check_write KIND: a write to the restored cluster gets the next revision and reads back.
check_write() {
    local before after
    before=$(revision)
    ctl put after-restore yes >/dev/null
    [ "$(ctl get after-restore --print-value-only)" = yes ] || fail "$1 restored from a snapshot does not take writes"
    after=$(revision)
    [ "$after" -eq $((before + 1)) ] || fail "$1: revision after the first write $after, expected $((before + 1))"
}

# 1. etcd with a history.
start_cluster etcd e 23300 etcd
ctl put a 1 >/dev/null
ctl put b 2 >/dev/null
ctl put a 11 >/dev/null
printf '\nput c 3\nput d 4\ndel b\n\n\n' | ctl txn >/dev/null
LEASE=$(ctl lease grant 900 | awk '{print $2}')
ctl put l1 v1 --lease="$LEASE" >/dev/null
ctl put l2 v2 --lease="$LEASE" >/dev/null
ctl lease grant 1200 >/dev/null
ctl put a 111 >/dev/null
ctl del a >/dev/null
ctl put a again >/dev/null
COMPACTED=$(revision)
ctl compact "$COMPACTED" >/dev/null
ctl put big "$(head -c 10000 /dev/zero | tr '\0' x)" >/dev/null
python3 - "${ENDPOINTS%%,*}" <<'PY'
import subprocess, sys
# 500 keys in 5 transactions of 100 puts: enough for branch pages in the bbolt file.
for t in range(5):
    ops = "".join(f"put k{t}{i:02d} value-{t}-{i}\n" for i in range(100))
    subprocess.run(["etcdctl", "--endpoints", sys.argv[1], "txn"], input="\n" + ops + "\n\n",
                   text=True, check=True, capture_output=True)
PY
ctl del k1 --prefix >/dev/null
ctl put c 33 >/dev/null
sleep 1 # the compaction runs in the background
dump "$WORK/etcd.dump"
ctl snapshot save "$WORK/etcd.db" >/dev/null 2>&1 || fail "etcdctl snapshot save from etcd"
stop_all
echo "etcd dump: $(wc -l <"$WORK/etcd.dump") lines, revisions $COMPACTED..$(sed -n 's/current revision //p' "$WORK/etcd.dump")" >&2

# 2. Both tools describe the file alike.
etcdctl snapshot status "$WORK/etcd.db" -w table >"$WORK/status.etcdctl"
"$CONCORD" snapshot status "$WORK/etcd.db" -w table >"$WORK/status.concord"
diff -u "$WORK/status.etcdctl" "$WORK/status.concord" || fail "concord snapshot status differs from etcdctl's"

# 3. Into Concord.
for i in 1 2 3; do
    "$CONCORD" snapshot restore "$WORK/etcd.db" --data-dir "$WORK/c$i" >"$WORK/restore-c$i.txt" \
        || fail "concord snapshot restore"
done
grep -q "not restored: 3 member records" "$WORK/restore-c1.txt" || { cat "$WORK/restore-c1.txt" >&2; fail "restore did not report the member records"; }
start_cluster concord c 23400 "$CONCORD" server
dump "$WORK/concord.dump"
diff -u "$WORK/etcd.dump" "$WORK/concord.dump" || fail "Concord restored from etcd's snapshot shows another history"
echo "etcd -> Concord: identical ($(wc -l <"$WORK/concord.dump") lines)" >&2

# 4. And back.
ctl snapshot save "$WORK/concord.db" >/dev/null 2>&1 || fail "etcdctl snapshot save from Concord"
check_write Concord
stop_all
etcdctl snapshot status "$WORK/concord.db" -w json >"$WORK/status.json" || fail "etcdctl snapshot status refused Concord's snapshot"
"$CONCORD" snapshot status "$WORK/concord.db" -w json | diff -u "$WORK/status.json" - \
    || fail "concord snapshot status differs from etcdctl's on Concord's own file"
for i in 1 2 3; do
    etcdctl snapshot restore "$WORK/concord.db" --name "b$i" --data-dir "$WORK/b$i" \
        --initial-cluster "b1=http://127.0.0.1:23511,b2=http://127.0.0.1:23521,b3=http://127.0.0.1:23531" \
        --initial-cluster-token b-migration \
        --initial-advertise-peer-urls "http://127.0.0.1:235${i}1" >/dev/null 2>&1 \
        || fail "etcdctl snapshot restore refused Concord's snapshot"
done
start_cluster etcd b 23500 etcd
dump "$WORK/back.dump"
diff -u "$WORK/etcd.dump" "$WORK/back.dump" || fail "etcd restored from Concord's snapshot shows another history"
check_write etcd
echo "Concord -> etcd: identical; writes continue on both" >&2
echo "etcd migration: PASS" >&2
