"""The paper's 3D U-Net (Salehi et al. 2017, section 2.1, after Auto-Net).

Contracting path: per level two padded 3x3x3 convolutions + ReLU, then 2x2x2 max pooling
with stride 2, the number of features doubled after each pooling. Expanding path: a 2x2x2
transposed convolution with stride 2, concatenation with the contracting path's features of
the same level, two 3x3x3 convolutions + ReLU. A 1x1x1 convolution maps to one channel per
class, followed by the softmax (or nothing, for losses that take logits).

Sizes (depth = number of resolution levels, ``depth - 1`` poolings), from
``benchmarks/bench_model.py``; memory is the estimated training memory of one sample:

* default, for a 2-core CPU: depth 4, 8 base filters, 351 k parameters, 0.05 GiB for a
  48^3 patch; a batch of two 48^3 patches trains in about 0.15-0.3 s.
* the paper's whole 128x224x256 volume on a GPU: depth 5 (``PAPER_DEPTH``), 16 base filters
  (``PAPER_BASE_FILTERS``), 5.65 M parameters, about 6.2 GiB per sample in float32 and
  3.1 GiB under mixed_float16: one sample per step on a 12 GB GPU.

``docs/model.md`` has the measurements.
"""

from __future__ import annotations

import keras

from tfversky import arguments
# The size rules are the patch sizes' (tfversky.arguments), public here as before.
from tfversky.arguments import nearest_valid_sizes, size_multiple

_NORMALIZATIONS = (None, "batch", "group", "instance")
_FINAL_ACTIVATIONS = ("softmax", "sigmoid", None)

# Chosen by measurement on a 2-core CPU (docs/model.md): depth 4 / 8 filters trains a batch
# of two 48^3 patches in a fraction of a second. The fourth level costs little (it has 1/512
# of the voxels) and roughly doubles the receptive field (about 47 -> 103 voxels).
DEFAULT_BASE_FILTERS = 8
DEFAULT_DEPTH = 4
# What fits the paper's 128x224x256 volume, one sample per GPU (see the module docstring).
PAPER_BASE_FILTERS = 16
PAPER_DEPTH = 5


def _check_options(input_shape, num_classes, base_filters, depth, normalization, norm_groups,
                   dropout, final_activation):
    """Raises ValueError naming the argument, the value and the fix."""
    if len(input_shape) != 4:
        raise ValueError(
            f"Invalid value for argument `input_shape`: expected (D, H, W, channels), e.g. "
            f"(None, None, None, 3) for T1, T2, FLAIR. Received: input_shape={input_shape!r}")
    if not isinstance(input_shape[-1], int) or input_shape[-1] < 1:
        raise ValueError(
            f"Invalid value for argument `input_shape`: the channel count (last entry) must be a "
            f"positive int, e.g. 3 for T1, T2, FLAIR. Received: input_shape={input_shape!r}")
    for name, value in (("num_classes", num_classes), ("base_filters", base_filters),
                        ("depth", depth)):
        arguments.positive_int(value, name)
    if final_activation not in _FINAL_ACTIVATIONS:
        raise ValueError(
            f"Invalid value for argument `final_activation`: expected one of "
            f"{_FINAL_ACTIVATIONS} (None outputs logits, for losses with from_logits=True). "
            f"Received: final_activation={final_activation!r}")
    if final_activation == "softmax" and num_classes < 2:
        raise ValueError(
            f"`final_activation='softmax'` needs num_classes >= 2 (background and lesion). For "
            f"one lesion-probability channel use final_activation='sigmoid'. Received: "
            f"num_classes={num_classes}")
    if normalization not in _NORMALIZATIONS:
        raise ValueError(
            f"Invalid value for argument `normalization`: expected one of {_NORMALIZATIONS} "
            f"(None is the paper's network). Received: normalization={normalization!r}")
    if normalization == "group" and (not isinstance(norm_groups, int) or norm_groups < 1
                                     or base_filters % norm_groups):
        raise ValueError(
            f"`normalization='group'` splits every level's features into `norm_groups` groups, "
            f"so base_filters must be a multiple of it. Received: base_filters={base_filters}, "
            f"norm_groups={norm_groups!r}. Use a divisor of base_filters, or "
            f"normalization='instance'.")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"Invalid value for argument `dropout`: expected a rate in [0, 1). "
                         f"Received: dropout={dropout!r}")
    multiple = size_multiple(depth)
    for axis, size in enumerate(input_shape[:3]):
        if size is not None and (not isinstance(size, int) or size < 1 or size % multiple):
            valid = " or ".join(map(str, nearest_valid_sizes(max(int(size), 0), multiple)))
            raise ValueError(
                f"Invalid value for argument `input_shape`: spatial size input_shape[{axis}]="
                f"{size} is not a multiple of {multiple} = 2**(depth-1) for depth={depth} "
                f"(each of the {depth - 1} poolings halves it). Nearest valid sizes: {valid}. "
                f"Or use None to accept any valid size at call time.")


def _conv_block(x, filters, name, *, normalization, norm_groups, dropout, initializer):
    """Two padded 3x3x3 convolutions + ReLU, with optional normalisation and dropout."""
    for index in (1, 2):
        conv_name = f"{name}_conv{index}"
        if normalization is None:
            x = keras.layers.Conv3D(filters, 3, padding="same", activation="relu",
                                    kernel_initializer=initializer, name=conv_name)(x)
            continue
        # The normalisation's shift replaces the bias.
        x = keras.layers.Conv3D(filters, 3, padding="same", use_bias=False,
                                kernel_initializer=initializer, name=conv_name)(x)
        if normalization == "batch":
            x = keras.layers.BatchNormalization(name=f"{conv_name}_bn")(x)
        else:
            groups = -1 if normalization == "instance" else norm_groups  # -1: one per channel
            x = keras.layers.GroupNormalization(groups=groups, name=f"{conv_name}_norm")(x)
        x = keras.layers.ReLU(name=f"{conv_name}_relu")(x)
    if dropout:
        # Whole feature maps are dropped: neighbouring voxels are too correlated for
        # voxel-wise dropout to regularise much.
        x = keras.layers.SpatialDropout3D(dropout, name=f"{name}_dropout")(x)
    return x


def unet3d(input_shape=(None, None, None, 3), num_classes: int = 2,
           base_filters: int = DEFAULT_BASE_FILTERS, depth: int = DEFAULT_DEPTH,
           normalization: str | None = None, norm_groups: int = 8, dropout: float = 0.0,
           final_activation: str | None = "softmax", kernel_initializer="he_normal",
           name: str = "unet3d") -> keras.Model:
    """The paper's 3D U-Net: (B, D, H, W, channels) -> (B, D, H, W, num_classes).

    Level ``l`` (0 = full resolution) has ``base_filters * 2**l`` features. The output is
    float32 under a ``mixed_float16`` policy (the final activation runs in float32).

    Input-size contract: D, H and W must be multiples of ``2**(depth-1)``. Static sizes in
    ``input_shape`` are checked here. With None (any size, the default) nothing can be checked
    when the model is built: a call with a size that is not a multiple fails inside the first
    ``Concatenate`` whose inputs differ in size (a TensorFlow shape error). Patch-wise
    inference, ``tfversky.inference.predict_volume``, pads every patch to a valid size.

    Args:
        input_shape: (D, H, W, channels); spatial entries may be None. Defaults to
            ``(None, None, None, 3)`` (T1, T2, FLAIR, any size).
        num_classes: Output channels: 2 for lesion vs. background with softmax, 1 for a lesion
            map with sigmoid. Defaults to 2.
        base_filters: Features at full resolution, doubled per level. Defaults to 8 (sized
            for a 2-core CPU; ``PAPER_BASE_FILTERS`` = 16 for the paper volume on a GPU).
        depth: Number of resolution levels (``depth - 1`` poolings). Defaults to 4 (sized
            for a 2-core CPU; ``PAPER_DEPTH`` = 5 for the paper volume on a GPU).
        normalization: None (the paper), ``"batch"``, ``"group"`` or ``"instance"``, between
            each convolution and its ReLU. Defaults to None.
        norm_groups: Groups for ``normalization="group"``; must divide ``base_filters``.
            Defaults to 8.
        dropout: Rate of ``SpatialDropout3D`` after every level's two convolutions (both
            paths), 0 for none. Defaults to 0.0.
        final_activation: ``"softmax"`` (class probabilities), ``"sigmoid"`` (independent
            per-channel probabilities) or None (logits, for ``TverskyLoss(from_logits=True)``).
            Defaults to ``"softmax"``.
        kernel_initializer: Initializer of the convolutions. Defaults to ``"he_normal"``
            (suits ReLU).
        name: Model name. Defaults to ``"unet3d"``.

    Returns:
        An uncompiled ``keras.Model``.

    Raises:
        ValueError: for an invalid option, or a static spatial size that is not a multiple of
            ``2**(depth-1)`` (the message names the nearest valid sizes).

    Example:

    >>> import numpy as np
    >>> model = unet3d((16, 16, 16, 3), base_filters=2, depth=3)
    >>> probs = model.predict(np.zeros((1, 16, 16, 16, 3), "float32"), verbose=0)
    >>> probs.shape, bool(np.allclose(probs.sum(-1), 1.0, atol=1e-5))
    ((1, 16, 16, 16, 2), True)
    """
    input_shape = tuple(input_shape)
    _check_options(input_shape, num_classes, base_filters, depth, normalization, norm_groups,
                   dropout, final_activation)
    block = dict(normalization=normalization, norm_groups=norm_groups, dropout=dropout,
                 initializer=kernel_initializer)

    # TensorFlow has no float16 MaxPool3D kernel on CPU: under mixed_float16 the poolings run
    # in float32, so a model trained that way on a GPU still runs (and predicts) on a CPU.
    pool_dtype = "float32" if keras.config.dtype_policy().compute_dtype == "float16" else None

    inputs = keras.Input(input_shape, name="image")
    x = inputs
    skips = []
    for level in range(depth - 1):
        x = _conv_block(x, base_filters * 2 ** level, f"enc{level}", **block)
        skips.append(x)
        x = keras.layers.MaxPooling3D(2, strides=2, dtype=pool_dtype, name=f"pool{level}")(x)
    x = _conv_block(x, base_filters * 2 ** (depth - 1), f"bottom{depth - 1}", **block)
    for level in reversed(range(depth - 1)):
        filters = base_filters * 2 ** level
        x = keras.layers.Conv3DTranspose(filters, 2, strides=2,
                                         kernel_initializer=kernel_initializer,
                                         name=f"up{level}")(x)
        x = keras.layers.Concatenate(name=f"concat{level}")([skips[level], x])
        x = _conv_block(x, filters, f"dec{level}", **block)
    x = keras.layers.Conv3D(num_classes, 1, name="head")(x)
    # float32 even under mixed_float16: a float16 softmax/logit loses the small lesion
    # probabilities the Tversky loss and the 0.5 threshold depend on.
    outputs = keras.layers.Activation(final_activation or "linear", dtype="float32",
                                      name="probabilities" if final_activation else "logits")(x)
    return keras.Model(inputs, outputs, name=name)
