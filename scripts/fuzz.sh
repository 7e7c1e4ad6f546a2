#!/usr/bin/env bash
# Coverage-guided fuzzing campaign (cargo fuzz / libFuzzer on the stable
# toolchain through RUSTC_BOOTSTRAP=1): builds the targets in fuzz/ and runs
# each one after the other for SECONDS_PER_TARGET, then prints, per target,
# the CPU seconds used, the executions, the coverage (edges, features, corpus size) and the crashes,
# timeouts and out-of-memory inputs found.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#
# SECONDS_PER_TARGET defaults to 60. Targets default to every parser target
# (sniff text markdown html jsonl pdf docx); `http` (the service's router,
# which builds the whole service) runs only when named. Environment:
#   FUZZ_TARGET_DIR  cargo's target dir (default ~/.cache/target-fuzz)
#   FUZZ_NICE        nice level of the fuzzing processes (default 19)
#   FUZZ_BUILD_LOCK  a file to `flock` around the build (optional)
#   FUZZ_RSS_MB      libFuzzer's -rss_limit_mb and -malloc_limit_mb (default 2048)
#   FUZZ_TIMEOUT_S   libFuzzer's -timeout: one input may take this long (default 10)
#   FUZZ_NO_BUILD    1: run the targets as last built (e.g. while another
#                    campaign builds `http`), without asking cargo first
# New corpus inputs go to fuzz/corpus/<target>/ (only the seed-* files there
# are committed); crashes, timeouts and OOMs to fuzz/artifacts/<target>/.
# Each target's run is added to the ledger fuzz/artifacts/ledger.tsv (date,
# commit, target, wall and CPU seconds, executions, coverage, findings), which
# scripts/fuzz-hours.sh sums to run targets up to a CPU-time goal.
# Exits 1 when any target found something.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_TARGET="${1:-60}"
shift || true
PARSER_TARGETS=(sniff text markdown html jsonl pdf docx)
if [ "$#" -gt 0 ]; then TARGETS=("$@"); else TARGETS=("${PARSER_TARGETS[@]}"); fi

CARGO_FUZZ_VERSION=0.13.2
CARGO_FUZZ_ROOT="$HOME/.cache/cargo-fuzz-$CARGO_FUZZ_VERSION"
TARGET_DIR="${FUZZ_TARGET_DIR:-$HOME/.cache/target-fuzz}"
NICE="${FUZZ_NICE:-19}"
RSS_MB="${FUZZ_RSS_MB:-2048}"
TIMEOUT_S="${FUZZ_TIMEOUT_S:-10}"
# cargo fuzz passes -Z flags (sanitizer coverage) to rustc: allowed on the
# stable toolchain with RUSTC_BOOTSTRAP=1.
export RUSTC_BOOTSTRAP=1
export CARGO_TERM_COLOR=never
export PATH="$CARGO_FUZZ_ROOT/bin:$PATH"

if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
    echo "== installing cargo-fuzz $CARGO_FUZZ_VERSION into $CARGO_FUZZ_ROOT"
    cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION" --root "$CARGO_FUZZ_ROOT" \
        --target-dir "$HOME/.cache/target-fuzz-install"
fi

# Release build with debug assertions and overflow checks, no sanitizer (the
# targets are Rust; see docs/RELIABILITY.md for why not ASan).
BUILD_FLAGS=(-O -a -s none --target-dir "$TARGET_DIR")
features=()
for t in "${TARGETS[@]}"; do
    [ "$t" = http ] && features=(--features http)
done
lock=()
[ -n "${FUZZ_BUILD_LOCK:-}" ] && lock=(flock "$FUZZ_BUILD_LOCK")
if [ "${FUZZ_NO_BUILD:-0}" != 1 ]; then
    echo "== building fuzz targets: ${TARGETS[*]}"
    build_start=$(date +%s)
    for t in "${TARGETS[@]}"; do
        (cd fuzz && "${lock[@]}" cargo fuzz build "${BUILD_FLAGS[@]}" "${features[@]}" "$t")
    done
    echo "== built in $(($(date +%s) - build_start)) s"
fi

BIN_DIR="$TARGET_DIR/x86_64-unknown-linux-gnu/release"
summary=()
found_any=0
broken_any=0
if [ ! -x /usr/bin/time ]; then
    echo "/usr/bin/time is missing (Debian: apt-get install time): it measures each target's CPU seconds" >&2
    exit 2
fi
for t in "${TARGETS[@]}"; do
    corpus="fuzz/corpus/$t"
    artifacts="fuzz/artifacts/$t"
    mkdir -p "$corpus" "$artifacts"
    log="fuzz/artifacts/$t.log"
    before=$(find "$artifacts" -type f | wc -l)
    echo "== fuzzing $t for ${SECONDS_PER_TARGET}s (log: $log)"
    # Fork mode with -ignore_*: a crash, timeout or OOM is saved and the
    # campaign goes on, instead of stopping at the first one.
    cpu_file="fuzz/artifacts/$t.cpu"
    started=$(date +%s)
    set +e
    # /usr/bin/time: the CPU seconds of libFuzzer and its forked jobs.
    /usr/bin/time -f '%U %S' -o "$cpu_file" nice -n "$NICE" "$BIN_DIR/$t" "$corpus" \
        -fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1 \
        -max_total_time="$SECONDS_PER_TARGET" -rss_limit_mb="$RSS_MB" -malloc_limit_mb="$RSS_MB" \
        -timeout="$TIMEOUT_S" -artifact_prefix="$artifacts/" -print_final_stats=1 >"$log" 2>&1
    rc=$?
    set -e
    # The fork-mode status lines: "#EXECS: cov: E ft: F corp: C exec/s: S oom/timeout/crash: O/T/X time: ..."
    last=$(grep -E '^#[0-9]+: cov:' "$log" | tail -n 1 || true)
    execs=$(sed -E 's/^#([0-9]+):.*/\1/' <<<"$last")
    cov=$(sed -nE 's/.* cov: ([0-9]+).*/\1/p' <<<"$last")
    ft=$(sed -nE 's/.* ft: ([0-9]+).*/\1/p' <<<"$last")
    corp=$(sed -nE 's/.* corp: ([0-9]+).*/\1/p' <<<"$last")
    otc=$(sed -nE 's|.* oom/timeout/crash: ([0-9]+/[0-9]+/[0-9]+).*|\1|p' <<<"$last")
    cpu=$(awk 'END { printf "%.0f", $1 + $2 }' "$cpu_file" 2>/dev/null || true)
    after=$(find "$artifacts" -type f | wc -l)
    new=$((after - before))
    [ "$new" -gt 0 ] && found_any=1
    # libFuzzer's fork mode exits 0 when it ran its time (findings are
    # counted above); anything else means it did not run as asked.
    [ "$rc" != 0 ] && broken_any=1
    ledger=fuzz/artifacts/ledger.tsv
    [ -s "$ledger" ] || printf 'date\tcommit\ttarget\twall_s\tcpu_s\texecutions\tedges\tfeatures\tcorpus\toom/timeout/crash\tnew_inputs\trc\n' >"$ledger"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
        "$(git rev-parse --short HEAD 2>/dev/null || echo '?')" "$t" "$(($(date +%s) - started))" "${cpu:-?}" \
        "${execs:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}" "${otc:-?}" "$new" "$rc" >>"$ledger"
    summary+=("$(printf '%-9s %7s %12s %7s %8s %6s %17s %10s %4s' "$t" "${cpu:-?}" "${execs:-?}" "${cov:-?}" \
        "${ft:-?}" "${corp:-?}" "${otc:-?}" "$new" "$rc")")
done

echo
echo "== summary: ${SECONDS_PER_TARGET}s per target"
printf '%-9s %7s %12s %7s %8s %6s %17s %10s %4s\n' target cpu-s executions edges features corpus oom/timeout/crash new-inputs rc
printf '%s\n' "${summary[@]}"
if [ "$found_any" = 1 ]; then
    echo "findings saved under fuzz/artifacts/<target>/: minimise them (docs/RELIABILITY.md) and keep them under fuzz/regressions/<target>/"
    exit 1
fi
if [ "$broken_any" = 1 ]; then
    echo "a fuzz target did not run to its time (rc above; its log is fuzz/artifacts/<target>.log)" >&2
    exit 2
fi
