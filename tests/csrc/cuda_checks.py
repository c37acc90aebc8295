"""GPU checks of the CUDA kernels through the pybind11 module, with CuPy or PyTorch arrays.

Used by the `gpu`-marked tests in test_kernels.py and by scripts/gpu_check.py (which runs
them on a GPU machine without TensorFlow or pytest). Each check takes the module and a
device backend and raises AssertionError on a failure; `benchmark` returns timings.

What they establish: the CUDA results match the NumPy float64 reference and the CPU
kernels on random data (odd sizes, misaligned pointers, every dtype and label type), every
output element is written (outputs pre-filled with NaN), runs are bitwise repeatable,
out-of-range labels poison only their sample / voxel, a NaN logit at an ignored voxel
reaches the sums, the many-class kernels hold up to 64 classes, 16-bit one-hot labels are
refused, and indexing holds beyond 2^31 elements.
"""

from __future__ import annotations

import math
import statistics

import numpy as np

from tests.csrc.kernel_reference import (
    FLOAT_DTYPES, LABEL_KINDS, assert_grad_close, assert_sums_close, random_case)

TWO_31 = 2**31
KERNEL_THREADS = 256  # kThreads in csrc/kernels/tversky_cuda_impl.cuh
FLOAT32_UNIT_ROUNDOFF = 2.0**-24


def accumulation_tolerance(terms):
    """Relative error bound of a float32 sum accumulated one term at a time, ``terms`` terms
    per accumulator (all of one sign), then reduced over a 256-thread tree (8 levels), plus 4
    units for the kernels' exp and division: (terms + 12) u, the classic bound of recursive
    summation. A fixed 1e-5 is what 170 float32 adds can cost: the sums of a 2^31-voxel
    volume, thousands of terms per thread, exceed it by rounding alone.
    """
    return (terms + 8 + 4) * FLOAT32_UNIT_ROUNDOFF


def cuda_terms_per_accumulator(multiprocessors, voxels, voxels_per_load):
    """An upper bound on the voxels one thread of the CUDA sums adds up: they launch at least
    one block of 256 threads per multiprocessor, grid-striding over loads of
    `voxels_per_load` voxels."""
    loads = -(-voxels // voxels_per_load)
    return -(-loads // (multiprocessors * KERNEL_THREADS)) * voxels_per_load


# ---- device backends ----

class CupyBackend:
    name = "cupy"

    def __init__(self):
        import cupy

        self.xp = cupy
        self.stream = 0  # CuPy's default: the legacy null stream

    def to_device(self, array, misalign=False):
        if not misalign:
            return self.xp.asarray(array)
        flat = self.xp.empty(array.size + 1, array.dtype)
        flat[1:] = self.xp.asarray(array.ravel())
        return flat[1:].reshape(array.shape)

    def to_host(self, array):
        return self.xp.asnumpy(array)

    def full(self, shape, value, dtype):
        return self.xp.full(shape, value, dtype)

    def random_normal(self, shape):
        return self.xp.random.standard_normal(shape, dtype=self.xp.float32)

    def random_labels(self, shape, lesion):
        return (self.xp.random.random(shape) < lesion).astype(self.xp.uint8)

    def copy(self, dst, src):
        dst[...] = src

    def synchronize(self):
        self.xp.cuda.Device().synchronize()

    def event(self):
        event = self.xp.cuda.Event()
        event.record()
        return event

    def elapsed_ms(self, start, end):
        end.synchronize()
        return self.xp.cuda.get_elapsed_time(start, end)

    def free_bytes(self):
        self.xp.get_default_memory_pool().free_all_blocks()
        return self.xp.cuda.runtime.memGetInfo()[0]

    def device_name(self):
        return self.xp.cuda.runtime.getDeviceProperties(0)["name"].decode()

    def terms_per_accumulator(self, voxels, voxels_per_load):
        return cuda_terms_per_accumulator(self.xp.cuda.runtime.getDeviceProperties(0)["multiProcessorCount"], voxels, voxels_per_load)


class TorchBackend:
    name = "torch"

    def __init__(self):
        import torch

        self.torch = torch
        self.stream = torch.cuda.current_stream().cuda_stream

    def to_device(self, array, misalign=False):
        tensor = self.torch.from_numpy(np.ascontiguousarray(array)).cuda()
        if not misalign:
            return tensor
        flat = self.torch.empty(tensor.numel() + 1, dtype=tensor.dtype, device="cuda")
        flat[1:] = tensor.reshape(-1)
        return flat[1:].reshape(tensor.shape)

    def to_host(self, array):
        return array.cpu().numpy()

    def full(self, shape, value, dtype):
        return self.torch.full(shape, value, dtype=getattr(self.torch, np.dtype(dtype).name),
                               device="cuda")

    def random_normal(self, shape):
        return self.torch.randn(shape, device="cuda")

    def random_labels(self, shape, lesion):
        return (self.torch.rand(shape, device="cuda") < lesion).to(self.torch.uint8)

    def copy(self, dst, src):
        dst.copy_(src)

    def synchronize(self):
        self.torch.cuda.synchronize()

    def event(self):
        event = self.torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def elapsed_ms(self, start, end):
        end.synchronize()
        return start.elapsed_time(end)

    def free_bytes(self):
        self.torch.cuda.empty_cache()
        return self.torch.cuda.mem_get_info()[0]

    def device_name(self):
        return self.torch.cuda.get_device_name(0)

    def terms_per_accumulator(self, voxels, voxels_per_load):
        return cuda_terms_per_accumulator(self.torch.cuda.get_device_properties(0).multi_processor_count, voxels, voxels_per_load)


def device_backend():
    """CuPy if it sees a GPU, else PyTorch with CUDA; raises RuntimeError with neither."""
    try:
        backend = CupyBackend()
        if backend.xp.cuda.runtime.getDeviceCount() > 0:
            return backend
    except Exception:  # not installed, or no driver: try PyTorch
        pass
    try:
        backend = TorchBackend()
        if backend.torch.cuda.is_available():
            return backend
    except Exception:
        pass
    raise RuntimeError("The GPU checks need CuPy or PyTorch with a visible CUDA device.")


# ---- running a case on the device ----

def _transport(array):
    """16-bit floats travel as int16 (CuPy and the interface have no bfloat16)."""
    return array.view(np.int16) if array.dtype.itemsize == 2 and array.dtype.kind != "i" else array


def run_cuda(kernels, backend, case, *, misalign=False, poison=True):
    """Sums and gradient of `case` on the GPU, as host arrays (outputs pre-filled with NaN)."""
    y_dtype = np.dtype(case.y_pred.dtype).name
    sum_dtype = np.float64 if y_dtype == "float64" else np.float32
    y = backend.to_device(_transport(case.y_pred), misalign)
    labels = backend.to_device(case.labels)
    batch, classes = case.y_pred.shape[0], case.y_pred.shape[-1]
    fill = np.nan if poison else 0.0
    sums = [backend.full((batch, classes), fill, sum_dtype) for _ in range(3)]
    kernels.cuda_confusion_sums(y, labels, *sums, y_dtype=y_dtype, stream=backend.stream,
                                **case.options)
    upstream = [backend.to_device(u.astype(sum_dtype)) for u in case.upstream]
    transport = _transport(case.y_pred).dtype
    grad_fill = (32767 if transport == np.int16 else np.nan) if poison else 0
    grad = backend.full(case.y_pred.shape, grad_fill, transport)
    kernels.cuda_confusion_sums_grad(y, labels, *upstream, grad, y_dtype=y_dtype,
                                     stream=backend.stream, **case.options)
    backend.synchronize()
    host_grad = backend.to_host(grad).view(case.y_pred.dtype)
    return [backend.to_host(s) for s in sums], host_grad


def _cases(seed=0, count=48):
    """Random cases over shapes (odd ones included), classes, dtypes, labels, options."""
    rng = np.random.default_rng(seed)
    shapes = [(1, 1, 1, 1), (2, 3, 5, 7), (1, 33, 34, 35), (3, 17, 1, 129), (2, 64, 8, 9)]
    for i in range(count):
        classes = [1, 2, 2, 3, 7][i % 5]
        activation = "sigmoid" if classes == 1 else ["softmax", "sigmoid"][(i // 5) % 2]
        label_kind = LABEL_KINDS[(i // 2) % 4]
        ignore = label_kind != "dense" and i % 3 == 0
        yield random_case(rng, shapes[i % len(shapes)], classes,
                          dtype=FLOAT_DTYPES[(i // 3) % 4], label_kind=label_kind,
                          activation=activation, from_logits=i % 4 != 3,
                          ignore_index=(255 if label_kind == "uint8" else -1) if ignore else None), \
            i % 2 == 1


# ---- checks ----

def check_against_reference(kernels, backend):
    """CUDA vs the NumPy float64 reference and vs the CPU kernels (poisoned outputs)."""
    for case, misalign in _cases():
        where = f"(cuda{', misaligned' if misalign else ''})"
        sums, grad = run_cuda(kernels, backend, case, misalign=misalign)
        assert_sums_close(sums, case, where)
        assert_grad_close(grad, case, where)
        cpu_sums = kernels.confusion_sums(case.y_pred, case.labels, **case.options)
        for gpu, cpu in zip(sums, cpu_sums):
            np.testing.assert_allclose(gpu, cpu, rtol=1e-5, atol=1e-5 * case.y_pred[..., 0].size,
                                       err_msg=f"cuda vs cpu {case.describe()}")


def check_every_output_written(kernels, backend):
    """Outputs pre-filled with NaN and with 0 give bitwise the same results."""
    for case, misalign in list(_cases(seed=1, count=10)):
        poisoned = run_cuda(kernels, backend, case, misalign=misalign, poison=True)
        clean = run_cuda(kernels, backend, case, misalign=misalign, poison=False)
        for a, b in zip(poisoned[0] + [poisoned[1]], clean[0] + [clean[1]]):
            assert a.tobytes() == b.tobytes(), f"an output element is not written: {case.describe()}"


def check_repeatable(kernels, backend):
    """The same inputs give bitwise the same sums and gradient (no atomics)."""
    rng = np.random.default_rng(2)
    for classes in (2, 5):
        case = random_case(rng, (2, 64, 96, 97), classes, ignore_index=255)
        first = run_cuda(kernels, backend, case)
        for _ in range(3):
            again = run_cuda(kernels, backend, case)
            for a, b in zip(first[0] + [first[1]], again[0] + [again[1]]):
                assert a.tobytes() == b.tobytes(), f"results differ between runs ({classes} classes)"


def check_bad_labels_poison_their_sample(kernels, backend):
    """An out-of-range label makes its sample's sums and its voxel's gradient NaN, only."""
    rng = np.random.default_rng(3)
    case = random_case(rng, (2, 9, 10, 11), 2)
    case.labels[1, 4, 5, 6] = 9
    sums, grad = run_cuda(kernels, backend, case)
    for s in sums:
        assert np.isfinite(s[0]).all() and np.isnan(s[1]).all()
    assert np.isnan(grad[1, 4, 5, 6]).all()
    assert np.isfinite(np.delete(grad.reshape(-1, 2), 9 * 10 * 11 + (4 * 10 + 5) * 11 + 6, 0)).all()


def check_large_indexing(kernels, backend, voxels=TWO_31 + 4099):
    """More than 2^31 elements: sums and sampled gradients from a volume with known counts.

    One channel (sigmoid) with `voxels` voxels, then two channels (softmax) with half as
    many voxels but as many elements. Labels are 1 on 500 voxels each side of the 2^31 /
    2^30 boundary and on the last 1000 voxels, whose logit also differs: a wrapped index
    would read other voxels and change the counts. Skipped (with a message) when the GPU
    has too little free memory.
    """
    d_tp, d_fp, d_fn = -1.0, 0.3, 0.7
    for classes in (1, 2):
        n = voxels if classes == 1 else voxels // 2
        boundary = TWO_31 // classes if voxels >= TWO_31 else n // 2
        needed = n * (4 * classes * 2 + 1) + (1 << 30)
        if backend.free_bytes() < needed:
            print(f"  check_large_indexing: skipped {classes}-channel case: needs "
                  f"{needed / 2**30:.1f} GiB, {backend.free_bytes() / 2**30:.1f} GiB free")
            continue
        z0, z1 = -1.0, 2.0
        y = backend.full((1, n, classes), 0.0, np.float32)
        y[0, :, classes - 1] = z0
        y[0, n - 1000:, classes - 1] = z1
        labels = backend.full((1, n), 0, np.uint8)
        labels[0, boundary - 500:boundary + 500] = 1
        labels[0, n - 1000:] = 1
        sums = [backend.full((1, classes), np.nan, np.float32) for _ in range(3)]
        activation = "sigmoid" if classes == 1 else "softmax"
        kernels.cuda_confusion_sums(y, labels, *sums, from_logits=True, activation=activation,
                                    stream=backend.stream)
        upstream = [backend.full((1, classes), v, np.float32) for v in (d_tp, d_fp, d_fn)]
        grad = backend.full((1, n, classes), np.nan, np.float32)
        kernels.cuda_confusion_sums_grad(y, labels, *upstream, grad, from_logits=True,
                                         activation=activation, stream=backend.stream)
        backend.synchronize()
        s0, s1 = (1 / (1 + math.exp(-z)) for z in (z0, z1))  # lesion probability (z - 0)
        expected = (1000 * s0 + 1000 * s1, (n - 2000) * s0, 1000 * (1 - s0) + 1000 * (1 - s1))
        # float32 logits: 16-byte loads of 4 / classes voxels (the binary kernels' packs).
        tolerance = accumulation_tolerance(backend.terms_per_accumulator(n, 4 // classes))
        for name, s, e in zip(("TP", "FP", "FN"), sums, expected):
            got = float(backend.to_host(s)[0, classes - 1])
            assert abs(got - e) <= tolerance * e, \
                f"{name} {got} != {e} (rel. tolerance {tolerance:.1e}; {classes} channel(s), n={n})"
        for index in (0, boundary - 501, boundary - 500, boundary + 499, boundary + 500,
                      n - 1001, n - 1000, n - 1):
            g = 1.0 if (boundary - 500 <= index < boundary + 500 or index >= n - 1000) else 0.0
            p = s1 if index >= n - 1000 else s0
            grad_p = d_fp + g * (d_tp - d_fp - d_fn)
            want = grad_p * p * (1 - p)  # sigmoid; softmax: dz1 = p0 p1 (G1 - G0), G0 below
            if classes == 2:
                grad_p0 = d_fp + (1 - g) * (d_tp - d_fp - d_fn)
                want = p * (1 - p) * (grad_p - grad_p0)
            got = float(backend.to_host(grad[0, index:index + 1, classes - 1])[0])
            assert abs(got - want) <= 1e-5 * abs(want) + 1e-7, f"grad[{index}] {got} != {want}"
        del y, labels, grad, sums, upstream


def check_many_classes(kernels, backend):
    """The general (C > 2) kernels up to 64 classes against the reference and the CPU, and
    bitwise repeatable. Softmax couples the C threads of a voxel through shared memory."""
    rng = np.random.default_rng(4)
    for classes, activation, dtype in ((3, "softmax", "float32"), (17, "softmax", "float32"),
                                       (64, "softmax", "float32"), (64, "softmax", "float64"),
                                       (33, "sigmoid", "bfloat16"), (64, "softmax", "float16")):
        case = random_case(rng, (2, 7, 9, 11), classes, dtype=dtype, activation=activation,
                           ignore_index=255)
        sums, grad = run_cuda(kernels, backend, case)
        where = f"(cuda, {classes} classes)"
        assert_sums_close(sums, case, where)
        assert_grad_close(grad, case, where)
        cpu_sums = kernels.confusion_sums(case.y_pred, case.labels, **case.options)
        for gpu, cpu in zip(sums, cpu_sums):
            np.testing.assert_allclose(gpu, cpu, rtol=1e-5, atol=1e-5 * case.y_pred[..., 0].size,
                                       err_msg=f"cuda vs cpu {case.describe()}")
        again = run_cuda(kernels, backend, case)
        for a, b in zip(sums + [grad], again[0] + [again[1]]):
            assert a.tobytes() == b.tobytes(), f"results differ between runs {where}"


def check_nan_at_an_ignored_voxel(kernels, backend):
    """A NaN logit at an ignored voxel makes the sums NaN (0 * NaN), on every path: the loss's
    check on the sums then raises, rather than the backward writing NaN there."""
    for classes, activation in ((2, "softmax"), (1, "sigmoid"), (5, "softmax")):
        rng = np.random.default_rng(5)
        case = random_case(rng, (1, 9, 10, 11), classes, activation=activation, ignore_index=255)
        case.labels[0, 4, 5, 6] = 255
        case.y_pred[0, 4, 5, 6, classes - 1] = np.nan
        sums, _ = run_cuda(kernels, backend, case)
        for s in sums:
            assert np.isnan(s).all(), f"a NaN at an ignored voxel was dropped ({classes} classes)"


def check_16bit_one_hot_labels_refused(kernels, backend):
    """Dense labels must be float32 (read as such): float16 ones used to be read past their end."""
    y = backend.to_device(np.zeros((1, 3, 4, 2), np.float32))
    labels = backend.to_device(np.zeros((1, 3, 4, 2), np.float16))
    sums = [backend.full((1, 2), 0.0, np.float32) for _ in range(3)]
    try:
        kernels.cuda_confusion_sums(y, labels, *sums, stream=backend.stream)
    except TypeError as error:
        assert "Received labels of dtype float16" in str(error), error
    else:
        raise AssertionError("float16 one-hot labels were accepted")


CHECKS = [check_against_reference, check_every_output_written, check_repeatable,
          check_bad_labels_poison_their_sample, check_many_classes, check_nan_at_an_ignored_voxel,
          check_16bit_one_hot_labels_refused, check_large_indexing]


# ---- benchmark ----

def _median_ms(backend, fn, repeats):
    fn()  # warm-up
    backend.synchronize()
    times = []
    for _ in range(repeats):
        start = backend.event()
        fn()
        times.append(backend.elapsed_ms(start, backend.event()))
    return statistics.median(times)


def copy_rate(backend, megabytes=1024, repeats=20):
    """Device-to-device copy rate in bytes/s, counting bytes read plus bytes written."""
    count = megabytes * 2**20 // 4
    src = backend.full((count,), 1.0, np.float32)
    dst = backend.full((count,), 0.0, np.float32)
    ms = _median_ms(backend, lambda: backend.copy(dst, src), repeats)
    del src, dst
    return 2 * count * 4 / (ms / 1e3)


def benchmark(kernels, backend, shapes=((1, 128, 224, 256), (8, 128, 224, 256)), repeats=20):
    """Forward (sums) and backward (gradient) on float32 logits, 2 classes, 1 % lesion.

    The floor is the memory traffic (read logits and labels twice, write the gradient once)
    at the measured copy rate; `of_copy_rate` is floor / measured time.
    """
    rate = copy_rate(backend)
    rows = []
    for shape in shapes:
        y = backend.random_normal(tuple(shape) + (2,))
        labels = backend.random_labels(tuple(shape), 0.01)
        sums = [backend.full((shape[0], 2), 0.0, np.float32) for _ in range(3)]
        upstream = [backend.full((shape[0], 2), v, np.float32) for v in (-1.0, 0.3, 0.7)]
        grad = backend.full(tuple(shape) + (2,), 0.0, np.float32)

        def forward():
            kernels.cuda_confusion_sums(y, labels, *sums, from_logits=True, stream=backend.stream)

        def backward():
            kernels.cuda_confusion_sums_grad(y, labels, *upstream, grad, from_logits=True,
                                             stream=backend.stream)

        def both():
            forward()
            backward()

        voxels = int(np.prod(shape))
        traffic = 2 * (voxels * 2 * 4 + voxels) + voxels * 2 * 4
        row = dict(shape="x".join(map(str, shape)), forward_ms=_median_ms(backend, forward, repeats),
                   backward_ms=_median_ms(backend, backward, repeats),
                   total_ms=_median_ms(backend, both, repeats),
                   floor_ms=traffic / rate * 1e3, copy_gb_per_s=rate / 1e9)
        row["of_copy_rate"] = row["floor_ms"] / row["total_ms"]
        rows.append(row)
        del y, labels, sums, upstream, grad
    return rows
