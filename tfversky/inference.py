"""Whole-volume inference by sliding windows.

``predict_volume`` runs a segmentation network on a scan of any size: it pads the volume to
at least one patch, slides patches over it with the given overlap, weights every patch's
class probabilities by a Gaussian centred on the patch (voxels near a patch border see less
context, so they count less), and divides by the summed weights. Memory is the volume, the
batch of patches and two accumulators the size of the volume, whatever the number of windows.
"""

from __future__ import annotations

import numpy as np

from tfversky import preprocessing
from tfversky._extras import require

DEFAULT_PATCH_SIZE = 128

_ACTIVATIONS = ("softmax", "sigmoid")
# Below this fraction of its peak the Gaussian weight is floored, so a voxel covered only by
# patch corners still has a well-conditioned weight sum.
_MIN_WEIGHT = 1e-3


def _as_triple(value, name: str) -> tuple[int, int, int]:
    triple = (value,) * 3 if np.isscalar(value) else tuple(value)
    if len(triple) != 3 or not all(isinstance(v, (int, np.integer)) and v > 0 for v in triple):
        raise ValueError(f"Invalid value for argument `{name}`: expected a positive int or three "
                         f"of them (D, H, W). Received: {name}={value!r}")
    return tuple(int(v) for v in triple)


def _layers(model):
    """Every layer of ``model``, descending into nested models."""
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _layers(layer)


def _size_multiples(model) -> tuple[int, int, int]:
    """Per axis, the product of the strides of the model's downsampling layers: patch sizes
    must be multiples of it. Exact for a U-Net's single contracting path (2**(depth-1) for
    ``tfversky.models.unet3d``); stricter than necessary for branched networks."""
    import keras

    multiples = np.ones(3, int)
    for layer in _layers(model):
        if isinstance(layer, (keras.layers.MaxPooling3D, keras.layers.AveragePooling3D,
                              keras.layers.Conv3D)):
            multiples *= np.asarray(layer.strides, int)
    return tuple(int(m) for m in multiples)


def _patch_shape(model, volume_shape, patch_size) -> tuple[int, int, int]:
    """Each axis: the model's static size if it has one; otherwise the requested size
    (default ``DEFAULT_PATCH_SIZE``), no larger than the volume rounded up to a valid size."""
    from tfversky.models import nearest_valid_sizes

    static = tuple(model.inputs[0].shape[1:4])
    requested = _as_triple(DEFAULT_PATCH_SIZE if patch_size is None else patch_size, "patch_size")
    patch = []
    for axis, (fixed, size, want, multiple) in enumerate(
            zip(static, volume_shape, requested, _size_multiples(model))):
        if fixed is not None:
            if patch_size is not None and want != fixed:
                raise ValueError(
                    f"Invalid value for argument `patch_size`: the model takes a fixed input "
                    f"size {tuple(static)}, so patch_size must match it. Received: "
                    f"patch_size={patch_size!r}. Pass patch_size=None, or rebuild the model "
                    f"with input_shape=(None, None, None, channels).")
            patch.append(fixed)
            continue
        if want % multiple:
            valid = " or ".join(map(str, nearest_valid_sizes(want, multiple)))
            raise ValueError(
                f"Invalid value for argument `patch_size`: {want} (axis {axis}) is not a "
                f"multiple of {multiple}, the model's total downsampling. Nearest valid sizes: "
                f"{valid}. Received: patch_size={patch_size!r}")
        patch.append(min(want, -(-size // multiple) * multiple))
    return tuple(patch)


def _window_starts(size: int, patch: int, step: int) -> list[int]:
    starts = list(range(0, size - patch + 1, step))
    if starts[-1] != size - patch:
        starts.append(size - patch)  # the last window ends flush with the volume
    return starts


def gaussian_weights(patch_shape, sigma_scale: float = 0.125) -> np.ndarray:
    """Blending weights of one patch: a Gaussian with sigma = ``sigma_scale`` x patch size per
    axis, peak 1, floored at 1e-3.

    Example:

    >>> w = gaussian_weights((4, 4, 4))
    >>> w.shape, float(w.max()) == 1.0, float(w.min()) >= 1e-3
    ((4, 4, 4), True, True)
    """
    axes = []
    for size in patch_shape:
        centre, sigma = (size - 1) / 2, max(sigma_scale * size, 1e-6)
        axes.append(np.exp(-0.5 * ((np.arange(size) - centre) / sigma) ** 2))
    weights = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    weights /= weights.max()
    return np.maximum(weights, _MIN_WEIGHT).astype(np.float32)


def _to_probabilities(output: np.ndarray, from_logits: bool, activation: str) -> np.ndarray:
    if from_logits:
        special = require("scipy.special")

        if activation == "softmax":
            return special.softmax(output, axis=-1)
        return special.expit(output)
    if not np.isfinite(output).all():
        raise ValueError("The model's output contains NaN or Inf: check the model (e.g. float16 "
                         "overflow) and that the input is normalised like the training data.")
    low, high = float(output.min()), float(output.max())
    if low < -1e-3 or high > 1 + 1e-3:
        raise ValueError(
            f"The model's output lies in [{low:.3g}, {high:.3g}], so it is not probabilities. "
            f"If the model outputs logits (e.g. unet3d(final_activation=None)), pass "
            f"from_logits=True (command line: --from-logits).")
    return output


def predict_volume(model, volume, patch_size=None, overlap: float = 0.5, batch_size: int = 1,
                   *, from_logits: bool = False, activation: str = "softmax",
                   sigma_scale: float = 0.125, progress: bool = True) -> np.ndarray:
    """Class probabilities of a whole volume, (D, H, W, M) -> (D, H, W, C), by sliding windows.

    The volume is padded with 0 (the background of skull-stripped, normalised scans) to at
    least one patch per axis; patches start every ``patch * (1 - overlap)`` voxels, the last
    one flush with the volume's end; each patch's probabilities are weighted by
    ``gaussian_weights`` and the weighted sum divided by the summed weights, then cropped back
    to (D, H, W). With softmax, every voxel's probabilities still sum to 1 (a convex
    combination of distributions). Memory: ``batch_size`` patches, the (D, H, W, C)
    probabilities and a (D, H, W) weight sum, all float32, besides the volume itself (copied
    only to float32 and, where an axis is shorter than the patch, padded).

    Args:
        model: A Keras model mapping (B, d, h, w, M) to (B, d, h, w, C), e.g.
            ``tfversky.models.unet3d``.
        volume: (D, H, W, M) array, channels as in training (T1, T2, FLAIR), normalised
            like the training data (``tfversky.preprocessing.normalize_intensity``).
        patch_size: int or (d, h, w). Sizes must be multiples of the model's total
            downsampling (2**(depth-1) for unet3d); an axis larger than the volume shrinks to
            the volume's size rounded up to such a multiple; a model with a static input size
            dictates it. Defaults to None: the model's static size, else 128.
        overlap: Fraction of a patch shared with the next one, in [0, 1). 0.5 processes each
            voxel about 8 times in 3D; 0 is fastest and shows seams. Defaults to 0.5.
        batch_size: Patches per model call. Defaults to 1.
        from_logits: Whether the model outputs logits; ``activation`` is then applied
            before blending. Defaults to False (the output must be probabilities).
        activation: ``"softmax"`` or ``"sigmoid"``, used with ``from_logits=True``.
            Defaults to ``"softmax"``.
        sigma_scale: Gaussian sigma as a fraction of the patch size. Defaults to 0.125.
        progress: Show a tqdm progress bar over the patches (on stderr). Defaults to True.

    Returns:
        float32 array (D, H, W, C) of class probabilities.

    Raises:
        ValueError: for a volume that is not 4D, holds NaN/Inf or has the wrong channel count;
            an invalid option or patch size; a model whose output is not probabilities
            (without ``from_logits``) or not of its input's spatial size.

    Example:

    >>> import numpy as np
    >>> from tfversky.models import unet3d
    >>> model = unet3d(base_filters=2, depth=2)
    >>> probs = predict_volume(model, np.zeros((9, 10, 11, 3)), patch_size=8, progress=False)
    >>> probs.shape, bool(np.allclose(probs.sum(-1), 1, atol=1e-5))
    ((9, 10, 11, 2), True)
    """
    tqdm = require("tqdm.auto").tqdm

    volume = preprocessing.check_image(np.asarray(volume, dtype=np.float32), "volume")
    channels = model.inputs[0].shape[-1]
    if channels is not None and volume.shape[-1] != channels:
        raise ValueError(
            f"The model takes {channels} channel(s) but `volume` has {volume.shape[-1]}: "
            f"volume.shape={volume.shape}. Stack the modalities the model was trained on.")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"Invalid value for argument `overlap`: expected a fraction in [0, 1). "
                         f"Received: overlap={overlap!r}")
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"Invalid value for argument `batch_size`: expected an int >= 1. "
                         f"Received: batch_size={batch_size!r}")
    if activation not in _ACTIVATIONS:
        raise ValueError(f"Invalid value for argument `activation`: expected one of "
                         f"{_ACTIVATIONS}. Received: activation={activation!r}")
    if not sigma_scale > 0:
        raise ValueError(f"Invalid value for argument `sigma_scale`: expected a number > 0. "
                         f"Received: sigma_scale={sigma_scale!r}")

    spatial = volume.shape[:3]
    patch = _patch_shape(model, spatial, patch_size)
    padding = [(0, max(p - s, 0)) for p, s in zip(patch, spatial)]
    if any(after for _, after in padding):
        volume = np.pad(volume, padding + [(0, 0)])
    padded = volume.shape[:3]
    starts = [_window_starts(n, p, max(1, int(p * (1 - overlap))))
              for n, p in zip(padded, patch)]
    corners = [(z, y, x) for z in starts[0] for y in starts[1] for x in starts[2]]
    weights = gaussian_weights(patch, sigma_scale)

    weight_sum = np.zeros(padded, np.float32)
    accumulated = None  # (D, H, W, C): C is known after the first batch
    batch_size = min(batch_size, len(corners))
    batch = np.zeros((batch_size, *patch, volume.shape[-1]), np.float32)
    with tqdm(total=len(corners), desc="predict_volume", unit="patch", disable=not progress,
              leave=False) as bar:
        for first in range(0, len(corners), batch_size):
            chunk = corners[first:first + batch_size]
            for i, (z, y, x) in enumerate(chunk):
                batch[i] = volume[z:z + patch[0], y:y + patch[1], x:x + patch[2]]
            # A short last batch keeps the full (zero-filled) shape: one traced function.
            batch[len(chunk):] = 0
            output = model.predict_on_batch(batch)
            if not isinstance(output, np.ndarray) or output.shape[1:4] != patch:
                raise ValueError(
                    f"The model must return one (B, d, h, w, C) tensor of its input's spatial "
                    f"size; for input {batch.shape} it returned "
                    f"{getattr(output, 'shape', type(output).__name__)}.")
            probs = _to_probabilities(np.asarray(output[:len(chunk)], np.float32),
                                      from_logits, activation)
            if accumulated is None:
                accumulated = np.zeros((*padded, probs.shape[-1]), np.float32)
            for (z, y, x), prob in zip(chunk, probs):
                window = np.s_[z:z + patch[0], y:y + patch[1], x:x + patch[2]]
                accumulated[window] += prob * weights[..., None]
                weight_sum[window] += weights
            bar.update(len(chunk))
    accumulated /= weight_sum[..., None]
    return np.ascontiguousarray(accumulated[:spatial[0], :spatial[1], :spatial[2]])
