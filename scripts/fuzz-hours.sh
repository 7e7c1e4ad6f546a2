#!/usr/bin/env bash
# A long fuzzing campaign counted in CPU time: runs the given targets through
# scripts/fuzz.sh in slices of SLICE_S seconds of wall time, always the target
# with the least CPU time so far, until every one has had GOAL_CPU_S CPU
# seconds in all. "So far" is the sum over fuzz/artifacts/ledger.tsv, which
# fuzz.sh adds a row to for each run, so a campaign can stop and go on later
# (the corpus in fuzz/corpus/<target>/ grows across runs).
#
#   scripts/fuzz-hours.sh GOAL_CPU_S SLICE_S TARGET...
#   scripts/fuzz-hours.sh --totals [TARGET...]     # the ledger's sums
#
# On a shared machine the fuzzers run at nice 19 (fuzz.sh's FUZZ_NICE) and
# get the CPU left over, which is why the goal is CPU time, not wall time.
# Two campaigns over disjoint targets can run side by side (one per core).
# Stops at the first finding (fuzz.sh exits 1) or a target that did not run
# (exit 2), with fuzz.sh's status. The environment goes to fuzz.sh
# (FUZZ_NO_BUILD=1 runs the targets as last built).
set -euo pipefail
cd "$(dirname "$0")/.."
ledger=fuzz/artifacts/ledger.tsv

cpu_of() { # the ledger's CPU seconds for target $1
    [ -f "$ledger" ] || { echo 0; return; }
    awk -F'\t' -v t="$1" 'NR > 1 && $3 == t && $5 ~ /^[0-9]+$/ { s += $5 } END { print s + 0 }' "$ledger"
}

if [ "${1:-}" = --totals ]; then
    shift
    targets=("$@")
    if [ "${#targets[@]}" = 0 ] && [ -f "$ledger" ]; then
        mapfile -t targets < <(awk -F'\t' 'NR > 1 { print $3 }' "$ledger" | sort -u)
    fi
    printf '%-9s %8s %6s %5s\n' target cpu-s cpu-h runs
    for t in "${targets[@]}"; do
        runs=$(awk -F'\t' -v t="$t" 'NR > 1 && $3 == t' "$ledger" 2>/dev/null | wc -l)
        c=$(cpu_of "$t")
        printf '%-9s %8s %6s %5s\n' "$t" "$c" "$(awk -v c="$c" 'BEGIN { printf "%.2f", c / 3600 }')" "$runs"
    done
    exit 0
fi

if [ "$#" -lt 3 ]; then
    echo "usage: $0 GOAL_CPU_S SLICE_S TARGET...   or   $0 --totals [TARGET...]" >&2
    exit 2
fi
goal=$1 slice=$2
shift 2
# With the scheduler's autogroups (kernel.sched_autogroup_enabled = 1), nice
# only orders processes within one session; lowering this session's group
# too makes the fuzzers take only the CPU other sessions leave idle.
if [ -w /proc/self/autogroup ]; then
    echo "${FUZZ_NICE:-19}" >/proc/self/autogroup 2>/dev/null || true
fi
while true; do
    next="" least=""
    for t in "$@"; do
        c=$(cpu_of "$t")
        if [ "$c" -lt "$goal" ] && { [ -z "$least" ] || [ "$c" -lt "$least" ]; }; then
            next=$t least=$c
        fi
    done
    if [ -z "$next" ]; then
        echo "== every target has had ${goal} CPU seconds"
        exec "$0" --totals "$@"
    fi
    echo "== $(date -u +%H:%M:%S) $next: ${least} of ${goal} CPU seconds so far; ${slice} s more"
    scripts/fuzz.sh "$slice" "$next"
done
