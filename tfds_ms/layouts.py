"""Where each dataset keeps its files: one reader per layout, shared by real and synthetic data.

``isbi2015`` (ISBI 2015 longitudinal MS challenge, training set)::

    training/trainingNN/preprocessed/trainingNN_TT_{mprage,t2,flair,pd}_pp.nii
    training/trainingNN/masks/trainingNN_TT_mask{1,2}.nii          (two raters)

NN is the subject, TT the time point: every time point is one example, and all of a
subject's time points go to the same fold.

``msseg2016`` (MICCAI 2016 MSSEG challenge, training set, 15 subjects)::

    Training/Center_0X/Patient_0Y/Preprocessed_Data/{T1,T2,FLAIR,DP,GADO}_preprocessed.nii.gz
    Training/Center_0X/Patient_0Y/Masks/Consensus.nii.gz      (and ManualSegmentation_{1..7})

``nnunet`` (an nnU-Net v2 raw dataset; ``root`` is the folder holding ``dataset.json``)::

    dataset.json                       channel_names, labels, file_ending
    imagesTr/CASE_0000.nii.gz ...      one file per channel, 0000 = channel_names["0"]
    labelsTr/CASE.nii.gz
    splits_final.json                  (optional) the folds, as nnU-Net writes them

``bids`` (BIDS raw data with lesion masks as derivatives)::

    sub-01/[ses-01/]anat/sub-01_[ses-01_]FLAIR.nii.gz      (T1w, T2w, PDw, FLAIR, ...)
    derivatives/PIPELINE/sub-01/[ses-01/]anat/sub-01_[ses-01_]desc-lesion_mask.nii.gz

Every file may be ``.nii`` or ``.nii.gz``. For ISBI and MSSEG, ``root`` may be the folder
that holds ``training/`` (``Training/``) or that folder itself. Modalities are canonical
names (``tfversky.modalities``): ISBI's ``mprage`` is T1, MSSEG's ``DP`` is PD, BIDS's
``T1w`` is T1, and nnU-Net's ``channel_names`` are mapped the same way.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import json
import pathlib
import re

from tfversky import modalities as mods

# The layout's file name part of each canonical modality.
ISBI_NAMES = {"T1": "mprage", "T2": "t2", "FLAIR": "flair", "PD": "pd"}
MSSEG_NAMES = {"T1": "T1", "T2": "T2", "FLAIR": "FLAIR", "PD": "DP", "T1GD": "GADO"}
# The BIDS suffix a modality is written with (the reader also accepts every alias).
BIDS_SUFFIXES = {"T1": "T1w", "T2": "T2w", "FLAIR": "FLAIR", "PD": "PDw"}
RATERS = {"isbi2015": ("mask1", "mask2"),
          "msseg2016": ("consensus",) + tuple(str(k) for k in range(1, 8)),
          "nnunet": ("labelsTr",), "bids": ("derivatives",)}
DEFAULT_RATER = {layout: raters[0] for layout, raters in RATERS.items()}
# Layouts whose modalities and file list come from the user's folder: their TFDS configs are
# keyed by what the folder holds (``tfds_ms.ms_lesions.user_config``).
USER_LAYOUTS = ("nnunet", "bids")
BINARY_LABELS = {"background": 0, "lesion": 1}
BIDS_MASK_FOLDER = "derivatives/*"
BIDS_MASK_PATTERN = "*_desc-lesion_mask.nii.gz"
_NIFTI_ENDINGS = (".nii", ".nii.gz")


class LayoutError(ValueError):
    """The folder is not laid out as the dataset expects (a file or folder is missing)."""


@dataclasses.dataclass(frozen=True)
class Scan:
    """One example's files.

    Attributes:
        subject: Subject id; folds are assigned by it (e.g. ``training01``,
            ``center01_patient02``, ``sub-01``).
        scan_id: Unique example id (e.g. ``training01_02``: subject and time point).
        images: Canonical modality -> file, in channel order (``{"T1": path, ...}``).
        label: The chosen rater's lesion mask.
        labels: Label name -> value in the mask file; ``lesion`` is the foreground, and a
            label named ``ignore`` marks voxels the loss leaves out. Defaults to
            ``BINARY_LABELS``.
        fold: The fold the dataset itself puts the scan in (nnU-Net's
            ``splits_final.json``), or None to assign folds by subject.
    """

    subject: str
    scan_id: str
    images: dict
    label: pathlib.Path
    labels: dict = dataclasses.field(default_factory=lambda: dict(BINARY_LABELS))
    fold: int | None = None


def _isbi_files(folder: pathlib.Path, timepoint: int, suffix: str) -> dict:
    stem = f"{folder.name}_{timepoint:02d}"
    files = {key: folder / "preprocessed" / f"{stem}_{part}_pp{suffix}"
             for key, part in ISBI_NAMES.items()}
    files.update({rater: folder / "masks" / f"{stem}_{rater}{suffix}"
                  for rater in RATERS["isbi2015"]})
    return files


def _msseg_files(folder: pathlib.Path, suffix: str) -> dict:
    files = {key: folder / "Preprocessed_Data" / f"{part}_preprocessed{suffix}"
             for key, part in MSSEG_NAMES.items()}
    files["consensus"] = folder / "Masks" / f"Consensus{suffix}"
    files.update({str(k): folder / "Masks" / f"ManualSegmentation_{k}{suffix}"
                  for k in range(1, 8)})
    return files


def isbi2015_files(root, subject: int, timepoint: int = 1, suffix: str = ".nii") -> dict:
    """Paths of one ISBI 2015 scan: ``{"T1", "T2", "FLAIR", "PD", "mask1", "mask2"}``.

    Example:

    >>> files = isbi2015_files("data", 3, 2)
    >>> files["T1"].as_posix(), files["mask2"].name
    ('data/training/training03/preprocessed/training03_02_mprage_pp.nii', 'training03_02_mask2.nii')
    """
    return _isbi_files(pathlib.Path(root) / "training" / f"training{subject:02d}", timepoint,
                       suffix)


def msseg2016_files(root, center: int, patient: int, suffix: str = ".nii.gz") -> dict:
    """Paths of one MSSEG 2016 scan: modalities, ``consensus`` and raters ``"1"``-``"7"``.

    Example:

    >>> files = msseg2016_files("data", 1, 5)
    >>> files["FLAIR"].as_posix()
    'data/Training/Center_01/Patient_05/Preprocessed_Data/FLAIR_preprocessed.nii.gz'
    >>> files["consensus"].name, files["7"].name
    ('Consensus.nii.gz', 'ManualSegmentation_7.nii.gz')
    """
    folder = pathlib.Path(root) / "Training" / f"Center_{center:02d}" / f"Patient_{patient:02d}"
    return _msseg_files(folder, suffix)


def nnunet_files(root, case: str, channels: int, file_ending: str = ".nii.gz") -> dict:
    """Paths of one nnU-Net training case: channel index -> image, and ``"label"``.

    Example:

    >>> files = nnunet_files("Dataset501_MS", "MS_003", 2)
    >>> files[1].as_posix(), files["label"].as_posix()
    ('Dataset501_MS/imagesTr/MS_003_0001.nii.gz', 'Dataset501_MS/labelsTr/MS_003.nii.gz')
    """
    root = pathlib.Path(root)
    files = {k: root / "imagesTr" / f"{case}_{k:04d}{file_ending}" for k in range(channels)}
    files["label"] = root / "labelsTr" / f"{case}{file_ending}"
    return files


def bids_files(root, subject: str, session: str | None, suffixes, mask_folder: str = "lesions",
               mask_suffix: str = "desc-lesion_mask") -> dict:
    """Paths of one BIDS session: each suffix's image, and ``"mask"`` in a derivatives folder.

    ``subject`` and ``session`` are the labels without ``sub-`` / ``ses-``.

    Example:

    >>> files = bids_files("bids", "01", "02", ["FLAIR", "T1w"])
    >>> files["T1w"].as_posix()
    'bids/sub-01/ses-02/anat/sub-01_ses-02_T1w.nii.gz'
    >>> files["mask"].as_posix()
    'bids/derivatives/lesions/sub-01/ses-02/anat/sub-01_ses-02_desc-lesion_mask.nii.gz'
    """
    root = pathlib.Path(root)
    parts = [f"sub-{subject}"] + ([f"ses-{session}"] if session else [])
    stem = "_".join(parts)
    files = {suffix: root.joinpath(*parts, "anat", f"{stem}_{suffix}.nii.gz")
             for suffix in suffixes}
    files["mask"] = root.joinpath("derivatives", mask_folder, *parts, "anat",
                                  f"{stem}_{mask_suffix}.nii.gz")
    return files


def _existing(path: pathlib.Path) -> pathlib.Path | None:
    """The file as ``.nii`` or ``.nii.gz``, whichever exists."""
    base = str(path).removesuffix(".gz").removesuffix(".nii")
    for candidate in (pathlib.Path(base + ".nii"), pathlib.Path(base + ".nii.gz")):
        if candidate.is_file():
            return candidate
    return None


def _subjects_folder(root: pathlib.Path, top: str, pattern: str, layout: str) -> pathlib.Path:
    """The folder holding the subject folders: ``root/top``, or ``root`` itself."""
    if not root.is_dir():
        raise LayoutError(f"The {layout} folder {root} does not exist. Point `manual_dir` at the "
                          f"folder that holds `{top}/` (see docs/data.md).")
    if (root / top).is_dir():
        return root / top
    if any(root.glob(pattern)):
        return root
    raise LayoutError(f"No {layout} data under {root}: expected a `{top}/` folder with "
                      f"`{pattern}` subfolders (see docs/data.md for the layout).")


def _check_rater(layout: str, rater: str) -> None:
    if rater not in RATERS[layout]:
        raise ValueError(f"Invalid value for argument `rater` of layout {layout!r}: expected one "
                         f"of {RATERS[layout]}. Received: rater={rater!r}")


def choose_modalities(modalities, available, where: str) -> tuple[str, ...]:
    """The requested modalities, canonical and in order (default T1, T2, FLAIR), all of
    which must be ``available``.

    Raises:
        LayoutError: naming ``where`` and what it holds, for a modality it lacks.

    Example:

    >>> choose_modalities("flair,T1w", ("T1", "T2", "FLAIR"), "the msseg2016 layout")
    ('FLAIR', 'T1')
    """
    chosen = mods.DEFAULT_MODALITIES if modalities is None else mods.canonical_list(modalities)
    missing = [m for m in chosen if m not in available]
    if missing:
        raise LayoutError(f"Invalid value for argument `modalities`: {where} has no "
                          f"{', '.join(missing)}; it holds {', '.join(available)}. "
                          f"Received: modalities={list(chosen)!r}")
    return chosen


def _resolve(files: dict, keys, subject: str) -> dict:
    resolved = {}
    for key in keys:
        found = _existing(files[key])
        if found is None:
            raise LayoutError(f"Subject {subject}: missing {key} file {files[key]} (.nii or "
                              f".nii.gz). Every scan needs each chosen modality and the "
                              f"chosen rater's mask.")
        resolved[key] = found
    return resolved


def isbi2015_scans(root, rater: str = "mask1", modalities=None) -> list[Scan]:
    """Every training scan of an ISBI 2015 folder, sorted by subject and time point.

    Raises:
        LayoutError: no subject folders, or a scan lacks a modality or the rater's mask.
    """
    _check_rater("isbi2015", rater)
    chosen = choose_modalities(modalities, tuple(ISBI_NAMES), "the isbi2015 layout")
    subjects = _subjects_folder(pathlib.Path(root), "training", "training[0-9]*", "isbi2015")
    scans = []
    for folder in sorted(p for p in subjects.glob("training[0-9]*") if p.is_dir()):
        timepoints = sorted({int(m.group(1)) for f in folder.glob("*/*.nii*")
                             if (m := re.match(rf"{folder.name}_(\d+)_", f.name))})
        if not timepoints:
            raise LayoutError(f"Subject {folder.name}: no scans in {folder} (expected "
                              f"preprocessed/{folder.name}_01_flair_pp.nii and so on).")
        for timepoint in timepoints:
            files = _resolve(_isbi_files(folder, timepoint, ".nii"), chosen + (rater,),
                             folder.name)
            scans.append(Scan(folder.name, f"{folder.name}_{timepoint:02d}",
                              {m: files[m] for m in chosen}, files[rater]))
    if not scans:
        raise LayoutError(f"No ISBI 2015 subjects under {subjects}: expected trainingNN folders "
                          f"(see docs/data.md).")
    return scans


def msseg2016_scans(root, rater: str = "consensus", modalities=None) -> list[Scan]:
    """Every training subject of an MSSEG 2016 folder, sorted by centre and patient.

    Raises:
        LayoutError: no patient folders, or a patient lacks a modality or the rater's mask.
    """
    _check_rater("msseg2016", rater)
    chosen = choose_modalities(modalities, tuple(MSSEG_NAMES), "the msseg2016 layout")
    subjects = _subjects_folder(pathlib.Path(root), "Training", "Center_*", "msseg2016")
    scans = []
    for folder in sorted(p for p in subjects.glob("Center_[0-9]*/Patient_[0-9]*") if p.is_dir()):
        center = int(folder.parent.name.removeprefix("Center_"))
        patient = int(folder.name.removeprefix("Patient_"))
        subject = f"center{center:02d}_patient{patient:02d}"
        files = _resolve(_msseg_files(folder, ".nii.gz"), chosen + (rater,), subject)
        scans.append(Scan(subject, subject, {m: files[m] for m in chosen}, files[rater]))
    if not scans:
        raise LayoutError(f"No MSSEG 2016 patients under {subjects}: expected "
                          f"Center_0X/Patient_0Y folders (see docs/data.md).")
    return scans


# --- nnU-Net v2 raw -------------------------------------------------------------------------


def read_dataset_json(root) -> dict:
    """An nnU-Net ``dataset.json``, checked: ``channel_names`` (canonical), ``labels``,
    ``file_ending``.

    Returns:
        ``{"modalities": ("FLAIR", "T1"), "labels": {"background": 0, "lesion": 1, ...},
        "file_ending": ".nii.gz", "path": ...}``; the modalities in channel order.

    Raises:
        LayoutError: the file is missing or not JSON; ``channel_names`` or ``labels`` is
            missing or malformed; a channel name is not a known modality; the labels are
            not background 0 plus one foreground class (and optionally ``ignore``); the
            file ending is not NIfTI.

    Example:

    >>> import json, pathlib, tempfile
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "FLAIR",
    ...     "1": "T1w"}, "labels": {"background": 0, "lesion": 1}, "file_ending": ".nii.gz"}))
    >>> read_dataset_json(root)["modalities"]
    ('FLAIR', 'T1')
    """
    path = pathlib.Path(root) / "dataset.json"
    fix = "Point `manual_dir` at the nnU-Net dataset folder (the one holding dataset.json, " \
          "imagesTr/ and labelsTr/)."
    if not path.is_file():
        raise LayoutError(f"No nnU-Net dataset.json in {root}. {fix}")
    try:
        spec = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise LayoutError(f"{path} cannot be read as JSON ({str(err).splitlines()[0]}). Fix "
                          f"or regenerate it (nnU-Net's generate_dataset_json).") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("channel_names"), dict) \
            or not spec["channel_names"]:
        raise LayoutError(f"{path} lacks `channel_names` (e.g. {{\"0\": \"FLAIR\", \"1\": "
                          f"\"T1\"}}): add it, one entry per image channel file _0000, _0001, ...")
    channels = spec["channel_names"]
    if sorted(channels, key=str) != [str(k) for k in range(len(channels))]:
        raise LayoutError(f"{path}: `channel_names` keys must be \"0\" ... \"{len(channels) - 1}\" "
                          f"(the _0000 ... file suffixes). Received: {sorted(channels)}")
    try:
        modalities = mods.canonical_list([channels[str(k)] for k in range(len(channels))])
    except ValueError as err:
        raise LayoutError(f"{path}: `channel_names`: {err} Rename the channel in dataset.json "
                          f"to a known modality.") from None
    labels = spec.get("labels")
    if not isinstance(labels, dict) or not all(
            isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 254
            for v in labels.values()):
        raise LayoutError(f"{path} lacks `labels` as name -> integer value 0-254 (e.g. "
                          f"{{\"background\": 0, \"lesion\": 1}}; region lists are not "
                          f"supported). Received: labels={labels!r}")
    foreground = [name for name, v in labels.items() if v != 0 and name != "ignore"]
    if labels.get("background") != 0 or len(foreground) != 1:
        raise LayoutError(f"{path}: `labels` must be background 0 and one lesion class (plus "
                          f"optionally \"ignore\"): ms_lesions is binary. Merge the classes "
                          f"into one label first. Received: labels={labels!r}")
    file_ending = spec.get("file_ending", ".nii.gz")
    if file_ending not in _NIFTI_ENDINGS:
        raise LayoutError(f"{path}: file_ending {file_ending!r} is not NIfTI; convert the images "
                          f"to .nii.gz (nnU-Net's NIfTI reader) first.")
    # The lesion class is called `lesion` from here on, whatever dataset.json names it.
    named = {"background": 0, "lesion": labels[foreground[0]]}
    if "ignore" in labels:
        named["ignore"] = labels["ignore"]
    return {"modalities": modalities, "labels": named, "file_ending": file_ending,
            "path": path}


def _case_ids(folder: pathlib.Path, ending: str, pattern: str) -> dict:
    """``{case id: [file, ...]}`` of the files in ``folder`` named ``CASE<pattern><ending>``."""
    found = {}
    for path in sorted(folder.glob(f"*{ending}")):
        match = re.fullmatch(rf"(.+?){pattern}{re.escape(ending)}", path.name)
        if match:
            found.setdefault(match.group(1), []).append(path)
    return found


def subject_of(case: str, subject_pattern: str | None) -> str:
    """The subject id of a case id: the pattern's group ``subject``, else its first group,
    else its whole match (searched from the start). Without a pattern, the case itself.

    Raises:
        LayoutError: the pattern does not match the case id.

    Example:

    >>> subject_of("MS_003_ses2", r"MS_\\d+"), subject_of("MS_003_ses2", r"(?P<subject>\\d+)_ses")
    ('MS_003', '003')
    """
    if subject_pattern is None:
        return case
    match = re.search(subject_pattern, case)
    if match is None:
        raise LayoutError(f"Invalid value for argument `subject_pattern`: {subject_pattern!r} "
                          f"does not match case id {case!r}. Write a regular expression whose "
                          f"match (or group `subject`) is the subject part of every case id, "
                          f"e.g. '^[^_]+_[0-9]+' for MS_003_ses2.")
    if "subject" in match.re.groupindex:
        return match.group("subject")
    return match.group(1) if match.re.groups else match.group(0)


def _nnunet_folds(root: pathlib.Path, cases: list, subjects: dict) -> dict | None:
    """``{case: fold}`` from ``splits_final.json`` (fold k = the cases of entry k's "val")."""
    path = root / "splits_final.json"
    if not path.is_file():
        return None
    try:
        splits = json.loads(path.read_text())
        folds = {}
        for k, entry in enumerate(splits):
            for case in entry["val"]:
                if case in folds:
                    raise LayoutError(f"{path}: case {case!r} is in the \"val\" list of folds "
                                      f"{folds[case]} and {k}; each case belongs to one fold.")
                folds[case] = k
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError, KeyError) as err:
        raise LayoutError(f"{path} is not an nnU-Net splits file (a list of {{\"train\": [...], "
                          f"\"val\": [...]}}): {type(err).__name__} {err}. Fix or delete it to "
                          f"assign folds by subject.") from None
    unknown = sorted(set(folds) - set(cases))
    missing = sorted(set(cases) - set(folds))
    if unknown or missing:
        raise LayoutError(f"{path} does not match labelsTr/: " + "; ".join(
            part for part in (f"cases without files {unknown[:5]}" if unknown else "",
                              f"cases in no fold {missing[:5]}" if missing else "") if part)
                          + ". Regenerate it, or delete it to assign folds by subject.")
    for subject in set(subjects.values()):
        held = {folds[c] for c in cases if subjects[c] == subject}
        if len(held) > 1:
            raise LayoutError(f"{path} puts subject {subject!r} (subject_pattern) in folds "
                              f"{sorted(held)}: a subject's cases must share one fold.")
    return folds


def nnunet_scans(root, rater: str = "labelsTr", modalities=None,
                 subject_pattern: str | None = None) -> list[Scan]:
    """Every training case of an nnU-Net v2 raw dataset, sorted by case id.

    Args:
        root: The dataset folder, holding ``dataset.json``, ``imagesTr/`` and ``labelsTr/``.
        rater: Only ``"labelsTr"``.
        modalities: A subset of ``channel_names`` to read, in the order wanted. Defaults
            to all channels in the dataset's order.
        subject_pattern: Regular expression on the case id whose match (or group
            ``subject``) is the subject, so that a subject's sessions share a fold.
            Defaults to None (every case its own subject).

    Raises:
        LayoutError: ``dataset.json`` is missing or malformed (``read_dataset_json``); a
            case lacks a channel file or its label; ``subject_pattern`` does not match a
            case id; a requested modality is not a channel; ``splits_final.json`` does not
            match the cases.
    """
    _check_rater("nnunet", rater)
    root = pathlib.Path(root)
    spec = read_dataset_json(root)
    channels = spec["modalities"]
    chosen = channels if modalities is None else mods.canonical_list(modalities)
    absent = [m for m in chosen if m not in channels]
    if absent:
        raise LayoutError(f"Invalid value for argument `modalities`: {', '.join(absent)} is not a "
                          f"channel of {spec['path']} (channel_names: {', '.join(channels)}). "
                          f"Received: modalities={list(chosen)!r}")
    ending = spec["file_ending"]
    labels = _case_ids(root / "labelsTr", ending, "")
    images = _case_ids(root / "imagesTr", ending, r"_\d{4}")
    if not labels:
        raise LayoutError(f"No training cases in {root}: expected labelsTr/CASE{ending} with "
                          f"imagesTr/CASE_0000{ending} ... (see docs/data.md).")
    unlabelled = sorted(set(images) - set(labels))
    if unlabelled:
        raise LayoutError(f"Case {unlabelled[0]}: imagesTr/ holds its images but labelsTr/ has "
                          f"no {unlabelled[0]}{ending}. Add the label or move the case to "
                          f"imagesTs/.")
    cases = sorted(labels)
    subjects = {case: subject_of(case, subject_pattern) for case in cases}
    folds = _nnunet_folds(root, cases, subjects)
    scans = []
    for case in cases:
        files = nnunet_files(root, case, len(channels), ending)
        paths = {}
        for modality in chosen:
            path = files[channels.index(modality)]
            if not path.is_file():
                raise LayoutError(f"Case {case}: missing {modality} file {path} (channel "
                                  f"{channels.index(modality):04d} of dataset.json). Every "
                                  f"case needs a file for each channel.")
            paths[modality] = path
        scans.append(Scan(subjects[case], case, paths, files["label"], dict(spec["labels"]),
                          None if folds is None else folds[case]))
    return scans


# --- BIDS -----------------------------------------------------------------------------------


def _entities(name: str) -> dict:
    """BIDS entities of a file name: ``sub-01_ses-02_FLAIR.nii.gz`` -> {sub, ses, suffix}."""
    stem = name.removesuffix(".gz").removesuffix(".nii")
    *pairs, suffix = stem.split("_")
    found = dict(pair.split("-", 1) for pair in pairs if "-" in pair)
    found["suffix"] = suffix
    return found


def bids_scans(root, rater: str = "derivatives", modalities=None,
               mask_folder: str | None = None, mask_pattern: str | None = None) -> list[Scan]:
    """Every session (or subject without sessions) of a BIDS folder, sorted by subject/session.

    Args:
        root: The BIDS dataset folder (holding ``sub-*/``).
        rater: Only ``"derivatives"``.
        modalities: The modalities to read, by canonical name or BIDS suffix
            (``"FLAIR,T1w"``). Required.
        mask_folder: Glob, relative to ``root``, of the folder(s) holding the masks.
            Defaults to ``BIDS_MASK_FOLDER`` (``derivatives/*``).
        mask_pattern: Glob of the mask file names. Defaults to ``BIDS_MASK_PATTERN``
            (``*_desc-lesion_mask.nii.gz``).

    Raises:
        LayoutError: no ``sub-*`` folder; no modalities named; a modality that no subject
            has; a session lacking a modality or its mask; two files for one modality or mask.
    """
    _check_rater("bids", rater)
    root = pathlib.Path(root)
    mask_folder = mask_folder or BIDS_MASK_FOLDER
    mask_pattern = mask_pattern or BIDS_MASK_PATTERN
    if modalities is None:
        raise LayoutError("The bids layout needs the modalities to read, by BIDS suffix: pass "
                          "modalities='FLAIR,T1w' (command line: --modalities FLAIR,T1w).")
    chosen = mods.canonical_list(modalities)
    if not root.is_dir():
        raise LayoutError(f"The bids folder {root} does not exist. Point `manual_dir` at the "
                          f"BIDS dataset folder (the one holding sub-*/).")
    sessions = {}  # (sub, ses) -> {modality: [paths]}
    for path in sorted(root.glob("sub-*/**/anat/*.nii*")):
        if not path.name.endswith(_NIFTI_ENDINGS) or "derivatives" in path.relative_to(root).parts:
            continue
        entities = _entities(path.name)
        try:
            modality = mods.canonical(entities["suffix"])
        except ValueError:
            continue  # other anatomical scans (e.g. angio) are not inputs
        key = (entities.get("sub", path.relative_to(root).parts[0][4:]), entities.get("ses"))
        sessions.setdefault(key, {}).setdefault(modality, []).append(path)
    if not sessions:
        raise LayoutError(f"No BIDS subject under {root}: expected sub-*/[ses-*/]anat/"
                          f"sub-*_FLAIR.nii.gz and so on. Point `manual_dir` at the BIDS "
                          f"dataset folder.")
    present = set().union(*sessions.values())
    nowhere = [m for m in chosen if m not in present]
    if nowhere:
        raise LayoutError(f"Invalid value for argument `modalities`: no subject under {root} "
                          f"has {', '.join(nowhere)} (found: {', '.join(sorted(present))}). "
                          f"Received: modalities={list(chosen)!r}")
    masks = {}
    folders = [f for f in sorted(root.glob(mask_folder)) if f.is_dir()]
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and fnmatch.fnmatch(path.name, mask_pattern):
                entities = _entities(path.name)
                masks.setdefault((entities.get("sub"), entities.get("ses")), []).append(path)
    scans = []
    for (sub, ses), files in sorted(sessions.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
        case = f"sub-{sub}" + (f"_ses-{ses}" if ses else "")
        paths = {}
        for modality in chosen:
            found = files.get(modality, [])
            if len(found) != 1:
                suffix = BIDS_SUFFIXES.get(modality, modality)
                expected = bids_files(root, sub, ses, [suffix])[suffix]
                raise LayoutError(
                    f"Case {case}: " + (f"missing {modality} file {expected} (or .nii)" if not found
                                        else f"{len(found)} {modality} files {[str(f) for f in found]}")
                    + ". Every session needs exactly one file per chosen modality "
                      "(--modalities).")
            paths[modality] = found[0]
        mask = masks.get((sub, ses), [])
        if len(mask) != 1:
            where = ", ".join(str(f) for f in folders) or f"{root / mask_folder} (no such folder)"
            raise LayoutError(
                f"Case {case}: " + ("no mask" if not mask else f"{len(mask)} masks {mask}")
                + f" matching {mask_pattern!r} under {where}. Name the folder and the file "
                  f"pattern with mask_folder / mask_pattern (--mask-folder, --mask-pattern).")
        scans.append(Scan(f"sub-{sub}", case, paths, mask[0]))
    return scans


READERS = {"isbi2015": isbi2015_scans, "msseg2016": msseg2016_scans, "nnunet": nnunet_scans,
           "bids": bids_scans}


def find_scans(root, layout: str, rater: str | None = None, **options) -> list[Scan]:
    """The scans of a dataset folder in ``layout`` (``READERS``: isbi2015, msseg2016, nnunet,
    bids).

    Args:
        root: The dataset folder (holding ``training/``, ``Training/``, ``dataset.json`` or
            ``sub-*/``).
        layout: Which dataset's layout.
        rater: Whose mask is the label: ``"mask1"``/``"mask2"`` (ISBI),
            ``"consensus"`` or ``"1"``-``"7"`` (MSSEG). Defaults to the layout's first.
        **options: The layout reader's own: ``modalities`` (every layout),
            ``subject_pattern`` (nnunet), ``mask_folder``, ``mask_pattern`` (bids).

    Example:

    >>> import tempfile
    >>> find_scans(tempfile.mkdtemp(), "isbi2015")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    tfds_ms.layouts.LayoutError: No isbi2015 data under ...
    """
    if layout not in READERS:
        raise ValueError(f"Invalid value for argument `layout`: expected one of "
                         f"{tuple(READERS)}. Received: layout={layout!r}")
    return READERS[layout](root, rater or DEFAULT_RATER[layout], **options)


def fingerprint(scans: list[Scan], extra_files=()) -> str:
    """A digest of what a dataset folder holds: every scan's ids and files, and extra files.

    Each file counts by name, size and its first and last 4 KiB: a ``.nii.gz`` ends in
    the CRC of its whole content, so any change to a compressed scan changes the digest
    without reading it all. (An uncompressed ``.nii`` edited in place, keeping its size,
    outside its first and last 4 KiB is not seen.) Files count by their path relative to
    the dataset, so a moved copy keeps its fingerprint.

    Example:

    >>> fingerprint([]) == fingerprint([]), len(fingerprint([]))
    (True, 16)
    """
    digest = hashlib.sha256()
    for scan in scans:
        digest.update(f"{scan.scan_id}|{sorted(scan.labels.items())}|{scan.fold}|".encode())
    files = [(scan.scan_id, scan.subject, key, path) for scan in scans
             for key, path in [*scan.images.items(), ("label", scan.label)]]
    files += [("", "", "extra", pathlib.Path(path)) for path in extra_files]
    files = [(*ids, pathlib.Path(path).resolve()) for *ids, path in files]
    base = pathlib.Path(*_common_parts([path.parent for *_, path in files])) if files else None
    for scan_id, subject, key, path in files:
        digest.update(f"{scan_id}|{subject}|{key}|{path.relative_to(base).as_posix()}|".encode())
        if path.is_file():
            size = path.stat().st_size
            with open(path, "rb") as f:
                head = f.read(4096)
                f.seek(max(size - 4096, 0))
                tail = f.read()
            digest.update(f"{size}|".encode() + head + tail)
    return digest.hexdigest()[:16]


def _common_parts(paths) -> tuple:
    parts = [p.parts for p in paths]
    common = []
    for column in zip(*parts):
        if len(set(column)) != 1:
            break
        common.append(column[0])
    return tuple(common)
