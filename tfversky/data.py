"""Input pipeline: whole MR volumes -> batches of random, lesion-aware, flipped 3D patches.

Training samples patches rather than whole volumes: a 128x224x256x3 volume and a 3D U-Net's
activations do not fit a batch on most devices, and patches let the sampler over-represent
the rare lesion voxels. As in nnU-Net, a set fraction of the patches is forced to contain a
lesion voxel (at a random position in the patch); the others are drawn uniformly.

    train = tfds_ms.load_dataset("ms_lesions/synthetic", "fold0")   # or any tf.data of dicts
    batches = tfversky.data.patch_dataset(train, patch_size=(64, 64, 64), batch_size=2)
    model.fit(batches, steps_per_epoch=100, epochs=10)

The pipeline (each stage a ``tf.data`` transformation):

1. volumes: the elements' ``image`` (D, H, W, C) and ``label`` (D, H, W), padded up to the
   patch size where smaller, with the coordinates of their lesion voxels; **cached in memory**,
   so each volume is read and decoded once;
2. repeat, and shuffle the volumes (seeded, reshuffled every pass);
3. one patch per volume visit, in a parallel ``map``: its random numbers come from stateless
   RNG ops keyed by (seed, patch number), so the patches are the same for the same seed
   whatever the parallelism;
4. batch, prefetch.

The module takes examples (``tf.data`` datasets of dicts or tuples) and knows no dataset
names: ``tfds_ms.load_dataset`` turns ``"ms_lesions/<config>"`` into such examples.

For evaluation, ``iterate_volumes`` yields the test split's whole volumes with what is needed
to map a prediction back onto the scan (``tfversky.preprocessing.to_native``).
"""

from __future__ import annotations

import numpy as np

from tfversky import arguments, augmentation
from tfversky._extras import require

tf = require("tensorflow", "tfversky.data")

_SEED_SALT = 0x5EED  # separates this pipeline's random streams from other users of `seed`


def _as_dict(*element):
    """A dict element, or an (image, label) tuple (which ``map`` passes as two arguments)."""
    if len(element) == 1:
        return {"image": element[0]["image"], "label": element[0]["label"]}
    image, label = element[:2]
    return {"image": image, "label": label}


def _validate(patch_size, batch_size, lesion_fraction, flip_axes):
    arguments.positive_int(batch_size, "batch_size")
    arguments.probability(lesion_fraction, "lesion_fraction")
    if not set(flip_axes) <= {0, 1, 2}:
        raise ValueError(f"Invalid value for argument `flip_axes`: expected spatial axes among "
                         f"(0, 1, 2). Received: flip_axes={flip_axes!r}")
    return arguments.patch_size(patch_size)


def _pad_to(volume, patch_size):
    """Zero-pads the three spatial axes up to ``patch_size`` (centred); larger axes untouched."""
    shape = tf.shape(volume)[:3]
    missing = tf.maximum(tf.constant(patch_size) - shape, 0)
    before = missing // 2
    paddings = tf.stack([before, missing - before], axis=1)
    extra = tf.zeros([tf.rank(volume) - 3, 2], tf.int32)
    return tf.pad(volume, tf.concat([paddings, extra], axis=0))


def _as_uint8_label(label):
    """The label as uint8, or an InvalidArgumentError (when the volume is read) for a value
    that uint8 would change: 256 would become background, -1 an ``ignore`` 255."""
    if label.dtype in (tf.uint8, tf.bool):
        return tf.cast(label, tf.uint8)
    wide = tf.cast(label, tf.float64)
    fits = tf.reduce_all((wide >= 0) & (wide <= 255) & (wide == tf.round(wide)))
    check = tf.debugging.Assert(fits, [
        "Invalid label values: expected integers in [0, 255] (0 = background, 1 = lesion, "
        "e.g. 255 = ignore); map the classes to them first. Found values from",
        tf.reduce_min(wide), "to", tf.reduce_max(wide)])
    with tf.control_dependencies([check]):
        return tf.cast(label, tf.uint8)


def is_lesion_patch(index, lesion_fraction: float):
    """Whether patch number ``index`` must contain a lesion voxel.

    Spreads exactly ``lesion_fraction`` of the patches evenly over the stream: patch n is a
    lesion patch when floor((n + 1) f) > floor(n f). With f = 0.5 and batches of 2, every
    batch holds one lesion patch (nnU-Net forces the same per batch).

    Example:

    >>> [bool(is_lesion_patch(n, 0.5)) for n in range(4)]
    [False, True, False, True]
    """
    index = tf.cast(index, tf.float64)
    return tf.floor((index + 1) * lesion_fraction) > tf.floor(index * lesion_fraction)


def _random_corner(volume_shape, patch_size, uniform):
    """Corner of a patch drawn uniformly from those that fit in the volume."""
    room = volume_shape - patch_size + 1
    return tf.minimum(tf.cast(uniform * tf.cast(room, tf.float32), tf.int32), room - 1)


def _lesion_corner(volume_shape, patch_size, voxel, uniform):
    """Corner of a patch drawn uniformly from those that fit and contain ``voxel``."""
    low = tf.maximum(voxel - patch_size + 1, 0)
    high = tf.minimum(voxel, volume_shape - patch_size)
    span = high - low + 1
    return low + tf.minimum(tf.cast(uniform * tf.cast(span, tf.float32), tf.int32), span - 1)


def patch_dataset(volumes: tf.data.Dataset, *, patch_size=(64, 64, 64), batch_size: int = 2,
                  lesion_fraction: float = 0.5, flip_axes=(0, 1, 2), seed: int = 0,
                  repeat: bool = True, skip_batches: int = 0,
                  num_parallel_calls=tf.data.AUTOTUNE, augment=None) -> tf.data.Dataset:
    """Random training patches from whole volumes, lesion-aware, with flips.

    Args:
        volumes: Dataset of whole volumes: dicts with ``image`` (D, H, W, C) float and
            ``label`` (D, H, W) integers in [0, 255], 1 = lesion (e.g. a ``ms_lesions``
            split), or (image, label) tuples. Volumes may differ in shape. Lesion patches
            are centred on label 1 only, so an ``ignore`` value (255) is never taken for a
            lesion; every transform keeps the label's values (padding adds background 0).
        patch_size: Patch (D, H, W), or an int for a cube. Volumes smaller than it are
            zero-padded.
            Defaults to (64, 64, 64).
        batch_size: Patches per batch (the global batch under a ``tf.distribute``
            strategy). Defaults to 2.
        lesion_fraction: Fraction of patches forced to contain a lesion voxel (at a random
            position in the patch); the rest are drawn uniformly over the volume. A volume
            without lesions always gives a uniform patch. Defaults to 0.5.
        flip_axes: Spatial axes that are each flipped with probability 1/2 (mirroring;
            the same flips for image and label). ``()`` disables it. Defaults to (0, 1, 2).
        seed: Seed of the volume order and of every patch's position and flips: the same
            seed gives the same batches. Defaults to 0.
        repeat: Cycle through the volumes forever (``model.fit`` with ``steps_per_epoch``);
            False gives one patch per volume. Defaults to True.
        skip_batches: Start after this many batches of the same stream, without extracting
            them: a resumed run (``keras.callbacks.BackupAndRestore``) then sees exactly the
            batches the uninterrupted run would have. Defaults to 0.
        num_parallel_calls: Parallelism of patch extraction. Defaults to ``tf.data.AUTOTUNE``.
        augment: A ``tfversky.augmentation.AugmentConfig``: rotation and scaling resample
            the patch from the whole volume, the intensity transforms follow the flips; each
            draw is keyed by (seed, patch number) like the rest. Defaults to None (flips only).

    Returns:
        Dataset of ``(image, label)`` batches: float32 (B, *patch_size, C) and uint8
        (B, *patch_size), with static shapes; the last partial batch is dropped.

    Raises:
        ValueError: for an invalid argument (named, with its value).
        tf.errors.InvalidArgumentError: when a volume is read whose label holds a value
            that is not an integer in [0, 255].

    Example:

    >>> image = tf.random.stateless_normal((2, 20, 24, 28, 3), seed=(0, 0))
    >>> label = tf.cast(tf.random.stateless_uniform((2, 20, 24, 28), (0, 1)) > 0.99, tf.uint8)
    >>> volumes = tf.data.Dataset.from_tensor_slices({"image": image, "label": label})
    >>> x, y = next(iter(patch_dataset(volumes, patch_size=(16, 16, 16), batch_size=2)))
    >>> x.shape, y.shape, y.dtype.name
    (TensorShape([2, 16, 16, 16, 3]), TensorShape([2, 16, 16, 16]), 'uint8')
    """
    patch_size = _validate(patch_size, batch_size, lesion_fraction, flip_axes)
    arguments.non_negative_int(skip_batches, "skip_batches")
    if augment is not None and not isinstance(augment, augmentation.AugmentConfig):
        raise ValueError(f"Invalid value for argument `augment`: expected None or a "
                         f"tfversky.augmentation.AugmentConfig. Received: augment={augment!r}")
    channels = volumes.element_spec["image"].shape[-1] if isinstance(
        volumes.element_spec, dict) else volumes.element_spec[0].shape[-1]
    flip_axes = sorted(set(flip_axes))

    def prepare(*element):
        element = _as_dict(*element)
        image = _pad_to(tf.cast(element["image"], tf.float32), patch_size)
        label = _pad_to(_as_uint8_label(element["label"]), patch_size)
        return {"image": image, "label": label,
                # 1 only: other values (an `ignore` label, 255) are not lesions.
                "lesions": tf.cast(tf.where(label == 1), tf.int32)}

    def extract(index, volume):
        image, label, lesions = volume["image"], volume["label"], volume["lesions"]
        draws = tf.random.stateless_uniform(
            [7], seed=tf.stack([tf.constant(seed, tf.int64) ^ _SEED_SALT, index]))
        shape, size = tf.shape(label), tf.constant(patch_size)
        count = tf.shape(lesions)[0]
        pick = tf.minimum(tf.cast(draws[0] * tf.cast(count, tf.float32), tf.int32),
                          tf.maximum(count - 1, 0))
        corner = tf.cond(
            is_lesion_patch(index, lesion_fraction) & (count > 0),
            lambda: _lesion_corner(shape, size, lesions[pick], draws[1:4]),
            lambda: _random_corner(shape, size, draws[1:4]))
        if augment is None:
            image_patch = tf.slice(image, tf.concat([corner, [0]], 0),
                                   tf.concat([size, [-1]], 0))
            label_patch = tf.slice(label, corner, size)
        else:
            augment_seed = augmentation.patch_seed(seed, index)
            image_patch, label_patch = augmentation.spatial_crop(
                image, label, corner, patch_size, augment, augment_seed)
        if flip_axes:
            flips = tf.boolean_mask(tf.constant(flip_axes), draws[4:4 + len(flip_axes)] < 0.5)
            image_patch = tf.reverse(image_patch, flips)
            label_patch = tf.reverse(label_patch, flips)
        image_patch = tf.ensure_shape(image_patch, (*patch_size, channels))
        label_patch = tf.ensure_shape(label_patch, patch_size)
        if augment is not None:
            image_patch = augmentation.intensity(image_patch, augment, augment_seed)
        return image_patch, label_patch

    cached = volumes.map(prepare, num_parallel_calls=num_parallel_calls).cache()
    count = int(cached.cardinality())
    # Shuffling references to cached tensors copies nothing, so the buffer can hold them all.
    buffer = count if count > 0 else 64
    stream = cached.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        stream = stream.repeat()
    # Skipped before `extract`: passing over a cached volume reference costs nothing.
    stream = stream.enumerate().skip(skip_batches * batch_size)
    stream = stream.map(extract, num_parallel_calls=num_parallel_calls, deterministic=True)
    options = tf.data.Options()
    # The stream is endless and not file-based: under multi-worker strategies shard by element.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return (stream.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
            .with_options(options))


def iterate_volumes(dataset: tf.data.Dataset):
    """Yields a split's whole volumes as NumPy, for inference and evaluation.

    Args:
        dataset: Whole volumes, unbatched, e.g. a ``ms_lesions`` split
            (``tfds_ms.load_dataset``).

    Yields:
        dicts with ``image`` (D, H, W, C) float32, ``label`` (D, H, W) uint8, ``subject`` and
        ``scan_id`` (str), ``grid_affine`` (the volume's affine), ``affine`` and ``shape``
        (the original scan's), as ``tfversky.preprocessing.to_native`` takes them.

    Example:

    >>> ds = tf.data.Dataset.from_tensors({"image": tf.zeros((4, 4, 4, 3)),
    ...     "label": tf.zeros((4, 4, 4), tf.uint8), "subject": "s1"})
    >>> [v["subject"] for v in iterate_volumes(ds)]
    ['s1']
    """
    for element in dataset.as_numpy_iterator():
        yield {key: value.decode() if isinstance(value, bytes) else value
               for key, value in element.items()}


def fold_splits(test_fold: int, num_folds: int = 2) -> tuple[str, str]:
    """TFDS split strings (train, test) for cross-validation on ``ms_lesions``' folds.

    Example:

    >>> fold_splits(1)
    ('fold0', 'fold1')
    >>> fold_splits(0, num_folds=3)
    ('fold1+fold2', 'fold0')
    """
    if not isinstance(test_fold, (int, np.integer)) or not 0 <= test_fold < num_folds:
        raise ValueError(f"Invalid value for argument `test_fold`: expected an integer in "
                         f"[0, {num_folds}). Received: test_fold={test_fold!r}")
    train = "+".join(f"fold{k}" for k in range(num_folds) if k != test_fold)
    return train, f"fold{test_fold}"
