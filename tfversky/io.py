"""Images in, NIfTI out: reading scans with clear errors, and writing results like the input.

The one home of file I/O for the core, the dataset builder (``tfds_ms``) and the command
line. Readers sit behind one interface (``read_image``, as nnU-Net's ``BaseReaderWriter``):
nibabel for NIfTI, SimpleITK (optional) for MetaImage and NRRD, chosen by the file ending,
each giving the voxels, a RAS affine and header facts. Writers keep what a viewer needs to overlay a result on its scan: the input's affine,
its qform/sform codes and the rest of its header.
"""

from __future__ import annotations

import dataclasses
import os
import zlib
from collections.abc import Mapping

import numpy as np

from tfversky._extras import MissingExtraError, require
from tfversky._files import atomic_path

# Two volumes share a voxel grid when their shapes match and no corner of the grid moves by
# more than this many mm between their affines. Registered scans of one subject agree to
# rounding (headers often hold float32); 0.05 mm is still far below any voxel in use.
GRID_ATOL_MM = 0.05


def _corners(shape) -> np.ndarray:
    """The 8 corner voxels of a 3D grid, homogeneous coordinates (4, 8)."""
    extent = np.asarray(shape[:3], float) - 1
    bits = np.array([[(k >> axis) & 1 for axis in range(3)] for k in range(8)], float)
    return np.vstack([(bits * extent).T, np.ones(8)])


def grid_mismatch_mm(shape, affine_a, affine_b) -> float:
    """Largest distance (mm) a corner of a ``shape`` grid moves between two affines."""
    corners = _corners(shape)
    moved = (np.asarray(affine_a, float) - np.asarray(affine_b, float)) @ corners
    return float(np.linalg.norm(moved[:3], axis=0).max())


def same_grid(shape_a, affine_a, shape_b, affine_b) -> bool:
    """Whether two volumes share one voxel grid: the same 3D shape, and no grid corner more
    than ``GRID_ATOL_MM`` apart in world space.

    Example:

    >>> same_grid((2, 3, 4), np.eye(4), (2, 3, 4), np.eye(4) + 1e-4)
    True
    >>> shifted = np.eye(4); shifted[0, 3] = 0.5
    >>> same_grid((2, 3, 4), np.eye(4), (2, 3, 4), shifted)
    False
    """
    return (tuple(shape_a)[:3] == tuple(shape_b)[:3]
            and grid_mismatch_mm(shape_a, affine_a, affine_b) <= GRID_ATOL_MM)


class ScanError(ValueError):
    """A scan file that cannot be used: missing, unreadable, wrong dimensionality, or
    not on the same voxel grid as the other modalities. The message names the file."""



# File endings each reader takes; ``reader_for`` picks by ending, nibabel first for NIfTI.
NIFTI_ENDINGS = (".nii", ".nii.gz")
SIMPLEITK_ENDINGS = (".mha", ".mhd", ".nrrd", ".nhdr") + NIFTI_ENDINGS
IMAGE_ENDINGS = tuple(dict.fromkeys(NIFTI_ENDINGS + SIMPLEITK_ENDINGS))
# ITK's world is LPS (x to the left, y to the back); ours, nibabel's, is RAS.
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclasses.dataclass(frozen=True)
class Volume:
    """One image as every reader returns it.

    Attributes:
        data: The voxels in the file's own dtype and voxel order (axis 0 = the file's i).
        affine: 4x4 voxel-to-world affine in RAS+ millimetres (nibabel's convention).
        facts: Header facts: ``reader``, ``spacing`` (mm per axis), ``dtype`` and, from
            nibabel, the ``image`` itself (whose header a writer may copy).
    """

    data: np.ndarray
    affine: np.ndarray
    facts: dict


class NibabelReader:
    """NIfTI (and whatever else nibabel reads) through nibabel: the affine is nibabel's own
    (sform, else qform), already RAS. ``read`` raises ValueError for a file it cannot parse,
    as every reader does."""

    name = "nibabel"
    endings = NIFTI_ENDINGS

    def read(self, path) -> Volume:
        nib = require("nibabel")
        try:
            image = nib.load(path)
            # nibabel reads lazily: decompressing here is what finds a truncated or corrupt file.
            data = np.asarray(image.dataobj)
        except (nib.filebasedimages.ImageFileError, EOFError, zlib.error) as err:
            raise ValueError(str(err) or type(err).__name__) from None
        return Volume(data, np.asarray(image.affine, float),
                      {"reader": self.name, "spacing": tuple(float(z) for z in
                                                             image.header.get_zooms()[:3]),
                       "dtype": data.dtype, "image": image})


class SimpleITKReader:
    """MetaImage (``.mha``/``.mhd``), NRRD and NIfTI through SimpleITK (nnU-Net's
    ``SimpleITKIO``). ITK gives origin, spacing and direction cosines in LPS: they become
    a RAS affine here, the one place where that conversion happens."""

    name = "SimpleITK"
    endings = SIMPLEITK_ENDINGS

    def read(self, path) -> Volume:
        sitk = require("SimpleITK")
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError as err:  # ITK's message: its last line says what failed
            raise ValueError(str(err).strip().splitlines()[-1].strip()) from None
        # GetArrayFromImage is (k, j, i): reversed to the (i, j, k) order of the affine.
        data = sitk.GetArrayFromImage(image).transpose()
        if image.GetNumberOfComponentsPerPixel() > 1:  # vector pixels come first after .T
            data = np.moveaxis(data, 0, -1)
        dims = image.GetDimension()
        lps = np.eye(4)
        direction = np.reshape(image.GetDirection(), (dims, dims))
        lps[:dims, :dims] = direction @ np.diag(image.GetSpacing())
        lps[:dims, 3] = image.GetOrigin()
        return Volume(data, _LPS_TO_RAS @ lps,
                      {"reader": self.name, "spacing": tuple(image.GetSpacing()),
                       "dtype": data.dtype})


READERS = {"nibabel": NibabelReader(), "simpleitk": SimpleITKReader()}


def reader_for(path, reader: str | None = None):
    """The reader of a file: ``reader`` by name (``"nibabel"``, ``"simpleitk"``), else by its
    ending: nibabel for ``.nii``/``.nii.gz``, SimpleITK for ``.mha``, ``.mhd``, ``.nrrd``,
    ``.nhdr``; nibabel for any other ending (it knows more formats).

    Example:

    >>> reader_for("a.mha").name, reader_for("a.nii.gz").name, reader_for("a.nii", "simpleitk").name
    ('SimpleITK', 'nibabel', 'SimpleITK')
    """
    if reader is not None:
        if reader.lower() not in READERS:
            raise ValueError(f"Invalid value for argument `reader`: expected one of "
                             f"{tuple(READERS)}. Received: reader={reader!r}")
        return READERS[reader.lower()]
    if str(path).lower().endswith(NIFTI_ENDINGS):
        return READERS["nibabel"]
    if str(path).lower().endswith(SIMPLEITK_ENDINGS):
        return READERS["simpleitk"]
    return READERS["nibabel"]


def read_image(path, name: str | None = None, reader: str | None = None) -> Volume:
    """Read one 3D image with the reader its ending asks for (``reader_for``): the voxels,
    their RAS affine and header facts.

    Trailing axes of length 1 (e.g. (D, H, W, 1) from some converters) are dropped.

    Args:
        path: The file (``IMAGE_ENDINGS``, or anything nibabel reads).
        name: What the file is, for error messages (e.g. ``"FLAIR"``). Defaults to None.
        reader: ``"nibabel"`` or ``"simpleitk"`` instead of choosing by ending. Defaults
            to None.

    Raises:
        ScanError: naming the file, if it is missing, unreadable or corrupt, or not 3D;
            or if it needs SimpleITK and SimpleITK is not installed.

    Example:

    >>> import nibabel as nib, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "t1.nii.gz")
    >>> nib.save(nib.Nifti1Image(np.ones((4, 5, 6), "float32"), np.diag([2.0, 1, 1, 1])), path)
    >>> volume = read_image(path)
    >>> volume.data.shape, volume.facts["spacing"], volume.facts["reader"]
    ((4, 5, 6), (2.0, 1.0, 1.0), 'nibabel')
    """
    label = f"{name} file {str(path)!r}" if name else f"file {str(path)!r}"
    if not os.path.isfile(path):
        raise ScanError(f"{label} does not exist" + (" (it is a directory)" if os.path.isdir(path)
                                                     else "") + ".")
    chosen = reader_for(path, reader)
    try:
        volume = chosen.read(path)
    except MissingExtraError as err:
        raise ScanError(f"{label} needs SimpleITK to be read, and it is not installed: {err} "
                        f"Or convert the file to .nii.gz.") from None
    except (OSError, ValueError) as err:  # each reader raises ValueError for a bad file
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ScanError(f"{label} cannot be read as an image by {chosen.name}: {reason}. Is it "
                        f"a complete {' / '.join(chosen.endings[:4])} file?") from None
    data = volume.data
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ScanError(
            f"{label} has shape {data.shape}, but a 3D volume is expected. Pass one volume "
            f"(e.g. extract it with nibabel: image.slicer[..., 0]).")
    return dataclasses.replace(volume, data=data)


def read_volume(path, name: str | None = None):
    """Read one 3D volume: ``(data, image)``, data in the file's own dtype, ``image`` a
    nibabel image carrying the affine (RAS) and header that outputs copy.

    The one reader of scans for inference and for the dataset builder (``read_image``
    underneath: nibabel for NIfTI, SimpleITK for ``.mha``/``.nrrd``). Trailing axes of
    length 1 are dropped.

    Args:
        path: The file (``IMAGE_ENDINGS``, or anything nibabel reads).
        name: What the file is, for error messages (e.g. ``"FLAIR"``). Defaults to None.

    Raises:
        ScanError: as ``read_image``.
    """
    volume = read_image(path, name)
    image = volume.facts.get("image")
    if image is None:  # not read by nibabel: a NIfTI header of the same grid stands in
        image = grid_image(volume.data.shape, volume.affine)
    return volume.data, image


def load_scan(path, name: str | None = None):
    """Read one 3D scan with nibabel: returns ``(data, image)``, data a float32 (D, H, W) array.

    Trailing axes of length 1 (e.g. (D, H, W, 1) from some converters) are dropped.

    Args:
        path: File nibabel can read (NIfTI ``.nii``/``.nii.gz``, Analyze, MGH, ...).
        name: What the file is, for error messages (e.g. ``"FLAIR"``). Defaults to None.

    Raises:
        ScanError: naming the file, if it is missing, unreadable or corrupt, not 3D, or
            holds NaN/Inf.

    Example:

    >>> import nibabel as nib, numpy as np, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "t1.nii.gz")
    >>> nib.save(nib.Nifti1Image(np.ones((4, 5, 6), "float32"), np.eye(4)), path)
    >>> data, image = load_scan(path, "T1")
    >>> data.shape, str(data.dtype)
    ((4, 5, 6), 'float32')
    """
    data, image = read_volume(path, name)
    data = data.astype(np.float32, copy=False)
    if not np.isfinite(data).all():
        label = f"{name} file {str(path)!r}" if name else f"file {str(path)!r}"
        raise ScanError(f"{label} contains NaN or Inf voxels: fix the scan first.")
    return data, image


def load_modalities(paths: Mapping[str, str], resample_to_first: bool = False):
    """Read the modalities of one subject onto one voxel grid: (D, H, W, M) and the reference.

    Args:
        paths: Modality name -> file, in the model's channel order, e.g.
            ``{"T1": ..., "T2": ..., "FLAIR": ...}``. The first one is the reference.
        resample_to_first: Resample every other modality onto the first one's grid
            (``preprocessing.resample_to_grid``: linear, 0 outside its field of view) instead
            of failing when shapes or affines differ. Defaults to False.

    Returns:
        ``(image, reference)``: float32 (D, H, W, M) array and the first modality's nibabel
        image, whose affine and header the outputs should carry.

    Raises:
        ScanError: naming the file that is missing, unreadable, not 3D, or on another grid
            than the first (the message offers ``resample_to_first``).

    Example:

    >>> import nibabel as nib, numpy as np, tempfile, os
    >>> folder = tempfile.mkdtemp()
    >>> paths = {m: os.path.join(folder, m + ".nii.gz") for m in ("T1", "T2", "FLAIR")}
    >>> for p in paths.values():
    ...     nib.save(nib.Nifti1Image(np.ones((4, 5, 6), "float32"), np.eye(4)), p)
    >>> image, reference = load_modalities(paths)
    >>> image.shape
    (4, 5, 6, 3)
    """
    items = list(paths.items())
    first_name, first_path = items[0]
    first, reference = load_scan(first_path, first_name)
    channels = [first]
    for name, path in items[1:]:
        data, image = load_scan(path, name)
        on_grid = same_grid(data.shape, image.affine, first.shape, reference.affine)
        if not on_grid and not resample_to_first:
            difference = (f"shape {data.shape} vs {first.shape}" if data.shape != first.shape
                          else f"affine {np.round(image.affine, 3).tolist()} vs "
                               f"{np.round(reference.affine, 3).tolist()}")
            raise ScanError(
                f"{name} file {str(path)!r} is not on the voxel grid of {first_name} file "
                f"{str(first_path)!r}: {difference}. The modalities must be co-registered; "
                f"to resample {name} linearly onto {first_name}'s grid pass resample_to_first="
                f"True (command line: --resample-to-first).")
        if not on_grid:
            # The images' one resampler, with its edge rule: the scan's voxels fill its field
            # of view (a voxel on its edge up to float32 rounding of the affines keeps its
            # value).
            from tfversky import preprocessing  # SciPy is needed only to resample

            data = preprocessing.resample_to_grid(data, image.affine, reference.affine,
                                                  first.shape)
        channels.append(data)
    return np.stack(channels, axis=-1), reference


def check_nifti_name(path) -> None:
    """Raise a ValueError unless ``path`` ends in .nii or .nii.gz (before any work is done).

    Example:

    >>> check_nifti_name("seg.nii.gz")
    """
    if not str(path).endswith((".nii", ".nii.gz")):
        raise ValueError(f"Invalid output file name {str(path)!r}: it must end in .nii or "
                         f".nii.gz (NIfTI).")


def save_like(data, reference, path) -> None:
    """Write ``data`` as NIfTI with the reference scan's affine and header.

    The qform and sform (matrices and codes), voxel sizes and units are kept, so the result
    overlays the scan in any viewer; the data type is ``data``'s own (e.g. uint8 for a mask,
    float32 for probabilities) with no intensity scaling.

    Args:
        data: (D, H, W) array of the reference's shape.
        reference: nibabel image whose grid ``data`` is on (from ``load_scan``).
        path: Output file, ``.nii`` or ``.nii.gz``.

    Raises:
        ValueError: if the shapes differ or the file name does not end in .nii / .nii.gz.

    Example:

    >>> import nibabel as nib, numpy as np, tempfile, os
    >>> scan = nib.Nifti1Image(np.ones((4, 5, 6), "float32"), np.diag([2.0, 1, 1, 1]))
    >>> path = os.path.join(tempfile.mkdtemp(), "mask.nii.gz")
    >>> save_like(np.zeros((4, 5, 6), np.uint8), scan, path)
    >>> nib.load(path).get_data_dtype(), bool(np.allclose(nib.load(path).affine, scan.affine))
    (dtype('uint8'), True)
    """
    nib = require("nibabel")

    data = np.asarray(data)
    if data.shape != reference.shape[:data.ndim] or data.ndim != 3:
        raise ValueError(f"`data` must be 3D with the reference's shape {reference.shape[:3]}. "
                         f"Received: data.shape={data.shape}")
    check_nifti_name(path)
    image = nib.Nifti1Image(data, reference.affine, header=reference.header)
    header = image.header
    source = reference.header
    if hasattr(source, "get_qform"):
        # The constructor may pick its own codes when the reference's are 0: copy them back.
        header.set_qform(source.get_qform(), code=int(source["qform_code"]))
        header.set_sform(source.get_sform(), code=int(source["sform_code"]))
    header.set_data_dtype(data.dtype)
    header.set_slope_inter(1.0, 0.0)  # stored values are the values: no rescaling on read
    header["descrip"] = b"tfversky"
    if header.get_xyzt_units()[0] == "unknown":  # the affine is in mm: say so (BIDS asks)
        header.set_xyzt_units("mm", header.get_xyzt_units()[1])
    with atomic_path(path) as partial:  # never a half-written mask under its name
        nib.save(image, partial)


def to_ras(data: np.ndarray, affine) -> tuple[np.ndarray, np.ndarray]:
    """A volume in RAS+ voxel order (axis 0 left -> right, 1 posterior -> anterior, 2
    inferior -> superior) and its affine, by flipping and permuting axes: no resampling,
    the same voxels in the same world positions.

    Args:
        data: (X, Y, Z) or (X, Y, Z, M) array.
        affine: Its 4x4 voxel-to-world affine.

    Returns:
        ``(data, affine)`` in RAS+ order (the closest for an oblique scan).

    Example:

    >>> lps = np.diag([-1.0, -1.0, 1.0, 1.0]); lps[:2, 3] = 3
    >>> data, affine = to_ras(np.arange(64.0).reshape(4, 4, 4), lps)
    >>> np.diag(affine).tolist(), affine[:3, 3].tolist(), float(data[0, 0, 0])
    ([1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0], 60.0)
    """
    import nibabel as nib

    affine = np.asarray(affine, float)
    orientation = nib.orientations.io_orientation(affine)
    ras_affine = affine @ nib.orientations.inv_ornt_aff(orientation, data.shape[:3])
    return nib.orientations.apply_orientation(data, orientation), ras_affine


def grid_image(shape, affine):
    """A header-only NIfTI image of a grid (for ``save_like`` where only the grid is known,
    e.g. TFDS records holding ``affine`` and ``shape``); no voxel array is allocated.

    Example:

    >>> grid_image((4, 5, 6), np.eye(4)).shape
    (4, 5, 6)
    """
    import nibabel as nib

    shape = tuple(int(n) for n in shape)
    image = nib.Nifti1Image(np.broadcast_to(np.uint8(0), shape), np.asarray(affine, float))
    image.header.set_qform(image.affine, code=1)
    image.header.set_sform(image.affine, code=1)
    image.header.set_xyzt_units("mm")
    return image
