"""Figures people would rather look at than read: PR curves and FLAIR overlays (PNG files).

matplotlib runs headless (Agg); nothing here opens a window.
"""

from __future__ import annotations

import pathlib

import numpy as np

from tfversky._extras import require
from tfversky._files import atomic_path


def _pyplot():
    matplotlib = require("matplotlib")

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_pr_curves(curves: dict, path, title: str = "Precision-recall") -> pathlib.Path:
    """Writes precision-recall curves to a PNG, one line per entry, APR in the legend.

    Args:
        curves: ``{label: (precision, recall, apr)}``, e.g. from
            ``Evaluator.precision_recall_curve()`` and ``Evaluator.result()["apr"]``.
        path: Output PNG path, or a binary file object.
        title: Figure title. Defaults to "Precision-recall".

    Returns:
        The path written.

    Example:

    >>> import tempfile, numpy as np
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "pr.png"
    >>> plot_pr_curves({"a=0.3, b=0.7": (np.array([1.0, 0.5]), np.array([0.5, 1.0]), 0.75)}, out).exists()
    True
    """
    return plot_pr_panels({title: curves}, path)


def plot_pr_panels(panels: dict, path) -> pathlib.Path:
    """Side-by-side PR-curve panels (the paper's Fig. 2): ``{panel title: curves}``.

    ``curves`` is as in ``plot_pr_curves``. Returns the path written.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 5), dpi=100,
                             squeeze=False)
    for ax, (title, curves) in zip(axes[0], panels.items()):
        for label, (precision, recall, apr) in curves.items():
            # A step curve from recall 0: the points are where recall changes.
            recall = np.concatenate([[0.0], np.asarray(recall, float)])
            precision = np.concatenate([[precision[0] if len(precision) else 1.0],
                                        np.asarray(precision, float)])
            ax.step(recall, precision, where="post", label=f"{label} (APR {apr:.3f})")
        ax.set(xlabel="Recall (sensitivity)", ylabel="Precision", xlim=(0, 1), ylim=(0, 1.02),
               title=title)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path):
    """Writes the figure as PNG to a path (parents created) or a binary file object
    (e.g. ``io.BytesIO``, for TensorBoard image summaries); returns ``path``."""
    plt = _pyplot()
    if hasattr(path, "write"):
        fig.savefig(path, format="png")
    else:
        path = pathlib.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as partial:
            fig.savefig(partial)
    plt.close(fig)
    return path


def lesion_slices(label: np.ndarray, count: int = 3) -> list[int]:
    """Axial slice indices (last axis) through the most lesion voxels, in order.

    Falls back to evenly spaced central slices when the volume has no lesion.
    """
    per_slice = np.asarray(label).reshape(-1, label.shape[-1]).sum(0)
    if per_slice.sum() == 0:
        depth = label.shape[-1]
        return [int(i) for i in np.linspace(depth * 0.3, depth * 0.7, count)]
    return sorted(int(i) for i in np.argsort(per_slice)[::-1][:count])


def plot_overlay(flair: np.ndarray, truth: np.ndarray, prediction: np.ndarray, path,
                 slices=None, title: str = "") -> pathlib.Path:
    """FLAIR slices with the true (green) and predicted (red) lesion outlines, to a PNG.

    Args:
        flair: (D, H, W) FLAIR intensities.
        truth: (D, H, W) binary lesion mask.
        prediction: (D, H, W) binary predicted mask.
        path: Output PNG path, or a binary file object (e.g. ``io.BytesIO``).
        slices: Indices along the last axis. Defaults to the 3 slices with the most lesion.
        title: Figure title. Defaults to "".

    Returns:
        The path written.
    """
    plt = _pyplot()
    if not flair.shape == truth.shape == prediction.shape:
        raise ValueError(f"Shape mismatch: flair {flair.shape}, truth {truth.shape}, "
                         f"prediction {prediction.shape} must be the same (D, H, W) grid.")
    slices = lesion_slices(truth) if slices is None else list(slices)
    fig, axes = plt.subplots(1, len(slices), figsize=(3.2 * len(slices), 3.6), dpi=100,
                             squeeze=False)
    low, high = np.percentile(flair[flair != 0], (1, 99.5)) if np.any(flair) else (0, 1)
    # Normalised scans are 0 outside the brain, mid-grey on this scale: show it black.
    cmap = plt.get_cmap("gray").with_extremes(bad="black")
    for ax, k in zip(axes[0], slices):
        # Transposed so the first array axis runs left-right, as radiologists view axial slices.
        ax.imshow(np.ma.masked_equal(flair[..., k], 0).T, cmap=cmap, vmin=low, vmax=high,
                  origin="lower")
        for mask, colour in ((truth, "lime"), (prediction, "red")):
            if np.any(mask[..., k]):
                ax.contour(mask[..., k].T.astype(float), levels=[0.5], colors=colour,
                           linewidths=0.8, origin="lower")
        ax.set_title(f"slice {k}", fontsize=9)
        ax.axis("off")
    fig.suptitle(f"{title}  (green: truth, red: prediction)".strip(), fontsize=9)
    fig.tight_layout()
    return _save(fig, path)
