"""Whole-volume inference: the one scan-to-mask path, and its sliding windows.

``segment(model, scans)`` takes a subject's NIfTI files to a lesion mask on the scans' own
grid, exactly as the model's training prepared its volumes (``tfversky.plan``):

1. load the modalities named by the plan, in its channel order (``tfversky.io``), and
   check them: one 3D grid, finite, skull-stripped (or given a brain mask) unless the model
   was trained on raw scans; keep the brain region (``preprocessing.keep_brain_region``);
2. ``prepare_scan``: reorient to RAS+, place the reference grid as the plan says,
   resample, normalise (``tfversky.preprocessing``);
3. ``segment_on_grid``: sliding-window class probabilities on the reference grid; the
   entry evaluation on ``ms_lesions`` records (which hold only grid volumes) calls;
4. ``back_to_scan``: the lesion probabilities interpolated onto the scan's own voxels, then
   thresholded (never the mask itself interpolated), small lesions dropped;
5. written with the first modality's affine and header.

``predict_volume`` runs a segmentation network on a scan of any size: it pads the volume to
at least one patch, slides patches over it with the given overlap, weights every patch's
class probabilities by a Gaussian centred on the patch (voxels near a patch border see less
context, so they count less), and divides by the summed weights. Memory is the volume, the
batch of patches and two accumulators the size of the volume, whatever the number of windows.
With ``mirror=True`` (test-time augmentation) each window also runs mirrored along every
subset of the three spatial axes (``MIRRORINGS``, eight passes), all eight in one batch, and
each output is flipped back before blending.

An ensemble (several members sharing one plan, e.g. the folds of ``tfversky train --folds``)
averages its members' lesion probabilities on the reference grid (``segment_on_grid``), and
maps the average back to the scan once (``segment``), as nnU-Net does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from tfversky import arguments, io, metrics, plan as plan_lib, preprocessing
from tfversky import modalities as modalities_lib
from tfversky._extras import require

DEFAULT_PATCH_SIZE = 128

_ACTIVATIONS = ("softmax", "sigmoid")
# Lesions are 26-connected components: the small-lesion removal and the lesion report.
LESION_CONNECTIVITY = 3
# Test-time mirroring: every subset of the spatial axes (1, 2, 3 of a (B, D, H, W, C) batch),
# the identity first.
MIRRORINGS = ((), (1,), (2,), (3,), (1, 2), (1, 3), (2, 3), (1, 2, 3))
# Below this fraction of its peak the Gaussian weight is floored, so a voxel covered only by
# patch corners still has a well-conditioned weight sum.
_MIN_WEIGHT = 1e-3


def _layers(model):
    """Every layer of ``model``, descending into nested models."""
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _layers(layer)


def window_dependent_layers(model) -> list[str]:
    """The layers of ``model`` whose output depends on the whole window, not only on a
    voxel's neighbourhood: group and instance normalisation compute their statistics over
    the window's voxels (batch normalisation uses its moving statistics at inference, and
    layer normalisation over the channels of one voxel, so neither is listed).

    A network with such layers sees only the training patch as it was trained: a 128^3
    window of mostly background has other statistics than a 32^3 patch centred on a lesion,
    and on a model trained on 32^3 patches such windows scored DSC 0.00 where 32^3 windows
    scored 0.86 (issue "Numbers you can trust"). nnU-Net predicts with the training patch for
    this reason.

    Example:

    >>> from tfversky.models import unet3d
    >>> len(window_dependent_layers(unet3d(base_filters=2, depth=2, normalization="instance")))
    6
    >>> window_dependent_layers(unet3d(base_filters=2, depth=2, normalization="batch"))
    []
    """
    import keras

    return [layer.name for layer in _layers(model)
            if isinstance(layer, (keras.layers.GroupNormalization,
                                  keras.layers.GlobalAveragePooling3D,
                                  keras.layers.GlobalMaxPooling3D))]


def check_window(model, plan: plan_lib.Plan, patch_size=None) -> tuple[int, int, int] | None:
    """The sliding window for ``model`` under ``plan``: ``patch_size``, else the plan's
    (``Plan.window``: its ``patch_size``, else the training patch); None for the model's
    static size or ``DEFAULT_PATCH_SIZE``.

    Where the plan records the training patch, no other window is allowed, as in nnU-Net:
    a network that normalises per window (``window_dependent_layers``) sees other
    statistics on another window (DSC 0.00 against 0.86 measured), and even one without
    (batch normalisation) sees zero-padded borders where training saw them elsewhere (DSC
    0.870 with 32^3 windows against 0.891 with its 16^3 training patch, measured in
    tests/tfversky/test_inference.py's setting).

    Raises:
        ValueError: a window other than the training patch. A plan without a training
            patch gets a ``PlanWarning`` for a network that normalises per window.

    Example:

    >>> from tfversky.models import unet3d
    >>> model = unet3d(base_filters=2, depth=2, normalization="instance")
    >>> check_window(model, plan_lib.Plan(training_patch_size=8))
    (8, 8, 8)
    >>> check_window(model, plan_lib.Plan(training_patch_size=8), 16)
    Traceback (most recent call last):
    ...
    ValueError: Invalid value for argument `patch_size`: ...
    """
    import warnings

    window = plan.window if patch_size is None else arguments.patch_size(patch_size)
    trained, dependent = plan.training_patch_size, window_dependent_layers(model)
    if trained is None:
        if dependent:
            warnings.warn(
                f"The model normalises per window ({dependent[0]}, ...) and its plan does not "
                f"record the patch it was trained on: windows of "
                f"{'x'.join(map(str, window)) if window else 'the default size'} may not be "
                f"what it was trained on, and can score far worse (e.g. DSC 0). Give the "
                f"training patch: Plan(training_patch_size=...).", plan_lib.PlanWarning,
                stacklevel=3)
        return window
    if window != trained:
        why = (f"it normalises per window ({dependent[0]}, ...), so another window changes "
               f"the statistics it sees and can score DSC 0" if dependent else
               "another window moves the zero-padded borders it was trained with and "
               "changes its output")
        raise ValueError(
            f"Invalid value for argument `patch_size`: the model runs only on windows of its "
            f"training patch {'x'.join(map(str, trained))}, not "
            f"{'x'.join(map(str, window))}: {why}. Received: patch_size={patch_size!r}. "
            f"Leave patch_size out (the training patch).")
    return window


def _size_multiples(model) -> tuple[int, int, int]:
    """Per axis, the product of the strides of the model's downsampling layers: patch sizes
    must be multiples of it. Exact for a U-Net's single contracting path (2**(depth-1) for
    ``tfversky.models.unet3d``); stricter than necessary for branched networks."""
    import keras

    multiples = np.ones(3, int)
    for layer in _layers(model):
        if isinstance(layer, (keras.layers.MaxPooling3D, keras.layers.AveragePooling3D,
                              keras.layers.Conv3D)):
            multiples *= np.asarray(layer.strides, int)
    return tuple(int(m) for m in multiples)


def _patch_shape(model, volume_shape, patch_size) -> tuple[int, int, int]:
    """Each axis: the model's static size if it has one; otherwise the requested size
    (default ``DEFAULT_PATCH_SIZE``), no larger than the volume rounded up to a valid size,
    except for a network that normalises per window, which keeps its window whole (the
    volume is padded instead)."""
    static = tuple(model.inputs[0].shape[1:4])
    shrink = not window_dependent_layers(model)
    multiples = _size_multiples(model)
    requested = arguments.patch_size(
        DEFAULT_PATCH_SIZE if patch_size is None else patch_size,
        multiple=[1 if fixed else multiple for fixed, multiple in zip(static, multiples)],
        why="the model's total downsampling")
    if patch_size is not None and any(fixed is not None and want != fixed
                                      for fixed, want in zip(static, requested)):
        raise ValueError(
            f"Invalid value for argument `patch_size`: the model takes a fixed input "
            f"size {tuple(static)}, so patch_size must match it. Received: "
            f"patch_size={patch_size!r}. Pass patch_size=None, or rebuild the model "
            f"with input_shape=(None, None, None, channels).")
    return tuple(fixed if fixed is not None else
                 min(want, -(-size // multiple) * multiple) if shrink else want
                 for fixed, size, want, multiple in zip(static, volume_shape, requested,
                                                        multiples))


def _window_starts(size: int, patch: int, step: int) -> list[int]:
    starts = list(range(0, size - patch + 1, step))
    if starts[-1] != size - patch:
        starts.append(size - patch)  # the last window ends flush with the volume
    return starts


def gaussian_weights(patch_shape, sigma_scale: float = 0.125) -> np.ndarray:
    """Blending weights of one patch: a Gaussian with sigma = ``sigma_scale`` x patch size per
    axis, peak 1, floored at 1e-3.

    Example:

    >>> w = gaussian_weights((4, 4, 4))
    >>> w.shape, float(w.max()) == 1.0, float(w.min()) >= 1e-3
    ((4, 4, 4), True, True)
    """
    axes = []
    for size in patch_shape:
        centre, sigma = (size - 1) / 2, max(sigma_scale * size, 1e-6)
        axes.append(np.exp(-0.5 * ((np.arange(size) - centre) / sigma) ** 2))
    weights = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    weights /= weights.max()
    return np.maximum(weights, _MIN_WEIGHT).astype(np.float32)


def _to_probabilities(output: np.ndarray, from_logits: bool, activation: str) -> np.ndarray:
    if from_logits:
        special = require("scipy.special")

        if activation == "softmax":
            return special.softmax(output, axis=-1)
        return special.expit(output)
    if not np.isfinite(output).all():
        raise ValueError("The model's output contains NaN or Inf: check the model (e.g. float16 "
                         "overflow) and that the input is normalised like the training data.")
    low, high = float(output.min()), float(output.max())
    if low < -1e-3 or high > 1 + 1e-3:
        raise ValueError(
            f"The model's output lies in [{low:.3g}, {high:.3g}], so it is not probabilities. "
            f"If the model outputs logits (e.g. unet3d(final_activation=None)), pass "
            f"from_logits=True (command line: --from-logits).")
    return output


def predict_volume(model, volume, patch_size=None, overlap: float = 0.5, batch_size: int = 1,
                   *, from_logits: bool = False, activation: str = "softmax",
                   sigma_scale: float = 0.125, progress: bool = True, mirror: bool = False,
                   keep_mirrorings: bool = False) -> np.ndarray:
    """Class probabilities of a whole volume, (D, H, W, M) -> (D, H, W, C), by sliding windows.

    The volume is padded with 0 (the background of skull-stripped, normalised scans) to at
    least one patch per axis; patches start every ``patch * (1 - overlap)`` voxels, the last
    one flush with the volume's end; each patch's probabilities are weighted by
    ``gaussian_weights`` and the weighted sum divided by the summed weights, then cropped back
    to (D, H, W). With softmax, every voxel's probabilities still sum to 1 (a convex
    combination of distributions). Memory: ``batch_size`` patches, the (D, H, W, C)
    probabilities and a (D, H, W) weight sum, all float32, besides the volume itself (copied
    only to float32 and, where an axis is shorter than the patch, padded).

    Args:
        model: A Keras model mapping (B, d, h, w, M) to (B, d, h, w, C), e.g.
            ``tfversky.models.unet3d``.
        volume: (D, H, W, M) array, channels as in training (T1, T2, FLAIR), normalised
            like the training data (``tfversky.preprocessing.normalize_intensity``).
        patch_size: int or (d, h, w). Sizes must be multiples of the model's total
            downsampling (2**(depth-1) for unet3d); an axis larger than the volume shrinks to
            the volume's size rounded up to such a multiple; a model with a static input size
            dictates it. Defaults to None: the model's static size, else 128.
        overlap: Fraction of a patch shared with the next one, in [0, 1). 0.5 processes each
            voxel about 8 times in 3D; 0 is fastest and shows seams. Defaults to 0.5.
        batch_size: Patches per model call. Defaults to 1.
        from_logits: Whether the model outputs logits; ``activation`` is then applied
            before blending. Defaults to False (the output must be probabilities).
        activation: ``"softmax"`` or ``"sigmoid"``, used with ``from_logits=True``.
            Defaults to ``"softmax"``.
        sigma_scale: Gaussian sigma as a fraction of the patch size. Defaults to 0.125.
        progress: Show a tqdm progress bar over the patches (on stderr). Defaults to True.
        mirror: Test-time mirroring: each window also runs flipped along every subset of
            the spatial axes (``MIRRORINGS``), the eight versions in one model call (so a
            call holds ``8 * batch_size`` patches), each output flipped back; the result is
            their mean. Defaults to False.
        keep_mirrorings: With ``mirror``, return each mirroring's probabilities instead of
            their mean (8x the memory of the output; for the spread between them).
            Defaults to False.

    Returns:
        float32 array (D, H, W, C) of class probabilities; (8, D, H, W, C) with
        ``keep_mirrorings`` (in ``MIRRORINGS`` order).

    Raises:
        ValueError: for a volume that is not 4D, holds NaN/Inf or has the wrong channel count;
            an invalid option or patch size; a model whose output is not probabilities
            (without ``from_logits``) or not of its input's spatial size.

    Example:

    >>> import numpy as np
    >>> from tfversky.models import unet3d
    >>> model = unet3d(base_filters=2, depth=2)
    >>> probs = predict_volume(model, np.zeros((9, 10, 11, 3)), patch_size=8, progress=False)
    >>> probs.shape, bool(np.allclose(probs.sum(-1), 1, atol=1e-5))
    ((9, 10, 11, 2), True)
    """
    tqdm = require("tqdm.auto").tqdm

    volume = preprocessing.check_image(np.asarray(volume, dtype=np.float32), "volume")
    channels = model.inputs[0].shape[-1]
    if channels is not None and volume.shape[-1] != channels:
        raise ValueError(
            f"The model takes {channels} channel(s) but `volume` has {volume.shape[-1]}: "
            f"volume.shape={volume.shape}. Stack the modalities the model was trained on.")
    arguments.overlap(overlap)
    arguments.positive_int(batch_size, "batch_size")
    if activation not in _ACTIVATIONS:
        raise ValueError(f"Invalid value for argument `activation`: expected one of "
                         f"{_ACTIVATIONS}. Received: activation={activation!r}")
    if not sigma_scale > 0:
        raise ValueError(f"Invalid value for argument `sigma_scale`: expected a number > 0. "
                         f"Received: sigma_scale={sigma_scale!r}")

    if keep_mirrorings and not mirror:
        raise ValueError("Invalid arguments: `keep_mirrorings` keeps the passes of `mirror`; "
                         "received keep_mirrorings=True with mirror=False. Pass mirror=True.")

    spatial = volume.shape[:3]
    patch = _patch_shape(model, spatial, patch_size)
    padding = [(0, max(p - s, 0)) for p, s in zip(patch, spatial)]
    if any(after for _, after in padding):
        volume = np.pad(volume, padding + [(0, 0)])
    padded = volume.shape[:3]
    starts = [_window_starts(n, p, max(1, int(p * (1 - overlap))))
              for n, p in zip(padded, patch)]
    corners = [(z, y, x) for z in starts[0] for y in starts[1] for x in starts[2]]
    weights = gaussian_weights(patch, sigma_scale)

    weight_sum = np.zeros(padded, np.float32)
    accumulated = None  # (P, D, H, W, C): C is known after the first batch
    mirrorings = MIRRORINGS if mirror else MIRRORINGS[:1]
    passes = len(mirrorings)
    batch_size = min(batch_size, len(corners))
    batch = np.zeros((batch_size * passes, *patch, volume.shape[-1]), np.float32)
    with tqdm(total=len(corners), desc="predict_volume", unit="patch", disable=not progress,
              leave=False) as bar:
        for first in range(0, len(corners), batch_size):
            chunk = corners[first:first + batch_size]
            for i, (z, y, x) in enumerate(chunk):
                window = volume[None, z:z + patch[0], y:y + patch[1], x:x + patch[2]]
                for k, axes in enumerate(mirrorings):
                    batch[i * passes + k] = np.flip(window, axes)[0]
            # A short last batch keeps the full (zero-filled) shape: one traced function.
            batch[len(chunk) * passes:] = 0
            output = model.predict_on_batch(batch)
            if not isinstance(output, np.ndarray) or output.shape[1:4] != patch:
                raise ValueError(
                    f"The model must return one (B, d, h, w, C) tensor of its input's spatial "
                    f"size; for input {batch.shape} it returned "
                    f"{getattr(output, 'shape', type(output).__name__)}.")
            probs = _to_probabilities(np.asarray(output[:len(chunk) * passes], np.float32),
                                      from_logits, activation)
            probs = probs.reshape(len(chunk), passes, *probs.shape[1:])
            for k, axes in enumerate(mirrorings):  # flipped back: a flip is its own inverse
                probs[:, k] = np.flip(probs[:, k], axes)
            if accumulated is None:
                kept = passes if keep_mirrorings else 1
                accumulated = np.zeros((kept, *padded, probs.shape[-1]), np.float32)
            if not keep_mirrorings:
                probs = probs.mean(axis=1, keepdims=True)
            for (z, y, x), prob in zip(chunk, probs):
                window = np.s_[:, z:z + patch[0], y:y + patch[1], x:x + patch[2]]
                accumulated[window] += prob * weights[..., None]
                weight_sum[window[1:]] += weights
            bar.update(len(chunk))
    accumulated /= weight_sum[..., None]
    result = accumulated[:, :spatial[0], :spatial[1], :spatial[2]]
    return np.ascontiguousarray(result if keep_mirrorings else result[0])


# --- The scan-to-mask path --------------------------------------------------------------------


def match_modalities(scans: Mapping, plan: plan_lib.Plan) -> dict:
    """The scans of ``scans`` (modality name or alias -> file) in the plan's channel order.

    Raises:
        ValueError: for an unknown name, a modality given twice, one the plan names but
            ``scans`` lacks, or one the plan does not name; the message names what the
            model expects.

    Example:

    >>> match_modalities({"flair": "f.nii", "T1w": "a.nii", "T2": "b.nii"}, plan_lib.Plan())
    {'T1': 'a.nii', 'T2': 'b.nii', 'FLAIR': 'f.nii'}
    """
    expects = f"The model expects {', '.join(plan.modalities)} (in this channel order)"
    given = {}
    for name, path in scans.items():
        key = modalities_lib.canonical(name)
        if key in given:
            raise ValueError(f"{expects}; {key} is given twice ({given[key]!r} and "
                             f"{path!r}; aliases count as the same modality).")
        given[key] = path
    missing = [name for name in plan.modalities if name not in given]
    extra = [name for name in given if name not in plan.modalities]
    if missing:
        raise ValueError(f"{expects}; missing: {', '.join(missing)}. Give one file for each "
                         f"(command line: --image NAME=FILE).")
    if extra:
        raise ValueError(f"{expects}; this model does not take {', '.join(extra)}: leave "
                         f"{'it' if len(extra) == 1 else 'them'} out.")
    return {name: given[name] for name in plan.modalities}


def prepare_scan(image: np.ndarray, affine: np.ndarray, plan: plan_lib.Plan, *,
                 grid_affine=None):
    """A subject's modalities -> the network input on the plan's reference grid.

    Reorients to RAS+ (``io.to_ras``), places the grid (the plan's ``placement``), resamples
    and normalises (``preprocessing.prepare_volume``), as the ``ms_lesions`` builder did.

    Args:
        image: (X, Y, Z, M) modalities in the plan's order, zero outside the brain
            (skull-stripped, masked, or ``preprocessing.keep_brain_region``).
        affine: Their voxel-to-world affine.
        plan: The model's plan.
        grid_affine: Where to place the grid: None (the plan's ``brain_bbox`` placement), a
            4x4 voxel-to-world affine, or a callable ``(image, affine, grid) -> affine``
            called on the RAS+ image (e.g. wrapping
            ``tfds_ms.registration.registered_grid_affine`` for ``registration``).
            Defaults to None.

    Returns:
        ``(grid_image, grid_affine)``: float32 (*plan.grid.shape, M) and its affine.

    Raises:
        ValueError: for an all-zero image, or a ``registration`` plan without ``grid_affine``.

    Example:

    >>> img = np.zeros((30, 30, 30, 3), np.float32); img[5:25, 5:25, 5:25] = [1, 2, 3]
    >>> grid = preprocessing.ReferenceGrid((16, 16, 16), (2.0, 2.0, 2.0))
    >>> out, _ = prepare_scan(img, np.diag([-1.0, 1, 1, 1]), plan_lib.Plan(grid=grid))
    >>> out.shape
    (16, 16, 16, 3)
    """
    image, affine = io.to_ras(np.asarray(image, np.float32), affine)
    if callable(grid_affine):
        grid_affine = grid_affine(image, affine, plan.grid)
    elif grid_affine is None and plan.placement == "registration":
        raise ValueError(
            "The model's grid was placed by rigid registration to the MNI152 template "
            "(plan.placement='registration'): pass grid_affine, e.g. lambda image, affine, "
            "grid: tfds_ms.registration.registered_grid_affine(image[..., t1], affine, grid) "
            "(the command line does this).")
    on_grid, _, grid_affine = preprocessing.prepare_volume(
        image, affine, plan.grid, grid_affine=grid_affine,
        clip_percentiles=plan.clip_percentiles)
    return on_grid, grid_affine


# What members of one ensemble must share: what decides their input, and how it is windowed.
SHARED_PLAN_FIELDS = ("modalities", "grid", "placement", "intensity_normalization",
                      "clip_percentiles", "skull_stripped", "training_patch_size",
                      "patch_size", "class_names", "from_logits")


def _members(model) -> list:
    """A model, or a sequence of them, as a non-empty list."""
    members = list(model) if isinstance(model, (list, tuple)) else [model]
    if not members:
        raise ValueError("Invalid value for argument `model`: expected a model or a non-empty "
                         "sequence of models (an ensemble). Received: model=[]")
    return members


def ensemble_plan(plans) -> plan_lib.Plan:
    """The plan of an ensemble whose members have ``plans``: the first member's, with the
    mean of the members' operating points where they differ.

    Members must share ``SHARED_PLAN_FIELDS`` (modalities, grid, placement, normalisation,
    skull stripping, training patch and window, classes): their probabilities are averaged
    voxel by voxel on one grid, so each must see the scan prepared alike. Members chosen
    apart (e.g. each fold's operating point on its own validation subjects) may differ in
    ``threshold`` and ``min_lesion_mm3``: the ensemble takes their means, and its
    ``operating_point`` says so.

    Raises:
        ValueError: naming the first field where a member differs from the first one.

    Example:

    >>> a, b = plan_lib.Plan(threshold=0.4), plan_lib.Plan(threshold=0.6)
    >>> ensemble_plan([a, b]).threshold
    0.5
    >>> ensemble_plan([a, plan_lib.Plan(modalities=("T1", "FLAIR"))])
    Traceback (most recent call last):
    ...
    ValueError: The ensemble's members do not share a plan: member 2 has modalities ...
    """
    plans = list(plans)
    first = plans[0]
    for number, other in enumerate(plans[1:], start=2):
        for field in SHARED_PLAN_FIELDS:
            mine, theirs = getattr(first, field), getattr(other, field)
            if mine != theirs:
                raise ValueError(
                    f"The ensemble's members do not share a plan: member {number} has "
                    f"{field} {_shown(theirs)}, member 1 {_shown(mine)}. Their probabilities "
                    f"are averaged on one grid, so every member must be trained with the same "
                    f"{', '.join(SHARED_PLAN_FIELDS)}: ensemble the models of one run (e.g. "
                    f"the folds of one `tfversky train --folds`).")
    points = {(p.threshold, p.min_lesion_mm3) for p in plans}
    if len(points) == 1:
        return first
    thresholds = [p.threshold for p in plans]
    volumes = [p.min_lesion_mm3 for p in plans]
    return dataclasses.replace(
        first, threshold=float(np.mean(thresholds)), min_lesion_mm3=float(np.mean(volumes)),
        operating_point={"ensemble": "the mean of the members' operating points",
                         "members": [p.operating_point for p in plans],
                         "thresholds": thresholds, "min_lesion_mm3": volumes})


def _shown(value) -> str:
    if isinstance(value, preprocessing.ReferenceGrid):
        return (f"{'x'.join(map(str, value.shape))} of "
                f"{'x'.join(f'{s:g}' for s in value.spacing)} mm")
    if isinstance(value, tuple):
        return ", ".join(map(str, value)) if all(isinstance(v, str) for v in value) else \
            "x".join(map(str, value))
    return repr(value)


def operating_point(plan: plan_lib.Plan, threshold: float | None = None,
                    min_lesion_mm3: float | None = None) -> dict:
    """The threshold and smallest lesion volume a prediction uses, and where each came from:
    the arguments where given (the command line's ``--threshold`` and
    ``--min-lesion-volume``), else the plan's (``Plan.operating_point`` tells how they were
    chosen).

    Returns:
        ``{"threshold", "min_lesion_mm3", "source"}``, ``source`` one line for people.

    Raises:
        ValueError: a threshold outside (0, 1) or a negative volume.

    Example:

    >>> operating_point(plan_lib.Plan(), min_lesion_mm3=3)["source"]
    'threshold 0.5 from the plan (defaults, never chosen on validation), min lesion 3 mm^3 given'
    """
    if threshold is not None:
        threshold = arguments.threshold(threshold)
    if min_lesion_mm3 is not None:
        min_lesion_mm3 = arguments.non_negative_number(min_lesion_mm3, "min_lesion_mm3")
    chosen = plan.operating_point
    if not chosen:
        how = "defaults, never chosen on validation"
    elif "ensemble" in chosen:
        how = chosen["ensemble"]
    elif chosen.get("criterion"):
        how = f"chosen by {chosen['criterion']} on validation"
    else:
        how = f"defaults kept: {chosen.get('reason', 'no reason recorded')}"
    parts = [f"threshold {plan.threshold:g} from the plan ({how})" if threshold is None else
             f"threshold {threshold:g} given",
             f"min lesion {plan.min_lesion_mm3:g} mm^3 from the plan" +
             (f" ({how})" if threshold is not None else "") if min_lesion_mm3 is None else
             f"min lesion {min_lesion_mm3:g} mm^3 given"]
    return {"threshold": plan.threshold if threshold is None else threshold,
            "min_lesion_mm3": plan.min_lesion_mm3 if min_lesion_mm3 is None else min_lesion_mm3,
            "source": ", ".join(parts)}


def segment_on_grid(model, image: np.ndarray, plan: plan_lib.Plan | None = None, *,
                    patch_size=None, overlap: float | None = None, batch_size: int = 1,
                    tta: bool = False, uncertainty: bool = False, progress: bool = False):
    """Lesion probabilities of a volume on the reference grid: the stage that evaluation on
    ``ms_lesions`` records (``example["image"]``) shares with ``segment``.

    An ensemble (``model`` a list) averages its members' probabilities here, on the grid;
    with ``tta`` each member's are the mean over the eight mirrorings (``predict_volume``'s
    ``mirror``).

    Args:
        model: Keras model, (B, d, h, w, M) -> (B, d, h, w, C) with C = 2 (background,
            lesion) or 1 (lesion); or a list of them sharing a plan (``ensemble_plan``).
        image: (D, H, W, M) prepared volume (``prepare_scan``, or a dataset record).
        plan: The model's plan. Defaults to ``plan.read_plan(model)`` (an ensemble:
            ``ensemble_plan`` of the members').
        patch_size, overlap: Override the plan's sliding-window settings (``patch_size``
            only where the network does not normalise per window: ``check_window``).
            Default None.
        batch_size: Windows per model call (each 8 patches with ``tta``). Defaults to 1.
        tta: Average over the mirrorings along the three spatial axes. Defaults to False.
        uncertainty: Also return the per-voxel standard deviation of the lesion
            probability over members x mirrorings. Defaults to False.
        progress: tqdm bar over the windows. Defaults to False.

    Returns:
        float32 (D, H, W) lesion probabilities, threshold them with ``plan.threshold``; with
        ``uncertainty`` a pair ``(probabilities, standard_deviation)``.

    Raises:
        ValueError: for members with different plans, ``uncertainty`` with one member and
            no ``tta`` (nothing to measure), a model whose channels or classes do not fit the
            plan, a window the model was not trained on (``check_window``), or any
            ``predict_volume`` error.

    Example:

    >>> from tfversky.models import unet3d
    >>> model = plan_lib.attach(unet3d(base_filters=2, depth=2), plan_lib.Plan(patch_size=8))
    >>> segment_on_grid(model, np.zeros((8, 8, 8, 3))).shape
    (8, 8, 8)
    >>> mean, spread = segment_on_grid([model, model], np.zeros((8, 8, 8, 3)), tta=True,
    ...                                uncertainty=True)
    >>> mean.shape, spread.shape
    ((8, 8, 8), (8, 8, 8))
    """
    members = _members(model)
    if plan is None:
        plan = ensemble_plan([plan_lib.read_plan(member) for member in members])
    check_uncertainty(len(members), tta, uncertainty)
    total = np.zeros(image.shape[:3], np.float64)
    squares = np.zeros(image.shape[:3], np.float64) if uncertainty else None
    for member in members:
        plan_lib.check_channels(member, plan)
        classes = member.outputs[0].shape[-1]
        if classes not in (1, 2) or classes != len(plan.class_names):
            raise ValueError(
                f"The model outputs {classes} channel(s) and its plan names classes "
                f"{list(plan.class_names)}: lesion segmentation needs 2 (background, lesion, "
                f"softmax) or 1 (lesion, sigmoid).")
        probabilities = predict_volume(
            member, image, patch_size=check_window(member, plan, patch_size),
            overlap=plan.overlap if overlap is None else overlap, batch_size=batch_size,
            from_logits=plan.from_logits, activation="softmax" if classes == 2 else "sigmoid",
            progress=progress, mirror=tta, keep_mirrorings=tta and uncertainty)
        lesion = probabilities[..., classes - 1]  # softmax: channel 1 is the lesion
        passes = lesion if tta and uncertainty else lesion[None]
        total += passes.sum(axis=0, dtype=np.float64)
        if uncertainty:
            squares += np.square(passes, dtype=np.float64).sum(axis=0)
    count = len(members) * (len(MIRRORINGS) if tta and uncertainty else 1)
    mean = total / count
    if not uncertainty:
        return mean.astype(np.float32)
    spread = np.sqrt(np.maximum(squares / count - np.square(mean), 0.0))
    return mean.astype(np.float32), spread.astype(np.float32)


def check_uncertainty(members: int, tta: bool, uncertainty: bool) -> None:
    """Refuse an uncertainty map of one member without mirroring: one pass, nothing to
    measure a spread over.

    Raises:
        ValueError: naming the fix (more members, or ``tta``).
    """
    if uncertainty and members == 1 and not tta:
        raise ValueError("An uncertainty map is the spread over an ensemble's members and "
                         "mirrorings: one model without test-time mirroring makes one "
                         "prediction, with nothing to measure. Give several models, or "
                         "turn on tta (command line: --model A.keras B.keras ..., or --tta).")


def voxel_size_mm(affine) -> tuple[float, float, float]:
    """Voxel edge lengths (mm) of a voxel-to-world affine.

    Example:

    >>> voxel_size_mm(np.diag([0.9, -0.9, 3.0, 1.0]))
    (0.9, 0.9, 3.0)
    """
    return tuple(float(v) for v in np.linalg.norm(np.asarray(affine, float)[:3, :3], axis=0))


def back_to_scan(probabilities: np.ndarray, grid_affine, scan_affine, scan_shape, *,
                 threshold: float, min_lesion_mm3: float = 0.0):
    """Grid probabilities -> ``(probabilities, mask, lesion_count)`` on the scan's voxels.

    The probabilities are interpolated linearly (anti-aliased where the scan's voxels are
    coarser than the grid's, so a thick slice gets the mean over its extent), then
    thresholded; lesions (26-connected) smaller than ``min_lesion_mm3`` mm^3, measured with
    the scan's voxel size, are dropped. Outside the grid the probability is 0.

    Args:
        probabilities: (D, H, W) lesion probabilities on the grid.
        grid_affine: The grid's affine (``prepare_scan``; ``grid_affine`` in ``ms_lesions``).
        scan_affine, scan_shape: The scan's own grid (``affine``, ``shape`` in ``ms_lesions``).
        threshold: Lesion where the probability is >= this (the plan's ``threshold``).
        min_lesion_mm3: Smallest lesion kept, mm^3. Defaults to 0 (all).

    Returns:
        float32 probabilities, uint8 0/1 mask, both of ``scan_shape``; the lesion count.

    Example:

    >>> prob = np.zeros((8, 8, 8), np.float32); prob[2:6, 2:6, 2:6] = 0.9
    >>> _, mask, count = back_to_scan(prob, np.diag([2.0, 2, 2, 1]), np.eye(4), (16, 16, 16),
    ...                               threshold=0.5)
    >>> int(mask.sum()), count
    (343, 1)
    """
    shape = tuple(int(n) for n in scan_shape)
    on_scan = preprocessing.to_native(np.asarray(probabilities, np.float32), grid_affine,
                                      scan_affine, shape, order=1, antialias=True)
    mask, count = metrics.remove_small_lesions(on_scan >= threshold, min_lesion_mm3,
                                               voxel_size_mm(scan_affine), LESION_CONNECTIVITY)
    return on_scan.astype(np.float32), mask.astype(np.uint8), count


@dataclasses.dataclass
class Segmentation:
    """What ``segment`` found on the scans' own grid.

    Attributes:
        mask: uint8 (X, Y, Z), 1 = lesion.
        probabilities: float32 (X, Y, Z) lesion probabilities (an ensemble's mean).
        reference: The first modality's nibabel image (its affine and header).
        grid_affine: Where the reference grid was placed.
        lesion_count: Lesions (26-connected components) in ``mask``.
        lesion_volume_ml: Their volume, mL.
        inputs: Modality -> file, in the plan's order.
        operating_point: ``operating_point(...)``: the threshold and smallest lesion
            volume used, and where they came from.
        uncertainty: float32 (X, Y, Z) standard deviation of the lesion probability over
            members x mirrorings, or None (not asked for).
    """

    mask: np.ndarray
    probabilities: np.ndarray
    reference: object
    grid_affine: np.ndarray
    lesion_count: int
    lesion_volume_ml: float
    inputs: dict
    operating_point: dict = dataclasses.field(default_factory=dict)
    uncertainty: np.ndarray | None = None

    def lesion_table(self, case: str) -> dict:
        """The mask's lesions as ``lesion_report.LESION_COLUMNS`` (world centroids, volumes
        on the scan's grid, probabilities inside each lesion)."""
        from tfversky import lesion_report

        return lesion_report.lesion_table(case, self.mask, self.probabilities,
                                          self.reference.affine)


def _masked(image, reference, brain_mask, check_skull, plan):
    """The image with zero outside the brain mask; or, without one, checked against the
    training scans (skull-stripped or raw, as the plan records) and cut to its brain region."""
    if brain_mask is None:
        if check_skull:
            preprocessing.check_skull_stripped(image, reference.affine, "the input scans",
                                               plan.skull_stripped)
        return preprocessing.keep_brain_region(image, reference.affine)[0]
    mask, mask_image = io.load_scan(brain_mask, "brain mask")
    if not io.same_grid(mask.shape, mask_image.affine, image.shape, reference.affine):
        raise io.ScanError(f"brain mask file {str(brain_mask)!r} is not on the scans' voxel grid "
                           f"(shape {mask.shape} vs {image.shape[:3]}): resample it onto the "
                           f"first modality's grid (nearest neighbour) first.")
    if not (mask > 0).any():
        raise io.ScanError(f"brain mask file {str(brain_mask)!r} is all zero: it marks no brain.")
    return np.where((mask > 0)[..., None], image, 0.0).astype(np.float32)


def segment(model, scans: Mapping, out=None, *, probabilities_out=None, uncertainty_out=None,
            plan: plan_lib.Plan | None = None, brain_mask=None, resample_to_first: bool = False,
            grid_affine=None, threshold: float | None = None,
            min_lesion_mm3: float | None = None, tta: bool = False, patch_size=None,
            overlap: float | None = None, batch_size: int = 1, check_skull: bool = True,
            progress: bool = False) -> Segmentation:
    """One subject's scans -> lesion mask on their own grid, prepared as in training.

    Args:
        model: Trained Keras model, ideally carrying its plan (``tfversky.plan.attach``); or
            a list of them (an ensemble) sharing a plan (``ensemble_plan``): their lesion
            probabilities are averaged on the reference grid and mapped back once.
        scans: Modality name (canonical or alias: ``T1w``, ``flair``, ...) -> NIfTI file,
            exactly the plan's modalities; co-registered on one grid.
        out: Write the uint8 mask here (.nii / .nii.gz), with the first modality's affine
            and header. Defaults to None (nothing written).
        probabilities_out: Also write the float32 lesion probabilities here. Defaults to None.
        uncertainty_out: Also write the float32 standard deviation of the lesion probability
            over members x mirrorings here (needs several members or ``tta``). Defaults to
            None.
        plan: Defaults to ``tfversky.plan.read_plan(model)`` (with a warning if it has none;
            an ensemble: ``ensemble_plan`` of the members').
        brain_mask: NIfTI brain mask on the scans' grid; voxels outside it are zeroed, as
            skull-stripping would. Defaults to None: the scans must be skull-stripped,
            unless the plan records raw training scans (``plan.skull_stripped`` False);
            a raw scan's brain region is then its foreground
            (``preprocessing.keep_brain_region``).
        resample_to_first: Resample modalities on another grid onto the first one's,
            instead of refusing them. Defaults to False.
        grid_affine: See ``prepare_scan``. Defaults to None (the plan's placement).
        threshold: Defaults to the plan's.
        min_lesion_mm3: Drop lesions smaller than this (mm^3). Defaults to the plan's.
        tta: Average over the eight mirrorings along the spatial axes
            (``segment_on_grid``). Defaults to False.
        patch_size, overlap, batch_size, progress: See ``segment_on_grid``.
        check_skull: Refuse scans that do not look skull-stripped when the model was
            trained on skull-stripped scans, or nothing records what it was trained on
            (when no ``brain_mask`` is given; ``preprocessing.check_skull_stripped``).
            Defaults to True.

    Returns:
        A ``Segmentation``.

    Raises:
        ValueError: (``io.ScanError`` for a file) for modalities that do not fit the plan; a
            missing, unreadable, 4D or NaN file; modalities on different grids; a scan that
            is not skull-stripped for a model not trained on raw scans; a bad output name; a
            model that does not fit its plan; members with different plans; an uncertainty
            map of one member without ``tta``. Nothing is written then.

    Example:

    >>> import nibabel as nib, os, tempfile
    >>> from tfversky.models import unet3d
    >>> folder = tempfile.mkdtemp()
    >>> brain = np.zeros((20, 20, 20), np.float32); brain[4:16, 4:16, 4:16] = 1
    >>> scans = {m: os.path.join(folder, m + ".nii.gz") for m in ("T1", "T2", "FLAIR")}
    >>> for path in scans.values():
    ...     nib.save(nib.Nifti1Image(brain * np.random.rand(20, 20, 20), np.eye(4)), path)
    >>> plan = plan_lib.Plan(grid=preprocessing.ReferenceGrid((8, 8, 8), (2.0, 2.0, 2.0)))
    >>> model = plan_lib.attach(unet3d(base_filters=2, depth=2), plan)
    >>> result = segment(model, scans, os.path.join(folder, "seg.nii.gz"))
    >>> result.mask.shape, nib.load(os.path.join(folder, "seg.nii.gz")).shape
    ((20, 20, 20), (20, 20, 20))
    >>> other = plan_lib.attach(unet3d(base_filters=2, depth=2), plan)
    >>> both = segment([model, other], scans, tta=True, uncertainty_out=os.path.join(
    ...     folder, "spread.nii.gz"))
    >>> both.uncertainty.shape
    (20, 20, 20)
    """
    # The options' rules before any scan is read (the window's size against the model later).
    for rule, value in ((arguments.overlap, overlap), (arguments.patch_size, patch_size)):
        if value is not None:
            rule(value)
    arguments.positive_int(batch_size, "batch_size")
    members = _members(model)
    if plan is None:
        plan = ensemble_plan([plan_lib.read_plan(member) for member in members])
    point = operating_point(plan, threshold, min_lesion_mm3)
    check_uncertainty(len(members), tta, uncertainty_out is not None)
    for member in members:
        plan_lib.check_channels(member, plan)
    ordered = match_modalities(scans, plan)
    for path in (out, probabilities_out, uncertainty_out):
        if path is not None:
            io.check_nifti_name(path)
    try:
        image, reference = io.load_modalities(ordered, resample_to_first=resample_to_first)
        image = _masked(image, reference, brain_mask, check_skull, plan)
    except io.ScanError as err:
        raise io.ScanError(f"{err} (This model takes {', '.join(plan.modalities)}: one 3D "
                           f"scan each.)") from None
    on_grid, grid_affine = prepare_scan(image, reference.affine, plan, grid_affine=grid_affine)
    on_grid = segment_on_grid(members, on_grid, plan, patch_size=patch_size, overlap=overlap,
                              batch_size=batch_size, tta=tta,
                              uncertainty=uncertainty_out is not None, progress=progress)
    probabilities, spread = on_grid if uncertainty_out is not None else (on_grid, None)
    probabilities, mask, count = back_to_scan(
        probabilities, grid_affine, reference.affine, image.shape[:3],
        threshold=point["threshold"], min_lesion_mm3=point["min_lesion_mm3"])
    if spread is not None:  # interpolated as the probabilities are
        spread = preprocessing.to_native(spread, grid_affine, reference.affine,
                                         image.shape[:3], order=1,
                                         antialias=True).astype(np.float32)
    for data, path in ((mask, out), (probabilities, probabilities_out),
                       (spread, uncertainty_out)):
        if path is not None:
            io.save_like(data, reference, path)
    voxel_ml = float(np.prod(voxel_size_mm(reference.affine))) / 1000.0
    return Segmentation(mask, probabilities, reference, grid_affine, count,
                        float(mask.sum(dtype=np.int64)) * voxel_ml, ordered, point, spread)
