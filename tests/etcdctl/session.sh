#!/usr/bin/env bash
# A scripted etcdctl (API v3) session against a running 3-member cluster.
#
#   tests/etcdctl/session.sh 127.0.0.1:42379,127.0.0.1:52379,127.0.0.1:62379 > transcript.raw
#
# Every step prints a header `### [N] COMMAND` (plus `### stdin:` lines when it feeds stdin),
# the command's stdout and stderr merged, and `### exit=RC`. normalise.py then removes what
# legitimately differs between servers (ids, times, sizes, hashes, terms). Steps whose line
# order is not defined by etcd's API are marked `### sort` and sorted after normalising.
#
# The session assumes a fresh cluster (store revision 1) and three endpoints in member order
# m1,m2,m3. Every wait is bounded: blocking commands run under `timeout`, polls give up.
set -uo pipefail

if [ $# -ne 1 ]; then
    echo "usage: $0 ENDPOINTS (comma-separated, e.g. 127.0.0.1:42379,127.0.0.1:52379,127.0.0.1:62379)" >&2
    exit 2
fi
export ETCDCTL_API=3
ENDPOINTS="$1"
EP1="${ENDPOINTS%%,*}"
# Scratch space, the `etcdctl` wrapper (every endpoint, or `@ENDPOINT` for one) and `run`.
source "$(dirname "$0")/lib.sh"
session_start etcdctl-session 3s 5s

# Helpers that are not part of the transcript (also cur_rev and last_out, in lib.sh).
# wait_lines FILE N SECONDS: waits until FILE has at least N lines, at most SECONDS.
wait_lines() {
    local i
    for i in $(seq 1 $(($3 * 10))); do
        [ -f "$1" ] && [ "$(wc -l <"$1")" -ge "$2" ] && return 0
        sleep 0.1
    done
    return 1
}
# wait_key KEY SECONDS [absent]: waits until KEY (a prefix) has keys, or none with `absent`.
wait_key() {
    local i n
    for i in $(seq 1 $(($2 * 10))); do
        n="$(etcdctl get --prefix "$1" --limit 1 -w fields 2>/dev/null | sed -n 's/^"Count" : //p')"
        if [ "${3:-}" = absent ]; then [ "${n:-1}" = 0 ] && return 0; else [ "${n:-0}" -gt 0 ] && return 0; fi
        sleep 0.1
    done
    return 1
}

# ---------------------------------------------------------------------------------------
# put / get
run 'etcdctl put k/a 1'
run 'etcdctl put k/b 2'
run 'etcdctl put k/c 3'
run 'etcdctl put k/a 10 --prev-kv'
run 'etcdctl put k/d "with spaces"'
run 'etcdctl put other x'
run 'etcdctl put k/b 20 -w json'
run 'etcdctl get k/a'
run 'etcdctl get k/missing'
run 'etcdctl get k/ --prefix'
run 'etcdctl get k/b --from-key'
run 'etcdctl get k/a k/c'
run 'etcdctl get k/ --prefix --limit 2'
run 'etcdctl get k/ --prefix --limit 2 -w json'
run 'etcdctl get k/a --rev 2'
run 'etcdctl get k/a --rev 5'
run 'etcdctl get k/ --prefix --rev 3'
run 'etcdctl get k/a --rev 1000'
run 'etcdctl get k/ --prefix --keys-only'
run 'etcdctl get k/ --prefix --limit 1 -w fields'
run 'etcdctl get k/ --prefix --print-value-only'
run 'etcdctl get k/ --prefix --sort-by=MODIFY --order=DESCEND'
run 'etcdctl get k/ --prefix --sort-by=VALUE --order=ASCEND'
run 'etcdctl get k/ --prefix --sort-by=CREATE --order=DESCEND --limit 3'
run 'etcdctl get k/ --prefix --sort-by=VERSION --order=DESCEND --keys-only'
run 'etcdctl get k/ --prefix --order=DESCEND'
run 'etcdctl get k/a -w json'
run 'etcdctl get k/a -w simple'
run 'etcdctl get k/a -w fields'
run 'etcdctl get k/ --prefix --consistency=s --keys-only'
run 'etcdctl get "" --from-key --keys-only'
run 'etcdctl put k/e --ignore-value'
run 'etcdctl put k/a --ignore-value'
run 'etcdctl get k/a'
run 'etcdctl put k/a'
run 'etcdctl put'
run -i 'from stdin' 'etcdctl put k/stdin'
run 'etcdctl get k/stdin --print-value-only'
run 'etcdctl put k/empty ""'
run 'etcdctl get k/empty -w json'
run 'etcdctl put "" no-key'
run 'etcdctl put k/empty again --prev-kv -w json'

# ---------------------------------------------------------------------------------------
# del
run 'etcdctl put d/1 a && etcdctl put d/2 b && etcdctl put d/3 c && etcdctl put d/4 d'
run 'etcdctl del d/1'
run 'etcdctl del d/1'
run 'etcdctl del d/2 --prev-kv'
run 'etcdctl del d/ --prefix --prev-kv'
run 'etcdctl put d/x 1 && etcdctl put d/y 2 && etcdctl put d/z 3'
run 'etcdctl del d/x d/z'
run 'etcdctl put d/z2 4'
run 'etcdctl del d/ --prefix --prev-kv -w json'
run 'etcdctl get d/ --prefix -w json'

# ---------------------------------------------------------------------------------------
# txn
run 'etcdctl put t/a v1'
TA_CREATE="$(etcdctl get t/a -w json | python3 -c 'import json,sys; print(json.load(sys.stdin)["kvs"][0]["create_revision"])')"
run -i 'value("t/a") = "v1"

put t/a v2
put t/b from-success

put t/b from-failure
' 'etcdctl txn'
run -i 'value("t/a") = "v1"

put t/b wrong

get t/a
get t/b
' 'etcdctl txn'
run -i "create(\"t/a\") = \"$TA_CREATE\"
version(\"t/a\") = \"2\"
mod(\"t/a\") > \"$TA_CREATE\"

get t/ --prefix

put t/never x
" 'etcdctl txn -w json'
run -i 'version("t/a") > "5"
mod("t/a") < "1"

put t/never x

del t/b --prev-kv
get t/ --prefix --keys-only
' 'etcdctl txn'
run -i 'value("t/missing") = "x"

put t/c y

' 'etcdctl txn'
run -i 'create("t/none") = "0"

put t/created c

' 'etcdctl txn'
run -i 'value("t/a") != "v1"
value("t/a") < "v3"


' 'etcdctl txn'
run -i 'value("t/a") = "v2"

put t/i interactive

' 'etcdctl txn -i'
run -i 'value("t/a") = "v2"

put t/j 1 --prev-kv
del t/b --prev-kv
put t/a v2 --prev-kv

' 'etcdctl txn -w json'
# 129 operations: more than etcd's default --max-txn-ops (128).
run -i "$(printf 'put t/many%d x\n' $(seq 1 129) | sed '1i\\')

" 'etcdctl txn'
run -i 'bogus("t/a") = "1"

put t/a z

' 'etcdctl txn'

# ---------------------------------------------------------------------------------------
# watch: a watch from history (--rev) replays events, then blocks until `timeout` ends it.
run 'etcdctl put w/a 1 && etcdctl put w/b 2 && etcdctl put w/a 3 && etcdctl del w/b'
W0="$(($(cur_rev) - 3))"
run "timeout 2 etcdctl watch --rev $W0 --prefix w/"
run "timeout 2 etcdctl watch --rev $W0 w/a --prev-kv"
run "timeout 2 etcdctl watch --rev $W0 --prefix w/ -w json"
run "timeout 2 etcdctl watch --rev $W0 w/a w/c"
# A live watch started in the background, writes, then the watch is stopped. It starts at
# the next revision, so the output is the same whether it connects before or after the writes.
WL="$(($(cur_rev) + 1))"
"$ETCDCTL_BIN" --endpoints="$ENDPOINTS" watch --rev "$WL" --prefix live/ --prev-kv >"$TMP/watch.out" 2>&1 &
WPID=$!
BG+=("$WPID")
sleep 0.5
run 'etcdctl put live/x 1'
run 'etcdctl put live/x 2'
run 'etcdctl put other-prefix 1'
run 'etcdctl del live/x'
wait_lines "$TMP/watch.out" 10 5
kill -TERM "$WPID" 2>/dev/null
wait "$WPID" 2>/dev/null
run "cat watch.out # output of: etcdctl watch --rev $WL --prefix live/ --prev-kv (in the background)"

# ---------------------------------------------------------------------------------------
# lease
run 'etcdctl lease grant 60'
L1="$(last_out | awk '/granted/ {print $2}')"
run 'etcdctl lease grant 120 -w json'
L2="$(last_out | python3 -c 'import json,sys; print("%016x" % json.load(sys.stdin)["ID"])' 2>/dev/null)"
run "etcdctl put l/a 1 --lease=$L1"
run "etcdctl put l/b 2 --lease=$L1"
run "etcdctl put l/c 3 --lease=$L2"
run 'etcdctl get l/a -w json'
run "etcdctl put l/z 1 --lease=1234abcd"
run "etcdctl put l/a 11 --ignore-lease"
run 'etcdctl get l/a -w fields'
run "etcdctl lease keep-alive --once $L1"
run "etcdctl lease timetolive $L1"
run "etcdctl lease timetolive $L1 --keys"
run "etcdctl lease timetolive $L2 --keys -w json"
run -s 'etcdctl lease list'
run "etcdctl lease revoke $L1"
run 'etcdctl get l/ --prefix'
run "etcdctl lease timetolive $L1"
run "etcdctl lease revoke $L1"
run 'etcdctl lease revoke 1234abcd'
run 'etcdctl lease keep-alive --once 1234abcd'
run 'etcdctl lease timetolive 1234abcd'
run "timeout 2 etcdctl lease keep-alive $L2"
run "etcdctl lease revoke $L2"
run 'etcdctl lease list'
run 'etcdctl lease grant 9999999999'
# TTL 0: etcd raises it to its minimum TTL (1.5 election timeouts, rounded up).
run 'etcdctl lease grant 0'
# Expiry: a short lease with a key, not kept alive; the key disappears on its own.
run 'etcdctl lease grant 2'
L3="$(last_out | awk '/granted/ {print $2}')"
run "etcdctl put l/short 1 --lease=$L3"
wait_key l/short 10 absent
run 'etcdctl get l/short -w json'
run "etcdctl lease timetolive $L3"

# ---------------------------------------------------------------------------------------
# lock
run 'etcdctl lock mylock echo held'
run "etcdctl lock mylock -- sh -c 'echo \"key=\$ETCD_LOCK_KEY\"; test -n \"\$ETCD_LOCK_REV\" && echo has-rev'"
run 'etcdctl lock mylock false'
run 'etcdctl get mylock --prefix -w json'
"$ETCDCTL_BIN" --endpoints="$ENDPOINTS" lock mylock >"$TMP/lock.out" 2>&1 &
LPID=$!
BG+=("$LPID")
wait_lines "$TMP/lock.out" 1 5
run 'timeout 2 etcdctl lock mylock echo second'
run 'etcdctl get mylock --prefix --keys-only'
kill -TERM "$LPID" 2>/dev/null
wait "$LPID" 2>/dev/null
run "cat lock.out # output of: etcdctl lock mylock (in the background, stopped by SIGTERM)"
wait_key mylock/ 5 absent
run 'etcdctl lock mylock echo free-again'
run 'etcdctl lock --ttl 5 mylock echo with-ttl'

# ---------------------------------------------------------------------------------------
# elect
"$ETCDCTL_BIN" --endpoints="$ENDPOINTS" elect myelection alice >"$TMP/elect.out" 2>&1 &
EPID=$!
BG+=("$EPID")
wait_lines "$TMP/elect.out" 2 5
run 'timeout 2 etcdctl elect -l myelection'
run 'timeout 2 etcdctl elect myelection bob'
run 'etcdctl get myelection/ --prefix --print-value-only'
kill -TERM "$EPID" 2>/dev/null
wait "$EPID" 2>/dev/null
run "cat elect.out # output of: etcdctl elect myelection alice (in the background, stopped by SIGTERM)"
wait_key myelection/ 5 absent
run 'timeout 2 etcdctl elect myelection carol'
wait_key myelection/ 5 absent
run 'etcdctl elect'

# ---------------------------------------------------------------------------------------
# cluster and maintenance
run -s 'etcdctl member list'
# A learner (never started) can be added, listed, refused promotion and removed without
# touching the voters' quorum.
run 'etcdctl member add m4 --peer-urls=http://127.0.0.1:42390 --learner'
M4="$(last_out | awk '/^Member/ {print $2}')"
run -s 'etcdctl member list'
run "etcdctl member promote $M4"
run "etcdctl member remove $M4"
run "etcdctl member remove $M4"
run 'etcdctl member add m5 --peer-urls=http://127.0.0.1:42380'
run -s 'etcdctl member list -w table'
run 'etcdctl endpoint status -w table'
run "etcdctl endpoint status -w json | python3 -c 'import json,sys; print(\"leaders:\", sum(s[\"Status\"][\"leader\"] == s[\"Status\"][\"header\"][\"member_id\"] for s in json.load(sys.stdin)))'"
run -s 'etcdctl endpoint health'
run 'etcdctl endpoint hashkv -w table'
# Endpoints with a scheme: etcdctl 3.4 puts the whole endpoint ("http://host:port") into the
# HTTP/2 :authority of its requests; etcd accepts that, so a server must too.
run "etcdctl @http://$EP1 endpoint status -w table"
run "etcdctl @http://$EP1/ endpoint health"
run "etcdctl @http://$EP1 put scheme/a 1"
run "etcdctl @http://$EP1 get scheme/a"
run 'etcdctl alarm list'
run 'etcdctl defrag'
# Leadership transfer to a follower (which member leads is decided by the election).
FOLLOWER="$(etcdctl endpoint status -w json | python3 -c 'import json,sys
for s in json.load(sys.stdin):
    if s["Status"]["leader"] != s["Status"]["header"]["member_id"]:
        print("%x" % s["Status"]["header"]["member_id"]); break')"
export FOLLOWER
run 'etcdctl move-leader "$FOLLOWER"'
run 'etcdctl move-leader 1234abcd'
export FOLLOWS='import json, os, sys
print("every member follows the new leader:",
      all("%x" % s["Status"]["leader"] == os.environ["FOLLOWER"] for s in json.load(sys.stdin)))'
for _ in $(seq 1 50); do
    etcdctl endpoint status -w json 2>/dev/null | python3 -c "$FOLLOWS" 2>/dev/null | grep True >/dev/null && break
    sleep 0.1
done
run 'etcdctl endpoint status -w json | python3 -c "$FOLLOWS"'
run 'etcdctl snapshot save snap.db'
run "etcdctl @$EP1 snapshot save snap.db"
run 'test -s snap.db && echo snapshot file is not empty'
# The file is an etcd snapshot (a bbolt database) from either server; its revision is the
# store's. `snapshot restore` and the way back are scripts/etcd-migration.sh's.
run 'etcdctl snapshot status snap.db -w table'

# ---------------------------------------------------------------------------------------
# compaction
run 'etcdctl put c/a 1 && etcdctl put c/a 2 && etcdctl put c/a 3'
C="$(cur_rev)"
run "etcdctl get c/a --rev $((C - 1))"
run "etcdctl compaction $((C - 1))"
run "etcdctl get c/a --rev $((C - 2))"
run "etcdctl get c/a --rev $((C - 1))"
run "etcdctl compaction $((C - 2))"
run "etcdctl compaction --physical $C"
run "etcdctl get c/a --rev $((C - 1))"
run "etcdctl get c/a --rev $C -w json"
run "timeout 2 etcdctl watch --rev 2 c/a"
run "etcdctl compaction $((C + 100))"
run 'etcdctl get "" --from-key --keys-only'
