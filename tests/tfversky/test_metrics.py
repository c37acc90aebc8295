"""Evaluation metrics: hand counts, scikit-learn agreement, streaming, Keras metrics, lesions."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage
from sklearn.metrics import average_precision_score, confusion_matrix
from sklearn.metrics import precision_recall_curve as sk_pr_curve

from tfversky import metrics


def scores(kind, rng, n=400_000, lesion=0.01):
    truth = rng.random(n) < lesion
    if kind == "beta":
        prob = np.where(truth, rng.beta(3, 2, n), rng.beta(1, 5, n))
    elif kind == "saturated":  # a confident network: most mass within 1e-4 of 0 or 1
        prob = 1 / (1 + np.exp(-np.where(truth, rng.normal(8, 6, n), rng.normal(-10, 6, n))))
    elif kind == "ties":
        prob = np.round(np.where(truth, rng.random(n) * 0.8 + 0.2, rng.random(n) * 0.6), 2)
    else:  # binary output
        prob = (rng.random(n) < np.where(truth, 0.7, 0.002)).astype(float)
    return truth, prob.astype(np.float32)


HAND = [
    # truth, prob, expected (tp, fp, fn, tn)
    ([0, 0, 1, 1, 0, 1], [0.1, 0.6, 0.7, 0.4, 0.2, 0.9], (2, 1, 1, 2)),
    ([1, 1, 1], [0.5, 0.49, 1.0], (2, 0, 1, 0)),  # threshold 0.5 counts as lesion
    ([0, 0, 0], [0.0, 0.2, 0.3], (0, 0, 0, 3)),
]


@pytest.mark.parametrize("truth, prob, counts", HAND)
def test_hand_counts_and_formulas(truth, prob, counts):
    m = metrics.evaluate(np.array(truth), np.array(prob))
    tp, fp, fn, tn = counts
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == counts
    assert m["dsc"] == (2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else 1.0)
    assert m["f2"] == (5 * tp / (5 * tp + 4 * fn + fp) if 5 * tp + 4 * fn + fp else 1.0)
    if tp + fn:
        assert m["sensitivity"] == tp / (tp + fn)
    else:
        assert math.isnan(m["sensitivity"]) and math.isnan(m["apr"])
    assert m["specificity"] == (tn / (tn + fp) if tn + fp else pytest.approx(math.nan,
                                                                             nan_ok=True))


@pytest.mark.parametrize("kind", ["beta", "saturated", "ties", "binary"])
def test_against_scikit_learn(kind, rng):
    truth, prob = scores(kind, rng)
    m = metrics.evaluate(truth.reshape(40, 100, 100), prob.reshape(40, 100, 100))
    tn, fp, fn, tp = confusion_matrix(truth, prob >= 0.5).ravel()
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (tp, fp, fn, tn)
    assert m["apr"] == pytest.approx(average_precision_score(truth, prob), abs=1e-4)


def test_streaming_pools_volumes_exactly(rng):
    truth, prob = scores("beta", rng)
    evaluator = metrics.Evaluator()
    per_volume = [evaluator.update(t, p) for t, p in zip(np.split(truth, 4), np.split(prob, 4))]
    pooled, whole = evaluator.result(), metrics.evaluate(truth, prob)
    assert pooled == whole
    assert per_volume[0]["apr"] == pytest.approx(
        average_precision_score(np.split(truth, 4)[0], np.split(prob, 4)[0]), abs=1e-4)
    assert evaluator.counts.dtype == np.int64


def test_large_counts_stay_exact():
    tn = 2 ** 25 + 1  # not representable in float32
    m = metrics.scores_from_counts(tp=3, fp=1, fn=0, tn=tn)
    assert m["tn"] == tn and m["specificity"] == tn / (tn + 1)


def test_precision_recall_curve_matches_scikit_learn_at_recall_steps(rng):
    truth, prob = scores("ties", rng)
    precision, recall, thresholds = metrics.precision_recall_curve(truth, prob)
    sk_precision, sk_recall, sk_thresholds = sk_pr_curve(truth, prob)
    assert np.all(np.diff(thresholds) <= 0) and np.all(np.diff(recall) >= 0)
    for p, r, t in zip(precision, recall, thresholds):
        # Our threshold is the lower edge of the score's bin (relative width 2^-13).
        i = np.flatnonzero((sk_thresholds >= t) & (sk_thresholds < t + 1e-4))
        assert i.size == 1, t
        assert (p, r) == pytest.approx((sk_precision[i[0]], sk_recall[i[0]]))


def test_empty_truth_and_prediction_conventions():
    m = metrics.evaluate(np.zeros(10), np.zeros(10))
    assert m["dsc"] == 1.0 and m["f2"] == 1.0 and m["specificity"] == 1.0
    assert math.isnan(m["sensitivity"]) and math.isnan(m["apr"])
    m = metrics.evaluate(np.zeros(10), np.full(10, 0.9))
    assert m["dsc"] == 0.0 and m["specificity"] == 0.0


@pytest.mark.parametrize("truth, prob, message", [
    (np.zeros((4, 4)), np.zeros((4, 4, 2)), r"y_prob\[\.\.\., 1\]"),
    (np.zeros((4, 4)), np.zeros((4, 5)), "Shape mismatch"),
    (np.full((4,), 2), np.zeros(4), "binary lesion mask"),
    (np.zeros(4), np.array([0, 1.5, 0, 0]), r"\[0, 1\]"),
    (np.zeros(4), np.array([0, np.nan, 0, 0]), "NaN"),
    (np.zeros(0), np.zeros(0), "empty"),
])
def test_evaluate_errors(truth, prob, message):
    with pytest.raises(ValueError, match=message):
        metrics.evaluate(truth, prob)


@pytest.mark.parametrize("kwargs, message", [(dict(threshold=1.0), "`threshold`"),
                                             (dict(mantissa_bits=30), "`mantissa_bits`")])
def test_evaluator_argument_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        metrics.Evaluator(**kwargs)


# --- Keras metrics ----------------------------------------------------------------------------


def _batches(rng, sparse=True):
    labels = (rng.random((4, 6, 7, 8)) < 0.1).astype(np.int32)
    lesion = np.clip(labels * 0.6 + rng.random(labels.shape) * 0.5, 0, 1).astype(np.float32)
    y_pred = np.stack([1 - lesion, lesion], -1)
    y_true = labels if sparse else np.eye(2, dtype=np.float32)[labels]
    return y_true, y_pred, labels, lesion


@pytest.mark.parametrize("sparse", [True, False])
def test_keras_confusion_metrics_match_evaluate(rng, sparse):
    y_true, y_pred, labels, lesion = _batches(rng, sparse)
    expected = metrics.evaluate(labels, lesion)
    for metric, key in [(metrics.DiceScore(), "dsc"), (metrics.Sensitivity(), "sensitivity"),
                        (metrics.Specificity(), "specificity"), (metrics.FBetaScore(2.0), "f2")]:
        for half in (slice(0, 2), slice(2, 4)):  # streamed over two batches
            metric.update_state(y_true[half], y_pred[half])
        assert float(metric.result()) == pytest.approx(expected[key], rel=1e-6), key
        metric.reset_state()
        assert float(metric.result()) in (0.0, 1.0) or math.isnan(float(metric.result()))


def test_keras_apr_metric_close_to_scikit_learn(rng):
    y_true, y_pred, labels, lesion = _batches(rng)
    metric = metrics.AreaUnderPRCurve()
    metric.update_state(y_true, y_pred)
    assert float(metric.result()) == pytest.approx(
        average_precision_score(labels.ravel(), lesion.ravel()), abs=1e-3)


def test_keras_metrics_single_channel_sigmoid(rng):
    _, _, labels, lesion = _batches(rng)
    metric = metrics.DiceScore()
    metric.update_state(labels[..., None].astype(np.float32), lesion[..., None])
    assert float(metric.result()) == pytest.approx(metrics.evaluate(labels, lesion)["dsc"])


def test_keras_metrics_in_a_graph(rng):
    y_true, y_pred, labels, lesion = _batches(rng)
    metric = metrics.DiceScore()
    tf.function(metric.update_state)(tf.constant(y_true), tf.constant(y_pred))
    assert float(metric.result()) == pytest.approx(metrics.evaluate(labels, lesion)["dsc"])


def test_keras_metric_config_round_trip():
    metric = metrics.FBetaScore(beta=1.5, threshold=0.4, class_id=2)
    clone = keras.metrics.deserialize(keras.metrics.serialize(metric))
    assert isinstance(clone, metrics.FBetaScore)
    assert clone.get_config() == metric.get_config()


@pytest.mark.parametrize("factory, message", [
    (lambda: metrics.DiceScore(threshold=0), "`threshold`"),
    (lambda: metrics.Sensitivity(class_id=-1), "`class_id`"),
    (lambda: metrics.FBetaScore(beta=0), "`beta`"),
    (lambda: metrics.AreaUnderPRCurve(mantissa_bits=0), "`mantissa_bits`"),
])
def test_keras_metric_argument_errors(factory, message):
    with pytest.raises(ValueError, match=message):
        factory()


# --- lesion-wise ----------------------------------------------------------------------------


def test_lesion_metrics_hand_case():
    truth = np.zeros((10, 10, 10), bool)
    truth[1:3, 1:3, 1:3] = True  # detected
    truth[6:8, 6:8, 6:8] = True  # missed
    truth[1, 8, 8] = True  # one voxel, dropped by min_lesion_size=2
    pred = np.zeros_like(truth)
    pred[2:4, 2:4, 2:4] = True  # overlaps the first
    pred[5, 0, 0] = True  # false positive
    m = metrics.lesion_metrics(truth, pred)
    assert (m["true_lesions"], m["detected"], m["predicted_lesions"],
            m["false_positive_lesions"]) == (3, 1, 2, 1)
    m = metrics.lesion_metrics(truth, pred, min_lesion_size=2)
    assert (m["true_lesions"], m["detected"], m["predicted_lesions"]) == (2, 1, 1)
    assert (m["ltpr"], m["lfpr"], m["any_overlap_f1"]) == (0.5, 0.0, pytest.approx(2 / 3))


def test_lesion_connectivity():
    truth = np.zeros((4, 4, 4), bool)
    truth[0, 0, 0] = truth[1, 1, 1] = True  # touch at a corner only
    assert metrics.lesion_metrics(truth, truth, connectivity=3)["true_lesions"] == 1
    assert metrics.lesion_metrics(truth, truth, connectivity=1)["true_lesions"] == 2


def test_lesion_counts_pool_over_volumes():
    truth = np.zeros((6, 6, 6), bool)
    truth[1:3, 1:3, 1:3] = True
    hit = metrics.lesion_metrics(truth, truth)
    miss = metrics.lesion_metrics(truth, np.zeros_like(truth))
    pooled = metrics.pool_lesion_counts([hit, miss])
    assert pooled["ltpr"] == 0.5 and pooled["lfpr"] == 0.0 and pooled["true_lesions"] == 2
    assert math.isnan(miss["lfpr"]) and math.isnan(miss["any_overlap_f1"])


def test_lesion_metrics_errors():
    with pytest.raises(ValueError, match="3D volume"):
        metrics.lesion_metrics(np.zeros((4, 4)), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="`connectivity`"):
        metrics.lesion_metrics(np.zeros((4, 4, 4)), np.zeros((4, 4, 4)), connectivity=4)


def test_evaluators_merge(rng):
    truth, prob = scores("beta", rng)
    a, b = metrics.Evaluator(), metrics.Evaluator()
    a.update(truth[:1000], prob[:1000])
    b.update(truth[1000:], prob[1000:])
    assert a.merge(b).result() == metrics.evaluate(truth, prob)
    with pytest.raises(ValueError, match="different settings"):
        a.merge(metrics.Evaluator(threshold=0.3))


def test_evaluator_save_and_load(rng, tmp_path):
    truth, prob = scores("saturated", rng)
    evaluator = metrics.Evaluator(threshold=0.4)
    evaluator.update(truth, prob)
    evaluator.save(tmp_path / "ev.npz")
    loaded = metrics.Evaluator.load(tmp_path / "ev.npz")
    assert loaded.threshold == 0.4 and loaded.result() == evaluator.result()
    assert (tmp_path / "ev.npz").stat().st_size < 500_000


def test_lesion_size_in_mm3_is_converted_with_the_voxel_size():
    from tfversky.metrics import lesion_metrics, min_lesion_voxels

    truth = np.zeros((12, 12, 12), bool)
    truth[1:3, 1:3, 1] = True                      # 4 voxels
    truth[6:9, 6:9, 6] = True                      # 9 voxels
    assert min_lesion_voxels(10.0, (1.0, 1.0, 3.0)) == 4
    thick = lesion_metrics(truth, truth, min_lesion_mm3=10.0, voxel_size_mm=(1.0, 1.0, 3.0))
    fine = lesion_metrics(truth, truth, min_lesion_mm3=10.0, voxel_size_mm=(1.0, 1.0, 1.0))
    assert (thick["true_lesions"], fine["true_lesions"]) == (2, 0)
    assert lesion_metrics(truth, truth, min_lesion_size=5)["true_lesions"] == 1
    with pytest.raises(ValueError, match="needs `voxel_size_mm`"):
        lesion_metrics(truth, truth, min_lesion_mm3=10.0)
    with pytest.raises(ValueError, match="`min_lesion_mm3`"):
        min_lesion_voxels(-1, (1, 1, 1))


# --- one scan's every score, a cohort's summary ---------------------------------------------


@pytest.fixture
def case(lesion_pair):
    return lambda seed: lesion_pair(seed, (24, 22, 20), count=(3, 8))


def test_case_scores_hold_every_column_and_agree_with_each_metric(case):
    from tfversky import detection, surface

    reference, prediction = case(0)
    spacing = (0.9, 0.9, 3.0)
    scores, lesions = metrics.case_scores(reference, prediction, spacing, tolerance_mm=2.0)
    assert set(scores) == set(metrics.CASE_COLUMNS + metrics.CASE_EXTRAS)
    tn, fp, fn, tp = confusion_matrix(reference.ravel(), prediction.ravel()).ravel()
    assert (scores["tp"], scores["fp"], scores["fn"], scores["tn"]) == (tp, fp, fn, tn)
    assert scores["precision"] == tp / (tp + fp)
    assert scores["dsc"] == 2 * tp / (2 * tp + fp + fn)
    boundary = surface.boundary_scores(reference, prediction, spacing, 2.0)
    assert {k: scores[k] for k in boundary} == boundary
    # On the whole volume, uncropped: the same scores, the same lesions and centroids.
    found, whole = detection.challenge_detection(reference, prediction, spacing)
    assert {k: scores[k] for k in found} == found and lesions.keys() == whole.keys()
    for key in whole:
        if key == "centroid_voxel":
            np.testing.assert_allclose(lesions[key], whole[key])
        else:
            np.testing.assert_array_equal(lesions[key], whole[key])
    # Centroids against scipy's, in the whole volume's voxel indices.
    ids, _ = detection.lesions(reference, spacing)
    reference_rows = lesions["side"] == "reference"
    np.testing.assert_allclose(lesions["centroid_voxel"][reference_rows], ndimage.center_of_mass(
        ids > 0, ids, range(1, reference_rows.sum() + 1)))
    voxel_ml = 0.9 * 0.9 * 3.0 / 1000
    assert scores["volume_reference_ml"] == pytest.approx(reference.sum() * voxel_ml)
    assert scores["volume_difference_ml"] == pytest.approx(
        (int(prediction.sum()) - int(reference.sum())) * voxel_ml)
    assert scores["volume_absolute_difference_ml"] == abs(scores["volume_difference_ml"])
    any_overlap = metrics.lesion_metrics(reference, prediction)
    assert (scores["ltpr"], scores["lfpr"]) == (any_overlap["ltpr"], any_overlap["lfpr"])


def test_precision_of_empty_masks_follows_metrics_reloaded():
    assert metrics.scores_from_counts(0, 0, 5, 10)["precision"] == 0.0  # missed every lesion
    assert math.isnan(metrics.scores_from_counts(0, 0, 0, 10)["precision"])  # nothing to find
    assert metrics.scores_from_counts(0, 3, 0, 10)["precision"] == 0.0


def test_an_empty_scan_has_a_defined_value_for_every_score():
    empty = np.zeros((10, 10, 10), bool)
    lesion = empty.copy()
    lesion[3:6, 3:6, 3:6] = True
    both_empty, _ = metrics.case_scores(empty, empty, (1, 1, 1))
    assert (both_empty["dsc"], both_empty["f2"], both_empty["nsd"], both_empty["hd95_mm"],
            both_empty["lesion_f1"], both_empty["lesions_false_positive"]) == (1.0, 1.0, 1.0,
                                                                               0.0, 1.0, 0)
    false_alarm, _ = metrics.case_scores(empty, lesion, (1, 1, 2))
    assert (false_alarm["dsc"], false_alarm["nsd"], false_alarm["lesion_precision"],
            false_alarm["lesions_false_positive"],
            false_alarm["volume_false_positive_mm3"]) == (0.0, 0.0, 0.0, 1, 54.0)
    assert math.isnan(false_alarm["sensitivity"]) and math.isnan(false_alarm["hd95_mm"])


def test_summary_pools_counts_and_correlates_lesion_loads(case):
    rows = [metrics.case_scores(*case(seed), (1.0, 1.0, 1.0))[0] for seed in range(4)]
    empty = np.zeros((24, 22, 20), bool)
    rows.append(metrics.case_scores(empty, case(9)[1], (1.0, 1.0, 1.0))[0])  # HD95 NaN
    summary = metrics.summarize_cases(rows)
    assert summary["cases"] == 5 and summary["defined"]["hd95_mm"] == 4
    assert summary["mean"]["hd95_mm"] == pytest.approx(np.mean([r["hd95_mm"] for r in rows[:4]]))
    assert summary["median"]["dsc"] == pytest.approx(np.median([r["dsc"] for r in rows]))
    tp, fp, fn = (sum(r[k] for r in rows) for k in ("tp", "fp", "fn"))
    assert summary["pooled"]["dsc"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    detected = sum(r["lesions_reference_detected"] for r in rows)
    assert summary["pooled"]["lesion_sensitivity"] == pytest.approx(
        detected / sum(r["lesions_reference"] for r in rows))
    loads = np.array([[r["volume_reference_ml"], r["volume_predicted_ml"]] for r in rows])
    assert summary["volume_correlation"]["pearson_r"] == pytest.approx(
        np.corrcoef(loads.T)[0, 1])
    with pytest.raises(ValueError, match="no cases"):
        metrics.summarize_cases([])
