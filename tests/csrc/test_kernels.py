"""The kernels through the pybind11 module, against the NumPy float64 reference.

No TensorFlow: these run wherever the module builds. The CUDA cases are marked `gpu`
(tests/csrc/cuda_checks.py holds them, shared with scripts/gpu_check.py).
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.csrc import cuda_checks
from tests.csrc.kernel_reference import (
    FLOAT_DTYPES, LABEL_KINDS, assert_grad_close, assert_sums_close, load_module,
    package_version, random_case, reference_grad)

kernels = load_module()


def run_cpu(case, num_threads=0):
    sums = kernels.confusion_sums(case.y_pred, case.labels, num_threads=num_threads, **case.options)
    grad = kernels.confusion_sums_grad(case.y_pred, case.labels, *case.upstream,
                                       num_threads=num_threads, **case.options)
    return sums, grad


def test_version_and_build_info_match_the_package():
    assert kernels.__version__ == package_version()
    assert kernels.build_info["version"] == package_version()


def test_docstring_example():
    logits = np.zeros((1, 4, 4, 4, 2), np.float32)
    labels = np.zeros((1, 4, 4, 4), np.uint8)
    tp, fp, fn = kernels.confusion_sums(logits, labels, from_logits=True)
    assert tp.tolist() == [[32.0, 0.0]] and fp.tolist() == [[0.0, 32.0]]
    assert fn.tolist() == [[32.0, 0.0]]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shape=st.tuples(st.integers(1, 2), st.integers(1, 9), st.integers(1, 8), st.integers(1, 17)),
    classes=st.sampled_from([1, 2, 3, 5]),
    dtype=st.sampled_from(FLOAT_DTYPES),
    label_kind=st.sampled_from(LABEL_KINDS),
    activation=st.sampled_from(["softmax", "sigmoid"]),
    from_logits=st.booleans(),
    ignore=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_cpu_matches_reference(shape, classes, dtype, label_kind, activation, from_logits, ignore,
                               seed):
    if classes == 1:
        activation = "sigmoid"
    case = random_case(np.random.default_rng(seed), shape, classes, dtype=dtype,
                       label_kind=label_kind, activation=activation, from_logits=from_logits,
                       ignore_index=255 if ignore and label_kind == "uint8" else
                       (-1 if ignore and label_kind != "dense" else None))
    sums, grad = run_cpu(case)
    assert_sums_close(sums, case)
    assert grad.dtype == case.y_pred.dtype and grad.shape == case.y_pred.shape
    assert_grad_close(grad, case)


def test_reference_gradient_matches_finite_differences(rng):
    """The reference itself (hence what the kernels are held to) against central differences."""
    for activation, classes in (("softmax", 3), ("sigmoid", 2), ("sigmoid", 1)):
        case = random_case(rng, (1, 3, 2, 2), classes, dtype="float64", activation=activation,
                           ignore_index=-1 if classes > 1 else None)
        weights = [rng.normal(size=(1, classes)) for _ in range(3)]

        def objective(y):
            from tests.csrc.kernel_reference import reference_sums
            return sum(float((w * s).sum()) for w, s in
                       zip(weights, reference_sums(y, case.labels, **case.options)))

        analytic = reference_grad(case.y_pred, case.labels, *weights, **case.options)
        numeric = np.zeros_like(case.y_pred)
        for index in np.ndindex(case.y_pred.shape):
            step = np.zeros_like(case.y_pred)
            step[index] = 1e-6
            numeric[index] = (objective(case.y_pred + step) - objective(case.y_pred - step)) / 2e-6
        np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-8)


def test_odd_volume_with_many_tasks(rng):
    """(2, 33, 34, 35): several CPU tasks per sample, a partial last task."""
    case = random_case(rng, (2, 33, 34, 35), 2, dtype="float32", ignore_index=255)
    sums, grad = run_cpu(case)
    assert_sums_close(sums, case)
    assert_grad_close(grad, case)


@pytest.mark.parametrize("classes, activation", [(2, "softmax"), (4, "softmax"), (1, "sigmoid")])
def test_bitwise_identical_for_any_thread_count(rng, classes, activation):
    case = random_case(rng, (2, 24, 40, 41), classes, activation=activation)
    reference_sums, reference_grad_ = run_cpu(case, num_threads=1)
    for threads in (2, 3, 8):
        sums, grad = run_cpu(case, num_threads=threads)
        for a, b in zip(sums, reference_sums):
            assert a.tobytes() == b.tobytes(), f"sums differ with {threads} threads"
        assert grad.tobytes() == reference_grad_.tobytes(), f"gradient differs with {threads} threads"
    again, _ = run_cpu(case)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(again, reference_sums))


def test_labels_out_of_range_raise_with_their_position():
    logits = np.zeros((2, 3, 4, 2), np.float32)
    labels = np.zeros((2, 3, 4), np.int32)
    labels[1, 2, 1] = 7
    with pytest.raises(ValueError, match=r"flat index 21\] = 7 .*\[0, 2\)"):
        kernels.confusion_sums(logits, labels, from_logits=True)
    with pytest.raises(ValueError, match="= 7"):
        kernels.confusion_sums_grad(logits, labels, *[np.zeros((2, 2))] * 3, from_logits=True)
    labels[1, 2, 1] = -3
    with pytest.raises(ValueError, match="= -3"):
        kernels.confusion_sums(logits, labels, from_logits=True)
    labels[1, 2, 1] = 9
    kernels.confusion_sums(logits, labels, from_logits=True, ignore_index=9)  # ignored: fine


def test_shape_and_dtype_errors_name_the_fix():
    logits = np.zeros((2, 3, 4, 2), np.float32)
    with pytest.raises(ValueError, match=r"Class-id labels must have shape \(2, 3, 4\)"):
        kernels.confusion_sums(logits, np.zeros((2, 3, 5), np.uint8))
    with pytest.raises(TypeError, match="float32 for float32 y_pred. Received labels of dtype "
                                        "float64"):
        kernels.confusion_sums(logits, np.zeros((2, 3, 4, 2), np.float64))
    with pytest.raises(ValueError, match="softmax needs at least 2 channels"):
        kernels.confusion_sums(np.zeros((2, 3, 1), np.float32), np.zeros((2, 3), np.uint8),
                               from_logits=True)
    with pytest.raises(ValueError, match=r"must be in \[1, 64\]"):
        kernels.confusion_sums(np.zeros((1, 2, 65), np.float32), np.zeros((1, 2), np.uint8))
    with pytest.raises(TypeError, match="Unsupported dtype"):
        kernels.confusion_sums(logits, np.zeros((2, 3, 4), np.int16))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_16bit_one_hot_labels_are_refused(dtype):
    """Dense labels are read as float32: 2-byte labels used to be read past their end."""
    from tests.csrc.kernel_reference import numpy_dtype

    logits = np.zeros((1, 3, 4, 2), np.float32)
    labels = np.zeros((1, 3, 4, 2), numpy_dtype(dtype))
    with pytest.raises(TypeError, match=f"Received labels of dtype {dtype}: cast them"):
        kernels.confusion_sums(logits, labels)
    with pytest.raises(TypeError, match=f"Received labels of dtype {dtype}"):
        kernels.confusion_sums_grad(logits, labels, *[np.zeros((1, 2))] * 3)


@pytest.mark.parametrize("classes, activation, from_logits", [
    (2, "softmax", True), (2, "sigmoid", True), (1, "sigmoid", True), (2, "softmax", False)])
def test_nan_at_an_ignored_voxel_reaches_the_sums(classes, activation, from_logits):
    """As in the CUDA kernels and the pure loss (0 * NaN): the check on the sums then raises,
    instead of the backward writing NaN there. The binary CPU path masks ignored voxels out,
    and once dropped their NaN."""
    y = np.full((1, 20000, classes), 0.5, np.float32)
    labels = np.zeros((1, 20000), np.uint8)
    labels[0, 12345] = 255
    y[0, 12345, classes - 1] = np.nan
    sums = kernels.confusion_sums(y, labels, from_logits=from_logits, activation=activation,
                                  ignore_index=255)
    for s in sums:
        assert np.isnan(s).all()
    y[0, 12345, classes - 1] = 0.5  # and a finite ignored voxel still adds nothing
    tp, fp, fn = kernels.confusion_sums(y, labels, from_logits=from_logits, activation=activation,
                                        ignore_index=255)
    assert np.isfinite(tp).all() and np.isfinite(fp).all() and np.isfinite(fn).all()


@pytest.mark.parametrize("classes", [2, 3])
def test_nan_and_inf_give_what_softmax_gives(classes):
    """NaN anywhere, or +inf as a voxel's largest logit, makes the sums NaN (as softmax
    does, so TensorFlow's check on the sums sees them); a -inf logit is just p = 0."""
    logits = np.zeros((1, 20000, classes), np.float32)
    labels = np.zeros((1, 20000), np.uint8)
    for value, finite in ((np.nan, False), (np.inf, False), (-np.inf, True)):
        logits[0, 12345, 1] = value
        tp, fp, fn = kernels.confusion_sums(logits, labels, from_logits=True)
        assert np.isfinite(tp).all() == finite and np.isfinite(fp).all() == finite, value
    expected = 19999 / classes  # the -inf voxel adds p = 0 to class 1's FP
    assert fp[0, 1] == pytest.approx(expected, rel=1e-5)


def test_exp_approx_accuracy():
    x = np.concatenate([np.linspace(-87, 88, 200001, dtype=np.float32),
                        np.float32([0, -0.0, 1e-30, -1e-30])])
    expected = np.exp(x.astype(np.float64))
    relative = np.abs(kernels.exp_approx(x) - expected) / expected
    assert relative.max() < 3 * 2.0**-23
    assert np.isnan(kernels.exp_approx(np.float32([np.nan])))[0]
    big = kernels.exp_approx(np.float32([-1e4, 1e4]))
    assert 0 < big[0] < 1e-37 and np.isfinite(big[1])


def test_float16_conversions_match_numpy():
    bits = np.arange(2**16, dtype=np.uint16)
    expected = bits.view(np.float16).astype(np.float32)
    widened = kernels.widen_16bit(bits, "float16")
    nan = np.isnan(expected)
    assert np.array_equal(np.isnan(widened), nan)
    assert np.array_equal(widened[~nan].view(np.uint32), expected[~nan].view(np.uint32))
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(scale=s, size=20000) for s in (1e-7, 1e-5, 1, 1e3, 6e4)])
    x = np.concatenate([x, [0.0, -0.0, 65504, 65519, 65520, 1e6, np.inf, -np.inf, 5.96e-8,
                            2.98e-8, 2.99e-8, 6.1e-5]]).astype(np.float32)
    with np.errstate(over="ignore"):  # the values beyond float16's range become inf
        expected_bits = x.astype(np.float16).view(np.uint16)
    assert np.array_equal(kernels.round_to_16bit(x, "float16"), expected_bits)
    assert np.isnan(kernels.round_to_16bit(np.float32([np.nan]), "float16").view(np.float16))[0]


def test_bfloat16_conversions_match_ml_dtypes():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.normal(scale=s, size=20000) for s in (1e-30, 1e-3, 1, 1e30)])
    x = np.concatenate([x, [0.0, -0.0, 3.39e38, np.inf, -np.inf]]).astype(np.float32)
    expected = x.astype(ml_dtypes.bfloat16).view(np.uint16)
    assert np.array_equal(kernels.round_to_16bit(x, "bfloat16"), expected)
    widened = kernels.widen_16bit(expected, "bfloat16")
    assert np.array_equal(widened, expected.view(ml_dtypes.bfloat16).astype(np.float32))


def test_empty_batch_gives_empty_sums():
    tp, fp, fn = kernels.confusion_sums(np.zeros((0, 4, 2), np.float32), np.zeros((0, 4), np.uint8))
    assert tp.shape == (0, 2)


@pytest.mark.gpu
@pytest.mark.parametrize("check", cuda_checks.CHECKS, ids=lambda c: c.__name__)
def test_cuda(check):
    check(kernels, cuda_checks.device_backend())


def test_large_indexing_tolerance_covers_float32_accumulation():
    """check_large_indexing's tolerance against a float32 sum taken one term at a time, as one
    CUDA thread takes it (NumPy's cumsum is sequential): thousands of equal terms miss the
    old fixed 1e-5 by rounding alone, and stay within the bound."""
    value = np.float32(1 / (1 + np.exp(1.0)))  # the check's background probability
    errors = {}
    for terms in (8192, 16384, 65536):
        total = np.cumsum(np.full(terms, value, np.float32), dtype=np.float32)[-1]
        errors[terms] = abs(float(total) - terms * float(value)) / (terms * float(value))
        assert errors[terms] <= cuda_checks.accumulation_tolerance(terms)
    assert errors[16384] > 1e-5  # what failed the old check
    # On an H200 (132 multiprocessors), 2^31 voxels: at most ~64 k terms per thread.
    terms = cuda_checks.cuda_terms_per_accumulator(132, 2**31 + 4099, 4)
    assert 2**31 / (132 * 256) <= terms < 65536
