"""Data augmentation of 3D training patches, in the ``tf.data`` pipeline (CPU threads).

nnU-Net's default set, plus a bias field (as TorchIO's ``RandomBiasField``), each transform
with its own switch and probability in ``AugmentConfig``:

* spatial, image trilinear and the label's values kept: **rotation** about the three axes
  (+-15 degrees) and isotropic **scaling** (0.85-1.15);
* intensity, image only: **gamma**, multiplicative **brightness**, **contrast**, Gaussian
  **noise**, Gaussian **blur**, a smooth multiplicative **bias field**, and simulated **low
  resolution** (down- then up-sampling along one random axis, as a thick-slice scan).

The spatial transforms resample the *whole volume* around the patch's centre (as nnU-Net
does), so a rotated patch is filled with real neighbouring tissue rather than with corners
of zeros. The label is resampled with the same trilinear weights as the image, each of its
values as its own mask (``label_sample``): a voxel takes the value whose mask reaches 0.5,
so the label keeps its values (0, lesion, an ``ignore`` 255: no 255 becomes a 1) and stays
aligned with the image voxel for voxel. Outside the volume both read 0 (background).

Every random number of patch ``n`` comes from stateless RNG ops keyed by (seed, n)
(``patch_seed``), like the patch positions in ``tfversky.data``, so the same seed gives the
same augmented batches whatever the parallelism, and a resumed run sees the same batches.

    batches = tfversky.data.patch_dataset(train, patch_size=(64, 64, 64),
                                          augment=tfversky.augmentation.AugmentConfig())

Intensity transforms assume the training data's normalisation (z-scored brain, 0 outside):
brightness and noise are in those units.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np

from tfversky._extras import require

tf = require("tensorflow", "tfversky.augmentation")

_SEED_SALT = 0xA06  # separates the augmentation's random streams from the patch positions'

TRANSFORMS = ("rotation", "scaling", "gamma", "brightness", "contrast", "noise", "blur",
              "bias_field", "low_resolution")

_MAX_BLUR_SIGMA = 3.0  # the blur kernel has a static radius of 3 sigma


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Which augmentations run, how often, and how strongly. Defaults follow nnU-Net.

    Each transform ``t`` has a switch ``t`` (bool), a probability ``t_p`` (per patch) and
    its range. A transform is applied to a patch when its switch is on and a uniform draw
    falls below its probability; its parameters are then drawn uniformly from the range.

    Args:
        rotation, rotation_p, rotation_degrees: Rotation about each of the three axes by an
            angle in [-rotation_degrees, rotation_degrees]. Defaults to True, 0.2, 15.
        voxel_spacing: The grid's voxel size (any unit), so that rotations are rigid in
            space on an anisotropic grid (e.g. ``ms_lesions/synthetic_lowres``'s
            (2.5, 1.8, 1.5) mm). Defaults to (1, 1, 1).
        scaling, scaling_p, scaling_range: Isotropic zoom by a factor in the range (> 1
            enlarges structures). Defaults to True, 0.2, (0.85, 1.15).
        gamma, gamma_p, gamma_range: Per channel, intensities mapped to [0, 1] over the
            patch, raised to gamma, mapped back. Defaults to True, 0.3, (0.7, 1.5).
        brightness, brightness_p, brightness_range: Intensities times a factor. Defaults to
            True, 0.15, (0.75, 1.25).
        contrast, contrast_p, contrast_range: Per channel, deviations from the mean times a
            factor, clipped to the original range. Defaults to True, 0.15, (0.75, 1.25).
        noise, noise_p, noise_std: Additive Gaussian noise, its standard deviation drawn
            from the range. Defaults to True, 0.1, (0.0, 0.1).
        blur, blur_p, blur_sigma: Gaussian blur, sigma in voxels drawn from the range (at
            most 3). Defaults to True, 0.2, (0.5, 1.0).
        bias_field, bias_field_p, bias_field_strength: Multiplicative field exp(q), q a
            random quadratic polynomial of the normalised coordinates whose coefficients
            have standard deviation ``bias_field_strength``. Defaults to True, 0.15, 0.3.
        low_resolution, low_resolution_p, low_resolution_zoom: Along one random axis, keep
            a fraction (drawn from the range) of the samples (nearest), then interpolate
            back linearly. Defaults to True, 0.25, (0.5, 1.0).

    Raises:
        ValueError: a probability outside [0, 1], a negative rotation range, a range whose
            low end exceeds its high end or leaves its allowed interval (named, with the
            value and the fix).

    Example:

    >>> AugmentConfig().enabled()
    ('rotation', 'scaling', 'gamma', 'brightness', 'contrast', 'noise', 'blur', 'bias_field', 'low_resolution')
    >>> AugmentConfig.only("rotation", "noise", probability=1.0).enabled()
    ('rotation', 'noise')
    """

    rotation: bool = True
    rotation_p: float = 0.2
    rotation_degrees: float = 15.0
    voxel_spacing: tuple = (1.0, 1.0, 1.0)
    scaling: bool = True
    scaling_p: float = 0.2
    scaling_range: tuple = (0.85, 1.15)
    gamma: bool = True
    gamma_p: float = 0.3
    gamma_range: tuple = (0.7, 1.5)
    brightness: bool = True
    brightness_p: float = 0.15
    brightness_range: tuple = (0.75, 1.25)
    contrast: bool = True
    contrast_p: float = 0.15
    contrast_range: tuple = (0.75, 1.25)
    noise: bool = True
    noise_p: float = 0.1
    noise_std: tuple = (0.0, 0.1)
    blur: bool = True
    blur_p: float = 0.2
    blur_sigma: tuple = (0.5, 1.0)
    bias_field: bool = True
    bias_field_p: float = 0.15
    bias_field_strength: float = 0.3
    low_resolution: bool = True
    low_resolution_p: float = 0.25
    low_resolution_zoom: tuple = (0.5, 1.0)

    def __post_init__(self):
        for name in TRANSFORMS:
            p = getattr(self, f"{name}_p")
            if not isinstance(p, (int, float, np.number)) or not 0 <= p <= 1:
                raise ValueError(
                    f"Invalid value for argument `{name}_p`: expected a probability in [0, 1] "
                    f"(0 turns {name} off). Received: {name}_p={p!r}")
        if not np.isfinite(self.rotation_degrees) or self.rotation_degrees < 0:
            raise ValueError(
                f"Invalid value for argument `rotation_degrees`: expected a finite angle "
                f">= 0 (rotations are drawn from [-rotation_degrees, rotation_degrees]). "
                f"Received: rotation_degrees={self.rotation_degrees!r}")
        if not np.isfinite(self.bias_field_strength) or self.bias_field_strength < 0:
            raise ValueError(
                f"Invalid value for argument `bias_field_strength`: expected a finite number "
                f">= 0 (e.g. 0.3). Received: bias_field_strength={self.bias_field_strength!r}")
        try:
            spacing = tuple(float(v) for v in self.voxel_spacing)
        except (TypeError, ValueError):
            spacing = ()
        if len(spacing) != 3 or not all(np.isfinite(v) and v > 0 for v in spacing):
            raise ValueError(
                f"Invalid value for argument `voxel_spacing`: expected 3 finite sizes > 0 "
                f"(D, H, W). Received: voxel_spacing={self.voxel_spacing!r}")
        object.__setattr__(self, "voxel_spacing", spacing)
        allowed = {"scaling_range": (1e-3, math.inf), "gamma_range": (1e-3, math.inf),
                   "brightness_range": (0, math.inf), "contrast_range": (0, math.inf),
                   "noise_std": (0, math.inf), "blur_sigma": (0, _MAX_BLUR_SIGMA),
                   "low_resolution_zoom": (1e-3, 1)}
        for field, (floor, ceiling) in allowed.items():
            value = getattr(self, field)
            try:
                low, high = (float(v) for v in value)
            except (TypeError, ValueError):
                low, high = math.nan, math.nan
            if not floor <= low <= high <= ceiling:
                raise ValueError(
                    f"Invalid value for argument `{field}`: expected (low, high) with "
                    f"{floor} <= low <= high <= {ceiling}. Received: {field}={value!r}")
            object.__setattr__(self, field, (low, high))

    @classmethod
    def only(cls, *names: str, probability: float = 1.0) -> "AugmentConfig":
        """A config with just ``names`` on, each at ``probability`` (e.g. for a CLI flag).

        Raises:
            ValueError: for a name that is not in ``TRANSFORMS``.
        """
        unknown = [n for n in names if n not in TRANSFORMS]
        if unknown:
            raise ValueError(f"Invalid augmentation name(s) {unknown}: expected names among "
                             f"{TRANSFORMS}.")
        settings = {}
        for name in TRANSFORMS:
            settings[name] = name in names
            settings[f"{name}_p"] = probability
        return cls(**settings)

    def enabled(self) -> tuple[str, ...]:
        """The transforms that can fire: switched on with a probability above 0."""
        return tuple(n for n in TRANSFORMS if getattr(self, n) and getattr(self, f"{n}_p") > 0)

    def to_dict(self) -> dict:
        """Plain JSON-ready values (``AugmentConfig(**d)`` rebuilds it)."""
        return {k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(self).items()}


def patch_seed(seed, index):
    """The stateless seed of patch ``index``'s augmentation: a pure function of both.

    Example:

    >>> patch_seed(0, 3).numpy().tolist() == patch_seed(0, 3).numpy().tolist()
    True
    """
    return tf.stack([tf.cast(seed, tf.int64) ^ _SEED_SALT, tf.cast(index, tf.int64)])


def _draws(config: AugmentConfig, seed):
    """Per transform: (fires, a stateless seed for its parameters)."""
    seeds = tf.random.stateless_uniform([len(TRANSFORMS) + 1, 2], seed=seed, minval=None,
                                        maxval=None, dtype=tf.int64)
    gates = tf.random.stateless_uniform([len(TRANSFORMS)], seed=seeds[-1])
    return {name: (gates[k] < getattr(config, f"{name}_p") if getattr(config, name)
                   else tf.constant(False), seeds[k])
            for k, name in enumerate(TRANSFORMS)}


def _uniform(seed, low, high, shape=()):
    return tf.random.stateless_uniform(shape, seed=seed, minval=low, maxval=high)


# --- spatial --------------------------------------------------------------------------------


def _rotation_matrix(angles):
    """R = Rx(a) Ry(b) Rz(c) for angles (3,) in radians."""
    cos, sin = tf.cos(angles), tf.sin(angles)
    one, zero = tf.ones(()), tf.zeros(())
    rx = tf.stack([[one, zero, zero], [zero, cos[0], -sin[0]], [zero, sin[0], cos[0]]])
    ry = tf.stack([[cos[1], zero, sin[1]], [zero, one, zero], [-sin[1], zero, cos[1]]])
    rz = tf.stack([[cos[2], -sin[2], zero], [sin[2], cos[2], zero], [zero, zero, one]])
    return rx @ ry @ rz


def _neighbours(shape, coords):
    """The 8 neighbours of each point of ``coords`` (N, 3) in a volume of ``shape`` (3,):
    [(flat index (N,), trilinear weight (N,))], and which points the volume covers (N,).

    The edge rule of ``tfversky.preprocessing.resample_to_grid``: the voxels fill the
    volume's field of view, so a point up to half a voxel beyond an edge voxel's centre
    reads that voxel (indices clamped), and a point further out is not covered.
    """
    base = tf.floor(coords)
    frac = coords - base
    base = tf.cast(base, tf.int32)
    size = tf.cast(shape, tf.float32)
    covered = tf.reduce_all((coords >= -0.5) & (coords < size - 0.5), axis=1)
    axes = [[(tf.clip_by_value(index, 0, shape[axis] - 1), weight)
             for index, weight in ((base[:, axis], 1 - frac[:, axis]),
                                   (base[:, axis] + 1, frac[:, axis]))]
            for axis in range(3)]
    return [((z * shape[1] + y) * shape[2] + x, wz * wy * wx)
            for (z, wz), (y, wy), (x, wx) in itertools.product(*axes)], covered


def trilinear_sample(volume, coords):
    """Trilinear interpolation of ``volume`` (D, H, W, C) at ``coords`` (N, 3) -> (N, C).

    Points outside the volume's field of view read 0 (the background of normalised scans);
    within half a voxel of an edge voxel's centre they read that voxel (the edge rule of
    ``tfversky.preprocessing.resample_to_grid``). Any dtype is read (gathered in its own
    dtype, not cast as a whole volume); float32 comes out.

    Example:

    >>> v = tf.reshape(tf.range(8, dtype=tf.float32), (2, 2, 2, 1))
    >>> points = tf.constant([[0.5, 0.5, 0.5], [0.0, 0.0, 1.0], [0.0, 0.0, 1.4], [0, 0, 1.6]])
    >>> trilinear_sample(v, points).numpy().ravel()
    array([3.5, 1. , 1. , 0. ], dtype=float32)
    """
    flat = tf.reshape(volume, [-1, tf.shape(volume)[-1]])
    neighbours, covered = _neighbours(tf.shape(volume)[:3], coords)
    out = 0.0
    for index, weight in neighbours:
        out += tf.cast(tf.gather(flat, index), tf.float32) * weight[:, None]
    return out * tf.cast(covered, tf.float32)[:, None]


def label_sample(label, coords):
    """The label map ``label`` (D, H, W) at ``coords`` (N, 3) -> (N,), in its own dtype.

    Each value is interpolated as its own 0/1 mask (the trilinear weights of the neighbours
    that hold it), never as a number: a point takes the non-zero value whose mask reaches
    0.5, else 0 (the smaller value on a tie, so a lesion keeps a voxel it shares with an
    ``ignore`` 255). Only the label's own values and 0 come out. For a binary label this is
    ``trilinear_sample(label) >= 0.5`` exactly, with the same weights as the image's.
    Points outside the volume's field of view read 0 (background).

    Example:

    >>> label = tf.constant([0, 1, 255, 255], tf.uint8)[None, None, :]
    >>> points = tf.constant([[0, 0, 0.6], [0, 0, 1.5], [0, 0, 2.2], [0, 0, 3.6]])
    >>> label_sample(label, points).numpy().tolist()
    [1, 1, 255, 0]
    """
    flat = tf.reshape(label, [-1])
    neighbours, covered = _neighbours(tf.shape(label), coords)
    values = [tf.cast(tf.gather(flat, index), tf.int32) for index, _ in neighbours]
    # Most points read one value from all 8 neighbours (its mask is 1 there): only the
    # others, at a border, are put to the vote.
    mixed = tf.where(tf.reduce_any(tf.stack([v != values[0] for v in values[1:]]), 0))
    votes = [(tf.gather_nd(v, mixed), tf.gather_nd(w, mixed))
             for v, (_, w) in zip(values, neighbours)]
    none = 256  # above every uint8 value: "no value reaches 0.5"
    best = tf.fill(tf.shape(mixed)[:1], none)
    for value, _ in votes:
        # Summed in the order trilinear_sample sums, so a binary label matches the image.
        share = 0.0
        for other, weight in votes:
            share += weight * tf.cast(other == value, tf.float32)
        best = tf.minimum(best, tf.where((share >= 0.5) & (value != 0), value, none))
    out = tf.tensor_scatter_nd_update(values[0], mixed, tf.where(best == none, 0, best))
    return tf.cast(tf.where(covered, out, 0), label.dtype)


def spatial_crop(image, label, corner, patch_size, config: AugmentConfig, seed):
    """The patch at ``corner``, rotated and scaled about its centre when those fire.

    Args:
        image: (D, H, W, C) float32 whole volume.
        label: (D, H, W) uint8 whole volume.
        corner: (3,) int32 corner of the unaugmented patch.
        patch_size: Static (d, h, w).
        config: The augmentation config.
        seed: ``patch_seed(seed, index)``.

    Returns:
        (image_patch (d, h, w, C) float32, label_patch (d, h, w) uint8).
    """
    draws = _draws(config, seed)
    rotate, rotate_seed = draws["rotation"]
    scale, scale_seed = draws["scaling"]
    size = tf.constant(patch_size)

    def plain():
        return (tf.slice(image, tf.concat([corner, [0]], 0), tf.concat([size, [-1]], 0)),
                tf.slice(label, corner, size))

    def resampled():
        limit = math.radians(config.rotation_degrees)
        angles = tf.where(rotate, _uniform(rotate_seed, -limit, limit, [3]), tf.zeros([3]))
        zoom = tf.where(scale, _uniform(scale_seed, *config.scaling_range), 1.0)
        # Voxel offsets -> space (times the spacing), rotate, back to voxels.
        spacing = tf.constant(config.voxel_spacing, tf.float32)
        matrix = (_rotation_matrix(angles) * spacing[None, :] / spacing[:, None]) / zoom
        offsets = np.stack(np.meshgrid(*(np.arange(p) - (p - 1) / 2 for p in patch_size),
                                       indexing="ij"), -1).reshape(-1, 3).astype(np.float32)
        centre = tf.cast(corner, tf.float32) + (tf.cast(size, tf.float32) - 1) / 2
        coords = centre + tf.constant(offsets) @ tf.transpose(matrix)
        image_patch = tf.reshape(trilinear_sample(image, coords),
                                 tf.concat([size, tf.shape(image)[-1:]], 0))
        return image_patch, tf.reshape(label_sample(label, coords), size)

    return tf.cond(rotate | scale, resampled, plain)


# --- intensity ------------------------------------------------------------------------------


def _channel_range(image):
    return (tf.reduce_min(image, axis=(0, 1, 2)), tf.reduce_max(image, axis=(0, 1, 2)))


def _gamma(image, seed, config):
    gamma = _uniform(seed, *config.gamma_range)
    low, high = _channel_range(image)
    span = tf.maximum(high - low, 1e-7)
    return tf.pow((image - low) / span, gamma) * span + low


def _contrast(image, seed, config):
    factor = _uniform(seed, *config.contrast_range)
    low, high = _channel_range(image)
    mean = tf.reduce_mean(image, axis=(0, 1, 2))
    return tf.clip_by_value((image - mean) * factor + mean, low, high)


def _noise(image, seed, config):
    std_seed, noise_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    std = _uniform(std_seed, *config.noise_std)
    return image + std * tf.random.stateless_normal(tf.shape(image), seed=noise_seed)


def _blur(image, seed, config):
    sigma = _uniform(seed, *config.blur_sigma)
    radius = int(math.ceil(3 * config.blur_sigma[1]))
    if radius == 0:
        return image
    taps = tf.exp(-0.5 * (tf.range(-radius, radius + 1, dtype=tf.float32)
                          / tf.maximum(sigma, 1e-3)) ** 2)
    taps /= tf.reduce_sum(taps)
    # Channels into the batch axis: one single-channel separable convolution per axis.
    x = tf.transpose(image, (3, 0, 1, 2))[..., None]
    for axis in range(3):
        kernel_shape = [1, 1, 1, 1, 1]
        kernel_shape[axis] = 2 * radius + 1
        paddings = [[0, 0]] * 5
        paddings[axis + 1] = [radius, radius]
        # Mirrored edges: zero padding would darken the patch's faces.
        x = tf.nn.conv3d(tf.pad(x, paddings, mode="SYMMETRIC"), tf.reshape(taps, kernel_shape),
                         strides=[1] * 5, padding="VALID")
    return tf.transpose(x[..., 0], (1, 2, 3, 0))


def _bias_field(image, seed, config):
    coefficients = config.bias_field_strength * tf.random.stateless_normal([9], seed=seed)
    shape = image.shape[:3]
    x, y, z = (tf.reshape(tf.linspace(-1.0, 1.0, n), [n if a == b else 1 for b in range(3)])
               for a, n in enumerate(shape))
    terms = (x, y, z, x * x, y * y, z * z, x * y, x * z, y * z)
    log_field = sum(c * t for c, t in zip(tf.unstack(coefficients), terms))
    return image * tf.exp(log_field)[..., None]


def _resample_axis(x, axis: int, length: int, zoom):
    """Nearest down-sampling of ``axis`` to round(length * zoom) samples, linear back up."""
    count = tf.maximum(tf.cast(tf.round(length * zoom), tf.int32), 1)
    down = tf.cast(tf.floor((tf.range(count, dtype=tf.float32) + 0.5) * length
                            / tf.cast(count, tf.float32)), tf.int32)
    coarse = tf.gather(x, tf.minimum(down, length - 1), axis=axis)
    source = tf.clip_by_value((tf.range(length, dtype=tf.float32) + 0.5)
                              * tf.cast(count, tf.float32) / length - 0.5,
                              0.0, tf.cast(count - 1, tf.float32))
    low = tf.cast(tf.floor(source), tf.int32)
    high = tf.minimum(low + 1, count - 1)
    weight_shape = [1, 1, 1, 1]
    weight_shape[axis] = length
    weight = tf.reshape(source - tf.cast(low, tf.float32), weight_shape)
    return (tf.gather(coarse, low, axis=axis) * (1 - weight)
            + tf.gather(coarse, high, axis=axis) * weight)


def _low_resolution(image, seed, config):
    axis_seed, zoom_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    axis = tf.random.stateless_uniform((), seed=axis_seed, maxval=3, dtype=tf.int32)
    zoom = _uniform(zoom_seed, *config.low_resolution_zoom)
    return tf.switch_case(axis, [
        (lambda a=a: _resample_axis(image, a, image.shape[a], zoom)) for a in range(3)])


# nnU-Net's order: noise, blur, brightness, contrast, low resolution, gamma; the bias field
# (a scanner property, like contrast) before the noise (which it would otherwise scale).
_INTENSITY = (("bias_field", _bias_field), ("noise", _noise), ("blur", _blur),
              ("brightness", lambda x, s, c: x * _uniform(s, *c.brightness_range)),
              ("contrast", _contrast), ("low_resolution", _low_resolution), ("gamma", _gamma))


def intensity(image, config: AugmentConfig, seed):
    """The intensity transforms that fire for this seed, applied to one patch.

    Args:
        image: (d, h, w, C) float32 patch with a static shape.
        config: The augmentation config.
        seed: ``patch_seed(seed, index)``.

    Returns:
        The augmented patch, same shape.
    """
    draws = _draws(config, seed)
    for name, transform in _INTENSITY:
        if name in config.enabled():
            fires, transform_seed = draws[name]
            image = tf.cond(fires, lambda t=transform, s=transform_seed: t(image, s, config),
                            lambda: image)
            image = tf.ensure_shape(image, image.shape)
    return image


def augment(image, label, config: AugmentConfig, seed):
    """Augments one patch (image (d, h, w, C), label (d, h, w)): spatial, then intensity.

    The whole-volume path of ``tfversky.data.patch_dataset`` calls ``spatial_crop`` and
    ``intensity`` itself; this one treats the patch as the volume (zeros come in from
    outside where it is rotated).

    Args:
        image: (d, h, w, C) float patch, static shape.
        label: (d, h, w) integer patch.
        config: The augmentation config.
        seed: ``patch_seed(seed, index)`` or any stateless (2,) int seed.

    Returns:
        (image float32 (d, h, w, C), label uint8 (d, h, w)).

    Example:

    >>> image = tf.random.stateless_normal((8, 8, 8, 1), seed=(0, 0))
    >>> label = tf.cast(image[..., 0] > 1, tf.uint8)
    >>> x, y = augment(image, label, AugmentConfig.only("rotation"), patch_seed(0, 0))
    >>> x.shape, sorted(np.unique(y.numpy()).tolist())
    (TensorShape([8, 8, 8, 1]), [0, 1])
    """
    image = tf.convert_to_tensor(image, tf.float32)
    label = tf.cast(label, tf.uint8)
    patch_size, channels = tuple(image.shape[:3]), image.shape[-1]
    image, label = spatial_crop(image, label, tf.zeros([3], tf.int32), patch_size, config, seed)
    image = tf.ensure_shape(image, (*patch_size, channels))
    label = tf.ensure_shape(label, patch_size)
    return intensity(image, config, seed), label
