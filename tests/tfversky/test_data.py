"""The patch pipeline: shapes, lesion-aware sampling, flips, determinism, distribution."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from tfversky import data

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _volumes(count=3, shape=(24, 28, 32), lesion_voxels=1, seed=0):
    """Random images; each label has `lesion_voxels` lesion voxels at random places."""
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(count, *shape, 3)).astype(np.float32)
    labels = np.zeros((count, *shape), np.uint8)
    for label in labels:
        flat = rng.choice(label.size, lesion_voxels, replace=False)
        label.ravel()[flat] = 1
    return tf.data.Dataset.from_tensor_slices({"image": images, "label": labels})


def _take(dataset, batches):
    return [(x.numpy(), y.numpy()) for x, y in dataset.take(batches)]


@pytest.mark.parametrize("patch_size", [(16, 16, 16), (8, 12, 20), (32, 32, 40)])
def test_patch_shapes_and_dtypes(patch_size):
    ds = data.patch_dataset(_volumes(), patch_size=patch_size, batch_size=3)
    assert ds.element_spec[0].shape == (3, *patch_size, 3)
    assert ds.element_spec[1].shape == (3, *patch_size)
    (x, y), = _take(ds, 1)
    assert x.dtype == np.float32 and y.dtype == np.uint8
    assert x.shape == (3, *patch_size, 3)


def test_volumes_smaller_than_the_patch_are_zero_padded():
    (x, y), = _take(data.patch_dataset(_volumes(shape=(6, 6, 6)), patch_size=(8, 8, 8),
                                       flip_axes=()), 1)
    assert np.count_nonzero(x[0].any(-1)) == 6 ** 3


def test_tuples_and_other_shapes_accepted():
    images = tf.zeros((2, 10, 12, 14, 2))
    labels = tf.ones((2, 10, 12, 14), tf.int64)
    ds = tf.data.Dataset.from_tensor_slices((images, labels))
    (x, y), = _take(data.patch_dataset(ds, patch_size=(8, 8, 8), batch_size=2), 1)
    assert x.shape == (2, 8, 8, 8, 2) and y.dtype == np.uint8 and y.all()


@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.5, 1.0])
def test_lesion_fraction(fraction):
    """A single lesion voxel per 24x28x32 volume: random 8^3 patches almost never hold it."""
    ds = data.patch_dataset(_volumes(), patch_size=(8, 8, 8), batch_size=4,
                            lesion_fraction=fraction)
    batches = _take(ds, 10)
    has_lesion = np.concatenate([y.reshape(4, -1).any(1) for _, y in batches])
    forced = np.array([bool(data.is_lesion_patch(n, fraction)) for n in range(40)])
    assert forced.mean() == fraction
    assert has_lesion[forced].all()
    assert has_lesion.mean() <= fraction + 0.15


def test_half_of_every_batch_of_two_holds_lesion():
    batches = _take(data.patch_dataset(_volumes(), patch_size=(8, 8, 8), batch_size=2), 6)
    assert all(y[1].any() for _, y in batches)


def test_volume_without_lesions_gives_random_patches():
    (x, y), = _take(data.patch_dataset(_volumes(lesion_voxels=0), patch_size=(8, 8, 8),
                                       lesion_fraction=1.0), 1)
    assert not y.any() and x.shape == (2, 8, 8, 8, 3)


def _coordinate_volume(shape=(4, 6, 8)):
    """Channel k of the image holds the voxel's index along axis k; the label marks x == 0."""
    grid = np.stack(np.meshgrid(*map(np.arange, shape), indexing="ij"), -1).astype(np.float32)
    label = (grid[..., 0] == 0).astype(np.uint8)
    return tf.data.Dataset.from_tensors({"image": grid, "label": label}), grid


def test_flips_mirror_image_and_label_together():
    ds, grid = _coordinate_volume()
    batches = _take(data.patch_dataset(ds, patch_size=grid.shape[:3], batch_size=1,
                                       lesion_fraction=0.0, seed=1), 32)
    seen = {axis: set() for axis in range(3)}
    for x, y in batches:
        patch = x[0]
        for axis in range(3):
            index = np.moveaxis(patch[..., axis], axis, 0)[:, 0, 0]
            flipped = bool(index[0] > index[-1])
            seen[axis].add(flipped)
        np.testing.assert_array_equal(y[0], (patch[..., 0] == 0).astype(np.uint8))
    assert all(s == {False, True} for s in seen.values())


def test_no_flips_when_disabled():
    ds, grid = _coordinate_volume()
    for x, _ in _take(data.patch_dataset(ds, patch_size=grid.shape[:3], batch_size=1,
                                         flip_axes=()), 8):
        np.testing.assert_array_equal(x[0], grid)


def test_flip_only_left_right():
    ds, grid = _coordinate_volume()
    for x, _ in _take(data.patch_dataset(ds, patch_size=grid.shape[:3], batch_size=1,
                                         flip_axes=(0,)), 8):
        np.testing.assert_array_equal(x[0][..., 1:], grid[..., 1:])


def test_same_seed_same_batches_other_seed_other_batches():
    def run(seed):
        return _take(data.patch_dataset(_volumes(), patch_size=(8, 8, 8), batch_size=2,
                                        seed=seed), 6)

    first, again, other = run(7), run(7), run(8)
    for (x1, y1), (x2, y2) in zip(first, again):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    assert any(not np.array_equal(a[0], b[0]) for a, b in zip(first, other))


def test_skip_batches_continues_the_same_stream():
    def run(**kwargs):
        return _take(data.patch_dataset(_volumes(), patch_size=(8, 8, 8), batch_size=2, seed=3,
                                        **kwargs), 5)

    full, resumed = run(), run(skip_batches=2)
    for (x1, y1), (x2, y2) in zip(full[2:], resumed):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)


def test_without_repeat_one_patch_per_volume():
    ds = data.patch_dataset(_volumes(count=5), patch_size=(8, 8, 8), batch_size=1, repeat=False)
    assert len(list(ds)) == 5


@pytest.mark.parametrize("kwargs, match", [
    ({"patch_size": (8, 8)}, "patch_size"),
    ({"patch_size": (8, 0, 8)}, "patch_size"),
    ({"batch_size": 0}, "batch_size"),
    ({"lesion_fraction": 1.5}, "lesion_fraction"),
    ({"flip_axes": (3,)}, "flip_axes"),
    ({"skip_batches": -1}, "skip_batches"),
])
def test_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=f"argument `{match}`"):
        data.patch_dataset(_volumes(), **kwargs)


def test_iterate_volumes_and_fold_splits():
    ds = tf.data.Dataset.from_tensors({"image": tf.zeros((4, 4, 4, 3)),
                                       "label": tf.zeros((4, 4, 4), tf.uint8),
                                       "subject": "center01_patient01",
                                       "grid_affine": tf.eye(4, dtype=tf.float64)})
    volume, = data.iterate_volumes(ds)
    assert volume["subject"] == "center01_patient01" and volume["image"].shape == (4, 4, 4, 3)
    assert data.fold_splits(0) == ("fold1", "fold0")
    assert data.fold_splits(2, num_folds=4) == ("fold0+fold1+fold3", "fold2")
    with pytest.raises(ValueError, match="argument `test_fold`"):
        data.fold_splits(2)


MIRRORED = textwrap.dedent("""
    import json
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from tfversky import data

    images = np.random.default_rng(0).normal(size=(3, 16, 16, 16, 3)).astype(np.float32)
    labels = (images[..., 0] > 2).astype(np.uint8)
    volumes = tf.data.Dataset.from_tensor_slices({"image": images, "label": labels})
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    dist = strategy.experimental_distribute_dataset(
        data.patch_dataset(volumes, patch_size=(8, 8, 8), batch_size=4))

    @tf.function
    def step(batch):
        x, y = batch
        return strategy.run(lambda x, y: tf.stack([tf.cast(tf.shape(x)[0], tf.float32),
                                                   tf.reduce_sum(tf.cast(y, tf.float32))]),
                            args=(x, y))

    iterator = iter(dist)
    shapes = []
    for _ in range(3):
        per_replica = strategy.experimental_local_results(step(next(iterator)))
        shapes.append([int(r[0]) for r in per_replica])
    print(json.dumps({"replicas": strategy.num_replicas_in_sync, "shapes": shapes}))
""")


def test_mirrored_strategy_with_two_cpu_replicas():
    """In a subprocess: logical devices must be configured before TF starts its runtime."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run([sys.executable, "-c", MIRRORED], capture_output=True, text=True,
                            env=env, timeout=240, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"replicas": 2, "shapes": [[2, 2]] * 3}


IMPORT_ALL = """
import importlib, json, pkgutil, sys
import tfversky
for module in pkgutil.iter_modules(tfversky.__path__):
    importlib.import_module("tfversky." + module.name)
print(json.dumps(sorted(name for name in sys.modules
                        if name.split(".")[0] in ("tfds_ms", "tensorflow_datasets"))))
"""


def test_the_core_imports_no_adapter():
    """tfversky and every one of its modules load without the builder (or TFDS) behind them."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run([sys.executable, "-c", IMPORT_ALL], capture_output=True, text=True,
                            env=env, timeout=240, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


def test_patches_centre_on_lesions_not_on_ignored_voxels():
    label = np.zeros((2, 24, 24, 24), np.uint8)
    label[:, 2, 2, 2] = 1
    label[:, 12:, 12:, 12:] = 255  # an `ignore` region far larger than the lesion
    volumes = tf.data.Dataset.from_tensor_slices(
        {"image": tf.zeros((2, 24, 24, 24, 1)), "label": label})
    batches = data.patch_dataset(volumes, patch_size=(8, 8, 8), batch_size=2, lesion_fraction=1.0,
                                 flip_axes=())
    for _, y in batches.take(4):
        assert (y.numpy() == 1).any(axis=(1, 2, 3)).all()


@pytest.mark.parametrize("value", [256, -1, 0.5])
def test_labels_that_uint8_would_change_are_refused(value):
    """256 would become background and -1 an ignore 255: refused when the volume is read."""
    label = np.zeros((8, 8, 8), np.float32 if value == 0.5 else np.int32)
    label[2, 2, 2] = value
    volumes = tf.data.Dataset.from_tensors({"image": tf.zeros((8, 8, 8, 1)), "label": label})
    ds = data.patch_dataset(volumes, patch_size=(8, 8, 8), batch_size=1)
    with pytest.raises(tf.errors.InvalidArgumentError, match="integers in \\[0, 255\\]"):
        next(iter(ds))
