"""NumPy float64 reference of the fused Tversky kernels, random cases, and the module finder.

No TensorFlow here: tests/csrc and scripts/gpu_check.py use it on machines without it.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import runpy
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
MODULE = "_tfversky_kernels"


def find_module_file() -> Path | None:
    """The built pybind11 module: $TFVERSKY_KERNELS_DIR, else tfversky/, else build/."""
    explicit = os.environ.get("TFVERSKY_KERNELS_DIR")
    folders = [Path(explicit)] if explicit else [ROOT / "tfversky", ROOT / "build"]
    for folder in folders:
        found = sorted(glob.glob(str(folder / f"{MODULE}*.so")))
        if found:
            return Path(found[0])
    return None


def load_module():
    """Imports the pybind11 module by path (without importing tfversky, hence TensorFlow)."""
    path = find_module_file()
    if path is None:
        raise ImportError(
            f"{MODULE} is not built. Build it with `pip install --no-build-isolation -e .` or "
            f"`cmake -S . -B build && cmake --build build`, or set TFVERSKY_KERNELS_DIR.")
    spec = importlib.util.spec_from_file_location(MODULE, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def package_version() -> str:
    return runpy.run_path(str(ROOT / "tfversky" / "_version.py"))["__version__"]


# ---- reference math (float64), written from docs/losses.md ("The math", "The gradient") ----

def probabilities(y, from_logits, activation):
    y = np.asarray(y, np.float64)
    if not from_logits:
        return y
    if activation == "softmax":
        e = np.exp(y - y.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)
    return 1.0 / (1.0 + np.exp(-y))


def targets_and_weights(labels, classes, ignore_index):
    """Targets (B, ..., C) and weights (B, ..., 1) in float64."""
    labels = np.asarray(labels)
    if labels.dtype.kind == "f":
        return labels.astype(np.float64), np.ones(labels.shape[:-1] + (1,))
    ids = labels.astype(np.int64)
    weight = np.ones(ids.shape) if ignore_index is None else (ids != ignore_index).astype(float)
    if classes == 1:
        targets = (ids == 1)[..., None].astype(np.float64)
    else:
        targets = (ids[..., None] == np.arange(classes)).astype(np.float64)
    return targets, weight[..., None]


def reference_sums(y, labels, *, from_logits=False, activation="softmax", ignore_index=None):
    p = probabilities(y, from_logits, activation)
    g, w = targets_and_weights(labels, p.shape[-1], ignore_index)
    axes = tuple(range(1, p.ndim - 1))
    return ((w * p * g).sum(axes), (w * p * (1 - g)).sum(axes), (w * (1 - p) * g).sum(axes))


def reference_grad(y, labels, d_tp, d_fp, d_fn, *, from_logits=False, activation="softmax",
                   ignore_index=None):
    """dL/dy from dL/dTP, dL/dFP, dL/dFN (batch, classes), by the chain rule in float64."""
    p = probabilities(y, from_logits, activation)
    g, w = targets_and_weights(labels, p.shape[-1], ignore_index)
    per_sample = (p.shape[0],) + (1,) * (p.ndim - 2) + (p.shape[-1],)
    d_tp, d_fp, d_fn = (np.asarray(d, np.float64).reshape(per_sample) for d in (d_tp, d_fp, d_fn))
    grad_p = w * (d_tp * g + d_fp * (1 - g) - d_fn * g)
    if not from_logits:
        return grad_p
    if activation == "softmax":
        return p * (grad_p - (p * grad_p).sum(axis=-1, keepdims=True))
    return grad_p * p * (1 - p)


# ---- random cases ----

FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
LABEL_KINDS = ("uint8", "int32", "int64", "dense")


def numpy_dtype(name):
    if name == "bfloat16":
        import ml_dtypes

        return ml_dtypes.bfloat16
    return np.dtype(name)


@dataclass
class Case:
    """One kernel problem: inputs and options, plus upstream gradients for pass 2."""
    y_pred: np.ndarray
    labels: np.ndarray
    from_logits: bool
    activation: str
    ignore_index: int | None
    upstream: tuple = field(default_factory=tuple)

    @property
    def options(self):
        return dict(from_logits=self.from_logits, activation=self.activation,
                    ignore_index=self.ignore_index)

    def describe(self):
        return (f"y{self.y_pred.shape}:{self.y_pred.dtype} labels:{self.labels.dtype} "
                f"{self.activation} logits={self.from_logits} ignore={self.ignore_index}")


def random_inputs(rng, shape, classes, *, dense=False, from_logits=True, activation="softmax",
                  ignore_index=None, lesion=0.2, logit_scale=3.0, probability_range=(0.0, 1.0)):
    """Random (y_pred, labels), float64 and int64: the data of random_case (the kernel tests)
    and of tests/tfversky/test_fused.py.

    y_pred: normal logits of scale `logit_scale`, or probabilities (softmax: Dirichlet;
    sigmoid: uniform in `probability_range`). labels: class ids with about `lesion`
    foreground (a tenth of all set to `ignore_index`, if given), or with `dense`, their
    one-hot targets (random soft targets for a single class).
    """
    shape = tuple(shape)
    if from_logits:
        y = rng.normal(scale=logit_scale, size=shape + (classes,))
    elif activation == "softmax":
        y = rng.dirichlet(np.ones(classes), size=shape)
    else:
        y = rng.uniform(*probability_range, size=shape + (classes,))
    num_values = 2 if classes == 1 else classes
    ids = np.where(rng.random(shape) < lesion, rng.integers(1, num_values, size=shape), 0)
    if dense:
        return y, rng.random(shape + (1,)) if classes == 1 else np.eye(classes)[ids]
    if ignore_index is not None:
        ids = np.where(rng.random(shape) < 0.1, ignore_index, ids)
    return y, ids


def random_case(rng, shape, classes, *, dtype="float32", label_kind="uint8",
                activation="softmax", from_logits=True, ignore_index=None, lesion=0.2):
    """A Case of random_inputs, in `dtype` and `label_kind`, with random upstream gradients."""
    dense = label_kind == "dense"
    if dense:
        ignore_index = None
    y, labels = random_inputs(rng, shape, classes, dense=dense, from_logits=from_logits,
                              activation=activation, ignore_index=ignore_index, lesion=lesion)
    accumulate = np.float64 if dtype == "float64" else np.float32
    labels = labels.astype(accumulate if dense else label_kind)
    upstream = tuple(rng.normal(size=(shape[0], classes)) for _ in range(3))
    return Case(y.astype(numpy_dtype(dtype)), labels, from_logits, activation, ignore_index,
                upstream)


def tolerance(dtype_name):
    """Relative tolerance of the gradient written in y_pred's dtype."""
    return {"float16": 2e-3, "bfloat16": 1.6e-2, "float32": 2e-5, "float64": 1e-10}[dtype_name]


def assert_sums_close(actual, case, what=""):
    expected = reference_sums(case.y_pred, case.labels, **case.options)
    voxels = int(np.prod(case.y_pred.shape[1:-1]))
    accuracy = 1e-12 if case.y_pred.dtype == np.float64 else 2e-6
    for name, a, e in zip(("TP", "FP", "FN"), actual, expected):
        np.testing.assert_allclose(np.asarray(a, np.float64), e, rtol=accuracy * 10,
                                   atol=accuracy * voxels,
                                   err_msg=f"{name} {what} {case.describe()}")


def assert_grad_close(actual, case, what=""):
    expected = reference_grad(case.y_pred, case.labels, *case.upstream, **case.options)
    name = np.dtype(case.y_pred.dtype).name
    rtol = tolerance(name)
    scale = np.abs(expected).max() if expected.size else 1.0
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=rtol,
                               atol=rtol * scale + 1e-30, err_msg=f"grad {what} {case.describe()}")
