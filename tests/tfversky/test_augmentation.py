"""Augmentation: deterministic per seed, label values kept and aligned, p = 0 is the identity."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from tests.tfversky import label_checks
from tfversky import augmentation, data
from tfversky.augmentation import TRANSFORMS, AugmentConfig

SPATIAL = ("rotation", "scaling")


def _blob_patch(size=16, seed=0):
    """An image equal to its (binary) label: a few random ellipsoidal blobs."""
    rng = np.random.default_rng(seed)
    grid = np.indices((size,) * 3).transpose(1, 2, 3, 0)
    label = np.zeros((size,) * 3, np.uint8)
    for _ in range(3):
        centre, radii = rng.uniform(3, size - 3, 3), rng.uniform(2, 4, 3)
        label |= (((grid - centre) / radii) ** 2).sum(-1) <= 1
    return label.astype(np.float32)[..., None], label


@pytest.mark.parametrize("name", TRANSFORMS)
def test_each_transform_is_deterministic_for_a_seed(name):
    image, label = _blob_patch()
    image = image + np.random.default_rng(1).normal(0, 0.1, image.shape).astype(np.float32)
    config = AugmentConfig.only(name)
    first = augmentation.augment(image, label, config, augmentation.patch_seed(7, 3))
    again = augmentation.augment(image, label, config, augmentation.patch_seed(7, 3))
    other = augmentation.augment(image, label, config, augmentation.patch_seed(7, 4))
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[0], image), f"{name} at p=1 changed nothing"
    assert not np.array_equal(first[0], other[0]), f"{name}: another patch, same draw"


@pytest.mark.parametrize("name", TRANSFORMS)
def test_labels_stay_binary_and_aligned_with_the_image(name):
    """Image == label: after augmentation, the label must still be image >= 0.5 (spatial),
    or the unchanged label (intensity transforms never move voxels)."""
    image, label = _blob_patch()
    for index in range(4):
        x, y = (t.numpy() for t in augmentation.augment(
            image, label, AugmentConfig.only(name), augmentation.patch_seed(0, index)))
        assert y.dtype == np.uint8 and set(np.unique(y)) <= {0, 1}
        if name in SPATIAL:
            np.testing.assert_array_equal(y, (x[..., 0] >= 0.5).astype(np.uint8))
            assert 0 < y.sum() and not np.array_equal(y, label)
        else:
            np.testing.assert_array_equal(y, label)


def test_rotation_and_scaling_from_the_whole_volume_keep_alignment():
    """Through patch_dataset: resampled from the volume around the patch, image == label."""
    image, label = _blob_patch(size=32)
    volumes = tf.data.Dataset.from_tensors({"image": image, "label": label})
    ds = data.patch_dataset(volumes, patch_size=(16, 16, 16), batch_size=4, flip_axes=(),
                            augment=AugmentConfig.only(*SPATIAL))
    x, y = (t.numpy() for t in next(iter(ds)))
    np.testing.assert_array_equal(y, (x[..., 0] >= 0.5).astype(np.uint8))
    assert y.any()


def test_rotation_on_an_anisotropic_grid_is_rigid_in_space():
    """A ball of radius 5 mm on 2 x 1 x 1 mm voxels, centred on the patch, rotated 45 degrees
    about its centre stays that ball (rotated in voxel space instead: DSC ~0.7)."""
    grid = np.indices((12, 24, 24)).transpose(1, 2, 3, 0) * np.array([2.0, 1.0, 1.0])
    label = ((((grid - np.array([11.0, 11.5, 11.5])) ** 2).sum(-1)) <= 25).astype(np.uint8)
    config = dataclasses.replace(AugmentConfig.only("rotation"), rotation_degrees=45,
                                 voxel_spacing=(2, 1, 1))
    for index in range(3):
        x, y = (t.numpy() for t in augmentation.augment(
            label.astype(np.float32)[..., None], label, config,
            augmentation.patch_seed(0, index)))
        np.testing.assert_array_equal(y, (x[..., 0] >= 0.5).astype(np.uint8))
        assert 2 * (y & label).sum() / (y.sum() + label.sum()) > 0.9


def test_probability_zero_is_the_identity():
    rng = np.random.default_rng(0)
    images = rng.normal(size=(2, 20, 20, 20, 2)).astype(np.float32)
    labels = (rng.random((2, 20, 20, 20)) > 0.95).astype(np.uint8)
    volumes = tf.data.Dataset.from_tensor_slices({"image": images, "label": labels})
    off = AugmentConfig(**{f"{n}_p": 0.0 for n in TRANSFORMS})
    assert off.enabled() == ()
    plain = data.patch_dataset(volumes, patch_size=(12, 12, 12), batch_size=2)
    augmented = data.patch_dataset(volumes, patch_size=(12, 12, 12), batch_size=2, augment=off)
    for (x0, y0), (x1, y1) in zip(plain.take(3), augmented.take(3)):
        np.testing.assert_array_equal(x0, x1)
        np.testing.assert_array_equal(y0, y1)


def test_same_batches_whatever_the_parallelism_and_after_a_resume():
    rng = np.random.default_rng(0)
    images = rng.normal(size=(3, 20, 20, 20, 1)).astype(np.float32)
    labels = (rng.random((3, 20, 20, 20)) > 0.9).astype(np.uint8)
    volumes = tf.data.Dataset.from_tensor_slices({"image": images, "label": labels})

    def run(**kwargs):
        ds = data.patch_dataset(volumes, patch_size=(12, 12, 12), batch_size=2, seed=5,
                                augment=AugmentConfig.only(*TRANSFORMS, probability=0.5),
                                **kwargs)
        return [x.numpy() for x, _ in ds.take(4 - kwargs.get("skip_batches", 0))]

    full, resumed = run(), run(num_parallel_calls=1, skip_batches=2)
    assert len(resumed) == 2
    for x0, x1 in zip(full[2:], resumed):
        np.testing.assert_array_equal(x0, x1)


def test_trilinear_sample_matches_scipy_with_the_preprocessing_edge_rule():
    """Linear inside, the edge voxel over its outer half, 0 beyond: as
    tfversky.preprocessing resamples (SciPy "nearest" where covered)."""
    volume = np.random.default_rng(0).normal(size=(5, 6, 7, 2)).astype(np.float32)
    coords = np.random.default_rng(1).uniform(-1.5, 7.5, (400, 3)).astype(np.float32)
    ours = augmentation.trilinear_sample(tf.constant(volume), tf.constant(coords)).numpy()
    covered = np.all((coords >= -0.5) & (coords < np.array(volume.shape[:3]) - 0.5), axis=1)
    assert 0 < covered.mean() < 1
    for c in range(2):
        theirs = ndimage.map_coordinates(volume[..., c], coords.T, order=1, mode="nearest")
        np.testing.assert_allclose(ours[:, c], np.where(covered, theirs, 0), atol=1e-5)


def test_intensity_transforms_stay_in_their_ranges():
    image = tf.random.stateless_uniform((12, 12, 12, 2), seed=(0, 1), minval=-2, maxval=3)
    low, high = (tf.reduce_min(image, (0, 1, 2)).numpy(), tf.reduce_max(image, (0, 1, 2)).numpy())
    for name in ("gamma", "contrast"):
        out = augmentation.intensity(image, AugmentConfig.only(name), augmentation.patch_seed(0, 0))
        assert np.all(out.numpy().min((0, 1, 2)) >= low - 1e-5), name
        assert np.all(out.numpy().max((0, 1, 2)) <= high + 1e-5), name
    ratio = augmentation.intensity(image, AugmentConfig.only("brightness"),
                                   augmentation.patch_seed(0, 0)) / image
    assert 0.75 <= float(ratio[0, 0, 0, 0]) <= 1.25
    np.testing.assert_allclose(ratio, float(ratio[0, 0, 0, 0]), rtol=1e-5)
    blurred = augmentation.intensity(image, AugmentConfig.only("blur"),
                                     augmentation.patch_seed(0, 0))
    assert float(tf.math.reduce_std(blurred)) < float(tf.math.reduce_std(image))


def test_low_resolution_is_piecewise_linear_along_one_axis():
    image = tf.random.stateless_normal((16, 16, 16, 1), seed=(0, 2))
    config = AugmentConfig.only("low_resolution")
    config = AugmentConfig(**{**config.to_dict(), "low_resolution_zoom": (0.25, 0.25)})
    out = augmentation.intensity(image, config, augmentation.patch_seed(0, 0)).numpy()[..., 0]
    # 4 kept samples on 16: linear between them, so many second differences vanish, along
    # exactly one axis (random data elsewhere).
    flat_axes = [a for a in range(3)
                 if np.mean(np.abs(np.diff(out, 2, axis=a)) < 1e-5) > 0.3]
    assert len(flat_axes) == 1


@pytest.mark.parametrize("kwargs, match", [
    ({"rotation_p": 1.5}, r"`rotation_p`.*\[0, 1\].*rotation_p=1.5"),
    ({"noise_p": -0.1}, r"`noise_p`.*noise_p=-0.1"),
    ({"rotation_degrees": -15}, r"`rotation_degrees`.*>= 0.*rotation_degrees=-15"),
    ({"scaling_range": (1.2, 0.8)}, r"`scaling_range`.*low <= high"),
    ({"blur_sigma": (0.5, 5.0)}, r"`blur_sigma`"),
    ({"low_resolution_zoom": (0.5, 2.0)}, r"`low_resolution_zoom`"),
    ({"bias_field_strength": -1}, r"`bias_field_strength`"),
    ({"voxel_spacing": (1, 0, 1)}, r"`voxel_spacing`.*3 finite sizes > 0"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AugmentConfig(**kwargs)


def test_bad_names_and_bad_hook_argument():
    with pytest.raises(ValueError, match="elastic"):
        AugmentConfig.only("elastic")
    volumes = tf.data.Dataset.from_tensors({"image": tf.zeros((8, 8, 8, 1)),
                                            "label": tf.zeros((8, 8, 8), tf.uint8)})
    with pytest.raises(ValueError, match="`augment`.*AugmentConfig"):
        data.patch_dataset(volumes, patch_size=(8, 8, 8), augment={"rotation": True})


def test_config_round_trips_through_a_dict():
    config = AugmentConfig.only("gamma", "blur", probability=0.5)
    assert AugmentConfig(**config.to_dict()) == config


def test_rotation_keeps_ignore_voxels_apart_from_lesion():
    """Issue 20's reproducer: a 16^3 patch half `ignore` (255), rotated once. Interpolating
    the values themselves and thresholding at 0.5 gave {0: 1980, 1: 2116}: ignored voxels
    became lesion. Each value is now its own mask."""
    label = np.zeros((32, 32, 32), np.uint8)
    label[:, :, :8] = 255
    image = np.zeros((32, 32, 32, 1), np.float32)
    corner, size = (8, 8, 0), (16, 16, 16)
    assert dict(zip(*np.unique(label[8:24, 8:24, :16], return_counts=True))) == {0: 2048,
                                                                                  255: 2048}
    config = AugmentConfig.only("rotation")
    for index in range(3):
        _, patch = augmentation.spatial_crop(image, label, tf.constant(corner), size, config,
                                             augmentation.patch_seed(0, index))
        values, counts = np.unique(patch.numpy(), return_counts=True)
        assert set(values) == {0, 255}, dict(zip(values, counts))
        # Rotating a plane through the patch's middle moves voxels only near that plane.
        assert abs(counts[1] - 2048) < 16 * 16 * 2


def test_label_sample_is_the_image_sampler_per_value_with_the_same_edge_rule():
    """Beyond half a voxel from the volume's edge voxels both read 0; within it, the edge
    voxel (as tfversky.preprocessing does); a 1/255 border splits at the midpoint."""
    label = np.zeros((1, 1, 4), np.uint8)
    label[..., 1], label[..., 2:] = 1, 255
    points = np.array([[0, 0, x] for x in (-0.6, -0.4, 0.4, 0.6, 1.4, 1.6, 3.4, 3.6)],
                      np.float32)
    out = augmentation.label_sample(tf.constant(label), tf.constant(points)).numpy()
    assert out.dtype == np.uint8
    assert out.tolist() == [0, 0, 0, 1, 1, 255, 255, 0]
    ones = augmentation.trilinear_sample(tf.ones((1, 1, 4, 1)), tf.constant(points)).numpy()
    assert ones.ravel().tolist() == [0, 1, 1, 1, 1, 1, 1, 0]


INTENSITY = tuple(n for n in TRANSFORMS if n not in SPATIAL)


def _strong(names, rotation_degrees=60.0, zoom=(0.6, 1.6)):
    """``names`` at probability 1, with rotations and zooms larger than nnU-Net's."""
    return dataclasses.replace(AugmentConfig.only(*names), rotation_degrees=rotation_degrees,
                               scaling_range=zoom)


def _spatial_twin(config):
    """The same config with the intensity transforms switched off: the same draws, so the
    same spatial transform, and the image stays a coordinate probe."""
    return dataclasses.replace(config, **{name: False for name in INTENSITY})


@pytest.mark.parametrize("names", [(name,) for name in TRANSFORMS] + [TRANSFORMS])
def test_each_transform_alone_and_all_together_keep_label_values(names):
    image, label = label_checks.coded_volume((10, 9, 8), np.random.default_rng(len(names)))
    config = _strong(names)
    for index in range(2):
        seed = augmentation.patch_seed(1, index)
        _, y = augmentation.augment(image, label, config, seed)
        probe, moved = augmentation.augment(image, label, _spatial_twin(config), seed)
        np.testing.assert_array_equal(y, moved)  # intensity transforms never move the label
        label_checks.check_moved(probe, moved, label)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2 ** 16), names=st.sets(st.sampled_from(TRANSFORMS), min_size=1),
       shape=st.tuples(*[st.integers(5, 11)] * 3), degrees=st.floats(0, 180),
       zoom=st.tuples(st.floats(0.5, 1), st.floats(1, 2)))
def test_label_values_survive_random_transforms_eagerly(seed, names, shape, degrees, zoom):
    """Random volumes, any set of transforms: values, ignored fraction and alignment."""
    image, label = label_checks.coded_volume(shape, np.random.default_rng(seed))
    config = _strong(names, degrees, zoom)
    _, y = augmentation.augment(image, label, config, augmentation.patch_seed(seed, 0))
    probe, moved = augmentation.augment(image, label, _spatial_twin(config),
                                        augmentation.patch_seed(seed, 0))
    np.testing.assert_array_equal(y, moved)
    label_checks.check_moved(probe, moved, label)


def test_label_values_survive_the_tf_data_pipeline():
    """The same in graph mode, through patch_dataset (tf.data): crops from whole random
    volumes, flips, then every transform at p = 0.6, several patches."""
    rng = np.random.default_rng(5)
    volumes = [label_checks.coded_volume((12, 11, 10), rng) for _ in range(3)]
    dataset = tf.data.Dataset.from_tensor_slices(
        {"image": np.stack([v[0] for v in volumes]), "label": np.stack([v[1] for v in volumes]),
         "which": np.arange(3)})
    config = dataclasses.replace(_strong(TRANSFORMS), **{f"{n}_p": 0.6 for n in TRANSFORMS})

    def patches(augment):
        # Each volume's number rides along as a fifth, constant image channel.
        tagged = dataset.map(lambda v: {"label": v["label"], "image": tf.concat(
            [v["image"], tf.cast(v["which"], tf.float32) * tf.ones_like(v["image"][..., :1])],
            -1)})
        ds = data.patch_dataset(tagged, patch_size=(6, 7, 8), batch_size=6, seed=3,
                                augment=augment)
        return [t.numpy() for t in next(iter(ds))]

    (_, y), (probe, moved) = patches(config), patches(_spatial_twin(config))
    np.testing.assert_array_equal(y, moved)
    for k in range(len(moved)):
        which = int(round(probe[k][..., 4].max()))
        label_checks.check_moved(probe[k][..., :4], moved[k], volumes[which][1])

