#!/usr/bin/env bash
# The GPU check: one prepared script for a machine with an NVIDIA GPU and
# the CUDA 13 libraries of a PyTorch install (docs/BENCHMARKS.md, "GPU").
# Run from the repository root after `bash bench/gpu/prepare.sh` has put the
# CUDA builds and the passages into .gpu/. Results go to $OUT (default
# /tmp/datafactory-gpu): one log per step and summary.jsonl.
set -u
OUT=${OUT:-/tmp/datafactory-gpu}
G=$PWD/.gpu
mkdir -p "$OUT"
S="$OUT/summary.jsonl"
: >"$S"
step() { echo "== $* ($(date +%T))"; }

step gpu
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"

# The binaries were linked against CUDA 13.0's libraries: take the ones the
# image's PyTorch wheels carry, and the driver's libcuda.
NV=$(python3 -c 'import nvidia; print(" ".join(nvidia.__path__))' 2>/dev/null)
LIBS=$(find $NV /usr/local/cuda/lib64 -name 'lib*.so*' -printf '%h\n' 2>/dev/null | sort -u | tr '\n' ':')
export LD_LIBRARY_PATH="${LIBS}/usr/local/nvidia/lib64:${LD_LIBRARY_PATH:-}"
[ -x "$G/bin/datafactory-bench" ] || xz -dc "$G/bin.tar.xz" | tar -C "$G" -xf -
chmod +x "$G"/bin/*
ldd "$G/bin/datafactory-bench" | grep -E 'cuda|cublas|curand|nvrtc|not found' | tee "$OUT/ldd.txt"

step "tests (crates/models/tests/gpu.rs)"
"$G/bin/gpu-tests" --test-threads=1 --nocapture 2>&1 | tee "$OUT/tests.log" | grep -E '^test |test result|worst|largest|released|filled|panicked'

step "bge-m3-shaped model (random weights)"
python3 bench/gpu/make_model.py /tmp/bge-m3-shape "$G/passages.json" 2>&1 | tail -1 | tee -a "$S"

nvidia-smi dmon -s u -d 1 >"$OUT/dmon.log" 2>&1 &
DMON=$!
for dtype in f16 bf16; do
  step "datafactory $dtype"
  DATAFACTORY_BENCH_REPEATS=3 "$G/bin/datafactory-bench" embed /tmp/bge-m3-shape "$G/passages.json" 32 $dtype cuda 2>"$OUT/df-$dtype.log" | tee -a "$S"
  step "sentence-transformers $dtype"
  python3 bench/gpu/st_embed.py /tmp/bge-m3-shape "$G/passages.json" --dtype $dtype --repeats 3 \
    --ours "$G/passages.json.$dtype.vectors.f32" 2>"$OUT/st-$dtype.log" | tee -a "$S"
done

kill $DMON 2>/dev/null
step "batch 128, f16"
DATAFACTORY_BENCH_REPEATS=3 "$G/bin/datafactory-bench" embed /tmp/bge-m3-shape "$G/passages.json" 128 f16 cuda 2>>"$OUT/df-f16.log" | tee -a "$S"

step "bge-reranker-v2-m3-shaped classifier (random weights)"
python3 bench/gpu/make_model.py /tmp/reranker-shape "$G/pairs.json" --classifier 2>&1 | tail -1 | tee -a "$S"
for dtype in f16 bf16; do
  step "datafactory rerank $dtype"
  DATAFACTORY_BENCH_REPEATS=3 "$G/bin/datafactory-bench" rerank /tmp/reranker-shape "$G/pairs.json" 32 $dtype cuda 2>"$OUT/dfr-$dtype.log" | tee -a "$S"
  step "sentence-transformers CrossEncoder $dtype"
  python3 bench/gpu/st_rerank.py /tmp/reranker-shape "$G/pairs.json" --dtype $dtype --repeats 3 \
    --ours "$G/pairs.json.$dtype.scores.f32" 2>"$OUT/str-$dtype.log" | tee -a "$S"
done

step "datafactory ingest and search on the GPU (dense + sparse)"
export DATAFACTORY_EMBEDDING__MODEL=/tmp/bge-m3-shape DATAFACTORY_EMBEDDING__DEVICE=cuda \
  DATAFACTORY_EMBEDDING__ALLOW_DOWNLOAD=false DATAFACTORY_EMBEDDING__SPARSE=true
D=/tmp/df-gpu-data
rm -rf $D
"$G/bin/datafactory" --data-dir $D -v ingest --json README.md ARCHITECTURE.md docs crates 2>"$OUT/ingest.log" >"$OUT/ingest.json"
python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); print(json.dumps({"ingest": {k: s.get(k) for k in ("files","chunks","elapsed_seconds","chunks_per_second","embedding")}}))' "$OUT/ingest.json" | tee -a "$S"
grep -i 'released cached GPU memory' "$OUT/ingest.log" | tail -1
"$G/bin/datafactory" --data-dir $D search --mode hybrid --json "GPU out of memory fallback" >"$OUT/search.json" 2>>"$OUT/ingest.log"
python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(json.dumps({"search_results": len(r["results"]), "retrievers": r["retrievers"], "notes": r["notes"]}))' "$OUT/search.json" | tee -a "$S"
"$G/bin/datafactory" --data-dir $D stats --json >"$OUT/stats.json" 2>>"$OUT/ingest.log"; head -c 600 "$OUT/stats.json"; echo
step done
