"""The fused C++/CUDA Tversky op: activation and confusion sums in one pass.

``tversky_loss(..., implementation=...)`` reaches this module through one dispatch point
(``losses._confusion_sums``): the fused op replaces only the heavy part, the per-(sample,
class) sums TP, FP, FN over the volume, with the softmax/sigmoid fused in and sparse labels
read directly (no one-hot tensor). The Tversky index, focal exponent, class selection and
batch pooling stay in ``losses.loss_from_sums`` for both implementations.

Forward: one pass reads y_pred and the labels and writes the (batch, classes) sums. Backward
(``FusedTverskySumsGrad``, registered as the op's gradient): one pass reads them again and
writes dL/dy_pred, from dL/dTP, dL/dFP, dL/dFN given by TensorFlow's autodiff of
``loss_from_sums``. That is the closed form of DESIGN.md section 2 (the paper's Eq. 5
without its stray factor 2), chained through the softmax or sigmoid.

``implementation="auto"`` uses the op when its library loads, the class count is supported
(1 to 64) and the code is not being compiled by XLA; otherwise the pure TensorFlow sums,
with one warning if the library is missing. ``"fused"`` raises instead of falling back,
except inside XLA (``jit_compile=True``, Keras's default on GPUs), which cannot compile
custom ops: there both use the pure sums.

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
           "is_available", "should_use"]

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

    XLA cannot compile custom ops, so the fused loss uses the pure sums there. This wraps
    a private TensorFlow API (checked on TensorFlow 2.21); a test pins its behaviour.

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
    if in_xla_context():
        if implementation == "fused":
            _warn_once("xla", "implementation='fused' inside an XLA-compiled function "
                              "(jit_compile=True): XLA cannot compile custom ops, so the pure "
                              "TensorFlow sums are used there. Compile with jit_compile=False "
                              "to run the fused op.")
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
        return True
    try:
        _loader.load()
    except FusedOpUnavailableError as error:
        _warn_once("missing", f"{error}\nUsing the pure TensorFlow sums (implementation='auto').")
        return False
    return True


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
