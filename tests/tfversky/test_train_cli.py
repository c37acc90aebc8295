"""``tfversky train`` / ``tfversky evaluate`` (tfversky.train_cli) on ``synthetic_tiny``:
help, the bad-input lines, model selection recorded in results.json, TensorBoard images,
and evaluate scoring exactly what train scored. The distributed and kill-and-resume runs
of the same code are in tests/examples/test_train_ms.py."""

import argparse
import json
import pathlib

import keras
import numpy as np
import pytest

import tfds_ms
from tfversky import cli, plan, training
from tfversky.models import unet3d
from tfversky.preprocessing import ReferenceGrid

TINY = ["--dataset", "ms_lesions/synthetic_tiny", "--patch-size", "16", "--depth", "3",
        "--base-filters", "4", "--verbose", "0"]
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.mark.parametrize("command, flags", [
    ("train", ("--val-subjects", "--val-every", "--monitor", "--patience", "--augment",
               "--augment-prob", "--augment-rotation", "--dataset", "--alpha", "--beta",
               "--strategy", "--out", "--overwrite")),
    ("evaluate", ("--model", "--dataset", "--split", "--out", "--data-dir", "--modalities")),
])
def test_help(command, flags, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in flags:
        assert flag in text, flag


def test_train_validates_and_augments_by_default():
    from tfversky import train_cli

    args = train_cli.build_parser().parse_args([])
    assert (args.val_subjects, args.augment, args.monitor) == (0.1, "default", "val_dsc")
    assert train_cli.augment_config(args) is not None
    assert (args.select, args.operating_point) == ("auto", train_cli.DEFAULT_OPERATING_POINT)


def test_the_flags_name_the_rules_of_the_modules():
    """train_cli, training and operating_point take their rules from one TF-free module."""
    from tfversky import operating_point, train_cli, validation_rules

    assert train_cli.SELECTION_RULES is training.SELECTION_RULES is \
        validation_rules.SELECTION_RULES
    assert train_cli.OPERATING_POINT_CRITERIA is operating_point.CRITERIA
    assert train_cli.build_parser().parse_args([]).ema_alpha == training.EMA_ALPHA
    parser = train_cli.build_parser()
    select = next(a for a in parser._actions if a.dest == "select")
    assert select.choices == ("auto",) + validation_rules.SELECTION_RULES


@pytest.mark.parametrize("schedule, expected", [
    # The paper's: x0.9 after every 1000 steps, whatever the run's length.
    ("step", {0: 1e-3, 999: 1e-3, 1000: 9e-4, 2500: 8.1e-4}),
    # nnU-Net's: lr (1 - t/T)^0.9 over T = 4 x 250 steps, 0 at the end.
    ("poly", {0: 1e-3, 500: 1e-3 * 0.5 ** 0.9, 1000: 0.0}),
])
def test_learning_rate_schedules(schedule, expected):
    from tfversky import train_cli

    args = train_cli.build_parser().parse_args(
        ["--lr", "1e-3", "--lr-schedule", schedule, "--epochs", "4", "--steps-per-epoch", "250"])
    rate = train_cli.learning_rate_schedule(args)
    for step, value in expected.items():
        assert float(rate(step)) == pytest.approx(value, rel=1e-5, abs=1e-12), step


def test_folds_come_from_the_dataset_config():
    from tfversky import train_cli

    args = train_cli.build_parser().parse_args(
        ["--dataset", "ms_lesions/synthetic_realistic_by_centre_lowres", "--fold", "3"])
    assert train_cli.resolve_folds(args) == ("fold0+fold1+fold2", "fold3")  # one per centre
    assert args.num_folds == 4


def _one_line_error(argv, capsys):
    try:
        code = cli.main(argv)
    except SystemExit as exit_:  # argparse applied the flag's rule (tfversky.arguments)
        code = exit_.code
    lines = capsys.readouterr().err.splitlines()
    assert code == 2 and len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("extra, message", [
    (["--monitor", "val_loss"], "--monitor 'val_loss' is not a logged metric: use one of"),
    (["--augment-prob", "rotation=1.5"], "--augment-prob rotation=1.5: a probability must be"),
    (["--augment-prob", "noise=-0.1"], "--augment-prob noise=-0.1: a probability must be"),
    (["--augment-prob", "twist=0.5"], "unknown transform 'twist'"),
    (["--augment-rotation", "-5"], "argument --augment-rotation: expected a finite number >= 0, "
                                   "got '-5'"),
    (["--patience", "0"], "argument --patience: expected an int >= 1, got '0'"),
    (["--val-every", "0"], "argument --val-every: expected an int >= 1, got '0'"),
    (["--fold", "5"], "--fold 5: ms_lesions/synthetic_tiny has 2 folds; use --fold 0 to 1"),
    (["--num-folds", "3"], "--num-folds 3: ms_lesions/synthetic_tiny has 2 folds of its own"),
])
def test_bad_flags_are_one_line_before_any_work(extra, message, capsys, tmp_path):
    out = tmp_path / "run"
    line = _one_line_error(["train", *TINY, "--data-dir", str(tmp_path), "--out", str(out),
                            *extra], capsys)
    assert message in line, line
    assert not out.exists()  # nothing written


# Issue 20, item 7: each flag's range, and the combinations, refused before any data is read.
@pytest.mark.parametrize("extra, message", [
    (["--threshold", "1.0"], "argument --threshold: expected a number in (0, 1), got '1.0'"),
    (["--overlap", "1.0"], "argument --overlap: expected a number in [0, 1), got '1.0'"),
    (["--patch-size", "0"], "argument --patch-size: expected a positive int or three of them "
                            "(D, H, W), got '0'"),
    (["--lesion-fraction", "1.5"], "argument --lesion-fraction: expected a number in [0, 1], "
                                   "got '1.5'"),
    (["--alpha", "-1"], "argument --alpha: expected a finite number >= 0 (alpha weighs false "
                        "positives, beta false negatives), got '-1'"),
    (["--base-filters", "0"], "argument --base-filters: expected an int >= 1, got '0'"),
    (["--lr=-1e-3"], "argument --lr: expected a finite number > 0, got '-1e-3'"),
    (["--lr", "nan"], "argument --lr: expected a finite number > 0, got 'nan'"),
    (["--gamma", "0"], "argument --gamma: expected a finite number > 0, got '0'"),
    (["--epochs", "1.5"], "argument --epochs: expected an int >= 1, got '1.5'"),
    (["--seed", "-1"], "argument --seed: expected an int in [0, 4294967295], got '-1'"),
    (["--val-subjects", "1.5"], "argument --val-subjects: expected 0 (no validation), a count "
                                ">= 1 or a fraction in (0, 1)"),
    (["--num-folds", "1"], "argument --num-folds: expected an int >= 2, got '1'"),
    (["--fold", "-1"], "argument --fold: expected an int >= 0, got '-1'"),
    (["--subject-pattern", "("], "argument --subject-pattern: expected a regular expression "
                                 "(missing ), unterminated subpattern at position 0), got '('"),
    (["--lr", "-1e-3"], "argument --lr: expected a finite number > 0, got '-1e-3'"),
    # Combinations: the network halves a patch depth - 1 times.
    (["--patch-size", "100", "--depth", "4"],
     "--patch-size 100: expected sizes that are each a multiple of 8 (2^(depth-1) for "
     "--depth 4): 96 or 104 for 100"),
    (["--patch-size", "18"], "--patch-size 18: expected sizes that are each a multiple of 4 "
                             "(2^(depth-1) for --depth 3): 16 or 20 for 18"),
    (["--alpha", "0", "--beta", "0"], "--beta 0.0: expected a number > 0 when alpha is 0"),
    # Selection and the operating point (issue 22).
    (["--select", "best", "--val-subjects", "0"],
     "--select best chooses the epoch on validation, and --val-subjects 0 holds out none"),
    (["--select", "ema", "--val-subjects", "0"], "--select ema chooses the epoch"),
    (["--select", "first"], "argument --select: invalid choice: 'first' (choose from "
                            "'auto', 'last', 'best', 'ema')"),
    (["--ema-alpha", "1"], "argument --ema-alpha: expected a number in [0, 1), got '1'"),
    (["--operating-point", "recall"], "argument --operating-point: invalid choice: 'recall' "
                                      "(choose from 'none', 'dsc', 'f2', 'lesion_f1')"),
])
def test_every_flag_has_a_range_checked_before_any_work(extra, message, capsys, tmp_path):
    data_dir, out = tmp_path / "data", tmp_path / "run"
    line = _one_line_error(["train", *TINY, "--data-dir", str(data_dir), "--out", str(out),
                            *extra], capsys)
    assert message in line, line
    assert not data_dir.exists() and not out.exists()  # no dataset built, nothing written


@pytest.mark.parametrize("extra, message", [
    (["--grid-spacing", "1,1,-1"], "--grid-spacing '1,1,-1': expected three positive sizes"),
    (["--modalities", "FLAIR,FLAIR"], "FLAIR is named more than once"),
])
def test_dataset_flags_are_checked_before_the_run_starts(extra, message, capsys, tmp_path):
    nnunet = pathlib.Path(__file__).parents[1] / "tfds_ms" / "dummy_data" / "nnunet"
    line = _one_line_error(["train", "--dataset", "ms_lesions/nnunet", "--manual-dir",
                            str(nnunet), "--data-dir", str(tmp_path / "data"), "--out",
                            str(tmp_path / "run"), *extra], capsys)
    assert message in line, line
    assert not (tmp_path / "run").exists()  # refused before the run made its folder


def test_a_namespace_made_in_python_is_checked_by_the_same_rules(tmp_path):
    from tfversky import train_cli
    from tfversky.arguments import UsageError

    args = train_cli.build_parser().parse_args(["--data-dir", str(tmp_path / "data")])
    for name, value, message in [("threshold", 1.0, "--threshold 1.0: expected a number in "
                                                    "(0, 1)"),
                                 ("lr", -1e-3, "--lr -0.001: expected a finite number > 0"),
                                 ("patch_size", True, "--patch-size True: expected a positive "
                                                      "int or three of them")]:
        bad = argparse.Namespace(**{**vars(args), name: value})
        with pytest.raises(UsageError) as refused:
            train_cli.run(bad)
        assert str(refused.value).startswith(message), refused.value
    assert not (tmp_path / "data").exists()


def test_validation_flags_matter_only_where_there_is_validation():
    """A run recorded before --select existed, without validation subjects, compares equal
    to today's flags; with validation subjects, the missing --select is a difference."""
    from tfversky import train_cli

    args = train_cli.build_parser().parse_args(["--val-subjects", "0"])
    config = json.loads(json.dumps(vars(args), default=str))
    older = {k: v for k, v in config.items() if k not in ("select", "ema_alpha")}
    assert train_cli.flags_differing({"config": older}, args) == []
    assert train_cli.flags_differing({"config": {**older, "alpha": 0.1}}, args) == [
        f"--alpha 0.1 there, {args.alpha!r} now"]
    validated = argparse.Namespace(**{**vars(args), "val_subjects": 2})
    differ = train_cli.flags_differing({"config": {**older, "val_subjects": 2}}, validated)
    assert differ == ["--select None there, 'auto' now", "--ema-alpha None there, 0.9 now"]


def test_more_validation_subjects_than_training_ones(tiny_data_dir, capsys, tmp_path):
    line = _one_line_error(["train", *TINY, "--data-dir", tiny_data_dir, "--out",
                            str(tmp_path / "run"), "--val-subjects", "2"], capsys)
    assert "--val-subjects 2: the training folds hold 2 subject(s)" in line, line
    assert "use --val-subjects 1 or less" in line


def test_evaluate_refuses_a_model_of_other_modalities(tiny_data_dir, capsys, tmp_path):
    path = tmp_path / "flair.keras"
    model = unet3d(input_shape=(None, None, None, 1), base_filters=2, depth=2)
    plan.attach(model, plan.Plan(modalities=("FLAIR",), patch_size=8)).save(path)
    line = _one_line_error(["evaluate", "--model", str(path), "--dataset",
                            "ms_lesions/synthetic_tiny", "--data-dir", tiny_data_dir,
                            "--out", str(tmp_path / "eval")], capsys)
    assert f"--model {path} was not made for this data: modalities T1,T2,FLAIR (the model " \
           f"takes FLAIR)" in line, line
    assert not (tmp_path / "eval").exists()


def test_evaluate_refuses_a_model_planned_for_another_grid(tmp_path, capsys):
    # A model planned for the paper's 128x224x256 grid scored on synthetic_tiny (32x56x64):
    # refused before the dataset is built (no --data-dir copy exists), naming both grids.
    path = tmp_path / "paper_grid.keras"
    plan.attach(unet3d(base_filters=2, depth=2), plan.Plan(patch_size=8)).save(path)
    data_dir = tmp_path / "tfds"
    line = _one_line_error(["evaluate", "--model", str(path), "--dataset",
                            "ms_lesions/synthetic_tiny", "--data-dir", str(data_dir), "--split",
                            "fold1", "--out", str(tmp_path / "eval")], capsys)
    assert "grid 32x56x64 at 5x3.6x3 mm (the model's: 128x224x256 at 1.25x0.9x0.75 mm)" in line
    assert not (tmp_path / "eval").exists() and not list(data_dir.rglob("*.tfrecord*"))


def test_evaluate_without_a_run_record_asks_for_the_dataset(tmp_path, capsys):
    path = tmp_path / "bare.keras"
    plan.attach(unet3d(base_filters=2, depth=2), plan.Plan(patch_size=8)).save(path)
    line = _one_line_error(["evaluate", "--model", str(path), "--out", str(tmp_path / "e")],
                           capsys)
    assert "carries no run record" in line and "give the dataset flags" in line, line


def test_train_selects_on_validation_and_evaluate_scores_the_same(tiny_data_dir, tmp_path):
    out = tmp_path / "run"
    assert cli.main(["train", *TINY, "--data-dir", tiny_data_dir, "--out", str(out),
                     "--epochs", "3", "--steps-per-epoch", "2", "--val-subjects", "1",
                     "--select", "best", "--operating-point", "lesion_f1", "--augment",
                     "default", "--augment-prob", "rotation=0.5"]) == 0
    results = json.loads((out / "results.json").read_text())
    # The data's version, so that runs on data a later release makes are not pooled with it.
    assert results["versions"]["dataset"] == str(tfds_ms.MsLesions.VERSION)
    selection = results["selection"]
    history = selection["validation_history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    best = max(history, key=lambda h: h["val_dsc"])  # the first of equals, as Keras keeps it
    assert selection["monitor"] == "val_dsc" and selection["selected_epoch"] == best["epoch"]
    assert selection["best"] == pytest.approx(best["val_dsc"])
    # Every rule's epoch, why this one, and the last epoch's score beside it.
    assert selection["rule"] == "best" and selection["reason"].startswith("--select best; 1 ")
    assert selection["rules"]["best"]["epoch"] == best["epoch"]
    assert selection["rules"]["last"]["epoch"] == 3
    assert selection["last_epoch_score"] == pytest.approx(history[-1]["val_dsc"])
    # One validation subject: the operating point stays the paper's, and says why.
    assert results["operating_point"]["threshold"] == 0.5
    assert results["operating_point"]["reason"].startswith("too little validation data: 1 ")
    assert json.loads((out / "validation.json").read_text())["selected_epoch"] == \
        best["epoch"]
    assert results["config"]["augment"] == "default"
    for name in ("model.keras", "best.keras", "ema.keras", "last.keras", "evaluator.npz",
                 "pr_curve.png"):
        assert (out / name).exists(), name
    # One training subject validated, the other trained on; the test fold is untouched.
    assert len(results["subjects"]) == 2
    assert list((out / "logs" / "validation").glob("events.out.tfevents.*"))
    # The run record: the dataset, its folds and the subjects of each split, in the
    # results and in the model's plan alike.
    record = results["record"]
    assert record == plan.read_plan(out / "model.keras").record
    assert record["dataset"]["name"] == "ms_lesions/synthetic_tiny"
    assert record["dataset"]["num_folds"] == 2 and len(record["dataset"]["digest"]) == 16
    splits = record["splits"]
    assert (splits["train"], splits["test"]) == ("fold0", "fold1")
    assert len(splits["train_subjects"]) == len(splits["validation_subjects"]) == 1
    assert sorted(splits["test_subjects"]) == sorted(s["subject"] for s in results["subjects"])
    assert record["recipe"]["seed"] == 0 and "out" not in record["recipe"]
    # The window is the training patch (16), not a larger one.
    assert plan.read_plan(out / "model.keras").window == (16, 16, 16)
    # evaluate on the same split sees what train's evaluation saw (the selected model): the
    # dataset and the test split come from the model's record.
    evaluated = tmp_path / "eval"
    assert cli.main(["evaluate", "--model", str(out / "model.keras"), "--data-dir",
                     tiny_data_dir, "--out", str(evaluated)]) == 0
    again = json.loads((evaluated / "evaluation.json").read_text())
    assert again["pooled"] == results["pooled"]
    assert [s["subject"] for s in again["subjects"]] == [s["subject"] for s in
                                                         results["subjects"]]
    assert len(list((evaluated / "predictions").glob("*.nii.gz"))) == 2
    assert np.isfinite(again["pooled"]["dsc"])


def test_the_operating_point_chosen_on_validation_rides_in_the_plan_to_evaluate(
        tiny_data_dir, tmp_path, monkeypatch, capsys):
    from tfversky import operating_point

    calls = []

    def choose(volumes, criterion, voxel_size_mm, **kwargs):
        calls.append((volumes, criterion, voxel_size_mm, kwargs))
        return {"threshold": 0.3, "min_lesion_mm3": 40.0, "operating_point": {
            "criterion": criterion, "value": 0.9, "baseline_value": 0.8, "subjects": 1}}

    monkeypatch.setattr(operating_point, "choose", choose)
    out = tmp_path / "run"
    assert cli.main(["train", *TINY, "--data-dir", tiny_data_dir, "--out", str(out),
                     "--epochs", "1", "--steps-per-epoch", "1", "--val-subjects", "1",
                     "--operating-point", "f2"]) == 0
    assert "operating point: threshold 0.3, minimum lesion 40 mm^3 (f2 0.9000 on validation" \
        in capsys.readouterr().out
    [(volumes, criterion, spacing, kwargs)] = calls
    assert criterion == "f2" and spacing == (5.0, 3.6, 3.0)
    assert kwargs["baseline"] == (0.5, 0.0)
    assert len(volumes) == 1 and volumes[0]["probabilities"].shape == (32, 56, 64)
    saved = plan.read_plan(out / "model.keras")
    assert (saved.threshold, saved.min_lesion_mm3) == (0.3, 40.0)
    assert saved.operating_point["criterion"] == "f2"
    results = json.loads((out / "results.json").read_text())
    assert results["operating_point"]["threshold"] == 0.3
    assert results["selection"]["rule"] == "last"  # --select auto on one subject
    # evaluate scores with the plan's point, as train's test did; flags override it.
    evaluated = tmp_path / "eval"
    assert cli.main(["evaluate", "--model", str(out / "model.keras"), "--data-dir",
                     tiny_data_dir, "--out", str(evaluated)]) == 0
    again = json.loads((evaluated / "evaluation.json").read_text())
    point = again["operating_point"]
    assert (point["threshold"], point["min_lesion_mm3"]) == (0.3, 40.0)
    assert point["from"].startswith("threshold 0.3 from the plan (chosen by f2 on validation)")
    assert again["pooled"] == results["pooled"]
    assert cli.main(["evaluate", "--model", str(out / "model.keras"), "--data-dir",
                     tiny_data_dir, "--out", str(tmp_path / "flags"), "--threshold", "0.5",
                     "--min-lesion-volume", "0"]) == 0
    flags = json.loads((tmp_path / "flags" / "evaluation.json").read_text())
    assert flags["operating_point"] == {"threshold": 0.5, "min_lesion_mm3": 0.0,
                                        "from": "threshold 0.5 given, min lesion 0 mm^3 given"}


def test_evaluate_refuses_training_folds_and_other_folds(tiny_data_dir, tmp_path, capsys):
    # A model trained with fold 1 as its test fold: scoring fold 0 (its training subjects),
    # or the dataset cut into other folds, is refused before anything is computed.
    out = tmp_path / "run"
    assert cli.main(["train", *TINY, "--data-dir", tiny_data_dir, "--out", str(out),
                     "--epochs", "1", "--steps-per-epoch", "1", "--val-subjects", "0",
                     "--augment", "none"]) == 0
    capsys.readouterr()  # the training's output
    model = str(out / "model.keras")
    line = _one_line_error(["evaluate", "--model", model, "--data-dir", tiny_data_dir,
                            "--split", "fold0", "--out", str(tmp_path / "e1")], capsys)
    assert "--split fold0: fold0 held the model's training or validation subjects" in line
    assert "tested on fold1" in line, line
    line = _one_line_error(["evaluate", "--model", model, "--data-dir", tiny_data_dir,
                            "--dataset", "ms_lesions/synthetic_tiny", "--split",
                            "fold0+fold1", "--out", str(tmp_path / "e2")], capsys)
    assert "fold0 held the model's training" in line, line
    line = _one_line_error(["evaluate", "--model", model, "--data-dir", tiny_data_dir,
                            "--num-folds", "3", "--out", str(tmp_path / "e3")], capsys)
    assert "--num-folds 3 (trained on 2)" in line, line
    assert not any((tmp_path / f"e{k}").exists() for k in (1, 2, 3))
    # Outputs: never into the training run, never over an earlier evaluation unless asked.
    before = (out / "evaluation.json").read_bytes()
    line = _one_line_error(["evaluate", "--model", model, "--data-dir", tiny_data_dir,
                            "--out", str(out)], capsys)
    assert "holds a training run (results.json)" in line, line
    assert (out / "evaluation.json").read_bytes() == before
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "evaluation.json").write_text("{}")
    line = _one_line_error(["evaluate", "--model", model, "--data-dir", tiny_data_dir,
                            "--out", str(earlier)], capsys)
    assert "already holds evaluation.json" in line and "--overwrite" in line, line
    assert (earlier / "evaluation.json").read_text() == "{}"


def test_evaluate_on_an_unknown_split_or_model_file(tiny_data_dir, capsys, tmp_path):
    path = tmp_path / "model.keras"
    tiny_grid = ReferenceGrid((32, 56, 64), (5.0, 3.6, 3.0))  # synthetic_tiny's
    plan.attach(unet3d(base_filters=2, depth=2), plan.Plan(grid=tiny_grid, patch_size=8)).save(
        path)
    common = ["--dataset", "ms_lesions/synthetic_tiny", "--data-dir", tiny_data_dir, "--out",
              str(tmp_path / "eval")]
    line = _one_line_error(["evaluate", "--model", str(path), "--split", "fold9", *common],
                           capsys)
    assert line.startswith("python -m tfversky evaluate: error: --split 'fold9': "
                           "ms_lesions/synthetic_tiny has no split 'fold9'; its splits are "
                           "fold0, fold1"), line
    line = _one_line_error(["evaluate", "--model", str(tmp_path / "none.keras"), *common],
                           capsys)
    assert "does not exist" in line, line


def _mask_folders(tmp_path):
    import nibabel as nib

    for folder, shift in (("truth", 0), ("pred", 1)):
        (tmp_path / folder).mkdir()
        for case in ("a", "b"):
            mask = np.zeros((12, 12, 6), np.uint8)
            mask[3 + shift:8 + shift, 3:8, 1:4] = 1
            nib.save(nib.Nifti1Image(mask, np.diag([0.9, 0.9, 3.0, 1.0])),
                     tmp_path / folder / f"{case}.nii.gz")
    return ["--predictions", str(tmp_path / "pred"), "--truth", str(tmp_path / "truth")]


def test_evaluate_scores_folders_of_masks(tmp_path, capsys):
    folders = _mask_folders(tmp_path)
    out = tmp_path / "scores"
    assert cli.main(["evaluate", *folders, "--out", str(out), "--tolerance-mm", "2"]) == 0
    assert "2 case(s): mean DSC 0.8000" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["tolerance_mm"] == 2.0 and summary["mean"]["nsd"] == 1.0
    assert (out / "cases.csv").exists() and (out / "lesions.csv").exists()
    line = _one_line_error(["evaluate", *folders, "--out", str(out)], capsys)
    assert "already holds cases.csv, lesions.csv, summary.json" in line, line


def test_evaluate_folders_never_write_into_an_input(tmp_path, capsys):
    folders = _mask_folders(tmp_path)
    for out in (tmp_path / "truth", tmp_path / "pred" / "scores"):
        line = _one_line_error(["evaluate", *folders, "--out", str(out)], capsys)
        assert "an input folder" in line, line
    assert sorted(p.name for p in (tmp_path / "truth").iterdir()) == ["a.nii.gz", "b.nii.gz"]
    assert not (tmp_path / "pred" / "scores").exists()


@pytest.mark.parametrize("argv, message", [
    (["--model", "m.keras"], "give one or the other"),
    (["--truth", "only"], "--predictions DIR and --truth DIR go together"),
    ([], "give --model FILE (a model on a dataset split) or --predictions"),
    (["--min-lesion-volume", "10"], "--min-lesion-volume 10: applies to a --model's "
                                    "probabilities"),
])
def test_evaluate_modes_do_not_mix(argv, message, tmp_path, capsys):
    folders = _mask_folders(tmp_path) if argv and argv[0] in ("--model",
                                                             "--min-lesion-volume") else []
    line = _one_line_error(["evaluate", *folders, *argv, "--out", str(tmp_path / "o")], capsys)
    assert message in line, line


# --- the run folder: nothing finished is overwritten, a resume is checked -----------------------

RUN = [*TINY, "--epochs", "3", "--steps-per-epoch", "2", "--val-subjects", "1", "--select",
       "best"]


VALIDATION = training.ValidationCallback  # the tests below replace it with scripted ones


class Killed(Exception):
    """Stands for a kill: raised where a process could die."""


def scripted_validation(scores, kill_at=None):
    """A ValidationCallback whose monitored val_dsc is ``scores[epoch - 1]`` (so the selected
    epoch is known), killing the run as epoch ``kill_at`` (1-based) begins, after the
    backup of the epoch before."""
    class Scripted(VALIDATION):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch + 1 == kill_at:
                raise Killed
            super().on_epoch_begin(epoch, logs)

        def _record(self, entry):
            entry["val_dsc"] = scores[entry["epoch"] - 1]
            return super()._record(entry)

    return Scripted


def _log(out):
    import csv

    with open(out / "training_log.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _files_of(folder):
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))
            if p.is_file()}


def _check_results_against_the_log(out, steps=2, batch=2):
    results = json.loads((out / "results.json").read_text())
    rows = _log(out)
    assert [int(row["epoch"]) for row in rows] == list(range(len(rows)))  # each epoch once
    assert results["history"]["loss"] == pytest.approx([float(r["loss"]) for r in rows])
    assert results["timing"]["epochs"] == len(rows)
    seconds = sum(float(row["epoch_seconds"]) for row in rows)
    assert results["timing"]["train_seconds"] == pytest.approx(seconds)
    assert results["timing"]["patches_per_second"] == pytest.approx(
        len(rows) * steps * batch / seconds)
    selection = results["selection"]
    row = rows[selection["selected_epoch"] - 1]
    assert selection["metrics"]["loss"] == pytest.approx(float(row["loss"]))
    if selection["monitor"]:
        assert selection["metrics"]["val_dsc"] == pytest.approx(float(row["val_dsc"]))
    return results


@pytest.mark.slow
def test_killed_run_resumes_only_with_its_flags_and_a_finished_one_is_kept(
        tiny_data_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    command = ["train", *RUN, "--data-dir", tiny_data_dir, "--out", str(out)]
    scores = [0.3, 0.6, 0.5]
    monkeypatch.setattr(training, "ValidationCallback", scripted_validation(scores, kill_at=3))
    with pytest.raises(Killed):
        cli.main(command)
    assert not (out / "results.json").exists() and (out / "backup").is_dir()
    assert [row["epoch"] for row in _log(out)] == ["0", "1"]
    # As if killed after epoch 3's log row but before its backup: that epoch trains again.
    with open(out / "training_log.csv") as handle:
        lines = handle.read().splitlines()
    (out / "training_log.csv").write_text("\n".join(lines + ["2" + lines[-1][1:]]) + "\n")
    killed = _files_of(out)
    capsys.readouterr()

    # Other flags: refused, each named, before anything is built or touched.
    line = _one_line_error(command + ["--alpha", "0.5", "--seed", "3", "--val-subjects", "0",
                                      "--select", "last"], capsys)
    for flag in ("--alpha 0.3 there, 0.5 now", "--seed 0 there, 3 now",
                 "--val-subjects 1 there, 0 now", "--overwrite"):
        assert flag in line, line
    assert _files_of(out) == killed

    # The same recipe resumes (--verbose cannot change the model, so it may differ).
    monkeypatch.setattr(training, "ValidationCallback", scripted_validation(scores))
    assert cli.main(command + ["--verbose", "2"]) == 0
    results = _check_results_against_the_log(out)
    assert len(results["history"]["loss"]) == 3  # all epochs, not the last process's one
    assert results["selection"]["selected_epoch"] == 2
    assert [h["epoch"] for h in results["selection"]["validation_history"]] == [1, 2, 3]
    assert not (out / "backup").exists()

    # A finished run: refused, every file left as it was.
    finished = _files_of(out)
    capsys.readouterr()
    line = _one_line_error(command, capsys)
    assert "holds a finished run (results.json)" in line and "--overwrite" in line, line
    assert _files_of(out) == finished

    # --overwrite starts over: no file of the old run is left, the log has one run.
    assert cli.main(["train", *TINY, "--data-dir", tiny_data_dir, "--out", str(out),
                     "--epochs", "1", "--steps-per-epoch", "1", "--val-subjects", "0",
                     "--overwrite"]) == 0
    assert [row["epoch"] for row in _log(out)] == ["0"]
    assert not (out / "validation.json").exists()
    assert json.loads((out / "run.json").read_text())["config"]["epochs"] == 1
    assert _check_results_against_the_log(out, steps=1)["selection"]["selected_epoch"] == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.slow
def test_early_stopped_run_reports_the_epochs_it_ran(tiny_data_dir, tmp_path, monkeypatch,
                                                     capsys):
    """And a run killed after training, during the test, evaluates without training again."""
    from tfversky import evaluation

    out = tmp_path / "run"
    command = ["train", *RUN, "--epochs", "4", "--patience", "1", "--data-dir", tiny_data_dir,
               "--out", str(out)]
    monkeypatch.setattr(training, "ValidationCallback",
                        scripted_validation([0.5, 0.4, 0.9, 0.9]))

    def killed(*args, **kwargs):
        raise Killed

    with monkeypatch.context() as patch:
        patch.setattr(evaluation, "evaluate_fold", killed)
        with pytest.raises(Killed):
            cli.main(command)
    assert json.loads((out / "run.json").read_text())["training_finished"]
    log = (out / "training_log.csv").read_text()
    capsys.readouterr()
    assert cli.main(command) == 0
    assert "finished before" in capsys.readouterr().out
    assert (out / "training_log.csv").read_text() == log  # not trained again
    results = _check_results_against_the_log(out)
    assert len(results["history"]["loss"]) == 2  # stopped after epoch 2 of 4
    assert results["selection"]["selected_epoch"] == 1
    assert results["selection"]["stopped_epoch"] == 2
    assert results["timing"]["patches_per_second"] == pytest.approx(
        2 * 2 * 2 / results["timing"]["train_seconds"])


@pytest.mark.parametrize("setup, message", [
    ("file", "is a file: give a folder"),
    ("other", "is not empty and holds no tfversky run"),
    ("unrecorded", "killed run with no record of its flags"),
    ("version", "killed run of tfversky 0.0.1 and this is"),
])
def test_run_folders_that_cannot_be_resumed(setup, message, tmp_path, capsys):
    out = tmp_path / "run"
    if setup == "file":
        out.write_text("x")
    else:
        out.mkdir()
        (out / {"other": "notes.txt", "unrecorded": "training_log.csv",
                "version": "run.json"}[setup]).write_text(
            json.dumps({"versions": {"tfversky": "0.0.1"}, "config": {}}))
    before = _files_of(tmp_path)
    extra = ["--overwrite"] if setup == "other" else []  # --overwrite removes runs only
    line = _one_line_error(["train", *TINY, "--data-dir", str(tmp_path / "data"), "--out",
                            str(out), *extra], capsys)
    assert message in line, line
    assert _files_of(tmp_path) == before


@pytest.mark.slow
@pytest.mark.parametrize("raw_training", [True, False], ids=["raw", "stripped"])
def test_a_model_takes_scans_like_its_training_scans(raw_training, tmp_path, capsys,
                                                    keep_noise_outside_the_brain):
    """nnU-Net data with noise outside the brain (raw scans) train a model that predicts on
    a raw test scan; a model trained on skull-stripped scans still refuses it. The dataset
    records what its scans were, and the plan copies it with the normalisation."""
    from tfds_ms import synth

    root = tmp_path / "Dataset503_MS"
    synth.synthesize(root, subjects=4, layout="nnunet", resolution=8, progress=False,
                     test_subjects=1)
    keep_noise_outside_the_brain(sorted((root / "imagesTs").glob("*.nii.gz")))
    if raw_training:
        keep_noise_outside_the_brain(sorted((root / "imagesTr").glob("*.nii.gz")), seed=1)
    out = tmp_path / "run"
    assert cli.main(["train", "--dataset", "ms_lesions/nnunet", "--manual-dir", str(root),
                     "--data-dir", str(tmp_path / "data"), "--out", str(out),
                     "--grid-shape", "16,24,24", "--grid-spacing", "10,8.4,8",
                     "--patch-size", "16", "--depth", "3", "--base-filters", "4",
                     "--verbose", "0", "--epochs", "1",
                     "--steps-per-epoch", "2", "--val-subjects", "0"]) == 0
    model_plan = plan.read_plan(out / "model.keras")
    assert model_plan.skull_stripped is not raw_training
    assert model_plan.record["dataset"]["preparation"]["skull_stripped"] is not raw_training
    assert (model_plan.intensity_normalization, model_plan.clip_percentiles) == (
        "zscore", (0.5, 99.5))
    capsys.readouterr()
    predicted = tmp_path / "predictions"
    code = cli.main(["predict", "--model", str(out / "model.keras"), "-i",
                     str(root / "imagesTs"), "-o", str(predicted), "--quiet"])
    err = capsys.readouterr().err
    if raw_training:
        assert code == 0, err
        assert sorted(path.name for path in predicted.glob("*.nii.gz")) == ["MS_005.nii.gz"]
    else:
        assert code == 2 and "does not look skull-stripped" in err, err
        assert "The model was trained on skull-stripped scans" in err


# --- cross-validation: train --folds (issue 23, item 1) ---------------------------------------


@pytest.mark.parametrize("extra, message", [
    (["--folds", "2"], "--folds 2: ms_lesions/synthetic_tiny has 2 folds (0 to 1); give folds "
                       "among them, or all"),
    (["--folds", "all", "--fold", "0"], "--fold 0 and --folds all: --fold trains one run, "
                                        "--folds one per fold; give one of them"),
    (["--folds", "0", "x"], "--folds 0 x: expected 'all' or fold numbers"),
    (["--folds", "all", "1"], "--folds all 1: expected 'all' or fold numbers"),
    (["--folds", "all", "--holdout-fold", "1"], "--holdout-fold 1: ms_lesions/synthetic_tiny "
                                                "has 2 folds, and a holdout fold needs 3 or more"),
    (["--folds", "all", "--strategy", "multiworker"], "--folds with --strategy multiworker"),
    (["--folds", "all", "--alpha", "-1"], "argument --alpha: expected a finite number >= 0"),
])
def test_folds_are_checked_before_any_work(extra, message, capsys, tmp_path):
    data_dir, out = tmp_path / "data", tmp_path / "cv"
    line = _one_line_error(["train", *TINY, "--data-dir", str(data_dir), "--out", str(out),
                            *extra], capsys)
    assert message in line, line
    assert not data_dir.exists() and not out.exists()


def test_a_holdout_fold_is_left_out_of_every_run(tmp_path):
    """--holdout-fold T: fold T is in no run's training split, so an ensemble of the runs
    can be tested on it; combinations that would train or test on it are refused."""
    from tfversky import train_cli
    from tfversky.arguments import UsageError

    def parsed(*flags):
        return train_cli.build_parser().parse_args(
            ["--dataset", "ms_lesions/synthetic_realistic_by_centre_lowres", "--data-dir",
             str(tmp_path / "data"), "--out", str(tmp_path / "cv"), *flags])

    args = parsed("--fold", "0", "--holdout-fold", "3")
    assert train_cli.resolve_folds(args) == ("fold1+fold2", "fold0")
    assert train_cli.resolve_folds(parsed("--fold", "0")) == ("fold1+fold2+fold3", "fold0")
    assert train_cli.resolve_folds(parsed()) == ("fold0+fold2+fold3", "fold1")  # --fold 1
    assert train_cli.check_folds(parsed("--folds", "all", "--holdout-fold", "3")) == [0, 1, 2]
    assert train_cli.check_folds(parsed("--folds", "2", "0")) == [0, 2]
    for flags, message in [
            (("--folds", "1", "3", "--holdout-fold", "3"),
             "--folds 1 3: fold 3 is the holdout fold (--holdout-fold 3), which no run trains "
             "or tests on; give folds among 0, 1, 2, or all"),
            (("--fold", "3", "--holdout-fold", "3"), "--holdout-fold 3 is the test fold"),
            (("--folds", "all", "--holdout-fold", "4"), "--holdout-fold 4: "
             "ms_lesions/synthetic_realistic_by_centre_lowres has 4 folds; use --holdout-fold "
             "0 to 3")]:
        with pytest.raises(UsageError) as refused:
            args = parsed(*flags)
            train_cli.check_folds(args) if args.folds else train_cli.resolve_folds(args)
        assert message in str(refused.value), refused.value
    assert not (tmp_path / "data").exists() and not (tmp_path / "cv").exists()


@pytest.mark.slow
def test_folds_train_one_run_per_fold_resume_and_pool(tiny_data_dir, tmp_path, capsys):
    from tfversky import evaluation, export, metrics

    out = tmp_path / "cv"
    command = ["train", *TINY, "--data-dir", tiny_data_dir, "--out", str(out), "--epochs", "1",
               "--steps-per-epoch", "1", "--val-subjects", "0", "--augment", "none"]
    assert cli.main(command + ["--folds", "0"]) == 0
    partial = json.loads((out / "results.json").read_text())["cross_validation"]
    assert (partial["folds"], partial["missing"], partial["complete"]) == ([0], [1], False)
    fold0 = _files_of(out / "fold_0")
    # A fold killed during its test (training finished): resumed, not trained again; a
    # finished fold is kept as it was.
    assert cli.main(command + ["--folds", "all"]) == 0
    (out / "fold_1" / "results.json").unlink()
    log = (out / "fold_1" / "training_log.csv").read_text()
    capsys.readouterr()
    assert cli.main(command + ["--folds", "all"]) == 0
    printed = capsys.readouterr().out
    assert "fold 0 (1 of 2): finished before" in printed and "finished before: evaluating" \
        in printed
    assert (out / "fold_1" / "training_log.csv").read_text() == log
    assert _files_of(out / "fold_0") == fold0
    # Each fold's folder is the run `train --fold K` writes.
    for fold in (0, 1):
        results = json.loads((out / f"fold_{fold}" / "results.json").read_text())
        assert results["record"]["splits"]["test"] == f"fold{fold}"
        assert results["config"]["fold"] == fold and results["config"]["folds"] is None
        assert (out / f"fold_{fold}" / "model.keras").exists()
    # The pooled results: every subject once, the counts summed over the folds.
    pooled = json.loads((out / "results.json").read_text())
    folds = [json.loads((out / f"fold_{k}" / "results.json").read_text()) for k in (0, 1)]
    assert pooled["cross_validation"] == {"num_folds": 2, "folds": [0, 1], "missing": [],
                                          "complete": True, "holdout_fold": None,
                                          "sample": "4 subjects (4 scans)"}
    for count in metrics.COUNTS + ("lesions_reference", "lesions_predicted"):
        assert pooled["pooled"][count] == sum(f["pooled"][count] for f in folds), count
    assert sorted(s["subject"] for s in pooled["subjects"]) == sorted(
        s["subject"] for f in folds for s in f["subjects"])
    rows = pooled["subjects"]
    assert pooled["subject_mean"]["dsc"] == pytest.approx(np.mean([r["dsc"] for r in rows]))
    assert pooled["fold_mean"]["dsc"]["mean"] == pytest.approx(
        np.mean([f["pooled"]["dsc"] for f in folds]))
    evaluator, subjects, _ = evaluation.load_fold(out)  # the folder reads as one test
    assert evaluator.result()["apr"] == pytest.approx(pooled["pooled"]["apr"])
    # Another recipe in the same folder: refused, naming the fold and the flag.
    before = _files_of(out)
    line = _one_line_error(command + ["--folds", "1", "--alpha", "0.5"], capsys)
    assert "fold_0 was made with other flags or data (--alpha 0.3 there, 0.5 now)" in line
    line = _one_line_error(command + ["--fold", "1"], capsys)  # a single run over it
    assert "holds a finished run" in line, line
    assert _files_of(out) == before
    # The folds export as one ensemble.
    card = export.export_run(out, tmp_path / "cv.zip")
    assert card["scores"]["pooled"]["dsc"] == pooled["pooled"]["dsc"]
    assert [m["tested_on"] for m in card["members"]] == ["fold0", "fold1"]
