"""Input checks shared by the pure and the fused loss, so both fail the same way.

Eager tensors are checked on their values and raise ``ValueError``. Inside a ``tf.function``
the same checks become graph assertions (``tf.errors.InvalidArgumentError``) where they are
cheap: label range on the labels, NaN/Inf on the (batch, classes) sums instead of on the
volume. Under XLA TensorFlow drops assertions, so there only the static checks remain; the
same holds inside ``jax.jit`` and ``torch.compile`` (values unknown when tracing).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops


def _is_tf() -> bool:
    return keras.backend.backend() == "tensorflow"


def concrete_value(x):
    """NumPy value of an eager tensor, or None for a symbolic one (graph, XLA, jit trace)."""
    if _is_tf():
        import tensorflow as tf

        return x.numpy() if tf.executing_eagerly() and hasattr(x, "numpy") else None
    if keras.backend.backend() == "torch":
        import torch

        if torch.compiler.is_compiling():  # reading values would break torch.compile's graph
            return None
    try:
        return np.asarray(ops.convert_to_numpy(x))
    except Exception:  # a tracer of another backend: no value yet
        return None


def _symbolic_tf() -> bool:
    if not _is_tf():
        return False
    import tensorflow as tf

    return not tf.executing_eagerly()


def num_label_classes(num_channels: int) -> int:
    """Valid sparse label values are [0, n): one channel is a binary (sigmoid) map."""
    return 2 if num_channels == 1 else num_channels


def check_prediction(y_pred, *, from_logits: bool, activation: str) -> None:
    """Rank, dtype, class count, empty volumes, and NaN/Inf when the values are at hand."""
    shape = tuple(y_pred.shape)
    if len(shape) < 3:
        raise ValueError(
            f"Invalid shape for argument `y_pred`: expected (batch, *spatial, classes) with at "
            f"least one spatial dim, e.g. (B, D, H, W, C). Received: y_pred.shape={shape}")
    dtype = keras.backend.standardize_dtype(y_pred.dtype)
    if dtype not in ("float16", "bfloat16", "float32", "float64"):
        raise ValueError(
            f"Invalid dtype for argument `y_pred`: expected float16, bfloat16, float32 or "
            f"float64 probabilities or logits. Received: y_pred.dtype={dtype}")
    num_channels = shape[-1]
    if num_channels is not None and activation == "softmax" and num_channels < 2:
        raise ValueError(
            f"`y_pred` has {num_channels} channel but activation='softmax' needs >= 2 "
            f"(background and lesion). For a single-channel lesion map use "
            f"activation='sigmoid'. Received: y_pred.shape={shape}")
    if any(d == 0 for d in shape[1:-1]):
        raise ValueError(
            f"`y_pred` is an empty volume: a spatial dim is 0. Received: y_pred.shape={shape}")
    value = concrete_value(y_pred)
    if value is not None and value.size and not np.isfinite(value).all():
        bad = int(np.size(value) - np.count_nonzero(np.isfinite(value)))
        kind = "logits" if from_logits else "probabilities"
        raise ValueError(
            f"`y_pred` contains {bad} NaN or Inf value(s) among its {value.size} {kind}. The "
            f"loss would be NaN: check the network output (e.g. a diverged training step or "
            f"float16 overflow).")


def standardize_labels(y_true, y_pred, *, activation: str, ignore_index):
    """Returns ``(labels, sparse)``.

    Sparse labels come back as integer class ids of shape (B, *spatial) (their integer dtype
    kept, floats holding integers, as Keras passes them, cast to int32); dense one-hot/soft
    labels as (B, *spatial, C). Raises ValueError on shapes that match neither, and on label
    values outside [0, C) when the values are at hand (graph assertions otherwise).
    """
    true_shape, pred_shape = tuple(y_true.shape), tuple(y_pred.shape)
    num_channels = pred_shape[-1]
    integer = keras.backend.standardize_dtype(y_true.dtype).startswith(("int", "uint"))
    if len(true_shape) == len(pred_shape) - 1:
        sparse, labels = True, y_true
    elif len(true_shape) == len(pred_shape) and true_shape[-1] == 1 and (
            num_channels != 1 or integer or ignore_index is not None):
        sparse, labels = True, ops.squeeze(y_true, axis=-1)
    elif len(true_shape) == len(pred_shape) and _dims_match(true_shape[-1], num_channels):
        sparse, labels = False, y_true
    else:
        raise ValueError(
            f"Shape mismatch between `y_true` and `y_pred`: y_true.shape={true_shape}, "
            f"y_pred.shape={pred_shape}. Expected sparse class ids of shape {pred_shape[:-1]} "
            f"or {pred_shape[:-1] + (1,)}, or one-hot/soft labels of shape {pred_shape}.")
    expected = pred_shape[:-1] if sparse else pred_shape
    if not all(_dims_match(a, b) for a, b in zip(tuple(labels.shape), expected)):
        raise ValueError(
            f"Shape mismatch between `y_true` and `y_pred`: y_true.shape={true_shape} does not "
            f"match y_pred.shape={pred_shape} (batch and spatial dims must be equal).")
    if not sparse and ignore_index is not None:
        raise ValueError(
            f"`ignore_index={ignore_index}` needs sparse labels (class ids of shape "
            f"{pred_shape[:-1]}), but y_true is one-hot/soft with shape {true_shape}. Pass the "
            f"class-id map, or drop ignore_index and zero the ignored voxels' targets yourself.")
    if _symbolic_tf():
        _assert_shapes_tf(labels, y_pred, sparse)
    if sparse:
        if not integer:
            _check_integral(labels)
            labels = ops.cast(labels, "int32")
        _check_label_range(labels, num_label_classes(num_channels), ignore_index)
    else:
        _check_soft_labels(labels)
    return labels, sparse


def _dims_match(a, b) -> bool:
    return a is None or b is None or a == b


def _assert_shapes_tf(labels, y_pred, sparse):
    import tensorflow as tf

    pred_shape = tf.shape(y_pred)
    expected = pred_shape[:-1] if sparse else pred_shape
    tf.debugging.assert_equal(
        tf.shape(labels), expected,
        message="Shape mismatch between y_true and y_pred (batch and spatial dims must match)")


def _check_integral(labels):
    value = concrete_value(labels)
    if value is not None and value.size and not np.array_equal(value, np.round(value)):
        bad = value[value != np.round(value)].ravel()[:3]
        raise ValueError(
            f"Sparse labels `y_true` must hold integer class ids, found non-integer values "
            f"{bad.tolist()}. For soft labels pass shape (B, *spatial, C) matching y_pred.")


def _check_label_range(labels, num_classes: int, ignore_index):
    message = (f"`y_true` holds label values outside [0, {num_classes}). Labels must be class "
               f"ids 0..{num_classes - 1} for this y_pred; mark voxels to skip with a value "
               f"passed as `ignore_index` (e.g. 255).")
    value = concrete_value(labels)
    if value is not None:
        if ignore_index is not None:
            value = value[value != ignore_index]
        if value.size and (value.min() < 0 or value.max() >= num_classes):
            raise ValueError(f"{message} Found min={value.min()}, max={value.max()}.")
    elif _symbolic_tf():
        import tensorflow as tf

        tf.debugging.assert_equal(_any_out_of_range_tf(labels, num_classes, ignore_index), False,
                                  message=message)


def _any_out_of_range_tf(labels, num_classes: int, ignore_index):
    """Scalar bool tensor: a label outside [0, num_classes) that is not ignore_index.

    Computed in the labels' own dtype, with two reductions where possible: casting the
    volume to int64 first would cost more than the whole fused loss (25 ms on 128x224x256
    uint8 labels, against 1 ms for min and max).
    """
    import tensorflow as tf

    dtype = labels.dtype
    if ignore_index is not None and not dtype.min <= ignore_index <= dtype.max:
        ignore_index = None  # the dtype cannot hold it: no label equals it
    if ignore_index is None:
        return tf.logical_or(tf.reduce_min(labels) < 0, tf.reduce_max(labels) >= num_classes)
    outside = labels >= num_classes
    if not dtype.is_unsigned:
        outside = tf.logical_or(outside, labels < 0)
    return tf.reduce_any(tf.logical_and(outside, tf.not_equal(labels, ignore_index)))


def _check_soft_labels(labels):
    value = concrete_value(labels)
    if value is None or not value.size:
        return
    value = value.astype("float64")
    if not np.isfinite(value).all():
        raise ValueError("`y_true` contains NaN or Inf: one-hot/soft labels must lie in [0, 1].")
    if value.min() < 0 or value.max() > 1:
        raise ValueError(
            f"One-hot/soft labels `y_true` must lie in [0, 1]. Found min={value.min()}, "
            f"max={value.max()}. For class ids pass shape (B, *spatial) instead.")


def check_finite_sums(tp, fp, fn):
    """In a graph, NaN/Inf anywhere in the inputs reaches the sums: assert there, cheaply."""
    if not _symbolic_tf():
        return tp, fp, fn
    import tensorflow as tf

    message = ("y_pred (or soft y_true) contains NaN or Inf: the Tversky sums TP/FP/FN are "
               "not finite. Check the network output, e.g. for float16 overflow.")
    return tuple(tf.debugging.check_numerics(s, message) for s in (tp, fp, fn))
