"""Evaluation metrics of the paper (Eq. 6-7 and the area under the PR curve), streaming Keras
metrics for ``model.compile``, any-overlap lesion detection (LTPR/LFPR), and every score of
one scan (``case_scores``: these, the boundary distances of ``tfversky.surface``, volumes and
the MSSEG challenges' detection of ``tfversky.detection``) with a cohort's summary.

All voxel metrics are on hard labels ``y_prob >= threshold`` (the paper: 0.5) for the lesion
class, with counts in int64 (a float32 count of true negatives is wrong beyond 2^24 voxels):

    DSC         = 2 TP / (2 TP + FP + FN)
    sensitivity = TP / (TP + FN)
    precision   = TP / (TP + FP)
    specificity = TN / (TN + FP)
    F2          = 5 TP / (5 TP + 4 FN + FP)
    APR         = sum_k (R_k - R_{k-1}) P_k         (as sklearn's average_precision_score)

Undefined values follow one rule: a score whose denominator is 0 because both truth and
prediction are empty is a perfect 1.0 (DSC, F2); a rate with nothing to count
(sensitivity or APR without lesion voxels, specificity without background, precision when
both are empty) is NaN, except the precision of an empty prediction of a scan with lesions: 0
(MetricsReloaded's choice; the prediction found none of them).

APR uses a fixed histogram of the scores instead of sorting every voxel: bins are the
float32 bit patterns of min(s, 1 - s) with the mantissa cut to ``mantissa_bits`` (13 by
default: 2.1 M bins, 33 MB of int64 counts whatever the test-set size). Bins are relatively
narrow near both 0 and 1 (1 - s is exact in float32 for s >= 0.5), where saturated networks
put most voxels; scores in one bin count as tied, which moves APR by far less than 1e-4 on
realistic outputs (tests check it against scikit-learn).
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from tfversky import detection, surface
from tfversky._extras import require
from tfversky._files import atomic_path

# The paper's test metrics (Table 1's columns), in its order: the keys ``evaluate`` returns.
PAPER_METRICS = ("dsc", "sensitivity", "specificity", "f2", "apr")
COUNTS = ("tp", "fp", "fn", "tn")
_HALF_BITS = 0x3F000000  # float32 bit pattern of 0.5
_CHUNK = 1 << 22  # voxels per step when streaming a large array


# --- APR: one home for the score binning and the average precision over bins -------------


def num_score_bins(mantissa_bits: int = 13) -> int:
    """Number of histogram bins ``score_bins`` produces for a given resolution."""
    return 2 * ((_HALF_BITS >> (23 - mantissa_bits)) + 1)


def score_bins(scores, mantissa_bits: int = 13):
    """Monotone bin index of probabilities in [0, 1] (keras.ops; works on NumPy arrays too).

    Bin k holds scores whose min(s, 1 - s), in float32, shares its exponent and first
    ``mantissa_bits`` mantissa bits: a relative width of 2^-mantissa_bits of the distance to
    0 or to 1, whichever is closer.
    """
    shift = 23 - mantissa_bits
    half_bins = (_HALF_BITS >> shift) + 1
    s = ops.cast(scores, "float32")
    lower = s <= 0.5
    distance = ops.where(lower, s, 1.0 - s)
    bits = ops.right_shift(ops.view(distance, "int32"), shift)
    return ops.where(lower, bits, 2 * half_bins - 1 - bits)


def average_precision_from_histograms(positives, negatives):
    """APR from per-bin counts of lesion and non-lesion voxels (bins in ascending score).

    Scores sharing a bin are tied, exactly as sklearn treats equal scores: precision is
    taken after the whole bin and recall steps by the bin's positives. keras.ops, so the
    streaming Keras metric shares it; returns a float64 scalar tensor, NaN without positives.
    """
    positives = ops.cast(positives, "float64")
    negatives = ops.cast(negatives, "float64")
    tp_at = ops.flip(ops.cumsum(ops.flip(positives, 0)), 0)  # lesion voxels scored >= bin
    fp_at = ops.flip(ops.cumsum(ops.flip(negatives, 0)), 0)
    total = ops.sum(positives)
    precision = tp_at / ops.maximum(tp_at + fp_at, 1.0)
    value = ops.sum(positives * precision) / ops.maximum(total, 1.0)
    return ops.where(total > 0, value, math.nan)


def precision_recall_from_histograms(positives, negatives, mantissa_bits: int = 13):
    """Precision, recall and bin thresholds (descending) where recall changes.

    The threshold reported for a bin is the lowest score in it, so ``y_prob >= threshold``
    selects the voxels counted at that point of the curve.
    """
    positives = np.asarray(positives, np.int64)
    negatives = np.asarray(negatives, np.int64)
    tp_at = np.cumsum(positives[::-1])[::-1]
    fp_at = np.cumsum(negatives[::-1])[::-1]
    bins = np.flatnonzero(positives)[::-1]
    precision = tp_at[bins] / (tp_at[bins] + fp_at[bins])
    recall = tp_at[bins] / max(int(positives.sum()), 1)
    return precision, recall, _bin_lower_edges(bins, mantissa_bits)


def _bin_lower_edges(bins, mantissa_bits):
    shift = 23 - mantissa_bits
    half_bins = (_HALF_BITS >> shift) + 1
    bins = np.asarray(bins, np.int64)
    lower = bins < half_bins
    low_edge = (bins << shift).astype(np.uint32).view(np.float32)
    # Upper half: the bin's smallest score has the largest 1 - s, the next bin's lower edge.
    mirrored = ((2 * half_bins - 1 - bins + 1) << shift).astype(np.uint32).view(np.float32)
    return np.where(lower, low_edge, 1.0 - np.minimum(mirrored, 0.5)).astype(np.float64)


# --- NumPy evaluation of whole volumes / test sets -----------------------------------------


def _as_foreground(y_true, y_prob):
    y_true = np.asarray(y_true)
    y_prob = np.asarray(y_prob)
    if y_true.shape != y_prob.shape:
        hint = (" y_prob has a class axis: pass the lesion probability, e.g. y_prob[..., 1]."
                if y_prob.shape[:-1] == y_true.shape else "")
        raise ValueError(
            f"Shape mismatch: y_true.shape={y_true.shape}, y_prob.shape={y_prob.shape}. Both "
            f"must be the same voxel grid (labels and lesion probabilities).{hint}")
    if y_true.size == 0:
        raise ValueError(f"`y_true` and `y_prob` are empty (shape {y_true.shape}): nothing "
                         f"to evaluate.")
    return y_true, y_prob


class Evaluator:
    """Streaming evaluation: feed volumes one at a time, read the pooled metrics.

    Memory is fixed (the two APR histograms, 33 MB at the default resolution), whatever
    the number of volumes. ``update`` also returns the volume's own metrics.

    Args:
        threshold: Lesion if ``y_prob >= threshold``. Defaults to 0.5 (the paper).
        mantissa_bits: APR histogram resolution (see the module docstring). Defaults to 13.

    Example:

    >>> ev = Evaluator()
    >>> truth = np.zeros((8, 8, 8), np.uint8); truth[2:4, 2:4, 2:4] = 1
    >>> _ = ev.update(truth, truth * 0.9)
    >>> ev.result()["dsc"], ev.result()["apr"]
    (1.0, 1.0)
    """

    def __init__(self, threshold: float = 0.5, mantissa_bits: int = 13):
        if not 0 < threshold < 1:
            raise ValueError(f"Invalid value for argument `threshold`: expected 0 < threshold "
                             f"< 1. Received: threshold={threshold!r}")
        if not 1 <= mantissa_bits <= 23:
            raise ValueError(f"Invalid value for argument `mantissa_bits`: expected 1..23. "
                             f"Received: mantissa_bits={mantissa_bits!r}")
        self.threshold = threshold
        self.mantissa_bits = mantissa_bits
        self.counts = np.zeros(4, np.int64)  # tp, fp, fn, tn
        self.positives = np.zeros(num_score_bins(mantissa_bits), np.int64)
        self.negatives = np.zeros_like(self.positives)

    def update(self, y_true, y_prob, predicted=None) -> dict:
        """Adds one volume (or any array of voxels); returns its own metrics.

        ``predicted``: the mask the counts score, where it is not ``y_prob >= threshold``
        (e.g. small lesions dropped: ``tfversky.operating_point.lesion_mask``); the APR
        stays that of ``y_prob``. Defaults to None (``y_prob >= threshold``).
        """
        y_true, y_prob = _as_foreground(y_true, y_prob)
        if predicted is not None and np.shape(predicted) != y_true.shape:
            raise ValueError(f"Shape mismatch: predicted.shape={np.shape(predicted)}, "
                             f"y_true.shape={y_true.shape}: the mask must be on the same grid.")
        counts = np.zeros(4, np.int64)
        positives = np.zeros_like(self.positives)
        negatives = np.zeros_like(self.negatives)
        truth_flat, prob_flat = y_true.reshape(-1), y_prob.reshape(-1)
        mask_flat = None if predicted is None else np.asarray(predicted, bool).reshape(-1)
        for start in range(0, truth_flat.size, _CHUNK):
            truth = _binary_truth(truth_flat[start:start + _CHUNK])
            prob = _checked_probabilities(prob_flat[start:start + _CHUNK])
            counts += _confusion(truth, prob >= self.threshold if mask_flat is None
                                 else mask_flat[start:start + _CHUNK])
            bins = np.asarray(score_bins(prob, self.mantissa_bits))
            positives += np.bincount(bins[truth], minlength=positives.size)
            negatives += np.bincount(bins[~truth], minlength=negatives.size)
        self.counts += counts
        self.positives += positives
        self.negatives += negatives
        return {**scores_from_counts(*counts), "apr": _apr(positives, negatives)}

    def merge(self, other: "Evaluator") -> "Evaluator":
        """Adds another evaluator's volumes (same threshold and resolution); returns self."""
        if (other.threshold, other.mantissa_bits) != (self.threshold, self.mantissa_bits):
            raise ValueError(
                f"Cannot merge evaluators with different settings: threshold/mantissa_bits "
                f"{self.threshold}/{self.mantissa_bits} vs {other.threshold}/{other.mantissa_bits}")
        self.counts += other.counts
        self.positives += other.positives
        self.negatives += other.negatives
        return self

    def save(self, path) -> None:
        """Writes the counts and histograms (compressed .npz: mostly empty bins, ~100 KB)."""
        path = str(path) if str(path).endswith(".npz") else f"{path}.npz"  # as NumPy names it
        with atomic_path(path) as partial:
            np.savez_compressed(partial, threshold=self.threshold,
                                mantissa_bits=self.mantissa_bits, counts=self.counts,
                                positives=self.positives, negatives=self.negatives)

    @classmethod
    def load(cls, path) -> "Evaluator":
        """An evaluator saved with ``save``, e.g. to pool cross-validation folds."""
        with np.load(path) as saved:
            evaluator = cls(float(saved["threshold"]), int(saved["mantissa_bits"]))
            evaluator.counts[:] = saved["counts"]
            evaluator.positives[:] = saved["positives"]
            evaluator.negatives[:] = saved["negatives"]
        return evaluator

    def result(self) -> dict:
        """Pooled ``dsc``, ``sensitivity``, ``specificity``, ``f2``, ``apr`` and the counts."""
        return {**scores_from_counts(*self.counts), "apr": _apr(self.positives, self.negatives)}

    def precision_recall_curve(self):
        """Pooled (precision, recall, thresholds), thresholds descending."""
        return precision_recall_from_histograms(self.positives, self.negatives,
                                                self.mantissa_bits)


def _apr(positives, negatives) -> float:
    return float(ops.convert_to_numpy(average_precision_from_histograms(positives, negatives)))


def _binary_truth(truth):
    if truth.dtype == bool:
        return truth
    if not np.isin(truth, (0, 1)).all():
        values = np.unique(truth)
        raise ValueError(f"`y_true` must be a binary lesion mask (0/1). Found values "
                         f"{values[:6].tolist()}{'...' if values.size > 6 else ''}. For a "
                         f"class-id map pass (labels == lesion_class).")
    return truth.astype(bool)


def _checked_probabilities(prob):
    prob = prob.astype(np.float32, copy=False)
    if not np.isfinite(prob).all():
        raise ValueError("`y_prob` contains NaN or Inf: expected lesion probabilities in [0, 1].")
    if prob.size and (prob.min() < 0 or prob.max() > 1):
        raise ValueError(f"`y_prob` must hold probabilities in [0, 1]. Found min={prob.min()}, "
                         f"max={prob.max()}. Apply softmax/sigmoid to logits first.")
    return prob


def _confusion(truth, predicted):
    tp = np.count_nonzero(truth & predicted)
    fp = np.count_nonzero(predicted) - tp
    fn = np.count_nonzero(truth) - tp
    return np.array([tp, fp, fn, truth.size - tp - fp - fn], np.int64)


def scores_from_counts(tp, fp, fn, tn) -> dict:
    """DSC, sensitivity, precision, specificity and F2 from int counts (module docstring)."""
    tp, fp, fn, tn = (int(v) for v in (tp, fp, fn, tn))

    def ratio(num, den, empty):
        return num / den if den else empty

    return {
        "dsc": ratio(2 * tp, 2 * tp + fp + fn, 1.0),
        "sensitivity": ratio(tp, tp + fn, math.nan),
        # MetricsReloaded: an empty prediction of a scan with lesions has precision 0.
        "precision": ratio(tp, tp + fp, 0.0 if fn else math.nan),
        "specificity": ratio(tn, tn + fp, math.nan),
        "f2": ratio(5 * tp, 5 * tp + 4 * fn + fp, 1.0),
        "tp": tp, "fp": fp, "fn": fn, "tn": tn,
    }


def evaluate(y_true, y_prob, threshold: float = 0.5) -> dict:
    """The paper's test metrics for one volume or a whole test set.

    Args:
        y_true: Binary lesion mask of any shape (bool or 0/1).
        y_prob: Lesion probabilities, same shape (e.g. ``softmax_output[..., 1]``).
        threshold: Lesion if ``y_prob >= threshold``. Defaults to 0.5 (the paper).

    Returns:
        dict with ``dsc``, ``sensitivity``, ``specificity``, ``f2``, ``apr`` (fractions in
        [0, 1], NaN where undefined, see the module docstring) and the int counts ``tp``,
        ``fp``, ``fn``, ``tn``.

    Raises:
        ValueError: shape mismatch, empty input, labels other than 0/1, probabilities
            outside [0, 1] or NaN/Inf.

    Example:

    >>> truth = np.array([0, 0, 1, 1, 0, 1])
    >>> prob = np.array([0.1, 0.6, 0.7, 0.4, 0.2, 0.9])
    >>> m = evaluate(truth, prob)
    >>> round(m["dsc"], 4), round(m["sensitivity"], 4), round(m["apr"], 4)
    (0.6667, 0.6667, 0.9167)
    """
    evaluator = Evaluator(threshold)
    evaluator.update(y_true, y_prob)
    return evaluator.result()


def precision_recall_curve(y_true, y_prob):
    """(precision, recall, thresholds) over all voxels, for plots; thresholds descending.

    Points are where recall changes (each bin holding lesion voxels), the same points
    scikit-learn's curve has up to ties within a bin.
    """
    evaluator = Evaluator()
    evaluator.update(y_true, y_prob)
    return evaluator.precision_recall_curve()


# --- Lesion-wise detection (connected components) -----------------------------------------


def min_lesion_voxels(min_lesion_mm3: float, voxel_size_mm) -> int:
    """The fewest voxels of ``voxel_size_mm`` (3 sizes, mm) that make a lesion of at least
    ``min_lesion_mm3`` mm^3: the one conversion of a lesion size to voxels.

    Raises:
        ValueError: for a negative size or voxel sizes that are not 3 positive numbers.

    Example:

    >>> min_lesion_voxels(10, (1.0, 1.0, 1.0)), min_lesion_voxels(10, (0.9, 0.9, 3.0))
    (10, 5)
    """
    sizes = np.asarray(voxel_size_mm, float).ravel()
    if sizes.size != 3 or not np.all(np.isfinite(sizes) & (sizes > 0)):
        raise ValueError(f"Invalid value for argument `voxel_size_mm`: expected 3 positive voxel "
                         f"sizes in mm. Received: voxel_size_mm={voxel_size_mm!r}")
    if not (np.isfinite(min_lesion_mm3) and min_lesion_mm3 >= 0):
        raise ValueError(f"Invalid value for argument `min_lesion_mm3`: expected a size >= 0 in "
                         f"mm^3. Received: min_lesion_mm3={min_lesion_mm3!r}")
    # The tolerance keeps 10 mm^3 at 1 mm^3 voxels at 10 voxels despite float rounding.
    return max(1, math.ceil(min_lesion_mm3 / float(np.prod(sizes)) - 1e-9))


def label_lesions(mask, min_lesion_mm3: float, voxel_size_mm, connectivity: int = 3):
    """``(ids, count)``: the lesions (connected components, ``connectivity`` 1/2/3 = 6/18/26
    neighbours) of at least ``min_lesion_mm3`` mm^3, labelled 1..count in scan order (0 the
    background and the dropped lesions). The one labeller of a predicted mask's lesions:
    ``remove_small_lesions`` and ``tfversky predict``'s lesion report use it.

    Example:

    >>> mask = np.zeros((8, 8, 8), bool); mask[0, 0, 0] = True; mask[4:6, 4:6, 4:6] = True
    >>> ids, count = label_lesions(mask, 0, (1, 1, 1))
    >>> count, int((ids == 2).sum())
    (2, 8)
    """
    from scipy import ndimage

    structure = ndimage.generate_binary_structure(3, _checked_connectivity(connectivity))
    return _components(np.asarray(mask, bool), structure,
                       min_lesion_voxels(min_lesion_mm3, voxel_size_mm))


def remove_small_lesions(mask, min_lesion_mm3: float, voxel_size_mm, connectivity: int = 3):
    """``(mask, count)``: the lesions (connected components) of at least ``min_lesion_mm3``
    mm^3, as a bool mask, and how many there are (``label_lesions``).

    Example:

    >>> mask = np.zeros((8, 8, 8), bool); mask[0, 0, 0] = True; mask[4:6, 4:6, 4:6] = True
    >>> kept, count = remove_small_lesions(mask, 2.0, (1, 1, 1))
    >>> int(kept.sum()), count
    (8, 1)
    """
    ids, count = label_lesions(mask, min_lesion_mm3, voxel_size_mm, connectivity)
    return ids > 0, count


def _checked_connectivity(connectivity):
    if connectivity not in (1, 2, 3):
        raise ValueError(f"Invalid value for argument `connectivity`: expected 1, 2 or 3. "
                         f"Received: connectivity={connectivity!r}")
    return connectivity


def lesion_metrics(y_true, y_pred, connectivity: int = 3, min_lesion_size: int = 1, *,
                   min_lesion_mm3: float | None = None, voxel_size_mm=None) -> dict:
    """Any-overlap lesion detection on one 3D volume (LTPR/LFPR, as ``lesion-metrics``).

    Lesions are 3D connected components (``connectivity`` 1: faces, 2: +edges, 3: +corners,
    i.e. 6/18/26 neighbours) of at least ``min_lesion_size`` voxels, or, given
    ``min_lesion_mm3`` and ``voxel_size_mm``, of at least that many mm^3 (the unit of
    ``tfversky predict --min-lesion-size``; ``min_lesion_voxels`` converts). A true lesion
    is detected if any predicted lesion voxel overlaps it; a predicted lesion is a false
    positive if it overlaps no true lesion voxel.

    Returns:
        dict with ``ltpr`` (detected / true lesions), ``lfpr`` (false-positive / predicted
        lesions), ``any_overlap_f1`` (2 LTPR (1 - LFPR) / (LTPR + 1 - LFPR); not the
        challenges' ``lesion_f1`` of ``tfversky.detection``) and the counts
        ``true_lesions``, ``detected``, ``predicted_lesions``, ``false_positive_lesions``,
        which sum over volumes (``pool_lesion_counts``). Rates without lesions to count are NaN.

    Example:

    >>> truth = np.zeros((9, 9, 9), bool); truth[1:3, 1:3, 1:3] = True; truth[6:8, 6:8, 6:8] = True
    >>> pred = np.zeros_like(truth); pred[1:3, 1:3, 1:3] = True; pred[4, 0, 0] = True
    >>> m = lesion_metrics(truth, pred)
    >>> m["ltpr"], m["lfpr"], m["any_overlap_f1"]
    (0.5, 0.5, 0.5)
    """
    ndimage = require("scipy.ndimage")

    y_true, y_pred = _as_foreground(y_true, y_pred)
    if y_true.ndim != 3:
        raise ValueError(f"lesion_metrics needs one 3D volume; received shape {y_true.shape}. "
                         f"Call it per volume and pool the counts with pool_lesion_counts.")
    if min_lesion_mm3 is not None:
        if voxel_size_mm is None or min_lesion_size != 1:
            raise ValueError("Invalid arguments: `min_lesion_mm3` needs `voxel_size_mm` (the "
                             "volume's voxel sizes in mm) and replaces `min_lesion_size` (voxels); "
                             f"received voxel_size_mm={voxel_size_mm!r}, "
                             f"min_lesion_size={min_lesion_size!r}")
        min_lesion_size = min_lesion_voxels(min_lesion_mm3, voxel_size_mm)
    structure = ndimage.generate_binary_structure(3, _checked_connectivity(connectivity))
    truth = _binary_truth(y_true)
    pred = _binary_truth(y_pred)
    true_ids, n_true = _components(truth, structure, min_lesion_size)
    pred_ids, n_pred = _components(pred, structure, min_lesion_size)
    detected = np.unique(true_ids[(true_ids > 0) & pred]).size
    hits = np.unique(pred_ids[(pred_ids > 0) & truth]).size
    return pool_lesion_counts([{"true_lesions": n_true, "detected": detected,
                                "predicted_lesions": n_pred,
                                "false_positive_lesions": n_pred - hits}])


def _components(mask, structure, min_size):
    ndimage = require("scipy.ndimage")

    ids, count = ndimage.label(mask, structure=structure)
    if min_size > 1 and count:
        sizes = np.bincount(ids.ravel(), minlength=count + 1)
        keep = sizes >= min_size
        keep[0] = False
        remap = np.zeros(count + 1, np.int64)
        remap[keep] = np.arange(1, keep.sum() + 1)
        ids, count = remap[ids], int(keep.sum())
    return ids, count


_LESION_COUNTS = ("true_lesions", "detected", "predicted_lesions", "false_positive_lesions")


def pool_lesion_counts(per_volume: list[dict]) -> dict:
    """Sums lesion counts over volumes and recomputes LTPR, LFPR and their F1."""
    total = {k: int(sum(v[k] for v in per_volume)) for k in _LESION_COUNTS}
    ltpr = total["detected"] / total["true_lesions"] if total["true_lesions"] else math.nan
    lfpr = (total["false_positive_lesions"] / total["predicted_lesions"]
            if total["predicted_lesions"] else math.nan)
    precision = 1 - lfpr
    f1 = (2 * ltpr * precision / (ltpr + precision)
          if not (math.isnan(ltpr) or math.isnan(lfpr)) and ltpr + precision > 0 else math.nan)
    return {"ltpr": ltpr, "lfpr": lfpr, "any_overlap_f1": f1, **total}


# --- One scan's every score, and a cohort's summary ----------------------------------------

# The per-scan scores, named as the columns of ``tfversky evaluate``'s cases.csv (in order,
# after ``case``). ``lesion_*`` are the challenges' detection (``tfversky.detection``),
# ``ltpr``/``lfpr`` the any-overlap rule of ``lesion_metrics``.
CASE_COLUMNS = ("dsc", "sensitivity", "precision", "specificity", "f2", "hd95_mm", "assd_mm",
                "nsd", "volume_reference_ml", "volume_predicted_ml", "volume_difference_ml",
                "lesion_sensitivity", "lesion_precision", "lesion_f1", "lesions_reference",
                "lesions_predicted", "ltpr", "lfpr")
# Also in every row: what a summary pools (the counts) and the rest of the detail.
CASE_EXTRAS = ("volume_absolute_difference_ml", "lesions_reference_detected",
               "lesions_predicted_detected", "lesions_false_positive",
               "volume_false_positive_mm3", "any_overlap_f1",
               *(f"any_overlap_{k}" for k in _LESION_COUNTS), *COUNTS)


def case_scores(reference, prediction, spacing_mm, *, tolerance_mm: float = 1.0):
    """Every score of one scan, on its own grid: overlap, boundary, volume and detection.

    Args:
        reference: 3D binary lesion mask (bool or 0/1), the truth.
        prediction: 3D binary lesion mask on the same grid.
        spacing_mm: The voxel size along the three array axes, mm (anisotropic is fine).
        tolerance_mm: The surface Dice's tolerance, mm. Defaults to 1.0.

    Returns:
        ``(scores, lesions)``: ``scores`` holds ``CASE_COLUMNS`` and ``CASE_EXTRAS``
        (floats, NaN where undefined: see ``docs/metrics.md``); ``lesions`` is
        ``tfversky.detection.challenge_detection``'s table of lesions (NumPy columns),
        centroids as voxel indices of the given arrays.

    Raises:
        ValueError: masks of different shapes or not 3D, values other than 0/1, bad spacing.

    Example:

    >>> ref = np.zeros((10, 10, 10), bool); ref[2:6, 2:6, 2:6] = True
    >>> scores, lesions = case_scores(ref, np.roll(ref, 1, axis=0), (1.0, 1.0, 2.0))
    >>> scores["dsc"], scores["volume_reference_ml"], scores["lesion_f1"], len(lesions["side"])
    (0.75, 0.128, 1.0, 2)
    """
    reference, prediction = _as_foreground(reference, prediction)
    reference, prediction = _binary_truth(reference), _binary_truth(prediction)
    voxel_ml = float(np.prod(surface.checked_spacing(spacing_mm))) / 1000
    overlap = scores_from_counts(*_confusion(reference.ravel(), prediction.ravel()))
    # Lesions and surfaces lie in the box around both masks: a brain costs what its lesions do.
    box = surface.union_box(reference, prediction) or (slice(0, 1),) * 3
    found, lesions = detection.challenge_detection(reference[box], prediction[box], spacing_mm)
    lesions["centroid_voxel"] += [s.start for s in box]
    any_overlap = lesion_metrics(reference[box], prediction[box])
    volumes = {"volume_reference_ml": int(reference.sum()) * voxel_ml,
               "volume_predicted_ml": int(prediction.sum()) * voxel_ml}
    difference = volumes["volume_predicted_ml"] - volumes["volume_reference_ml"]
    scores = {**{k: overlap[k] for k in ("dsc", "sensitivity", "precision", "specificity", "f2")},
              **surface.boundary_scores(reference[box], prediction[box], spacing_mm,
                                        tolerance_mm),
              **volumes, "volume_difference_ml": difference,
              **found, "ltpr": any_overlap["ltpr"], "lfpr": any_overlap["lfpr"],
              "volume_absolute_difference_ml": abs(difference),
              "any_overlap_f1": any_overlap["any_overlap_f1"],
              **{f"any_overlap_{k}": any_overlap[k] for k in _LESION_COUNTS},
              **{k: overlap[k] for k in COUNTS}}
    return scores, lesions


def summarize_cases(cases: list[dict]) -> dict:
    """A cohort's summary of ``case_scores`` rows: means, medians, pooled values and the
    Pearson correlation of reference and predicted lesion loads.

    Means and medians are over the cases where a score is defined (``defined`` counts
    them; e.g. HD95 is NaN when exactly one mask is empty). Pooled values come from the
    counts summed over cases: voxel overlap from TP/FP/FN/TN, the challenge detection and
    the any-overlap LTPR/LFPR from summed lesion counts.

    Returns:
        ``{"cases", "mean", "median", "defined", "pooled", "volume_correlation"}``;
        ``volume_correlation`` is ``{"pearson_r", "cases"}`` (r NaN for fewer than 2 cases
        or a constant load).

    Example:

    >>> ref = np.zeros((10, 10, 10), bool); ref[2:6, 2:6, 2:6] = True
    >>> rows = [case_scores(ref, np.roll(ref, k, axis=0), (1, 1, 1))[0] for k in (0, 1)]
    >>> summary = summarize_cases(rows)
    >>> summary["mean"]["dsc"], round(summary["pooled"]["dsc"], 4)
    (0.875, 0.875)
    """
    if not cases:
        raise ValueError("Invalid value for argument `cases`: no cases to summarize.")
    names = [k for k, v in cases[0].items() if isinstance(v, (int, float)) and k != "case"]
    table = {k: np.array([float(case[k]) for case in cases]) for k in names}
    defined = {k: int(np.isfinite(v).sum()) for k, v in table.items()}
    mean = {k: float(np.mean(v[np.isfinite(v)])) if defined[k] else math.nan
            for k, v in table.items()}
    median = {k: float(np.median(v[np.isfinite(v)])) if defined[k] else math.nan
              for k, v in table.items()}
    total = {k: int(sum(case[k] for case in cases))
             for k in COUNTS + detection.COUNT_KEYS
             + tuple(f"any_overlap_{k}" for k in _LESION_COUNTS)}
    voxels = scores_from_counts(*(total[k] for k in COUNTS))
    any_overlap = pool_lesion_counts([{k: total[f"any_overlap_{k}"] for k in _LESION_COUNTS}])
    pooled = {**{k: voxels[k] for k in ("dsc", "sensitivity", "precision", "specificity", "f2")},
              **detection.detection_rates(*(total[k] for k in detection.COUNT_KEYS)),
              "ltpr": any_overlap["ltpr"], "lfpr": any_overlap["lfpr"],
              "volume_reference_ml": float(table["volume_reference_ml"].sum()),
              "volume_predicted_ml": float(table["volume_predicted_ml"].sum()),
              **{k: total[k] for k in COUNTS}}
    return {"cases": len(cases), "mean": mean, "median": median, "defined": defined,
            "pooled": pooled,
            "volume_correlation": {"pearson_r": pearson(table["volume_reference_ml"],
                                                        table["volume_predicted_ml"]),
                                   "cases": len(cases)}}


def pearson(x, y) -> float:
    """Pearson's correlation of two samples; NaN for fewer than 2 values or a constant one.

    Example:

    >>> pearson([1, 2, 3], [2, 4, 7]), pearson([1, 1], [2, 3])
    (0.9933992677987828, nan)
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    x, y = x - x.mean(), y - y.mean()
    return float((x * y).sum() / np.sqrt((x * x).sum() * (y * y).sum()))


# --- Streaming Keras metrics ----------------------------------------------------------------


def _foreground(y_true, y_pred, class_id):
    """Binary truth and lesion probability from sparse/one-hot labels and (..., C) output."""
    num_channels = y_pred.shape[-1]
    if class_id is None:
        class_id = 1 if num_channels and num_channels > 1 else 0
    prob = ops.cast(y_pred[..., class_id], "float32")
    if len(y_true.shape) == len(y_pred.shape) and y_true.shape[-1] == num_channels and (
            num_channels != 1):
        truth = y_true[..., class_id] > 0.5
    else:
        if len(y_true.shape) == len(y_pred.shape):
            y_true = ops.squeeze(y_true, -1)
        truth = ops.equal(ops.cast(y_true, "int32"), 1 if num_channels == 1 else class_id)
    return truth, prob


def _config_checks(threshold, class_id):
    if not 0 < threshold < 1:
        raise ValueError(f"Invalid value for argument `threshold`: expected 0 < threshold < 1. "
                         f"Received: threshold={threshold!r}")
    if class_id is not None and (not isinstance(class_id, int) or class_id < 0):
        raise ValueError(f"Invalid value for argument `class_id`: expected None or an int >= 0. "
                         f"Received: class_id={class_id!r}")


class _ConfusionMetric(keras.metrics.Metric):
    """Streams int64 TP/FP/FN/TN of the hard lesion mask (``y_pred[..., class_id] >= threshold``).

    ``y_true`` may be sparse class ids or one-hot; ``y_pred`` is (B, *spatial, C). The class
    defaults to 1 (lesion) for C >= 2 and to the single channel for C == 1.
    """

    def __init__(self, threshold=0.5, class_id=None, name=None, dtype=None):
        super().__init__(name=name, dtype=dtype)
        _config_checks(threshold, class_id)
        self.threshold, self.class_id = float(threshold), class_id
        self.counts = self.add_variable(shape=(4,), initializer="zeros", dtype="int64",
                                        name="tp_fp_fn_tn")

    def update_state(self, y_true, y_pred, sample_weight=None):
        truth, prob = _foreground(y_true, y_pred, self.class_id)
        predicted = prob >= self.threshold

        def count(mask):
            return ops.sum(ops.cast(mask, "int64"))

        tp = count(ops.logical_and(truth, predicted))
        fp = count(predicted) - tp
        fn = count(truth) - tp
        tn = ops.cast(ops.size(truth), "int64") - tp - fp - fn
        self.counts.assign_add(ops.stack([tp, fp, fn, tn]))

    def reset_state(self):
        self.counts.assign(ops.zeros((4,), "int64"))

    def _rate(self, num, den, empty):
        num, den = ops.cast(num, "float64"), ops.cast(den, "float64")
        value = ops.where(den > 0, num / ops.maximum(den, 1.0), empty)
        return ops.cast(value, self.dtype)

    def get_config(self):
        return {**super().get_config(), "threshold": self.threshold, "class_id": self.class_id}


@keras.saving.register_keras_serializable(package="tfversky")
class DiceScore(_ConfusionMetric):
    """Streaming DSC = 2 TP / (2 TP + FP + FN) on the hard lesion mask (1.0 if both empty).

    Example:

    >>> model.compile(loss=tfversky.TverskyLoss(), metrics=[tfversky.metrics.DiceScore()])  # doctest: +SKIP
    """

    def __init__(self, threshold=0.5, class_id=None, name="dsc", dtype=None):
        super().__init__(threshold, class_id, name=name, dtype=dtype)

    def result(self):
        tp, fp, fn = self.counts[0], self.counts[1], self.counts[2]
        return self._rate(2 * tp, 2 * tp + fp + fn, 1.0)


@keras.saving.register_keras_serializable(package="tfversky")
class Sensitivity(_ConfusionMetric):
    """Streaming sensitivity (recall) TP / (TP + FN) on the hard lesion mask (NaN if no lesion)."""

    def __init__(self, threshold=0.5, class_id=None, name="sensitivity", dtype=None):
        super().__init__(threshold, class_id, name=name, dtype=dtype)

    def result(self):
        return self._rate(self.counts[0], self.counts[0] + self.counts[2], math.nan)


@keras.saving.register_keras_serializable(package="tfversky")
class Specificity(_ConfusionMetric):
    """Streaming specificity TN / (TN + FP) on the hard lesion mask."""

    def __init__(self, threshold=0.5, class_id=None, name="specificity", dtype=None):
        super().__init__(threshold, class_id, name=name, dtype=dtype)

    def result(self):
        return self._rate(self.counts[3], self.counts[3] + self.counts[1], math.nan)


@keras.saving.register_keras_serializable(package="tfversky")
class FBetaScore(_ConfusionMetric):
    """Streaming F-beta = (1 + b^2) TP / ((1 + b^2) TP + b^2 FN + FP); beta=2 is the paper's F2."""

    def __init__(self, beta=2.0, threshold=0.5, class_id=None, name=None, dtype=None):
        if not beta > 0:
            raise ValueError(f"Invalid value for argument `beta`: expected > 0. "
                             f"Received: beta={beta!r}")
        super().__init__(threshold, class_id, name=name or f"f{beta:g}", dtype=dtype)
        self.beta = float(beta)

    def result(self):
        tp, fp, fn = (ops.cast(self.counts[i], "float64") for i in range(3))
        b2 = self.beta ** 2
        return self._rate((1 + b2) * tp, (1 + b2) * tp + b2 * fn + fp, 1.0)

    def get_config(self):
        return {**super().get_config(), "beta": self.beta}


@keras.saving.register_keras_serializable(package="tfversky")
class AreaUnderPRCurve(keras.metrics.Metric):
    """Streaming APR (average precision) of the lesion probability.

    The same binned computation as ``evaluate``, at a coarser default resolution
    (``mantissa_bits=8``: 66 K bins) to keep the per-step cost small; NaN before any lesion
    voxel was seen. Unlike ``keras.metrics.AUC(curve="PR")`` with 200 linear thresholds, it
    resolves the near-0 and near-1 outputs of a saturated network.
    """

    def __init__(self, mantissa_bits=8, class_id=None, name="apr", dtype=None):
        super().__init__(name=name, dtype=dtype)
        _config_checks(0.5, class_id)
        if not 1 <= mantissa_bits <= 23:
            raise ValueError(f"Invalid value for argument `mantissa_bits`: expected 1..23. "
                             f"Received: mantissa_bits={mantissa_bits!r}")
        self.mantissa_bits, self.class_id = int(mantissa_bits), class_id
        bins = num_score_bins(self.mantissa_bits)
        self.histograms = self.add_variable(shape=(2, bins), initializer="zeros", dtype="int64",
                                            name="histograms")

    def update_state(self, y_true, y_pred, sample_weight=None):
        truth, prob = _foreground(y_true, y_pred, self.class_id)
        bins = num_score_bins(self.mantissa_bits)
        index = ops.reshape(score_bins(ops.clip(prob, 0.0, 1.0), self.mantissa_bits), (-1,))
        # One bincount over [negatives | positives]: positives offset by `bins`.
        offset = ops.reshape(ops.cast(truth, "int32"), (-1,)) * bins
        counts = ops.bincount(index + offset, minlength=2 * bins)
        self.histograms.assign_add(ops.reshape(ops.cast(counts, "int64"), (2, bins)))

    def reset_state(self):
        self.histograms.assign(ops.zeros_like(self.histograms))

    def result(self):
        value = average_precision_from_histograms(self.histograms[1], self.histograms[0])
        return ops.cast(value, self.dtype)

    def get_config(self):
        return {**super().get_config(), "mantissa_bits": self.mantissa_bits,
                "class_id": self.class_id}
