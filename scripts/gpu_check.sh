#!/usr/bin/env bash
# GPU check of the fused Tversky CUDA kernels, in one call, on any Linux machine with an
# NVIDIA GPU, nvcc, CMake, Python, NumPy, pybind11 and CuPy or PyTorch (no TensorFlow):
#
#   scripts/gpu_check.sh                 # build, checks, benchmark; summary table last
#   scripts/gpu_check.sh --dry-run       # the script logic on the CPU (no GPU needed)
#
# Builds only the pybind11 module (TFVERSKY_TF_OP=OFF), for this GPU's architecture
# (CMAKE_CUDA_ARCHITECTURES=native; override with the variable), into build-gpu/, then
# runs scripts/gpu_check.py, which writes build-gpu/gpu_check.json, and the check of the XLA
# lowering's CUDA targets (build-gpu/tfversky_xla_cuda_check).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
BUILD_DIR=${BUILD_DIR:-build-gpu}
if [[ " $* " == *" --dry-run "* ]]; then
  CUDA=OFF; ARCHS=""
else
  CUDA=ON; ARCHS=${CMAKE_CUDA_ARCHITECTURES:-native}
fi

generator=()
if command -v ninja >/dev/null && [[ ! -f "$BUILD_DIR/CMakeCache.txt" ]]; then
  generator=(-G Ninja)
fi
cmake -S . -B "$BUILD_DIR" "${generator[@]}" \
  -DPython_EXECUTABLE="$(command -v "$PYTHON")" \
  -DTFVERSKY_TF_OP=OFF -DTFVERSKY_CUDA="$CUDA" ${ARCHS:+-DCMAKE_CUDA_ARCHITECTURES="$ARCHS"}
cmake --build "$BUILD_DIR" --parallel "$(nproc)"

status=0
TFVERSKY_KERNELS_DIR="$BUILD_DIR" "$PYTHON" scripts/gpu_check.py --json "$BUILD_DIR/gpu_check.json" "$@" \
  || status=$?

# The XLA lowering's CUDA custom-call targets, called as XLA's CUDA runtime calls them (no
# TensorFlow here, so no XLA: csrc/xla/xla_cuda_check.cc). Built with CUDA only.
if [[ -x "$BUILD_DIR/tfversky_xla_cuda_check" ]]; then
  "$BUILD_DIR/tfversky_xla_cuda_check" || status=$?
else
  echo "xla cuda targets: not built (no CUDA in this build)"
fi
exit "$status"
