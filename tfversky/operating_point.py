"""The operating point: the threshold and minimum lesion volume that turn a lesion
probability map into a mask, chosen on validation subjects and carried by the model's plan.

A network trained with the Tversky loss (alpha weighs false positives, beta false
negatives) sets the precision/recall trade-off in its probabilities; where the mask is cut
(``threshold``) and which specks are dropped (``min_lesion_mm3``) move it again. ``choose``
picks both from a small grid, on the validation subjects' probabilities on the reference
grid (what ``tfversky evaluate`` scores), to maximise one criterion:

* ``dsc`` / ``f2``: the voxel-wise Dice / F2 pooled over the validation voxels (as the
  paper's Table 1 pools its test voxels);
* ``lesion_f1``: the MSSEG challenges' lesion detection (``tfversky.detection``), its
  lesion counts pooled over the subjects.

Chosen on too little data they would fit its noise, as selecting an epoch on one
validation volume does (issue 22): with fewer validation subjects or lesions than
``tfversky.validation_rules.MIN_VALIDATION_SUBJECTS`` / ``MIN_VALIDATION_LESIONS``, the defaults
(0.5, no minimum) are kept, and the record says why. A grid point replaces the defaults only
where it beats them on validation.

``lesion_mask`` is the one place where an operating point is applied to probabilities.
"""

from __future__ import annotations

import numpy as np

from tfversky import detection, metrics
from tfversky.validation_rules import OPERATING_POINT_CRITERIA as CRITERIA, validation_shortfall

THRESHOLDS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
MIN_LESION_MM3 = (0.0, 5.0, 10.0, 20.0, 40.0)  # 10 mm^3 ~ a sphere 2.7 mm across
BASELINE = (0.5, 0.0)  # the paper's threshold, every lesion kept


def lesion_mask(probabilities, threshold: float, min_lesion_mm3: float,
                voxel_size_mm) -> np.ndarray:
    """The lesion mask of an operating point: ``probabilities >= threshold``, without the
    lesions (26-connected components) smaller than ``min_lesion_mm3``
    (``metrics.remove_small_lesions``).

    Example:

    >>> prob = np.zeros((6, 6, 6)); prob[0, 0, 0] = 0.9; prob[2:5, 2:5, 2:5] = 0.6
    >>> int(lesion_mask(prob, 0.5, 0, (1, 1, 1)).sum()), int(lesion_mask(prob, 0.5, 2,
    ...                                                                   (1, 1, 1)).sum())
    (28, 27)
    """
    mask = np.asarray(probabilities) >= threshold
    if min_lesion_mm3 > 0:
        mask = metrics.remove_small_lesions(mask, min_lesion_mm3, voxel_size_mm)[0]
    return mask


def check_criterion(criterion) -> str:
    """``criterion`` if it is one of ``CRITERIA``, else a ValueError naming them."""
    if criterion not in CRITERIA:
        raise ValueError(f"Invalid value for argument `criterion`: expected one of "
                         f"{', '.join(CRITERIA)}. Received: criterion={criterion!r}")
    return criterion


def check_grid(thresholds, min_lesion_mm3) -> tuple[tuple, tuple]:
    """The grid as sorted tuples; a ValueError for a threshold outside (0, 1), a negative
    volume, or an empty axis."""
    thresholds = tuple(sorted({float(t) for t in thresholds}))
    volumes = tuple(sorted({float(v) for v in min_lesion_mm3}))
    if not thresholds or not all(0 < t < 1 for t in thresholds):
        raise ValueError(f"Invalid value for argument `thresholds`: expected thresholds in "
                         f"(0, 1). Received: thresholds={list(thresholds)!r}")
    if not volumes or not all(np.isfinite(v) and v >= 0 for v in volumes):
        raise ValueError(f"Invalid value for argument `min_lesion_mm3`: expected volumes "
                         f">= 0 (mm^3). Received: min_lesion_mm3={list(volumes)!r}")
    return thresholds, volumes


def count_lesions(label, voxel_size_mm) -> int:
    """Reference lesions of a label volume as the challenges count them (6-connected,
    larger than 3 mm^3: ``detection.lesions``)."""
    truth = np.asarray(label) == 1
    return len(detection.lesions(truth, voxel_size_mm)[1]) - 1


def _counts(truth, mask, voxel_size_mm, criterion) -> np.ndarray:
    """What the criterion pools over subjects: voxel tp, fp, fn, or the lesion counts."""
    if criterion == "lesion_f1":
        scores = detection.challenge_detection(truth, mask, voxel_size_mm)[0]
        return np.array([scores[k] for k in detection.COUNT_KEYS], np.int64)
    tp = np.count_nonzero(truth & mask)
    return np.array([tp, np.count_nonzero(mask) - tp, np.count_nonzero(truth) - tp], np.int64)


def _score(counts, criterion) -> float:
    if criterion == "lesion_f1":
        return float(detection.detection_rates(*counts.tolist())["lesion_f1"])
    return float(metrics.scores_from_counts(*counts.tolist(), 0)[criterion])


def choose(volumes, criterion: str, voxel_size_mm, *, thresholds=THRESHOLDS,
           min_lesion_mm3=MIN_LESION_MM3, baseline=BASELINE, ignore_index=None) -> dict:
    """The operating point that maximises ``criterion`` on validation subjects.

    Every (threshold, minimum volume) of the grid is scored on the subjects pooled; the
    best replaces ``baseline`` only where it scores higher on them (of equally good points,
    the one nearest the baseline: the threshold first). With too little validation data
    (``validation_rules.validation_shortfall``) nothing is scored and the baseline is kept.

    Args:
        volumes: Validation volumes: dicts with ``probabilities`` (D, H, W) lesion
            probabilities on the reference grid, ``label`` (D, H, W) (1 = lesion) and
            ``subject``.
        criterion: One of ``CRITERIA``.
        voxel_size_mm: The grid's voxel size (3 numbers, mm).
        thresholds: Thresholds to try, in (0, 1). Defaults to ``THRESHOLDS``.
        min_lesion_mm3: Minimum lesion volumes to try, mm^3. Defaults to
            ``MIN_LESION_MM3``.
        baseline: (threshold, min_lesion_mm3) kept unless beaten. Defaults to (0.5, 0).
        ignore_index: Label value left out of the scoring. Defaults to None.

    Returns:
        ``{"threshold", "min_lesion_mm3", "operating_point"}``: the chosen pair and the
        plan's record of how (``criterion``, ``value`` and ``baseline_value`` on validation,
        ``baseline``, ``subjects``, ``lesions``, ``grid`` with every value, and ``reason``
        when the baseline was kept).

    Raises:
        ValueError: an unknown criterion, a bad grid, or no volumes.

    Example:

    >>> label = np.zeros((10, 10, 10), np.uint8); label[2:5, 2:5, 2:5] = 1
    >>> prob = np.where(label, 0.45, 0.0); prob[8, 8, 8] = 0.9  # a faint lesion, one speck
    >>> volumes = [{"probabilities": prob, "label": label, "subject": s} for s in "ab"]
    >>> chosen = choose(volumes, "dsc", (1, 1, 1), thresholds=(0.4, 0.5),
    ...                 min_lesion_mm3=(0, 2), baseline=(0.5, 0.0))
    >>> chosen["threshold"], chosen["min_lesion_mm3"], chosen["operating_point"]["reason"]
    (0.5, 0.0, 'too little validation data: 2 lesion(s) (fewer than 20)')
    """
    check_criterion(criterion)
    thresholds, volumes_mm3 = check_grid(tuple(thresholds) + (baseline[0],),
                                         tuple(min_lesion_mm3) + (baseline[1],))
    volumes = list(volumes)
    if not volumes:
        raise ValueError("Invalid value for argument `volumes`: no validation volumes.")
    subjects = len({str(v.get("subject", k)) for k, v in enumerate(volumes)})
    scored = []
    for volume in volumes:
        label = np.asarray(volume["label"])
        keep = np.ones(label.shape, bool) if ignore_index is None else label != ignore_index
        scored.append((np.asarray(volume["probabilities"]), (label == 1) & keep, keep))
    lesions = sum(count_lesions(truth, voxel_size_mm) for _, truth, _ in scored)
    record = {"criterion": criterion, "subjects": subjects, "lesions": lesions,
              "baseline": list(baseline)}
    keep_baseline = {"threshold": float(baseline[0]), "min_lesion_mm3": float(baseline[1])}
    shortfall = validation_shortfall(subjects, lesions)
    if shortfall:
        return {**keep_baseline, "operating_point": {
            **record, "value": None, "reason": f"too little validation data: {shortfall}"}}
    values = np.zeros((len(thresholds), len(volumes_mm3)))
    for i, threshold in enumerate(thresholds):
        for j, volume_mm3 in enumerate(volumes_mm3):
            counts = sum(_counts(truth, lesion_mask(prob, threshold, volume_mm3,
                                                    voxel_size_mm) & keep,
                                 voxel_size_mm, criterion) for prob, truth, keep in scored)
            values[i, j] = _score(counts, criterion)
    base = values[thresholds.index(baseline[0]), volumes_mm3.index(baseline[1])]
    # Of equally good points, the one that moves least from the baseline.
    i, j = min(zip(*np.nonzero(values == values.max())),
               key=lambda ij: (abs(thresholds[ij[0]] - baseline[0]),
                               abs(volumes_mm3[ij[1]] - baseline[1])))
    record.update(baseline_value=float(base), grid={
        "thresholds": list(thresholds), "min_lesion_mm3": list(volumes_mm3),
        "values": values.round(6).tolist()})
    if not values[i, j] > base:
        return {**keep_baseline, "operating_point": {
            **record, "value": float(base),
            "reason": f"no grid point beats the baseline on validation {criterion}"}}
    return {"threshold": thresholds[i], "min_lesion_mm3": volumes_mm3[j],
            "operating_point": {**record, "value": float(values[i, j])}}
