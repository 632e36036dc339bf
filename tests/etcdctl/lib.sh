# Sourced by the etcdctl sessions (session.sh, tls-session.sh, auth-session.sh) after they
# set ENDPOINTS: the scratch directory, the `etcdctl` wrapper on PATH, the transcript's
# `run`, and the helpers `cur_rev` and `last_out`.
#
# session_start NAME DIAL_TIMEOUT COMMAND_TIMEOUT [FLAG...]
#   Makes $TMP (under $SESSION_TMPDIR when set, which the suite passes, else $TMPDIR or
#   /tmp), removed on exit with every process in BG stopped, and cds there. Puts on PATH an
#   `etcdctl` that talks to every endpoint of $ENDPOINTS (the client balances requests
#   over them), or to one when its first argument is `@ENDPOINT`, with the two timeouts and
#   the FLAGs (written into the wrapper as given, so '--cacert="$CACERT"' reads the
#   variable when the command runs).
# DROP: when set, a basic regular expression; output lines matching it are left out of the
#   transcript (the raw output stays in $TMP/out.all).

BG=()
N=0

session_start() {
    local name="$1" dial="$2" command="$3"
    shift 3
    ETCDCTL_BIN="$(command -v etcdctl)" || { echo "etcdctl not found" >&2; exit 1; }
    TMP="$(mktemp -d "${SESSION_TMPDIR:-${TMPDIR:-/tmp}}/$name.XXXXXX")" || exit 1
    trap session_cleanup EXIT
    cd "$TMP" || exit 1
    mkdir -p "$TMP/bin"
    {
        echo '#!/usr/bin/env bash'
        echo "eps=\"$ENDPOINTS\""
        echo 'case "${1:-}" in @*) eps="${1#@}"; shift ;; esac'
        echo "exec \"$ETCDCTL_BIN\" --endpoints=\"\$eps\" --dial-timeout=$dial --command-timeout=$command $* \"\$@\""
    } >"$TMP/bin/etcdctl"
    chmod +x "$TMP/bin/etcdctl"
    export PATH="$TMP/bin:$PATH"
}

session_cleanup() {
    local p
    for p in "${BG[@]:-}"; do [ -n "$p" ] && kill -TERM "$p" 2>/dev/null || true; done
    rm -rf "$TMP"
}

# run [-s] [-i STDIN] COMMAND: runs COMMAND (a bash string) under a 15 s limit and appends
# its header, merged output and exit code to the transcript. -s: output order is undefined,
# sort it; -i: feed STDIN to the command.
run() {
    local sort="" stdin="" rc
    while :; do
        case "$1" in
            -s) sort=1; shift ;;
            -i) stdin="$2"; shift 2 ;;
            *) break ;;
        esac
    done
    N=$((N + 1))
    if [ ! -d "$TMP" ]; then
        echo "error: the session's temp dir $TMP vanished before step $N" >&2
        exit 1
    fi
    echo "### [$N] $1"
    [ -n "$stdin" ] && printf '%s\n' "$stdin" | sed 's/^/### stdin: /'
    [ -n "$sort" ] && echo "### sort"
    # etcdctl txn ends each section at an empty line, so the input ends with a newline.
    [ -n "$stdin" ] && printf '%s\n' "$stdin" >"$TMP/stdin" || : >"$TMP/stdin"
    # Variables a command refers to literally (single quotes) must be exported.
    timeout -k 2 15 bash -c "$1" <"$TMP/stdin" >"$TMP/out.all" 2>&1
    rc=$?
    if [ -n "${DROP:-}" ]; then
        grep -v -- "$DROP" "$TMP/out.all" >"$TMP/out"
    else
        cp "$TMP/out.all" "$TMP/out"
    fi
    cat "$TMP/out"
    [ -n "$(tail -c1 "$TMP/out")" ] && echo
    echo "### exit=$rc"
}

# The store's current revision (from a response header).
cur_rev() {
    etcdctl get rev-probe -w json 2>/dev/null \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["header"]["revision"])'
}

# A step's output, for the session to reuse (e.g. a lease id).
last_out() { cat "$TMP/out"; }
