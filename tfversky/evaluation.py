"""Test-set evaluation of a trained model, as the paper reports it, and its saved format.

``evaluate_fold`` runs every test volume through ``tfversky.inference.segment_on_grid`` (the
reference-grid stage that ``tfversky predict`` uses too, so the scores are those of the
masks ``predict`` writes), and scores it on the reference grid, as the paper scored its
registered volumes:

* per subject and pooled over all test voxels: DSC, sensitivity, specificity, F2, APR
  (``tfversky.metrics.PAPER_METRICS``), the any-overlap LTPR, LFPR and the MSSEG challenges'
  lesion F1 (``tfversky.detection``);
* every score of ``tfversky.metrics.case_scores`` (boundary distances, volumes, detection)
  per scan on the reference grid, written as ``cases.csv``, ``lesions.csv`` and
  ``summary.json`` by ``write_scores``, the files ``tfversky evaluate --predictions
  --truth`` writes for any folder of masks;
* at the model's operating point (its plan's ``threshold`` and ``min_lesion_mm3``, chosen on
  validation by ``tfversky train``, unless the caller overrides them), the masks being
  ``operating_point.lesion_mask``'s; the APR and the curves do not depend on it;
* precision-recall curves, pooled and per subject;
* voxels labelled ``ignore_index`` (nnU-Net's ``ignore`` label, e.g. 255) are left out of
  every count, not scored as background.

What it writes in ``out`` is one format a later run loads and pools (``load_fold``,
``pool_folds``): ``evaluator.npz`` (the pooled counts and APR histograms,
``tfversky.metrics.Evaluator.save``), ``subject_curves.npz`` (``SUBJECT/precision``,
``SUBJECT/recall``) and ``evaluation.json`` (the returned dict), plus the figures
(``pr_curve.png``, ``overlays/SUBJECT.png``) and the masks mapped back onto each scan
(``predictions/SUBJECT_lesions.nii.gz``, through ``inference.back_to_scan`` and
``io.save_like``).
"""

from __future__ import annotations

import json
import os
import pathlib

import numpy as np

from tfversky import (detection, inference, io, metrics, operating_point, plan as plan_lib,
                      plotting)
from tfversky._files import atomic_path, atomic_write_text, csv_text

RESULT_FILE = "evaluation.json"
COUNTS = metrics.COUNTS
# The case_scores each subject row of evaluation.json carries beside the paper's metrics.
SUBJECT_SCORES = ("ltpr", "lfpr", "lesion_sensitivity", "lesion_precision", "lesion_f1",
                  "hd95_mm", "assd_mm", "nsd", "volume_reference_ml", "volume_predicted_ml",
                  "volume_difference_ml")
# The lesion-wise scores evaluation.json pools: the challenges' detection and any-overlap.
_POOLED_LESION_SCORES = ("lesion_sensitivity", "lesion_precision", "lesion_f1",
                         "lesions_reference", "lesions_reference_detected", "lesions_predicted",
                         "lesions_predicted_detected", "ltpr", "lfpr")


def _scored(volume, ignore_index):
    """(truth, keep): lesion = label 1; ``keep`` leaves out the ``ignore_index`` voxels."""
    label = np.asarray(volume["label"])
    keep = np.ones(label.shape, bool) if ignore_index is None else label != ignore_index
    return label == 1, keep


def evaluate_fold(model, volumes, out, *, plan=None, threshold=None, min_lesion_mm3=None,
                  ignore_index=None, progress=True, total=None) -> dict:
    """Whole-volume inference on every test volume: metrics, NIfTI masks and figures.

    Args:
        model: Keras model with a plan (``tfversky.plan.attach``) or ``plan`` given.
        volumes: Iterable of dicts as ``tfversky.data.iterate_volumes`` yields them:
            ``image`` (D, H, W, M) on the reference grid, ``label`` (D, H, W) (1 = lesion),
            ``subject``, optional ``scan_id`` (names the outputs), and ``grid_affine``,
            ``affine``, ``shape`` to map the mask back onto the scan (optional: without them
            no NIfTI is written).
        out: Output folder (created).
        plan: The model's plan. Defaults to ``plan.read_plan(model)``; its operating point
            (``threshold``, ``min_lesion_mm3``), ``patch_size``, ``overlap`` and
            ``modalities`` (the overlays use FLAIR, else the first channel) apply.
        threshold, min_lesion_mm3: Override the plan's operating point (the masks are
            ``operating_point.lesion_mask``'s; the APR stays threshold-free). Default None.
        ignore_index: Label value left out of the scoring (e.g. 255). Defaults to None.
        progress: tqdm bar over the volumes. Defaults to True.
        total: The number of volumes, for the bar. Defaults to None.

    Returns:
        ``{"pooled": {metric: value, tp, fp, fn, tn, ltpr, lfpr, lesion_f1, ...},
        "subjects": [{"subject", "scan_id", "lesion_voxels", metrics...,
        SUBJECT_SCORES...}], "operating_point": {"threshold", "min_lesion_mm3", "from"}}``
        (one row per scan, naming its subject; ``from``: "plan" or "arguments"), also written to
        ``out/evaluation.json``; every score of ``metrics.case_scores`` goes to
        ``cases.csv``, ``lesions.csv`` and ``summary.json`` (``write_scores``), one row per
        scan.

    Raises:
        ValueError: no volumes, or a model that does not fit its plan.

    Example:

    >>> import tempfile
    >>> from tfversky.models import unet3d
    >>> model = plan_lib.attach(unet3d(base_filters=2, depth=2), plan_lib.Plan(patch_size=8))
    >>> label = np.zeros((8, 8, 8), np.uint8); label[2:5, 2:5, 2:5] = 1; label[0] = 255
    >>> image = np.random.default_rng(0).normal(size=(8, 8, 8, 3)).astype("float32")
    >>> result = evaluate_fold(model, [{"image": image, "label": label, "subject": "s1"}],
    ...                        tempfile.mkdtemp(), ignore_index=255, progress=False)
    >>> [(s["subject"], s["scan_id"]) for s in result["subjects"]]
    [('s1', 's1')]
    >>> sum(result["pooled"][k] for k in COUNTS)
    448
    """
    import tqdm

    model_plan = plan_lib.read_plan(model) if plan is None else plan
    # The plan's operating point unless given, resolved as `tfversky predict` resolves it.
    point = inference.operating_point(model_plan, threshold, min_lesion_mm3)
    threshold, min_lesion_mm3 = point["threshold"], point["min_lesion_mm3"]
    out = pathlib.Path(out)
    evaluator = metrics.Evaluator(threshold)
    subjects, curves, cases, lesions = [], {}, [], []
    modalities = tuple(model_plan.modalities)
    overlay = modalities.index("FLAIR") if "FLAIR" in modalities else 0
    for volume in tqdm.tqdm(volumes, desc="test", unit="subject", total=total,
                            disable=not progress):
        # A subject may have several scans (time points): rows are scans, each naming its
        # subject, the statistical unit (tfversky.statistics averages a subject's scans).
        subject = str(volume["subject"])
        name = str(volume.get("scan_id") or subject)
        lesion_prob = inference.segment_on_grid(model, volume["image"], model_plan)
        truth, keep = _scored(volume, ignore_index)
        grid_affine = volume.get("grid_affine", np.diag([*model_plan.grid.spacing, 1.0]))
        predicted = operating_point.lesion_mask(lesion_prob, threshold, min_lesion_mm3,
                                                voxel_spacing(grid_affine)) & keep
        subject_evaluator = metrics.Evaluator(threshold)
        scores = subject_evaluator.update(truth[keep], lesion_prob[keep], predicted[keep])
        evaluator.merge(subject_evaluator)
        case, case_lesions = metrics.case_scores(truth, predicted, voxel_spacing(grid_affine))
        cases.append({"case": name, **case})
        lesions.append(lesion_table(name, case_lesions, grid_affine))
        subjects.append({"subject": subject, "scan_id": name, "lesion_voxels": int(truth.sum()),
                         **{k: scores[k] for k in metrics.PAPER_METRICS},
                         **{k: case[k] for k in SUBJECT_SCORES}})
        if all(k in volume for k in ("grid_affine", "affine", "shape")):
            # The records keep the scan's grid, not its header: the mask gets its affine.
            _, native, _ = inference.back_to_scan(lesion_prob, volume["grid_affine"],
                                                  volume["affine"], volume["shape"],
                                                  threshold=threshold,
                                                  min_lesion_mm3=min_lesion_mm3)
            (out / "predictions").mkdir(parents=True, exist_ok=True)
            io.save_like(native, io.grid_image(volume["shape"], volume["affine"]),
                         out / "predictions" / f"{name}_lesions.nii.gz")
        plotting.plot_overlay(np.asarray(volume["image"])[..., overlay], truth, predicted,
                              out / "overlays" / f"{name}.png",
                              title=f"{name}: DSC {scores['dsc']:.3f}")
        precision, recall, _ = subject_evaluator.precision_recall_curve()
        curves[name] = (precision, recall, scores["apr"])
    if not subjects:
        raise ValueError("Invalid value for argument `volumes`: no test volumes to evaluate. "
                         "Check the split (e.g. --fold) holds subjects.")
    evaluator.save(out / "evaluator.npz")
    with atomic_path(out / "subject_curves.npz") as partial:
        np.savez_compressed(partial, **{
            f"{name}/{part}": values for name, (precision, recall, _) in curves.items()
            for part, values in (("precision", precision), ("recall", recall))})
    pooled = evaluator.result()
    precision, recall, _ = evaluator.precision_recall_curve()
    by_load = sorted(subjects, key=lambda s: s["lesion_voxels"])
    figure = {"all test data": (precision, recall, pooled["apr"])}
    for label, scan in (("highest load", by_load[-1]), ("lowest load", by_load[0])):
        figure[f"{label}: {scan['scan_id']}"] = curves[scan["scan_id"]]
    loss = model_plan.loss or {}
    # alpha weighs false positives, beta false negatives (Salehi et al. 2017).
    setting = f", alpha={loss['alpha']}, beta={loss['beta']}" if "alpha" in loss else ""
    plotting.plot_pr_curves(figure, out / "pr_curve.png", title=f"PR curves{setting}")
    summary = write_scores(out, cases, lesions, overwrite=True)
    result = {"pooled": {**{k: pooled[k] for k in metrics.PAPER_METRICS + COUNTS},
                         **{k: summary["pooled"][k] for k in _POOLED_LESION_SCORES}},
              "subjects": subjects,
              "operating_point": {"threshold": threshold, "min_lesion_mm3": min_lesion_mm3,
                                  "from": point["source"]}}
    atomic_write_text(out / RESULT_FILE, json.dumps(result, indent=2, default=float))
    return result


def load_fold(folder):
    """(evaluator, subjects, curves) of a folder ``evaluate_fold`` wrote.

    ``curves`` maps each scan to ``{"precision": array, "recall": array}``. The rows (one
    per scan, with its ``subject`` and ``scan_id``) come from ``results.json`` when the
    folder has one (a training run), else from ``evaluation.json``.

    Example:

    >>> import tempfile
    >>> from tfversky.models import unet3d
    >>> model = plan_lib.attach(unet3d(base_filters=2, depth=2), plan_lib.Plan(patch_size=8))
    >>> folder = tempfile.mkdtemp()
    >>> _ = evaluate_fold(model, [{"image": np.zeros((8, 8, 8, 3), "float32"),
    ...                            "label": np.zeros((8, 8, 8), "uint8"), "subject": "s1"}],
    ...                   folder, progress=False)
    >>> evaluator, subjects, curves = load_fold(folder)
    >>> int(evaluator.counts.sum()), [s["scan_id"] for s in subjects], sorted(curves["s1"])
    (512, ['s1'], ['precision', 'recall'])
    """
    folder = pathlib.Path(folder)
    evaluator = metrics.Evaluator.load(folder / "evaluator.npz")
    results = folder / "results.json"
    source = results if results.exists() else folder / RESULT_FILE
    subjects = json.loads(source.read_text())["subjects"]
    curves = {}
    with np.load(folder / "subject_curves.npz") as saved:
        for key in saved.files:
            name, part = key.rsplit("/", 1)
            curves.setdefault(name, {})[part] = saved[key]
    return evaluator, subjects, curves


def pool_folds(folders):
    """Pools folders of ``evaluate_fold`` (e.g. the folds of a cross-validation).

    Returns:
        (evaluator pooled over all folders, every folder's subjects, every subject's curves).
    """
    evaluator, subjects, curves = None, [], {}
    for folder in folders:
        fold_evaluator, fold_subjects, fold_curves = load_fold(folder)
        evaluator = fold_evaluator if evaluator is None else evaluator.merge(fold_evaluator)
        subjects += fold_subjects
        curves.update(fold_curves)
    return evaluator, subjects, curves


# --- Scoring folders of masks (``tfversky evaluate --predictions DIR --truth DIR``) ---------

CASES_FILE, LESIONS_FILE, SUMMARY_FILE = "cases.csv", "lesions.csv", "summary.json"
SCORE_FILES = (CASES_FILE, LESIONS_FILE, SUMMARY_FILE)
# Everything evaluate_fold writes besides them (and its figures and masks).
FOLD_FILES = (RESULT_FILE, "evaluator.npz", "subject_curves.npz") + SCORE_FILES
LESION_COLUMNS = ("case", "side", "lesion", "voxels", "volume_mm3", "centroid_x_mm",
                  "centroid_y_mm", "centroid_z_mm", "detected")
_NIFTI = (".nii", ".nii.gz")


class FolderError(ValueError):
    """Input folders that cannot be scored; the message is one line naming the flag, the
    file or folder and the fix."""


def case_name(file_name: str) -> str:
    """The case a mask file belongs to: BIDS names by their subject and session entities,
    any other name (nnU-Net's ``CASE.nii.gz``) by the name without its ending.

    Example:

    >>> case_name("sub-01_ses-02_space-FLAIR_desc-lesion_mask.nii.gz"), case_name("MS_003.nii")
    ('sub-01_ses-02', 'MS_003')
    """
    stem = file_name.removesuffix(".gz").removesuffix(".nii")
    if not stem.startswith("sub-"):
        return stem
    entities = dict(part.split("-", 1) for part in stem.split("_") if "-" in part)
    return f"sub-{entities['sub']}" + (f"_ses-{entities['ses']}" if "ses" in entities else "")


def find_masks(folder, flag: str) -> dict:
    """``{case: path}`` of the NIfTI masks under ``folder`` (searched recursively, for BIDS).

    Raises:
        FolderError: no such folder, no mask in it, or two files of one case.
    """
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        raise FolderError(f"{flag} {str(folder)!r} is not a folder")
    found = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name.endswith(_NIFTI) and not path.name.startswith("."):
            found.setdefault(case_name(path.name), []).append(path)
    if not found:
        raise FolderError(f"{flag} {str(folder)!r} holds no .nii/.nii.gz masks: point it at "
                          f"the folder of masks (CASE.nii.gz or BIDS sub-*_..._mask.nii.gz)")
    for case, paths in found.items():
        if len(paths) > 1:
            raise FolderError(
                f"{flag} {str(folder)!r} has {len(paths)} files for case {case!r} "
                f"({', '.join(str(p.relative_to(folder)) for p in paths[:3])}): keep one mask "
                f"per case in the folder (e.g. point it at the masks' derivatives folder)")
    return {case: paths[0] for case, paths in found.items()}


def _listed(names, limit=5):
    names = sorted(names)
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit
                                       else "")


def match_cases(predictions: dict, truth: dict, allow_missing: bool = False):
    """``(pairs, unmatched)``: ``{case: (prediction, reference)}`` of the cases in both, and
    ``{"predictions": [...], "truth": [...]}`` of those in one folder only.

    Raises:
        FolderError: unmatched cases without ``allow_missing``, or no case in both.
    """
    unmatched = {"predictions": sorted(set(predictions) - set(truth)),
                 "truth": sorted(set(truth) - set(predictions))}
    pairs = {case: (predictions[case], truth[case]) for case in sorted(truth)
             if case in predictions}
    if not pairs:
        raise FolderError(f"no case is in both folders: --predictions has "
                          f"{_listed(predictions)}; --truth has {_listed(truth)}. Name masks "
                          f"by case (CASE.nii.gz or BIDS sub-X_ses-Y_...)")
    if not allow_missing and (unmatched["predictions"] or unmatched["truth"]):
        parts = [f"no reference for {_listed(unmatched['predictions'])} (--predictions)"
                 if unmatched["predictions"] else "",
                 f"no prediction for {_listed(unmatched['truth'])} (--truth)"
                 if unmatched["truth"] else ""]
        raise FolderError(f"unmatched cases: {'; '.join(p for p in parts if p)}. Pass "
                          f"--allow-missing to score the {len(pairs)} matched case(s) only")
    return pairs, unmatched


def read_mask(path, flag: str, *, label: int | None = None, threshold: float = 0.5,
              probabilities: bool = False):
    """``(mask, image)``: one file as a bool lesion mask, every value checked.

    A mask holds 0 and 1; a label map holds integers, the lesion being ``label``; with
    ``probabilities``, a file of values in [0, 1] that are not all 0/1 is a probability
    map, lesion where ``>= threshold``.

    Raises:
        FolderError: naming the file and the fix: unreadable, not 3D, NaN/Inf, values
            other than 0/1 without ``label``, a probability map where one is not allowed.
    """
    try:
        data, image = io.read_volume(path)
    except io.ScanError as err:
        raise FolderError(f"{flag}: {err}") from None
    if not np.isfinite(data).all():
        raise FolderError(f"{flag} file {str(path)!r} holds NaN or Inf voxels: a mask or "
                          f"probability map must be finite; fix the file")
    integral = np.issubdtype(data.dtype, np.integer) or np.array_equal(data, np.round(data))
    if not integral:
        if not probabilities:
            raise FolderError(f"{flag} file {str(path)!r} holds non-integer values: the "
                              f"reference must be a mask (0/1) or a label map (--label)")
        if data.min() < 0 or data.max() > 1:
            raise FolderError(f"{flag} file {str(path)!r} holds values in [{data.min():g}, "
                              f"{data.max():g}]: a probability map must lie in [0, 1]")
        return data >= threshold, image
    if label is not None:
        return data == label, image
    values = np.unique(data)
    if not np.isin(values, (0, 1)).all():
        raise FolderError(f"{flag} file {str(path)!r} holds values {_values(values)}, not "
                          f"just 0/1: for a label map pass --label VALUE (the lesion's value)")
    return data == 1, image


def _values(values):
    shown = ", ".join(f"{v:g}" for v in values[:6])
    return f"{{{shown}{', ...' if values.size > 6 else ''}}}"


def voxel_spacing(affine) -> np.ndarray:
    """The voxel size (mm) along the array axes of a grid with this affine.

    Example:

    >>> voxel_spacing(np.diag([0.9, 0.9, 3.0, 1.0])).tolist()
    [0.9, 0.9, 3.0]
    """
    return np.linalg.norm(np.asarray(affine, float)[:3, :3], axis=0)


def _grid(image):
    spacing = "x".join(f"{s:g}" for s in voxel_spacing(image.affine))
    origin = ",".join(f"{v:g}" for v in np.asarray(image.affine)[:3, 3])
    return f"{'x'.join(map(str, image.shape[:3]))} voxels of {spacing} mm at ({origin})"


def check_pairs(pairs: dict, *, label: int | None = None, threshold: float = 0.5) -> None:
    """Reads every pair once and checks it before any scoring: readable 3D masks, values
    (see ``read_mask``), the prediction on the reference's grid, ``label`` present.

    Raises:
        FolderError: the first problem found, in one line naming the files.
    """
    import tqdm

    label_seen = label is None
    for case, (prediction, reference) in tqdm.tqdm(pairs.items(), desc="check", unit="case",
                                                   disable=len(pairs) < 20):
        truth, truth_image = read_mask(reference, "--truth", label=label)
        _, predicted_image = read_mask(prediction, "--predictions", label=label,
                                       threshold=threshold, probabilities=True)
        if not io.same_grid(truth_image.shape, truth_image.affine, predicted_image.shape,
                            predicted_image.affine):
            raise FolderError(
                f"case {case!r}: the prediction {str(prediction)!r} is on another grid "
                f"({_grid(predicted_image)}) than its reference {str(reference)!r} "
                f"({_grid(truth_image)}): resample the prediction onto the reference's grid "
                f"(nearest neighbour) first")
        label_seen = label_seen or bool(truth.any())
    if not label_seen:
        raise FolderError(f"--label {label}: no reference holds that value; check which "
                          f"value marks the lesions")


def score_pairs(pairs: dict, *, label: int | None = None, threshold: float = 0.5,
                tolerance_mm: float = 1.0, progress: bool = True):
    """``(cases, lesions)``: ``metrics.case_scores`` of every pair (checked first with
    ``check_pairs``), on the reference's grid, and each case's ``lesion_table``.

    Example:

    >>> import nibabel as nib, tempfile
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> mask = np.zeros((8, 8, 8), np.uint8); mask[2:5, 2:5, 2:5] = 1
    >>> nib.save(nib.Nifti1Image(mask, np.diag([1.0, 1.0, 2.0, 1.0])), folder / "a.nii.gz")
    >>> cases, lesions = score_pairs({"a": (folder / "a.nii.gz", folder / "a.nii.gz")},
    ...                              progress=False)
    >>> cases[0]["case"], cases[0]["dsc"], cases[0]["volume_reference_ml"], len(lesions[0]["side"])
    ('a', 1.0, 0.054, 2)
    """
    import tqdm

    check_pairs(pairs, label=label, threshold=threshold)
    cases, lesions = [], []
    for case, (prediction, reference) in tqdm.tqdm(pairs.items(), desc="score", unit="case",
                                                   disable=not progress):
        truth, image = read_mask(reference, "--truth", label=label)
        predicted, _ = read_mask(prediction, "--predictions", label=label,
                                 threshold=threshold, probabilities=True)
        scores, case_lesions = metrics.case_scores(truth, predicted, voxel_spacing(image.affine),
                                                   tolerance_mm=tolerance_mm)
        cases.append({"case": case, **scores})
        lesions.append(lesion_table(case, case_lesions, image.affine))
    return cases, lesions


def lesion_table(case: str, lesions: dict, affine) -> dict:
    """``metrics.case_scores``' lesions as ``LESION_COLUMNS`` (NumPy columns), the centroids
    in world mm (the grid's affine applied to the voxel centroid)."""
    world = detection.to_world(lesions["centroid_voxel"], affine)
    return {"case": np.full(len(world), case), "side": lesions["side"],
            "lesion": lesions["lesion"], "voxels": lesions["voxels"],
            "volume_mm3": lesions["volume_mm3"], "centroid_x_mm": world[:, 0],
            "centroid_y_mm": world[:, 1], "centroid_z_mm": world[:, 2],
            "detected": lesions["detected"]}


def check_outputs(out, overwrite: bool = False, names=SCORE_FILES) -> None:
    """Refuses to write over ``names`` (default ``SCORE_FILES``) already in ``out`` unless
    ``overwrite``.

    Raises:
        FolderError: naming the files found and ``--overwrite``.
    """
    out = pathlib.Path(out)
    if out.exists() and not out.is_dir():
        raise FolderError(f"--out {str(out)!r} is a file, not a folder")
    existing = [name for name in names if (out / name).exists()]
    if existing and not overwrite:
        raise FolderError(f"--out {str(out)!r} already holds {', '.join(existing)}: choose "
                          f"another folder or pass --overwrite")


def write_scores(out, cases: list, lesions: list, *, overwrite: bool = False,
                 details: dict | None = None) -> dict:
    """Writes ``cases.csv``, ``lesions.csv`` and ``summary.json`` into ``out``, each
    atomically (a temporary file in ``out``, then renamed); returns the summary.

    Args:
        out: Output folder (created).
        cases: ``{"case": name, **metrics.case_scores(...)[0]}`` rows.
        lesions: ``lesion_table`` tables, one per case.
        overwrite: Replace these files if ``out`` holds them. Defaults to False.
        details: More entries for ``summary.json`` (e.g. the settings). Defaults to None.

    Returns:
        ``metrics.summarize_cases(cases)`` plus ``details``, as written.

    Raises:
        FolderError: the files exist and not ``overwrite``.
    """
    check_outputs(out, overwrite)
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {**metrics.summarize_cases(cases), **(details or {})}
    columns = ("case",) + metrics.CASE_COLUMNS + metrics.CASE_EXTRAS
    atomic_write_text(out / CASES_FILE, csv_text(
        columns, [{k: [case[k]] for k in columns} for case in cases]))
    atomic_write_text(out / LESIONS_FILE, csv_text(LESION_COLUMNS, lesions))
    atomic_write_text(out / SUMMARY_FILE, json.dumps(summary, indent=2, default=float))
    return summary


def evaluate_folders(predictions, truth, out, *, allow_missing: bool = False,
                     label: int | None = None, threshold: float = 0.5,
                     tolerance_mm: float = 1.0, overwrite: bool = False,
                     progress: bool = True) -> dict:
    """Scores a folder of predicted masks against a folder of references, as
    ``tfversky evaluate --predictions DIR --truth DIR --out DIR`` does.

    Cases are matched by name (``case_name``: nnU-Net's ``CASE.nii.gz``, BIDS
    ``sub-X[_ses-Y]_...``) and scored on the reference's grid. Everything is checked before
    any case is scored: the folders, the matching, every file's values and grid, the outputs.

    Args:
        predictions: Folder of predicted masks, label maps or lesion probability maps.
        truth: Folder of reference masks or label maps.
        out: Output folder for ``cases.csv``, ``lesions.csv`` and ``summary.json``.
        allow_missing: Score the matched cases when some have no partner (they are listed
            in ``summary.json``). Defaults to False (an error).
        label: The lesion's value in label maps. Defaults to None (masks of 0/1).
        threshold: Lesion where a probability map is ``>= threshold``. Defaults to 0.5.
        tolerance_mm: The surface Dice's tolerance, mm. Defaults to 1.0.
        overwrite: Replace existing output files. Defaults to False.
        progress: tqdm bar over the cases. Defaults to True.

    Returns:
        The summary written to ``summary.json``.

    Raises:
        FolderError: one line naming what is wrong and the fix (see ``find_masks``,
            ``match_cases``, ``read_mask``, ``check_pairs``, ``check_outputs``).
    """
    resolved = pathlib.Path(out).resolve()
    for folder, flag in ((predictions, "--predictions"), (truth, "--truth")):
        inputs = pathlib.Path(folder).resolve()
        if resolved == inputs or inputs in resolved.parents:  # the outputs stay out of inputs
            raise FolderError(f"--out {str(out)!r} lies in {flag} {str(folder)!r}, an input "
                              f"folder: give the scores a folder of their own")
    check_outputs(out, overwrite)
    pairs, unmatched = match_cases(find_masks(predictions, "--predictions"),
                                   find_masks(truth, "--truth"), allow_missing)
    cases, lesions = score_pairs(pairs, label=label, threshold=threshold,
                                 tolerance_mm=tolerance_mm, progress=progress)
    details = {"predictions": str(predictions), "truth": str(truth), "unmatched": unmatched,
               "settings": {"label": label, "threshold": threshold, "tolerance_mm": tolerance_mm,
                            "detection": {"min_lesion_mm3": detection.MIN_LESION_MM3,
                                          "alpha": detection.ALPHA, "beta": detection.BETA,
                                          "gamma": detection.GAMMA, "connectivity": 6}}}
    return write_scores(out, cases, lesions, overwrite=overwrite, details=details)
