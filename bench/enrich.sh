#!/usr/bin/env bash
# Enrichment scheduling: DataFactory's prefix-affine schedule vs the seed's
# round robin, on latency-model servers (llama3.1:8b on one H100-class GPU
# each; per-slot caches like llama.cpp/Ollama, a shared cache like vLLM, and
# Ollama's multi-user cache with 4 and 8 slots)
# and on real llama-servers over the tiny random-weight model.
#
#   bash bench/enrich.sh            # needs: cargo, python3 with gguf, a C++ compiler
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/datafactory-target}"
cargo build --release -q -p datafactory-bench --bin enrich-bench
B="$CARGO_TARGET_DIR/release/enrich-bench"
SERVER=$(scripts/build-llama-server.sh)
MODEL="$HOME/.cache/datafactory-test-models/tiny-llama-$(sha256sum scripts/make_tiny_llama_gguf.py | cut -c1-16).gguf"
[ -f "$MODEL" ] || python3 scripts/make_tiny_llama_gguf.py "$MODEL"
"$B" sim
echo
"$B" sim-shared
echo
"$B" sim-ollama-multiuser
echo
ENRICH_BENCH_SLOTS=8 "$B" sim-ollama-multiuser
echo
"$B" real "$SERVER" "$MODEL" "${CHUNKS:-30}"
echo
ENRICH_BENCH_SERVER_ARGS="--cache-ram 0" "$B" real "$SERVER" "$MODEL" "${CHUNKS:-30}"
