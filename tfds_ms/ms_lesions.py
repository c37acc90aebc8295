"""TFDS builder ``ms_lesions``: multiple sclerosis lesions, MR modalities on one reference grid.

Configs:

* ``synthetic`` (default): the phantom of ``tfds_ms.synth`` (15 subjects, seed 0), made at
  build time with no download and no manual step, on the paper's 128x224x256 grid.
* ``synthetic_lowres``: the same phantom recipe (made at 1.5 mm, faster) on a 64x112x128
  grid (same field of view, voxels twice as large per axis), 8x less data: for CPU demos.
* ``synthetic_tiny``: four phantom subjects on a 32x56x64 grid, built in seconds: for smoke
  tests and CI, not for judging a model.
* ``synthetic_realistic`` / ``synthetic_realistic_lowres``: the realistic phantom of
  ``tfds_ms.realistic`` (varied anatomy, MS lesion statistics, confounders, three centres,
  simulated raters; labels are the raters' consensus), on the paper's grid / the 64x112x128
  one. ``synthetic_realistic_by_centre_lowres``: 20 subjects from four centres, one fold per
  centre, so a test fold comes from a centre training never saw.
* ``isbi2015`` / ``isbi2015_mask2``: the ISBI 2015 training set from ``manual_dir``, with
  rater 1's (rater 2's) masks as labels.
* ``msseg2016``: the MSSEG 2016 training set (15 subjects) from ``manual_dir``, consensus masks.
* ``nnunet`` / ``bids``: your own nnU-Net v2 raw or BIDS dataset, with its own modalities.
  The builder reads the folder when it is made and takes a config keyed by what the folder
  holds (``user_config``)::

      tfds.builder("ms_lesions/nnunet", manual_dir="/data/Dataset501_MS")
      tfds.builder("ms_lesions/bids", manual_dir="/data/bids", modalities="FLAIR,T1w")

The image's channels are the config's modalities, in order; the prepared dataset records
them, its grid and its ignore label in ``info.metadata`` (``dataset_modalities``,
``dataset_grid``, ``dataset_ignore_index``), and how its volumes were prepared: the
intensity normalisation the config asked for and whether every scan was skull-stripped
(``dataset_preparation``, which a trained model's plan copies).

Other choices (grid, rater, number of folds, phantom seed) are a ``MsLesionsConfig`` away::

    config = MsLesionsConfig(name="isbi2015_3fold", layout="isbi2015", num_folds=3)
    builder = MsLesions(config=config, data_dir=...)

Splits ``fold0`` ... ``fold{k-1}`` (k = ``num_folds``, 2 as in the paper): subjects are
sorted by id and subject i goes to fold i % k, so a subject's scans are never in two folds,
every subject is in one, and the assignment depends on nothing but the ids. An nnU-Net
``splits_final.json`` sets the folds instead.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import re

import numpy as np
import tensorflow_datasets as tfds

from tfds_ms import layouts, realistic, scans, synth, threads
from tfversky import modalities as mods, preprocessing
from tfversky.preprocessing import PAPER_GRID, ReferenceGrid

_CITATION = """\
@inproceedings{salehi2017tversky,
  title={Tversky loss function for image segmentation using 3D fully convolutional deep networks},
  author={Salehi, Seyed Sadegh Mohseni and Erdogmus, Deniz and Gholipour, Ali},
  booktitle={Machine Learning in Medical Imaging (MLMI), MICCAI workshop},
  pages={379--387},
  year={2017}
}
@article{carass2017isbi,
  title={Longitudinal multiple sclerosis lesion segmentation: resource and challenge},
  author={Carass, Aaron and others},
  journal={NeuroImage},
  volume={148},
  pages={77--102},
  year={2017}
}
@article{commowick2018msseg,
  title={Objective evaluation of multiple sclerosis lesion segmentation using a data
         management and processing infrastructure},
  author={Commowick, Olivier and others},
  journal={Scientific Reports},
  volume={8},
  pages={13650},
  year={2018}
}
"""

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
The `synthetic` configs need nothing: the phantom is generated at build time.

For real data, request the training data from the challenge (registration and a data use
agreement are required), unpack it, and pass the folder as `manual_dir`:

* isbi2015: ISBI 2015 Longitudinal MS Lesion Segmentation Challenge
  (https://smart-stats-tools.org/lesion-challenge-2015). `manual_dir` holds
  training/training01/preprocessed/training01_01_{mprage,t2,flair,pd}_pp.nii and
  training/training01/masks/training01_01_mask{1,2}.nii, for training01 ... training05.
* msseg2016: MICCAI 2016 MSSEG challenge, on the Shanoir platform
  (https://shanoir.irisa.fr; see https://portal.fli-iam.irisa.fr/msseg-challenge/).
  `manual_dir` holds Training/Center_0X/Patient_0Y/Preprocessed_Data/
  {T1,T2,FLAIR}_preprocessed.nii.gz and .../Masks/Consensus.nii.gz.

Files may be .nii or .nii.gz. See docs/data.md for the full layout.

    tfds.load("ms_lesions/isbi2015", data_dir=DATA_DIR, download_and_prepare_kwargs={
        "download_config": tfds.download.DownloadConfig(manual_dir=MANUAL_DIR)})
"""


@dataclasses.dataclass(eq=False)
class MsLesionsConfig(tfds.core.BuilderConfig):
    """One way to build ``ms_lesions``.

    Attributes:
        layout: The file layout read (``tfds_ms.layouts.READERS``: ``isbi2015``,
            ``msseg2016``, ``nnunet``, ``bids``); for ``synthetic`` sources, the layout the
            phantom is written in. Defaults to ``"msseg2016"``.
        source: ``"manual"`` (read ``manual_dir``) or ``"synthetic"`` (make the phantom in
            the download folder first). Defaults to ``"manual"``.
        grid: The reference grid. Defaults to ``PAPER_GRID`` (128x224x256).
        rater: Whose masks are the labels (``tfds_ms.layouts.RATERS``). Defaults to the
            layout's ``mask1`` / ``consensus``.
        num_folds: Number of cross-validation folds (splits). Defaults to 2 (the paper).
        modalities: Canonical modality names, in channel order. Defaults to None: T1, T2,
            FLAIR for ISBI, MSSEG and the phantom; ``dataset.json``'s channels for nnunet;
            bids needs them named.
        subject_pattern: nnunet: regular expression on the case id that gives the subject
            (``tfds_ms.layouts.subject_of``). Defaults to None (a case is a subject).
        mask_folder, mask_pattern: bids: where the lesion masks are. Default to
            ``derivatives/*`` and the lesion mask names ``tfds_ms.layouts.bids_scans`` knows.
        bids_filter: bids: filters choosing among several files of one channel
            (``tfds_ms.layouts.parse_bids_filters``), e.g. ``("FLAIR:acq=3D",)``.
            Defaults to None.
        require_labels: nnunet/bids: refuse cases without a mask instead of leaving them
            out with a warning. Defaults to False.
        manual_dir, fingerprint: For a config made from a user's folder by ``user_config``:
            the folder and the digest of what it holds (``tfds_ms.layouts.fingerprint``).
        ignore_index: The label value of voxels the loss leaves out (nnU-Net's ``ignore``
            label, stored as ``scans.IGNORE_LABEL``), or None.
        synth_subjects, synth_seed, synth_resolution: The phantom's subjects, seed and
            working resolution (mm), for ``source="synthetic"``. Default 15, 0, 1.0.
        register: Place the grid by rigid registration of each T1 to the MNI152 template
            (removes head rotations; needs the optional SimpleITK). Defaults to False: the
            grid is axis-aligned and centred on each brain.
        phantom: ``"easy"`` (``tfds_ms.synth``) or ``"realistic"`` (``tfds_ms.realistic``),
            for ``source="synthetic"``. Defaults to ``"easy"``.
        difficulty, synth_centres: The realistic phantom's difficulty (0-1) and centres
            (``tfds_ms.realistic.CENTRES``, five subjects each). Default
            ``realistic.DEFAULT_DIFFICULTY`` (0.8) and ``realistic.DEFAULT_CENTRES``.
        folds_by: ``"subject"`` (subject i of the sorted ids in fold i % k) or ``"centre"``
            (MSSEG layout: one fold per centre, ``num_folds`` = the number of centres).
            Defaults to ``"subject"``.
        intensity_normalization, clip_percentiles: How ``image`` is normalised
            (``tfversky.preprocessing.normalize_intensity``): the one place these are set;
            the metadata records them and a trained model's plan copies them. Default
            ``"zscore"`` and ``preprocessing.DEFAULT_CLIP_PERCENTILES`` (0.5, 99.5).
    """

    layout: str = "msseg2016"
    source: str = "manual"
    grid: ReferenceGrid = PAPER_GRID
    rater: str | None = None
    num_folds: int = 2
    modalities: tuple | None = None
    subject_pattern: str | None = None
    mask_folder: str | None = None
    mask_pattern: str | None = None
    bids_filter: tuple | None = None
    require_labels: bool = False
    manual_dir: str | None = None
    fingerprint: str | None = None
    ignore_index: int | None = None
    synth_subjects: int = 15
    synth_seed: int = 0
    synth_resolution: float = 1.0
    register: bool = False
    phantom: str = "easy"
    difficulty: float = realistic.DEFAULT_DIFFICULTY
    synth_centres: tuple = realistic.DEFAULT_CENTRES
    folds_by: str = "subject"
    intensity_normalization: str = preprocessing.INTENSITY_NORMALIZATIONS[0]
    clip_percentiles: tuple = preprocessing.DEFAULT_CLIP_PERCENTILES

    def __post_init__(self):
        if self.layout not in layouts.READERS:
            raise ValueError(f"Invalid value for argument `layout`: expected one of "
                             f"{tuple(layouts.READERS)}. Received: layout={self.layout!r}")
        if self.source not in ("manual", "synthetic"):
            raise ValueError(f"Invalid value for argument `source`: expected 'manual' or "
                             f"'synthetic'. Received: source={self.source!r}")
        if self.rater is not None and self.rater not in layouts.RATERS[self.layout]:
            raise ValueError(f"Invalid value for argument `rater` of layout {self.layout!r}: "
                             f"expected one of {layouts.RATERS[self.layout]}. "
                             f"Received: rater={self.rater!r}")
        if not isinstance(self.num_folds, int) or self.num_folds < 2:
            raise ValueError(f"Invalid value for argument `num_folds`: expected an integer >= 2. "
                             f"Received: num_folds={self.num_folds!r}")
        if self.phantom not in ("easy", "realistic"):
            raise ValueError(f"Invalid value for argument `phantom`: expected 'easy' or "
                             f"'realistic'. Received: phantom={self.phantom!r}")
        self.difficulty = realistic.check_difficulty(self.difficulty)
        self.synth_centres = realistic.check_centres(self.synth_centres, "synth_centres")
        if self.folds_by not in ("subject", "centre"):
            raise ValueError(f"Invalid value for argument `folds_by`: expected 'subject' or "
                             f"'centre'. Received: folds_by={self.folds_by!r}")
        if self.folds_by == "centre" and self.layout != "msseg2016":
            raise ValueError(f"Invalid value for argument `folds_by`: folds by centre need the "
                             f"msseg2016 layout (its Center_0X folders); layout "
                             f"{self.layout!r} has no centres. Received: folds_by='centre'")
        if self.source == "synthetic" and self.synth_subjects < self.num_folds:
            raise ValueError(f"Invalid value for argument `synth_subjects`: each of the "
                             f"{self.num_folds} folds needs a subject. "
                             f"Received: synth_subjects={self.synth_subjects!r}")
        if self.modalities is not None:
            self.modalities = mods.canonical_list(self.modalities)
        self.intensity_normalization, self.clip_percentiles = \
            preprocessing.check_intensity_normalization(self.intensity_normalization,
                                                        self.clip_percentiles)

    @property
    def channels(self) -> tuple[str, ...]:
        """The modalities of ``image``'s channels, in order."""
        return self.modalities or mods.DEFAULT_MODALITIES


def _slug(text: str, limit: int = 32) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:limit] or "data"


def user_config(layout: str, manual_dir, *, modalities=None, grid: ReferenceGrid = PAPER_GRID,
                num_folds: int | None = None, subject_pattern: str | None = None,
                mask_folder: str | None = None, mask_pattern: str | None = None,
                bids_filter=None, bids_filter_file=None, require_labels: bool = False,
                register: bool = False) -> MsLesionsConfig:
    """The ``ms_lesions`` config of a user's nnU-Net or BIDS folder, keyed by what it holds.

    The folder is read (file names, ``dataset.json``; no voxels) and the config is named
    ``<layout>_<folder>_<modalities>_<options digest>``, e.g.
    ``nnunet_dataset501_ms_flair_t1_1c2e3a4b``: each dataset, modality set and option set
    (grid, folds, subject pattern, masks) gets its own prepared copy. The config also
    carries the folder's content ``fingerprint``; ``MsLesions`` refuses a prepared copy
    made from other files (``CacheMismatchError``).

    Args:
        layout: ``"nnunet"`` or ``"bids"``.
        manual_dir: The dataset folder (holding ``dataset.json``, or ``sub-*/``).
        modalities: Canonical names or aliases (``"FLAIR,T1w"``), in channel order.
            nnunet: defaults to every channel of ``dataset.json``; bids: required.
        grid: The reference grid. Defaults to ``PAPER_GRID``.
        num_folds: Folds. Defaults to 2, or to the folds of nnU-Net's ``splits_final.json``.
        subject_pattern: nnunet: regex on the case id giving the subject. Defaults to None.
        mask_folder, mask_pattern: bids: the masks' folder glob and file pattern.
        bids_filter, bids_filter_file: bids: filters choosing among several files of one
            channel (``tfds_ms.layouts.parse_bids_filters``); recorded in the config as
            texts, the file's contents included.
        require_labels: Refuse cases without a mask instead of leaving them out with a
            warning. Defaults to False.
        register: Register each T1 to MNI152 (needs SimpleITK). Defaults to False.

    Raises:
        tfds_ms.layouts.LayoutError: the folder breaks its layout (see the readers).
        ValueError: ``num_folds`` disagrees with ``splits_final.json``, or the subjects
            cannot fill the folds.

    Example:

    >>> import tempfile
    >>> from tfds_ms import synth
    >>> root = tempfile.mkdtemp()
    >>> _ = synth.synthesize(root, subjects=2, layout="nnunet", resolution=8, progress=False,
    ...                      modalities=("FLAIR",))
    >>> config = user_config("nnunet", root)
    >>> config.modalities, config.name.startswith("nnunet_"), len(config.fingerprint)
    (('FLAIR',), True, 16)
    """
    if layout not in layouts.USER_LAYOUTS:
        raise ValueError(f"Invalid value for argument `layout`: user datasets are read in the "
                         f"{' or '.join(layouts.USER_LAYOUTS)} layout. Received: layout={layout!r}")
    if manual_dir is None:
        raise ValueError(f"ms_lesions/{layout} reads your dataset folder: pass manual_dir=DIR "
                         f"to the builder (tfds.builder('ms_lesions/{layout}', manual_dir=DIR), "
                         f"tfds_ms.load_dataset(..., manual_dir=DIR), or --manual-dir DIR).")
    root = pathlib.Path(manual_dir).expanduser().resolve()
    if layout != "bids" and (bids_filter or bids_filter_file):
        raise ValueError(f"Invalid value for argument `bids_filter`: filters choose among BIDS "
                         f"files; the {layout} layout has none. Leave out --bids-filter / "
                         f"--bids-filter-file.")
    bids_filter = layouts.bids_filter_texts(bids_filter, bids_filter_file) or None
    options = _layout_options(layout, subject_pattern, mask_folder, mask_pattern, bids_filter,
                              require_labels)
    found = layouts.find_scans(root, layout, modalities=modalities, **options)
    channels = tuple(found[0].images)
    dataset_folds = {scan.fold for scan in found} - {None}
    if dataset_folds:
        if num_folds is not None and num_folds != len(dataset_folds):
            raise ValueError(f"Invalid value for argument `num_folds`: {root}/splits_final.json "
                             f"holds {len(dataset_folds)} folds. Received: num_folds={num_folds}. "
                             f"Pass num_folds={len(dataset_folds)} (--num-folds "
                             f"{len(dataset_folds)}) or leave it unset, or delete "
                             f"splits_final.json.")
        num_folds = len(dataset_folds)
    num_folds = 2 if num_folds is None else num_folds
    extra = [path for path in (root / "dataset.json", root / "splits_final.json")
             if path.is_file()]
    key = json.dumps([grid.shape, grid.spacing, num_folds, subject_pattern, mask_folder,
                      mask_pattern, register] + ([bids_filter, require_labels]
                                                 if bids_filter or require_labels else []))
    digest = hashlib.sha256(key.encode()).hexdigest()[:8]
    name = f"{layout}_{_slug(root.name)}_{'_'.join(_slug(m) for m in channels)}_{digest}"
    ignore = any("ignore" in scan.labels for scan in found)
    return MsLesionsConfig(
        name=name, layout=layout, grid=grid, num_folds=num_folds, modalities=channels,
        subject_pattern=subject_pattern, mask_folder=mask_folder, mask_pattern=mask_pattern,
        bids_filter=bids_filter, require_labels=require_labels, manual_dir=str(root), fingerprint=layouts.fingerprint(found, extra),
        ignore_index=scans.IGNORE_LABEL if ignore else None, register=register,
        description=f"{layout} dataset {root.name} ({len(found)} scans of "
                    f"{len({s.subject for s in found})} subjects; {', '.join(channels)}).")


def _layout_options(layout, subject_pattern, mask_folder, mask_pattern, bids_filter,
                    require_labels) -> dict:
    """The options ``tfds_ms.layouts.find_scans`` takes for a layout."""
    return {"nnunet": {"subject_pattern": subject_pattern, "require_labels": require_labels},
            "bids": {"mask_folder": mask_folder, "mask_pattern": mask_pattern,
                     "bids_filter": bids_filter, "require_labels": require_labels},
            }.get(layout, {})


class CacheMismatchError(ValueError):
    """A prepared ``ms_lesions`` copy was built from other files than the folder given now."""


def assign_folds(subjects, num_folds: int = 2) -> dict:
    """Subject id -> fold: ids sorted, subject i in fold i % num_folds.

    Example:

    >>> assign_folds(["b", "a", "c"], 2)
    {'a': 0, 'b': 1, 'c': 0}
    """
    return {subject: i % num_folds for i, subject in enumerate(sorted(set(subjects)))}


def assign_centre_folds(subjects, num_folds: int) -> dict:
    """Subject id -> fold by centre: the k-th centre (sorted) is fold k.

    Raises:
        ValueError: an id without a centre (``centerNN_...``), or a number of centres other
            than ``num_folds``.

    Example:

    >>> assign_centre_folds(["center07_patient01", "center01_patient02", "center07_patient03"], 2)
    {'center01_patient02': 0, 'center07_patient01': 1, 'center07_patient03': 1}
    """
    centre_of = {}
    for subject in sorted(set(subjects)):
        match = re.match(r"center(\d+)_", subject)
        if match is None:
            raise ValueError(f"Subject {subject!r} has no centre (expected an id such as "
                             f"center01_patient02): folds by centre need the MSSEG layout.")
        centre_of[subject] = int(match.group(1))
    centres = sorted(set(centre_of.values()))
    if len(centres) != num_folds:
        raise ValueError(f"Invalid value for argument `num_folds`: folds by centre make one "
                         f"fold per centre, and the data hold {len(centres)} centres "
                         f"({centres}). Received: num_folds={num_folds}; set it to "
                         f"{len(centres)}.")
    return {subject: centres.index(c) for subject, c in centre_of.items()}


class MsLesions(tfds.core.GeneratorBasedBuilder):
    """MS lesion segmentation: co-registered MR modalities and a lesion mask per scan.

    ``nnunet`` and ``bids`` read the user's folder when the builder is made: pass it as
    ``manual_dir`` (``tfds.builder("ms_lesions/nnunet", manual_dir=DIR)``, or in ``tfds.load``'s
    ``builder_kwargs``), with the options of ``user_config``. The builder then takes the
    config keyed by what the folder holds.

    Raises:
        CacheMismatchError: the prepared copy in ``data_dir`` was built from other files.
    """

    VERSION = tfds.core.Version("1.3.0")
    RELEASE_NOTES = {"1.0.0": "First release: synthetic, ISBI 2015 and MSSEG 2016 configs.",
                     "1.1.0": "nnunet and bids configs; any set of modalities; the modality "
                              "names, grid and ignore label in the metadata.",
                     "1.2.0": "The realistic phantom's configs; their default difficulty is "
                              "calibrated for the Table 1 reproduction.",
                     "1.3.0": "Raw (not skull-stripped) scans are cut to their foreground, "
                              "not taken whole; each example says whether its scan was "
                              "skull-stripped (skull_stripped), and the metadata records it "
                              "and the intensity normalisation. Skull-stripped scans are "
                              "prepared as in 1.2.0."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
    BUILDER_CONFIGS = [
        MsLesionsConfig(name="synthetic", source="synthetic",
                        description="Synthetic MS phantom (15 subjects) on the paper's "
                                    "128x224x256 grid; built offline, no manual step."),
        MsLesionsConfig(name="synthetic_lowres", source="synthetic", grid=PAPER_GRID.scaled(2),
                        synth_resolution=1.5,
                        description="The synthetic phantom on a 64x112x128 grid (same field "
                                    "of view, 2.5 x 1.8 x 1.5 mm voxels): for CPU demos."),
        MsLesionsConfig(name="synthetic_tiny", source="synthetic", grid=PAPER_GRID.scaled(4),
                        synth_subjects=4, synth_resolution=3.0,
                        description="Four phantom subjects on a 32x56x64 grid (5 x 3.6 x 3 mm "
                                    "voxels), built in seconds: for smoke tests and CI."),
        MsLesionsConfig(name="synthetic_realistic", source="synthetic", phantom="realistic",
                        description="Realistic MS phantom (15 subjects, 3 centres, simulated "
                                    "raters' consensus) on the paper's 128x224x256 grid."),
        MsLesionsConfig(name="synthetic_realistic_lowres", source="synthetic",
                        phantom="realistic", grid=PAPER_GRID.scaled(2), synth_resolution=1.5,
                        description="The realistic phantom on a 64x112x128 grid: for CPU runs "
                                    "(the Table 1 reproduction's default)."),
        MsLesionsConfig(name="synthetic_realistic_by_centre_lowres", source="synthetic",
                        phantom="realistic", grid=PAPER_GRID.scaled(2), synth_resolution=1.5,
                        synth_subjects=20, synth_centres=tuple(realistic.CENTRES),
                        folds_by="centre", num_folds=4,
                        description="20 realistic-phantom subjects from 4 centres, one fold "
                                    "per centre (fold3: the 1.5 T legacy scanner)."),
        MsLesionsConfig(name="isbi2015", layout="isbi2015",
                        description="ISBI 2015 training scans from manual_dir, rater 1's masks."),
        MsLesionsConfig(name="isbi2015_mask2", layout="isbi2015", rater="mask2",
                        description="ISBI 2015 training scans from manual_dir, rater 2's masks."),
        MsLesionsConfig(name="msseg2016", layout="msseg2016",
                        description="MSSEG 2016 training set (15 subjects) from manual_dir, "
                                    "consensus masks."),
        MsLesionsConfig(name="nnunet", layout="nnunet",
                        description="Your nnU-Net v2 raw dataset (manual_dir holds "
                                    "dataset.json): keyed by its contents on use."),
        MsLesionsConfig(name="bids", layout="bids",
                        description="Your BIDS dataset with lesion masks in derivatives/ "
                                    "(manual_dir, modalities): keyed by its contents on use."),
    ]
    DEFAULT_CONFIG_NAME = "synthetic"

    def __init__(self, *, manual_dir=None, modalities=None, grid: ReferenceGrid | None = None,
                 num_folds: int | None = None, subject_pattern: str | None = None,
                 mask_folder: str | None = None, mask_pattern: str | None = None,
                 bids_filter=None, bids_filter_file=None, require_labels: bool | None = None,
                 **kwargs):
        config = kwargs.get("config")
        if isinstance(config, str):
            config = self.builder_configs.get(config.split(":")[0], config)
        if isinstance(config, MsLesionsConfig) and config.layout in layouts.USER_LAYOUTS \
                and config.source == "manual" and config.fingerprint is None:
            kwargs["config"] = user_config(
                config.layout, manual_dir, modalities=modalities or config.modalities,
                grid=grid or config.grid,
                num_folds=num_folds or (None if config.num_folds == 2 else config.num_folds),
                subject_pattern=subject_pattern or config.subject_pattern,
                mask_folder=mask_folder or config.mask_folder,
                mask_pattern=mask_pattern or config.mask_pattern,
                bids_filter=bids_filter or config.bids_filter, bids_filter_file=bids_filter_file,
                require_labels=bool(require_labels or config.require_labels),
                register=config.register)
        elif any(v is not None for v in (modalities, grid, num_folds, subject_pattern,
                                          mask_folder, mask_pattern, bids_filter,
                                          bids_filter_file, require_labels)):
            raise ValueError(f"Builder options (modalities, grid, num_folds, subject_pattern, "
                             f"mask_folder, mask_pattern, bids_filter, bids_filter_file, "
                             f"require_labels) are for ms_lesions/nnunet and "
                             f"ms_lesions/bids; for config {getattr(config, 'name', config)!r} "
                             f"make a MsLesionsConfig(...) instead.")
        super().__init__(**kwargs)
        stored = (self.info.metadata or {}).get("fingerprint")
        if self.builder_config.fingerprint and stored != self.builder_config.fingerprint:
            raise CacheMismatchError(
                f"ms_lesions/{self.builder_config.name} in {self.data_dir} was built from other "
                f"files (fingerprint {stored}) than {self.builder_config.manual_dir} holds now "
                f"(fingerprint {self.builder_config.fingerprint}). To rebuild it from this "
                f"folder, delete {self.data_dir} (or use another data_dir / --data-dir).")

    def _info(self) -> tfds.core.DatasetInfo:
        config = self.builder_config
        grid, channels = config.grid, config.channels
        ignore = config.ignore_index
        return self.dataset_info_from_configs(
            description=(
                "MR volumes of multiple sclerosis patients (the config's modalities, channels "
                "last: see metadata['modalities']), each reoriented to RAS+, resampled onto "
                "one reference grid centred on the brain (linear for images, thresholded "
                "linear for masks) and z-scored per modality inside the brain (the non-zero "
                "voxels of a skull-stripped scan, the foreground of a raw one), with a lesion "
                "mask. `affine`/`shape` describe the scan's own voxels and `grid_affine` the "
                "grid's, so a prediction maps back with `tfversky.preprocessing.to_native`."),
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=(*grid.shape, len(channels)),
                                              dtype=np.float32, encoding="zlib",
                                              doc=f"{', '.join(channels)} (channels last), "
                                                  f"z-scored"),
                "label": tfds.features.Tensor(
                    shape=grid.shape, dtype=np.uint8, encoding="zlib",
                    doc="1 = lesion" + (f", {ignore} = ignore (left out by the loss)"
                                        if ignore is not None else "")),
                "subject": tfds.features.Text(doc="subject id; folds are split by it"),
                "scan_id": tfds.features.Text(doc="unique scan id (subject and time point)"),
                "affine": tfds.features.Tensor(shape=(4, 4), dtype=np.float64,
                                               doc="the scan's own voxel-to-world affine"),
                "shape": tfds.features.Tensor(shape=(3,), dtype=np.int32,
                                              doc="the scan's own 3D shape"),
                "grid_affine": tfds.features.Tensor(shape=(4, 4), dtype=np.float64,
                                                    doc="voxel-to-world affine of image/label"),
                "lesion_voxels": tfds.features.Scalar(dtype=np.int64,
                                                      doc="lesion voxels in `label`"),
                "skull_stripped": tfds.features.Scalar(
                    dtype=np.bool_, doc="the scan looked skull-stripped (else its brain "
                                        "region is its foreground)"),
            }),
            supervised_keys=("image", "label"),
            homepage="https://doi.org/10.1007/978-3-319-67389-9_44",
            citation=_CITATION,
            metadata=tfds.core.MetadataDict(
                modalities=list(channels), grid_shape=list(grid.shape),
                grid_spacing=list(grid.spacing), ignore_index=ignore, layout=config.layout,
                num_folds=config.num_folds, fingerprint=config.fingerprint,
                manual_dir=config.manual_dir,
                # How the volumes were prepared: the plan of a model trained on them copies it.
                intensity_normalization=config.intensity_normalization,
                clip_percentiles=list(config.clip_percentiles),
                skull_stripped=None),  # set while the scans are read: all of them stripped?
        )

    def _source_dir(self, dl_manager) -> pathlib.Path:
        config = self.builder_config
        if config.source == "manual":
            return pathlib.Path(config.manual_dir or str(dl_manager.manual_dir))
        name = (f"phantom_{config.layout}_{config.synth_subjects}subjects_seed{config.synth_seed}_"
                f"{config.synth_resolution:g}mm" + "".join(f"_{m}" for m in config.modalities or ()))
        if config.phantom == "realistic":
            name += f"_realistic_d{config.difficulty:g}_" + "-".join(config.synth_centres)
        folder = pathlib.Path(str(dl_manager.download_dir)) / name
        if (folder / "phantom.json").exists():  # written last: a complete phantom
            return folder
        if config.phantom == "realistic":
            realistic.synthesize(folder, config.synth_subjects, config.layout, config.synth_seed,
                                 config.synth_resolution, config.difficulty,
                                 config.synth_centres)
        else:
            synth.synthesize(folder, config.synth_subjects, config.layout, config.synth_seed,
                             config.synth_resolution, progress=True,
                             modalities=config.channels)
        return folder

    def _split_generators(self, dl_manager):
        config = self.builder_config
        options = _layout_options(config.layout, config.subject_pattern, config.mask_folder,
                                  config.mask_pattern, config.bids_filter, config.require_labels)
        root = self._source_dir(dl_manager)
        found = layouts.find_scans(root, config.layout, config.rater,
                                   modalities=config.modalities, **options)
        if config.fingerprint:
            extra = [p for p in (root / "dataset.json", root / "splits_final.json") if p.is_file()]
            now = layouts.fingerprint(found, extra)
            if now != config.fingerprint:
                raise CacheMismatchError(
                    f"{root} changed after config {config.name} was made from it (fingerprint "
                    f"{config.fingerprint}, now {now}): make the builder again "
                    f"(tfds_ms.user_config / tfds.builder('ms_lesions/{config.layout}', "
                    f"manual_dir=...)).")
        if all(scan.fold is not None for scan in found):
            folds = {scan.scan_id: scan.fold for scan in found}
        else:
            subjects = [scan.subject for scan in found]
            assign = assign_centre_folds if config.folds_by == "centre" else assign_folds
            by_subject = assign(subjects, config.num_folds)
            folds = {scan.scan_id: by_subject[scan.subject] for scan in found}
        if len(set(folds.values())) < config.num_folds:
            raise ValueError(f"Config {config.name}: {len({s.subject for s in found})} subjects "
                             f"cannot fill {config.num_folds} folds; lower `num_folds`.")
        return {f"fold{k}": self._generate_examples([s for s in found if folds[s.scan_id] == k])
                for k in range(config.num_folds)}

    def _generate_examples(self, fold_scans):
        # A few scans at a time, on as many threads, yielded in order (tfds_ms.threads): memory
        # stays bounded by a few subjects, whatever the dataset's size.
        config, metadata = self.builder_config, self.info.metadata

        def prepare(scan):
            return scans.make_example(scan, config.grid, config.register,
                                      config.clip_percentiles)

        for scan, example in zip(fold_scans, threads.ordered_map(prepare, fold_scans)):
            # Saved with the metadata once every split is written.
            metadata["skull_stripped"] = example["skull_stripped"] and \
                metadata.get("skull_stripped") is not False
            yield scan.scan_id, example


def dataset_modalities(builder_or_info) -> tuple[str, ...]:
    """The canonical modality names of a prepared ``ms_lesions`` dataset's channels, in order.

    Args:
        builder_or_info: A builder (``tfds.builder``, also a read-only one from files) or
            its ``DatasetInfo``.

    Example:

    >>> import tempfile
    >>> dataset_modalities(tfds.builder("ms_lesions/synthetic_tiny", data_dir=tempfile.mkdtemp()))
    ('T1', 'T2', 'FLAIR')
    """
    return tuple(_metadata(builder_or_info)["modalities"])


def dataset_grid(builder_or_info) -> ReferenceGrid:
    """The ``ReferenceGrid`` a prepared ``ms_lesions`` dataset's volumes are on.

    Example:

    >>> import tempfile
    >>> dataset_grid(tfds.builder("ms_lesions/synthetic_tiny", data_dir=tempfile.mkdtemp())).shape
    (32, 56, 64)
    """
    metadata = _metadata(builder_or_info)
    return ReferenceGrid(tuple(metadata["grid_shape"]), tuple(metadata["grid_spacing"]))


def dataset_ignore_index(builder_or_info) -> int | None:
    """The label value the loss must leave out (``TverskyLoss(ignore_index=...)``), or None.

    Example:

    >>> import tempfile
    >>> dataset_ignore_index(tfds.builder("ms_lesions/synthetic", data_dir=tempfile.mkdtemp()))
    """
    return _metadata(builder_or_info).get("ignore_index")


def dataset_preparation(builder_or_info) -> dict:
    """How a prepared ``ms_lesions`` dataset's volumes were made, as ``tfversky.plan.Plan``
    fields: ``intensity_normalization``, ``clip_percentiles`` and ``skull_stripped`` (True:
    every scan was skull-stripped; False: some were raw, cut to their foreground; None: not
    recorded). Datasets built before 1.3.0 recorded none of them: they were all z-scored
    with the default clipping, and whether they were stripped is unknown (None).

    Example:

    >>> import tempfile  # not built yet: the scans have not been looked at
    >>> dataset_preparation(tfds.builder("ms_lesions/synthetic_tiny", data_dir=tempfile.mkdtemp()))
    {'intensity_normalization': 'zscore', 'clip_percentiles': (0.5, 99.5), 'skull_stripped': None}
    """
    metadata = _metadata(builder_or_info)
    return {"intensity_normalization": metadata.get(
                "intensity_normalization", preprocessing.INTENSITY_NORMALIZATIONS[0]),
            "clip_percentiles": tuple(metadata.get("clip_percentiles",
                                                   preprocessing.DEFAULT_CLIP_PERCENTILES)),
            "skull_stripped": metadata.get("skull_stripped")}


def _metadata(builder_or_info) -> dict:
    info = getattr(builder_or_info, "info", builder_or_info)
    metadata = info.metadata
    if not metadata or "modalities" not in metadata:
        raise ValueError(f"Dataset {info.full_name} has no ms_lesions metadata (modalities, "
                         f"grid): it was not built by tfds_ms {MsLesions.VERSION} or later. "
                         f"Rebuild it.")
    return metadata
