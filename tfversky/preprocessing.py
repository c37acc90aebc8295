"""Bring MR volumes onto the reference grid and normalise their intensities.

One home for what the training data (``tfds_ms``) and inference share, so a scan given to the
trained network is prepared exactly like the volumes it was trained on:

1. ``ReferenceGrid``: the fixed voxel grid every subject is resampled onto (the paper's
   128x224x256), axis-aligned with the RAS+ world axes and centred on each subject's brain.
2. ``resample_to_grid`` / ``resample_label``: the one resampler of images (linear) and the
   one of labels (each value's mask interpolated linearly and thresholded so that its volume
   is kept; an ``ignore`` 255 stays 255), with Gaussian anti-aliasing where the grid is
   coarser than the scan, and one edge rule: a volume's voxels fill its field of view.
3. ``normalize_intensity``: per-modality z-score inside the brain.
4. ``to_native``: a prediction on the grid back onto the scan's own voxels.
5. ``keep_brain_region``: the brain region of a scan, zero outside: its non-zero voxels
   when it is skull-stripped (as the public data's preprocessed scans are), else its
   foreground (``foreground_mask``, for raw scans). ``measure_skull_stripping`` tells the
   two apart; the dataset records it and ``check_skull_stripped`` compares a scan with what
   a model was trained on.

``keep_brain_region`` comes first; ``prepare_volume`` chains 1-3. Volumes are NumPy arrays
with a 4x4 voxel-to-world (RAS+ mm) affine, as nibabel gives them.
``tfversky.inference.segment`` runs the whole path for a model's plan (``tfversky.plan``).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools

import numpy as np

from tfversky._extras import require


@dataclasses.dataclass(frozen=True)
class ReferenceGrid:
    """A voxel grid aligned with the RAS+ world axes, placed on each subject's brain.

    Array axis 0 runs left -> right, axis 1 posterior -> anterior, axis 2 inferior ->
    superior (nibabel's canonical orientation). The paper gives the grid's size
    (128x224x256), not its spacing: the default spacing makes the field of view
    160 x 201.6 x 192 mm, an adult brain (about 145 x 182 x 155 mm) with a margin.

    Args:
        shape: Voxels along the three axes. Defaults to (128, 224, 256).
        spacing: Voxel size in mm along the three axes. Defaults to (1.25, 0.9, 0.75).

    Example:

    >>> grid = ReferenceGrid()
    >>> grid.field_of_view
    (160.0, 201.6, 192.0)
    >>> grid.scaled(2).shape, grid.scaled(2).spacing
    ((64, 112, 128), (2.5, 1.8, 1.5))
    """

    shape: tuple[int, int, int] = (128, 224, 256)
    spacing: tuple[float, float, float] = (1.25, 0.9, 0.75)

    def __post_init__(self):
        shape, spacing = tuple(self.shape), tuple(self.spacing)
        if len(shape) != 3 or not all(isinstance(n, (int, np.integer)) and n > 0 for n in shape):
            raise ValueError(f"Invalid value for argument `shape`: expected 3 positive integers. "
                             f"Received: shape={self.shape!r}")
        if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
            raise ValueError(f"Invalid value for argument `spacing`: expected 3 positive voxel "
                             f"sizes in mm. Received: spacing={self.spacing!r}")
        object.__setattr__(self, "shape", tuple(int(n) for n in shape))
        object.__setattr__(self, "spacing", tuple(float(s) for s in spacing))

    @property
    def field_of_view(self) -> tuple[float, float, float]:
        """Extent in mm along each axis."""
        return tuple(round(n * s, 6) for n, s in zip(self.shape, self.spacing))

    def scaled(self, factor: int) -> "ReferenceGrid":
        """The same field of view with ``factor`` times fewer voxels per axis (exactly)."""
        if any(n % factor for n in self.shape):
            raise ValueError(f"Invalid value for argument `factor`: {factor} does not divide the "
                             f"grid shape {self.shape}.")
        return ReferenceGrid(tuple(n // factor for n in self.shape),
                             tuple(round(s * factor, 6) for s in self.spacing))

    def affine(self, center) -> np.ndarray:
        """Voxel-to-world affine with the grid's centre at world point ``center`` (mm)."""
        affine = np.diag([*self.spacing, 1.0])
        middle = (np.array(self.shape) - 1) / 2
        affine[:3, 3] = np.asarray(center, float) - affine[:3, :3] @ middle
        return affine


PAPER_GRID = ReferenceGrid()


def brain_mask(image: np.ndarray) -> np.ndarray:
    """Voxels where any modality is non-zero: (D, H, W, M) -> (D, H, W) bool.

    The public MS datasets' preprocessed scans are skull-stripped with a zero background,
    and the synthetic phantom keeps that convention.

    Example:

    >>> img = np.zeros((2, 2, 2, 3)); img[0, 0, 0, 2] = 5.0
    >>> int(brain_mask(img).sum())
    1
    """
    return np.any(image != 0, axis=-1)


# A skull-stripped adult brain (with its CSF) is 1.0-2.0 L; a head with skull and scalp is
# 3.5-5 L. Skull-stripped scans also leave the field of view's faces almost all zero, while
# raw scans hold background noise there. Either sign alone marks a scan as not stripped.
MAX_BRAIN_ML = 2500.0
MAX_BORDER_FRACTION = 0.5


@dataclasses.dataclass(frozen=True)
class SkullStripping:
    """What ``measure_skull_stripping`` found in a scan.

    Attributes:
        volume_ml: Volume of the non-zero voxels (any modality), mL.
        border_fraction: Fraction of the voxels on the field of view's faces that are
            non-zero.
    """

    volume_ml: float
    border_fraction: float

    @property
    def stripped(self) -> bool:
        """Whether the scan looks skull-stripped: at most ``MAX_BRAIN_ML`` of non-zero
        signal and at most ``MAX_BORDER_FRACTION`` of its border non-zero."""
        return self.volume_ml <= MAX_BRAIN_ML and self.border_fraction <= MAX_BORDER_FRACTION

    def __str__(self) -> str:
        return (f"{self.volume_ml:.0f} mL of non-zero signal (a brain is 1000-2000 mL) and "
                f"{100 * self.border_fraction:.0f}% of the field of view's border non-zero")


def measure_skull_stripping(image: np.ndarray, affine: np.ndarray) -> SkullStripping:
    """Whether a scan looks skull-stripped (zero outside the brain), with the measurements.

    A skull-stripped scan's non-zero voxels (any modality) fill at most ``MAX_BRAIN_ML`` mL
    (no brain is larger: skull, scalp or background noise would be in) and cover at most
    ``MAX_BORDER_FRACTION`` of the voxels on the faces of its field of view (background
    noise surrounds a raw head; a stripped brain touches a face at most where the field of
    view cuts through it). The ``ms_lesions`` builder records it per scan; inference
    compares it with what the model was trained on (``check_skull_stripped``).

    Args:
        image: (X, Y, Z) or (X, Y, Z, M) volume.
        affine: Its 4x4 voxel-to-world affine (for the voxel volume).

    Example:

    >>> head = np.ones((200, 200, 150))           # 1 mm voxels, non-zero everywhere: 6 L
    >>> measure_skull_stripping(head, np.eye(4)).stripped
    False
    >>> brain = np.zeros((200, 200, 150)); brain[40:160, 30:170, 20:130] = 1  # 1.8 L
    >>> found = measure_skull_stripping(brain, np.eye(4))
    >>> found.stripped, round(found.volume_ml), found.border_fraction
    (True, 1848, 0.0)
    """
    mask = image != 0 if image.ndim == 3 else brain_mask(image)
    voxel_ml = abs(float(np.linalg.det(np.asarray(affine, float)[:3, :3]))) / 1000.0
    faces = [mask[index] for axis in range(3) for index in
             ((slice(None),) * axis + (0,), (slice(None),) * axis + (-1,))]
    return SkullStripping(
        volume_ml=float(mask.sum(dtype=np.int64)) * voxel_ml,
        border_fraction=sum(int(face.sum()) for face in faces) / sum(f.size for f in faces))


def check_skull_stripped(image: np.ndarray, affine: np.ndarray, name: str = "the scan",
                         trained_on_stripped: bool | None = None) -> SkullStripping:
    """Refuse a scan that does not look skull-stripped unless the model was trained on such
    scans (``measure_skull_stripping``).

    Args:
        image: (X, Y, Z) or (X, Y, Z, M) volume.
        affine: Its 4x4 voxel-to-world affine (for the voxel volume).
        name: What the scan is, for the message. Defaults to "the scan".
        trained_on_stripped: What the model's training scans were (its plan's
            ``skull_stripped``): True (all skull-stripped: a raw scan is refused), False
            (raw scans among them: any scan passes), None (nothing records it: a raw scan
            is refused, and the message says so). Defaults to None.

    Returns:
        The measurement.

    Raises:
        ValueError: naming the measured volume and border fraction, what is known of the
            training scans, and the fix (skull-strip the scan, or give a brain mask).

    Example:

    >>> head = np.ones((200, 200, 150))           # 1 mm voxels, non-zero everywhere: 6 L
    >>> check_skull_stripped(head, np.eye(4), trained_on_stripped=True)
    Traceback (most recent call last):
    ...
    ValueError: the scan does not look skull-stripped: ...
    >>> check_skull_stripped(head, np.eye(4), trained_on_stripped=False).stripped
    False
    """
    found = measure_skull_stripping(image, affine)
    if found.stripped or trained_on_stripped is False:
        return found
    fix = ("skull-strip the scans first (e.g. SynthStrip, HD-BET, FSL BET), or give a brain "
           "mask (command line: --brain-mask FILE)")
    if trained_on_stripped:
        why = "The model was trained on skull-stripped scans (zero outside the brain; its " \
              "plan records it)"
    else:
        why = ("No plan records whether the model was trained on skull-stripped scans (it has "
               "no plan, or one saved before tfversky recorded it)")
        fix += ("; if it was trained on scans like these (not skull-stripped), skip this "
                "check (command line: --no-skull-check)")
    raise ValueError(f"{name} does not look skull-stripped: {found}. {why}: {fix}.")


def foreground_mask(image: np.ndarray) -> np.ndarray:
    """The head in a raw (not skull-stripped) scan: (X, Y, Z) or (X, Y, Z, M) -> (X, Y, Z) bool.

    Each modality is thresholded at Otsu's threshold (the intensity that best splits its
    histogram in two: background noise and tissue); a voxel above it in any modality is
    foreground. The largest connected part is kept (noise specks outside go) and its
    enclosed holes are filled (dark tissue inside the head stays in). This is the brain
    region of a raw scan, as cropping to the non-zero voxels is nnU-Net's for
    skull-stripped data; nnU-Net z-scores raw scans over every voxel instead, which lets the
    background's share of the field of view shift every intensity.

    Example:

    >>> rng = np.random.default_rng(0)
    >>> head = rng.uniform(0, 5, (30, 30, 30)); head[5:25, 5:25, 5:25] = 100
    >>> head[12:18, 12:18, 12:18] = 1             # a dark region inside the head
    >>> int(foreground_mask(head).sum()) == 20 ** 3
    True
    """
    image = np.asarray(image, np.float32)
    channels = image[..., None] if image.ndim == 3 else image
    mask = np.zeros(channels.shape[:3], bool)
    for channel in np.moveaxis(channels, -1, 0):
        mask |= channel > _otsu_threshold(channel)
    ndimage = require("scipy.ndimage")
    parts, count = ndimage.label(mask)
    if count > 1:
        mask = parts == np.argmax(np.bincount(parts.ravel())[1:]) + 1
    return ndimage.binary_fill_holes(mask)


def _otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold: the histogram cut that maximises the between-class variance.

    The histogram spans the 99.9th percentile, so a few very bright voxels do not squeeze
    everything else into its first bins.
    """
    low, high = float(values.min()), float(np.percentile(values, 99.9))
    if high <= low:
        return high
    counts, edges = np.histogram(np.clip(values, low, high), bins=bins, range=(low, high))
    centres = (edges[:-1] + edges[1:]) / 2
    below = np.cumsum(counts)[:-1].astype(np.float64)  # voxels at or below each cut
    above = counts.sum() - below
    mass = np.cumsum(counts * centres)[:-1]
    mean_below = mass / np.maximum(below, 1)
    mean_above = ((counts * centres).sum() - mass) / np.maximum(above, 1)
    between = below * above * (mean_below - mean_above) ** 2
    return float(edges[1:-1][np.argmax(between)])


def keep_brain_region(image: np.ndarray, affine: np.ndarray):
    """The scan with zero outside its brain region, and whether it looked skull-stripped.

    The brain region centres the grid and is where the z-score is computed. A skull-stripped
    scan (``measure_skull_stripping``) is returned as it is: its region is its non-zero
    voxels. A raw scan's region is its foreground (``foreground_mask``: the head, with skull
    and scalp), and the background noise outside is set to 0. Both the ``ms_lesions``
    builder and inference call this before ``prepare_volume``, so a raw scan reaches the
    network as the raw scans of a training set did.

    Args:
        image: (X, Y, Z, M) volume.
        affine: Its 4x4 voxel-to-world affine.

    Returns:
        ``(image, skull_stripping)``: float32 (X, Y, Z, M), and the ``SkullStripping``
        measured on the scan as given.

    Example:

    >>> rng = np.random.default_rng(0)
    >>> raw = rng.uniform(0, 5, (30, 30, 30, 1)); raw[5:25, 5:25, 5:25] = 100
    >>> region, found = keep_brain_region(raw, np.eye(4))
    >>> found.stripped, int((region != 0).sum()) == 20 ** 3
    (False, True)
    """
    image = np.asarray(image, np.float32)
    found = measure_skull_stripping(image, affine)
    if not found.stripped:
        image = np.where(foreground_mask(image)[..., None], image, np.float32(0))
    return image, found


def brain_center(image: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """World coordinates (mm) of the centre of the brain's bounding box.

    Args:
        image: (D, H, W) or (D, H, W, M) volume, zero outside the brain (``keep_brain_region``).
        affine: Its 4x4 voxel-to-world affine.

    Raises:
        ValueError: if the volume is all zero.

    Example:

    >>> img = np.zeros((10, 10, 10)); img[2:5, 2:5, 2:5] = 1
    >>> brain_center(img, np.eye(4)).tolist()
    [3.0, 3.0, 3.0]
    """
    mask = image != 0 if image.ndim == 3 else brain_mask(image)
    if not mask.any():
        raise ValueError("The volume is all zero: there is no brain to centre the grid on.")
    corners = []
    for axis in range(3):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        corners.append((hit[0] + hit[-1]) / 2)
    return (affine @ np.array([*corners, 1.0]))[:3]


def brain_outside_grid(image: np.ndarray, affine: np.ndarray, grid_affine: np.ndarray,
                       grid_shape) -> tuple[float, tuple[float, float, float]]:
    """How much of the brain a grid crops: the fraction of brain voxels whose centres fall
    outside it, and the brain's extent (mm) along the grid's axes.

    Args:
        image: (X, Y, Z) or (X, Y, Z, M) volume, zero outside the brain (``keep_brain_region``).
        affine: Its 4x4 voxel-to-world affine.
        grid_affine: The grid's voxel-to-world affine.
        grid_shape: The grid's 3D shape.

    Example:

    >>> img = np.zeros((10, 10, 10)); img[:, 4:6, 4:6] = 1
    >>> fraction, extent = brain_outside_grid(img, np.eye(4), np.eye(4), (8, 10, 10))
    >>> fraction, extent
    (0.2, (10.0, 2.0, 2.0))
    """
    mask = image != 0 if np.ndim(image) == 3 else brain_mask(image)
    voxels = np.argwhere(mask)
    if len(voxels) == 0:
        return 0.0, (0.0, 0.0, 0.0)
    matrix = np.linalg.inv(grid_affine) @ affine
    index = voxels @ matrix[:3, :3].T + matrix[:3, 3]
    inside = np.all((index > -0.5) & (index < np.asarray(grid_shape) - 0.5), axis=1)
    spacing = np.linalg.norm(grid_affine[:3, :3], axis=0)
    voxel = np.abs(matrix[:3, :3]).sum(axis=1)  # one source voxel's reach, in grid voxels
    extent = (index.max(0) - index.min(0) + voxel) * spacing
    return float((~inside).mean()), tuple(round(float(e), 1) for e in extent)


def _grid_to_source(grid_affine, source_affine) -> np.ndarray:
    """Matrix mapping grid voxel indices to source voxel indices."""
    return np.linalg.inv(source_affine) @ grid_affine


def _antialias_sigma(matrix: np.ndarray) -> np.ndarray:
    """Gaussian sigma (source voxels) per source axis for a grid that samples it coarsely.

    A grid step of f > 1 source voxels along an axis aliases unless the source is smoothed
    first; sigma = (f - 1) / 2 is the usual compromise between aliasing and blur.
    """
    step = np.abs(matrix[:3, :3]).max(axis=1)
    return np.maximum(0.0, (step - 1) / 2)


# The edge rule, one for every resampling of scans, labels and predictions: a volume's voxels
# are boxes that fill its field of view. Inside the field of view, out to the outer faces of
# the edge voxels, values are interpolated between voxel centres and hold the edge voxel's
# value over its outer half; outside it, 0 (the background of skull-stripped scans and
# labels). So a constant volume stays constant over its field of view on a grid of any
# resolution: SciPy's "constant" mode zeroes the outer half voxel, and its "grid-constant"
# fades it towards 0 (0.75 at a quarter voxel out) and leaks into the voxel beyond.


def _covered(matrix, source_shape, shape) -> np.ndarray | None:
    """Which grid voxels' centres fall inside the source's field of view (within half a
    voxel of its edge voxels' centres), as read-only float32 0/1; None when all of them do.

    A scan's modalities, its label and a phantom's tissue maps share one mapping, so the last
    few masks are kept, one per thread of ``tfds_ms.threads`` (recomputing them took a sixth
    of the phantom build)."""
    key = (np.asarray(matrix, float).tobytes(), tuple(source_shape), tuple(shape))
    return _covered_by_mapping(*key)


@functools.lru_cache(maxsize=4)
def _covered_by_mapping(matrix_bytes: bytes, source_shape, shape) -> np.ndarray | None:
    matrix = np.frombuffer(matrix_bytes, float).reshape(4, 4)
    corners = np.array(list(itertools.product(*[(0, n - 1) for n in shape])), float).T
    source = matrix[:3, :3] @ corners + matrix[:3, 3:4]
    upper = np.asarray(source_shape, float)[:, None] - 0.5
    if np.all((source >= -0.5) & (source < upper)):
        return None  # the grid is a convex box: its corners inside means all of it is
    # Nearest sampling rounds each coordinate: it reads the 1s exactly inside [-0.5, n - 0.5).
    ndimage = require("scipy.ndimage")
    covered = ndimage.affine_transform(np.ones(source_shape, np.float32), matrix[:3, :3],
                                       matrix[:3, 3], output_shape=shape, order=0,
                                       mode="grid-constant", cval=0.0, prefilter=False)
    covered.setflags(write=False)  # shared by the cache
    return covered


def _resample(volume, matrix, shape, order, antialias, covered):
    ndimage = require("scipy.ndimage")
    volume = np.asarray(volume, np.float32)
    if antialias:
        sigma = _antialias_sigma(matrix)
        if sigma.max() > 0.25:
            # "nearest": the edge voxels' values continue outward, as the edge rule says.
            volume = ndimage.gaussian_filter(volume, sigma, mode="nearest")
    linear, offset = matrix[:3, :3], matrix[:3, 3]
    # A diagonal matrix (axis-aligned scan after canonical reorientation) takes scipy's faster path.
    if np.allclose(linear, np.diag(np.diag(linear)), atol=1e-9):
        linear = np.diag(linear)
    out = ndimage.affine_transform(volume, linear, offset, output_shape=shape, order=order,
                                   mode="nearest", prefilter=False)
    return out if covered is None else out * covered


def resample_to_grid(volume: np.ndarray, affine: np.ndarray, grid_affine: np.ndarray,
                     grid_shape, *, order: int = 1, antialias: bool = True) -> np.ndarray:
    """Resample a 3D or 4D (channels last) volume onto a grid: the one resampler of images.

    Edge rule: the volume's voxels fill its field of view, so values hold out to the outer
    faces of its edge voxels; beyond them the grid reads 0. A constant volume resampled onto
    any grid over the same field of view stays constant.

    Args:
        volume: (X, Y, Z) or (X, Y, Z, M) array.
        affine: The volume's 4x4 voxel-to-world affine.
        grid_affine: The grid's voxel-to-world affine (e.g. ``ReferenceGrid.affine(center)``).
        grid_shape: The grid's 3D shape.
        order: Spline order: 1 (linear) for images, 0 (nearest) for maps of ids. Defaults
            to 1. Label maps take ``resample_label``.
        antialias: Smooth the volume first where the grid is coarser than it. Defaults to True.

    Returns:
        float32 array of shape ``grid_shape`` (plus the channel axis if the input has one).

    Example:

    >>> vol = np.arange(64, dtype=np.float32).reshape(4, 4, 4)
    >>> out = resample_to_grid(vol, np.eye(4), np.eye(4), (4, 4, 4))
    >>> bool(np.allclose(out, vol))
    True
    >>> half = np.diag([0.5, 0.5, 0.5, 1.0]); half[:3, 3] = -0.25  # same field of view
    >>> float(resample_to_grid(np.ones((2, 2, 2)), np.eye(4), half, (4, 4, 4)).min())
    1.0
    """
    matrix = _grid_to_source(grid_affine, affine)
    shape = tuple(int(n) for n in grid_shape)
    covered = _covered(matrix, np.shape(volume)[:3], shape)
    if np.ndim(volume) == 3:
        return _resample(volume, matrix, shape, order, antialias, covered)
    return np.stack([_resample(volume[..., c], matrix, shape, order, antialias, covered)
                     for c in range(volume.shape[-1])], axis=-1)


def _label_values(label) -> np.ndarray:
    """The label map as uint8 (0 = background; e.g. 1 = lesion, 255 = ignore), or a
    ValueError naming a value that is not an integer in [0, 255]."""
    label = np.asarray(label)
    if label.dtype == np.uint8 or label.dtype == bool:
        return label.astype(np.uint8, copy=False)
    bad = (label < 0) | (label > 255) | (label != np.round(label))
    if bad.any():
        raise ValueError(f"Invalid value for argument `label`: expected a label map of integers "
                         f"in [0, 255] (0 = background). Received a value "
                         f"{label[bad].flat[0]!r}: map the classes to 0-255 first.")
    return label.astype(np.uint8)


def _volume_kept(soft: np.ndarray) -> np.ndarray:
    """The mask of ``soft`` (a class's interpolated 0/1 mask) whose voxel count equals its
    summed partial volume, with the threshold kept within [0.3, 0.7]."""
    count = int(round(float(soft.sum(dtype=np.float64))))
    if count == 0:
        return np.zeros(soft.shape, bool)
    # The count-th largest value; only the (few) voxels the class reaches can hold it.
    reached = soft[soft > 0]
    threshold = np.partition(reached, -count)[-count] if count <= reached.size else 0.0
    return soft >= np.clip(threshold, 0.3, 0.7)


def resample_label(label: np.ndarray, affine: np.ndarray, grid_affine: np.ndarray,
                   grid_shape) -> np.ndarray:
    """Resample a label map onto a grid, keeping each class's values and volume: the one
    resampler of labels.

    Each non-zero value (a lesion class, or an ``ignore`` value such as 255) is resampled as
    its own 0/1 mask, never as a number: interpolating the values themselves would turn the
    border of a 255 region into 1s. A mask is interpolated linearly (anti-aliased where the
    grid is coarser, with ``resample_to_grid``'s edge rule), which gives each grid voxel its
    fraction of the class (partial volume), and then thresholded. A fixed 0.5 threshold
    shrinks convex lesions (2-3 % on the paper's grid, 5-7 % at half its resolution),
    because a voxel on a curved edge is less than half inside. The threshold is instead
    chosen so that the number of voxels equals the summed partial volume (which linear
    interpolation conserves), within [0.3, 0.7]: volumes then agree to about 1 %.
    Nearest-neighbour resampling, by contrast, shifts boundaries by up to half a voxel and
    grows or drops small lesions. Where two classes reach one voxel, the smaller value keeps
    it (a lesion is never overwritten by ``ignore``).

    Args:
        label: (X, Y, Z) label map: 0 = background, other integers in [1, 255] (bool for a
            binary mask).
        affine: Its 4x4 voxel-to-world affine.
        grid_affine: The grid's voxel-to-world affine.
        grid_shape: The grid's 3D shape.

    Returns:
        uint8 array of shape ``grid_shape`` holding 0 and the label's own values.

    Raises:
        ValueError: a label value that is not an integer in [0, 255].

    Example:

    >>> lab = np.zeros((20, 20, 20), np.uint8); lab[5:15, 5:15, 5:15] = 1
    >>> grid = np.diag([0.5, 0.5, 0.5, 1.0]); grid[:3, 3] = -0.25  # half-size voxels, same edges
    >>> int(resample_label(lab, np.eye(4), grid, (40, 40, 40)).sum()) / 8000  # volume ratio
    1.0
    >>> lab[:, :, :4] = 255  # an nnU-Net `ignore` region stays 255, and no 255 becomes a 1
    >>> np.unique(resample_label(lab, np.eye(4), grid, (40, 40, 40))).tolist()
    [0, 1, 255]
    """
    label = _label_values(label)
    out = np.zeros(tuple(int(n) for n in grid_shape), np.uint8)
    present = np.flatnonzero(np.bincount(label.ravel(), minlength=256))
    for value in present[present > 0]:
        soft = resample_to_grid((label == value).astype(np.float32), affine, grid_affine,
                                grid_shape)
        out[_volume_kept(soft) & (out == 0)] = value
    return out


def check_image(image, name: str = "image") -> np.ndarray:
    """``image`` as an array, or a ValueError naming ``name``: it must be a non-empty,
    finite (D, H, W, channels) volume."""
    image = np.asarray(image)
    if image.ndim != 4 or 0 in image.shape:
        raise ValueError(
            f"Invalid shape for argument `{name}`: expected (D, H, W, channels), non-empty. "
            f"Received: {name}.shape={image.shape}. Add a channel axis to a single-channel "
            f"volume with {name}[..., None].")
    if not np.isfinite(image).all():
        raise ValueError(f"`{name}` contains NaN or Inf values: fix or zero them first "
                         f"(e.g. np.nan_to_num).")
    return image


# What ``normalize_intensity`` can do, and its default clipping: the one source of the
# ``ms_lesions`` builder's normalisation options, which a model's plan records.
INTENSITY_NORMALIZATIONS = ("zscore",)
DEFAULT_CLIP_PERCENTILES = (0.5, 99.5)


def check_intensity_normalization(scheme: str, clip_percentiles) -> tuple[str, tuple]:
    """``(scheme, (low, high))`` checked: a scheme ``normalize_intensity`` knows
    (``INTENSITY_NORMALIZATIONS``) and percentiles 0 <= low < high <= 100.

    Raises:
        ValueError: naming the argument (``intensity_normalization`` or
            ``clip_percentiles``) and the value.

    Example:

    >>> check_intensity_normalization("zscore", [1, 99])
    ('zscore', (1.0, 99.0))
    """
    if scheme not in INTENSITY_NORMALIZATIONS:
        raise ValueError(f"Invalid value for argument `intensity_normalization`: expected one "
                         f"of {INTENSITY_NORMALIZATIONS}. Received: "
                         f"intensity_normalization={scheme!r}")
    try:
        low, high = (float(p) for p in clip_percentiles)
    except (TypeError, ValueError):
        low = high = float("nan")
    if not 0 <= low < high <= 100:
        raise ValueError(f"Invalid value for argument `clip_percentiles`: expected two "
                         f"percentiles 0 <= low < high <= 100. Received: "
                         f"clip_percentiles={clip_percentiles!r}")
    return scheme, (low, high)


def normalize_intensity(image: np.ndarray, mask: np.ndarray | None = None,
                        clip_percentiles=DEFAULT_CLIP_PERCENTILES) -> np.ndarray:
    """Per-modality z-score inside the brain; the background stays 0.

    Each channel is clipped to its ``clip_percentiles`` inside the mask (bright artefacts
    and the bias field's tails), then shifted and scaled to mean 0, std 1 inside the mask.

    Args:
        image: (D, H, W, M) intensities, one channel per modality (T1, T2, FLAIR).
        mask: (D, H, W) brain mask. Defaults to ``brain_mask(image)``.
        clip_percentiles: Lower and upper percentile to clip to. Defaults to (0.5, 99.5).

    Returns:
        float32 array of the same shape.

    Raises:
        ValueError: if the image is not 4D, holds NaN/Inf, or the mask is empty.

    Example:

    >>> img = np.zeros((4, 4, 4, 1)); img[1:3, 1:3, 1:3, 0] = [[[1, 2], [3, 4]], [[5, 6], [7, 8]]]
    >>> out = normalize_intensity(img, clip_percentiles=(0, 100))
    >>> round(float(out[1:3, 1:3, 1:3].mean()), 6), float(out[0, 0, 0, 0])
    (0.0, 0.0)
    """
    image = check_image(image, "image")
    _, clip_percentiles = check_intensity_normalization("zscore", clip_percentiles)
    mask = brain_mask(image) if mask is None else np.asarray(mask, bool)
    if mask.shape != image.shape[:-1]:
        raise ValueError(f"`mask` shape {mask.shape} does not match image shape {image.shape[:-1]}")
    if not mask.any():
        raise ValueError("The brain mask is empty (every voxel is 0): the volume holds no "
                         "image data to normalise.")
    out = np.zeros(image.shape, np.float32)
    for channel in range(image.shape[-1]):
        inside = image[..., channel][mask].astype(np.float64)
        low, high = np.percentile(inside, clip_percentiles)
        inside = np.clip(inside, low, high)
        std = inside.std()
        out[..., channel][mask] = (inside - inside.mean()) / (std if std > 0 else 1.0)
    return out


def prepare_volume(image: np.ndarray, affine: np.ndarray, grid: ReferenceGrid = PAPER_GRID,
                   label: np.ndarray | None = None, *, grid_affine: np.ndarray | None = None,
                   clip_percentiles=DEFAULT_CLIP_PERCENTILES):
    """Scan -> network input: centre the grid on the brain, resample, normalise.

    Args:
        image: (X, Y, Z, M) co-registered modalities (T1, T2, FLAIR) on the scan's own
            voxels, zero outside the brain region (skull-stripped, or ``keep_brain_region``);
            canonical orientation is not required but makes resampling faster
            (``nibabel.as_closest_canonical``).
        affine: The scan's 4x4 voxel-to-world affine.
        grid: The reference grid. Defaults to ``PAPER_GRID`` (128x224x256).
        label: Optional (X, Y, Z) label map on the same voxels (0, 1 = lesion, and e.g.
            255 = ignore), resampled by ``resample_label``.
        grid_affine: Where to place the grid (voxel-to-world), e.g. from a registration
            (``tfds_ms.registration``). Defaults to ``grid`` centred on the brain's bounding
            box, axis-aligned.
        clip_percentiles: Passed to ``normalize_intensity``. Defaults to (0.5, 99.5).

    Returns:
        ``(image, label, grid_affine)``: float32 (*grid.shape, M) normalised image; uint8
        label on the grid (None without one); the grid's voxel-to-world affine, which
        ``to_native`` needs to map a prediction back.

    Example:

    >>> img = np.zeros((30, 30, 30, 3), np.float32); img[5:25, 5:25, 5:25] = [1, 2, 3]
    >>> img[10:15, 10:15, 10:15] += 1
    >>> grid = ReferenceGrid((16, 16, 16), (2.0, 2.0, 2.0))
    >>> out, _, grid_affine = prepare_volume(img, np.eye(4), grid)
    >>> out.shape, out.dtype, grid_affine[:3, 3].tolist()
    ((16, 16, 16, 3), dtype('float32'), [-0.5, -0.5, -0.5])
    """
    if grid_affine is None:
        grid_affine = grid.affine(brain_center(image, affine))
    on_grid = resample_to_grid(image, affine, grid_affine, grid.shape)
    on_label = None if label is None else resample_label(label, affine, grid_affine, grid.shape)
    return normalize_intensity(on_grid, clip_percentiles=clip_percentiles), on_label, grid_affine


def to_native(volume: np.ndarray, grid_affine: np.ndarray, native_affine: np.ndarray,
              native_shape, *, order: int = 0, antialias: bool = False) -> np.ndarray:
    """Map a volume on the reference grid (a prediction) back onto the scan's own voxels.

    Args:
        volume: (D, H, W) or (D, H, W, C) array on the grid.
        grid_affine: The grid affine returned by ``prepare_volume`` (stored as
            ``grid_affine`` in the ``ms_lesions`` dataset).
        native_affine: The scan's affine (``affine`` in the dataset).
        native_shape: The scan's 3D shape (``shape`` in the dataset).
        order: 1 (linear) for probabilities (threshold after, as
            ``tfversky.inference.back_to_scan`` does), 0 (nearest) for maps of ids. Defaults
            to 0. A label map goes back with ``resample_label(label, grid_affine,
            native_affine, native_shape)``, which keeps its values and volumes.
        antialias: Smooth first where the scan's voxels are coarser than the grid's (each
            scan voxel then gets about the mean of the grid voxels it covers: right for
            probabilities, never for labels). Defaults to False.

    Returns:
        float32 array of shape ``native_shape`` (plus the channel axis if any).

    Example:

    >>> pred = np.zeros((8, 8, 8)); pred[2:6, 2:6, 2:6] = 1
    >>> native = to_native(pred, np.diag([2.0, 2.0, 2.0, 1.0]), np.eye(4), (16, 16, 16))
    >>> native.shape, int(native.sum())
    ((16, 16, 16), 512)
    """
    return resample_to_grid(volume, grid_affine, native_affine, native_shape, order=order,
                            antialias=antialias)
