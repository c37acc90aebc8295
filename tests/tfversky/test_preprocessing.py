"""Reference grid, resampling (lesion volumes kept) and intensity normalisation."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.tfversky import label_checks
from tfversky import preprocessing
from tfversky.preprocessing import PAPER_GRID, ReferenceGrid


def _rotation(degrees):
    ax, ay, az = np.deg2rad(degrees)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _lesions(rng, shape=(64, 64, 56), spacing=(0.9, 1.0, 1.2), degrees=(0, 0, 0), count=6):
    """Ellipsoidal lesions (radii 3-6 mm) on a rotated, anisotropic scan grid."""
    affine = np.eye(4)
    affine[:3, :3] = _rotation(degrees) @ np.diag(spacing)
    affine[:3, 3] = -affine[:3, :3] @ (np.array(shape) / 2)
    index = np.stack(np.meshgrid(*map(np.arange, shape), indexing="ij"), -1).reshape(-1, 3)
    world = index @ affine[:3, :3].T + affine[:3, 3]
    label = np.zeros(len(index), bool)
    for _ in range(count):
        center, radii = rng.uniform(-20, 20, 3), rng.uniform(3, 6, 3)
        label |= (((world - center) / radii) ** 2).sum(1) <= 1
    return label.reshape(shape).astype(np.uint8), affine


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2 ** 16), degrees=st.tuples(*[st.floats(-10, 10)] * 3),
       scale=st.sampled_from([1, 2]))
def test_lesion_volume_preserved(seed, degrees, scale):
    """Paper grid and its half-resolution version: the lesion volume changes < 3 %."""
    label, affine = _lesions(np.random.default_rng(seed), degrees=degrees)
    grid = PAPER_GRID.scaled(scale)
    grid = ReferenceGrid(tuple(n // 2 for n in grid.shape), grid.spacing)  # covers the scan
    out = preprocessing.resample_label(label, affine, grid.affine([0, 0, 0]), grid.shape)
    before = label.sum() * abs(np.linalg.det(affine[:3, :3]))
    after = out.sum() * np.prod(grid.spacing)
    assert out.dtype == np.uint8
    assert abs(after / before - 1) < 0.03, (after, before)


def test_empty_label_stays_empty():
    out = preprocessing.resample_label(np.zeros((8, 8, 8)), np.eye(4), np.eye(4), (4, 4, 4))
    assert out.dtype == np.uint8 and not out.any()


def test_identity_and_axis_flip_resampling_is_exact():
    volume = np.random.default_rng(0).normal(size=(6, 7, 8)).astype(np.float32)
    out = preprocessing.resample_to_grid(volume, np.eye(4), np.eye(4), volume.shape)
    np.testing.assert_allclose(out, volume, atol=1e-6)
    flipped = np.diag([-1.0, 1.0, 1.0, 1.0])
    flipped[0, 3] = 5  # voxel i -> world 5 - i: the same data stored left-right reversed
    out = preprocessing.resample_to_grid(volume[::-1], flipped, np.eye(4), volume.shape)
    np.testing.assert_allclose(out, volume, atol=1e-6)


def test_channels_resampled_alike():
    volume = np.random.default_rng(1).normal(size=(10, 10, 10, 3)).astype(np.float32)
    grid = np.diag([1.5, 1.5, 1.5, 1.0])
    out = preprocessing.resample_to_grid(volume, np.eye(4), grid, (6, 6, 6))
    assert out.shape == (6, 6, 6, 3)
    np.testing.assert_allclose(
        out[..., 1], preprocessing.resample_to_grid(volume[..., 1], np.eye(4), grid, (6, 6, 6)))


def test_prepare_volume_centres_the_brain_and_round_trips_to_native():
    rng = np.random.default_rng(2)
    label, affine = _lesions(rng, degrees=(4, -3, 6))
    image = np.zeros(label.shape + (3,), np.float32)
    image[8:56, 8:56, 6:50] = rng.uniform(1, 2, 3)
    image[label > 0] *= 2
    grid = ReferenceGrid((48, 64, 80), PAPER_GRID.spacing)
    out, out_label, grid_affine = preprocessing.prepare_volume(image, affine, grid, label)
    assert out.shape == (48, 64, 80, 3) and out_label.shape == (48, 64, 80)
    center = (np.array(grid.shape) - 1) / 2
    np.testing.assert_allclose(grid_affine[:3, :3] @ center + grid_affine[:3, 3],
                               preprocessing.brain_center(image, affine))
    back = preprocessing.to_native(out_label, grid_affine, affine, label.shape)
    dice = 2 * (back * label).sum() / (back.sum() + label.sum())
    assert dice > 0.9


def test_grid_validation_and_helpers():
    assert PAPER_GRID.shape == (128, 224, 256)
    assert PAPER_GRID.scaled(2).field_of_view == PAPER_GRID.field_of_view
    with pytest.raises(ValueError, match="argument `shape`"):
        ReferenceGrid((128, 224), (1.0, 1.0))
    with pytest.raises(ValueError, match="argument `spacing`"):
        ReferenceGrid((4, 4, 4), (1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="argument `factor`: 3 does not divide"):
        PAPER_GRID.scaled(3)
    affine = ReferenceGrid((3, 3, 3), (2.0, 2.0, 2.0)).affine([10, 20, 30])
    np.testing.assert_allclose(affine[:3, 3], [8, 18, 28])


def test_brain_center_of_empty_volume():
    with pytest.raises(ValueError, match="all zero"):
        preprocessing.brain_center(np.zeros((4, 4, 4)), np.eye(4))


def test_normalize_intensity_inside_the_brain():
    rng = np.random.default_rng(3)
    image = np.zeros((10, 10, 10, 3))
    image[2:8, 2:8, 2:8] = rng.normal([100, 300, 50], [10, 30, 5], (6, 6, 6, 3))
    out = preprocessing.normalize_intensity(image, clip_percentiles=(0, 100))
    brain = preprocessing.brain_mask(image)
    np.testing.assert_allclose(out[brain].mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(out[brain].std(0), 1, atol=1e-5)
    assert not out[~brain].any() and out.dtype == np.float32


@pytest.mark.parametrize("image, match", [
    (np.ones((4, 4, 4)), "expected \\(D, H, W, channels\\)"),
    (np.full((4, 4, 4, 1), np.nan), "NaN or Inf"),
    (np.zeros((4, 4, 4, 1)), "brain mask is empty"),
])
def test_normalize_intensity_errors(image, match):
    with pytest.raises(ValueError, match=match):
        preprocessing.normalize_intensity(image)


def test_brain_outside_grid_counts_what_the_grid_crops():
    """A 180 mm wide brain (1 mm voxels, stored flipped) on the paper's 160 mm grid."""
    brain = np.zeros((200, 100, 100))
    brain[10:190, 20:80, 20:80] = 1
    affine = np.diag([-1.0, 1, 1, 1])  # x runs right -> left: the grid must see through it
    grid_affine = PAPER_GRID.affine(preprocessing.brain_center(brain, affine))
    fraction, extent = preprocessing.brain_outside_grid(brain, affine, grid_affine,
                                                        PAPER_GRID.shape)
    assert fraction == pytest.approx(20 / 180, abs=0.01)  # 10 mm cropped on each side
    assert extent == pytest.approx((180.0, 60.0, 60.0), abs=1.0)
    wide = ReferenceGrid((100, 50, 50), (2.0, 2.0, 2.0))
    inside, _ = preprocessing.brain_outside_grid(
        brain[:, :, :, None], affine, wide.affine(preprocessing.brain_center(brain, affine)),
        wide.shape)
    assert inside == 0.0


def test_skull_check_refuses_heads_and_noise_and_passes_brains():
    affine = np.diag([1.5, 1.5, 1.5, 1.0])
    brain = np.zeros((120, 140, 120), np.float32)  # 180 x 210 x 180 mm field of view
    brain[20:100, 20:120, 20:100] = 1.0            # 120 x 150 x 120 mm box: 2.2 L
    preprocessing.check_skull_stripped(brain, affine)
    head = brain.copy()
    head[8:112, 8:132, 8:112] += 0.5               # skull and scalp around it: 4.5 L
    with pytest.raises(ValueError, match="4526 mL of non-zero signal.*--brain-mask"):
        preprocessing.check_skull_stripped(head, affine, "T1")
    small = np.zeros((60, 60, 60), np.float32)     # a small field of view, noise outside
    small[10:50, 10:50, 10:50] = 1.0
    noisy = small + np.random.default_rng(0).uniform(1, 2, small.shape) * (small == 0)
    with pytest.raises(ValueError, match="100% of the field of view's border"):
        preprocessing.check_skull_stripped(noisy, np.eye(4))
    preprocessing.check_skull_stripped(small, np.eye(4))


def _half_voxels(shape):
    """The grid over the same field of view as a unit-voxel volume of ``shape``, with voxels
    half as large: its outer voxels' centres lie a quarter voxel beyond the volume's edge
    voxels' centres."""
    affine = np.diag([0.5, 0.5, 0.5, 1.0])
    affine[:3, 3] = -0.25
    return affine, tuple(2 * n for n in shape)


def test_constant_volume_stays_constant_at_twice_the_resolution_on_every_path():
    """Issue 20's reproducer: SciPy's "constant" mode zeroed the outer half voxel (and
    "grid-constant" fades it to 0.75). The voxels fill the field of view: every path keeps
    the value there, and reads 0 beyond it."""
    volume = np.full((4, 5, 6), 3.0, np.float32)
    grid, shape = _half_voxels(volume.shape)
    np.testing.assert_array_equal(preprocessing.resample_to_grid(volume, np.eye(4), grid, shape),
                                  3.0)
    np.testing.assert_array_equal(preprocessing.resample_to_grid(volume, np.eye(4), grid, shape,
                                                                 order=0), 3.0)
    np.testing.assert_array_equal(preprocessing.to_native(volume, np.eye(4), grid, shape), 3.0)
    np.testing.assert_array_equal(
        preprocessing.resample_label(np.ones(volume.shape, np.uint8), np.eye(4), grid, shape), 1)
    # And back onto the coarse grid (anti-aliased): still constant.
    np.testing.assert_allclose(preprocessing.resample_to_grid(
        np.full(shape, 3.0, np.float32), grid, np.eye(4), volume.shape), 3.0, rtol=1e-6)
    # One voxel further out on every side: outside the field of view, 0.
    wider = grid.copy()
    wider[:3, 3] -= 0.5
    out = preprocessing.resample_to_grid(volume, np.eye(4), wider, tuple(n + 2 for n in shape))
    assert out[0].max() == out[-1].max() == out[:, :, -1].max() == 0
    np.testing.assert_array_equal(out[1:-1, 1:-1, 1:-1], 3.0)


def test_ignore_label_is_resampled_as_its_own_mask():
    """A label half `ignore` (255), rotated: interpolating the values themselves made 1s of
    the 255s. Each value is its own mask, and keeps its volume."""
    label = np.zeros((32, 32, 32), np.uint8)
    label[:, :, :8] = 255
    label[10:20, 10:20, 12:22] = 1
    affine = np.eye(4)
    affine[:3, :3] = _rotation((10, -7, 12))
    affine[:3, 3] = -affine[:3, :3] @ np.full(3, 15.5)
    grid = ReferenceGrid((40, 40, 40), (1.0, 1.0, 1.0))
    out = preprocessing.resample_label(label, affine, grid.affine([0, 0, 0]), grid.shape)
    values, counts = np.unique(out, return_counts=True)
    assert values.tolist() == [0, 1, 255]
    assert counts[1] == pytest.approx(1000, rel=0.03)
    assert counts[2] == pytest.approx(32 * 32 * 8, rel=0.03)


@pytest.mark.parametrize("label", [np.full((4, 4, 4), 1.5), np.full((4, 4, 4), -1),
                                   np.full((4, 4, 4), 256)])
def test_resample_label_refuses_values_outside_its_range(label):
    with pytest.raises(ValueError, match="`label`.*integers in \\[0, 255\\]"):
        preprocessing.resample_label(label, np.eye(4), np.eye(4), (4, 4, 4))


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2 ** 16), degrees=st.tuples(*[st.floats(-40, 40)] * 3),
       spacing=st.tuples(*[st.floats(0.5, 1.8)] * 3), flip=st.booleans(),
       shape=st.tuples(*[st.integers(5, 10)] * 3))
def test_resampled_labels_keep_their_values_and_stay_aligned(seed, degrees, spacing, flip,
                                                             shape):
    """Random label maps (lesion classes 1, 2, ignore 255) onto random rotated, scaled,
    flipped grids: probed by the image resampler on a coordinate-coded image."""
    image, label = label_checks.coded_volume(shape, np.random.default_rng(seed))
    grid = np.eye(4)
    grid[:3, :3] = _rotation(degrees) @ np.diag(spacing) @ np.diag([-1 if flip else 1, 1, 1])
    centre = (np.array(shape) - 1) / 2
    grid_shape = tuple(int(np.ceil(n / s)) + 2 for n, s in zip(shape, spacing))
    grid[:3, 3] = centre - grid[:3, :3] @ ((np.array(grid_shape) - 1) / 2)
    out = preprocessing.resample_label(label, np.eye(4), grid, grid_shape)
    probe = preprocessing.resample_to_grid(image, np.eye(4), grid, grid_shape, antialias=False)
    # Anti-aliasing (a coarser grid) smooths each mask: widen the neighbourhood by its reach.
    sigma = preprocessing._antialias_sigma(grid)  # grid voxels -> source voxels
    reach = int(4 * sigma.max() + 0.5) if sigma.max() > 0.25 else 0
    label_checks.check_moved(probe, out, label, spread=reach)


def test_skull_check_says_what_is_known_of_the_training_scans():
    """A raw scan is refused for a model trained on stripped scans, or one nothing is known
    of (which must not claim to know), and accepted for a model trained on raw scans."""
    raw = np.ones((60, 60, 60), np.float32)  # non-zero up to every face
    with pytest.raises(ValueError, match=r"The model was trained on skull-stripped scans "
                                         r"\(zero outside the brain; its plan records it\)"):
        preprocessing.check_skull_stripped(raw, np.eye(4), trained_on_stripped=True)
    with pytest.raises(ValueError) as unknown:
        preprocessing.check_skull_stripped(raw, np.eye(4))
    message = str(unknown.value)
    assert "No plan records whether the model was trained on skull-stripped scans" in message
    assert "--brain-mask" in message and "--no-skull-check" in message
    assert "The model was trained on" not in message
    found = preprocessing.check_skull_stripped(raw, np.eye(4), trained_on_stripped=False)
    assert not found.stripped and found.border_fraction == 1.0 and found.volume_ml == 216.0


def _raw_head(rng, shape=(48, 48, 48)):
    """Two modalities of an ellipsoidal head with a dark core (CSF), in background noise,
    and a bright speck of artefact outside the head."""
    index = np.stack(np.meshgrid(*map(np.arange, shape), indexing="ij"), -1)
    head = (((index - np.array(shape) / 2) / (18, 20, 16)) ** 2).sum(-1) <= 1
    core = (((index - np.array(shape) / 2) / (5, 6, 4)) ** 2).sum(-1) <= 1
    tissue = np.where(core[..., None], rng.normal(3, 1, (*shape, 2)),
                      rng.normal([100, 50], [10, 5], (*shape, 2)))
    image = np.where(head[..., None], tissue, np.abs(rng.normal(0, 4, (*shape, 2))))
    image[1:3, 1:3, 1:3] = 200
    return image.astype(np.float32), head


def test_a_raw_scans_brain_region_is_its_foreground(rng):
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    image, head = _raw_head(rng)
    region, found = preprocessing.keep_brain_region(image, affine)
    assert not found.stripped and found.border_fraction > 0.99
    np.testing.assert_array_equal(np.any(region != 0, axis=-1), head)  # core in, specks out
    np.testing.assert_array_equal(region[head], image[head])
    # A skull-stripped scan's region is its non-zero voxels: it comes back unchanged.
    stripped = np.where(head[..., None], image, 0)
    again, found = preprocessing.keep_brain_region(stripped, affine)
    assert found.stripped and found.border_fraction == 0
    np.testing.assert_array_equal(again, stripped)


@pytest.mark.parametrize("scheme, clip, match", [
    ("minmax", (0.5, 99.5), "`intensity_normalization`.*minmax"),
    ("zscore", (99.5, 0.5), "`clip_percentiles`"),
    ("zscore", (-1, 99), "`clip_percentiles`"),
    ("zscore", "high", "`clip_percentiles`"),
])
def test_normalisation_options_have_one_check(scheme, clip, match):
    with pytest.raises(ValueError, match=match):
        preprocessing.check_intensity_normalization(scheme, clip)
    if scheme == "zscore":  # normalize_intensity refuses what it cannot do, by the same rule
        with pytest.raises(ValueError, match=match):
            preprocessing.normalize_intensity(np.ones((4, 4, 4, 1)), clip_percentiles=clip)


@pytest.mark.parametrize("count", [0, 1, 5, 40, 64])
def test_volume_kept_takes_the_count_th_largest_value_as_a_full_sort_does(count):
    """The threshold is sought among the voxels a class reaches only; a full sort agrees,
    also when the class's summed volume exceeds the voxels it reaches."""
    rng = np.random.default_rng(count)
    soft = np.zeros((4, 4, 4), np.float32)
    soft.flat[rng.choice(64, 20, replace=False)] = rng.uniform(0.05, 1.0, 20)
    soft *= count / max(float(soft.sum()), 1e-9)  # the summed partial volume is `count`
    kept = preprocessing._volume_kept(soft)
    reference = np.sort(soft.ravel())[::-1][int(round(float(soft.sum(dtype=np.float64)))) - 1] \
        if count else None
    expected = (soft >= np.clip(reference, 0.3, 0.7)) if count else np.zeros(soft.shape, bool)
    assert np.array_equal(kept, expected)


def test_coverage_masks_are_shared_and_read_only():
    """One scan's modalities and label share one mapping: its coverage mask is made once."""
    rotated = np.eye(4)
    rotated[:3, :3] = _rotation((0, 0, 20))
    matrix = np.linalg.inv(rotated)
    first = preprocessing._covered(matrix, (8, 8, 8), (10, 10, 10))
    assert first is not None and not first.flags.writeable
    assert preprocessing._covered(matrix.copy(), (8, 8, 8), (10, 10, 10)) is first
