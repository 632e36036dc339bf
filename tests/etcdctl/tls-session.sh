#!/usr/bin/env bash
# A scripted etcdctl (API v3) session against a running 3-member cluster that uses mutual
# TLS on its client and peer URLs (scripts/etcdctl-suite.sh with TLS=1).
#
#   CACERT=ca.crt CERT=client.crt KEY=client.key \
#   STRANGER_CERT=s.crt STRANGER_KEY=s.key OTHER_CACERT=other-ca.crt \
#   tests/etcdctl/tls-session.sh https://127.0.0.1:42379,https://127.0.0.1:52379,https://127.0.0.1:62379
#
# CACERT: the CA that signed the members' certificates (and that they trust for clients);
# CERT/KEY: a client certificate signed by it; STRANGER_CERT/STRANGER_KEY: a client
# certificate signed by an unrelated CA, OTHER_CACERT.
#
# Same transcript format as session.sh (`### [N] COMMAND`, output, `### exit=RC`), which
# normalise.py reads. In commands, `etcdctl` is a wrapper that talks to every endpoint with
# --cacert/--cert/--key; `etcdctl-bare` is etcdctl itself, with no flags added, for the
# steps that choose their own endpoint and certificates. Paths appear in headers as the
# variable names ($CACERT...), not as the temp paths they stand for.
#
# The session assumes a fresh cluster (store revision 1) and endpoints in member order
# m1,m2,m3. Every wait is bounded: each failing connection has --dial-timeout=2s
# --command-timeout=3s and runs under `timeout 10`.
set -uo pipefail

if [ $# -ne 1 ]; then
    echo "usage: $0 ENDPOINTS (comma-separated, e.g. https://127.0.0.1:42379,https://127.0.0.1:52379,https://127.0.0.1:62379)" >&2
    exit 2
fi
for v in CACERT CERT KEY STRANGER_CERT STRANGER_KEY OTHER_CACERT; do
    [ -n "${!v:-}" ] && [ -r "${!v}" ] || { echo "error: \$$v must name a readable file" >&2; exit 2; }
    export "${v?}"
done
export ETCDCTL_API=3
ENDPOINTS="$1"
EP1="${ENDPOINTS%%,*}"
# EP1 without its scheme, for the plain-text (http://) attempt on the TLS port.
export EP1 EP1_HOSTPORT="${EP1#*://}"
source "$(dirname "$0")/lib.sh"
session_start etcdctl-tls-session 3s 5s '--cacert="$CACERT"' '--cert="$CERT"' '--key="$KEY"'
ln -s "$ETCDCTL_BIN" "$TMP/bin/etcdctl-bare"

# ---------------------------------------------------------------------------------------
# put / get / del over TLS, with the client certificate
run 'etcdctl put tls/a 1'
run 'etcdctl put tls/b 2'
run 'etcdctl put tls/a 10 --prev-kv'
run 'etcdctl get tls/ --prefix'
run 'etcdctl get tls/a -w json'
run 'etcdctl del tls/b --prev-kv'

# txn
run -i 'value("tls/a") = "10"

put tls/t from-success

put tls/t from-failure
' 'etcdctl txn'

# watch from history, ended by `timeout`
W0="$(($(cur_rev) - 3))"
run "timeout 2 etcdctl watch --rev $W0 --prefix tls/"

# lease
run 'etcdctl lease grant 60'
L1="$(last_out | awk '/granted/ {print $2}')"
run "etcdctl put tls/l 1 --lease=$L1"
run "etcdctl lease keep-alive --once $L1"
run "etcdctl lease timetolive $L1 --keys"
run "etcdctl lease revoke $L1"

# cluster: client and peer URLs are https://
run -s 'etcdctl member list'
run -s 'etcdctl member list -w table'
run -s 'etcdctl endpoint health'
run 'etcdctl endpoint status -w table'
run "etcdctl endpoint status -w json | python3 -c 'import json,sys; print(\"leaders:\", sum(s[\"Status\"][\"leader\"] == s[\"Status\"][\"header\"][\"member_id\"] for s in json.load(sys.stdin)))'"
run 'etcdctl @"$EP1" get tls/a'

# ---------------------------------------------------------------------------------------
# Refused connections, one endpoint each (m1), bounded by the dial and command timeouts.
#
# etcdctl 3.4 does not print why a TLS handshake failed, whichever side refused it: its
# balancer only reports "all SubConns are in TransientFailure" and the command ends with
# "Error: context deadline exceeded" (exit 1). So these lines are the same text for any
# server that refuses the connection, and need no normalisation; the TLS reason (no
# certificate, unknown issuer, alert from the client, not a TLS record) is in the members'
# logs only. A server that accepted one of these connections would answer `tls/a 10` with
# exit 0 instead, which the diff shows.
#
# No client certificate: refused by the server (--client-cert-auth).
run 'timeout 10 etcdctl-bare --endpoints="$EP1" --dial-timeout=2s --command-timeout=3s --cacert="$CACERT" get tls/a'
# A client certificate from another CA: refused by the server (unknown issuer).
run 'timeout 10 etcdctl-bare --endpoints="$EP1" --dial-timeout=2s --command-timeout=3s --cacert="$CACERT" --cert="$STRANGER_CERT" --key="$STRANGER_KEY" get tls/a'
# --cacert of another CA: the client does not trust the server's certificate.
run 'timeout 10 etcdctl-bare --endpoints="$EP1" --dial-timeout=2s --command-timeout=3s --cacert="$OTHER_CACERT" --cert="$CERT" --key="$KEY" get tls/a'
# Plain text (http://, so etcdctl dials without TLS) to the TLS port.
run 'timeout 10 etcdctl-bare --endpoints="http://$EP1_HOSTPORT" --dial-timeout=2s --command-timeout=3s --cacert="$CACERT" --cert="$CERT" --key="$KEY" get tls/a'
# https:// without any TLS flag: etcdctl verifies the server against the system's roots.
run 'timeout 10 etcdctl-bare --endpoints="$EP1" --dial-timeout=2s --command-timeout=3s get tls/a'
# endpoint health reports the refused member as unhealthy.
run 'timeout 10 etcdctl-bare --endpoints="$EP1" --dial-timeout=2s --command-timeout=3s --cacert="$CACERT" --cert="$STRANGER_CERT" --key="$STRANGER_KEY" endpoint health'
# --insecure-skip-tls-verify: the server's certificate is not checked, the client's still is.
# (Without --cert, etcdctl 3.4 only honours it with --insecure-transport=false.)
run 'timeout 10 etcdctl-bare --endpoints="$EP1" --dial-timeout=2s --command-timeout=3s --insecure-skip-tls-verify --cert="$CERT" --key="$KEY" get tls/a'
run 'timeout 10 etcdctl-bare --endpoints="$EP1" --dial-timeout=2s --command-timeout=3s --insecure-transport=false --insecure-skip-tls-verify get tls/a'
