#!/usr/bin/env bash
# etcdctl compatibility suite: runs one scripted etcdctl session (tests/etcdctl/session.sh)
# against a 3-member cluster on loopback and compares its normalised transcript with a
# golden transcript recorded against real etcd. With TLS=1 the cluster uses mutual TLS and
# the session is tests/etcdctl/tls-session.sh (golden file tests/etcdctl/golden-tls.txt).
# With AUTH=1 the cluster is the plain-text one and the session is
# tests/etcdctl/auth-session.sh (users, roles, auth enable; golden-auth.txt).
#
#   scripts/etcdctl-suite.sh record   # etcd 3.4 (Debian etcd-server) -> tests/etcdctl/golden.txt
#   scripts/etcdctl-suite.sh check    # concord server (default): diff against golden.txt
#   scripts/etcdctl-suite.sh show [etcd|concord]  # print the normalised transcript only
#
# Environment:
#   CONCORD=path   use this concord binary instead of `cargo build --release -p concord`
#   KEEP=1         keep the temp dir (member logs, raw transcript) and print its path
#   TLS=1          mutual TLS on every URL: the script makes a CA and certificates with
#                  openssl (in the temp dir), starts the members with https:// client and peer
#                  URLs and etcd's eight TLS flags, runs tests/etcdctl/tls-session.sh instead
#                  and compares with tests/etcdctl/golden-tls.txt
#   AUTH=1         the plain-text cluster, but the session is tests/etcdctl/auth-session.sh
#                  (users, roles, permissions, auth enable/disable) and the golden file is
#                  tests/etcdctl/golden-auth.txt; not combined with TLS=1
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

TLS="${TLS:-0}"
case "$TLS" in
    0 | "") TLS=0 SCHEME=http SESSION=session.sh GOLDEN_NAME=golden.txt ;;
    1) SCHEME=https SESSION=tls-session.sh GOLDEN_NAME=golden-tls.txt ;;
    *) echo "error: TLS must be 0 or 1, not $TLS" >&2; exit 2 ;;
esac
AUTH="${AUTH:-0}"
case "$AUTH" in
    0 | "") AUTH=0 ;;
    1)
        [ "$TLS" = 0 ] || { echo "error: AUTH=1 and TLS=1 cannot be combined" >&2; exit 2; }
        SESSION=auth-session.sh GOLDEN_NAME=golden-auth.txt
        ;;
    *) echo "error: AUTH must be 0 or 1, not $AUTH" >&2; exit 2 ;;
esac

source "$PWD/scripts/lib/apt.sh"
apt_install etcd-client etcdctl
command -v python3 >/dev/null 2>&1 || apt_install python3-minimal python3
if [ "$TLS" = 1 ]; then apt_install openssl openssl; fi
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

# TLS=1: certificates, all EC P-256 (PKCS#8 keys), valid for ten years, under $WORK/tls:
#   ca             self-signed CA "etcdctl-suite CA"; trusted for clients and peers
#   m1, m2, m3     one per member, signed by ca, SAN IP:127.0.0.1 and DNS:localhost,
#                  serverAuth + clientAuth (the same certificate serves both URLs and is
#                  presented to the other members)
#   root-client    signed by ca, clientAuth: etcdctl's certificate
#   other-ca       an unrelated self-signed CA, and `stranger` (clientAuth) signed by it
TLSDIR="$WORK/tls"
tls_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
# tls_ca NAME CN: a self-signed CA certificate NAME.crt with its key NAME.key.
tls_ca() {
    tls_key "$TLSDIR/$1.key"
    openssl req -x509 -new -key "$TLSDIR/$1.key" -subj "/CN=$2" -days 3650 -sha256 \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -out "$TLSDIR/$1.crt" 2>/dev/null
}
# tls_leaf CA NAME EXTENSION...: NAME.crt (CN=NAME) and NAME.key, signed by CA.
tls_leaf() {
    local ca="$1" name="$2"
    shift 2
    tls_key "$TLSDIR/$name.key"
    printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" "$@" \
        >"$TLSDIR/$name.ext"
    openssl req -new -key "$TLSDIR/$name.key" -subj "/CN=$name" 2>/dev/null \
        | openssl x509 -req -CA "$TLSDIR/$ca.crt" -CAkey "$TLSDIR/$ca.key" -set_serial "0x$(openssl rand -hex 8)" \
            -days 3650 -sha256 -extfile "$TLSDIR/$name.ext" -out "$TLSDIR/$name.crt" 2>/dev/null
    rm -f "$TLSDIR/$name.ext"
}
TLS_CTL=()
if [ "$TLS" = 1 ]; then
    mkdir -p "$TLSDIR"
    tls_ca ca "etcdctl-suite CA"
    for m in m1 m2 m3; do
        tls_leaf ca "$m" "extendedKeyUsage=serverAuth,clientAuth" "subjectAltName=IP:127.0.0.1,DNS:localhost"
    done
    tls_leaf ca root-client "extendedKeyUsage=clientAuth"
    tls_ca other-ca "etcdctl-suite other CA"
    tls_leaf other-ca stranger "extendedKeyUsage=clientAuth"
    for f in ca m1 m2 m3 root-client other-ca stranger; do
        [ -s "$TLSDIR/$f.crt" ] && [ -s "$TLSDIR/$f.key" ] \
            || { echo "error: openssl did not make $TLSDIR/$f.crt and .key" >&2; exit 1; }
    done
    # What tls-session.sh needs.
    export CACERT="$TLSDIR/ca.crt" CERT="$TLSDIR/root-client.crt" KEY="$TLSDIR/root-client.key"
    export STRANGER_CERT="$TLSDIR/stranger.crt" STRANGER_KEY="$TLSDIR/stranger.key"
    export OTHER_CACERT="$TLSDIR/other-ca.crt"
    TLS_CTL=(--cacert "$CACERT" --cert "$CERT" --key "$KEY")
fi

# Member i: client port CLIENT[i], peer port CLIENT[i]+1.
CLIENT=(42379 52379 62379)
CLUSTER="" ENDPOINTS=""
for i in 0 1 2; do
    CLUSTER+="${CLUSTER:+,}m$((i + 1))=$SCHEME://127.0.0.1:$((CLIENT[i] + 1))"
    if [ "$TLS" = 1 ]; then
        ENDPOINTS+="${ENDPOINTS:+,}https://127.0.0.1:${CLIENT[i]}"
    else
        ENDPOINTS+="${ENDPOINTS:+,}127.0.0.1:${CLIENT[i]}"
    fi
done
for i in 0 1 2; do
    c=${CLIENT[i]} p=$((CLIENT[i] + 1)) name="m$((i + 1))"
    if (exec 3<>"/dev/tcp/127.0.0.1/$c") 2>/dev/null || (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
        echo "error: port $c or $p is already in use" >&2
        exit 1
    fi
    tls_flags=()
    if [ "$TLS" = 1 ]; then
        tls_flags=(--cert-file "$TLSDIR/$name.crt" --key-file "$TLSDIR/$name.key"
            --trusted-ca-file "$TLSDIR/ca.crt" --client-cert-auth
            --peer-cert-file "$TLSDIR/$name.crt" --peer-key-file "$TLSDIR/$name.key"
            --peer-trusted-ca-file "$TLSDIR/ca.crt" --peer-client-cert-auth)
    fi
    "${SERVER[@]}" --name "$name" \
        --data-dir "$WORK/$name" \
        --listen-client-urls "$SCHEME://127.0.0.1:$c" --advertise-client-urls "$SCHEME://127.0.0.1:$c" \
        --listen-peer-urls "$SCHEME://127.0.0.1:$p" --initial-advertise-peer-urls "$SCHEME://127.0.0.1:$p" \
        ${tls_flags[@]+"${tls_flags[@]}"} \
        --initial-cluster "$CLUSTER" --initial-cluster-state new \
        --initial-cluster-token etcdctl-suite \
        --heartbeat-interval 100 --election-timeout 1000 >"$WORK/$name.log" 2>&1 &
    PIDS+=($!)
done

# Wait (at most 30 s) until every member answers a linearizable read, i.e. a leader exists.
IFS=, read -r -a ENDPOINTS_ARR <<<"$ENDPOINTS"
deadline=$((SECONDS + 30))
for i in 0 1 2; do
    until ETCDCTL_API=3 timeout 3 etcdctl --endpoints "${ENDPOINTS_ARR[i]}" ${TLS_CTL[@]+"${TLS_CTL[@]}"} \
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
SESSION_TMPDIR="$WORK" bash "$ROOT/tests/etcdctl/$SESSION" "$ENDPOINTS" >"$WORK/transcript.raw" 2>"$WORK/session.err" \
    || { echo "error: $SESSION failed:" >&2; cat "$WORK/session.err" >&2; exit 1; }
python3 "$ROOT/tests/etcdctl/normalise.py" <"$WORK/transcript.raw" >"$WORK/transcript.txt"
echo "session done in $((SECONDS - start)) s" >&2

GOLDEN="$ROOT/tests/etcdctl/$GOLDEN_NAME"
case "$MODE" in
    record)
        cp "$WORK/transcript.txt" "$GOLDEN"
        echo "wrote $GOLDEN ($(etcd --version | sed -n 1p), $(etcdctl version | sed -n 1p))" >&2
        ;;
    show)
        cat "$WORK/transcript.txt"
        ;;
    check)
        if diff -u --label "$GOLDEN_NAME" --label concord.txt "$GOLDEN" "$WORK/transcript.txt"; then
            echo "etcdctl suite: PASS (transcript matches $GOLDEN_NAME)" >&2
        else
            echo "etcdctl suite: FAIL (diff above: - etcd, + concord)" >&2
            exit 1
        fi
        ;;
esac
