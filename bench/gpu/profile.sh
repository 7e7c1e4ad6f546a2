#!/usr/bin/env bash
# Where DataFactory's encoder spends its GPU time: the bge-m3-shaped model on
# the benchmark passages, f16, batch 32, with DATAFACTORY_PROFILE_STAGES=1
# (each stage synchronised and timed). Our fused CUDA kernels are on unless
# DATAFACTORY_CUDA_FUSED=0 is set (then candle's ops, as before them). Same
# preparation as check.sh; results in $OUT/profile.json.
set -u
OUT=${OUT:-/tmp/datafactory-gpu}
G=$PWD/.gpu
mkdir -p "$OUT"
NV=$(python3 -c 'import nvidia; print(" ".join(nvidia.__path__))' 2>/dev/null)
LIBS=$(find $NV /usr/local/cuda/lib64 -name 'lib*.so*' -printf '%h\n' 2>/dev/null | sort -u | tr '\n' ':')
export LD_LIBRARY_PATH="${LIBS}/usr/local/nvidia/lib64:${LD_LIBRARY_PATH:-}"
[ -x "$G/bin/datafactory-bench" ] || xz -dc "$G/bin.tar.xz" | tar -C "$G" -xf -
[ -d /tmp/bge-m3-shape ] || python3 bench/gpu/make_model.py /tmp/bge-m3-shape "$G/passages.json" 2>&1 | tail -1
DATAFACTORY_PROFILE_STAGES=1 "$G/bin/datafactory-bench" embed /tmp/bge-m3-shape "$G/passages.json" 32 f16 cuda 2>>"$OUT/profile.log" >"$OUT/profile.json"
python3 - "$OUT/profile.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
stages = d["stage_seconds"]
total = sum(s for s, _ in stages.values())
print(f"fused kernels: {d.get('fused_kernels')}")
print(f"profiled run {d['seconds']:.2f} s (stages add up to {total:.2f} s, warm-up included)")
for name, (s, n) in sorted(stages.items(), key=lambda kv: -kv[1][0]):
    print(f"{name:40s} {s:8.3f} s {100 * s / total:5.1f} %  {n} calls")
PY
