#!/usr/bin/env bash
# Runs fakeredis's own test suite against Concord: the "real server" variants of its
# string, key, scan, connection, server, set, hash, transaction and DELEX tests (RESP2 and
# RESP3, redis-py), pointed at a one-member Concord serving Redis on 127.0.0.1:6390, the
# port the suite expects. The tests listed in scripts/fakeredis-deselected.txt are skipped, each with its
# reason there; every other test must pass.
#
#   CONCORD=target/release/concord bash scripts/fakeredis-suite.sh
#
# Needs python3 with venv and network access to PyPI (fakeredis's sdist carries the tests;
# the packages are pinned). Files are kept in a temporary directory (KEEP=1 keeps it).
set -euo pipefail
cd "$(dirname "$0")/.."
CONCORD=${CONCORD:-target/release/concord}
CONCORD=$(realpath "$CONCORD")
VERSION=2.41.0
PORT=6390
FILES=(
    test/test_mixins/test_string_commands.py
    test/test_mixins/test_generic_commands.py
    test/test_mixins/test_generic_scan_commands.py
    test/test_mixins/test_connection_commands.py
    test/test_mixins/test_server_commands.py
    test/test_mixins/test_set_commands.py
    test/test_mixins/test_hash_commands.py
    test/test_mixins/test_transactions_commands.py
    test/test_mixins/test_delex.py
)
DESELECTED="$PWD/scripts/fakeredis-deselected.txt"

source scripts/lib/procs.sh
PIDS=()
WORK=$(mktemp -d)
trap_cleanup

source scripts/lib/apt.sh
apt_install python3 python3
if ! python3 -c 'import ensurepip' 2>/dev/null; then
    apt_get_install python3-venv
fi
python3 -m venv "$WORK/venv"
PY="$WORK/venv/bin/python"
"$PY" -m pip install -q --disable-pip-version-check \
    "fakeredis==$VERSION" redis==8.2.0 valkey==6.2.0 pytest==9.2.0 pytest-asyncio==1.5.0 \
    pytest-mock==3.17.0 hypothesis==6.170.27
"$PY" -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: \
    -d "$WORK" "fakeredis==$VERSION"
tar -xzf "$WORK/fakeredis-$VERSION.tar.gz" -C "$WORK"
SUITE="$WORK/fakeredis-$VERSION"

"$CONCORD" server --name fakeredis --data-dir "$WORK/data" \
    --listen-client-urls http://127.0.0.1:0 --listen-peer-urls http://127.0.0.1:0 \
    --listen-redis-urls "redis://127.0.0.1:$PORT" >"$WORK/concord.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do
    "$PY" -c "import redis; redis.Redis(port=$PORT).ping()" 2>/dev/null && break
    sleep 0.1
done
"$PY" -c "import redis; redis.Redis(port=$PORT).ping()" \
    || { echo "error: Concord did not answer on port $PORT" >&2; tail -20 "$WORK/concord.log" >&2; exit 1; }

args=()
while IFS= read -r line; do
    line=${line%%#*}
    line=${line%"${line##*[![:space:]]}"}
    [ -z "$line" ] && continue
    args+=(--deselect "$line[Strict2]" --deselect "$line[Strict3]")
done <"$DESELECTED"
echo "fakeredis $VERSION: ${#FILES[@]} files, $(( ${#args[@]} / 4 )) tests deselected (scripts/fakeredis-deselected.txt)"
cd "$SUITE"
"$PY" -m pytest -m real -q -p no:cacheprovider -rfE "${FILES[@]}" "${args[@]}"
