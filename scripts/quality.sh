#!/usr/bin/env bash
# Runs `datafactory eval --json` on every public set in tests/data, words only
# and with an embedding model, and writes one JSON report per run.
#
#   scripts/quality.sh OUT_DIR [MODEL_DIR] [-- EVAL_ARGS...]
#
# DF: the binary (default: target/release/datafactory). MODEL_DIR: the
# embedding model (default: $DATAFACTORY_TEST_MINILM; "none": words only).
# EVAL_ARGS go to every eval with the model, e.g. --fusion rrf:0.2:0.8,zscore.
# Reports: OUT_DIR/{words,model}-{cranfield,xquad-en,xquad-de,docs-given,docs-own}.json
set -euo pipefail
out=${1:?usage: scripts/quality.sh OUT_DIR [MODEL_DIR] [-- EVAL_ARGS...]}
shift
model=${DATAFACTORY_TEST_MINILM:-}
if [[ $# -gt 0 && $1 != -- ]]; then
    model=$1
    shift
fi
[[ $# -gt 0 && $1 == -- ]] && shift
df=${DF:-target/release/datafactory}
[[ -x $df ]] || { echo "no binary at $df: build it or set DF" >&2; exit 2; }
mkdir -p "$out"
sets=(
    "cranfield tests/data/cranfield"
    "xquad-en tests/data/xquad"
    "xquad-de tests/data/xquad/xquad.de.json"
    "docs-given tests/data/anthropic_docs_rag --chunker given"
    "docs-own tests/data/anthropic_docs_rag --chunker own"
)
for entry in "${sets[@]}"; do
    read -r name path extra <<<"$entry"
    # shellcheck disable=SC2086 # $extra is a flag and its value, or nothing
    DATAFACTORY_EMBEDDING__MODEL= "$df" eval --json $extra "$path" >"$out/words-$name.json"
    echo "words-$name done" >&2
    if [[ -n $model && $model != none ]]; then
        # shellcheck disable=SC2086
        DATAFACTORY_EMBEDDING__MODEL=$model "$df" eval --json $extra "$@" "$path" >"$out/model-$name.json"
        echo "model-$name done" >&2
    fi
done
