"""Test-set evaluation of a trained model, as the paper reports it, and its saved format.

``evaluate_fold`` runs every test volume through ``tfversky.inference.segment_on_grid`` (the
reference-grid stage that ``tfversky predict`` uses too, so the scores are those of the
masks ``predict`` writes), and scores it on the reference grid, as the paper scored its
registered volumes:

* per subject and pooled over all test voxels: DSC, sensitivity, specificity, F2, APR
  (``tfversky.metrics.PAPER_METRICS``), and lesion-wise LTPR, LFPR, lesion F1;
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
import pathlib

import numpy as np

from tfversky import inference, io, metrics, plan as plan_lib, plotting
from tfversky._files import atomic_path, atomic_write_text

RESULT_FILE = "evaluation.json"
COUNTS = ("tp", "fp", "fn", "tn")


def _scored(volume, ignore_index):
    """(truth, keep): lesion = label 1; ``keep`` leaves out the ``ignore_index`` voxels."""
    label = np.asarray(volume["label"])
    keep = np.ones(label.shape, bool) if ignore_index is None else label != ignore_index
    return label == 1, keep


def evaluate_fold(model, volumes, out, *, plan=None, ignore_index=None, progress=True,
                  total=None) -> dict:
    """Whole-volume inference on every test volume: metrics, NIfTI masks and figures.

    Args:
        model: Keras model with a plan (``tfversky.plan.attach``) or ``plan`` given.
        volumes: Iterable of dicts as ``tfversky.data.iterate_volumes`` yields them:
            ``image`` (D, H, W, M) on the reference grid, ``label`` (D, H, W) (1 = lesion),
            ``subject``, optional ``scan_id`` (names the outputs), and ``grid_affine``,
            ``affine``, ``shape`` to map the mask back onto the scan (optional: without them
            no NIfTI is written).
        out: Output folder (created).
        plan: The model's plan. Defaults to ``plan.read_plan(model)``; its ``threshold``,
            ``patch_size``, ``overlap`` and ``modalities`` (the overlays use FLAIR, else
            the first channel) apply.
        ignore_index: Label value left out of the scoring (e.g. 255). Defaults to None.
        progress: tqdm bar over the volumes. Defaults to True.
        total: The number of volumes, for the bar. Defaults to None.

    Returns:
        ``{"pooled": {metric: value, tp, fp, fn, tn, ltpr, lfpr, lesion_f1, ...},
        "subjects": [{"subject", "scan_id", "lesion_voxels", metrics...}]}`` (one row per
        scan, naming its subject), also written to ``out/evaluation.json``.

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
    threshold = model_plan.threshold
    out = pathlib.Path(out)
    evaluator = metrics.Evaluator(threshold)
    subjects, lesion_counts, curves = [], [], {}
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
        subject_evaluator = metrics.Evaluator(threshold)
        scores = subject_evaluator.update(truth[keep], lesion_prob[keep])
        evaluator.merge(subject_evaluator)
        predicted = (lesion_prob >= threshold) & keep
        lesions = metrics.lesion_metrics(truth, predicted)
        lesion_counts.append(lesions)
        subjects.append({"subject": subject, "scan_id": name, "lesion_voxels": int(truth.sum()),
                         **{k: scores[k] for k in metrics.PAPER_METRICS},
                         **{k: lesions[k] for k in ("ltpr", "lfpr", "lesion_f1")}})
        if all(k in volume for k in ("grid_affine", "affine", "shape")):
            # The records keep the scan's grid, not its header: the mask gets its affine.
            _, native, _ = inference.back_to_scan(lesion_prob, volume["grid_affine"],
                                                  volume["affine"], volume["shape"],
                                                  threshold=threshold)
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
    result = {"pooled": {**{k: pooled[k] for k in metrics.PAPER_METRICS + COUNTS},
                         **metrics.pool_lesion_counts(lesion_counts)},
              "subjects": subjects}
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
