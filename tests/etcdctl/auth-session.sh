#!/usr/bin/env bash
# A scripted etcdctl (API v3) session on authentication and RBAC, against a running
# 3-member plain-text cluster (scripts/etcdctl-suite.sh with AUTH=1).
#
#   tests/etcdctl/auth-session.sh 127.0.0.1:42379,127.0.0.1:52379,127.0.0.1:62379 > transcript.raw
#
# Same transcript format as session.sh (`### [N] COMMAND`, output, `### exit=RC`), which
# normalise.py reads. In commands, `etcdctl` is a wrapper that talks to every endpoint (or
# to one, with a first argument `@ENDPOINT`) with --dial-timeout=2s --command-timeout=3s;
# each command names its user itself (`--user name:password`, once `--user name
# --password password`), so the header shows who asks. Commands that could block run under
# `timeout`.
#
# The users, roles and permissions:
#   root    role root (everything)
#   alice   roles reader (read [/a/, /a0), i.e. --prefix /a/) and writer
#   bob     role writer (readwrite [/c/a, /c/m), write [/z, <open ended>) i.e. --from-key /z)
#   carol   no password (--no-password: only a TLS common name could authenticate her)
#
# A refused request makes etcdctl 3.4's retry interceptor log zap lines on stderr
# ({"level":"warn",...,"msg":"retrying of unary invoker failed",...}) with a timestamp,
# the endpoint it happened to pick and a random client id; how many of them appear depends
# on the balancer. They are dropped from the transcript (the `Error: ...` line that follows
# carries the same gRPC error, and the exit code is kept).
#
# The session assumes a fresh cluster (store revision 1, authentication disabled, no users
# or roles) and endpoints in member order m1,m2,m3. It ends with authentication disabled.
set -uo pipefail

if [ $# -ne 1 ]; then
    echo "usage: $0 ENDPOINTS (comma-separated, e.g. 127.0.0.1:42379,127.0.0.1:52379,127.0.0.1:62379)" >&2
    exit 2
fi
export ETCDCTL_API=3
ENDPOINTS="$1"
EP1="${ENDPOINTS%%,*}"
export EP1
source "$(dirname "$0")/lib.sh"
# etcdctl's zap warning lines (above) are left out.
DROP='^{"level":"warn"'
session_start etcdctl-auth-session 2s 3s

# The store's current revision (as root once authentication is enabled).
cur_rev() {
    etcdctl --user root:rootpw get rev-probe -w json 2>/dev/null \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["header"]["revision"])'
}

# ---------------------------------------------------------------------------------------
# Users and roles, while authentication is still disabled.
# There is no root user yet. (When root exists without the root role, etcdctl's `auth
# enable` adds the role and grants it by itself, so that refusal cannot be shown.)
run 'etcdctl auth enable'
run 'etcdctl user add root --new-user-password=rootpw'
run 'etcdctl user grant-role root root'
run 'etcdctl role add reader && etcdctl role grant-permission reader read /a/ --prefix'
run 'etcdctl role add writer && etcdctl role grant-permission writer readwrite /c/a /c/m'
run 'etcdctl role grant-permission writer write /z --from-key'
run 'etcdctl user add alice:alicepw && etcdctl user add bob --new-user-password=bobpw'
run 'etcdctl user add carol --no-password'
run 'etcdctl user grant-role alice reader && etcdctl user grant-role alice writer && etcdctl user grant-role bob writer'
run 'etcdctl user grant-role alice nosuchrole'
run 'etcdctl put /a/x 1 && etcdctl put /b/x 2 && etcdctl put /c/b 3'
run 'etcdctl auth enable'

# ---------------------------------------------------------------------------------------
# KV with authentication enabled.
run 'etcdctl get /a/x'
run 'etcdctl --user alice:alicepw get /a/x'
run 'etcdctl --user alice --password alicepw get /a/ --prefix'
run 'etcdctl --user alice:alicepw put /a/x 2'
run 'etcdctl --user alice:alicepw get /b/x'
run 'etcdctl --user alice:alicepw put /c/b 4 && etcdctl --user alice:alicepw get /c/b'
run 'etcdctl --user alice:alicepw put /c/z 1'
run 'etcdctl --user root:rootpw get "" --from-key'
run 'etcdctl --user alice:wrongpw get /a/x'
run 'etcdctl --user carol:anything get /a/x'

# txn: every compare and every operation of both branches is checked.
run -i 'value("/b/x") = "2"

put /c/b 5

' 'etcdctl --user alice:alicepw txn'
run -i 'value("/a/x") = "1"

get /b/x

' 'etcdctl --user alice:alicepw txn'
run -i 'value("/a/x") = "1"

put /c/b 5

put /b/x never

' 'etcdctl --user alice:alicepw txn'
run -i 'value("/a/x") = "1"

put /c/b 5
get /a/x

put /c/b 6

' 'etcdctl --user alice:alicepw txn'

# watch: refused on a range alice cannot read, replayed on one she can.
run 'timeout 3 etcdctl --user alice:alicepw watch /b/ --prefix'
R="$(cur_rev)"
run "timeout 3 etcdctl --user alice:alicepw watch /c/b --rev $((R - 1))"

# lock (etcdctl's client-side recipe: a lease, keys under the lock name, a watch) in alice's range.
run 'timeout 10 etcdctl --user alice:alicepw lock /c/lock echo held'

# ---------------------------------------------------------------------------------------
# Reading users and roles.
run 'etcdctl --user root:rootpw user list'
run 'etcdctl --user root:rootpw role list'
run 'etcdctl --user root:rootpw user get alice'
run 'etcdctl --user root:rootpw user get alice --detail'
run 'etcdctl --user root:rootpw role get reader'
run 'etcdctl --user root:rootpw role get writer'
run 'etcdctl --user alice:alicepw user list'

# ---------------------------------------------------------------------------------------
# Changes take effect at once.
run 'etcdctl --user root:rootpw role revoke-permission reader /a/ --prefix'
run 'etcdctl --user alice:alicepw get /a/x'
run 'etcdctl --user root:rootpw user revoke-role alice writer'
run 'etcdctl --user alice:alicepw put /c/b 7'
run 'etcdctl --user root:rootpw user delete bob'
run 'etcdctl --user bob:bobpw get /c/b'
run -i 'newpw' 'etcdctl --user root:rootpw user passwd alice --interactive=false'
run 'etcdctl --user alice:alicepw user get alice'
# Without the root role a user may still read itself and the roles it holds.
run 'etcdctl --user alice:newpw user get alice'
run 'etcdctl --user alice:newpw role get reader'
run 'etcdctl --user alice:newpw role get writer'
run 'etcdctl --user root:rootpw role delete writer && etcdctl --user root:rootpw user get alice'

# ---------------------------------------------------------------------------------------
# Cluster and maintenance: admin-only calls as alice, and as root.
run -s 'etcdctl --user alice:newpw member list'
run 'etcdctl --user alice:newpw member add m4 --peer-urls=http://127.0.0.1:42390'
run 'etcdctl @"$EP1" --user alice:newpw defrag'
run 'etcdctl --user alice:newpw alarm list'
run 'etcdctl @"$EP1" --user alice:newpw endpoint status -w table'
R="$(cur_rev)"
run "etcdctl --user alice:newpw compaction $((R - 1))"
run 'etcdctl --user root:rootpw endpoint status -w table'

# ---------------------------------------------------------------------------------------
run 'etcdctl --user alice:newpw auth disable'
run 'etcdctl --user root:rootpw auth disable'
run 'etcdctl get /a/x'
