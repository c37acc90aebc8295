"""The operating point (threshold, minimum lesion volume) chosen on validation subjects,
carried by the plan, and applied by ``evaluate`` (tfversky.operating_point)."""

import numpy as np
import pytest

from tfversky import evaluation, inference, operating_point, plan as plan_lib, training
from tfversky.preprocessing import ReferenceGrid

SPACING = (1.0, 1.0, 1.0)
SIZE = 32


def _subject(name, faint=0.45, speck=0.9, lesions=12):
    """``lesions`` 2x2x2 lesions (8 mm^3), every other one faint (p = ``faint``, missed at
    0.5), and as many 4-voxel false-positive specks (p = ``speck``): the best operating
    point on it is a threshold under ``faint`` and a minimum volume between 4 and 8 mm^3."""
    label = np.zeros((SIZE,) * 3, np.uint8)
    prob = np.zeros((SIZE,) * 3, np.float32)
    for k in range(lesions):
        x, y = 2 + 5 * (k % 6), 2 + 5 * (k // 6)
        label[x:x + 2, y:y + 2, 4:6] = 1
        prob[x:x + 2, y:y + 2, 4:6] = faint if k % 2 else 0.9
        prob[x:x + 2, y:y + 1, 20:22] = speck  # 4 voxels, far from every lesion
    return {"probabilities": prob, "label": label, "subject": name}


def test_lesion_mask_thresholds_then_drops_small_lesions():
    volume = _subject("a")
    assert operating_point.lesion_mask(volume["probabilities"], 0.5, 0, SPACING).sum() == \
        6 * 8 + 12 * 4
    assert operating_point.lesion_mask(volume["probabilities"], 0.4, 5, SPACING).sum() == \
        12 * 8


@pytest.mark.parametrize("criterion", operating_point.CRITERIA)
def test_each_criterion_chooses_the_point_that_recovers_faint_lesions_and_drops_specks(
        criterion):
    volumes = [_subject("a"), _subject("b")]
    chosen = operating_point.choose(volumes, criterion, SPACING)
    # Of the thresholds under 0.45 that all score 1, the nearest to 0.5; specks of 4 mm^3
    # dropped by the smallest minimum above them.
    assert (chosen["threshold"], chosen["min_lesion_mm3"]) == (0.4, 5.0)
    record = chosen["operating_point"]
    assert record["criterion"] == criterion and record["value"] == pytest.approx(1.0)
    assert record["subjects"] == 2 and record["lesions"] == 24
    assert record["baseline"] == [0.5, 0.0] and record["baseline_value"] < 0.8
    grid = record["grid"]
    assert grid["thresholds"] == list(operating_point.THRESHOLDS)
    assert grid["min_lesion_mm3"] == list(operating_point.MIN_LESION_MM3)
    assert np.shape(grid["values"]) == (7, 5)
    if criterion == "dsc":  # 48 of 96 lesion voxels found, 48 speck voxels: 96 / 192
        assert record["baseline_value"] == pytest.approx(2 * 96 / (2 * 96 + 96 + 96))


def test_too_little_validation_data_keeps_the_baseline_and_says_why():
    one = operating_point.choose([_subject("a", lesions=24)], "lesion_f1", SPACING)
    assert (one["threshold"], one["min_lesion_mm3"]) == (0.5, 0.0)
    assert one["operating_point"]["reason"] == \
        "too little validation data: 1 subject(s) (fewer than 2)"
    few = operating_point.choose([_subject("a", lesions=4), _subject("b", lesions=4)], "dsc",
                                 SPACING, baseline=(0.3, 0.0))
    assert (few["threshold"], few["min_lesion_mm3"]) == (0.3, 0.0)
    assert few["operating_point"]["reason"] == \
        "too little validation data: 8 lesion(s) (fewer than 20)"
    assert few["operating_point"]["value"] is None


def test_a_point_only_as_good_as_the_baseline_keeps_it():
    clean = [_subject("a", faint=0.9, speck=0.0), _subject("b", faint=0.9, speck=0.0)]
    chosen = operating_point.choose(clean, "f2", SPACING)
    assert (chosen["threshold"], chosen["min_lesion_mm3"]) == (0.5, 0.0)
    assert chosen["operating_point"]["value"] == chosen["operating_point"]["baseline_value"] \
        == 1.0
    assert "no grid point beats the baseline" in chosen["operating_point"]["reason"]


def test_ignored_voxels_are_not_false_positives():
    volumes = [_subject("a", faint=0.9, speck=0.0), _subject("b", faint=0.9, speck=0.0)]
    for volume in volumes:
        volume["label"][20:24, 20:24, 20:24] = 255
        volume["probabilities"][20:24, 20:24, 20:24] = 0.9
    chosen = operating_point.choose(volumes, "dsc", SPACING, ignore_index=255)
    assert chosen["operating_point"]["baseline_value"] == 1.0


@pytest.mark.parametrize("kwargs, match", [
    ({"criterion": "recall"}, r"`criterion`.*dsc, f2, lesion_f1.*criterion='recall'"),
    ({"thresholds": (0.5, 1.0)}, r"`thresholds`.*\(0, 1\)"),
    ({"thresholds": (0.0,)}, r"`thresholds`.*\(0, 1\)"),
    ({"min_lesion_mm3": (-1,)}, r"`min_lesion_mm3`.*>= 0"),
])
def test_bad_arguments(kwargs, match):
    arguments = {"criterion": "dsc", **kwargs}
    criterion = arguments.pop("criterion")
    with pytest.raises(ValueError, match=match):
        operating_point.choose([_subject("a")], criterion, SPACING, **arguments)


def test_the_chosen_point_rides_in_the_plan_and_evaluate_applies_it(tmp_path, monkeypatch):
    from tfversky.models import unet3d

    volumes = [_subject("a"), _subject("b")]
    chosen = operating_point.choose(volumes, "lesion_f1", SPACING)
    grid = ReferenceGrid((SIZE,) * 3, SPACING)
    model = plan_lib.attach(unet3d(base_filters=2, depth=2),
                            plan_lib.Plan(grid=grid, patch_size=8, **chosen))
    model.save(tmp_path / "model.keras")
    loaded = plan_lib.read_plan(tmp_path / "model.keras")
    assert (loaded.threshold, loaded.min_lesion_mm3) == (0.4, 5.0)
    assert loaded.operating_point == chosen["operating_point"]

    # The network's probabilities are scripted: channel 0 of the image holds them.
    monkeypatch.setattr(inference, "segment_on_grid",
                        lambda model, image, plan, **kwargs: image[..., 0])
    test = [{"image": np.repeat(v["probabilities"][..., None], 3, -1), "label": v["label"],
             "subject": v["subject"]} for v in volumes]
    result = evaluation.evaluate_fold(model, test, tmp_path / "plan", plan=loaded,
                                      progress=False)
    apr = result["pooled"]["apr"]
    point = result["operating_point"]
    assert (point["threshold"], point["min_lesion_mm3"]) == (0.4, 5.0)
    assert "threshold 0.4 from the plan (chosen by" in point["from"]
    assert result["pooled"]["dsc"] == 1.0 and result["pooled"]["lesion_f1"] == 1.0
    # Flags override it: the paper's 0.5 and every lesion kept.
    result = evaluation.evaluate_fold(model, test, tmp_path / "flags", plan=loaded,
                                      threshold=0.5, min_lesion_mm3=0.0, progress=False)
    assert result["operating_point"]["from"] == "threshold 0.5 given, min lesion 0 mm^3 given"
    assert result["pooled"]["dsc"] == pytest.approx(2 * 96 / (2 * 96 + 96 + 96))
    assert result["pooled"]["apr"] == apr  # the APR does not depend on the operating point


def test_the_rule_of_enough_data_is_the_trainings():
    volumes = [_subject("a", lesions=training.MIN_VALIDATION_LESIONS // 2),
               _subject("b", lesions=training.MIN_VALIDATION_LESIONS // 2)]
    assert "reason" not in operating_point.choose(volumes, "dsc", SPACING)["operating_point"]
