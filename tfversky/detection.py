"""Lesion detection as the MSSEG challenges score it: the rule of Anima's
``animaSegPerfAnalyzer`` (Inria-Empenn/Anima-Public, ``SegPerfCAnalyzer::getDetectionMarks``),
written here from its source.

1. Lesions are the 6-connected components (face neighbours: ITK's
   ``ConnectedComponentImageFilter`` with ``FullyConnected`` off) of each mask; components
   of ``min_lesion_mm3`` (3 mm^3) or less are dropped first, in both masks (the tool keeps
   ``floor(min / voxel volume) + 1`` voxels and more: strictly larger). Dropped voxels are
   background from then on.
2. A reference lesion R is detected when
   (a) more than ``alpha`` (0.1) of R is covered by predicted lesions, and
   (b) walking the predicted lesions that overlap R from the largest overlap down, until
       they hold at least ``gamma`` (0.65) of R's covered voxels, none of them lies more
       than ``beta`` (0.7) outside the reference lesions (its voxels in no reference
       lesion, over its size).
3. A predicted lesion counts as a true positive by the same test with the masks swapped.
4. lesion sensitivity = detected reference lesions / reference lesions, lesion precision =
   true-positive predicted lesions / predicted lesions, lesion F1 their harmonic mean.

The thresholds are the command line's defaults (``-x 0.1 -y 0.7 -z 0.65 -v 3``); the
analyser class's own defaults (0.05, 0.5, 0.5) apply only when no command line sets them.
Where ``docs/metrics.md`` notes the paper and the code differ, this follows the code.

Empty masks (after dropping small lesions) follow MetricsReloaded: no reference lesion, the
lesion sensitivity is NaN; no predicted lesion, the lesion precision is 0 if there are
reference lesions (as Anima) and NaN if not; the F1 is 1 when both have none and 0 when
exactly one has none. For a scan without reference lesions the score that counts is the
false-positive lesion count and volume (MSSEG-2): ``lesions_false_positive`` and
``volume_false_positive_mm3`` (Anima's ``computeEmptyGroundTruthMeasures``).
"""

from __future__ import annotations

import math

import numpy as np

from tfversky import surface
from tfversky._extras import require

# The animaSegPerfAnalyzer command line's defaults.
MIN_LESION_MM3 = 3.0
ALPHA, BETA, GAMMA = 0.1, 0.7, 0.65
DETECTION_KEYS = ("lesion_sensitivity", "lesion_precision", "lesion_f1", "lesions_reference",
                  "lesions_predicted", "lesions_reference_detected",
                  "lesions_predicted_detected", "lesions_false_positive",
                  "volume_false_positive_mm3")
# The counts behind the rates, in ``detection_rates``'s order: what pooling sums over scans.
COUNT_KEYS = ("lesions_reference", "lesions_reference_detected", "lesions_predicted",
              "lesions_predicted_detected")


def challenge_min_voxels(min_lesion_mm3: float, voxel_volume_mm3: float) -> int:
    """The fewest voxels a lesion keeps: strictly more than ``min_lesion_mm3`` (Anima's rule).

    Example:

    >>> challenge_min_voxels(3.0, 1.0), challenge_min_voxels(3.0, 0.5 * 0.5 * 3.0)
    (4, 5)
    """
    return math.floor(min_lesion_mm3 / voxel_volume_mm3) + 1


def lesions(mask, spacing_mm, min_lesion_mm3: float = MIN_LESION_MM3):
    """``(ids, sizes)``: 6-connected lesions of more than ``min_lesion_mm3`` mm^3.

    ``ids`` labels them 1..n in scan order (0 background, dropped lesions included);
    ``sizes[k]`` is lesion k's voxel count (``sizes[0]`` unused).

    Example:

    >>> mask = np.zeros((6, 6, 6), bool); mask[0, 0, :3] = True; mask[3:5, 3:5, 3:5] = True
    >>> ids, sizes = lesions(mask, (1, 1, 1))
    >>> int(ids.max()), sizes[1:].tolist()
    (1, [8])
    """
    ndimage = require("scipy.ndimage")

    sizes_mm = surface.checked_spacing(spacing_mm)
    if not (np.isfinite(min_lesion_mm3) and min_lesion_mm3 >= 0):
        raise ValueError(f"Invalid value for argument `min_lesion_mm3`: expected a volume >= 0 "
                         f"in mm^3. Received: min_lesion_mm3={min_lesion_mm3!r}")
    ids, count = ndimage.label(np.asarray(mask, bool), ndimage.generate_binary_structure(3, 1))
    sizes = np.bincount(ids.ravel(), minlength=count + 1)
    keep = sizes >= challenge_min_voxels(min_lesion_mm3, float(np.prod(sizes_mm)))
    keep[0] = False
    remap = np.zeros(count + 1, ids.dtype)
    remap[keep] = np.arange(1, keep.sum() + 1)
    return remap[ids], np.concatenate([[0], sizes[keep]])


def _detected(overlaps, sizes, other_sizes, other_inside, alpha, beta, gamma):
    """Which lesions of one side pass the test of step 2 (module docstring).

    ``overlaps[i]`` maps lesion i to {other lesion j: shared voxels}; ``other_inside[j]``
    is how many voxels of other lesion j lie in some lesion of this side.
    """
    found = np.zeros(len(sizes), bool)
    for i in range(1, len(sizes)):
        covered = sum(overlaps[i].values())
        if not covered / sizes[i] > alpha:
            continue
        # Largest overlap first; equal overlaps in label order (Anima leaves ties to std::sort).
        walk = sorted(overlaps[i].items(), key=lambda item: (-item[1], item[0]))
        weight, ok = 0.0, True
        for j, shared in walk:
            if weight >= gamma:
                break
            if (other_sizes[j] - other_inside[j]) / other_sizes[j] > beta:
                ok = False
                break
            weight += shared / covered  # summed as the tool sums it, in float64
        found[i] = ok
    return found


def challenge_detection(reference, prediction, spacing_mm, *,
                        min_lesion_mm3: float = MIN_LESION_MM3, alpha: float = ALPHA,
                        beta: float = BETA, gamma: float = GAMMA):
    """The MSSEG challenges' lesion detection on one scan (module docstring).

    Args:
        reference: 3D bool mask (the truth).
        prediction: 3D bool mask on the same grid.
        spacing_mm: The voxel size along the three array axes, mm.
        min_lesion_mm3: Lesions of this volume or less are dropped first. Defaults to 3.0.
        alpha: Fraction of a lesion that must be covered. Defaults to 0.1.
        beta: Largest fraction of an overlapping lesion outside the other side's lesions.
            Defaults to 0.7.
        gamma: Share of the covered voxels whose lesions are tested against ``beta``.
            Defaults to 0.65.

    Returns:
        ``(scores, lesions)``. ``scores`` has ``DETECTION_KEYS``; ``lesions`` is a table
        of the kept lesions, reference then predicted, as NumPy columns (a noisy prediction
        has tens of thousands): ``side`` ("reference" or "predicted"), ``lesion`` (1..n per
        side), ``voxels``, ``volume_mm3``, ``centroid_voxel`` ((n, 3) mean voxel index) and
        ``detected`` (reference: detected; predicted: a true positive).

    Raises:
        ValueError: masks of different shapes, bad spacing, thresholds outside (0, 1].

    Example:

    >>> ref = np.zeros((12, 12, 12), bool); ref[1:4, 1:4, 1:4] = True; ref[7:10, 7:10, 7:10] = True
    >>> pred = np.zeros_like(ref); pred[1:4, 1:4, 1:3] = True; pred[7, 0:3, 0:3] = True
    >>> scores, lesions = challenge_detection(ref, pred, (1, 1, 1))
    >>> scores["lesion_sensitivity"], scores["lesion_precision"], scores["lesions_false_positive"]
    (0.5, 0.5, 1)
    >>> lesions["side"].tolist(), lesions["detected"].tolist()
    (['reference', 'reference', 'predicted', 'predicted'], [True, False, True, False])
    """
    for name, value in (("alpha", alpha), ("beta", beta), ("gamma", gamma)):
        if not 0 < value <= 1:
            raise ValueError(f"Invalid value for argument `{name}`: expected 0 < {name} <= 1 "
                             f"(the analyser's own bound). Received: {name}={value!r}")
    reference, prediction = surface._same_grid(reference, prediction)
    voxel_mm3 = float(np.prod(surface.checked_spacing(spacing_mm)))
    ref_ids, ref_sizes = lesions(reference, spacing_mm, min_lesion_mm3)
    pred_ids, pred_sizes = lesions(prediction, spacing_mm, min_lesion_mm3)
    both = (ref_ids > 0) & (pred_ids > 0)
    pairs, shared = np.unique(np.stack([ref_ids[both], pred_ids[both]]), axis=1,
                              return_counts=True)
    ref_overlaps = [{} for _ in ref_sizes]
    pred_overlaps = [{} for _ in pred_sizes]
    for (i, j), count in zip(pairs.T.tolist(), shared.tolist()):
        ref_overlaps[i][j] = count
        pred_overlaps[j][i] = count
    ref_inside = np.array([sum(o.values()) for o in ref_overlaps])   # in some predicted lesion
    pred_inside = np.array([sum(o.values()) for o in pred_overlaps])  # in some reference lesion
    ref_found = _detected(ref_overlaps, ref_sizes, pred_sizes, pred_inside, alpha, beta, gamma)
    pred_found = _detected(pred_overlaps, pred_sizes, ref_sizes, ref_inside, alpha, beta, gamma)
    false_positive = ~pred_found[1:]
    scores = {**detection_rates(len(ref_sizes) - 1, int(ref_found.sum()),
                                len(pred_sizes) - 1, int(pred_found.sum())),
              "lesions_false_positive": int(false_positive.sum()),
              "volume_false_positive_mm3": float(pred_sizes[1:][false_positive].sum() * voxel_mm3)}
    sides = [_lesion_columns("reference", ref_ids, ref_sizes, ref_found, voxel_mm3),
             _lesion_columns("predicted", pred_ids, pred_sizes, pred_found, voxel_mm3)]
    return scores, {key: np.concatenate([side[key] for side in sides]) for key in sides[0]}


def detection_rates(lesions_reference: int, lesions_reference_detected: int,
                    lesions_predicted: int, lesions_predicted_detected: int) -> dict:
    """Lesion sensitivity, precision and F1 from lesion counts (of a scan, or summed over
    scans to pool them), with the empty-mask values of the module docstring, and the counts.

    Example:

    >>> detection_rates(4, 3, 5, 4)["lesion_f1"], detection_rates(0, 0, 0, 0)["lesion_f1"]
    (0.7741935483870969, 1.0)
    """
    n_ref, n_pred = lesions_reference, lesions_predicted
    sensitivity = lesions_reference_detected / n_ref if n_ref else math.nan
    precision = lesions_predicted_detected / n_pred if n_pred else (0.0 if n_ref else math.nan)
    if not (n_ref or n_pred):
        f1 = 1.0
    elif not (n_ref and n_pred) or sensitivity + precision == 0:
        f1 = 0.0
    else:
        f1 = 2 * sensitivity * precision / (sensitivity + precision)
    return {"lesion_sensitivity": sensitivity, "lesion_precision": precision, "lesion_f1": f1,
            "lesions_reference": n_ref, "lesions_predicted": n_pred,
            "lesions_reference_detected": lesions_reference_detected,
            "lesions_predicted_detected": lesions_predicted_detected}


def _lesion_columns(side, ids, sizes, found, voxel_mm3):
    count = len(sizes) - 1
    return {"side": np.full(count, side), "lesion": np.arange(1, count + 1),
            "voxels": sizes[1:], "volume_mm3": sizes[1:] * voxel_mm3,
            "centroid_voxel": lesion_centroids(ids, sizes), "detected": found[1:]}


def lesion_centroids(ids, sizes) -> np.ndarray:
    """(n, 3) mean voxel index of lesions 1..n of a label map (``sizes[k]``: lesion k's
    voxel count, ``sizes[0]`` unused), in one pass over the lesion voxels, not the volume.

    Example:

    >>> ids = np.zeros((4, 4, 4), int); ids[0, 0, :2] = 1; ids[3, 3, 3] = 2
    >>> lesion_centroids(ids, np.array([0, 2, 1])).tolist()
    [[0.0, 0.0, 0.5], [3.0, 3.0, 3.0]]
    """
    inside = np.nonzero(ids)
    labels = ids[inside]
    centroids = np.stack([np.bincount(labels, weights=axis, minlength=len(sizes))
                          for axis in inside], axis=1) / np.maximum(sizes, 1)[:, None]
    return centroids[1:]


def to_world(voxels, affine) -> np.ndarray:
    """(n, 3) voxel coordinates (e.g. ``lesion_centroids``) in world mm: ``affine`` applied.

    Example:

    >>> to_world(np.array([[1.0, 2.0, 3.0]]), np.diag([2.0, 1.0, 0.5, 1.0])).tolist()
    [[2.0, 2.0, 1.5]]
    """
    affine = np.asarray(affine, float)
    return np.asarray(voxels, float).reshape(-1, 3) @ affine[:3, :3].T + affine[:3, 3]
