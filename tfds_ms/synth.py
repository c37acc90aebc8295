"""Synthetic MS phantom: MS-like lesions on the real brain anatomy that nilearn ships.

The anatomy is the MNI ICBM152 2009a template (T1 and grey/white matter probability maps,
1 mm) packaged inside nilearn, read from disk: nothing is downloaded. Each subject gets

* lesions: periventricular ellipsoids (elongated, randomly oriented, like Dawson's fingers),
  small deep white-matter ellipsoids and confluent periventricular blobs, confined to white
  matter, with a soft (partial-volume) edge. Loads vary per subject; subject 2 has a very
  high load (~0.9 % of the brain) and subject 4 a very low one (~0.1 %), as the paper's
  Fig. 3/4 subjects.
* contrasts: T1 (the template's own, lesions hypointense), T2, FLAIR (lesions hyperintense,
  CSF dark), PD/DP and post-contrast T1 (GADO) for the layouts that carry them; per-subject
  contrast and gain, a smooth multiplicative bias field, Gaussian noise inside the brain.
* geometry: a small rigid misalignment (up to 6 degrees, 8 mm), its own voxel size
  (0.9-1.5 mm, anisotropic) and axis orientation, so the builder's reorientation and
  resampling do real work. Skull-stripped: zero outside the brain, as the public data.

Files are written in a real dataset's layout (``isbi2015``, ``msseg2016``, ``nnunet`` or
``bids``, see ``tfds_ms.layouts``; nnU-Net and BIDS with a chosen set of modalities) as gzipped NIfTI, so the same readers serve real and synthetic data.
``phantom.json`` at the top lists every subject's lesion volume and geometry (BIDS: listed in
``.bidsignore``; the BIDS output also gets a README and a derivatives description with
``GeneratedBy``, so pybids and the BIDS validator accept it). Every header states mm units.

Command line::

    python -m tfds_ms.synth --out DIR --subjects 15 --layout msseg2016 --seed 0
    python -m tfds_ms.synth --out DIR --layout nnunet --modalities FLAIR,T1 --test-subjects 4
    python -m tfds_ms.synth --out DIR --layout bids --modalities FLAIR,T1
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import pathlib
import sys
import time

import nibabel as nib
import numpy as np
from scipy import ndimage

from tfds_ms import layouts, threads
from tfversky import preprocessing

LAYOUTS = ("isbi2015", "msseg2016", "nnunet", "bids")
HIGH_LOAD_SUBJECT, LOW_LOAD_SUBJECT = 1, 3  # 0-based: the 2nd and 4th subject
_TEMPLATE_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
# Mean intensity of each tissue relative to white matter, per contrast. T1 uses the
# template's own T1 for the tissues (it carries the anatomy's detail) and only needs a
# lesion value. Lesions: hypointense on T1, hyperintense on T2/FLAIR/PD.
_CONTRASTS = {
    #         gm     wm    csf   lesion
    "t1": (None, None, None, 0.55),
    "t2": (1.30, 1.00, 2.30, 1.85),
    "flair": (1.25, 1.00, 0.25, 2.00),
    "pd": (1.20, 1.00, 1.35, 1.40),
    "gado": (None, None, None, 0.75),
}
# Field of view of each subject's scan around the brain (mm): the brain spans about
# 145 x 182 x 155 mm, plus room for the misalignment.
_SCAN_FOV = np.array([180.0, 215.0, 190.0])


def _nilearn_data_dir() -> pathlib.Path:
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("The synthetic phantom needs nilearn's MNI152 template files: "
                          "pip install 'nilearn==0.14.*'.")
    folder = pathlib.Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    missing = [name for name in _TEMPLATE_FILES.values() if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"nilearn at {folder.parent.parent} lacks the packaged template "
                                f"files {missing}; install nilearn 0.14 (pip install "
                                f"'nilearn==0.14.*').")
    return folder


@dataclasses.dataclass
class Anatomy:
    """The template anatomy on its own grid, with where lesions may be placed.

    Attributes:
        affine: voxel-to-world (MNI mm) affine.
        t1, gm, wm, csf: float32 maps in [0, 1]; t1 is the template T1 scaled so white
            matter is about 1.
        periventricular, deep_wm: (N, 3) voxel indices of candidate lesion centres.
        brain_ml: brain volume in mL.
    """

    affine: np.ndarray
    t1: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    periventricular: np.ndarray
    deep_wm: np.ndarray
    brain_ml: float

    @property
    def voxel_mm(self) -> float:
        return float(abs(self.affine[0, 0]))


def load_anatomy(resolution: float = 1.0) -> Anatomy:
    """Loads the MNI152 template from nilearn's package data, at ``resolution`` mm.

    Args:
        resolution: Isotropic voxel size in mm to work at, 1 to 8; > 1 makes every subject
            faster to synthesise (the template is 1 mm). Defaults to 1.0.

    Example:

    >>> anatomy = load_anatomy(4.0)
    >>> anatomy.t1.shape, 1500 < anatomy.brain_ml < 2200
    ((42, 50, 42), True)
    """
    if not 1 <= resolution <= 8:
        raise ValueError(f"Invalid value for argument `resolution`: expected a voxel size in mm "
                         f"from 1 (the template's) to 8 (coarser leaves no room for lesions). "
                         f"Received: resolution={resolution!r}")
    folder = _nilearn_data_dir()
    images = {key: nib.load(folder / name) for key, name in _TEMPLATE_FILES.items()}
    affine = images["t1"].affine
    maps = {key: np.asarray(img.dataobj, np.float32) / 255.0 for key, img in images.items()}
    if resolution != 1.0:
        grid_affine = affine @ np.diag([resolution] * 3 + [1.0])
        shape = np.ceil(np.array(maps["t1"].shape) / resolution).astype(int)
        maps = {key: preprocessing.resample_to_grid(m, affine, grid_affine, shape)
                for key, m in maps.items()}
        affine = grid_affine
    brain = maps["t1"] > 0.05  # the template is skull-stripped: zero outside the brain
    # Crop to the brain (plus a margin): halves the work of everything below.
    inside = np.argwhere(brain)
    lo, hi = np.maximum(inside.min(0) - 2, 0), inside.max(0) + 3
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    maps = {key: m[box] for key, m in maps.items()}
    brain = brain[box]
    affine = affine.copy()
    affine[:3, 3] = affine[:3, :3] @ lo + affine[:3, 3]
    gm = np.where(brain, maps["gm"], 0)
    wm = np.where(brain, maps["wm"], 0)
    csf = np.where(brain, np.clip(1 - gm - wm, 0, 1), 0).astype(np.float32)
    t1 = np.where(brain, maps["t1"] / np.median(maps["t1"][wm > 0.9]), 0).astype(np.float32)

    mm = resolution
    # Ventricles: CSF far from the brain's surface (sulcal CSF lies near it).
    depth = ndimage.distance_transform_edt(brain) * mm
    ventricles = (csf > 0.5) & (depth > 15)
    to_ventricle = ndimage.distance_transform_edt(~ventricles) * mm
    wm_depth = ndimage.distance_transform_edt(wm > 0.5) * mm
    # Distances below a voxel do not resolve at coarse resolutions: never ask for less.
    periventricular = np.argwhere((wm > 0.8) & (to_ventricle > 1)
                                  & (to_ventricle <= max(6, 1.5 * mm)))
    deep_wm = np.argwhere((wm > 0.9) & (to_ventricle > 10) & (wm_depth > 3))
    return Anatomy(affine, t1, gm.astype(np.float32), wm.astype(np.float32), csf,
                   periventricular, deep_wm, float(brain.sum() * mm ** 3 / 1000))


def _random_rotation(rng, max_degrees) -> np.ndarray:
    """A rotation by at most ``max_degrees`` about a random axis."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = np.deg2rad(rng.uniform(-max_degrees, max_degrees))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def ellipsoid_patch(shape, center, radii_mm, mm: float, rng, edge_mm: float = 1.0):
    """A randomly oriented soft ellipsoid: (box of slices into ``shape``, values in [0, 1]).

    The value is 0.5 on the surface and ramps over ``edge_mm`` (partial volume).

    Example:

    >>> box, soft = ellipsoid_patch((20, 20, 20), np.array([10, 10, 10]), np.array([3.0] * 3),
    ...                             1.0, np.random.default_rng(0))
    >>> int((soft >= 0.5).sum()) in range(100, 130)  # 4/3 pi 3^3 = 113 voxels
    True
    """
    rotation = _random_rotation(rng, 180)
    reach = int(np.ceil(max(radii_mm) / mm)) + 2
    lo = np.maximum(center - reach, 0)
    hi = np.minimum(center + reach + 1, shape)
    grids = np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij")
    offset = (np.stack(grids, -1) - center) * mm @ rotation  # mm, in the ellipsoid's frame
    radius = np.sqrt(((offset / radii_mm) ** 2).sum(-1))  # 1 on the surface
    soft = np.clip(0.5 + (1 - radius) * np.mean(radii_mm) / edge_mm, 0, 1)
    return tuple(slice(a, b) for a, b in zip(lo, hi)), soft


def _add_ellipsoid(lesions, anatomy, rng, center, radii_mm):
    """Paints one soft ellipsoid (edge ~1 mm of partial volume) into ``lesions`` in place."""
    box, soft = ellipsoid_patch(lesions.shape, center, radii_mm, anatomy.voxel_mm, rng)
    lesions[box] = np.maximum(lesions[box], soft * np.clip(anatomy.wm[box] / 0.6, 0, 1))


def _lesion_map(anatomy: Anatomy, rng, target_ml: float) -> np.ndarray:
    """Soft lesion map in [0, 1] on the template grid, with a hard volume of ~target_ml."""
    lesions = np.zeros(anatomy.wm.shape, np.float32)
    # Coarse working grids (tests, quick demos) get proportionally larger lesions, so that
    # lesions still cover whole voxels.
    scale = max(1.0, anatomy.voxel_mm / 2)
    voxel_ml = anatomy.voxel_mm ** 3 / 1000
    volume = 0.0
    while volume < target_ml:
        kind = rng.choice(["periventricular", "deep", "confluent"], p=[0.55, 0.3, 0.15])
        if kind == "deep":
            center = anatomy.deep_wm[rng.integers(len(anatomy.deep_wm))]
            shapes = [(center, scale * rng.uniform(1.5, 3.5, 3))]
        else:
            center = anatomy.periventricular[rng.integers(len(anatomy.periventricular))]
            # Dawson's fingers: elongated ovoids; confluent blobs: several overlapping ones.
            count = 1 if kind == "periventricular" else int(rng.integers(3, 7))
            shapes = []
            for _ in range(count):
                shift = 0 if count == 1 else rng.normal(0, 4 * scale / anatomy.voxel_mm, 3)
                radii = scale * rng.uniform(2, 4.5, 3) * np.array([1, 1, rng.uniform(1.3, 2.2)])
                shapes.append((np.round(center + shift).astype(int), radii))
        for c, radii in shapes:
            c = np.clip(c, 0, np.array(lesions.shape) - 1)
            _add_ellipsoid(lesions, anatomy, rng, c, radii)
        volume = float((lesions >= 0.5).sum()) * voxel_ml
    return lesions


def _lesion_target_ml(index: int, brain_ml: float, rng) -> float:
    """Lesion load: ~0.9 % / ~0.1 % of the brain for the high/low subjects, 0.2-0.5 % else."""
    if index == HIGH_LOAD_SUBJECT:
        return 0.009 * brain_ml
    if index == LOW_LOAD_SUBJECT:
        return 0.001 * brain_ml
    return float(np.exp(rng.uniform(np.log(0.002), np.log(0.005)))) * brain_ml


@dataclasses.dataclass
class ScanGeometry:
    """Where a subject's scan lies: its grid, and the rigid pose of the head in it.

    Attributes:
        affine, shape: voxel-to-world affine and shape of the scan grid.
        pose: 4x4 rigid map from template (MNI) world to the scan's world.
        spacing: voxel size (mm) per scan axis.
        to_scan: resamples a template-grid volume onto the scan grid (keyword options of
            ``tfversky.preprocessing.resample_to_grid``: linear unless ``order=0``).
    """

    affine: np.ndarray
    shape: np.ndarray
    pose: np.ndarray
    spacing: np.ndarray
    to_scan: object

    def info(self, lesion: np.ndarray, brain: np.ndarray) -> dict:
        """Lesion load and geometry of a scan, as ``phantom.json`` lists them."""
        voxel_ml = float(np.prod(self.spacing)) / 1000
        lesion_ml = float(lesion.sum()) * voxel_ml
        brain_ml = float(brain.sum()) * voxel_ml
        rotation = self.pose[:3, :3]
        return {
            "lesion_ml": round(lesion_ml, 3),
            "lesion_fraction_of_brain": round(lesion_ml / brain_ml, 5),
            "brain_ml": round(brain_ml, 1),
            "shape": self.shape.tolist(),
            "spacing_mm": np.round(self.spacing, 3).tolist(),
            "axis_codes": "".join(nib.aff2axcodes(self.affine)),
            "rotation_degrees": round(float(np.rad2deg(np.arccos(
                np.clip((np.trace(rotation) - 1) / 2, -1, 1)))), 2),
            "translation_mm": np.round(self.pose[:3, 3], 2).tolist(),
        }


def scan_geometry(anatomy: Anatomy, rng, spacing=None) -> ScanGeometry:
    """A random scan grid (axis order, orientation) and head pose (up to 6 degrees, 8 mm).

    Args:
        anatomy: The template the subject is made on.
        rng: The subject's NumPy generator.
        spacing: Voxel size (mm) per scan axis; defaults to a random 0.9-1.2 x 0.9-1.2 x
            1.0-1.5 times the anatomy's resolution.

    Example:

    >>> anatomy = load_anatomy(8.0)
    >>> g = scan_geometry(anatomy, np.random.default_rng(0), spacing=np.array([8.0, 8, 8]))
    >>> g.to_scan(anatomy.wm).shape == tuple(g.shape)
    True
    """
    if spacing is None:
        spacing = anatomy.voxel_mm * np.concatenate([rng.uniform(0.9, 1.2, 2),
                                                     rng.uniform(1.0, 1.5, 1)])
    axes = rng.permutation(3)
    signs = rng.choice([-1.0, 1.0], 3)
    orientation = np.zeros((3, 3))
    orientation[axes, np.arange(3)] = signs
    shape = np.ceil(np.abs(orientation.T) @ _SCAN_FOV / spacing).astype(int)
    rotation = _random_rotation(rng, 6)
    translation = rng.uniform(-8, 8, 3)
    pose = np.eye(4)
    pose[:3, :3], pose[:3, 3] = rotation, translation
    brain_center = preprocessing.brain_center(anatomy.t1, anatomy.affine)
    center = rotation @ brain_center + translation + rng.uniform(-5, 5, 3)
    affine = np.eye(4)
    affine[:3, :3] = orientation * spacing
    affine[:3, 3] = center - affine[:3, :3] @ ((shape - 1) / 2)

    # Reorient the template to the scan's axis order first, so that scipy reads it in memory
    # order (3x faster than through a permuted affine).
    transform = nib.orientations.ornt_transform(nib.io_orientation(anatomy.affine),
                                                nib.io_orientation(affine))
    source_affine = anatomy.affine @ nib.orientations.inv_ornt_aff(transform, anatomy.t1.shape)

    def to_scan(volume, **options):
        volume = np.ascontiguousarray(nib.orientations.apply_orientation(volume, transform))
        return preprocessing.resample_to_grid(volume, pose @ source_affine, affine, shape,
                                              **options)

    return ScanGeometry(affine, shape, pose, np.asarray(spacing, float), to_scan)


def bias_field(shape, rng, strength: float) -> np.ndarray:
    """Smooth multiplicative bias field: exp of a random quadratic over the scan.

    ``strength`` is the sd of the quadratic's coefficients: 0.05 gives about +-10 %.

    Example:

    >>> field = bias_field((8, 9, 10), np.random.default_rng(0), 0.05)
    >>> field.shape, bool(0.7 < field.min() <= field.max() < 1.4)
    ((8, 9, 10), True)
    """
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32) for n in shape],
                          indexing="ij", sparse=True)
    terms = (x, y, z, x * x, y * y, z * z, x * y, x * z, y * z)
    coefficients = [float(c) for c in rng.normal(0, strength, len(terms))]
    return np.exp(sum(c * t for c, t in zip(coefficients, terms)))


@dataclasses.dataclass
class Subject:
    """One synthetic subject on its own scan grid.

    Attributes:
        images: modality -> float32 volume (t1, t2, flair, pd, gado), zero outside the brain.
        lesion: float32 soft lesion map (partial volume) in [0, 1]; a rater's mask is
            ``lesion >= threshold`` (0.5 is the ground truth).
        wm: float32 white-matter probability before lesions were painted.
        affine: voxel-to-world affine of the scan grid.
        pose: 4x4 rigid map from template (MNI) world to the scan's world: the misalignment.
        info: geometry and lesion load, as written to ``phantom.json``.
        masks: rater key (``layouts.RATERS``) -> boolean mask, for phantoms whose raters
            are simulated (``tfds_ms.realistic``); None: raters are contours of ``lesion``.
    """

    images: dict
    lesion: np.ndarray
    wm: np.ndarray
    affine: np.ndarray
    pose: np.ndarray
    info: dict
    masks: dict | None = None


def synthesize_subject(anatomy: Anatomy, index: int, seed: int = 0) -> Subject:
    """Synthesises subject ``index`` (0-based); the same (index, seed) gives the same subject.

    Example:

    >>> subject = synthesize_subject(load_anatomy(4.0), index=0, seed=0)
    >>> sorted(subject.images), subject.images["flair"].dtype
    (['flair', 'gado', 'pd', 't1', 't2'], dtype('float32'))
    """
    rng = np.random.default_rng([seed, index])
    lesions = _lesion_map(anatomy, rng, _lesion_target_ml(index, anatomy.brain_ml, rng))

    geometry = scan_geometry(anatomy, rng)
    affine, shape, pose, to_scan = geometry.affine, geometry.shape, geometry.pose, geometry.to_scan

    t1, gm, wm, csf, lesion = map(to_scan, (anatomy.t1, anatomy.gm, anatomy.wm, anatomy.csf,
                                            lesions))
    brain = (gm + wm + csf) >= 0.5
    lesion = np.where(brain, lesion, 0)

    bias = bias_field(shape, rng, 0.05)

    # Python floats keep the arithmetic below in float32 (NumPy scalars would promote it).
    gain = float(rng.uniform(400, 900))
    images = {}
    for name, (mu_gm, mu_wm, mu_csf, mu_lesion) in _CONTRASTS.items():
        mu_lesion *= float(rng.uniform(0.92, 1.08))
        if mu_gm is None:
            tissue = t1 * (1.03 if name == "gado" else 1.0)
        else:
            j_gm, j_wm, j_csf = (float(j) for j in rng.uniform(0.95, 1.05, 3))
            tissue = gm * (mu_gm * j_gm) + wm * (mu_wm * j_wm) + csf * (mu_csf * j_csf)
            # Texture from the template T1 so T2/FLAIR are not just smooth tissue maps.
            tissue *= 0.85 + 0.15 * np.clip(t1, 0, 1.5)
        image = ((1 - lesion) * tissue + lesion * mu_lesion) * (bias * gain)
        sigma = float(rng.uniform(0.02, 0.04)) * gain
        image += rng.standard_normal(shape, dtype=np.float32) * sigma
        images[name] = np.where(brain, np.maximum(image, 1.0), 0).astype(np.float32)

    info = {"index": index, **geometry.info(lesion >= 0.5, brain)}
    return Subject(images, lesion.astype(np.float32), wm, affine, pose, info)


def _save(volume, affine, path: pathlib.Path, dtype) -> None:
    img = nib.Nifti1Image(np.asarray(volume).astype(dtype), affine)
    img.set_qform(affine, code=1)  # scanner coordinates, as the public data
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")  # the affine is in mm; BIDS's validator asks to say so
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, path)


def _msseg_position(index: int) -> tuple[int, int]:
    """Subject index -> (centre, patient): five patients per centre."""
    return 1 + index // 5, 1 + index % 5


# Canonical modality -> the phantom's image of it.
_PHANTOM_IMAGES = {"T1": "t1", "T2": "t2", "FLAIR": "flair", "PD": "pd", "T1GD": "gado"}
NNUNET_CASE = "MS_{:03d}"
BIDS_SUBJECT = "{:02d}"


def subject_name(index: int, layout: str) -> str:
    """The id the readers give subject ``index`` (0-based) of a phantom in ``layout``.

    Example:

    >>> [subject_name(0, layout) for layout in LAYOUTS]
    ['training01', 'center01_patient01', 'MS_001', 'sub-01']
    """
    return {"isbi2015": f"training{index + 1:02d}",
            "msseg2016": "center{:02d}_patient{:02d}".format(*_msseg_position(index)),
            "nnunet": NNUNET_CASE.format(index + 1),
            "bids": "sub-" + BIDS_SUBJECT.format(index + 1)}[layout]


def _layout_files(out, layout: str, index: int, modalities, folder: str = "Tr") -> dict:
    if layout == "isbi2015":
        return layouts.isbi2015_files(out, index + 1, 1, suffix=".nii.gz")
    if layout == "msseg2016":
        return layouts.msseg2016_files(out, *_msseg_position(index))
    if layout == "nnunet":
        files = layouts.nnunet_files(out, NNUNET_CASE.format(index + 1), len(modalities))
        files = {modalities[k]: files[k] for k in range(len(modalities))} | {
            "label": files["label"]}
        # Test cases: imagesTs/labelsTs, as nnU-Net keeps them.
        return {key: path.parent.with_name(path.parent.name[:-2] + folder) / path.name
                for key, path in files.items()}
    suffixes = [layouts.BIDS_SUFFIXES[m] for m in modalities]
    files = layouts.bids_files(out, BIDS_SUBJECT.format(index + 1), "01", suffixes)
    return {m: files[layouts.BIDS_SUFFIXES[m]] for m in modalities} | {"mask": files["mask"]}


def _reoriented(volume, affine, codes):
    """The same voxels stored in another axis order (``codes`` such as ``"PIR"``)."""
    transform = nib.orientations.ornt_transform(nib.io_orientation(affine),
                                                nib.orientations.axcodes2ornt(codes))
    moved = nib.orientations.apply_orientation(volume, transform)
    return moved, affine @ nib.orientations.inv_ornt_aff(transform, volume.shape)


def write_subject(subject: Subject, out, layout: str, rater_masks: bool = False,
                  modalities=None, folder: str = "Tr", axcodes: str | None = None) -> dict:
    """Writes one subject in ``layout`` (gzipped NIfTI, intensities as int16 like a scanner's).

    ISBI 2015: mprage/t2/flair/pd and two raters' masks (mask1: the lesion map's 50 %
    contour, the truth; mask2: a more generous 40 % contour). MSSEG 2016: T1/T2/FLAIR/DP/
    GADO and the consensus (50 %); with ``rater_masks``, seven raters' masks from 35 % to
    65 %. nnU-Net: ``imagesTr/MS_00N_000K`` for each of ``modalities`` and
    ``labelsTr/MS_00N`` (``folder="Ts"``: imagesTs/labelsTs). BIDS: ``sub-0N/ses-01/anat``
    images by BIDS suffix, the mask in ``derivatives/lesions``. ``axcodes`` stores the
    voxels in another axis order (e.g. ``"PIR"``). A subject with its own ``masks``
    (simulated raters) writes those instead of contours (its consensus as the nnU-Net/BIDS
    label). Returns the written paths by key.
    """
    index = subject.info["index"]
    if layout not in LAYOUTS:
        raise ValueError(f"Invalid value for argument `layout`: expected one of {LAYOUTS}. "
                         f"Received: layout={layout!r}")
    modalities = _layout_modalities(layout, modalities)
    files = _layout_files(out, layout, index, modalities, folder)
    thresholds = {"mask1": 0.5, "mask2": 0.4, "consensus": 0.5, "label": 0.5, "mask": 0.5}
    if rater_masks:
        thresholds.update({str(k): 0.35 + 0.05 * (k - 1) for k in range(1, 8)})
    written = {}
    for key, path in files.items():
        image_key = _PHANTOM_IMAGES.get(key)
        if image_key in subject.images and (layout in ("isbi2015", "msseg2016")
                                            or key in modalities):
            volume, dtype = np.round(subject.images[image_key]), np.int16
        elif subject.masks is not None:
            mask_key = "consensus" if key in ("label", "mask") else key
            if mask_key not in subject.masks or key not in thresholds:
                continue
            volume, dtype = subject.masks[mask_key], np.uint8
        elif key in thresholds:
            volume, dtype = subject.lesion >= thresholds[key], np.uint8
        else:
            continue
        affine = subject.affine
        if axcodes:
            volume, affine = _reoriented(volume, affine, axcodes)
        _save(volume, affine, path, dtype)
        written[key] = path
    return written


def _layout_modalities(layout: str, modalities) -> tuple[str, ...]:
    """The modalities a layout writer writes: all the layout has (ISBI, MSSEG), else the
    chosen ones (default T1, T2, FLAIR)."""
    if layout in ("isbi2015", "msseg2016"):
        return tuple(layouts.ISBI_NAMES if layout == "isbi2015" else layouts.MSSEG_NAMES)
    known = layouts.BIDS_SUFFIXES if layout == "bids" else _PHANTOM_IMAGES
    return layouts.choose_modalities(modalities, tuple(known), f"the phantom's {layout} writer")


def _write_dataset_files(out: pathlib.Path, layout: str, modalities, subjects: int,
                         test_subjects: int) -> None:
    """nnU-Net's dataset.json; BIDS's dataset_description.json files."""
    if layout == "nnunet":
        spec = {"name": out.name, "channel_names": {str(k): m for k, m in enumerate(modalities)},
                "labels": {"background": 0, "lesion": 1}, "numTraining": subjects,
                "numTest": test_subjects, "file_ending": ".nii.gz",
                "description": "tfds_ms synthetic MS phantom"}
        (out / "dataset.json").write_text(json.dumps(spec, indent=1))
    elif layout == "bids":
        from tfversky import __version__

        # A derivative says what made it (pybids refuses a derivatives folder without it).
        made_by = {"GeneratedBy": [{"Name": "tfds_ms.synth", "Version": __version__,
                                    "Description": "lesion masks of the synthetic phantom"}]}
        for folder, kind in ((out, "raw"), (out / "derivatives" / "lesions", "derivative")):
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "dataset_description.json").write_text(json.dumps(
                {"Name": "tfds_ms synthetic MS phantom", "BIDSVersion": "1.9.0",
                 "DatasetType": kind, **(made_by if kind == "derivative" else {})}, indent=1))
        (out / "README").write_text(
            "Synthetic multiple sclerosis phantom written by tfds_ms.synth (tfversky): MR "
            "modalities per subject in sub-*/ses-01/anat/, lesion masks in "
            "derivatives/lesions/. Not real patient data.\n")
        # The phantom's own record stays at the root (the builder looks for it there), out of
        # the validator's sight.
        (out / ".bidsignore").write_text("phantom.json\n")


def _unused_axcodes(taken) -> list[str]:
    """Every axis order (48 of them) that no scan in ``taken`` uses, in a fixed order."""
    letters = (("L", "R"), ("P", "A"), ("I", "S"))
    codes = []
    for order in ((0, 1, 2), (1, 2, 0), (2, 0, 1), (0, 2, 1), (2, 1, 0), (1, 0, 2)):
        for signs in range(8):
            code = "".join(letters[axis][(signs >> k) & 1] for k, axis in enumerate(order))
            if code not in taken:
                codes.append(code)
    return codes


def synthesize(out, subjects: int = 15, layout: str = "msseg2016", seed: int = 0,
               resolution: float = 1.0, rater_masks: bool = False, progress: bool = True,
               modalities=None, test_subjects: int = 0, make_subject=None,
               parameters: dict | None = None) -> dict:
    """Writes a synthetic MS dataset of ``subjects`` subjects into ``out`` in ``layout``.

    Args:
        out: Output folder (created; existing files of the same names are replaced).
        subjects: Number of subjects, >= 1. Defaults to 15 (the paper's).
        layout: ``"isbi2015"``, ``"msseg2016"``, ``"nnunet"`` or ``"bids"``. Defaults to
            ``"msseg2016"``.
        seed: Random seed; the same seed gives the same files. Defaults to 0.
        resolution: Working voxel size in mm (template resolution; scans get 0.9-1.5x it).
            Defaults to 1.0; larger is faster and coarser.
        rater_masks: MSSEG layout: also write seven raters' masks. Defaults to False.
        progress: Show a progress bar. Defaults to True.
        modalities: nnunet / bids: the modalities to write, in channel order. Defaults to
            T1, T2, FLAIR. (ISBI and MSSEG always get all of theirs.)
        test_subjects: nnunet: further subjects written to imagesTs/ (and their masks to
            labelsTs/), each stored in an axis order that no training scan has (each scan
            also has its own voxel size). Defaults to 0.
        make_subject: ``f(anatomy, index, seed) -> Subject``, another phantom's generator
            (``tfds_ms.realistic``). Defaults to this module's ``synthesize_subject``.
        parameters: That phantom's own settings, added to the manifest. Defaults to None.

    Returns:
        The manifest also written to ``out/phantom.json``: parameters, per-subject lesion
        volume and geometry, and seconds per subject.

    Example:

    >>> import tempfile
    >>> manifest = synthesize(tempfile.mkdtemp(), subjects=2, layout="isbi2015",
    ...                       resolution=6, progress=False)
    >>> [s["subject"] for s in manifest["subjects"]]
    ['training01', 'training02']
    """
    if layout not in LAYOUTS:
        raise ValueError(f"Invalid value for argument `layout`: expected one of {LAYOUTS}. "
                         f"Received: layout={layout!r}")
    if not isinstance(subjects, (int, np.integer)) or subjects < 1:
        raise ValueError(f"Invalid value for argument `subjects`: expected an integer >= 1. "
                         f"Received: subjects={subjects!r}")
    if not isinstance(test_subjects, (int, np.integer)) or test_subjects < 0 or (
            test_subjects and layout != "nnunet"):
        raise ValueError(f"Invalid value for argument `test_subjects`: expected an integer >= 0, "
                         f"and only for layout 'nnunet' (imagesTs/). "
                         f"Received: test_subjects={test_subjects!r}, layout={layout!r}")
    chosen = _layout_modalities(layout, modalities)
    from tqdm.auto import tqdm

    out = pathlib.Path(out)
    start = time.perf_counter()
    anatomy = load_anatomy(resolution)
    anatomy_seconds = time.perf_counter() - start
    records, tests, taken = [], [], set()

    def timed_subject(index):
        tick = time.perf_counter()
        return tick, (make_subject or synthesize_subject)(anatomy, index, seed)

    # Subjects are made on several threads; each is written here, in order (test subjects'
    # axis orders depend on those before them).
    made = threads.ordered_map(timed_subject, range(subjects + test_subjects))
    for index, (tick, subject) in enumerate(tqdm(made, total=subjects + test_subjects,
                                                 desc=f"phantom ({layout})", unit="subject",
                                                 disable=not progress)):
        is_test = index >= subjects
        axcodes = _unused_axcodes(taken)[0] if is_test else None
        written = write_subject(subject, out, layout, rater_masks, chosen,
                                folder="Ts" if is_test else "Tr", axcodes=axcodes)
        info = dict(subject.info, axis_codes=axcodes or subject.info["axis_codes"])
        taken.add(info["axis_codes"])
        (tests if is_test else records).append(
            {"subject": subject_name(index, layout), **info,
             "files": {k: str(p.relative_to(out)) for k, p in written.items()},
             "seconds": round(time.perf_counter() - tick, 2)})
    _write_dataset_files(out, layout, chosen, subjects, test_subjects)
    manifest = {"layout": layout, "subjects_count": subjects, "seed": seed,
                "resolution_mm": resolution, "rater_masks": rater_masks,
                "modalities": list(chosen), **(parameters or {"phantom": "easy"}),
                "high_load_subject": records[HIGH_LOAD_SUBJECT]["subject"]
                if subjects > HIGH_LOAD_SUBJECT else None,
                "low_load_subject": records[LOW_LOAD_SUBJECT]["subject"]
                if subjects > LOW_LOAD_SUBJECT else None,
                "template_seconds": round(anatomy_seconds, 2), "subjects": records,
                "test_subjects": tests}
    # Written last: its presence marks a complete phantom.
    (out / "phantom.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def add_phantom_arguments(parser) -> None:
    """The flags of both phantom writers (``python -m tfds_ms.synth`` and ``tfds_ms.realistic``):
    --out, --subjects, --layout, --seed, --resolution."""
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--subjects", type=int, default=15, help="number of subjects (default 15)")
    parser.add_argument("--layout", choices=LAYOUTS, default="msseg2016",
                        help="file layout to write (default msseg2016)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--resolution", type=float, default=1.0,
                        help="working voxel size in mm; larger is faster (default 1.0)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tfds_ms.synth",
        description="Write a synthetic MS lesion dataset (MNI152 anatomy from nilearn, "
                    "MS-like lesions) in a real dataset's file layout. Offline and deterministic.")
    add_phantom_arguments(parser)
    parser.add_argument("--rater-masks", action="store_true",
                        help="msseg2016: also write ManualSegmentation_1..7")
    parser.add_argument("--modalities", default=None,
                        help="nnunet/bids: modalities to write, in channel order, e.g. FLAIR,T1 "
                             "(default T1,T2,FLAIR)")
    parser.add_argument("--test-subjects", type=int, default=0,
                        help="nnunet: further subjects in imagesTs/ (masks in labelsTs/), each in "
                             "an axis order no training scan has (default 0)")
    args = parser.parse_args(argv)
    try:
        manifest = synthesize(args.out, args.subjects, args.layout, args.seed, args.resolution,
                              args.rater_masks, modalities=args.modalities,
                              test_subjects=args.test_subjects)
    except (ValueError, OSError, ImportError) as err:
        parser.error(str(err))
    for record in manifest["subjects"] + manifest["test_subjects"]:
        print(f"{record['subject']}: lesions {record['lesion_ml']:.2f} mL "
              f"({100 * record['lesion_fraction_of_brain']:.2f} % of brain), grid "
              f"{record['shape']} at {record['spacing_mm']} mm {record['axis_codes']}")
    print(f"Wrote {len(manifest['subjects'])} subjects (+{len(manifest['test_subjects'])} test) "
          f"to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
