#!/usr/bin/env bash
# Short chaos suite for CI (about 10 minutes of runs on 2 cores). Runs expected VALID last
# 20 s (the first register run 30 s; the member-change runs 30 s, since a join or leave
# with its handoff takes several seconds); negative controls (expected INVALID) 30 s.
#   1. register, partitions + kills + pauses                -> must be VALID; the same
#      with leader lease reads (--lease-reads)             -> must be VALID
#   2. register --stale-reads, partitions (negative control) -> must be INVALID
#      (up to 3 attempts with different seeds; one anomaly observed is enough)
#   3. set, every fault                                      -> must be VALID
#   4. bank, every fault                                     -> must be VALID
#   5. reads at bounded=500ms and at session, partitions + process faults
#                                                            -> must be VALID
#   6. the same reads sent eventual (negative controls), partitions -> must be INVALID
#   7. AP buckets over RESP: unique-key SETs, INCRs of one counter, OR-set, register and
#      session workloads at the default N=3 W=2 R=2 (sessions at 1,1), partitions +
#      process faults and member changes                     -> must be VALID
#   8. AP at W=1 R=1 with hinted handoff and anti-entropy off (negative controls),
#      partitions                                            -> must be INVALID
# As root, nodes run in network namespaces (iproute2 and nftables are installed if missing).
# Without root, runs use --local (loopback, process faults only) and the negative control,
# which needs partitions, is skipped.
#
# Environment: CHAOS_OUT (default target/chaos), CHAOS_SEED (default 42; run k uses seed+k),
#              CHAOS_NODES (default 5), CHAOS_SKIP_BUILD=1 to use existing binaries,
#              CHAOS_FULL=1 to add lock and watch runs (30 s each; about 1 more minute).
# Exit status: 0 when every run met its expectation, 1 otherwise.
set -uo pipefail

cd "$(dirname "$0")/.."
OUT="${CHAOS_OUT:-target/chaos}"
SEED="${CHAOS_SEED:-42}"
NODES="${CHAOS_NODES:-5}"
BIN=target/release

if [ "$(id -u)" = 0 ]; then
    MODE=--netns
    missing=()
    command -v ip >/dev/null 2>&1 || missing+=(iproute2)
    command -v nft >/dev/null 2>&1 || missing+=(nftables)
    if [ ${#missing[@]} -gt 0 ]; then
        echo "chaos.sh: installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null || {
            echo "chaos.sh: could not install ${missing[*]}" >&2
            exit 1
        }
    fi
else
    MODE=--local
    echo "chaos.sh: not root: loopback nodes, process faults only, negative control skipped"
fi

if [ "${CHAOS_SKIP_BUILD:-0}" != 1 ]; then
    cargo build --release -p concord -p concord-chaos -p concord-check || {
        echo "chaos.sh: build failed" >&2
        exit 1
    }
fi

mkdir -p "$OUT"
results=()
failed=0
runs=0

# run NAME EXPECT ARGS... : EXPECT is "valid" or "invalid". A run expected invalid (the
# negative control) gets up to 3 attempts (CONTROL_TRIES) with different seeds: whether a stale read is
# observed depends on how partitions and reads interleave, and one observed anomaly is
# the proof that the checker can fail. A run expected valid gets one attempt.
run() {
    local name=$1 expect=$2
    shift 2
    runs=$((runs + 1))
    local extra=() tries=1
    if [ "$expect" = invalid ]; then
        extra+=(--expect-invalid)
        tries=${CONTROL_TRIES:-3}
    fi
    echo "chaos.sh: == $name (expect $expect)"
    local line rc attempt
    for attempt in $(seq 1 "$tries"); do
        line=$("$BIN/concord-chaos" run "$MODE" --nodes "$NODES" \
            --seed "$((SEED + runs + 100 * (attempt - 1)))" \
            --concord-bin "$BIN/concord" --checker "$BIN/concord-check" \
            --out "$OUT/$name" "${extra[@]}" "$@" 2>"$OUT/$name.stderr" | tail -n 1)
        rc=${PIPESTATUS[0]}
        [ -n "$line" ] || line="chaos: no result line (see $OUT/$name.stderr)"
        [ "$rc" = 0 ] && break
        [ "$attempt" -lt "$tries" ] && echo "chaos.sh: attempt $attempt: $line; trying another seed"
    done
    if [ "$rc" = 0 ]; then
        results+=("PASS $name: $line")
    else
        results+=("FAIL $name (exit $rc): $line")
        failed=1
        tail -n 5 "$OUT/$name.stderr" | sed 's/^/    /'
    fi
    echo "$line"
}

if [ "$MODE" = --netns ]; then
    run register valid --workload register --duration 30 --nemesis partitions,process
    run register-lease valid --workload register --duration 20 --nemesis partitions,process \
        --server-arg=--lease-reads
    run register-stale invalid --workload register --duration 30 --nemesis partition --stale-reads
    run set valid --workload set --duration 20 --nemesis all
    run bank valid --workload bank --duration 20 --nemesis all
    run reads-bounded valid --workload reads --read-level bounded=500ms --duration 20 --nemesis partitions,process
    run reads-session valid --workload reads --read-level session --duration 20 --nemesis partitions,process
    run reads-bounded-stale invalid --workload reads --read-level bounded=500ms --duration 30 --nemesis partition --stale-reads
    run reads-session-stale invalid --workload reads --read-level session --duration 30 --nemesis partition --stale-reads
    run ap-set valid --workload ap-set --duration 20 --nemesis partitions,process
    run ap-counter valid --workload ap-counter --duration 20 --nemesis partitions,process
    run ap-set-member valid --workload ap-set --duration 30 --nemesis member
    run ap-counter-member valid --workload ap-counter --duration 30 --nemesis member
    run ap-set-w1 invalid --workload ap-set --duration 30 --nemesis partition --ap-quorum 1,1 \
        --server-arg=--ap-max-hints=0 --server-arg=--ap-anti-entropy-interval=3600000
    run ap-orset valid --workload ap-orset --duration 20 --nemesis partitions,process,clock-skew
    run ap-orset-member valid --workload ap-orset --duration 30 --nemesis member,clock-skew
    # About one run in two shows the OR-set's anomaly (measured: 1 of 5 seeds in one CI
    # run, 1 of 2 by hand), so this control gets more seeds; the first INVALID ends it.
    CONTROL_TRIES=8 run ap-orset-w1 invalid --workload ap-orset --duration 30 --nemesis partition --ap-quorum 1,1 \
        --server-arg=--ap-max-hints=0 --server-arg=--ap-anti-entropy-interval=3600000
    run ap-register valid --workload ap-register --duration 20 \
        --nemesis partitions,process,clock-skew
    run ap-register-member valid --workload ap-register --duration 30 --nemesis member,clock-skew
    run ap-register-plain invalid --workload ap-register --duration 30 --nemesis partition \
        --stale-reads --ap-quorum 1,1 --server-arg=--ap-max-hints=0 \
        --server-arg=--ap-anti-entropy-interval=3600000
    run ap-session valid --workload ap-session --duration 20 \
        --nemesis partitions,process,clock-skew \
        --ap-quorum 1,1
    run ap-session-member valid --workload ap-session --duration 30 --nemesis member,clock-skew \
        --ap-quorum 1,1
    run ap-session-plain invalid --workload ap-session --duration 30 --nemesis partition \
        --stale-reads --ap-quorum 1,1 --server-arg=--ap-max-hints=0 \
        --server-arg=--ap-anti-entropy-interval=3600000
    if [ "${CHAOS_FULL:-0}" = 1 ]; then
        run lock valid --workload lock --duration 30 --nemesis all
        run watch valid --workload watch --duration 30 --nemesis all
    fi
else
    run register valid --workload register --duration 60 --nemesis process
    results+=("SKIP register-stale: the negative control needs partitions (root)")
    run set valid --workload set --duration 30 --nemesis process
    run bank valid --workload bank --duration 30 --nemesis process
    run reads-session valid --workload reads --read-level session --duration 30 --nemesis process
    run ap-set valid --workload ap-set --duration 30 --nemesis process
    run ap-counter valid --workload ap-counter --duration 30 --nemesis process
    run ap-orset valid --workload ap-orset --duration 30 --nemesis process
    run ap-register valid --workload ap-register --duration 30 --nemesis process
    run ap-session valid --workload ap-session --duration 30 --nemesis process --ap-quorum 1,1
fi

echo "chaos.sh: results (outputs under $OUT)"
for r in "${results[@]}"; do
    echo "  $r"
done
exit "$failed"
