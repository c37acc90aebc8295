"""The fused C++/CUDA Tversky op: activation and confusion sums in one pass.

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

``implementation="auto"`` uses the op when its library loads and the class count is
supported (1 to 64); otherwise the pure TensorFlow sums, with one warning if the library is
missing. ``"fused"`` raises instead of falling back. Inside XLA (``jit_compile=True``,
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

import warnings

import keras
import tensorflow as tf

from tfversky import _loader
from tfversky._loader import FusedOpUnavailableError, build_info

__all__ = ["FusedOpUnavailableError", "build_info", "confusion_sums", "in_xla_context",
           "is_available", "should_use", "xla_unavailable_reason"]

MAX_CLASSES = 64  # kMaxClasses in csrc/kernels/tversky_math.h
_OP_TYPE = "Tfversky>FusedTverskySums"
_warned: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=4)


def is_available() -> bool:
    """Whether the op library loads (loading it if needed). Never raises.

    >>> import tfversky.fused
    >>> tfversky.fused.is_available()
    True
    """
    try:
        _loader.load()
    except FusedOpUnavailableError:
        return False
    return True


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
    from tensorflow.python.framework import ops as tf_ops
    from tensorflow.python.ops import control_flow_util

    return bool(control_flow_util.GraphOrParentsInXlaContext(tf_ops.get_default_graph()))


def _unsupported(y_pred) -> str | None:
    """Why the op cannot take this y_pred, or None."""
    if keras.backend.backend() != "tensorflow":
        return f"the fused op needs the TensorFlow backend, not {keras.backend.backend()!r}"
    classes = y_pred.shape[-1]
    if classes is None:
        return "y_pred's number of classes (last dim) is not known when tracing"
    if classes > MAX_CLASSES:
        return f"y_pred has {classes} classes; the fused op takes at most {MAX_CLASSES}"
    return None


def should_use(implementation, labels, y_pred, *, sparse, options) -> bool:
    """Whether ``losses._confusion_sums`` should call the fused op (see the module doc).

    Raises:
        FusedOpUnavailableError: ``implementation="fused"`` and the library cannot be used.
        ValueError: ``implementation="fused"`` and the inputs are not supported.
    """
    del labels, sparse, options  # every label layout and option is supported
    if implementation == "tf":
        return False
    reason = _unsupported(y_pred)
    if reason is not None:
        if implementation == "fused":
            raise ValueError(f"implementation='fused' cannot be used: {reason}. Use "
                             f"implementation='tf' or 'auto'.")
        _warn_once(reason, f"tfversky: {reason}; using the pure TensorFlow sums.")
        return False
    if implementation == "fused":
        _loader.load()
    else:
        try:
            _loader.load()
        except FusedOpUnavailableError as error:
            _warn_once("missing", f"{error}\nUsing the pure TensorFlow sums "
                                  f"(implementation='auto').")
            return False
    if in_xla_context():
        reason = xla_unavailable_reason()
        if reason is not None:
            if implementation == "fused" or tf.config.list_physical_devices("GPU"):
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
    if not info.get("cuda") and tf.config.list_physical_devices("GPU"):
        return (f"{info['path']} was built without CUDA and a GPU is visible. Rebuild it with "
                f"CUDA ({_loader.REBUILD_COMMAND}).")
    return None


def confusion_sums(labels, y_pred, *, sparse, from_logits, activation, ignore_index):
    """TP, FP, FN per sample and class from the fused op: three (batch, classes) tensors.

    Same contract as ``losses.pure_confusion_sums``: float32 sums (float64 for float64
    y_pred), differentiable w.r.t. y_pred (not the labels).

    Args:
        labels: Standardised labels (``_checks.standardize_labels``): class ids
            (B, *spatial), any integer dtype (uint8, int32, int64 are read directly, others
            cast), or one-hot/soft targets (B, *spatial, C).
        y_pred: (B, *spatial, C) probabilities or logits, float16/bfloat16/float32/float64.
        sparse: Whether ``labels`` are class ids.
        from_logits: Whether to apply ``activation`` ("softmax" or "sigmoid") in the op.
        ignore_index: Class-id value whose voxels are left out, or None.

    Raises:
        FusedOpUnavailableError: the op library cannot be loaded.
    """
    library = _loader.load()
    y_pred = tf.convert_to_tensor(y_pred)
    labels = tf.convert_to_tensor(labels)
    sum_dtype = tf.float64 if y_pred.dtype == tf.float64 else tf.float32
    if not sparse:
        labels = tf.cast(labels, sum_dtype)
    elif labels.dtype not in (tf.uint8, tf.int32, tf.int64):
        labels = tf.cast(labels, tf.int64 if labels.dtype in (tf.uint32, tf.uint64) else tf.int32)
    tp, fp, fn = library.tfversky_fused_tversky_sums(
        y_pred, labels, Tsum=sum_dtype, from_logits=bool(from_logits), activation=activation,
        has_ignore_index=ignore_index is not None,
        ignore_index=0 if ignore_index is None else int(ignore_index))
    return tp, fp, fn


@tf.RegisterGradient(_OP_TYPE)
def _sums_gradient(op, grad_tp, grad_fp, grad_fn):
    """dL/dy_pred from dL/dTP, dL/dFP, dL/dFN, by the fused gradient op; none for labels."""
    y_pred, labels = op.inputs
    upstream = [tf.zeros_like(op.outputs[0]) if g is None else g
                for g in (grad_tp, grad_fp, grad_fn)]
    attrs = {name: op.get_attr(name)
             for name in ("from_logits", "activation", "has_ignore_index", "ignore_index")}
    grad = _loader.load().tfversky_fused_tversky_sums_grad(y_pred, labels, *upstream, **attrs)
    return [grad, None]


tf.no_gradient("Tfversky>FusedTverskySumsGrad")
