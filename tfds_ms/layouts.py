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

``file_ending`` may be any ending ``tfversky.io`` reads (``.mha`` and ``.nrrd`` through
SimpleITK), and a ``dataset`` key in ``dataset.json`` may list each case's files instead.

``bids`` (BIDS raw data with lesion masks as derivatives)::

    sub-01/[ses-01/]anat/sub-01_[ses-01_]FLAIR.nii.gz      (T1w, T2w, PDw, FLAIR, ...)
    derivatives/PIPELINE/sub-01/[ses-01/]anat/sub-01_[ses-01_]desc-lesion_mask.nii.gz

with ``run-``, ``acq-``, ``ce-``, ``rec-``, ``space-`` variants chosen by filters, and masks
named ``_desc-lesion_mask``, ``_label-lesion_mask`` or ``_dseg`` (with a ``dseg.tsv``).

Every NIfTI file may be ``.nii`` or ``.nii.gz``. For ISBI and MSSEG, ``root`` may be the folder
that holds ``training/`` (``Training/``) or that folder itself. Modalities are channel
names (``tfversky.modalities``), canonical where known: ISBI's ``mprage`` is T1, MSSEG's
``DP`` is PD, BIDS's ``T1w`` is T1, and nnU-Net's ``channel_names`` are mapped the same way;
other names are kept as written, and a repeated one gets its position (``FLAIR@1``). A
session or case without a mask is left out with one ``UnlabelledWarning``.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import json
import os
import pathlib
import re
import warnings

from tfversky import io, modalities as mods
from tfversky._extras import MissingExtraError, require

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
# What the default mask search finds (``_is_mask``), as shown in messages.
BIDS_MASK_PATTERN = "*_desc-lesion_mask / *_label-lesion_mask / *_dseg (+ dseg.tsv)"
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
    which must be ``available`` (``tfversky.modalities.resolve``).

    Raises:
        LayoutError: naming ``where`` and what it holds, for a modality it lacks.

    Example:

    >>> choose_modalities("flair,T1w", ("T1", "T2", "FLAIR"), "the msseg2016 layout")
    ('FLAIR', 'T1')
    """
    chosen = mods.DEFAULT_MODALITIES if modalities is None else mods.canonical_list(modalities)
    try:
        return mods.resolve(chosen, tuple(available), where)
    except ValueError as err:
        raise LayoutError(f"{err} Received: modalities={list(chosen)!r}") from None


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
    """An nnU-Net ``dataset.json``, checked: ``channel_names`` (canonical where known,
    repeated ones by position: ``modalities.channel_names``), ``labels``, ``file_ending``,
    ``dataset``.

    Returns:
        ``{"modalities": ("FLAIR", "T1"), "labels": {"background": 0, "lesion": 1, ...},
        "file_ending": ".nii.gz", "path": ..., "dataset": None}``; the modalities in channel
        order; ``dataset`` the explicit file lists (``{case: {"images", "label"}}``) or None.

    Raises:
        LayoutError: the file is missing or not JSON; ``channel_names`` or ``labels`` is
            missing or malformed; a channel name is malformed; the labels are not
            background 0 plus one foreground class (and optionally ``ignore``); the file
            ending is not one ``tfversky.io`` reads, or needs SimpleITK and it is missing;
            a ``dataset`` entry lacks one file per channel or its label.

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
        modalities = mods.channel_names([channels[str(k)] for k in range(len(channels))])
    except ValueError as err:
        raise LayoutError(f"{path}: `channel_names`: {err} Rename the channel in "
                          f"dataset.json.") from None
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
    if file_ending not in io.IMAGE_ENDINGS:
        raise LayoutError(f"{path}: file_ending {file_ending!r} is not an image format tfversky "
                          f"reads; expected one of {', '.join(io.IMAGE_ENDINGS)}. Convert the "
                          f"images (e.g. to .nii.gz) and set file_ending.")
    if io.reader_for(file_ending).name == "SimpleITK":
        try:
            require("SimpleITK")
        except MissingExtraError as err:
            raise LayoutError(f"{path}: file_ending {file_ending!r} is read with SimpleITK: "
                              f"{err} Or convert the images to .nii.gz.") from None
    # The lesion class is called `lesion` from here on, whatever dataset.json names it.
    named = {"background": 0, "lesion": labels[foreground[0]]}
    if "ignore" in labels:
        named["ignore"] = labels["ignore"]
    return {"modalities": modalities, "labels": named, "file_ending": file_ending,
            "path": path, "dataset": _dataset_key(spec, path, len(modalities))}


def _dataset_key(spec: dict, path: pathlib.Path, channels: int) -> dict | None:
    """``dataset.json``'s explicit file lists (nnU-Net's ``dataset`` key), checked:
    ``{case: {"images": [file per channel], "label": file}}``; None when absent. Relative
    paths are relative to the dataset folder, as nnU-Net reads them."""
    listed = spec.get("dataset")
    if listed is None:
        return None
    example = '{"CASE": {"images": ["imagesTr/CASE_0000.nii.gz", ...], "label": ' \
              '"labelsTr/CASE.nii.gz"}}'
    if not isinstance(listed, dict) or not listed:
        raise LayoutError(f"{path}: `dataset` must map each case to its files, e.g. {example}. "
                          f"Fix it, or remove the key to use imagesTr/ and labelsTr/.")
    cases = {}
    for case, entry in listed.items():
        images = entry.get("images") if isinstance(entry, dict) else None
        if not isinstance(images, list) or len(images) != channels \
                or not all(isinstance(p, str) for p in images) \
                or not isinstance(entry.get("label"), (str, type(None))):
            raise LayoutError(f"{path}: `dataset` entry {case!r} needs \"images\" (a list of "
                              f"{channels} files, one per channel_names entry) and \"label\" "
                              f"(a file), e.g. {example}. Received: {entry!r}")
        cases[case] = {"images": [path.parent / os.path.expandvars(p) for p in images],
                       "label": None if entry.get("label") is None
                       else path.parent / os.path.expandvars(entry["label"])}
    return cases


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
                 subject_pattern: str | None = None, require_labels: bool = False) -> list[Scan]:
    """Every training case of an nnU-Net v2 raw dataset, sorted by case id.

    Args:
        root: The dataset folder, holding ``dataset.json``, ``imagesTr/`` and ``labelsTr/``.
        rater: Only ``"labelsTr"``.
        modalities: A subset of ``channel_names`` to read, in the order wanted. Defaults
            to all channels in the dataset's order.
        subject_pattern: Regular expression on the case id whose match (or group
            ``subject``) is the subject, so that a subject's sessions share a fold.
            Defaults to None (every case its own subject).
        require_labels: Refuse cases without a label instead of leaving them out with an
            ``UnlabelledWarning``. Defaults to False.

    Raises:
        LayoutError: ``dataset.json`` is missing or malformed (``read_dataset_json``); a
            case lacks a chosen channel's file or its label; ``subject_pattern`` does not
            match a case id; a requested modality is not a channel; ``splits_final.json``
            does not match the cases.
    """
    _check_rater("nnunet", rater)
    root = pathlib.Path(root)
    spec = read_dataset_json(root)
    channels = spec["modalities"]
    chosen = channels if modalities is None else choose_modalities(
        modalities, channels, f"{spec['path']} (channel_names)")
    ending = spec["file_ending"]
    if spec["dataset"] is not None:
        listed = spec["dataset"]
        files = {case: {**dict(enumerate(entry["images"])), "label": entry["label"]}
                 for case, entry in listed.items()}
        unlabelled = sorted(case for case, entry in listed.items() if entry["label"] is None)
        where = f"{spec['path']} (`dataset`)"
    else:
        labels = _case_ids(root / "labelsTr", ending, "")
        images = _case_ids(root / "imagesTr", ending, r"_\d{4}")
        files = {case: nnunet_files(root, case, len(channels), ending)
                 for case in set(labels) | set(images)}
        unlabelled = sorted(set(images) - set(labels))
        where = f"{root / 'labelsTr'}"
    cases = sorted(set(files) - set(unlabelled))
    if not cases:
        raise LayoutError(f"No training cases in {root}: expected labelsTr/CASE{ending} with "
                          f"imagesTr/CASE_0000{ending} ..., or a `dataset` key in dataset.json "
                          f"listing them (see docs/data.md).")
    leave_out_unlabelled([f"{case} (no {case}{ending})" for case in unlabelled], where,
                         require_labels)
    subjects = {case: subject_of(case, subject_pattern) for case in cases}
    folds = _nnunet_folds(root, cases, subjects)
    scans = []
    for case in cases:
        paths = {}
        for modality in chosen:
            path = files[case][channels.index(modality)]
            if not path.is_file():
                raise LayoutError(f"Case {case}: missing {modality} file {path} (channel "
                                  f"{channels.index(modality):04d} of dataset.json). Every "
                                  f"case needs a file for each channel --modalities asks for.")
            paths[modality] = path
        if not files[case]["label"].is_file():
            raise LayoutError(f"Case {case}: missing label file {files[case]['label']} (listed "
                              f"in {where}). Add it, or fix the path.")
        scans.append(Scan(subjects[case], case, paths, files[case]["label"],
                          dict(spec["labels"]), None if folds is None else folds[case]))
    return scans


class UnlabelledWarning(UserWarning):
    """Sessions without a lesion mask are left out of training and evaluation."""


def leave_out_unlabelled(cases, where: str, require_labels: bool) -> None:
    """One warning listing the cases without a mask, which are left out (an error with
    ``require_labels``). They stay cases ``tfversky predict`` can segment.

    Raises:
        LayoutError: with ``require_labels``, naming the cases, where the masks were
            looked for and the flag.

    Warns:
        UnlabelledWarning: otherwise, listing them.

    Example:

    >>> leave_out_unlabelled(["sub-02_ses-02"], "derivatives/*", require_labels=True)
    Traceback (most recent call last):
    ...
    tfds_ms.layouts.LayoutError: 1 case(s) have images but no mask in derivatives/*: ...
    """
    if not cases:
        return
    listed = ", ".join(cases[:10]) + (f", ... ({len(cases)} in all)" if len(cases) > 10 else "")
    if require_labels:
        raise LayoutError(f"{len(cases)} case(s) have images but no mask in {where}: {listed}. "
                          f"Add their masks, or drop require_labels (--require-labels) to "
                          f"leave them out of training and evaluation.")
    warnings.warn(f"{len(cases)} case(s) have images but no mask in {where} and are left out "
                  f"of training and evaluation (tfversky predict can still segment them): "
                  f"{listed}. Pass require_labels=True (--require-labels) to make this an "
                  f"error.", UnlabelledWarning, stacklevel=3)


# --- BIDS -----------------------------------------------------------------------------------

# BIDS's short entity keys, and the long names pybids (and fMRIPrep's --bids-filter-file) use.
BIDS_ENTITY_NAMES = {"subject": "sub", "session": "ses", "run": "run", "acquisition": "acq",
                     "ceagent": "ce", "reconstruction": "rec", "space": "space",
                     "suffix": "suffix", "description": "desc", "label": "label"}
# The filter key that chooses among masks rather than images.
MASK_FILTER = "mask"


def _entities(name: str) -> dict:
    """BIDS entities of a file name: ``sub-01_ses-02_acq-3D_FLAIR.nii.gz`` ->
    ``{"sub": "01", "ses": "02", "acq": "3D", "suffix": "FLAIR"}``."""
    stem = name.removesuffix(".gz").removesuffix(".nii").removesuffix(".tsv")
    *pairs, suffix = stem.split("_")
    found = dict(pair.split("-", 1) for pair in pairs if "-" in pair)
    found["suffix"] = suffix
    return found


def bids_modality(name: str) -> str:
    """The channel a BIDS image is: its suffix, canonical when known; a ``T1w`` with a
    contrast agent (``ce-<agent>``) is T1GD.

    Example:

    >>> bids_modality("sub-01_T1w.nii.gz"), bids_modality("sub-01_ce-gadolinium_T1w.nii")
    ('T1', 'T1GD')
    >>> bids_modality("sub-01_acq-3D_FLAIR.nii.gz"), bids_modality("sub-01_DIR.nii.gz")
    ('FLAIR', 'DIR')
    """
    entities = _entities(name)
    modality = mods.canonical(entities["suffix"])
    return "T1GD" if modality == "T1" and "ce" in entities else modality


def parse_bids_filters(filters=(), filter_file=None) -> dict:
    """Filters choosing among several files of one channel: ``{channel: {entity: values}}``.

    Args:
        filters: ``"CHANNEL:entity=value[,entity=value]"`` strings (command line:
            ``--bids-filter FLAIR:acq=3D``); ``value|value`` allows either, an empty value
            means the entity must be absent (``FLAIR:acq=``). The channel ``mask`` filters
            the lesion masks.
        filter_file: A JSON file as fMRIPrep's ``--bids-filter-file``:
            ``{"flair": {"acquisition": "3D"}, "t1w": {"run": 1, "ceagent": null}}``; keys
            are channel names, entities by short (``acq``) or pybids name
            (``acquisition``), ``null`` = absent, a list = any of.

    Returns:
        Channel (canonical, or ``mask``) -> entity (short key) -> tuple of allowed values
        (strings; ``None`` = absent).

    Raises:
        LayoutError: a malformed filter or file, naming it and the flag.

    Example:

    >>> parse_bids_filters(["flair:acq=3D|2D", "T1w:run=1,ce="])
    {'FLAIR': {'acq': ('3D', '2D')}, 'T1': {'run': ('1',), 'ce': (None,)}}
    """
    parsed = {}

    def add(channel, entity, values, source):
        key = BIDS_ENTITY_NAMES.get(str(entity).lower(), str(entity))
        if not re.fullmatch(r"[A-Za-z]+", key):
            raise LayoutError(f"{source}: {entity!r} is not a BIDS entity (e.g. acq, run, ce, "
                              f"rec, space, or acquisition, run, ceagent in pybids' names).")
        values = values if isinstance(values, list) else [values]
        allowed = tuple(None if v in (None, "") else str(v) for v in values)
        name = MASK_FILTER if str(channel).lower() == MASK_FILTER else mods.canonical(channel)
        parsed.setdefault(name, {})[key] = allowed

    for text in filters or ():
        channel, sep, rest = str(text).partition(":")
        pairs = [pair.partition("=") for pair in rest.split(",")] if rest else []
        if not sep or not channel.strip() or not pairs or any(not eq or not key.strip()
                                                              for key, eq, _ in pairs):
            raise LayoutError(f"Invalid value for argument `bids_filter` (--bids-filter): "
                              f"expected CHANNEL:entity=value[,entity=value], e.g. "
                              f"FLAIR:acq=3D or T1w:run=1. Received: {text!r}")
        for key, _, value in pairs:
            add(channel.strip(), key.strip(), [v.strip() for v in value.split("|")],
                f"--bids-filter {text!r}")
    if filter_file is not None:
        path = pathlib.Path(filter_file)
        try:
            spec = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise LayoutError(f"--bids-filter-file {path} cannot be read as JSON "
                              f"({str(err).splitlines()[0]}).") from None
        if not isinstance(spec, dict) or not all(isinstance(v, dict) for v in spec.values()):
            raise LayoutError(f"--bids-filter-file {path}: expected {{channel: {{entity: value}}}},"
                              f" e.g. {{\"flair\": {{\"acquisition\": \"3D\"}}}}.")
        for channel, entities in spec.items():
            for entity, value in entities.items():
                if entity in ("datatype", "extension"):
                    continue  # the reader takes anat NIfTI files anyway
                if entity == "suffix":
                    continue  # the channel's name says the suffix
                add(channel, entity, value, f"--bids-filter-file {path}")
    return parsed


def _matches(entities: dict, wanted: dict) -> bool:
    # BIDS writes run-1 or run-01: indices compare as numbers.
    def same(value, allowed):
        if value is None or allowed is None:
            return value is allowed
        return value == allowed or (value.isdigit() and allowed.isdigit()
                                    and int(value) == int(allowed))
    return all(any(same(entities.get(key), allowed) for allowed in values)
               for key, values in wanted.items())


def _filter_text(channel: str, wanted: dict) -> str:
    return f"{channel}:" + ",".join(f"{key}={'|'.join(v or '' for v in values)}"
                                    for key, values in wanted.items())


def bids_filter_texts(filters=(), filter_file=None) -> tuple[str, ...]:
    """The filters (``parse_bids_filters``) as ``--bids-filter`` texts, one per channel,
    sorted: what a config records, with the filter file's contents folded in.

    Example:

    >>> bids_filter_texts(["t1w:run=1", "flair:acq=3D|2D"])
    ('FLAIR:acq=3D|2D', 'T1:run=1')
    """
    parsed = parse_bids_filters(filters, filter_file)
    return tuple(_filter_text(channel, parsed[channel]) for channel in sorted(parsed))


def _picking_filters(channel: str, candidates) -> list[str]:
    """For each candidate file, a ``--bids-filter`` that picks it from the others."""
    parsed = [_entities(p.name) for p in candidates]
    keys = sorted({k for e in parsed for k in e} - {"sub", "ses", "suffix"})
    result = []
    for entities in parsed:
        differing = [k for k in keys if any(o.get(k) != entities.get(k) for o in parsed)]
        wanted = {k: (entities.get(k),) for k in differing}
        result.append(_filter_text(channel, wanted) if wanted else "(none tells it apart)")
    return result


def _choose(files: list, channel: str, filters: dict, case: str, what: str) -> pathlib.Path:
    """The one file of ``files`` (a session's candidates for ``channel``) the filters pick."""
    wanted = filters.get(channel) or filters.get(mods.base_name(channel)) or {}
    chosen = [p for p in files if _matches(_entities(p.name), wanted)]
    if len(chosen) == 1:
        return chosen[0]
    if not chosen:
        raise LayoutError(
            f"Case {case}: --bids-filter {_filter_text(channel, wanted)} matches none of its "
            f"{what} files ({', '.join(p.name for p in files)}). Change the filter "
            f"(--bids-filter / --bids-filter-file).")
    picks = "; ".join(f"{p.name}: --bids-filter {f}"
                      for p, f in zip(chosen, _picking_filters(channel, chosen)))
    raise LayoutError(
        f"Case {case}: {len(chosen)} {what} files match" + (
            f" --bids-filter {_filter_text(channel, wanted)}" if wanted else "")
        + f"; choose one with a filter. {picks}." + (
            "" if channel == MASK_FILTER else f" (Two of them as two channels: --modalities "
                                              f"{channel}@0,{channel}@1 with a --bids-filter "
                                              f"for each.)"))


def _lesion_labels(mask: pathlib.Path, pipeline: pathlib.Path) -> dict:
    """A ``_dseg`` mask's labels from its ``dseg.tsv`` (beside it, or higher up in the
    pipeline folder, BIDS's inheritance): the row whose name holds ``lesion`` is the lesion."""
    entities = _entities(mask.name)
    candidates = [mask.with_name(mask.name.split(".nii")[0] + ".tsv")]
    for folder in [mask.parent, *mask.parent.parents]:
        candidates += sorted(folder.glob("*dseg.tsv"))
        if folder == pipeline:
            break
    tables = [t for t in candidates if t.is_file() and all(
        entities.get(k) == v for k, v in _entities(t.name).items())]
    if not tables:
        raise LayoutError(f"{mask}: a _dseg mask needs its dseg.tsv (index and name of each "
                          f"label) beside it or in {pipeline}; none found. Add it, or choose "
                          f"other masks with --mask-pattern.")
    table = tables[0]
    rows = [line.split("\t") for line in table.read_text().splitlines() if line.strip()]
    header = [h.strip().lower() for h in rows[0]] if rows else []
    if "index" not in header or "name" not in header:
        raise LayoutError(f"{table}: expected a tab-separated table with columns index and "
                          f"name (BIDS dseg.tsv). Received header: {rows[0] if rows else []}")
    named = {}
    for row in rows[1:]:
        try:
            named[row[header.index("name")].strip()] = int(row[header.index("index")])
        except (ValueError, IndexError):
            raise LayoutError(f"{table}: row {row} has no integer index and name.") from None
    lesions = [name for name in named if "lesion" in name.lower()]
    if len(lesions) != 1:
        raise LayoutError(
            f"{table}: expected one label whose name holds 'lesion' (the lesion class of "
            f"{mask.name}); found " + (f"{len(lesions)}: {lesions}" if lesions else
                                       f"none among {sorted(named)}")
            + ". Rename the lesion row to 'lesion', or choose other masks with --mask-pattern.")
    labels = {"background": 0, **{n: v for n, v in named.items() if v != 0}}
    labels["lesion"] = labels.pop(lesions[0])
    return labels


def _is_mask(name: str, mask_pattern: str | None) -> bool:
    if not name.endswith(_NIFTI_ENDINGS):
        return False
    if mask_pattern is not None:
        plain = name.removesuffix(".gz")
        return fnmatch.fnmatch(name, mask_pattern) or fnmatch.fnmatch(plain, mask_pattern) \
            or fnmatch.fnmatch(plain + ".gz", mask_pattern)
    entities = _entities(name)
    return entities["suffix"] == "dseg" or (entities["suffix"] == "mask" and "lesion" in (
        entities.get("desc"), entities.get("label")))


def _bids_masks(root: pathlib.Path, mask_folder: str | None, mask_pattern: str | None,
                filters: dict) -> dict:
    """(sub, ses) -> [(mask, labels)] of one pipeline's masks, the filters applied."""
    folders = [f for f in sorted(root.glob(mask_folder or BIDS_MASK_FOLDER)) if f.is_dir()]
    found = {}
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and _is_mask(path.name, mask_pattern) \
                    and _matches(_entities(path.name), filters.get(MASK_FILTER, {})):
                found.setdefault(folder, []).append(path)
    pattern = mask_pattern or BIDS_MASK_PATTERN
    if len(found) > 1 and mask_folder is None:
        listed = "; ".join(f"--mask-folder {f.relative_to(root).as_posix()} ({len(m)} masks)"
                           for f, m in found.items())
        raise LayoutError(f"Lesion masks matching {pattern!r} are in {len(found)} pipelines "
                          f"under {root / 'derivatives'}: choose one. {listed}.")
    if not found:
        where = ", ".join(str(f) for f in folders) \
            or f"{root / (mask_folder or BIDS_MASK_FOLDER)} (no such folder)"
        raise LayoutError(f"No lesion mask matching {pattern!r} under {where}. Name the folder "
                          f"and the file pattern with mask_folder / mask_pattern "
                          f"(--mask-folder, --mask-pattern).")
    masks = {}
    for folder, paths in found.items():
        for path in paths:
            entities = _entities(path.name)
            labels = _lesion_labels(path, folder) if entities["suffix"] == "dseg" \
                and mask_pattern is None else dict(BINARY_LABELS)
            masks.setdefault((entities.get("sub"), entities.get("ses")), []).append(
                (path, labels))
    return masks


def bids_scans(root, rater: str = "derivatives", modalities=None,
               mask_folder: str | None = None, mask_pattern: str | None = None,
               bids_filter=None, bids_filter_file=None,
               require_labels: bool = False) -> list[Scan]:
    """Every labelled session (or subject without sessions) of a BIDS folder, sorted by
    subject and session.

    Files are told apart by their entities: ``ses`` makes a case, ``run``, ``acq``, ``ce``,
    ``rec`` and ``space`` variants of one modality are chosen among with ``bids_filter``;
    ``_ce-<agent>_T1w`` is T1GD. Only the channels ``modalities`` asks for are looked at.

    Args:
        root: The BIDS dataset folder (holding ``sub-*/``).
        rater: Only ``"derivatives"``.
        modalities: The channels to read, by canonical name or BIDS suffix
            (``"FLAIR,T1w"``); ``FLAIR@0,FLAIR@1`` reads two FLAIRs of a session (each
            chosen by a filter). Required.
        mask_folder: Glob, relative to ``root``, of the pipeline folder holding the masks.
            Defaults to ``BIDS_MASK_FOLDER`` (``derivatives/*``), which must find masks in
            one pipeline only.
        mask_pattern: Glob of the mask file names (``.nii`` and ``.nii.gz`` both match).
            Defaults to None: ``_desc-lesion_mask``, ``_label-lesion_mask``, and ``_dseg``
            with a ``dseg.tsv`` naming a lesion label.
        bids_filter, bids_filter_file: Choose among several files of one channel
            (``parse_bids_filters``). Defaults to None.
        require_labels: Refuse sessions without a mask instead of leaving them out with an
            ``UnlabelledWarning``. Defaults to False.

    Raises:
        LayoutError: no ``sub-*`` folder; no modalities named; a modality that no session
            has; a session lacking a modality; several files of one channel or mask that
            no filter separates; a filter matching nothing; masks in several pipelines;
            a ``dseg.tsv`` without a lesion label.
    """
    _check_rater("bids", rater)
    root = pathlib.Path(root)
    if modalities is None:
        raise LayoutError("The bids layout needs the modalities to read, by BIDS suffix: pass "
                          "modalities='FLAIR,T1w' (command line: --modalities FLAIR,T1w).")
    chosen = mods.canonical_list(modalities)
    filters = parse_bids_filters(bids_filter, bids_filter_file)
    if not root.is_dir():
        raise LayoutError(f"The bids folder {root} does not exist. Point `manual_dir` at the "
                          f"BIDS dataset folder (the one holding sub-*/).")
    wanted = {mods.base_name(name) for name in chosen}
    sessions, present = {}, set()  # (sub, ses) -> {modality: [paths]}
    for path in sorted(root.glob("sub-*/**/anat/*.nii*")):
        if not path.name.endswith(_NIFTI_ENDINGS) or "derivatives" in path.relative_to(root).parts:
            continue
        try:
            modality = bids_modality(path.name)
        except ValueError:
            continue  # not a BIDS image name
        present.add(modality)
        if modality not in wanted:
            continue  # a channel nobody asked for is never looked at
        entities = _entities(path.name)
        key = (entities.get("sub", path.relative_to(root).parts[0][4:]), entities.get("ses"))
        sessions.setdefault(key, {}).setdefault(modality, []).append(path)
    if not present:
        raise LayoutError(f"No BIDS subject under {root}: expected sub-*/[ses-*/]anat/"
                          f"sub-*_FLAIR.nii.gz and so on. Point `manual_dir` at the BIDS "
                          f"dataset folder.")
    nowhere = [m for m in chosen if mods.base_name(m) not in present]
    if nowhere:
        raise LayoutError(f"Invalid value for argument `modalities`: no session under {root} "
                          f"has {', '.join(nowhere)} (found: {', '.join(sorted(present))}). "
                          f"Pass --modalities with some of those. Received: "
                          f"modalities={list(chosen)!r}")
    unknown = sorted(set(filters) - set(chosen) - wanted - {MASK_FILTER})
    if unknown:
        raise LayoutError(f"Invalid value for argument `bids_filter`: it filters "
                          f"{', '.join(unknown)}, which --modalities ({', '.join(chosen)}) does "
                          f"not ask for. Filter a chosen channel, or `mask`.")
    masks = _bids_masks(root, mask_folder, mask_pattern, filters)
    scans, unlabelled = [], []
    for (sub, ses), files in sorted(sessions.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
        case = f"sub-{sub}" + (f"_ses-{ses}" if ses else "")
        paths = {}
        for channel in chosen:
            modality = mods.base_name(channel)
            found = files.get(modality, [])
            if not found:
                suffix = BIDS_SUFFIXES.get(modality, modality)
                expected = bids_files(root, sub, ses, [suffix])[suffix]
                raise LayoutError(f"Case {case}: missing {modality} file {expected} (or .nii). "
                                  f"Every session needs a file for each channel --modalities "
                                  f"asks for.")
            paths[channel] = _choose(found, channel, filters, case, modality)
        if (sub, ses) not in masks:
            unlabelled.append(case)
            continue
        candidates = [path for path, _ in masks[(sub, ses)]]
        mask = _choose(candidates, MASK_FILTER, filters, case, "lesion mask")
        labels = dict(masks[(sub, ses)])[mask]
        scans.append(Scan(f"sub-{sub}", case, paths, mask, labels))
    leave_out_unlabelled(unlabelled, f"{mask_folder or BIDS_MASK_FOLDER} (pattern "
                                     f"{mask_pattern or BIDS_MASK_PATTERN!r})", require_labels)
    if not scans:
        raise LayoutError(f"No session under {root} has a lesion mask: nothing to train or "
                          f"evaluate on. Name the masks with --mask-folder / --mask-pattern.")
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
