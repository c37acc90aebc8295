"""tfversky.detection: each part of the MSSEG challenges' rule by hand, the empty scans, and
random masks against a line-by-line transcription of Anima's overlap-table loops."""

import math

import numpy as np
import pytest
from scipy import ndimage

from tfversky import detection


def _box(shape, *slices):
    mask = np.zeros(shape, bool)
    for s in slices:
        mask[s] = True
    return mask


S = np.s_
ISO = (1.0, 1.0, 1.0)


def test_lesions_of_three_mm3_or_less_are_dropped_first():
    # 1 mm voxels: 3 voxels (3 mm^3) dropped, 4 kept; 0.5 x 0.5 x 3 mm voxels (0.75 mm^3):
    # 4 voxels (3 mm^3) dropped, 5 kept.
    mask = _box((12, 12, 12), S[0, 0, 0:3], S[4, 4, 0:4], S[8, 8, 0:5])
    _, sizes = detection.lesions(mask, ISO)
    assert sizes[1:].tolist() == [4, 5]
    _, sizes = detection.lesions(mask, (0.5, 0.5, 3.0))
    assert sizes[1:].tolist() == [5]
    # A dropped predicted lesion cannot detect anything, a dropped reference lesion is not
    # counted as missed.
    reference = _box((12, 12, 12), S[0, 0, 0:3], S[4, 4, 0:4])
    scores, lesions = detection.challenge_detection(reference, reference, ISO)
    assert (scores["lesions_reference"], scores["lesion_sensitivity"]) == (1, 1.0)
    assert list(zip(lesions["side"].tolist(), lesions["voxels"].tolist())) == [
        ("reference", 4), ("predicted", 4)]


def test_lesions_are_six_connected():
    diagonal = _box((6, 6, 6), S[0:2, 0:2, 0:2], S[2:4, 2:4, 2:4])  # touching at a corner
    _, sizes = detection.lesions(diagonal, ISO)
    assert sizes[1:].tolist() == [8, 8]


@pytest.mark.parametrize("covered, detected", [(2, False), (3, True)])
def test_alpha_more_than_a_tenth_must_be_covered(covered, detected):
    reference = _box((24, 24, 8), S[0:20, 0:1, 0:1])  # 20 voxels: 2 = 10%, 3 = 15%
    prediction = _box((24, 24, 8), S[0:covered, 0:1, 0:2])  # half inside the lesion
    scores, _ = detection.challenge_detection(reference, prediction, ISO)
    assert scores["lesions_reference_detected"] == int(detected)
    # The other way round, the predicted lesion is half inside the reference lesion, but
    # that lesion lies 85-90% outside the prediction (> beta): not a true positive.
    assert scores["lesions_predicted_detected"] == 0


@pytest.mark.parametrize("outside, detected", [(9, True), (10, False)])
def test_beta_an_overlapping_lesion_may_lie_at_most_70_percent_outside(outside, detected):
    reference = _box((20, 4, 4), S[0:4, 0, 0])
    prediction = _box((20, 4, 4), S[0:4 + outside, 0, 0])  # 9/13 or 10/14 outside
    scores, lesions = detection.challenge_detection(reference, prediction, ISO)
    assert scores["lesion_sensitivity"] == float(detected)
    # The predicted lesion itself: 4/13 > alpha inside, and the reference lesion it overlaps
    # lies wholly inside it: a true positive either way.
    assert scores["lesion_precision"] == 1.0
    assert lesions["detected"].tolist() == [detected, True]


def test_gamma_only_the_largest_overlaps_up_to_65_percent_are_checked():
    # A reference lesion of 21 voxels, 20 covered: 14 by a clean lesion, 6 by a leaking one
    # (81% outside), a gap between them. 14/20 = 70% >= gamma: the leak is never tested.
    reference = _box((40, 6, 6), S[0:21, 0, 0])
    clean = _box((40, 6, 6), S[0:14, 0, 0:2])  # half outside: 50% <= beta
    leak = _box((40, 6, 6), S[15:21, 0, 0], S[15:40, 2, 0], S[15, 1, 0])
    scores, _ = detection.challenge_detection(reference, clean | leak, ISO)
    assert scores["lesions_predicted"] == 2 and scores["lesion_sensitivity"] == 1.0
    # Swap the shares: the leaking lesion now holds the largest overlap and fails beta.
    clean = _box((40, 6, 6), S[0:6, 0, 0:2])
    leak = _box((40, 6, 6), S[7:21, 0, 0], S[7:40, 2, 0], S[7, 1, 0], S[20:40, 3, 0],
                S[20:40, 4, 0], S[20:40, 5, 0])
    scores, _ = detection.challenge_detection(reference, clean | leak, ISO)
    assert scores["lesions_predicted"] == 2 and scores["lesion_sensitivity"] == 0.0


def test_scores_by_hand_and_false_positive_volume():
    shape = (20, 20, 20)
    reference = _box(shape, S[1:4, 1:4, 1:4], S[8:11, 8:11, 8:11], S[14:17, 1:4, 1:4])
    prediction = _box(shape, S[1:4, 1:4, 1:4], S[8:11, 8:11, 9:12], S[1:3, 15:18, 15:18])
    scores, _ = detection.challenge_detection(reference, prediction, (1.0, 1.0, 2.0))
    assert scores["lesion_sensitivity"] == pytest.approx(2 / 3)
    assert scores["lesion_precision"] == pytest.approx(2 / 3)
    assert scores["lesion_f1"] == pytest.approx(2 / 3)
    assert scores["lesions_false_positive"] == 1
    assert scores["volume_false_positive_mm3"] == 18 * 2.0


@pytest.mark.parametrize("has_reference, has_prediction, expected", [
    (False, False, (math.nan, math.nan, 1.0, 0, 0.0)),
    (False, True, (math.nan, 0.0, 0.0, 1, 8.0)),
    (True, False, (0.0, 0.0, 0.0, 0, 0.0)),
])
def test_empty_scans(has_reference, has_prediction, expected):
    lesion = _box((8, 8, 8), S[2:4, 2:4, 2:4])
    empty = np.zeros_like(lesion)
    scores, _ = detection.challenge_detection(lesion if has_reference else empty,
                                              lesion if has_prediction else empty, ISO)
    got = tuple(scores[k] for k in ("lesion_sensitivity", "lesion_precision", "lesion_f1",
                                    "lesions_false_positive", "volume_false_positive_mm3"))
    np.testing.assert_equal(got, expected)


def test_the_lesion_table_has_voxel_centroids():
    reference = _box((10, 10, 10), S[2:4, 2:4, 2:6])
    _, lesions = detection.challenge_detection(reference, np.zeros_like(reference), (1, 1, 0.5))
    assert {k: v.tolist() for k, v in lesions.items()} == {
        "side": ["reference"], "lesion": [1], "voxels": [16], "volume_mm3": [8.0],
        "centroid_voxel": [[2.5, 2.5, 3.5]], "detected": [False]}


@pytest.mark.parametrize("name", ["alpha", "beta", "gamma"])
def test_thresholds_outside_the_analysers_bounds_are_refused(name):
    mask = np.ones((3, 3, 3), bool)
    with pytest.raises(ValueError, match=f"`{name}`"):
        detection.challenge_detection(mask, mask, ISO, **{name: 0.0})


# --- A transcription of animaSegPerfCAnalyzer's loops (getOverlapTab, getTruePositiveLesions,
# falsePositiveRatioTester), dense table and all, to check the sparse rewrite against.


def _anima_table(reference, prediction, spacing, min_mm3=3.0):
    structure = ndimage.generate_binary_structure(3, 1)
    min_voxels = math.floor(min_mm3 / float(np.prod(spacing))) + 1
    labelled = []
    for mask in (reference, prediction):
        ids, n = ndimage.label(mask, structure)
        sizes = np.bincount(ids.ravel(), minlength=n + 1)
        kept = [k for k in range(1, n + 1) if sizes[k] >= min_voxels]
        relabel = np.zeros(n + 1, int)
        relabel[kept] = np.arange(1, len(kept) + 1)
        labelled.append((relabel[ids], len(kept) + 1))
    (ref_ids, n_ref), (test_ids, n_test) = labelled
    table = np.zeros((n_ref, n_test), int)
    np.add.at(table, (ref_ids.ravel(), test_ids.ravel()), 1)
    return table


def _anima_true_positives(table, alpha=0.1, beta=0.7, gamma=0.65):
    n_ref, n_test = table.shape
    column_sum = table.sum(0)
    row_tp = table[:, 1:].sum(1)
    found = 0
    for i in range(1, n_ref):
        if not row_tp[i] / (row_tp[i] + table[i, 0]) > alpha:
            continue
        order = sorted(range(1, n_test), key=lambda l: (-table[i, l], l))
        weight, k, leaves = 0.0, 0, False
        while weight < gamma and k < n_test - 1 and not leaves:
            l = order[k]
            leaves = table[0, l] / column_sum[l] > beta
            if not leaves:
                weight += table[i, l] / row_tp[i]
            k += 1
        found += not leaves
    return found


@pytest.mark.parametrize("spacing", [ISO, (0.5, 0.5, 3.0)])
@pytest.mark.parametrize("seed", range(5))
def test_agrees_with_a_transcription_of_animas_loops(seed, spacing, ellipsoids):
    rng = np.random.default_rng(seed)
    shape = (32, 28, 24)
    reference = ellipsoids(rng, shape, int(rng.integers(8, 20)), (0.7, 4.0))
    prediction = np.roll(reference, tuple(rng.integers(-2, 3, 3)), axis=(0, 1, 2))
    prediction = (prediction & (rng.random(shape) > 0.15)) | ellipsoids(rng, shape, 8, (0.7, 3.0))
    scores, _ = detection.challenge_detection(reference, prediction, spacing)
    table = _anima_table(reference, prediction, spacing)
    assert scores["lesions_reference"] == table.shape[0] - 1
    assert scores["lesions_predicted"] == table.shape[1] - 1
    assert scores["lesions_reference_detected"] == _anima_true_positives(table)
    assert scores["lesions_predicted_detected"] == _anima_true_positives(table.T)
    assert 0 < scores["lesion_sensitivity"] < 1 or 0 < scores["lesion_precision"] < 1
