"""The fused sums on the TensorFlow backend: the op library (csrc/ops) and its gradient.

``Tfversky>FusedTverskySums`` writes the sums; its registered gradient is the fused
``Tfversky>FusedTverskySumsGrad``. Inside XLA both lower to custom calls of the same kernels
(csrc/xla, loaded by ``_loader.load_xla``). Reached through ``tfversky.fused``.
"""

from __future__ import annotations

import tensorflow as tf

from tfversky import _loader

_OP_TYPE = "Tfversky>FusedTverskySums"


def load() -> dict:
    """Loads the op library once; its build info. Raises FusedOpUnavailableError."""
    _loader.load()
    return _loader.build_info()


def unsupported(y_pred) -> str | None:
    """Nothing: the op runs on the CPU and, built with CUDA, on the GPU (see _loader)."""
    del y_pred
    return None


def confusion_sums(labels, y_pred, *, sparse, from_logits, activation, ignore_index):
    """``tfversky.fused.confusion_sums`` on TensorFlow: tf.Tensor sums, the op's gradient."""
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
