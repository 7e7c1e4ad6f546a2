#!/usr/bin/env bash
# The launcher's GPU check (issue 8, item 8): `datafactory gpu` through NVML,
# then `datafactory up` with the embedder and the reranker pinned to the real
# GPU (CUDA_VISIBLE_DEVICES=0), a search through them, `status`, and `down`.
# Run from the repository root on a GPU machine after `bash bench/gpu/prepare.sh`
# (the `cuda` build in .gpu/), like check.sh. Results go to $OUT (default
# /tmp/datafactory-gpu-launcher): what each command printed, and the logs.
set -u
OUT=${OUT:-/tmp/datafactory-gpu-launcher}
G=$PWD/.gpu
mkdir -p "$OUT"
step() { echo "== $* ($(date +%T))"; }

NV=$(python3 -c 'import nvidia; print(" ".join(nvidia.__path__))' 2>/dev/null)
LIBS=$(find $NV /usr/local/cuda/lib64 -name 'lib*.so*' -printf '%h\n' 2>/dev/null | sort -u | tr '\n' ':')
export LD_LIBRARY_PATH="${LIBS}/usr/local/nvidia/lib64:${LD_LIBRARY_PATH:-}"
[ -x "$G/bin/datafactory" ] || xz -dc "$G/bin.tar.xz" | tar -C "$G" -xf -
chmod +x "$G"/bin/*
DF=$G/bin/datafactory

step "datafactory gpu"
"$DF" gpu 2>&1 | tee "$OUT/gpu.txt"
"$DF" gpu --json >"$OUT/gpu.json"; echo "exit code $?" | tee -a "$OUT/gpu.txt"

step "models (random weights, the real architectures' shapes)"
[ -d /tmp/bge-m3-shape ] || python3 bench/gpu/make_model.py /tmp/bge-m3-shape "$G/passages.json" 2>&1 | tail -1
[ -d /tmp/reranker-shape ] || python3 bench/gpu/make_model.py /tmp/reranker-shape "$G/pairs.json" --classifier 2>&1 | tail -1

D=$OUT/deploy
rm -rf "$D" && mkdir -p "$D"
# One GPU here, so both services name GPU 0 (share_gpus); the seed's layout gives each its own.
cat >"$D/deploy.toml" <<TOML
[launcher]
share_gpus = true
health_timeout_s = 300
grace_s = 10

[[service]]
name = "datafactory"
kind = "serve"
host = "127.0.0.1"
port = 19000
gpu = 0
settings = { "data_dir" = "data", "embedding.model" = "/tmp/bge-m3-shape", "embedding.device" = "cuda", "embedding.allow_download" = false, "rerank.mode" = "remote", "rerank.url" = "http://127.0.0.1:19200" }

[[service]]
name = "reranker"
kind = "rerank"
host = "127.0.0.1"
port = 19200
gpu = 0
settings = { "rerank.model" = "/tmp/reranker-shape", "rerank.device" = "cuda", "rerank.allow_download" = false }
TOML

step "up --plan"
"$DF" up --plan --file "$D/deploy.toml" 2>&1 | tee "$OUT/plan.txt"
step "up --detach"
"$DF" up --detach --file "$D/deploy.toml" 2>&1 | tee "$OUT/up.txt"
step "ingest and search through the service"
"$DF" --server http://127.0.0.1:19000 ingest --json README.md ARCHITECTURE.md docs >"$OUT/ingest.json" 2>&1
"$DF" --server http://127.0.0.1:19000 search --json "GPU out of memory fallback" >"$OUT/search.json" 2>&1
python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print({"results": len(r["results"]), "rerank": r.get("rerank"), "notes": r.get("notes")})' "$OUT/search.json"
step "status"
"$DF" status --file "$D/deploy.toml" 2>&1 | tee "$OUT/status.txt"
"$DF" status --json --file "$D/deploy.toml" >"$OUT/status.json"
nvidia-smi --query-compute-apps=pid,used_memory,process_name --format=csv | tee "$OUT/nvidia-smi-apps.txt"
step "down"
"$DF" down --file "$D/deploy.toml" 2>&1 | tee "$OUT/down.txt"
"$DF" status --file "$D/deploy.toml" 2>&1 | tee -a "$OUT/down.txt"
cp -r "$D/logs" "$OUT/logs"
step done
