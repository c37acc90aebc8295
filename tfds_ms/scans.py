"""Read one scan's files, check them, and turn them into one ``ms_lesions`` example.

Every check names the subject and the file, says what is wrong and what to do. The one
known defect of the public data is fixed up instead: lesion masks stored as floating point
(values 0.0 and 1.0, up to rounding) are accepted and rounded. A scan whose brain reaches
beyond the reference grid's field of view is cropped to it, with a ``FieldOfViewWarning``
that names the case.
"""

from __future__ import annotations

import dataclasses
import warnings

import nibabel as nib
import numpy as np

from tfds_ms.layouts import Scan
from tfversky import io, preprocessing

# A float mask value this close to an integer label is taken as that label.
_LABEL_ROUNDING = 1e-3
# Label value of voxels the loss leaves out (nnU-Net's `ignore` label): pass it to
# ``tfversky.TverskyLoss(ignore_index=IGNORE_LABEL)``.
IGNORE_LABEL = 255


class InvalidScanError(ValueError):
    """A scan's file is unreadable, or its contents break an assumption of the dataset."""


class FieldOfViewWarning(UserWarning):
    """Part of a scan's brain lies outside the reference grid, which crops it."""


@dataclasses.dataclass
class LoadedScan:
    """A scan in canonical (RAS+) orientation.

    Attributes:
        image: float32 (X, Y, Z, M): the scan's modalities, in ``Scan.images``' order.
        label: uint8 (X, Y, Z): 1 = lesion, ``IGNORE_LABEL`` = left out, 0 = background.
        affine: voxel-to-world affine of ``image`` and ``label``.
        native_affine, native_shape: the files' own affine and 3D shape, before reorientation:
            what a prediction must be mapped back onto.
    """

    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    native_affine: np.ndarray
    native_shape: tuple


def _read(path, case: str, what: str):
    """Loads a NIfTI file as (canonical affine, native affine, native shape, raw data)."""
    try:
        data, img = io.read_volume(path, f"the {what}")
    except io.ScanError as err:
        raise InvalidScanError(f"Case {case}: {err} Copy it again from the dataset "
                               f"archive.") from None
    # Canonical (RAS+) orientation by flipping and permuting axes: no resampling.
    orientation = nib.orientations.io_orientation(img.affine)
    canonical_affine = img.affine @ nib.orientations.inv_ornt_aff(orientation, data.shape)
    canonical = nib.orientations.apply_orientation(data, orientation)
    return canonical_affine, img.affine, tuple(int(n) for n in data.shape), canonical


def _check_same_grid(case, what, path, shape, affine, ref_what, ref_path, ref_shape, ref_affine):
    if not io.same_grid(shape, affine, ref_shape, ref_affine):
        raise InvalidScanError(
            f"Case {case}: the {what} file {path} (shape {shape}) is not on the voxel grid "
            f"of the {ref_what} file {ref_path} (shape {ref_shape}); affines\n{affine}\nand\n"
            f"{ref_affine}. All modalities and the mask of a scan must be co-registered on one "
            f"grid: use the datasets' preprocessed files, or resample them first.")


def _label_map(data, scan: Scan, path) -> np.ndarray:
    """The mask as uint8 0 (background), 1 (lesion), ``IGNORE_LABEL`` (left out by the loss).

    Values are read through ``scan.labels``; float masks of exact label values (up to
    rounding) are fixed up.
    """
    allowed = np.array(sorted(scan.labels.values()))
    if np.issubdtype(data.dtype, np.floating):
        if not np.isfinite(data).all():
            raise InvalidScanError(f"Case {scan.scan_id}: the mask file {path} holds NaN or Inf.")
        rounded = np.round(data)
        if np.abs(data - rounded).max() <= _LABEL_ROUNDING:
            data = rounded
    values = np.unique(data)
    if not np.isin(values, allowed).all():
        shown = ", ".join(str(v) for v in values[:10]) + (", ..." if len(values) > 10 else "")
        expected = ", ".join(f"{v} ({name})" for name, v in sorted(scan.labels.items(),
                                                                   key=lambda kv: kv[1]))
        raise InvalidScanError(
            f"Case {scan.scan_id}: the mask file {path} holds values {shown}; expected "
            f"{expected}. Binarise it first, e.g. mask > 0.5 for a probabilistic mask, or "
            f"pick one label of a multi-class map (nnU-Net: list every value in dataset.json's "
            f"`labels`).")
    label = (data == scan.labels["lesion"]).astype(np.uint8)
    if "ignore" in scan.labels:
        label[data == scan.labels["ignore"]] = IGNORE_LABEL
    return label


def load_scan(scan: Scan) -> LoadedScan:
    """Reads the modalities (in ``scan.images``' order) and the mask of one scan, checked
    and in canonical orientation.

    Raises:
        InvalidScanError: a file is unreadable or truncated; is not 3D; holds NaN/Inf; the
            files are not on one voxel grid; the mask holds values not in ``scan.labels``.
    """
    channels, ref = [], None
    for modality, path in scan.images.items():
        affine, native_affine, native_shape, data = _read(path, scan.scan_id, modality)
        if not np.isfinite(data).all():
            count = int((~np.isfinite(data)).sum())
            raise InvalidScanError(
                f"Case {scan.scan_id}: the {modality} file {path} holds {count} NaN/Inf "
                f"voxels. Replace them (e.g. with 0, the background) before building.")
        if ref is None:
            ref = (modality, path, data.shape, affine, native_affine, native_shape)
        else:
            _check_same_grid(scan.scan_id, modality, path, data.shape, affine, *ref[:4])
        channels.append(data.astype(np.float32))
    image = np.stack(channels, axis=-1)
    if not image.any():
        raise InvalidScanError(f"Case {scan.scan_id}: every voxel of {ref[1]} and the other "
                               f"modalities is 0; the scan holds no image.")
    affine, _, _, data = _read(scan.label, scan.scan_id, "mask")
    _check_same_grid(scan.scan_id, "mask", scan.label, data.shape, affine, *ref[:4])
    label = _label_map(data, scan, scan.label)
    return LoadedScan(image, label, ref[3], ref[4], ref[5])


def make_example(scan: Scan, grid: preprocessing.ReferenceGrid, register: bool = False,
                 clip_percentiles=preprocessing.DEFAULT_CLIP_PERCENTILES) -> dict:
    """One ``ms_lesions`` example: the scan on ``grid``, normalised, with its provenance.

    The scan is cut to its brain region first (``preprocessing.keep_brain_region``: the
    non-zero voxels of a skull-stripped scan, the foreground of a raw one), and whether it
    looked skull-stripped is recorded (``skull_stripped``). With ``register``, the grid is
    placed by rigid registration of the T1 to the MNI152 template (``tfds_ms.registration``,
    needs SimpleITK) instead of centred on the brain. The intensities are z-scored inside
    the brain after clipping to ``clip_percentiles``.

    Example:

    >>> import tempfile
    >>> from tfds_ms import layouts, synth
    >>> root = tempfile.mkdtemp()
    >>> _ = synth.synthesize(root, subjects=1, layout="isbi2015", resolution=6, progress=False)
    >>> scan = layouts.find_scans(root, "isbi2015")[0]
    >>> example = make_example(scan, preprocessing.ReferenceGrid((16, 24, 24), (10, 8.4, 8)))
    >>> example["image"].shape, example["label"].dtype, example["subject"]
    ((16, 24, 24, 3), dtype('uint8'), 'training01')

    Raises:
        InvalidScanError: as ``load_scan``; or ``register`` without a T1.

    Warns:
        FieldOfViewWarning: part of the brain lies outside the grid, which crops it.
    """
    loaded = load_scan(scan)
    image, stripping = preprocessing.keep_brain_region(loaded.image, loaded.affine)
    first = next(iter(scan.images.values()))
    grid_affine = None
    if register:
        from tfds_ms import registration  # SimpleITK is optional: import it only when asked

        if "T1" not in scan.images:
            raise InvalidScanError(f"Case {scan.scan_id}: register=True aligns the T1 to the "
                                   f"MNI152 T1 template, but the modalities are "
                                   f"{', '.join(scan.images)}. Add T1 or pass register=False.")
        grid_affine = registration.registered_grid_affine(
            image[..., list(scan.images).index("T1")], loaded.affine, grid)
    try:
        # resample_label carries lesion and IGNORE_LABEL apart (a lesion keeps a shared voxel).
        on_grid, label, grid_affine = preprocessing.prepare_volume(
            image, loaded.affine, grid, loaded.label, grid_affine=grid_affine,
            clip_percentiles=clip_percentiles)
    except ValueError as err:
        raise InvalidScanError(f"Case {scan.scan_id} ({first}): {err}") from err
    outside, extent = preprocessing.brain_outside_grid(image, loaded.affine, grid_affine,
                                                       grid.shape)
    if outside > 0:
        warnings.warn(
            f"Case {scan.scan_id} ({first}): {100 * outside:.2f} % of the brain lies outside "
            f"the reference grid's field of view ({' x '.join(f'{v:g}' for v in grid.field_of_view)}"
            f" mm; the brain spans {' x '.join(f'{v:.1f}' for v in extent)} mm) and is cropped. "
            f"For a larger grid pass MsLesionsConfig(grid=ReferenceGrid(shape, spacing)) "
            f"(train_ms.py: --grid-shape, --grid-spacing).", FieldOfViewWarning, stacklevel=2)
    return {
        "image": on_grid,
        "label": label,
        "subject": scan.subject,
        "scan_id": scan.scan_id,
        "affine": loaded.native_affine.astype(np.float64),
        "shape": np.array(loaded.native_shape, np.int32),
        "grid_affine": grid_affine.astype(np.float64),
        "lesion_voxels": int((label == 1).sum()),
        "skull_stripped": stripping.stripped,
    }
