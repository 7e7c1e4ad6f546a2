#!/usr/bin/env bash
# The GPU check: one prepared script for a machine with an NVIDIA GPU and
# the CUDA 13 libraries of a PyTorch install (docs/BENCHMARKS.md, "GPU").
# Run from the repository root after `bash bench/gpu/prepare.sh` has put the
# CUDA builds and the inputs into .gpu/ (only .gpu/bin.tar.xz,
# passages.json, pairs.json and queries.json need to travel). Results go to
# $OUT (default /tmp/datafactory-gpu): one log per step, summary.jsonl (one
# JSON object per measurement) and summary.txt (the table printed at the end).
#
# In order, each step skipped (and recorded as skipped) once the time budget
# CHECK_BUDGET_S (default 330 s) is spent, the most needed first:
#   1. the GPU tests (each fused kernel and the whole encoder against the CPU)
#   2. bge-m3-shaped embedder, f16 and bf16, batch 32 and 128, our fused
#      kernels on and off (DATAFACTORY_CUDA_FUSED=0), then
#      sentence-transformers on the same passages (cosine against both)
#   3. single-query latency, p50 of 200 one-sentence queries, both engines
#   4. bge-reranker-v2-m3-shaped cross-encoder, the same matrix, and
#      sentence-transformers' CrossEncoder
#   5. the per-stage profile (bench/gpu/profile.sh), fused kernels on
#   6. the launcher on the GPU (bench/gpu/launcher.sh)
#   7. ingest + hybrid search with the embedder on the GPU
set -u
OUT=${OUT:-/tmp/datafactory-gpu}
G=$PWD/.gpu
BUDGET=${CHECK_BUDGET_S:-330}
REPEATS=${REPEATS:-2}
VEC=/tmp/datafactory-gpu-vectors
START=$SECONDS
mkdir -p "$OUT" "$VEC"
S="$OUT/summary.jsonl"
: >"$S"
step() { echo "== $* (+$((SECONDS - START)) s)"; }
left() { echo $((BUDGET - (SECONDS - START))); }
# can SECONDS WHAT: whether SECONDS of the budget are left; records a skip if not.
can() {
  [ "$(left)" -ge "$1" ] && return 0
  echo "{\"skipped\": \"$2\", \"at_seconds\": $((SECONDS - START))}" | tee -a "$S"
  return 1
}
# bounded: runs a command with what is left of the budget (at least 20 s).
bounded() { local t; t=$(left); [ "$t" -lt 20 ] && t=20; timeout --kill-after=5 "$t" "$@"; }

step gpu
nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv,noheader | tee "$OUT/gpu.txt"
nproc | sed 's/^/cpus: /' | tee -a "$OUT/gpu.txt"

# The binaries were linked against CUDA 13.0's libraries: take the ones the
# image's PyTorch wheels carry, and the driver's libcuda.
NV=$(python3 -c 'import nvidia; print(" ".join(nvidia.__path__))' 2>/dev/null)
LIBS=$(find $NV /usr/local/cuda/lib64 -name 'lib*.so*' -printf '%h\n' 2>/dev/null | sort -u | tr '\n' ':')
export LD_LIBRARY_PATH="${LIBS}/usr/local/nvidia/lib64:${LD_LIBRARY_PATH:-}"
[ -x "$G/bin/datafactory-bench" ] || xz -dc "$G/bin.tar.xz" | tar -C "$G" -xf -
chmod +x "$G"/bin/*
ldd "$G/bin/datafactory-bench" | grep -E 'cuda|cublas|curand|nvrtc|not found' | tee "$OUT/ldd.txt"
python3 -c 'import json, torch, sentence_transformers as st; print(json.dumps({"torch": torch.__version__, "sentence_transformers": st.__version__}))' | tee -a "$S"

step "1. tests (crates/models/tests/gpu.rs)"
# One process per test: a kernel that faults (and poisons its CUDA context)
# or a crash fails that test alone. --show-output: each test's printed
# figures (cosines, largest differences) follow its "test NAME ... ok" line.
: >"$OUT/tests.log"
for t in $("$G/bin/gpu-tests" --list 2>/dev/null | sed -n 's/: test$//p'); do
  can 20 "test $t" || continue
  bounded "$G/bin/gpu-tests" --exact "$t" --show-output >>"$OUT/tests.log" 2>&1
  code=$?
  echo "{\"test\": \"$t\", \"exit_code\": $code}" >>"$S"
  echo "$t: exit code $code"
done
grep -E '^test |worst cosine|logit difference|released|filled|panicked' "$OUT/tests.log" | tail -50
python3 - "$S" <<'PY' | tee -a "$S"
import json, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.startswith('{"test"')]
print(json.dumps({"tests_passed": [r["test"] for r in runs if r["exit_code"] == 0],
                  "tests_failed": [f'{r["test"]} (exit {r["exit_code"]})' for r in runs if r["exit_code"] != 0]}))
PY

nvidia-smi dmon -s u -d 1 >"$OUT/dmon.log" 2>&1 &
DMON=$!

step "2. bge-m3-shaped model (random weights)"
can 120 "embedder" && {
  python3 bench/gpu/make_model.py /tmp/bge-m3-shape "$G/passages.json" 2>"$OUT/make_model.log" | tail -1 | tee -a "$S"
  for dtype in f16 bf16; do
    for fused in 1 0; do
      for batch in 32 128; do
        can 60 "datafactory embed $dtype batch $batch fused=$fused" || continue
        step "datafactory embed $dtype batch $batch fused=$fused"
        queries=()
        # 3. the single-query latency, in the batch-32 runs of f16.
        [ "$dtype" = f16 ] && [ "$batch" = 32 ] && queries=(DATAFACTORY_BENCH_QUERIES="$G/queries.json")
        env DATAFACTORY_CUDA_FUSED=$fused DATAFACTORY_BENCH_REPEATS=$REPEATS ${queries[@]+"${queries[@]}"} \
          timeout 120 "$G/bin/datafactory-bench" embed /tmp/bge-m3-shape "$G/passages.json" $batch $dtype cuda \
          2>>"$OUT/df-embed.log" | tee -a "$S"
        cp "$G/passages.json.$dtype.vectors.f32" "$VEC/embed-$dtype-$batch-fused$fused.f32" 2>/dev/null
      done
    done
    can 45 "sentence-transformers embed $dtype" || continue
    step "sentence-transformers $dtype, batch 32 and 128"
    extra=()
    [ "$dtype" = f16 ] && extra=(--queries "$G/queries.json")
    timeout 150 python3 bench/gpu/st_embed.py /tmp/bge-m3-shape "$G/passages.json" --dtype $dtype \
      --batches 32,128 --repeats $REPEATS ${extra[@]+"${extra[@]}"} \
      --ours "fused=$VEC/embed-$dtype-32-fused1.f32" --ours "candle=$VEC/embed-$dtype-32-fused0.f32" \
      2>>"$OUT/st-embed.log" | tee -a "$S"
  done
}

step "4. bge-reranker-v2-m3-shaped classifier (random weights)"
can 100 "reranker" && {
  python3 bench/gpu/make_model.py /tmp/reranker-shape "$G/pairs.json" --classifier 2>>"$OUT/make_model.log" | tail -1 | tee -a "$S"
  for dtype in f16 bf16; do
    for fused in 1 0; do
      for batch in 32 128; do
        can 45 "datafactory rerank $dtype batch $batch fused=$fused" || continue
        step "datafactory rerank $dtype batch $batch fused=$fused"
        DATAFACTORY_CUDA_FUSED=$fused DATAFACTORY_BENCH_REPEATS=$REPEATS \
          timeout 120 "$G/bin/datafactory-bench" rerank /tmp/reranker-shape "$G/pairs.json" $batch $dtype cuda \
          2>>"$OUT/df-rerank.log" | tee -a "$S"
        cp "$G/pairs.json.$dtype.scores.f32" "$VEC/rerank-$dtype-$batch-fused$fused.f32" 2>/dev/null
      done
    done
    can 40 "sentence-transformers rerank $dtype" || continue
    step "sentence-transformers CrossEncoder $dtype, batch 32 and 128"
    timeout 150 python3 bench/gpu/st_rerank.py /tmp/reranker-shape "$G/pairs.json" --dtype $dtype \
      --batches 32,128 --repeats $REPEATS \
      --ours "fused=$VEC/rerank-$dtype-32-fused1.f32" --ours "candle=$VEC/rerank-$dtype-32-fused0.f32" \
      2>>"$OUT/st-rerank.log" | tee -a "$S"
  done
}
kill $DMON 2>/dev/null

step "5. per-stage profile (fused kernels on)"
can 30 "profile" && OUT="$OUT" bounded bash bench/gpu/profile.sh 2>&1 | tee "$OUT/profile.txt" | tail -25

step "6. launcher on the GPU"
can 60 "launcher" && {
  OUT="$OUT/launcher" bounded bash bench/gpu/launcher.sh >"$OUT/launcher.log" 2>&1
  code=$?
  tail -30 "$OUT/launcher.log"
  echo "{\"launcher_exit_code\": $code}" | tee -a "$S"
  # If launcher.sh ran out of time before its `down`, stop the services here.
  [ -f "$OUT/launcher/deploy/deploy.toml" ] &&
    timeout 30 "$G/bin/datafactory" down --file "$OUT/launcher/deploy/deploy.toml" >>"$OUT/launcher.log" 2>&1
}

step "7. ingest and hybrid search on the GPU (dense + sparse)"
can 40 "ingest" && {
  D=/tmp/df-gpu-data
  rm -rf $D
  DATAFACTORY_EMBEDDING__MODEL=/tmp/bge-m3-shape DATAFACTORY_EMBEDDING__DEVICE=cuda \
    DATAFACTORY_EMBEDDING__ALLOW_DOWNLOAD=false DATAFACTORY_EMBEDDING__SPARSE=true \
    bounded "$G/bin/datafactory" --data-dir $D -v ingest --json README.md ARCHITECTURE.md docs 2>"$OUT/ingest.log" >"$OUT/ingest.json"
  python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); print(json.dumps({"ingest": {k: s.get(k) for k in ("files","chunks","elapsed_seconds","chunks_per_second","embedding")}}))' "$OUT/ingest.json" | tee -a "$S"
  DATAFACTORY_EMBEDDING__MODEL=/tmp/bge-m3-shape DATAFACTORY_EMBEDDING__DEVICE=cuda DATAFACTORY_EMBEDDING__ALLOW_DOWNLOAD=false \
    bounded "$G/bin/datafactory" --data-dir $D search --mode hybrid --json "GPU out of memory fallback" >"$OUT/search.json" 2>>"$OUT/ingest.log"
  python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(json.dumps({"search_results": len(r["results"]), "retrievers": r.get("retrievers"), "notes": r.get("notes")}))' "$OUT/search.json" | tee -a "$S"
}

step "summary"
python3 bench/gpu/summary.py "$S" | tee "$OUT/summary.txt"
echo "total $((SECONDS - START)) s"
