"""GPU checks and benchmark of the CUDA kernels, without TensorFlow or pytest.

Run by scripts/gpu_check.sh after it builds the pybind11 module; prints a summary table
last and writes it as JSON (--json). Needs NumPy and CuPy or PyTorch with CUDA.

--dry-run runs the same script logic on the CPU (host arrays, the CPU kernels standing in
for the CUDA ones, a small "large" volume, no bad-label check since the CPU kernels raise
there): it checks the script, not the CUDA code.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.csrc import cuda_checks  # noqa: E402  (needs the repository root on the path)
from tests.csrc.kernel_reference import load_module  # noqa: E402


class HostBackend:
    """Host arrays in place of device arrays, for --dry-run."""

    name = "host (dry run)"
    stream = 0

    def to_device(self, array, misalign=False):
        if not misalign:
            return np.array(array)
        flat = np.empty(array.size + 1, array.dtype)
        flat[1:] = array.ravel()
        return flat[1:].reshape(array.shape)

    def to_host(self, array):
        return np.asarray(array)

    def full(self, shape, value, dtype):
        return np.full(shape, value, dtype)

    def random_normal(self, shape):
        return np.random.default_rng(0).standard_normal(shape, dtype=np.float32)

    def random_labels(self, shape, lesion):
        return (np.random.default_rng(1).random(shape) < lesion).astype(np.uint8)

    def copy(self, dst, src):
        np.copyto(dst, src)

    def synchronize(self):
        pass

    def event(self):
        return time.perf_counter()

    def elapsed_ms(self, start, end):
        return (end - start) * 1e3

    def free_bytes(self):
        return 4 << 30

    def device_name(self):
        return "CPU (dry run)"

    def terms_per_accumulator(self, voxels, voxels_per_load):
        return min(voxels, 8192)  # kCpuTaskVoxels: each CPU task sums its voxels, then double


class CpuKernelsAsCuda:
    """The module's CPU functions behind its CUDA signatures, for --dry-run."""

    def __init__(self, kernels):
        self.kernels = kernels

    def __getattr__(self, name):
        return getattr(self.kernels, name)

    @staticmethod
    def _typed(y, y_dtype):
        if y_dtype in (None, y.dtype.name):
            return y
        from tests.csrc.kernel_reference import numpy_dtype

        return y.view(numpy_dtype(y_dtype))

    def cuda_confusion_sums(self, y_pred, labels, tp, fp, fn, *, y_dtype=None, stream=0,
                            **options):
        for out, value in zip((tp, fp, fn), self.kernels.confusion_sums(
                self._typed(y_pred, y_dtype), labels, **options)):
            np.copyto(out, value)

    def cuda_confusion_sums_grad(self, y_pred, labels, grad_tp, grad_fp, grad_fn, grad_y_pred, *,
                                 y_dtype=None, stream=0, **options):
        grad = self.kernels.confusion_sums_grad(self._typed(y_pred, y_dtype), labels, grad_tp,
                                                grad_fp, grad_fn, **options)
        np.copyto(grad_y_pred, grad.view(grad_y_pred.dtype))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="run the script logic on the CPU")
    parser.add_argument("--skip-checks", action="store_true", help="benchmark only")
    parser.add_argument("--repeats", type=int, default=20, help="timed repetitions per row")
    parser.add_argument("--json", type=Path, help="write the summary here")
    parser.add_argument("--record", action="append", default=[], metavar="KEY=VALUE",
                        help="add to the summary what the caller ran (driver, nvcc, ...)")
    args = parser.parse_args(argv)

    kernels = load_module()
    print(f"module: {kernels.__file__}\nbuild: {kernels.build_info}")
    checks = list(cuda_checks.CHECKS)
    shapes = ((1, 128, 224, 256), (8, 128, 224, 256))
    if args.dry_run:
        backend, kernels = HostBackend(), CpuKernelsAsCuda(kernels)
        # The CPU kernels raise on bad labels where the CUDA ones write NaN: no stand-in.
        checks.remove(cuda_checks.check_bad_labels_poison_their_sample)
        checks[checks.index(cuda_checks.check_large_indexing)] = functools.wraps(
            cuda_checks.check_large_indexing)(functools.partial(
                cuda_checks.check_large_indexing, voxels=2**20 + 4099))
        shapes = ((1, 32, 56, 64),)
    else:
        if kernels.cuda_device_count() == 0:
            sys.exit("No CUDA device visible to the module (or it was built without CUDA).")
        backend = cuda_checks.device_backend()
    print(f"device: {backend.device_name()} via {backend.name}")

    results = []
    for check in [] if args.skip_checks else checks:
        start = time.perf_counter()
        try:
            check(kernels, backend)
            status = "pass"
        except Exception:  # report every check, then fail at the end
            traceback.print_exc()
            status = "FAIL"
        results.append(dict(check=check.__name__, status=status,
                            seconds=round(time.perf_counter() - start, 1)))
        print(f"{status}: {check.__name__}", flush=True)

    rows = cuda_checks.benchmark(kernels, backend, shapes=shapes, repeats=args.repeats)
    summary = dict(device=backend.device_name(), backend=backend.name, build=kernels.build_info,
                   run=dict(record.split("=", 1) for record in args.record),
                   checks=results, benchmark=rows)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))

    print(f"\n## GPU check: {backend.device_name()}\n")
    print("| check | result | seconds |\n|---|---|---|")
    for r in results:
        print(f"| {r['check']} | {r['status']} | {r['seconds']} |")
    print(f"\nfloat32 logits, 2 classes, uint8 labels, 1 % lesion; medians of {args.repeats}; "
          f"copy rate {rows[0]['copy_gb_per_s']:.0f} GB/s (read + write)\n")
    print("| volume | forward ms | backward ms | fwd+bwd ms | floor ms | share of copy rate |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['shape']} | {r['forward_ms']:.3f} | {r['backward_ms']:.3f} | "
              f"{r['total_ms']:.3f} | {r['floor_ms']:.3f} | {100 * r['of_copy_rate']:.0f} % |")
    return 1 if any(r["status"] != "pass" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
