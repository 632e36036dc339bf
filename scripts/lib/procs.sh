# Sourced by the scripts that start processes. They keep the PIDs they started in the
# array PIDS and their files in the directory WORK; `trap_cleanup` makes every exit stop
# those processes (SIGTERM, up to 5 s to go, then SIGKILL) and remove WORK (kept when
# KEEP is set). Only the processes in PIDS are ever signalled.

stop_pids() {
    local p
    # A stopped process (SIGSTOP) would not act on SIGTERM until continued.
    for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -CONT "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -TERM "$p" 2>/dev/null || true; done
    for _ in $(seq 1 50); do
        local alive=""
        for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -0 "$p" 2>/dev/null && alive=1; done
        [ -z "$alive" ] && break
        sleep 0.1
    done
    for p in "${PIDS[@]:-}"; do
        [ -n "$p" ] || continue
        kill -KILL "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
}

cleanup() {
    stop_pids
    if [ -n "${KEEP:-}" ]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
}

trap_cleanup() {
    trap cleanup EXIT
    trap 'exit 130' INT TERM
}
