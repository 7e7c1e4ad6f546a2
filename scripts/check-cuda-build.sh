#!/usr/bin/env bash
# Makes sure the `cuda` build does not silently rot (issue 16): fetches CUDA
# 13.0's compiler, headers and libraries from PyPI's NVIDIA wheels (about
# 680 MB of downloads, 1.2 GB unpacked; no root, no driver, no GPU needed),
# checks each wheel's sha256 against the pins below, unpacks them into one
# toolkit folder, and runs `cargo check -p datafactory-models --features cuda`,
# which compiles candle's CUDA kernels and ours (crates/models/kernels/*.cu)
# with that nvcc and type-checks the CUDA code paths.
#
#   bash scripts/check-cuda-build.sh            # fetch (once), then cargo check
#   bash scripts/check-cuda-build.sh --toolkit  # fetch (once), print CUDA_HOME only
#
# e.g. CUDA_HOME=$(bash scripts/check-cuda-build.sh --toolkit) bash bench/gpu/prepare.sh
#
# The wheels and the toolkit are cached under ~/.cache/datafactory-cuda/13.0
# (CACHE overrides), keyed by the CUDA version; a cached toolkit is reused.
# Standard output carries only CUDA_HOME with --toolkit; everything else goes
# to standard error. CI cannot fetch this much within its time, so CI does
# not run it; the README ("GPU") says when to.
set -euo pipefail
exec 3>&1 1>&2
CUDA_VERSION=13.0
CACHE=${CACHE:-$HOME/.cache/datafactory-cuda/$CUDA_VERSION}
# package==version sha256 (of the manylinux x86_64 wheel pip picks)
PINS="
nvidia-cuda-nvcc==13.0.88 56fe502eb77625a12f25172caa3cdddb4e4c8ba2c8c17dba44b164761b380f03
nvidia-nvvm==13.0.88 c5f41ffeb6466944a026dfa5317d7d85355c119bbec279205d22f1869d1054e0
nvidia-cuda-runtime==13.0.96 7f82250d7782aa23b6cfe765ecc7db554bd3c2870c43f3d1821f1d18aebf0548
nvidia-cuda-crt==13.0.88 2c8043c7c9e02492716426e9919fc78d2c5b3b2a7a768a88e952676b08aa55a4
nvidia-cuda-cccl==13.0.85 e0da7ad981f3a8aff08241b5bfc1af868742a63e2762f53a5171c492ef242649
nvidia-cuda-nvrtc==13.0.88 ad9b6d2ead2435f11cbb6868809d2adeeee302e9bb94bcf0539c7a40d80e8575
nvidia-curand==10.4.0.35 1aee33a5da6e1db083fe2b90082def8915f30f3248d5896bcec36a579d941bfc
nvidia-cublas==13.0.2.14 0cf238ffdbe46c00cb9aa98e7bca745c223a5ca5a53e686ac8b3e5a08fe80d6c
"
toolkit_only=false
case "${1:-}" in
  --toolkit) toolkit_only=true ;;
  "") ;;
  *) echo "usage: $0 [--toolkit]" ; exit 2 ;;
esac

root=$CACHE/root
cuda_home=$root/nvidia/cu13
if [ ! -x "$cuda_home/bin/nvcc" ] || [ ! -f "$root/.complete" ]; then
  mkdir -p "$CACHE/wheels"
  echo "$PINS" | while read -r spec sum; do
    [ -n "$spec" ] || continue
    name=${spec%%==*}
    version=${spec##*==}
    pattern="${name//-/_}-${version}-*.whl"
    # shellcheck disable=SC2086
    if ! ls "$CACHE"/wheels/$pattern >/dev/null 2>&1; then
      echo "== fetching $spec"
      python3 -m pip download --no-deps --quiet --dest "$CACHE/wheels" \
        --platform manylinux_2_27_x86_64 --platform manylinux2014_x86_64 --platform manylinux2010_x86_64 \
        --only-binary=:all: "$spec"
    fi
    # shellcheck disable=SC2086
    wheel=$(ls "$CACHE"/wheels/$pattern | head -1)
    got=$(sha256sum "$wheel" | cut -d' ' -f1)
    if [ "$got" != "$sum" ]; then
      echo "error: $wheel has sha256 $got, the pin says $sum; delete it to fetch again"
      exit 1
    fi
  done
  rm -rf "$root"
  mkdir -p "$root"
  for w in "$CACHE"/wheels/*.whl; do
    python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$w" "$root"
  done
  chmod +x "$cuda_home"/bin/* "$cuda_home"/nvvm/bin/* 2>/dev/null || true
  touch "$root/.complete"
fi
"$cuda_home/bin/nvcc" --version | tail -1
if $toolkit_only; then
  echo "$cuda_home" >&3
  exit 0
fi
export CUDA_HOME=$cuda_home PATH="$cuda_home/bin:$PATH"
# Candle's kernels need a target; ours are compute_80 PTX whatever it is.
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
cd "$(dirname "$0")/.."
cargo check --locked -p datafactory-models --features cuda --all-targets
echo "cuda build checks: ok"
