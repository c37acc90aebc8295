"""Where each dataset keeps its files: one reader per layout, shared by real and synthetic data.

``isbi2015`` (ISBI 2015 longitudinal MS challenge, training set)::

    training/trainingNN/preprocessed/trainingNN_TT_{mprage,t2,flair,pd}_pp.nii
    training/trainingNN/masks/trainingNN_TT_mask{1,2}.nii          (two raters)

NN is the subject, TT the time point: every time point is one example, and all of a
subject's time points go to the same fold.

``msseg2016`` (MICCAI 2016 MSSEG challenge, training set, 15 subjects)::

    Training/Center_0X/Patient_0Y/Preprocessed_Data/{T1,T2,FLAIR,DP,GADO}_preprocessed.nii.gz
    Training/Center_0X/Patient_0Y/Masks/Consensus.nii.gz      (and ManualSegmentation_{1..7})

Every file may be ``.nii`` or ``.nii.gz``. ``root`` may be the folder that holds
``training/`` (``Training/``) or that folder itself. Only T1, T2 and FLAIR are read.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re

MODALITIES = ("t1", "t2", "flair")
# Our modality name -> the dataset's file name part.
ISBI_NAMES = {"t1": "mprage", "t2": "t2", "flair": "flair", "pd": "pd"}
MSSEG_NAMES = {"t1": "T1", "t2": "T2", "flair": "FLAIR", "pd": "DP", "gado": "GADO"}
RATERS = {"isbi2015": ("mask1", "mask2"),
          "msseg2016": ("consensus",) + tuple(str(k) for k in range(1, 8))}
DEFAULT_RATER = {"isbi2015": "mask1", "msseg2016": "consensus"}


class LayoutError(ValueError):
    """The folder is not laid out as the dataset expects (a file or folder is missing)."""


@dataclasses.dataclass(frozen=True)
class Scan:
    """One example's files.

    Attributes:
        subject: Subject id; folds are assigned by it (e.g. ``training01``,
            ``center01_patient02``).
        scan_id: Unique example id (e.g. ``training01_02``: subject and time point).
        images: ``{"t1": path, "t2": path, "flair": path}``.
        label: The chosen rater's lesion mask.
    """

    subject: str
    scan_id: str
    images: dict
    label: pathlib.Path


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
    """Paths of one ISBI 2015 scan: ``{"t1", "t2", "flair", "pd", "mask1", "mask2"}``.

    Example:

    >>> files = isbi2015_files("data", 3, 2)
    >>> files["t1"].as_posix(), files["mask2"].name
    ('data/training/training03/preprocessed/training03_02_mprage_pp.nii', 'training03_02_mask2.nii')
    """
    return _isbi_files(pathlib.Path(root) / "training" / f"training{subject:02d}", timepoint,
                       suffix)


def msseg2016_files(root, center: int, patient: int, suffix: str = ".nii.gz") -> dict:
    """Paths of one MSSEG 2016 scan: modalities, ``consensus`` and raters ``"1"``-``"7"``.

    Example:

    >>> files = msseg2016_files("data", 1, 5)
    >>> files["flair"].as_posix()
    'data/Training/Center_01/Patient_05/Preprocessed_Data/FLAIR_preprocessed.nii.gz'
    >>> files["consensus"].name, files["7"].name
    ('Consensus.nii.gz', 'ManualSegmentation_7.nii.gz')
    """
    folder = pathlib.Path(root) / "Training" / f"Center_{center:02d}" / f"Patient_{patient:02d}"
    return _msseg_files(folder, suffix)


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


def _resolve(files: dict, keys, subject: str) -> dict:
    resolved = {}
    for key in keys:
        found = _existing(files[key])
        if found is None:
            raise LayoutError(f"Subject {subject}: missing {key} file {files[key]} (.nii or "
                              f".nii.gz). Every scan needs T1, T2, FLAIR and the chosen "
                              f"rater's mask.")
        resolved[key] = found
    return resolved


def isbi2015_scans(root, rater: str = "mask1") -> list[Scan]:
    """Every training scan of an ISBI 2015 folder, sorted by subject and time point.

    Raises:
        LayoutError: no subject folders, or a scan lacks a modality or the rater's mask.
    """
    _check_rater("isbi2015", rater)
    subjects = _subjects_folder(pathlib.Path(root), "training", "training[0-9]*", "isbi2015")
    scans = []
    for folder in sorted(p for p in subjects.glob("training[0-9]*") if p.is_dir()):
        timepoints = sorted({int(m.group(1)) for f in folder.glob("*/*.nii*")
                             if (m := re.match(rf"{folder.name}_(\d+)_", f.name))})
        if not timepoints:
            raise LayoutError(f"Subject {folder.name}: no scans in {folder} (expected "
                              f"preprocessed/{folder.name}_01_flair_pp.nii and so on).")
        for timepoint in timepoints:
            files = _resolve(_isbi_files(folder, timepoint, ".nii"), MODALITIES + (rater,),
                             folder.name)
            scans.append(Scan(folder.name, f"{folder.name}_{timepoint:02d}",
                              {m: files[m] for m in MODALITIES}, files[rater]))
    if not scans:
        raise LayoutError(f"No ISBI 2015 subjects under {subjects}: expected trainingNN folders "
                          f"(see docs/data.md).")
    return scans


def msseg2016_scans(root, rater: str = "consensus") -> list[Scan]:
    """Every training subject of an MSSEG 2016 folder, sorted by centre and patient.

    Raises:
        LayoutError: no patient folders, or a patient lacks a modality or the rater's mask.
    """
    _check_rater("msseg2016", rater)
    subjects = _subjects_folder(pathlib.Path(root), "Training", "Center_*", "msseg2016")
    scans = []
    for folder in sorted(p for p in subjects.glob("Center_[0-9]*/Patient_[0-9]*") if p.is_dir()):
        center = int(folder.parent.name.removeprefix("Center_"))
        patient = int(folder.name.removeprefix("Patient_"))
        subject = f"center{center:02d}_patient{patient:02d}"
        files = _resolve(_msseg_files(folder, ".nii.gz"), MODALITIES + (rater,), subject)
        scans.append(Scan(subject, subject, {m: files[m] for m in MODALITIES}, files[rater]))
    if not scans:
        raise LayoutError(f"No MSSEG 2016 patients under {subjects}: expected "
                          f"Center_0X/Patient_0Y folders (see docs/data.md).")
    return scans


READERS = {"isbi2015": isbi2015_scans, "msseg2016": msseg2016_scans}


def find_scans(root, layout: str, rater: str | None = None) -> list[Scan]:
    """The scans of a dataset folder in ``layout`` (``"isbi2015"`` or ``"msseg2016"``).

    Args:
        root: The dataset folder (the one holding ``training/`` or ``Training/``).
        layout: Which dataset's layout.
        rater: Whose mask is the label: ``"mask1"``/``"mask2"`` (ISBI),
            ``"consensus"`` or ``"1"``-``"7"`` (MSSEG). Defaults to mask1 / consensus.

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
    return READERS[layout](root, rater or DEFAULT_RATER[layout])
