#!/usr/bin/env bash
# GPU check of the fused Tversky CUDA kernels, in one call of under 5 minutes, on a Linux
# machine with an NVIDIA GPU, nvcc, CMake, Python, NumPy, pybind11, pytest and CuPy or PyTorch
# (no TensorFlow needed):
#
#   scripts/gpu_check.sh              # driver check, build, tests, CUDA checks, benchmark
#   scripts/gpu_check.sh --dry-run    # the same script on the CPU (no GPU, no nvcc needed)
#
# 1. Driver first: the CUDA version the driver supports (nvidia-smi) must be at least nvcc's
#    major version (the op links the CUDA runtime statically; CUDA's minor-version
#    compatibility covers the rest). Stops before building otherwise.
# 2. Builds the pybind11 module only (TFVERSKY_TF_OP=OFF) for sm_90, Hopper's own machine
#    code (CMAKE_CUDA_ARCHITECTURES=90; override with the variable), into build-gpu/.
# 3. Runs the module's CPU tests (pytest tests/csrc), then scripts/gpu_check.py: the CUDA
#    checks of tests/csrc/cuda_checks.py and the benchmark; its table is printed last.
# 4. Calls the XLA lowering's CUDA custom-call targets as XLA's CUDA runtime would
#    (build-gpu/tfversky_xla_cuda_check, csrc/xla/xla_cuda_check.cc; no TensorFlow needed).
# Writes what ran (driver, nvcc, the machine code in the module, timings, results) to
# $OUT/gpu_check.json when $OUT is set (the device tool's folder), else build-gpu/.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
BUILD_DIR=${BUILD_DIR:-build-gpu}
REPORT_DIR=${OUT:-$BUILD_DIR}
DRY_RUN=0
[[ " $* " == *" --dry-run "* ]] && DRY_RUN=1
mkdir -p "$BUILD_DIR" "$REPORT_DIR"
START=$SECONDS
stage() { echo; echo "== $1 ($((SECONDS - START)) s)"; }
major() { echo "${1%%.*}"; }

stage "driver"
DRIVER="" DRIVER_CUDA="" NVCC_CUDA=""
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,driver_version,compute_cap --format=csv,noheader || true
  DRIVER=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -1 || true)
  DRIVER_CUDA=$(nvidia-smi | sed -n 's/.*CUDA Version: *\([0-9][0-9.]*\).*/\1/p' | head -1)
fi
if command -v nvcc >/dev/null; then
  NVCC_CUDA=$(nvcc --version | sed -n 's/.*release \([0-9][0-9.]*\).*/\1/p')
fi
echo "driver ${DRIVER:-none} (CUDA ${DRIVER_CUDA:-?}), nvcc ${NVCC_CUDA:-none}"
if [[ $DRY_RUN == 0 ]]; then
  if [[ -z $DRIVER_CUDA || -z $NVCC_CUDA ]]; then
    echo "gpu_check: needs nvidia-smi (an NVIDIA driver) and nvcc; use --dry-run without a GPU" >&2
    exit 2
  fi
  if (( $(major "$DRIVER_CUDA") < $(major "$NVCC_CUDA") )); then
    echo "gpu_check: the driver supports CUDA $DRIVER_CUDA, older than nvcc's CUDA $NVCC_CUDA:" \
         "kernels built with it cannot run here. Use an nvcc of major version" \
         "$(major "$DRIVER_CUDA") (CUDACXX=...), or update the driver." >&2
    exit 2
  fi
  CUDA=ON ARCHS=${CMAKE_CUDA_ARCHITECTURES:-90}
else
  echo "dry run: CPU-only build, the CPU kernels stand in for the CUDA ones"
  CUDA=OFF ARCHS=""
fi

stage "build (CUDA=$CUDA${ARCHS:+, sm_$ARCHS})"
generator=()
if command -v ninja >/dev/null && [[ ! -f "$BUILD_DIR/CMakeCache.txt" ]]; then
  generator=(-G Ninja)
fi
cmake -S . -B "$BUILD_DIR" "${generator[@]}" -DPython_EXECUTABLE="$(command -v "$PYTHON")" \
  -DTFVERSKY_TF_OP=OFF -DTFVERSKY_CUDA="$CUDA" ${ARCHS:+-DCMAKE_CUDA_ARCHITECTURES="$ARCHS"}
cmake --build "$BUILD_DIR" --parallel "$(nproc)"
MODULE=$(ls "$BUILD_DIR"/_tfversky_kernels*.so | head -1)
SASS=""
if [[ $DRY_RUN == 0 ]] && command -v cuobjdump >/dev/null; then
  # The machine code the module carries: sm_90 means Hopper's own instructions are used.
  SASS=$(cuobjdump --list-elf "$MODULE" 2>/dev/null | sed -n 's/.*\(sm_[0-9a-z]*\).*/\1/p' | sort -u | tr '\n' ' ')
  echo "machine code in $MODULE: ${SASS:-none listed}"
fi
BUILD_SECONDS=$((SECONDS - START))

stage "CPU tests of the module (pytest tests/csrc)"
set +e  # report every stage, then fail at the end
TFVERSKY_KERNELS_DIR="$BUILD_DIR" "$PYTHON" -m pytest -q -p no:cacheprovider tests/csrc \
  | tail -3 | tee "$REPORT_DIR/pytest_tail.txt"
TESTS_STATUS=${PIPESTATUS[0]}

stage "CUDA checks and benchmark (scripts/gpu_check.py)"
TFVERSKY_KERNELS_DIR="$BUILD_DIR" "$PYTHON" scripts/gpu_check.py --json "$REPORT_DIR/gpu_check.json" \
  --record "driver=$DRIVER" --record "driver_cuda=$DRIVER_CUDA" --record "nvcc=$NVCC_CUDA" \
  --record "sass=$SASS" --record "build_seconds=$BUILD_SECONDS" \
  --record "pytest=$(tail -1 "$REPORT_DIR/pytest_tail.txt")" "$@"
CHECKS_STATUS=$?

stage "XLA lowering's CUDA targets (tfversky_xla_cuda_check)"
XLA_STATUS=0
if [[ -x "$BUILD_DIR/tfversky_xla_cuda_check" ]]; then
  "$BUILD_DIR/tfversky_xla_cuda_check"
  XLA_STATUS=$?
else
  echo "xla cuda targets: not built (no CUDA in this build)"
fi
set -e
echo
echo "gpu_check: $((SECONDS - START)) s in all; pytest exit $TESTS_STATUS, checks exit $CHECKS_STATUS, xla exit $XLA_STATUS;" \
     "report $REPORT_DIR/gpu_check.json"
exit $(( TESTS_STATUS != 0 || CHECKS_STATUS != 0 || XLA_STATUS != 0 ))
