"""examples/reproduce_table1.py: seeds, refusing to pool other runs, mean +- sd, statistics."""

import csv
import importlib.util
import json
import pathlib
import sys
import time

import numpy as np
import pytest

from tfversky import cli, evaluation, metrics, statistics, train_cli

ROOT = pathlib.Path(__file__).resolve().parents[2]
TINY = ["--dataset", "ms_lesions/synthetic_tiny", "--patch-size", "16", "--depth", "3",
        "--base-filters", "4", "--epochs", "1",
        "--steps-per-epoch", "1", "--verbose", "0"]


@pytest.fixture(scope="module")
def reproduce():
    spec = importlib.util.spec_from_file_location("reproduce_table1",
                                                  ROOT / "examples" / "reproduce_table1.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(ROOT / "examples"))
    spec.loader.exec_module(module)
    return module


def test_trains_as_the_paper_by_default(reproduce):
    args = reproduce.build_parser().parse_args([])  # fixed epochs, last one tested, flips only
    assert (args.val_subjects, args.augment, args.seeds) == (0, "none", 3)
    # The CPU schedule: 1600 steps annealed to 0, so the tested last epoch is settled.
    assert (args.epochs * args.steps_per_epoch, args.lr_schedule) == (1600, "poly")


def test_seeds_zero_is_an_error(reproduce, capsys, tmp_path):
    assert reproduce.main(["--seeds", "0", "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--seeds 0" in err[0] and "--seeds 1 or more" in err[0]
    assert not (tmp_path / "t").exists()


def _fake_run(reproduce, folder, config, rng, beta, offset, challenge=False):
    """One fold's run folder as train_ms.py writes it, from real metrics of random volumes:
    a larger beta gives a more sensitive, less specific prediction. A coarse APR histogram
    (4 mantissa bits) keeps the 30 saved evaluators small."""
    evaluator, subjects, curves = metrics.Evaluator(mantissa_bits=4), [], {}
    for k in range(3):
        truth = rng.random((12, 12, 12)) < 0.05
        score = np.where(truth, rng.normal(0.4 + beta, 0.3, truth.shape),
                         rng.normal(beta - 0.2, 0.3, truth.shape))
        prob = np.clip(score, 0, 1).astype(np.float32)
        one = metrics.Evaluator(mantissa_bits=4)
        result = one.update(truth, prob)
        evaluator.merge(one)
        name = f"s{offset + k}"
        subjects.append({"subject": name, "lesion_voxels": int(truth.sum()),
                         **{m: result[m] for m in metrics.PAPER_METRICS}})
        if challenge:  # a larger beta: more lesions found, larger masks; s0 has no HD95
            subjects[-1].update(lesion_f1=0.5 + beta / 4 + k / 50, volume_difference_ml=beta,
                                hd95_mm=float("nan") if offset + k == 0 else 9 - beta - k)
        precision, recall, _ = one.precision_recall_curve()
        curves[f"{name}/precision"], curves[f"{name}/recall"] = precision, recall
    folder.mkdir(parents=True)
    evaluator.save(folder / "evaluator.npz")
    np.savez_compressed(folder / "subject_curves.npz", **curves)
    (folder / "results.json").write_text(json.dumps({"subjects": subjects, "config": config},
                                                    default=float))


def _fake_reproduction(reproduce, out, settings, seeds, challenge=False):
    args = reproduce.build_parser().parse_args(["--out", str(out)])
    runs = {}
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        for alpha, beta in settings:
            for fold in range(2):
                folder = out / f"seed{seed}" / f"alpha{alpha}_beta{beta}" / f"fold{fold}"
                config = {**vars(args), "alpha": alpha, "beta": beta, "fold": fold,
                          "seed": seed, "out": str(folder)}
                config.pop("settings"), config.pop("seeds")
                _fake_run(reproduce, folder, config, rng, beta, offset=3 * fold,
                          challenge=challenge)
                runs.setdefault((alpha, beta), {}).setdefault(seed, []).append(folder)
    return args, runs


def test_refuses_to_pool_runs_made_with_other_flags(reproduce, tmp_path, capsys):
    out = tmp_path / "table1"
    args, _ = _fake_reproduction(reproduce, out, [(0.5, 0.5)], seeds=1)
    reproduce.check_reproduction(args)  # the same flags: accepted
    started = time.monotonic()
    assert reproduce.main(["--out", str(out), "--epochs", "3", "--lr", "0.01"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot be pooled" in err[0]
    assert "--epochs 16 there, 3 now" in err[0] and "--lr 0.001 there, 0.01 now" in err[0]
    assert time.monotonic() - started < 10  # refused before any training


def test_refuses_runs_on_another_version_of_the_data(reproduce, tmp_path):
    out = tmp_path / "table1"
    args, runs = _fake_reproduction(reproduce, out, [(0.5, 0.5)], seeds=1)
    saved = runs[(0.5, 0.5)][0][1] / "results.json"
    results = json.loads(saved.read_text())
    current = train_cli.dataset_version(args)
    saved.write_text(json.dumps({**results, "versions": {"dataset": current}}))
    reproduce.check_reproduction(args)  # the same version recorded: accepted
    saved.write_text(json.dumps({**results, "versions": {"dataset": "1.0.0"}}))
    with pytest.raises(cli.UsageError, match="cannot be pooled") as refused:
        reproduce.check_reproduction(args)
    assert str(refused.value).count("there") == 1  # the flags are the same
    assert f"ms_lesions/synthetic_realistic_lowres version 1.0.0 there, {current} now" in str(
        refused.value)


def test_mean_sd_over_seeds_and_statistics(reproduce, tmp_path):
    out = tmp_path / "table1"
    _, runs = _fake_reproduction(reproduce, out, reproduce.SETTINGS, seeds=3)
    pooled, subjects, first, sample = reproduce.summarize(runs)
    assert sample == "6 subjects (6 scans)"
    # Mean +- sd by hand: each seed's pooled Evaluator over both folds.
    by_seed = [evaluation.pool_folds(runs[(0.3, 0.7)][seed])[0].result()["dsc"]
               for seed in range(3)]
    assert pooled[(0.3, 0.7)]["dsc"] == pytest.approx(by_seed)
    lines = reproduce.write_table(pooled, out)
    with open(out / "table1.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:5] == ["alpha", "beta", "seeds", "dsc", "dsc_sd"]
    assert float(rows[2]["dsc"]) == pytest.approx(np.mean(by_seed), abs=1e-6)
    assert float(rows[2]["dsc_sd"]) == pytest.approx(np.std(by_seed, ddof=1), abs=1e-6)
    assert statistics.format_mean_sd(by_seed) in lines[4] and "56.42" in lines[4]
    # Subjects: six (three per fold), each averaged over the three seeds first.
    dsc = subjects[(0.3, 0.7)]["dsc"]
    assert sorted(dsc) == [f"s{k}" for k in range(6)]
    seeds_of_s0 = [json.loads((runs[(0.3, 0.7)][seed][0] / "results.json").read_text())
                   ["subjects"][0]["dsc"] for seed in range(3)]
    assert dsc["s0"] == pytest.approx(np.mean(seeds_of_s0))
    text = "\n".join(reproduce.write_statistics(subjects, out, sample))
    assert "paired over 6 subjects (6 scans)" in text
    assert text.count("| dsc |") == 4 and "Holm" in text
    assert "Sensitivity rises with beta: holds here" in text  # built into the fake runs
    saved = json.loads((out / "statistics.json").read_text())
    assert len(saved["against_dice"]) == 12 and len(saved["claims"]) == 5
    panels = reproduce.figure_panels(first)
    assert len(panels) == 3 and all(len(p) == 5 for p in panels.values())


def test_the_challenges_metrics_in_the_table_and_against_dice(reproduce, tmp_path):
    out = tmp_path / "table1"
    _, runs = _fake_reproduction(reproduce, out, [(0.5, 0.5), (0.3, 0.7)], seeds=2,
                                 challenge=True)
    pooled, subjects, _, sample = reproduce.summarize(runs)
    # Each seed's mean over subjects (s0's HD95 is undefined: left out, not zero).
    assert pooled[(0.3, 0.7)]["hd95_mm"] == pytest.approx([9 - 0.7 - 1.2] * 2)
    assert sorted(subjects[(0.3, 0.7)]["hd95_mm"]) == [f"s{k}" for k in range(1, 6)]
    lines = reproduce.write_table(pooled, out)
    assert "hd95_mm (mm: mean +- sd)" in lines[0] and "lesion_f1 (%: mean +- sd)" in lines[0]
    assert "7.10 +- 0.00" in lines[3] and "69.50 +- 0.00" in lines[3]
    with open(out / "table1.csv") as f:
        row = list(csv.DictReader(f))[1]
    assert float(row["volume_difference_ml"]) == pytest.approx(0.7)
    text = "\n".join(reproduce.write_statistics(subjects, out, sample))
    assert "| 0.3, 0.7 | hd95_mm | -0.20 |" in text and "| 5 |" in text  # 5 subjects paired
    assert "| 0.3, 0.7 | lesion_f1 | +5.00 |" in text
    saved = json.loads((out / "statistics.json").read_text())
    assert [c["metric"] for c in saved["challenge_metrics_against_dice"]] == list(
        reproduce.CHALLENGE_METRICS)
    # The paper's claims keep their own family of three: its Holm p-values are unchanged.
    assert len(saved["against_dice"]) == 3


def test_runs_scored_before_the_challenges_metrics_say_so(reproduce, tmp_path):
    out = tmp_path / "table1"
    _, runs = _fake_reproduction(reproduce, out, [(0.5, 0.5)], seeds=1)
    pooled, *_ = reproduce.summarize(runs)
    assert set(pooled[(0.5, 0.5)]) == set(metrics.PAPER_METRICS)
    assert "--rescore" in reproduce.write_table(pooled, out)[-1]


def test_rescore_refuses_a_missing_run_before_any_work(reproduce, tmp_path, capsys):
    out = tmp_path / "table1"
    _fake_reproduction(reproduce, out, [(0.5, 0.5)], seeds=1)
    assert reproduce.main(["--out", str(out), "--rescore", "--settings", "0.5,0.5",
                           "--seeds", "2", "--num-folds", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "seed1" in err[0] and "holds no finished run" in err[0]
    assert not list(out.rglob("rescored"))


@pytest.mark.slow  # 8 tiny trainings: 2 settings x 2 folds x 2 seeds (~1-5 min on 2 cores)
def test_end_to_end_with_two_seeds(reproduce, tiny_data_dir, tmp_path):
    out = tmp_path / "table1"
    argv = TINY + ["--data-dir", tiny_data_dir, "--out", str(out), "--seeds", "2",
                   "--settings", "0.5,0.5", "0.3,0.7"]
    assert reproduce.main(argv) == 0
    with open(out / "table1.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(float(r["alpha"]), float(r["beta"]), int(r["seeds"])) for r in rows] == [
        (0.5, 0.5, 2), (0.3, 0.7, 2)]
    assert len(list(out.glob("seed*/alpha*/fold*/results.json"))) == 8
    assert (out / "fig2.png").read_bytes()[:4] == b"\x89PNG"
    text = (out / "table1.md").read_text()
    assert "56.42" in text and " +- " in text and "beats Dice (0.5, 0.5) on DSC" in text
    assert "Sensitivity rises with beta: not tested" in text  # two settings are no trend
    started = time.monotonic()  # a second call reuses every finished run
    assert reproduce.main(argv) == 0
    assert time.monotonic() - started < 30
    # Scored again with today's metrics: the same models give the same DSC, plus HD95 etc.
    assert reproduce.main(argv + ["--rescore"]) == 0
    for folder in out.glob("seed*/alpha*/fold*"):
        before = json.loads((folder / "results.json").read_text())["subjects"]
        after = json.loads((folder / "rescored" / "evaluation.json").read_text())["subjects"]
        assert [s["dsc"] for s in after] == pytest.approx([s["dsc"] for s in before])
    assert "hd95_mm" in (out / "rescored" / "table1.md").read_text()
