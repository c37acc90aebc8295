"""Read one scan's files, check them, and turn them into one ``ms_lesions`` example.

Every check names the subject and the file, says what is wrong and what to do. The one
known defect of the public data is fixed up instead: lesion masks stored as floating point
(values 0.0 and 1.0, up to rounding) are accepted and rounded.
"""

from __future__ import annotations

import dataclasses

import nibabel as nib
import numpy as np

from tfds_ms.layouts import Scan
from tfversky import io, preprocessing

# A float mask value this close to 0 or 1 is taken as that value.
_LABEL_ROUNDING = 1e-3


class InvalidScanError(ValueError):
    """A scan's file is unreadable, or its contents break an assumption of the dataset."""


@dataclasses.dataclass
class LoadedScan:
    """A scan in canonical (RAS+) orientation.

    Attributes:
        image: float32 (X, Y, Z, 3): T1, T2, FLAIR.
        label: uint8 (X, Y, Z), 1 = lesion.
        affine: voxel-to-world affine of ``image`` and ``label``.
        native_affine, native_shape: the files' own affine and 3D shape, before reorientation:
            what a prediction must be mapped back onto.
    """

    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    native_affine: np.ndarray
    native_shape: tuple


def _read(path, subject: str, what: str):
    """Loads a NIfTI file as (canonical affine, native affine, native shape, raw data)."""
    try:
        data, img = io.read_volume(path, f"the {what}")
    except io.ScanError as err:
        raise InvalidScanError(f"Subject {subject}: {err} Copy it again from the dataset "
                               f"archive.") from None
    # Canonical (RAS+) orientation by flipping and permuting axes: no resampling.
    orientation = nib.orientations.io_orientation(img.affine)
    canonical_affine = img.affine @ nib.orientations.inv_ornt_aff(orientation, data.shape)
    canonical = nib.orientations.apply_orientation(data, orientation)
    return canonical_affine, img.affine, tuple(int(n) for n in data.shape), canonical


def _check_same_grid(subject, what, path, shape, affine, ref_what, ref_path, ref_shape, ref_affine):
    if not io.same_grid(shape, affine, ref_shape, ref_affine):
        raise InvalidScanError(
            f"Subject {subject}: the {what} file {path} (shape {shape}) is not on the voxel grid "
            f"of the {ref_what} file {ref_path} (shape {ref_shape}); affines\n{affine}\nand\n"
            f"{ref_affine}. All modalities and the mask of a scan must be co-registered on one "
            f"grid: use the datasets' preprocessed files, or resample them first.")


def _binary_label(data, subject, path) -> np.ndarray:
    """Checks and converts a mask to uint8 {0, 1}; float masks of 0.0/1.0 are fixed up."""
    if np.issubdtype(data.dtype, np.floating):
        if not np.isfinite(data).all():
            raise InvalidScanError(f"Subject {subject}: the mask file {path} holds NaN or Inf.")
        rounded = np.round(data)
        if np.abs(data - rounded).max() <= _LABEL_ROUNDING:
            data = rounded
    values = np.unique(data)
    if not np.isin(values, (0, 1)).all():
        shown = ", ".join(str(v) for v in values[:10]) + (", ..." if len(values) > 10 else "")
        raise InvalidScanError(
            f"Subject {subject}: the mask file {path} holds values {shown}; expected 0 "
            f"(background) and 1 (lesion). Binarise it first, e.g. mask > 0.5 for a "
            f"probabilistic mask, or pick one label of a multi-class map.")
    return data.astype(np.uint8)


def load_scan(scan: Scan) -> LoadedScan:
    """Reads T1, T2, FLAIR and the mask of one scan, checked and in canonical orientation.

    Raises:
        InvalidScanError: a file is unreadable or truncated; is not 3D; holds NaN/Inf; the
            files are not on one voxel grid; the mask holds values other than 0/1.
    """
    channels, ref = [], None
    for modality, path in scan.images.items():
        affine, native_affine, native_shape, data = _read(path, scan.subject, modality)
        if not np.isfinite(data).all():
            count = int((~np.isfinite(data)).sum())
            raise InvalidScanError(
                f"Subject {scan.subject}: the {modality} file {path} holds {count} NaN/Inf "
                f"voxels. Replace them (e.g. with 0, the background) before building.")
        if ref is None:
            ref = (modality, path, data.shape, affine, native_affine, native_shape)
        else:
            _check_same_grid(scan.subject, modality, path, data.shape, affine, *ref[:4])
        channels.append(data.astype(np.float32))
    image = np.stack(channels, axis=-1)
    if not image.any():
        raise InvalidScanError(f"Subject {scan.subject}: every voxel of {ref[1]} and the other "
                               f"modalities is 0; the scan holds no image.")
    affine, _, _, data = _read(scan.label, scan.subject, "mask")
    _check_same_grid(scan.subject, "mask", scan.label, data.shape, affine, *ref[:4])
    label = _binary_label(data, scan.subject, scan.label)
    return LoadedScan(image, label, ref[3], ref[4], ref[5])


def make_example(scan: Scan, grid: preprocessing.ReferenceGrid, register: bool = False) -> dict:
    """One ``ms_lesions`` example: the scan on ``grid``, normalised, with its provenance.

    With ``register``, the grid is placed by rigid registration of the T1 to the MNI152
    template (``tfds_ms.registration``, needs SimpleITK) instead of centred on the brain.

    Example:

    >>> import tempfile
    >>> from tfds_ms import layouts, synth
    >>> root = tempfile.mkdtemp()
    >>> _ = synth.synthesize(root, subjects=1, layout="isbi2015", resolution=6, progress=False)
    >>> scan = layouts.find_scans(root, "isbi2015")[0]
    >>> example = make_example(scan, preprocessing.ReferenceGrid((16, 24, 24), (10, 8.4, 8)))
    >>> example["image"].shape, example["label"].dtype, example["subject"]
    ((16, 24, 24, 3), dtype('uint8'), 'training01')
    """
    loaded = load_scan(scan)
    grid_affine = None
    if register:
        from tfds_ms import registration  # SimpleITK is optional: import it only when asked

        grid_affine = registration.registered_grid_affine(loaded.image[..., 0], loaded.affine,
                                                          grid)
    try:
        image, label, grid_affine = preprocessing.prepare_volume(
            loaded.image, loaded.affine, grid, loaded.label, grid_affine=grid_affine)
    except ValueError as err:
        raise InvalidScanError(f"Subject {scan.subject} ({scan.images['t1']}): {err}") from err
    return {
        "image": image,
        "label": label,
        "subject": scan.subject,
        "scan_id": scan.scan_id,
        "affine": loaded.native_affine.astype(np.float64),
        "shape": np.array(loaded.native_shape, np.int32),
        "grid_affine": grid_affine.astype(np.float64),
        "lesion_voxels": int(label.sum()),
    }
