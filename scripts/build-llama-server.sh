#!/usr/bin/env bash
# Builds llama.cpp's `llama-server` from the source shipped inside the PyPI sdist of
# llama-cpp-python (the only route to llama.cpp from these machines) and caches it at
# ~/.cache/datafactory-llama-server/<version>/llama-server (keyed by the sdist's version,
# which pins the llama.cpp source).
#
# Standard output carries one line, the binary's path, and nothing else: every other
# line (pip, cmake's configure and build, the binary's --version) goes to standard
# error, so `server=$(scripts/build-llama-server.sh)` holds the path on a first build
# as on a cached one (.ci/test-build-llama-server.sh checks this with a fake cmake).
# Idempotent: a cached binary is reused. Needs python3 + pip, a C++ compiler; cmake
# comes from PyPI when missing. JOBS (default 2) bounds the parallel compile.
set -euo pipefail
# From here on, file descriptor 3 is the caller's standard output (for the path
# alone) and standard output is standard error, for every command below.
exec 3>&1 1>&2
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
JOBS="${JOBS:-2}"
DEST="$HOME/.cache/datafactory-llama-server/$VERSION"
BIN="$DEST/llama-server"
if [ -x "$BIN" ] && "$BIN" --version >/dev/null 2>&1; then
    echo "$BIN" >&3
    exit 0
fi
mkdir -p "$DEST"
work=$(mktemp -d "$DEST/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
echo "== fetching llama-cpp-python==$VERSION (sdist)" >&2
python3 -m pip download --no-deps --no-binary llama-cpp-python --quiet "llama-cpp-python==$VERSION" -d "$work" >&2
tar -xzf "$work"/llama_cpp_python-*.tar.gz -C "$work"
src=$(echo "$work"/llama_cpp_python-*/vendor/llama.cpp)
test -f "$src/CMakeLists.txt"
CMAKE=cmake
if ! command -v cmake >/dev/null 2>&1; then
    echo "== installing cmake from PyPI (into the build folder)" >&2
    python3 -m pip install --quiet --target "$work/cmake-py" cmake >&2
    CMAKE="$work/cmake-py/bin/cmake"
    export PYTHONPATH="$work/cmake-py${PYTHONPATH:+:$PYTHONPATH}"
fi
echo "== configuring llama.cpp (llama-server only)" >&2
"$CMAKE" -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF
echo "== building llama-server with -j$JOBS (10-20 minutes on 2 cores)" >&2
nice -n 10 "$CMAKE" --build "$work/build" --target llama-server -j "$JOBS" >&2
cp "$work/build/bin/llama-server" "$BIN.tmp"
mv "$BIN.tmp" "$BIN"
"$BIN" --version >&2 || true
echo "$BIN" >&3
