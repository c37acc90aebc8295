"""The ``realistic`` MS phantom: as hard as real data for the reasons real data are hard.

The easy phantom (``tfds_ms.synth``) has one anatomy, bright large lesions and exact masks.
This one keeps its anatomy source (nilearn's MNI152 template, read from disk) and its file
layouts, and adds, per subject:

* **anatomy**: a smooth random non-linear deformation (displacements of a few mm over
  ~16 mm, plus a head-size scaling) and atrophy that grows with lesion load (ventricles and
  sulci widened by up to ~3 mm);
* **lesions**: lesion volumes drawn from a log-normal (median ~0.05 mL, i.e. 4-5 mm across;
  many of a few voxels, few large, the largest confluent), placed periventricular,
  juxtacortical, infratentorial or in deep white matter (``LOCATIONS``), until the subject's
  load (log-uniform over ~1-30 mL, one high- and one low-load subject) is reached;
* **contrast**: each lesion its own contrast, faint lesions among them; normal-appearing
  FLAIR hyperintensities that are not lesions (periventricular caps at the horns, a thin
  periventricular band, the septum pellucidum, incompletely suppressed sulcal CSF); the
  template's grey/white partial volume;
* **centres** (``CENTRES``): each its own contrast curve, lesion contrast, noise, bias field,
  voxel size and FLAIR/T2/PD section thickness (3 mm at two of them, as ISBI 2015's raw
  data); subject i is scanned at centre ``1 + i // 5`` (the MSSEG folder ``Center_0X``);
* **raters**: seven simulated raters who draw the boundary at their own level with a smooth
  jitter and miss faint and tiny lesions by their own rule; the consensus is their
  majority vote. ISBI's ``mask1``/``mask2`` are raters 1 and 2.

``difficulty`` (0 to 1, default ``DEFAULT_DIFFICULTY``, 0.8) scales what makes segmentation
hard: lesion contrast falls, faint lesions get commoner, noise and confounders grow.
docs/data.md lists every parameter and what it measures to.

Example::

    python -m tfds_ms.realistic --out DIR --subjects 15 --layout msseg2016 --difficulty 0.8
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys

import numpy as np
from scipy import ndimage

from tfds_ms import synth

DIFFICULTY_RANGE = (0.0, 1.0)
LOCATIONS = ("periventricular", "juxtacortical", "infratentorial", "deep")
# Share of lesions by location (large lesions are always periventricular, where MS lesions
# become confluent): periventricular commonest, then deep and juxtacortical white matter,
# then the posterior fossa.
LOCATION_SHARES = (0.40, 0.20, 0.10, 0.30)
RATERS = 7
FAINT_CONTRAST = 0.3  # FLAIR lesion/WM - 1 below this is a faint lesion (GM is at +0.25)


@dataclasses.dataclass(frozen=True)
class Centre:
    """One scanner's protocol.

    Attributes:
        name: Its name, as ``centres=`` takes it.
        field_tesla: Field strength (descriptive).
        spacing: Voxel size (x, y, z) of the stored grid, relative to the phantom's
            resolution (1 mm at the default).
        section_mm: Thickness of the FLAIR/T2/PD sections (acquired axially, stored on the
            T1 grid as ISBI's preprocessed data).
        gamma: Contrast curve: intensity relative to white matter raised to this power,
            per modality (t1, t2, flair, pd, gado).
        lesion_contrast: Factor on every lesion's contrast (1.5 T shows lesions less).
        noise: Noise sd relative to white matter, before ``difficulty``.
        bias: Bias field strength (sd of its quadratic's coefficients).
    """

    name: str
    field_tesla: float
    spacing: tuple
    section_mm: float
    gamma: tuple
    lesion_contrast: float
    noise: float
    bias: float


CENTRES = {c.name: c for c in (
    Centre("3t_iso", 3.0, (1.0, 1.0, 1.0), 1.0, (1.0, 1.0, 1.0, 1.0, 1.0), 1.0, 0.025, 0.05),
    Centre("15t_3mm", 1.5, (1.0, 1.0, 1.2), 3.0, (0.9, 1.1, 0.85, 1.0, 0.9), 0.8, 0.045, 0.10),
    Centre("3t_aniso", 3.0, (0.9, 0.9, 1.3), 2.0, (1.1, 0.9, 1.15, 1.1, 1.1), 0.9, 0.035, 0.08),
    Centre("15t_legacy", 1.5, (1.1, 1.1, 1.5), 3.0, (0.8, 1.2, 0.75, 0.9, 0.8), 0.7, 0.06, 0.14),
)}
DEFAULT_CENTRES = ("3t_iso", "15t_3mm", "3t_aniso")
# Chosen so that the Table 1 reproduction's CPU schedule lands in the paper's DSC range and
# close to converged (docs/data.md, "Calibration": twice the steps still add about 3 points).
DEFAULT_DIFFICULTY = 0.8
SUBJECTS_PER_CENTRE = 5  # the MSSEG layout: Center_0X/Patient_01..05
MODALITIES = ("t1", "t2", "flair", "pd", "gado")


def check_difficulty(difficulty) -> float:
    """``difficulty`` as a float, or a ValueError naming the valid range.

    Example:

    >>> check_difficulty(0.5)
    0.5
    """
    low, high = DIFFICULTY_RANGE
    if isinstance(difficulty, bool) or not isinstance(difficulty, (int, float)) or not (
            low <= difficulty <= high):
        raise ValueError(f"Invalid value for argument `difficulty`: expected a number from {low} "
                         f"(clearest lesions) to {high} (hardest); {DEFAULT_DIFFICULTY} is the "
                         f"default. Received: difficulty={difficulty!r}")
    return float(difficulty)


def check_centres(centres, argument: str = "centres") -> tuple:
    """The centre names as a tuple, or a ValueError naming the ones that exist.

    Example:

    >>> check_centres(["3t_iso", "15t_legacy"])
    ('3t_iso', '15t_legacy')
    """
    centres = (centres,) if isinstance(centres, str) else tuple(centres)
    unknown = [c for c in centres if c not in CENTRES]
    if unknown or not centres:
        raise ValueError(f"Invalid value for argument `{argument}`: {unknown or 'none given'} "
                         f"{'is' if len(unknown) == 1 else 'are'} not a centre of the "
                         f"realistic phantom; choose from {tuple(CENTRES)}. "
                         f"Received: {argument}={centres!r}")
    return centres


@dataclasses.dataclass
class _Regions:
    """Template-grid maps the lesions and confounders are placed with (computed once)."""

    to_ventricle: np.ndarray  # mm from the ventricles
    to_grey: np.ndarray  # mm from grey matter (p > 0.5)
    to_sulcus: np.ndarray  # mm from sulcal CSF
    infratentorial: np.ndarray  # bool: brainstem and cerebellum (approximate MNI box)
    caps: np.ndarray  # bool: within 5 mm of the frontal and occipital horns
    septum: np.ndarray  # bool: between the lateral ventricles, at the midline


def _regions(anatomy: synth.Anatomy) -> _Regions:
    mm = anatomy.voxel_mm
    brain = (anatomy.gm + anatomy.wm + anatomy.csf) >= 0.5
    depth = ndimage.distance_transform_edt(brain) * mm
    ventricles = (anatomy.csf > 0.5) & (depth > 15)
    sulci = (anatomy.csf > 0.5) & ~ventricles
    to_ventricle = ndimage.distance_transform_edt(~ventricles) * mm
    world = tuple(anatomy.affine[a, a] * np.arange(n) + anatomy.affine[a, 3]
                  for a, n in enumerate(anatomy.wm.shape))
    x, y, z = np.meshgrid(*world, indexing="ij", sparse=True)
    # Posterior fossa below the tentorium, and the brainstem along the midline (MNI mm).
    infratentorial = ((y < -38) & (z < -18)) | ((np.abs(x) < 14) & (y > -42) & (y < -10)
                                                & (z < -12))
    vy = np.nonzero(ventricles.any((0, 2)))[0]
    y_front, y_back = world[1][vy.max()], world[1][vy.min()]
    near = to_ventricle <= max(5, 1.5 * mm)
    caps = near & ~ventricles & ((y > y_front - 12) | (y < y_back + 12)) & ~infratentorial
    septum = (np.abs(x) <= max(2, mm)) & (to_ventricle <= max(4, 1.5 * mm)) & ~ventricles & (
        z > -5) & (z < 30) & (y > y_back + 10) & (y < y_front)
    return _Regions(to_ventricle.astype(np.float32),
                    (ndimage.distance_transform_edt(anatomy.gm <= 0.5) * mm).astype(np.float32),
                    (ndimage.distance_transform_edt(~sulci) * mm).astype(np.float32),
                    np.broadcast_to(infratentorial, brain.shape).copy(), caps, septum)


def _bspline_weights(n: int, spacing: float) -> np.ndarray:
    """(n, knots) cubic B-spline weights of n samples over knots ``spacing`` samples apart."""
    x = np.arange(n) / spacing + 1.5
    t = np.abs(x[:, None] - np.arange(int(math.ceil(n / spacing)) + 4)[None, :])
    return np.where(t < 1, 2 / 3 - t ** 2 + t ** 3 / 2,
                    np.where(t < 2, (2 - t) ** 3 / 6, 0)).astype(np.float32)


def _smooth_field(shape, rng, spacing_voxels: float, components: int = 1) -> np.ndarray:
    """Smooth random fields of unit sd: a cubic B-spline with Gaussian random coefficients.

    Separable (one small matrix product per axis), so cheap even on a 1 mm grid.
    """
    weights = [_bspline_weights(n, spacing_voxels) for n in shape]
    fields = []
    for _ in range(components):
        field = rng.standard_normal([w.shape[1] for w in weights]).astype(np.float32)
        for axis, w in enumerate(weights):
            field = np.moveaxis(np.tensordot(w, np.moveaxis(field, axis, 0), axes=(1, 0)),
                                0, axis)
        fields.append(field / max(float(field.std()), 1e-6))
    return np.stack(fields) if components > 1 else fields[0]


def _deform(anatomy, regions, rng, amplitude_mm):
    """Warps the template's maps by a smooth random displacement and a head-size scaling."""
    mm = anatomy.voxel_mm
    shape = anatomy.wm.shape
    displacement = _smooth_field(shape, rng, 16 / mm, 3) * (amplitude_mm / mm)
    scale = float(rng.uniform(0.95, 1.05))
    center = (np.array(shape) - 1) / 2
    coords = [np.arange(n, dtype=np.float32)[tuple(slice(None) if a == b else None
                                                   for b in range(3))]
              for a, n in enumerate(shape)]
    coords = [center[a] + (coords[a] - center[a]) / scale + displacement[a] for a in range(3)]

    def warp(volume):
        return ndimage.map_coordinates(volume, coords, order=1, mode="nearest").astype(
            np.float32)

    maps = {key: warp(getattr(anatomy, key)) for key in ("t1", "gm", "wm", "csf")}
    distances = {key: warp(getattr(regions, key)) * scale
                 for key in ("to_ventricle", "to_grey", "to_sulcus")}
    masks = {key: warp(getattr(regions, key).astype(np.float32)) > 0.5
             for key in ("infratentorial", "caps", "septum")}
    return maps, distances, masks, scale


def _atrophy(maps, distances, atrophy_mm, mm):
    """Widens ventricles by ``atrophy_mm`` and sulci by 60 % of it (partial-volume edges)."""
    new_csf = np.maximum(np.clip((atrophy_mm - distances["to_ventricle"]) / mm + 0.5, 0, 1),
                         np.clip((0.6 * atrophy_mm - distances["to_sulcus"]) / mm + 0.5, 0, 1))
    brain = (maps["gm"] + maps["wm"] + maps["csf"]) >= 0.5
    new_csf = np.where(brain, new_csf, 0).astype(np.float32)
    csf = np.maximum(maps["csf"], new_csf)
    tissue = maps["gm"] + maps["wm"]
    keep = np.where(tissue > 0, np.clip(1 - csf, 0, 1) / np.maximum(tissue, 1e-6), 0)
    gained = np.clip(csf - maps["csf"], 0, 1)
    return {"gm": maps["gm"] * keep, "wm": maps["wm"] * keep, "csf": csf,
            # New CSF is dark on T1: the template T1 fades to CSF's ~0.3 of white matter.
            "t1": maps["t1"] * (1 - gained) + 0.3 * gained}


def _lesion_volumes(rng, target_ml, mm):
    """Lesion volumes (mL) until their sum reaches ``target_ml``.

    High loads are largely confluent, as in patients: a share of the load that grows with it
    (0 below 5 mL, 60 % at 80 mL) goes to large lesions (1.5-12 mL, log-uniform, never
    past that share); the rest
    to discrete lesions, log-normal with median 0.05 mL (4-5 mm across), from a few voxels.
    """
    smallest = max(0.008, 3 * mm ** 3 / 1000)  # a few voxels, never below ~2.5 mm across
    confluent_ml = target_ml * float(np.clip(0.15 * math.log2(max(target_ml, 1e-3) / 5), 0, 0.6))
    volumes, total = [], 0.0
    while confluent_ml - total >= 1.5:
        volumes.append(min(float(np.exp(rng.uniform(math.log(1.5), math.log(12.0)))),
                           confluent_ml - total))
        total += volumes[-1]
    while total < target_ml:
        volumes.append(float(np.clip(rng.lognormal(math.log(0.05), 1.1), smallest, 1.0)))
        total += volumes[-1]
    return volumes


def _candidates(anatomy, maps, distances, masks, atrophy_mm):
    """Voxel indices where each location's lesions may be centred, on the subject's anatomy."""
    mm = anatomy.voxel_mm
    wm = maps["wm"]
    supratentorial = ~masks["infratentorial"]
    vent = distances["to_ventricle"] - atrophy_mm
    grey = distances["to_grey"]
    reach = max(1.0, mm)
    found = {
        "periventricular": (wm > 0.7) & (vent > reach * 0.5) & (vent <= max(4, 1.5 * mm))
        & supratentorial,
        "juxtacortical": (wm > 0.5) & (grey > 0.5 * reach) & (grey <= max(3, 1.5 * mm))
        & (vent > 10) & supratentorial,
        "infratentorial": (wm > 0.6) & masks["infratentorial"],
        "deep": (wm > 0.85) & (vent > 8) & (grey > max(4, 1.5 * mm)) & supratentorial,
    }
    fallback = np.argwhere(wm > 0.6)
    return {k: (idx if len(idx := np.argwhere(m)) else fallback) for k, m in found.items()}


def _paint(occupancy, owner, anatomy_wm, rng, center, radii_mm, mm, lesion_id):
    """Adds one soft ellipsoid (0.7 mm edge, faded outside white matter) owned by ``lesion_id``."""
    box, soft = synth.ellipsoid_patch(occupancy.shape, center, radii_mm, mm, rng, edge_mm=0.7)
    soft = (soft * np.clip(anatomy_wm[box] / 0.5, 0, 1)).astype(np.float32)
    wins = soft > occupancy[box]
    occupancy[box] = np.where(wins, soft, occupancy[box])
    owner[box] = np.where(wins & (soft > 0.05), lesion_id, owner[box])


def _lesions(anatomy, rng, maps, candidates, volumes, difficulty, lesion_contrast):
    """Paints the lesions; returns occupancy, owner ids and one record per lesion."""
    mm = anatomy.voxel_mm
    occupancy = np.zeros(maps["wm"].shape, np.float32)
    owner = np.zeros(maps["wm"].shape, np.int32)
    records = []
    faint_share = 0.03 + 0.15 * difficulty
    median_contrast = 0.85 - 0.5 * difficulty
    for lesion_id, volume in enumerate(sorted(volumes, reverse=True), start=1):
        location = ("periventricular" if volume > 1.0 else
                    LOCATIONS[int(rng.choice(len(LOCATIONS), p=LOCATION_SHARES))])
        pool = candidates[location]
        center = pool[rng.integers(len(pool))]
        # Confluent lesions: large volumes are several overlapping ovoids.
        parts = 1 if volume <= 1.0 else int(min(2 + volume // 1.5, 8))
        for _ in range(parts):
            shift = 0 if parts == 1 else rng.normal(0, 0.6 * (volume / parts * 1e3) ** (1 / 3)
                                                    / mm, 3)
            radius = (3 * volume / parts * 1e3 / (4 * math.pi)) ** (1 / 3)
            shape = np.array([1.0, 1.0, rng.uniform(1.3, 2.0) if location == "periventricular"
                              else rng.uniform(0.8, 1.25)])
            radii = radius * shape / np.prod(shape) ** (1 / 3)
            c = np.clip(np.round(center + shift).astype(int), 0, np.array(occupancy.shape) - 1)
            _paint(occupancy, owner, maps["wm"], rng, c, radii, mm, lesion_id)
        if rng.random() < faint_share:
            contrast = float(rng.uniform(0.08, FAINT_CONTRAST))
        else:
            contrast = float(median_contrast * rng.lognormal(0, 0.45))
        records.append({"id": lesion_id, "location": location, "planned_ml": volume,
                        "contrast": contrast * lesion_contrast})
    return occupancy, owner, records


def _confounders(maps, distances, masks, rng, strength, mm):
    """Normal-appearing FLAIR hyperintensity (relative to WM), not labelled as lesion."""
    band = np.clip(1 - (distances["to_ventricle"] - 0.5) / max(1.5, mm), 0, 1) * maps["wm"]
    sulcal = maps["csf"] * (distances["to_ventricle"] > 8)
    # Incomplete CSF suppression in a random ~15 % of the sulci (smooth patches).
    patches = np.clip(_smooth_field(maps["csf"].shape, rng, 10 / mm) - 1.0, 0, 1)
    return (strength * (0.10 * band + 0.25 * masks["caps"] * maps["wm"]
                        + 0.30 * masks["septum"]) + strength * 1.2 * sulcal * patches
            ).astype(np.float32)


# Tissue means relative to white matter (t1 is the template's own), and each modality's
# lesion response to a lesion of FLAIR contrast c: value = wm * (1 + k * c).
_TISSUE = {"t2": (1.30, 1.00, 2.30), "flair": (1.25, 1.00, 0.25), "pd": (1.20, 1.00, 1.35)}
_LESION_RESPONSE = {"t1": -0.35, "gado": -0.3, "t2": 1.1, "flair": 1.0, "pd": 0.5}


def _render(maps, occupancy, contrast_map, nah, centre, mm):
    """Noise-free images on the template grid, each modality through the centre's curve."""
    images = {}
    texture = 0.85 + 0.15 * np.clip(maps["t1"], 0, 1.5)
    sections = max(1, int(round(centre.section_mm / mm)))
    for name, gamma in zip(MODALITIES, centre.gamma):
        if name in _TISSUE:
            g, w, c = _TISSUE[name]
            tissue = (maps["gm"] * g + maps["wm"] * w + maps["csf"] * c) * texture
        else:
            tissue = maps["t1"] * (1.03 if name == "gado" else 1.0)
        if name in ("flair", "t2"):
            tissue = tissue + nah * (1.0 if name == "flair" else 0.3)
        lesion_value = texture * (1 + _LESION_RESPONSE[name] * contrast_map)
        image = np.clip((1 - occupancy) * tissue + occupancy * lesion_value, 0, None) ** gamma
        if name != "t1" and sections > 1:  # thick axial sections: partial volume along z
            image = ndimage.uniform_filter1d(image, sections, axis=2, mode="nearest")
        images[name] = image.astype(np.float32)
    return images


def _raters(lesion, owner, records, rng, voxel_mm):
    """Seven raters' masks on the scan grid and their majority-vote consensus.

    Each rater draws the boundary at their own level (0.2-0.7 of the lesion map, seen
    through a 1 mm blur: about +-0.8 mm of boundary between raters) with a smooth jitter
    (sd 0.12 over ~8 mm), and misses lesions by their own rule: faint ones below a contrast
    the rater still sees (0.12-0.3), and tiny ones (detection 1 - exp(-volume / 0.02 mL)).
    Sizes are in mm and mL, so the raters behave alike at every working resolution.
    """
    by_id = {r["id"]: r for r in records}
    ids = np.array(sorted(by_id), dtype=np.int64)
    contrast = np.array([by_id[i]["contrast"] for i in ids])
    volume_ml = np.array([by_id[i]["voxels_scan"] for i in ids], float) * np.prod(
        voxel_mm) / 1000
    soft = ndimage.gaussian_filter(lesion, 1.0 / np.asarray(voxel_mm))
    masks = []
    for _ in range(RATERS):
        level = float(rng.uniform(0.2, 0.7))
        jitter = _smooth_field(soft.shape, rng, 8.0 / float(np.mean(voxel_mm))) * 0.12
        drawn = soft >= np.clip(level + jitter, 0.1, 0.9)
        seen_contrast = float(rng.uniform(0.12, 0.3))
        p_detect = 1 / (1 + np.exp(-(contrast - seen_contrast) / 0.04))
        p_detect *= 1 - np.exp(-volume_ml / 0.02)
        missed = ids[rng.random(len(ids)) > p_detect]
        masks.append(drawn & ~np.isin(owner, missed))
    votes = np.sum(masks, axis=0)
    return masks, votes >= (RATERS // 2 + 1)


def _components(mask, voxel_ml) -> dict:
    """The consensus mask's lesions as the challenges count them: 26-connected components."""
    ids, count = ndimage.label(mask, ndimage.generate_binary_structure(3, 3))
    sizes = np.bincount(ids.ravel())[1:] * voxel_ml
    return {"consensus_lesions": int(count),
            "consensus_lesion_ml_each": np.round(np.sort(sizes)[::-1], 4).tolist()}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """DSC of two boolean masks (1.0 when both are empty).

    Example:

    >>> dice(np.array([1, 1, 0], bool), np.array([1, 0, 0], bool))
    0.6666666666666666
    """
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2 * int((a & b).sum()) / total


def mean_pairwise_dice(masks) -> float:
    """Mean DSC over every pair of raters' masks.

    Example:

    >>> m = [np.array([1, 1, 0], bool), np.array([1, 0, 0], bool), np.array([1, 1, 0], bool)]
    >>> round(mean_pairwise_dice(m), 4)
    0.7778
    """
    pairs = [(i, j) for i in range(len(masks)) for j in range(i + 1, len(masks))]
    return float(np.mean([dice(masks[i], masks[j]) for i, j in pairs]))


def _load_ml(index: int, rng) -> float:
    """Total lesion load (mL): 1-30 mL log-uniform; the high/low-load subjects 45 and 0.8 mL."""
    if index == synth.HIGH_LOAD_SUBJECT:
        return 45.0
    if index == synth.LOW_LOAD_SUBJECT:
        return 0.8
    return float(np.exp(rng.uniform(math.log(1.0), math.log(30.0))))


@dataclasses.dataclass
class RealisticSubject(synth.Subject):
    """A realistic-phantom subject: ``synth.Subject`` plus what its lesions were made of.

    Attributes:
        lesion_ids: int32 map on the scan grid: which lesion (``lesion_records[k]["id"]``)
            owns each voxel, 0 for none.
        lesion_records: one dict per lesion: ``id``, ``location``, ``planned_ml``, FLAIR
            ``contrast`` (lesion / white matter - 1) and ``voxels_scan``.
    """

    lesion_ids: np.ndarray | None = None
    lesion_records: list | None = None


class RealisticPhantom:
    """The realistic phantom's subject generator (``tfds_ms.synth.synthesize``'s hook).

    Args:
        difficulty: 0 (clearest) to 1 (hardest). Defaults to ``DEFAULT_DIFFICULTY``.
        centres: Centre names (``CENTRES``), in ``Center_01``, ``Center_02``... order.
            Defaults to ``DEFAULT_CENTRES`` (three, as MSSEG's training set).

    Raises:
        ValueError: ``difficulty`` outside ``DIFFICULTY_RANGE``; an unknown centre.

    Example:

    >>> phantom = RealisticPhantom(difficulty=0.5)
    >>> subject = phantom(synth.load_anatomy(4.0), index=0, seed=0)
    >>> subject.info["centre"], sorted(subject.masks)[:3]
    ('3t_iso', ['1', '2', '3'])
    """

    def __init__(self, difficulty: float = DEFAULT_DIFFICULTY, centres=DEFAULT_CENTRES):
        self.difficulty = check_difficulty(difficulty)
        self.centres = check_centres(centres)
        self._cache = None

    def parameters(self) -> dict:
        """The settings written to ``phantom.json``."""
        return {"phantom": "realistic", "difficulty": self.difficulty,
                "centres": list(self.centres)}

    def centre_of(self, index: int) -> Centre:
        position = index // SUBJECTS_PER_CENTRE
        if position >= len(self.centres):
            raise ValueError(f"Invalid value for argument `subjects`: subject {index + 1} would "
                             f"be scanned at centre {position + 1}, but only "
                             f"{len(self.centres)} centres are given ({SUBJECTS_PER_CENTRE} "
                             f"subjects each); pass more `centres` or fewer subjects.")
        return CENTRES[self.centres[position]]

    def __call__(self, anatomy: synth.Anatomy, index: int, seed: int = 0) -> synth.Subject:
        centre = self.centre_of(index)
        if self._cache is None or self._cache[0] is not anatomy:
            self._cache = (anatomy, _regions(anatomy))
        regions = self._cache[1]
        d = self.difficulty
        mm = anatomy.voxel_mm
        rng = np.random.default_rng([seed, index, 2])  # its own stream, apart from the easy one
        load = _load_ml(index, rng)
        maps, distances, masks, scale = _deform(anatomy, regions, rng, 2.5)
        atrophy_mm = float(rng.uniform(0, 0.8) + 1.2 * math.log10(1 + load / 2))
        maps = _atrophy(maps, distances, atrophy_mm, mm)
        candidates = _candidates(anatomy, maps, distances, masks, atrophy_mm)
        occupancy, owner, records = _lesions(anatomy, rng, maps, candidates,
                                             _lesion_volumes(rng, load, mm), d,
                                             centre.lesion_contrast)
        contrasts = np.zeros(len(records) + 1, np.float32)
        contrasts[[r["id"] for r in records]] = [r["contrast"] for r in records]
        nah = _confounders(maps, distances, masks, rng, 0.5 + d, mm)
        images = _render(maps, occupancy, contrasts[owner], nah, centre, mm)

        spacing = anatomy.voxel_mm * np.array(centre.spacing)
        geometry = synth.scan_geometry(anatomy, rng, spacing)
        to_scan = geometry.to_scan
        scan = to_scan(np.stack([images[m] for m in MODALITIES], -1))
        brain = to_scan(maps["gm"] + maps["wm"] + maps["csf"]) >= 0.5
        lesion = np.where(brain, to_scan(occupancy), 0).astype(np.float32)
        ids = to_scan(owner.astype(np.float32), order=0, antialias=False)
        scan_owner = np.where(brain, ids, 0).astype(np.int32)
        truth = lesion >= 0.5
        counts = np.bincount(scan_owner[truth], minlength=len(records) + 1)
        for r in records:
            r["voxels_scan"] = int(counts[r["id"]])
        rater_masks, consensus = _raters(lesion, scan_owner, records, rng, spacing)

        bias = synth.bias_field(geometry.shape, rng, centre.bias)
        gain = float(rng.uniform(400, 900))
        sigma = float(centre.noise * (1 + 0.8 * d))
        written = {}
        for c, name in enumerate(MODALITIES):
            image = scan[..., c] * (bias * gain)
            image += rng.standard_normal(geometry.shape, dtype=np.float32) * (sigma * gain)
            written[name] = np.where(brain, np.maximum(image, 1.0), 0).astype(np.float32)

        voxel_ml = float(np.prod(spacing)) / 1000
        kept = [r for r in records if r["voxels_scan"] > 0]
        info = {"index": index, **geometry.info(consensus, brain),
                "centre": centre.name, "difficulty": d,
                "planned_load_ml": round(load, 3),
                "truth_lesion_ml": round(float(truth.sum()) * voxel_ml, 3),
                "atrophy_mm": round(atrophy_mm, 2), "head_scale": round(scale, 3),
                "lesions": len(kept),
                "lesions_by_location": {loc: sum(r["location"] == loc for r in kept)
                                        for loc in LOCATIONS},
                "faint_lesions": sum(r["contrast"] < FAINT_CONTRAST for r in kept),
                "lesion_ml_each": [round(r["voxels_scan"] * voxel_ml, 4) for r in kept],
                **_components(consensus, voxel_ml),
                "inter_rater_dsc": round(mean_pairwise_dice(rater_masks), 4),
                "consensus_vs_truth_dsc": round(dice(consensus, truth), 4)}
        masks_by_key = {str(k + 1): m for k, m in enumerate(rater_masks)}
        masks_by_key.update(consensus=consensus, mask1=rater_masks[0], mask2=rater_masks[1])
        return RealisticSubject(written, lesion, to_scan(maps["wm"]), geometry.affine,
                                geometry.pose, info, masks_by_key, scan_owner, records)


def synthesize(out, subjects: int = 15, layout: str = "msseg2016", seed: int = 0,
               resolution: float = 1.0, difficulty: float = DEFAULT_DIFFICULTY,
               centres=DEFAULT_CENTRES,
               rater_masks: bool = True, progress: bool = True) -> dict:
    """Writes a realistic phantom dataset into ``out`` (see ``tfds_ms.synth.synthesize``).

    Args:
        out, subjects, layout, seed, resolution, progress: As ``tfds_ms.synth.synthesize``.
        difficulty: 0 to 1 (``DIFFICULTY_RANGE``). Defaults to ``DEFAULT_DIFFICULTY``.
        centres: Centre names, five subjects each. Defaults to ``DEFAULT_CENTRES``.
        rater_masks: MSSEG layout: write the seven raters' masks too. Defaults to True.

    Returns:
        The manifest (``out/phantom.json``): per subject its centre, lesion counts, sizes,
        locations, faint lesions, atrophy and inter-rater DSC.

    Raises:
        ValueError: a bad ``difficulty`` or centre, or more subjects than centres hold.

    Example:

    >>> import tempfile
    >>> manifest = synthesize(tempfile.mkdtemp(), subjects=2, layout="isbi2015",
    ...                       resolution=6, progress=False)
    >>> manifest["phantom"], manifest["subjects"][0]["centre"]
    ('realistic', '3t_iso')
    """
    phantom = RealisticPhantom(difficulty, centres)
    if isinstance(subjects, (int, np.integer)) and subjects >= 1:
        phantom.centre_of(subjects - 1)
    return synth.synthesize(out, subjects, layout, seed, resolution, rater_masks, progress,
                            make_subject=phantom, parameters=phantom.parameters())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tfds_ms.realistic",
        description="Write the realistic MS phantom (varied anatomy, MS lesion statistics, "
                    "confounders, centres, simulated raters) in a real dataset's layout.")
    synth.add_phantom_arguments(parser)
    parser.add_argument("--difficulty", type=float, default=DEFAULT_DIFFICULTY,
                        help=f"{DIFFICULTY_RANGE[0]} (clearest) to {DIFFICULTY_RANGE[1]} "
                             f"(hardest); default {DEFAULT_DIFFICULTY}")
    parser.add_argument("--centres", nargs="+", default=list(DEFAULT_CENTRES),
                        help=f"centres, five subjects each, from {tuple(CENTRES)}")
    args = parser.parse_args(argv)
    try:
        manifest = synthesize(args.out, args.subjects, args.layout, args.seed, args.resolution,
                              args.difficulty, args.centres)
    except (ValueError, OSError, ImportError) as err:
        parser.error(str(err))
    for r in manifest["subjects"]:
        print(f"{r['subject']} ({r['centre']}): {r['lesions']} lesions, {r['lesion_ml']:.2f} mL "
              f"consensus, atrophy {r['atrophy_mm']:.1f} mm, inter-rater DSC "
              f"{r['inter_rater_dsc']:.2f}")
    print(f"Wrote {len(manifest['subjects'])} subjects to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
