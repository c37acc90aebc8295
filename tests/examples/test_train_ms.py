"""examples/train_ms.py end to end (tfversky.train_cli, what `tfversky train` runs), on the
tiny synthetic phantom (reproduce_table1.py: tests/examples/test_reproduce_table1.py;
validation and `tfversky evaluate`: tests/tfversky/test_train_cli.py).

Distribution runs as real processes: MirroredStrategy over 2 logical CPUs (which must be
configured before TensorFlow starts), MultiWorkerMirroredStrategy with 2 local workers, and
a run killed after its first epoch that resumes.
"""

import csv
import importlib.util
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import nibabel as nib
import numpy as np
import pytest

from tfversky import cli, plan, train_cli
from tfversky.preprocessing import PAPER_GRID

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "train_ms.py"
TINY = ["--dataset", "ms_lesions/synthetic_tiny", "--patch-size", "16", "--depth", "3",
        "--base-filters", "4", "--verbose", "2"]


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(ROOT / "examples"))
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def data_dir(tiny_data_dir):
    return tiny_data_dir


def _command(data_dir, out, *extra):
    return [sys.executable, str(SCRIPT), *TINY, "--data-dir", data_dir, "--out", str(out),
            *extra]


def _env(**extra):
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2", **extra)
    env.pop("TF_CONFIG", None)
    return env


def _run(command, timeout=240, **env):
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                          env=_env(**env), cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit) as exit_info:
        _load("train_ms").main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--dataset", "--data-dir", "--manual-dir", "--fold", "--alpha", "--beta",
                 "--gamma", "--loss-impl", "--epochs", "--steps-per-epoch", "--patch-size",
                 "--batch-size", "--lr", "--mixed-precision", "--strategy", "--cpu-replicas",
                 "--out", "--seed"):
        assert flag in text


@pytest.mark.parametrize("argv, message", [
    (["--dataset", "ms_lesions/nope"], "unknown config 'nope'"),
    (["--dataset", "mnist"], "expected ms_lesions/<config>"),
    (["--patch-size", "20"], "--patch-size 20: expected sizes that are each a multiple of 8 "
                             "(2^(depth-1) for --depth 4): 16 or 24 for 20"),
    (["--threshold", "1.0"], "argument --threshold: expected a number in (0, 1), got '1.0'"),
    (["--strategy", "multiworker"], "needs the TF_CONFIG"),
    (["--manual-dir", "/no/such/folder"], "no such folder"),
    (["--fold", "2"], "--fold 2"),
    (["--batch-size", "3", "--cpu-replicas", "2"], "divisible"),
])
def test_usage_errors_exit_2_with_one_line(argv, message, capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    try:
        code = _load("train_ms").main(argv + ["--out", str(tmp_path), "--data-dir",
                                              str(tmp_path)])
    except SystemExit as exit_info:  # argparse applied the flag's rule
        code = exit_info.code
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and err.count("\n") == 1, err


def test_manual_dir_laid_out_wrongly(capsys, tmp_path):
    (tmp_path / "manual" / "something").mkdir(parents=True)
    code = _load("train_ms").main(["--dataset", "ms_lesions/isbi2015", "--manual-dir",
                                   str(tmp_path / "manual"), "--data-dir", str(tmp_path / "d"),
                                   "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "isbi2015" in err and "training" in err, err


def test_mirrored_strategy_on_two_cpu_replicas(data_dir, tmp_path):
    out = tmp_path / "run"
    stdout = _run(_command(data_dir, out, "--cpu-replicas", "2", "--strategy", "mirrored",
                           "--epochs", "1", "--steps-per-epoch", "3", "--val-subjects", "1"))
    assert "MirroredStrategy with 2 replica(s)" in stdout
    results = json.loads((out / "results.json").read_text())
    assert set(results["pooled"]) >= {"dsc", "sensitivity", "specificity", "f2", "apr",
                                      "ltpr", "lfpr", "lesion_f1"}
    assert len(results["subjects"]) == 2 and results["config"]["alpha"] == 0.3
    assert results["selection"]["selected_epoch"] == 1  # validated under the strategy
    for name in ("pr_curve.png", "model.keras", "last.keras", "training_log.csv",
                 "evaluator.npz", "validation.json"):
        assert (out / name).exists(), name
    assert len(list((out / "overlays").glob("*.png"))) == 2
    prediction = next((out / "predictions").glob("*.nii.gz"))
    image = nib.load(prediction)
    assert image.get_data_dtype() == np.uint8 and image.ndim == 3
    # The saved model carries the dataset's grid and the evaluation's settings.
    model_plan = plan.read_plan(out / "model.keras")
    assert model_plan.grid == PAPER_GRID.scaled(4) and model_plan.window == (16, 16, 16)
    assert model_plan.modalities == ("T1", "T2", "FLAIR") and model_plan.loss["beta"] == 0.7
    assert "pooled" in stdout and str(out / "results.json") in stdout


def test_same_seed_same_results_and_resume_after_kill(data_dir, tmp_path):
    """With validation and model selection on: the resumed run keeps the validation history
    (validation.json) and selects what the uninterrupted run selected."""
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    extra = ("--epochs", "3", "--steps-per-epoch", "4", "--val-subjects", "1")
    _run(_command(data_dir, reference, *extra))
    # Kill a second run as soon as its first epoch is logged, then start it again.
    process = subprocess.Popen(_command(data_dir, resumed, *extra), env=_env(), cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = resumed / "training_log.csv"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if log.exists() and len(log.read_text().splitlines()) >= 2:
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (resumed / "results.json").exists()
    _run(_command(data_dir, resumed, *extra))
    with open(log) as f:
        epochs = [int(row["epoch"]) for row in csv.DictReader(f)]
    assert epochs == [0, 1, 2], epochs  # resumed at epoch 1, not restarted
    first = json.loads((reference / "results.json").read_text())
    second = json.loads((resumed / "results.json").read_text())
    assert first["pooled"] == second["pooled"]
    assert first["selection"]["selected_epoch"] == second["selection"]["selected_epoch"]
    assert [h["epoch"] for h in second["selection"]["validation_history"]] == [1, 2, 3]
    for a, b in zip(first["selection"]["validation_history"],
                    second["selection"]["validation_history"]):
        a.pop("seconds"), b.pop("seconds")  # wall time
        assert a == pytest.approx(b, rel=1e-5, nan_ok=True)
    # The history is the log's, every epoch of both processes (not Keras's History's last).
    assert first["history"]["loss"] == pytest.approx(second["history"]["loss"], rel=1e-5)


def test_multi_worker_mirrored_strategy_with_two_local_workers(data_dir, tmp_path, free_ports):
    workers = [f"localhost:{port}" for port in free_ports(2)]
    out = tmp_path / "run"
    processes = []
    for index in range(2):
        config = json.dumps({"cluster": {"worker": workers},
                             "task": {"type": "worker", "index": index}})
        processes.append(subprocess.Popen(
            _command(data_dir, out, "--strategy", "multiworker", "--epochs", "2",
                     "--steps-per-epoch", "2", "--val-subjects", "1"),
            env={**_env(), "TF_CONFIG": config}, cwd=ROOT, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True))
    try:
        outputs = [p.communicate(timeout=300)[0] for p in processes]
    finally:
        for p in processes:
            p.kill()
    for p, output in zip(processes, outputs):
        assert p.returncode == 0, output[-3000:]
    assert "CollectiveAllReduceStrategy with 2 replica(s)" in outputs[0]  # MultiWorkerMirrored
    assert (out / "results.json").exists()  # written by the chief (worker 0) only
    assert not (out / "worker-1" / "results.json").exists()
    # Both workers validated each epoch and took the chief's decision (none waited forever).
    history = json.loads((out / "results.json").read_text())["selection"]["validation_history"]
    assert [h["epoch"] for h in history] == [1, 2]
    assert not (out / "worker-1" / "validation.json").exists()


# --- user datasets: nnU-Net and BIDS ----------------------------------------------------------

USER_GRID = ["--grid-shape", "16,24,24", "--grid-spacing", "10,8.4,8", "--patch-size", "16",
             "--depth", "3", "--base-filters", "4", "--verbose", "0",
             "--epochs", "1", "--steps-per-epoch", "2"]


@pytest.mark.slow
def test_flair_only_nnunet_model_end_to_end(tmp_path):
    """Build, train a few steps, save, reload, and segment a folder of unseen test cases."""
    import keras

    from tfds_ms import synth

    root = tmp_path / "Dataset502_FLAIR"
    synth.synthesize(root, subjects=4, layout="nnunet", resolution=8, progress=False,
                     modalities=("FLAIR",), test_subjects=2)
    out = tmp_path / "run"
    stdout = _run([sys.executable, str(SCRIPT), "--dataset", "ms_lesions/nnunet", "--manual-dir",
                   str(root), "--data-dir", str(tmp_path / "data"), "--out", str(out),
                   *USER_GRID])
    assert "inputs FLAIR on a 16x24x24 grid" in stdout
    results = json.loads((out / "results.json").read_text())
    assert results["modalities"] == ["FLAIR"] and len(results["subjects"]) == 2
    model = keras.models.load_model(out / "model.keras")
    assert model.input_shape == (None, None, None, None, 1)
    assert plan.read_plan(model).modalities == ("FLAIR",)
    predictions = tmp_path / "predictions"
    predictions.mkdir()  # predict -o writes into an existing folder
    assert cli.main(["predict", "--model", str(out / "model.keras"), "-i",
                     str(root / "imagesTs"), "-o", str(predictions), "--quiet"]) == 0
    with open(predictions / "summary.csv") as f:
        cases = [row["case"] for row in csv.DictReader(f)]
    assert cases == ["MS_005", "MS_006"]
    for case in cases:
        scan, mask = nib.load(root / "imagesTs" / f"{case}_0000.nii.gz"), nib.load(
            predictions / f"{case}.nii.gz")
        assert mask.shape == scan.shape and np.allclose(mask.affine, scan.affine)
        assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1}


def test_model_inputs_follow_the_bids_modalities(tmp_path):
    args = train_cli.build_parser().parse_args([
        "--dataset", "ms_lesions/bids", "--manual-dir",
        str(ROOT / "tests" / "tfds_ms" / "dummy_data" / "bids"), "--modalities", "FLAIR,T1w",
        "--data-dir", str(tmp_path), *USER_GRID])
    patches, test, (modalities, grid, ignore_index, _), val, _ = train_cli.load_splits(args)
    # The default --val-subjects 0.1 holds out at least one subject (with all its sessions).
    assert len({e["subject"] for e in val.as_numpy_iterator()}) == 1
    assert modalities == ("FLAIR", "T1") and grid.shape == (16, 24, 24) and ignore_index is None
    x, y = next(iter(patches))
    assert x.shape == (2, 16, 16, 16, 2)
    model = train_cli.build_model(args, modalities, ignore_index)
    assert model.input_shape == (None, None, None, None, 2)
    assert model(x).shape == (2, 16, 16, 16, 2)


@pytest.mark.parametrize("argv, message", [
    (["--dataset", "ms_lesions/bids", "--manual-dir", "BIDS"], "needs the modalities"),
    (["--dataset", "ms_lesions/bids", "--manual-dir", "BIDS", "--modalities", "FLAIR,T9"],
     "has T9 (found: FLAIR, T1, T2)"),
    (["--dataset", "ms_lesions/bids", "--manual-dir", "BIDS", "--modalities", "FLAIR",
      "--bids-filter", "FLAIR:acq=1D"], "--bids-filter FLAIR:acq=1D matches none of its FLAIR"),
    (["--dataset", "ms_lesions/bids", "--manual-dir", "BIDS", "--modalities", "FLAIR,PDw"],
     "has PD"),
    (["--dataset", "ms_lesions/nnunet", "--manual-dir", "NNUNET", "--subject-pattern", "^x"],
     "does not match case id"),
    (["--dataset", "ms_lesions/nnunet", "--manual-dir", "BIDS"], "No nnU-Net dataset.json"),
    (["--dataset", "ms_lesions/nnunet"], "pass manual_dir=DIR"),
    (["--dataset", "ms_lesions/synthetic_tiny", "--modalities", "FLAIR"],
     "--modalities is for --dataset ms_lesions/nnunet"),
    (["--dataset", "ms_lesions/nnunet", "--manual-dir", "NNUNET", "--grid-shape", "16,24"],
     "--grid-shape '16,24': expected three positive integers"),
])
def test_user_dataset_usage_errors(argv, message, capsys, tmp_path):
    dummy = ROOT / "tests" / "tfds_ms" / "dummy_data"
    argv = [{"BIDS": str(dummy / "bids"), "NNUNET": str(dummy / "nnunet")}.get(a, a) for a in argv]
    try:
        code = _load("train_ms").main(argv + ["--out", str(tmp_path), "--data-dir", str(tmp_path)])
        lines = capsys.readouterr().err.splitlines()
    except SystemExit as exit_info:  # argparse's own, one line too
        code, lines = exit_info.code, capsys.readouterr().err.splitlines()
    assert code == 2
    assert len(lines) == 1 and message in lines[0], lines


@pytest.mark.slow
def test_reproduce_table1_takes_the_user_dataset_flags(tmp_path):
    reproduce = _load("reproduce_table1")
    out = tmp_path / "table1"
    argv = ["--dataset", "ms_lesions/nnunet", "--manual-dir",
            str(ROOT / "tests" / "tfds_ms" / "dummy_data" / "nnunet"), "--modalities", "FLAIR",
            "--subject-pattern", "^MS_[0-9]+", "--data-dir", str(tmp_path / "data"), *USER_GRID,
            "--steps-per-epoch", "1", "--out", str(out), "--settings", "0.3,0.7", "--seeds", "1"]
    assert reproduce.main(argv) == 0
    runs = sorted(out.glob("seed*/alpha0.3_beta0.7/fold*/results.json"))
    assert len(runs) == 2
    tested = [(s["subject"], s["scan_id"]) for run in runs
              for s in json.loads(run.read_text())["subjects"]]
    assert sorted(tested) == [("MS_001", "MS_001_s1"), ("MS_001", "MS_001_s2"),
                              ("MS_002", "MS_002_s1"), ("MS_003", "MS_003_s1"),
                              ("MS_004", "MS_004_s1")]  # one subject's two scans, one unit
    assert "4 subjects (5 scans)" in (out / "table1.md").read_text()
    assert all(json.loads(run.read_text())["modalities"] == ["FLAIR"] for run in runs)


def test_missing_data_extras_are_one_clear_error(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # as if not installed
    code = _load("train_ms").main(["--out", str(tmp_path), "--data-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "needs the data extras" in err and "pip install" in err, err
    assert err.count("\n") == 1
