"""tfversky.metrics.lesion_metrics against the `lesion-metrics` package (PyPI 0.1.12).

`lesion-metrics` (J. Reinhold, used for ISBI 2015-style scoring) is an implementation that
no one here wrote: it labels lesions with scikit-image, where we use scipy.ndimage, and
decides detection by a per-lesion IoU > 0 inside each lesion's bounding box, where we ask
whether any voxel overlaps. On the same masks the two must give the same LTPR, LFPR and
lesion counts. The differences in definition, and how each is handled here:

* Connectivity: skimage's default is full connectivity (26 neighbours in 3D), our
  ``connectivity=3``. With ``connectivity=1`` we count more lesions: tested below.
* Its ``lfdr`` (lesion false discovery rate) is what we and the challenges call LFPR:
  false-positive lesions / predicted lesions. Same number, different name.
* It has no ``min_lesion_size``; ours defaults to 1 (keep every lesion), the setting
  compared here.
* It thresholds masks at ``> 0``; ours takes binary masks (0/1), so the masks are binary.
* Empty masks: both give NaN for a rate with nothing to count.
"""

import math

import numpy as np
import pytest

from tfversky import metrics

reference = pytest.importorskip("lesion_metrics.metrics",
                                reason="test-only dependency: pip install lesion-metrics==0.1.12")


def _random_lesions(rng, shape, count, max_radius):
    """A mask of ``count`` random ellipsoids, some touching: small, large and confluent."""
    mask = np.zeros(shape, bool)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    for _ in range(count):
        center = rng.uniform(0, shape)
        radii = rng.uniform(0.6, max_radius, 3)
        mask |= (((grid - center) / radii) ** 2).sum(-1) <= 1
    return mask


def _prediction(rng, truth):
    """A plausible prediction: shifted truth, some lesions dropped, some false positives."""
    pred = np.roll(truth, tuple(rng.integers(-1, 2, 3)), axis=(0, 1, 2))
    pred &= rng.random(truth.shape) > 0.1
    return pred | _random_lesions(rng, truth.shape, 6, 2.0)


@pytest.mark.parametrize("seed", range(6))
def test_agrees_with_lesion_metrics_package(seed):
    rng = np.random.default_rng(seed)
    truth = _random_lesions(rng, (28, 30, 26), int(rng.integers(5, 25)), 4.0)
    pred = _prediction(rng, truth)
    ours = metrics.lesion_metrics(truth, pred, connectivity=3)
    ltpr, n_true = reference.ltpr(pred, truth, return_truth_count=True)
    lfdr, n_pred = reference.lfdr(pred, truth, return_pred_count=True)
    assert ours["true_lesions"] == n_true and ours["predicted_lesions"] == n_pred
    assert ours["ltpr"] == pytest.approx(ltpr, abs=1e-12)
    assert ours["lfpr"] == pytest.approx(lfdr, abs=1e-12)
    # The counts behind the rates, not only the rates.
    assert ours["detected"] == round(ltpr * n_true)
    assert ours["false_positive_lesions"] == round(lfdr * n_pred)


def test_face_connectivity_counts_more_lesions_than_the_reference():
    """Two voxels touching at a corner: one lesion for both at 26-connectivity, two at 6."""
    truth = np.zeros((5, 5, 5), bool)
    truth[1, 1, 1] = truth[2, 2, 2] = True
    pred = truth.copy()
    pred[2, 2, 2] = False
    _, n_true = reference.ltpr(pred, truth, return_truth_count=True)
    assert n_true == metrics.lesion_metrics(truth, pred, connectivity=3)["true_lesions"] == 1
    faces = metrics.lesion_metrics(truth, pred, connectivity=1)
    assert faces["true_lesions"] == 2 and faces["ltpr"] == 0.5


def test_empty_masks_are_nan_in_both():
    truth = np.zeros((6, 6, 6), bool)
    pred = truth.copy()
    ours = metrics.lesion_metrics(truth, pred)
    assert math.isnan(ours["ltpr"]) and math.isnan(reference.ltpr(pred, truth))
    assert math.isnan(ours["lfpr"]) and math.isnan(reference.lfdr(pred, truth))
