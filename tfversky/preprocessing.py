"""Intensity normalisation shared by training data (tfds_ms) and inference (predict).

One home, so a scan given to ``python -m tfversky predict`` is normalised exactly like the
volumes the network was trained on.
"""

from __future__ import annotations

import numpy as np

MODALITIES = ("t1", "t2", "flair")


def brain_mask(image: np.ndarray) -> np.ndarray:
    """Voxels where any modality is non-zero: (D, H, W, M) -> (D, H, W) bool.

    The public MS datasets' preprocessed scans are skull-stripped with a zero background,
    and the synthetic phantom keeps that convention.
    """
    return np.any(image != 0, axis=-1)


def normalize_intensity(image: np.ndarray, mask: np.ndarray | None = None,
                        clip_percentiles=(0.5, 99.5)) -> np.ndarray:
    """Per-modality z-score inside the brain; the background stays 0.

    Each channel is clipped to its ``clip_percentiles`` inside the mask (bright artefacts
    and the bias field's tails), then shifted and scaled to mean 0, std 1 inside the mask.

    Args:
        image: (D, H, W, M) intensities, one channel per modality (T1, T2, FLAIR).
        mask: (D, H, W) brain mask. Defaults to ``brain_mask(image)``.
        clip_percentiles: Lower and upper percentile to clip to. Defaults to (0.5, 99.5).

    Returns:
        float32 array of the same shape.

    Raises:
        ValueError: if the image is not 4D, holds NaN/Inf, or the mask is empty.

    Example:

    >>> img = np.zeros((4, 4, 4, 1)); img[1:3, 1:3, 1:3, 0] = [[[1, 2], [3, 4]], [[5, 6], [7, 8]]]
    >>> out = normalize_intensity(img, clip_percentiles=(0, 100))
    >>> round(float(out[1:3, 1:3, 1:3].mean()), 6), float(out[0, 0, 0, 0])
    (0.0, 0.0)
    """
    image = np.asarray(image)
    if image.ndim != 4:
        raise ValueError(
            f"Invalid shape for argument `image`: expected (D, H, W, modalities). "
            f"Received: image.shape={image.shape}")
    if not np.isfinite(image).all():
        raise ValueError("`image` contains NaN or Inf values: fix or mask them before "
                         "normalising (e.g. np.nan_to_num).")
    mask = brain_mask(image) if mask is None else np.asarray(mask, bool)
    if mask.shape != image.shape[:-1]:
        raise ValueError(f"`mask` shape {mask.shape} does not match image shape {image.shape[:-1]}")
    if not mask.any():
        raise ValueError("The brain mask is empty (every voxel is 0): the volume holds no "
                         "image data to normalise.")
    out = np.zeros(image.shape, np.float32)
    for channel in range(image.shape[-1]):
        inside = image[..., channel][mask].astype(np.float64)
        low, high = np.percentile(inside, clip_percentiles)
        inside = np.clip(inside, low, high)
        std = inside.std()
        out[..., channel][mask] = (inside - inside.mean()) / (std if std > 0 else 1.0)
    return out
