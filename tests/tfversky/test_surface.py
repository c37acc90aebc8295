"""tfversky.surface: boundary distances by hand, against a whole-volume distance transform,
the empty-mask conventions, and against MONAI (a test-only dependency)."""

import math

import numpy as np
import pytest
from scipy import ndimage

from tfversky import surface


@pytest.fixture
def random_pair(ellipsoids):
    """``random_pair(seed)``: a reference of random ellipsoids (some on the array's edge) and
    a plausible prediction: shifted, eroded here and there, plus false positives."""

    def make(seed, shape=(30, 26, 22)):
        rng = np.random.default_rng(seed)
        reference = ellipsoids(rng, shape, int(rng.integers(2, 8)), (0.8, 5.0))
        prediction = np.roll(reference, tuple(rng.integers(-2, 3, 3)), axis=(0, 1, 2))
        prediction &= rng.random(shape) > 0.05
        return reference, prediction | ellipsoids(rng, shape, 2, (0.8, 2.5))

    return make


SPACINGS = [(1.0, 1.0, 1.0), (0.9, 0.9, 3.0), (0.5, 1.2, 2.0)]


def _edt_distances(reference, prediction, spacing):
    """The definition, the slow way: a Euclidean distance transform of the whole volume."""
    edges = [surface.boundary(m) for m in (prediction, reference)]
    to_reference = ndimage.distance_transform_edt(~edges[1], sampling=spacing)[edges[0]]
    to_prediction = ndimage.distance_transform_edt(~edges[0], sampling=spacing)[edges[1]]
    return to_reference, to_prediction


def test_two_voxels_by_hand():
    reference = np.zeros((5, 5, 5), bool)
    prediction = reference.copy()
    reference[1, 1, 1] = True
    prediction[1, 2, 3] = True
    to_reference, to_prediction = surface.surface_distances(reference, prediction, (1, 2, 3))
    expected = math.hypot(2.0, 6.0)  # one voxel along y (2 mm), two along z (3 mm each)
    assert to_reference.tolist() == [pytest.approx(expected)]
    assert to_prediction.tolist() == [pytest.approx(expected)]
    scores = surface.boundary_scores(reference, prediction, (1, 2, 3), tolerance_mm=7.0)
    assert scores == {"hd95_mm": pytest.approx(expected), "assd_mm": pytest.approx(expected),
                      "nsd": 1.0}
    assert surface.boundary_scores(reference, prediction, (1, 2, 3), tolerance_mm=6.0)["nsd"] == 0


def test_boundary_is_the_face_connected_surface_and_the_array_edge_counts():
    cube = np.ones((3, 3, 3), bool)  # fills the array: only the centre has all 6 neighbours
    assert surface.boundary(cube).sum() == 26
    line = np.zeros((5, 5, 5), bool)
    line[2, 2, :] = True
    assert surface.boundary(line).sum() == 5


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("seed", range(3))
def test_cropped_k_d_tree_equals_whole_volume_distance_transform(seed, spacing, random_pair):
    reference, prediction = random_pair(seed)
    ours = surface.surface_distances(reference, prediction, spacing)
    for got, expected in zip(ours, _edt_distances(reference, prediction, spacing)):
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_scores_follow_their_formulas(random_pair):
    reference, prediction = random_pair(7)
    spacing = (0.9, 0.9, 3.0)
    p2r, r2p = _edt_distances(reference, prediction, spacing)
    scores = surface.boundary_scores(reference, prediction, spacing, tolerance_mm=2.0)
    both = np.concatenate([p2r, r2p])
    assert scores["hd95_mm"] == pytest.approx(max(np.percentile(p2r, 95),
                                                  np.percentile(r2p, 95)))
    assert scores["assd_mm"] == pytest.approx(both.mean())
    assert scores["nsd"] == pytest.approx((both <= 2.0).mean())
    assert 0 < scores["nsd"] < 1


def test_empty_masks_follow_metrics_reloaded():
    empty = np.zeros((6, 6, 6), bool)
    lesion = empty.copy()
    lesion[2:4, 2:4, 2:4] = True
    assert surface.boundary_scores(empty, empty, (1, 1, 1)) == {"hd95_mm": 0.0, "assd_mm": 0.0,
                                                                "nsd": 1.0}
    for reference, prediction in ((empty, lesion), (lesion, empty)):
        scores = surface.boundary_scores(reference, prediction, (1, 1, 1))
        assert math.isnan(scores["hd95_mm"]) and math.isnan(scores["assd_mm"])
        assert scores["nsd"] == 0.0


@pytest.mark.parametrize("kwargs, match", [
    ({"spacing_mm": (1.0, 1.0)}, "spacing_mm"),
    ({"spacing_mm": (1.0, 0.0, 1.0)}, "spacing_mm"),
    ({"tolerance_mm": -1.0}, "tolerance_mm"),
])
def test_bad_arguments_name_themselves(kwargs, match):
    mask = np.ones((3, 3, 3), bool)
    with pytest.raises(ValueError, match=match):
        surface.boundary_scores(mask, mask, **{"spacing_mm": (1, 1, 1), **kwargs})
    with pytest.raises(ValueError, match="Shape mismatch"):
        surface.boundary_scores(mask, mask[:2], (1, 1, 1))


# --- MONAI, an implementation no one here wrote ----------------------------------------------


def _monai(metric_name, reference, prediction, spacing, **kwargs):
    torch = pytest.importorskip("torch")
    monai_metrics = pytest.importorskip("monai.metrics")
    metric = getattr(monai_metrics, metric_name)(**kwargs)
    as_batch = [torch.as_tensor(m[None, None].astype(np.float32)) for m in (prediction, reference)]
    value = metric(*as_batch, spacing=list(spacing))
    return float(np.asarray(value).ravel()[0])


@pytest.mark.filterwarnings("ignore::FutureWarning")  # MONAI's own deprecation notices
@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("seed", range(4))
def test_agrees_with_monai(seed, spacing, random_pair):
    pytest.importorskip("monai")
    reference, prediction = random_pair(seed)
    ours = surface.boundary_scores(reference, prediction, spacing, tolerance_mm=1.5)
    hd95 = _monai("HausdorffDistanceMetric", reference, prediction, spacing, percentile=95,
                  include_background=True)
    assd = _monai("SurfaceDistanceMetric", reference, prediction, spacing, symmetric=True,
                  include_background=True)
    nsd = _monai("SurfaceDiceMetric", reference, prediction, spacing, class_thresholds=[1.5],
                 include_background=True)
    assert ours["hd95_mm"] == pytest.approx(hd95, rel=1e-6)
    assert ours["assd_mm"] == pytest.approx(assd, rel=1e-6)
    assert ours["nsd"] == pytest.approx(nsd, rel=1e-6)
