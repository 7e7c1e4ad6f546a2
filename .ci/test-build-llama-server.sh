#!/usr/bin/env bash
# The output contract of scripts/build-llama-server.sh, checked in a second
# without building anything: standard output is exactly one line, the path of
# an executable llama-server, on a first build (when pip and cmake's configure
# and build all print to standard output) as on a cached run, and the cached
# run builds nothing. Stand-ins for python3 (pip) and cmake on PATH print such
# noise and make a fake sdist and a fake binary; HOME is a new empty folder.
# .ci/run runs this before the real build.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/bin" "$tmp/home"

# python3 -m pip download … -d DIR: a fake llama-cpp-python sdist in DIR.
cat >"$tmp/bin/python3" <<'EOF'
#!/usr/bin/env bash
set -euo pipefail
echo "Collecting llama-cpp-python (pip on standard output)"
dest=
while [ $# -gt 0 ]; do
    case "$1" in
        -d) dest=$2; shift ;;
    esac
    shift
done
[ -n "$dest" ] || { echo "fake python3: only 'pip download -d DIR' is faked" >&2; exit 2; }
src=$(mktemp -d)
mkdir -p "$src/llama_cpp_python-0.0.0/vendor/llama.cpp"
echo "project(llama.cpp)" >"$src/llama_cpp_python-0.0.0/vendor/llama.cpp/CMakeLists.txt"
tar -czf "$dest/llama_cpp_python-0.0.0.tar.gz" -C "$src" llama_cpp_python-0.0.0
rm -rf "$src"
echo "Saved $dest/llama_cpp_python-0.0.0.tar.gz"
EOF

# cmake -S … -B BUILD (configure) and cmake --build BUILD … (a fake binary).
cat >"$tmp/bin/cmake" <<EOF
#!/usr/bin/env bash
set -euo pipefail
echo "\$*" >>"$tmp/cmake-calls"
EOF
cat >>"$tmp/bin/cmake" <<'EOF'
if [ "$1" = --build ]; then
    echo "[100%] Built target llama-server"
    mkdir -p "$2/bin"
    printf '#!/bin/sh\necho "version: 0 (fake)"\necho "built with a fake cmake" >&2\n' >"$2/bin/llama-server"
    chmod +x "$2/bin/llama-server"
else
    echo "-- The C compiler identification is GNU 12.2.0"
    echo "-- Configuring done"
fi
EOF
chmod +x "$tmp/bin/python3" "$tmp/bin/cmake"

expected="$tmp/home/.cache/datafactory-llama-server/test-version/llama-server"
run() {
    HOME="$tmp/home" PATH="$tmp/bin:$PATH" LLAMA_CPP_PYTHON_VERSION=test-version \
        "$repo/scripts/build-llama-server.sh" 2>"$tmp/stderr"
}
check() {
    local what=$1 out=$2
    if [ "$out" != "$expected" ] || [ ! -x "$out" ]; then
        echo "build-llama-server.sh, $what: standard output must be the binary's path alone;" >&2
        echo "expected: $expected" >&2
        echo "got:" >&2
        printf '%s\n' "$out" >&2
        exit 1
    fi
}

out=$(run)
check "first build" "$out"
grep -q "The C compiler identification" "$tmp/stderr" ||
    { echo "build-llama-server.sh: cmake's output did not reach standard error" >&2; exit 1; }
calls=$(wc -l <"$tmp/cmake-calls")
[ "$calls" = 2 ] || { echo "build-llama-server.sh: expected 2 cmake calls (configure, build), saw $calls" >&2; exit 1; }

out=$(run)
check "cached run" "$out"
calls=$(wc -l <"$tmp/cmake-calls")
[ "$calls" = 2 ] || { echo "build-llama-server.sh: the cached run called cmake again" >&2; exit 1; }
echo "build-llama-server.sh: prints only the binary's path (first build and cached run)"
