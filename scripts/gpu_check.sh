#!/usr/bin/env bash
# GPU check of the fused Tversky CUDA kernels, in one call of under 5 minutes, on a Linux
# machine with an NVIDIA GPU, nvcc, CMake, Python, NumPy, pybind11, pytest and CuPy or PyTorch
# (no TensorFlow needed; JAX, PyTorch, Keras and MONAI for stage 5):
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
# 5. The JAX and PyTorch bindings (built in step 2 where JAX / PyTorch are installed: XLA FFI
#    CUDA handlers; torch.library CUDA kernels for a CUDA PyTorch), each on its Keras backend:
#    tests/tfversky/fused_backend_cases.py (values and gradients against the pure loss on the
#    GPU, jit/vmap, torch.compile, Keras fit) and benchmarks/bench_loss.py --backend at
#    2x64x64x64 and 1x128x224x256 (fused vs jax.jit / torch.compile of the pure loss and
#    MONAI; on JAX also one U-Net training step with each loss). A framework that is not
#    installed is skipped with a line saying so.
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

stage "JAX and PyTorch bindings (fused_backend_cases.py, bench_loss.py --backend)"
BINDINGS_STATUS=0
BENCH_ARGS=(--repeats 10)
[[ $DRY_RUN == 1 ]] && BENCH_ARGS=(--repeats 3 --quick)
for backend in jax torch; do
  if ! "$PYTHON" -c "import $backend" 2>/dev/null; then
    echo "$backend: not installed, skipped"
    continue
  fi
  if [[ ! -f "$BUILD_DIR/_tfversky_$backend.so" ]]; then
    echo "$backend: installed but its binding was not built (see the CMake output)"
    BINDINGS_STATUS=1
    continue
  fi
  # The loader looks for the bindings beside $TFVERSKY_OPS_LIBRARY (no op library needed).
  export KERAS_BACKEND=$backend TFVERSKY_OPS_LIBRARY="$PWD/$BUILD_DIR/_tfversky_ops.so"
  "$PYTHON" -m pytest -q -p no:cacheprovider tests/tfversky/fused_backend_cases.py \
    | tail -3 | tee "$REPORT_DIR/pytest_$backend.txt"
  (( PIPESTATUS[0] == 0 )) || BINDINGS_STATUS=1
  unet=()
  [[ $backend == jax && $DRY_RUN == 0 ]] && unet=(--unet)
  "$PYTHON" benchmarks/bench_loss.py --backend "$backend" "${BENCH_ARGS[@]}" "${unet[@]}" \
    --json "$REPORT_DIR/bench_loss_$backend.json" || BINDINGS_STATUS=1
  unset KERAS_BACKEND TFVERSKY_OPS_LIBRARY
done
set -e
echo
echo "gpu_check: $((SECONDS - START)) s in all; pytest exit $TESTS_STATUS, checks exit $CHECKS_STATUS, xla exit $XLA_STATUS," \
     "bindings exit $BINDINGS_STATUS; report $REPORT_DIR/gpu_check.json (bench_loss_*.json beside it)"
exit $(( TESTS_STATUS != 0 || CHECKS_STATUS != 0 || XLA_STATUS != 0 || BINDINGS_STATUS != 0 ))
