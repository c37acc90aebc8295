"""tfversky.evaluation: what evaluate_fold scores and writes, and pooling its folders."""

import json

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
