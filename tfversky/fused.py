"""The fused C++/CUDA Tversky op: activation and confusion sums in one pass, on every backend.

``tversky_loss(..., implementation=...)`` reaches this module through one dispatch point
(``losses._confusion_sums``): the fused op replaces only the heavy part, the per-(sample,
class) sums TP, FP, FN over the volume, with the softmax/sigmoid fused in and sparse labels
read directly (no one-hot tensor). The Tversky index, focal exponent, class selection and
batch pooling stay in ``losses.loss_from_sums`` for both implementations.

Forward: one pass reads y_pred and the labels and writes the (batch, classes) sums. Backward
(``FusedTverskySumsGrad``, registered as the op's gradient): one pass reads them again and
writes dL/dy_pred, from dL/dTP, dL/dFP, dL/dFN given by TensorFlow's autodiff of
``loss_from_sums``. That is the closed form of docs/losses.md, "The gradient" (the paper's Eq. 5
without its stray factor 2), chained through the softmax or sigmoid.

The kernels (csrc/kernels) have one binding per Keras backend, each built where its
framework is installed and loaded on first use: the TensorFlow op (``_fused_tf``), XLA FFI
handlers in a ``jax.custom_vjp`` (``_fused_jax``) and ``torch.library`` ops with an autograd
formula (``_fused_torch``). The same gradient kernel is the backward on all three.

``implementation="auto"`` uses the running backend's binding when it loads and the class
count is supported (1 to 64); otherwise the pure ``keras.ops`` sums, with one warning naming
the reason. ``"fused"`` raises instead of falling back. Inside XLA (``jit_compile=True``,
Keras's default on GPUs) both ops lower to XLA custom calls of the same kernels (csrc/xla,
loaded by ``_loader.load_xla``); where that lowering cannot load, both use the pure sums
there, with one warning (under ``"auto"`` only when a GPU is visible, where Keras turns XLA
on by itself).

Example:

>>> import numpy as np, tfversky
>>> labels = np.zeros((1, 8, 8, 8), "uint8"); labels[0, 2:5, 2:5, 2:5] = 1
>>> logits = np.random.default_rng(0).normal(size=(1, 8, 8, 8, 2)).astype("float32")
>>> fused = tfversky.tversky_loss(labels, logits, from_logits=True, implementation="fused")
>>> pure = tfversky.tversky_loss(labels, logits, from_logits=True, implementation="tf")
>>> bool(np.allclose(fused, pure, atol=1e-6))
True
"""

from __future__ import annotations

import importlib
import warnings

import keras

from tfversky import _loader
from tfversky._loader import FusedOpUnavailableError

__all__ = ["FusedOpUnavailableError", "build_info", "confusion_sums", "in_xla_context",
           "is_available", "should_use", "xla_unavailable_reason"]

MAX_CLASSES = 64  # kMaxClasses in csrc/kernels/tversky_math.h
# Keras backend -> the module of its binding.
_BINDINGS = {"tensorflow": "tfversky._fused_tf", "jax": "tfversky._fused_jax",
             "torch": "tfversky._fused_torch"}
_warned: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=4)


# The running backend's binding module, imported with this module (its framework is already
# imported by Keras; no library is loaded before the first use): importing it while
# torch.compile traces the loss would break the graph.
_BINDING = (importlib.import_module(_BINDINGS[keras.backend.backend()])
            if keras.backend.backend() in _BINDINGS else None)


def _binding():
    """The running Keras backend's binding module, or None."""
    return _BINDING


def _load():
    """Loads the running backend's binding; raises FusedOpUnavailableError."""
    binding = _binding()
    if binding is None:
        raise FusedOpUnavailableError(
            f"the fused op has no binding for the Keras backend "
            f"{keras.backend.backend()!r} (it has tensorflow, jax and torch)")
    return binding.load()


def is_available() -> bool:
    """Whether the running backend's binding loads (loading it if needed). Never raises.

    >>> import tfversky.fused
    >>> tfversky.fused.is_available()
    True
    """
    try:
        _load()
    except FusedOpUnavailableError:
        return False
    return True


def build_info() -> dict:
    """Build info of the running backend's binding, plus its ``path``. Loads it if needed.

    Raises:
        FusedOpUnavailableError: the binding cannot be loaded.
    """
    return dict(_load())


def in_xla_context() -> bool:
    """Whether the code being traced will be compiled by XLA (``jit_compile=True``).

    There the fused ops need their XLA lowering (``xla_unavailable_reason``). This wraps a
    private TensorFlow API (checked on TensorFlow 2.21); a test pins its behaviour.

    >>> import tensorflow as tf, tfversky.fused
    >>> bool(tf.function(tfversky.fused.in_xla_context, jit_compile=True)())
    True
    >>> tfversky.fused.in_xla_context()   # eager
    False
    """
    if keras.backend.backend() != "tensorflow":
        return False
    from tensorflow.python.framework import ops as tf_ops
    from tensorflow.python.ops import control_flow_util

    return bool(control_flow_util.GraphOrParentsInXlaContext(tf_ops.get_default_graph()))


def _unsupported(y_pred) -> str | None:
    """Why the op cannot take this y_pred (before loading anything), or None."""
    if keras.backend.backend() not in _BINDINGS:
        return (f"the fused op has no binding for the Keras backend "
                f"{keras.backend.backend()!r} (it has {', '.join(_BINDINGS)})")
    classes = y_pred.shape[-1]
    if classes is None:
        return "y_pred's number of classes (last dim) is not known when tracing"
    if classes > MAX_CLASSES:
        return f"y_pred has {classes} classes; the fused op takes at most {MAX_CLASSES}"
    return None


def _refused(implementation, reason) -> bool:
    """Whether ``reason`` (None: no objection) keeps the op out: ``"auto"`` warns once,
    ``"fused"`` raises ValueError."""
    if reason is None:
        return False
    if implementation == "fused":
        raise ValueError(f"implementation='fused' cannot be used: {reason}. Use "
                         f"implementation='tf' or 'auto'.")
    _warn_once(reason, f"tfversky: {reason}; using the pure keras.ops sums.")
    return True


def should_use(implementation, labels, y_pred, *, sparse, options) -> bool:
    """Whether ``losses._confusion_sums`` should call the fused op (see the module doc).

    Raises:
        FusedOpUnavailableError: ``implementation="fused"`` and the library cannot be used.
        ValueError: ``implementation="fused"`` and the inputs are not supported.
    """
    del labels, sparse, options  # every label layout and option is supported
    if implementation == "tf":
        return False
    if _refused(implementation, _unsupported(y_pred)):
        return False
    if implementation == "fused":
        _load()
    else:
        try:
            _load()
        except FusedOpUnavailableError as error:
            _warn_once("missing", f"{error}\nUsing the pure keras.ops sums "
                                  f"(implementation='auto').")
            return False
    # e.g. a GPU tensor and a binding without CUDA kernels
    if _refused(implementation, _binding().unsupported(y_pred)):
        return False
    if in_xla_context():
        reason = xla_unavailable_reason()
        if reason is not None:
            if implementation == "fused" or _loader._visible_gpus():
                _warn_once("xla", f"tfversky: the fused op cannot be compiled by XLA here "
                                  f"(jit_compile=True): {reason}\nThe pure TensorFlow sums are "
                                  f"used inside XLA; jit_compile=False runs the fused op.")
            return False
    return True


def xla_unavailable_reason() -> str | None:
    """Why the fused ops cannot be compiled by XLA here, or None (loads the lowering).

    With a GPU visible the lowering must have been built with CUDA: XLA may compile for
    either device, and tells the op which only when it compiles.

    >>> import tfversky.fused
    >>> tfversky.fused.xla_unavailable_reason() is None
    True
    """
    try:
        info = _loader.load_xla()
    except FusedOpUnavailableError as error:
        return str(error)
    if not info.get("cuda") and _loader._visible_gpus():
        return (f"{info['path']} was built without CUDA and a GPU is visible. Rebuild it with "
                f"CUDA ({_loader.REBUILD_COMMAND}).")
    return None


def confusion_sums(labels, y_pred, *, sparse, from_logits, activation, ignore_index):
    """TP, FP, FN per sample and class from the running backend's fused op: three
    (batch, classes) tensors of that backend.

    Same contract as ``losses.pure_confusion_sums``: float32 sums (float64 for float64
    y_pred), differentiable w.r.t. y_pred (not the labels), by the fused gradient kernel.

    Args:
        labels: Standardised labels (``_checks.standardize_labels``): class ids
            (B, *spatial), any integer dtype (uint8, int32, int64 are read directly, others
            cast), or one-hot/soft targets (B, *spatial, C).
        y_pred: (B, *spatial, C) probabilities or logits, float16/bfloat16/float32/float64.
        sparse: Whether ``labels`` are class ids.
        from_logits: Whether to apply ``activation`` ("softmax" or "sigmoid") in the op.
        ignore_index: Class-id value whose voxels are left out, or None.

    Raises:
        FusedOpUnavailableError: the binding cannot be loaded.
    """
    _load()
    return _binding().confusion_sums(labels, y_pred, sparse=sparse, from_logits=from_logits,
                                     activation=activation, ignore_index=ignore_index)
