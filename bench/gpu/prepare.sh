#!/usr/bin/env bash
# Prepares the GPU check on a machine without a GPU: builds DataFactory with
# the `cuda` feature (our kernels, crates/models/kernels/*.cu, are compiled
# to PTX by the models crate's build.rs with the same nvcc) and the GPU
# tests, and writes the benchmark passages, pairs and queries, all into .gpu/
# (ignored by git), which then travels to the GPU machine.
#
# Needs CUDA 13.0's nvcc, headers and libraries. Without a toolkit, the
# PyPI wheels make one (no root, no driver needed to build):
#   pip download --no-deps nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 \
#     nvidia-cuda-runtime==13.0.96 nvidia-cuda-crt==13.0.88 nvidia-cuda-cccl==13.0.85 \
#     nvidia-cuda-nvrtc==13.0.88 nvidia-curand==10.4.0.35 nvidia-cublas==13.0.2.14
#   unzip each into one folder; CUDA_HOME=<folder>/nvidia/cu13
# and this script adds the unversioned library links and a link-time stub of
# libcuda (the driver's library, which the GPU machine has) when they are
# missing. The CUDA version must not be newer than the GPU machine's driver
# supports (the kernels travel as PTX, which the driver compiles).
set -euo pipefail
: "${CUDA_HOME:?set CUDA_HOME to a CUDA 13 toolkit}"
export PATH="$CUDA_HOME/bin:$PATH"
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/datafactory-target-cuda}
lib=$CUDA_HOME/lib
[ -d "$CUDA_HOME/lib64" ] && lib=$CUDA_HOME/lib64
for l in cudart cublas cublasLt nvrtc; do [ -e "$lib/lib$l.so" ] || ln -s "lib$l.so.13" "$lib/lib$l.so"; done
[ -e "$lib/libcurand.so" ] || ln -s libcurand.so.10 "$lib/libcurand.so"
if ! ls "$lib"/stubs/libcuda.so >/dev/null 2>&1; then
  # Every driver function cudarc declares, as an empty function: enough to
  # link; at run time the real libcuda.so.1 is loaded.
  mkdir -p "$lib/stubs"
  src=$(ls -d ~/.cargo/registry/src/*/cudarc-0.19.*/src/driver/sys/mod.rs | tail -1)
  grep -ohE 'pub unsafe fn cu[A-Za-z0-9_]+' "$src" | awk '{print "void " $4 "(void){}"}' | sort -u >"$lib/stubs/cuda_stub.c"
  cc -shared -fPIC -o "$lib/stubs/libcuda.so" "$lib/stubs/cuda_stub.c" -Wl,-soname,libcuda.so.1
fi
export LIBRARY_PATH="$lib:$lib/stubs"

cargo build --release -p datafactory-bench -p datafactory --features datafactory-bench/cuda,datafactory/cuda
tests=$(cargo test --release --no-run -p datafactory-models --features cuda --test gpu --message-format=json 2>/dev/null |
  python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "gpu": print(m["executable"])')
mkdir -p .gpu/bin
cp "$CARGO_TARGET_DIR/release/datafactory" "$CARGO_TARGET_DIR/release/datafactory-bench" .gpu/bin/
cp "$tests" .gpu/bin/gpu-tests
strip .gpu/bin/*
# The three binaries share their CUDA kernels: one archive with a large
# dictionary is about 14 MB instead of 190.
tar -C .gpu -cf - bin | xz -T2 --lzma2=preset=9,dict=256MiB >.gpu/bin.tar.xz
python3 -c 'import json, sys; sys.path.insert(0, "bench"); import embed; json.dump(embed.passages("tests/data", 1000), open(".gpu/passages.json", "w"))'
python3 -c 'import json, sys; sys.path.insert(0, "bench"); import rerank; json.dump(rerank.pairs("tests/data", 1000), open(".gpu/pairs.json", "w"))'
# 200 one-sentence queries (XQuAD's first English questions) for the single-query latency.
python3 -c 'import json; d = json.load(open("tests/data/xquad/xquad.en.json"))["data"]
q = [x["question"] for a in d for p in a["paragraphs"] for x in p["qas"]][:200]
assert len(q) == 200; json.dump(q, open(".gpu/queries.json", "w"))'
# Our kernels' PTX (compute_80) must assemble for the H100/H200 (sm_90).
for ptx in $(ls -t "$CARGO_TARGET_DIR"/release/build/datafactory-models-*/out/encoder.ptx | head -1); do
  echo "ptxas -arch=sm_90 $ptx ($(stat -c %s "$ptx") bytes)"
  ptxas -arch=sm_90 -o /dev/null "$ptx"
done
ls -la .gpu .gpu/bin
# What the device tool carries: the tracked files and these four (64 MiB at most in all).
echo "to carry: $(du -cb .gpu/bin.tar.xz .gpu/passages.json .gpu/pairs.json .gpu/queries.json | tail -1 | cut -f1) bytes" \
  "+ tracked files $(git ls-files -z | du --files0-from=- -cb 2>/dev/null | tail -1 | cut -f1) bytes"
