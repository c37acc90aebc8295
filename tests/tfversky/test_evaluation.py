"""tfversky.evaluation: what evaluate_fold scores and writes, pooling its folders, and
scoring folders of masks (evaluate_folders) with its bad-input checks."""

import csv
import json
import math

import nibabel as nib
import numpy as np
import pytest

from tfversky import evaluation, inference, metrics, plan
from tfversky.models import unet3d


@pytest.fixture(scope="module")
def model():
    return plan.attach(unet3d(base_filters=2, depth=2),
                       plan.Plan(patch_size=8, threshold=0.5,
                                 loss={"name": "TverskyLoss", "alpha": 0.3, "beta": 0.7}))


def _volume(seed, subject, ignore=False):
    rng = np.random.default_rng(seed)
    label = np.zeros((8, 8, 8), np.uint8)
    label[2:5, 3:6, 2:6] = 1
    if ignore:
        label[6:] = 255
    image = (rng.normal(size=(8, 8, 8, 3)) + 2 * (label == 1)[..., None]).astype(np.float32)
    return {"image": image, "label": label, "subject": subject, "scan_id": subject,
            "grid_affine": np.diag([2.0, 2.0, 2.0, 1.0]), "affine": np.eye(4),
            "shape": np.array([16, 16, 16])}


def test_scores_are_those_of_segment_on_grid_without_ignored_voxels(model, tmp_path):
    volume = _volume(0, "s1", ignore=True)
    result = evaluation.evaluate_fold(model, [volume], tmp_path, ignore_index=255,
                                      progress=False)
    prob = inference.segment_on_grid(model, volume["image"])
    keep = volume["label"] != 255
    expected = metrics.evaluate(volume["label"][keep] == 1, prob[keep])
    pooled = result["pooled"]
    for name in metrics.PAPER_METRICS:
        assert pooled[name] == pytest.approx(expected[name]), name
    # 2 of 8 slices are `ignore`: left out of every count, not scored as background.
    assert sum(pooled[k] for k in evaluation.COUNTS) == 6 * 8 * 8
    assert result["subjects"][0]["lesion_voxels"] == int((volume["label"] == 1).sum())


def test_writes_one_format_that_loads_and_pools(model, tmp_path):
    folders = []
    for fold, subjects in enumerate((("a", "b"), ("c",))):
        folder = tmp_path / f"fold{fold}"
        evaluation.evaluate_fold(model, [_volume(k, s) for k, s in enumerate(subjects)],
                                 folder, progress=False)
        folders.append(folder)
    for name in ("evaluator.npz", "subject_curves.npz", "evaluation.json", "pr_curve.png"):
        assert (folders[0] / name).exists(), name
    assert sorted(p.name for p in (folders[0] / "overlays").iterdir()) == ["a.png", "b.png"]
    evaluator, subjects, curves = evaluation.pool_folds(folders)
    assert [s["subject"] for s in subjects] == ["a", "b", "c"] and sorted(curves) == ["a", "b",
                                                                                       "c"]
    assert int(evaluator.counts.sum()) == 3 * 8 ** 3
    saved = [json.loads((f / "evaluation.json").read_text())["pooled"] for f in folders]
    assert evaluator.counts.tolist() == [sum(p[k] for p in saved) for k in evaluation.COUNTS]


def test_masks_are_mapped_back_onto_the_scan(model, tmp_path):
    volume = _volume(0, "s1")
    evaluation.evaluate_fold(model, [volume], tmp_path, progress=False)
    mask = nib.load(tmp_path / "predictions" / "s1_lesions.nii.gz")
    assert mask.shape == (16, 16, 16) and np.allclose(mask.affine, np.eye(4))
    prob = inference.segment_on_grid(model, volume["image"])
    _, expected, _ = inference.back_to_scan(prob, volume["grid_affine"], volume["affine"],
                                            (16, 16, 16), threshold=0.5)
    assert np.array_equal(np.asarray(mask.dataobj), expected)


def test_no_volumes_is_an_error(model, tmp_path):
    with pytest.raises(ValueError, match="no test volumes"):
        evaluation.evaluate_fold(model, [], tmp_path, progress=False)


def test_rows_are_scans_that_name_their_subject(model, tmp_path):
    # ISBI 2015 style: one patient scanned twice. Rows are scans; the subject is the unit
    # that the statistics average over (a scan is not a subject).
    from tfversky import statistics

    volumes = [{**_volume(0, "p1"), "scan_id": "p1_t1"}, {**_volume(1, "p1"), "scan_id": "p1_t2"},
               {**_volume(2, "p2"), "scan_id": "p2_t1"}]
    result = evaluation.evaluate_fold(model, volumes, tmp_path, progress=False)
    rows = result["subjects"]
    assert [(r["subject"], r["scan_id"]) for r in rows] == [("p1", "p1_t1"), ("p1", "p1_t2"),
                                                           ("p2", "p2_t1")]
    assert statistics.units(rows) == "2 subjects (3 scans)"
    means = statistics.subject_means((r["subject"], r["dsc"]) for r in rows)
    assert sorted(means) == ["p1", "p2"]
    assert means["p1"] == pytest.approx((rows[0]["dsc"] + rows[1]["dsc"]) / 2)
    _, _, curves = evaluation.load_fold(tmp_path)
    assert sorted(curves) == ["p1_t1", "p1_t2", "p2_t1"]


# --- scoring folders of masks -------------------------------------------------------------

CASES_COLUMNS = ["case", "dsc", "sensitivity", "precision", "specificity", "f2", "hd95_mm",
                 "assd_mm", "nsd", "volume_reference_ml", "volume_predicted_ml",
                 "volume_difference_ml", "lesion_sensitivity", "lesion_precision", "lesion_f1",
                 "lesions_reference", "lesions_predicted", "ltpr", "lfpr"]
AFFINE = np.array([[0.9, 0, 0, -20.0], [0, 0.9, 0, 5.0], [0, 0, 3.0, 1.5], [0, 0, 0, 1]])


@pytest.fixture
def masks(lesion_pair):
    return lambda seed: lesion_pair(seed, (20, 18, 10), count=(2, 5), radius=(1.5, 4.0))


def _save(path, data, affine=AFFINE):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), affine), path)


@pytest.fixture
def nnunet_folders(tmp_path, masks):
    """labelsTs-like references and nnU-Net predictions (CASE.nii.gz), 3 cases, one of them
    without lesions and with a false positive."""
    arrays = {}
    for k, case in enumerate(("MS_001", "MS_002", "MS_003")):
        truth, prediction = masks(k)
        if case == "MS_003":
            truth[:] = False
        arrays[case] = truth, prediction
        _save(tmp_path / "truth" / f"{case}.nii.gz", truth.astype(np.uint8))
        _save(tmp_path / "pred" / f"{case}.nii.gz", prediction.astype(np.uint8))
    return tmp_path / "pred", tmp_path / "truth", arrays


def _read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_folder_scores_are_case_scores_on_each_references_grid(nnunet_folders, tmp_path):
    predictions, truth, arrays = nnunet_folders
    out = tmp_path / "scores"
    summary = evaluation.evaluate_folders(predictions, truth, out, progress=False)
    rows = _read_csv(out / "cases.csv")
    assert list(rows[0])[:len(CASES_COLUMNS)] == CASES_COLUMNS
    assert [r["case"] for r in rows] == ["MS_001", "MS_002", "MS_003"]
    for row in rows:
        expected, _ = metrics.case_scores(*arrays[row["case"]], (0.9, 0.9, 3.0))
        for key in CASES_COLUMNS[1:]:
            assert float(row[key]) == pytest.approx(expected[key], nan_ok=True), key
    empty = rows[2]
    assert math.isnan(float(empty["sensitivity"])) and float(empty["dsc"]) == 0.0
    assert int(empty["lesions_false_positive"]) == int(empty["lesions_predicted"]) > 0
    assert float(empty["volume_false_positive_mm3"]) > 0
    lesions = _read_csv(out / "lesions.csv")
    assert list(lesions[0]) == list(evaluation.LESION_COLUMNS)
    first = [r for r in lesions if r["case"] == "MS_001" and r["side"] == "reference"][0]
    _, case_lesions = metrics.case_scores(*arrays["MS_001"], (0.9, 0.9, 3.0))
    centroid = AFFINE @ np.append(case_lesions["centroid_voxel"][0], 1)
    assert len(lesions) == sum(len(metrics.case_scores(*arrays[c], (0.9, 0.9, 3.0))[1]["side"])
                               for c in arrays)
    assert {r["detected"] for r in lesions} == {"True", "False"}
    assert [float(first[k]) for k in ("centroid_x_mm", "centroid_y_mm", "centroid_z_mm")] == \
        pytest.approx(centroid[:3].tolist())
    saved = json.loads((out / "summary.json").read_text())
    assert saved["cases"] == 3 and saved["defined"]["sensitivity"] == 2
    assert saved["pooled"]["dsc"] == pytest.approx(summary["pooled"]["dsc"])
    assert set(saved) >= {"mean", "median", "pooled", "volume_correlation", "settings"}
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no partial files


def test_bids_names_probability_maps_and_label_maps(tmp_path, masks):
    truth, prediction = masks(5)
    labels = truth.astype(np.uint8) * 2  # a label map: lesion = 2
    _save(tmp_path / "bids" / "derivatives" / "lesions" / "sub-01" / "ses-02" / "anat" /
          "sub-01_ses-02_desc-lesion_mask.nii.gz", labels)
    probability = np.where(prediction, 0.8, 0.1).astype(np.float32)
    _save(tmp_path / "pred" / "sub-01_ses-02_FLAIR_prob.nii.gz", probability)
    out = tmp_path / "scores"
    with pytest.raises(evaluation.FolderError, match=r"values \{0, 2\}, not just 0/1: .*--label"):
        evaluation.evaluate_folders(tmp_path / "pred", tmp_path / "bids", out, progress=False)
    summary = evaluation.evaluate_folders(tmp_path / "pred", tmp_path / "bids", out, label=2,
                                          progress=False)
    expected, _ = metrics.case_scores(truth, prediction, (0.9, 0.9, 3.0))
    assert summary["mean"]["dsc"] == pytest.approx(expected["dsc"])
    assert _read_csv(out / "cases.csv")[0]["case"] == "sub-01_ses-02"
    with pytest.raises(evaluation.FolderError, match="--label 3: no reference holds"):
        evaluation.evaluate_folders(tmp_path / "pred", tmp_path / "bids", tmp_path / "x",
                                    label=3, progress=False)


def _bad_input(tmp_path, nnunet_folders, case):
    predictions, truth, arrays = nnunet_folders
    if case == "unmatched":
        (truth / "MS_002.nii.gz").rename(truth / "MS_009.nii.gz")
    elif case == "grid":
        shifted = AFFINE.copy()
        shifted[0, 3] += 1.0
        _save(predictions / "MS_002.nii.gz", arrays["MS_002"][1].astype(np.uint8), shifted)
    elif case == "nan":
        probability = np.full(arrays["MS_002"][1].shape, 0.2, np.float32)
        probability[0, 0, 0] = np.nan
        _save(predictions / "MS_002.nii.gz", probability)
    elif case == "empty":
        for path in predictions.iterdir():
            path.unlink()
    elif case == "twice":
        _save(truth / "sub" / "MS_002.nii", arrays["MS_002"][0].astype(np.uint8))
    elif case == "probability_truth":
        _save(truth / "MS_002.nii.gz", np.full(arrays["MS_002"][0].shape, 0.3, np.float32))
    return predictions, truth


@pytest.mark.parametrize("case, message", [
    ("unmatched", "unmatched cases: no reference for MS_002 (--predictions); no prediction for "
                  "MS_009 (--truth). Pass --allow-missing to score the 2 matched case(s) only"),
    ("grid", "case 'MS_002': the prediction"),
    ("nan", "holds NaN or Inf voxels"),
    ("empty", "holds no .nii/.nii.gz masks"),
    ("twice", "has 2 files for case 'MS_002'"),
    ("probability_truth", "the reference must be a mask (0/1) or a label map (--label)"),
])
def test_bad_input_is_refused_before_any_scoring(case, message, nnunet_folders, tmp_path):
    predictions, truth = _bad_input(tmp_path, nnunet_folders, case)
    out = tmp_path / "scores"
    with pytest.raises(evaluation.FolderError) as error:
        evaluation.evaluate_folders(predictions, truth, out, progress=False)
    assert message in str(error.value) and "\n" not in str(error.value)
    assert not out.exists()
    if case == "grid":  # both grids named
        assert "20x18x10 voxels of 0.9x0.9x3 mm at (-19,5,1.5)" in str(error.value)
        assert "(-20,5,1.5)" in str(error.value)


def test_allow_missing_scores_the_matched_cases_and_lists_the_rest(nnunet_folders, tmp_path):
    predictions, truth = _bad_input(tmp_path, nnunet_folders, "unmatched")
    summary = evaluation.evaluate_folders(predictions, truth, tmp_path / "scores",
                                          allow_missing=True, progress=False)
    assert summary["cases"] == 2
    assert summary["unmatched"] == {"predictions": ["MS_002"], "truth": ["MS_009"]}


def test_outputs_are_not_overwritten_without_overwrite(nnunet_folders, tmp_path):
    predictions, truth, _ = nnunet_folders
    out = tmp_path / "scores"
    out.mkdir()
    (out / "cases.csv").write_text("finished work")
    with pytest.raises(evaluation.FolderError, match="already holds cases.csv: .*--overwrite"):
        evaluation.evaluate_folders(predictions, truth, out, progress=False)
    assert (out / "cases.csv").read_text() == "finished work"
    evaluation.evaluate_folders(predictions, truth, out, overwrite=True, progress=False)
    assert len(_read_csv(out / "cases.csv")) == 3


def test_evaluate_fold_writes_the_same_files(model, tmp_path):
    evaluation.evaluate_fold(model, [_volume(0, "s1"), _volume(1, "s2")], tmp_path,
                             progress=False)
    rows = _read_csv(tmp_path / "cases.csv")
    assert [r["case"] for r in rows] == ["s1", "s2"] and list(rows[0])[:19] == CASES_COLUMNS
    assert json.loads((tmp_path / "summary.json").read_text())["cases"] == 2
    # Each subject row carries the new scores too (what a Table 1 script reads).
    subjects = json.loads((tmp_path / "evaluation.json").read_text())["subjects"]
    for subject, row in zip(subjects, rows):
        for key in evaluation.SUBJECT_SCORES:
            assert subject[key] == pytest.approx(float(row[key]), nan_ok=True), key
