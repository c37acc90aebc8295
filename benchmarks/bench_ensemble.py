"""What a fold ensemble and test-time mirroring buy on subjects no model saw: one model vs
the same with --tta vs the fold ensemble vs the ensemble with --tta (issue 23).

    R=runs/ensemble; D="--dataset ms_lesions/synthetic_realistic_by_centre_lowres \\
        --patch-size 32 --epochs 6 --steps-per-epoch 100"
    tfversky train $D --seed 0 --folds all --holdout-fold 3 --out $R/cv_seed0
    tfversky train $D --seed 0 --fold 3 --out $R/single_seed0      # optional
    python benchmarks/bench_ensemble.py --root $R --seeds 0 --out $R/ensemble.json

``ROOT/cv_seedS`` is a ``tfversky train --folds`` run with a holdout fold (every member
trained on the other folds but its own test fold; none on the holdout); ``ROOT/single_seedS``
(optional) one model trained on every fold but the holdout, tested on it. Each model is
scored on the holdout fold's subjects on the reference grid (``inference.segment_on_grid``,
the stage ``tfversky predict`` and ``evaluate`` share), alone and with ``tta`` (the eight
mirrorings, batched), as soon as it has finished (its passes are kept beside it, so running
this again while a cross-validation trains measures the new members only). The ensemble's
probabilities are its members' mean (what ``segment_on_grid`` computes with the list of
members: checked on the first subject), so they reuse the members' passes, and its time per
case is the sum of theirs. Scores, pooled over the test subjects: DSC and APR
(``metrics.Evaluator``), the MSSEG challenges' lesion F1 (``tfversky.detection``), and
HD95 (mean over subjects, mm on the grid), at each plan's threshold; and the seconds per
case. Refuses a run whose members trained on the holdout fold.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import numpy as np

from tfversky import arguments, data, evaluation, inference, metrics, plan as plan_lib
from tfversky import train_cli


def _members(cv: pathlib.Path) -> tuple[list[pathlib.Path], str, bool]:
    """The finished members of a ``--folds`` run, its holdout split, and whether every fold
    has finished; refuses members that trained on the holdout fold."""
    finished = [p / "model.keras" for _, p in sorted(train_cli.fold_folders(cv).items())
                if (p / "results.json").exists()]
    if not finished:
        raise SystemExit(f"{cv}: no finished fold yet")
    holdout = json.loads((finished[0].parent / "results.json").read_text())["config"][
        "holdout_fold"]
    if holdout is None:
        raise SystemExit(f"{cv}: no --holdout-fold, so every subject trained some member")
    for path in finished:
        if f"fold{holdout}" in plan_lib.read_plan(path).record["splits"]["train"].split("+"):
            raise SystemExit(f"{path} trained on fold{holdout}")
    complete = (cv / "results.json").exists() and json.loads(
        (cv / "results.json").read_text())["cross_validation"]["complete"]
    return finished, f"fold{holdout}", complete


def _volumes(run: pathlib.Path, split: str) -> list[dict]:
    """The test volumes of ``split``, read as the run's own flags read its data."""
    config = json.loads((run / "results.json").read_text())["config"]
    args = argparse.Namespace(**config)
    adapter = train_cli.dataset_adapter(args)
    builder = adapter.open_dataset(args)
    return list(data.iterate_volumes(adapter.read_split(args, builder, split)))


def _scores(volumes, probabilities, threshold) -> dict:
    evaluator, cases = metrics.Evaluator(threshold), []
    for volume, prob in zip(volumes, probabilities):
        truth = np.asarray(volume["label"]) == 1
        evaluator.update(truth, prob)
        case, _ = metrics.case_scores(truth, prob >= threshold,
                                      evaluation.voxel_spacing(volume["grid_affine"]))
        cases.append(case)
    summary = metrics.summarize_cases(cases)
    pooled = evaluator.result()
    return {"dsc": pooled["dsc"], "lesion_f1": summary["pooled"]["lesion_f1"],
            "apr": pooled["apr"], "hd95_mm": summary["mean"]["hd95_mm"]}


def _predict(path: pathlib.Path, volumes, tta, batch_size):
    """(probabilities per volume, seconds per volume) of the model at ``path``, kept in
    ``passes_tta.npz`` / ``passes.npz`` beside it: a member is measured once, as soon as it
    has finished, and the ensembles reuse its passes."""
    cache = path.parent / ("passes_tta.npz" if tta else "passes.npz")
    if cache.exists():
        with np.load(cache) as saved:
            return list(saved["probabilities"]), list(saved["seconds"])
    model, model_plan = arguments.load_model_file(str(path)), plan_lib.read_plan(path)
    probabilities, seconds = [], []
    for volume in volumes:
        start = time.perf_counter()
        probabilities.append(inference.segment_on_grid(model, volume["image"], model_plan,
                                                       tta=tta, batch_size=batch_size))
        seconds.append(time.perf_counter() - start)
    np.savez_compressed(cache, probabilities=np.stack(probabilities), seconds=seconds)
    return probabilities, seconds


def _mean_of_members(member_runs):
    """The ensemble's probabilities per volume (the members' mean) and seconds per case (the
    sum of the members')."""
    probabilities = [np.mean(each, axis=0) for each in zip(*(p for p, _ in member_runs))]
    return probabilities, float(sum(np.mean(s) for _, s in member_runs))


def measure_seed(root: pathlib.Path, seed: int, batch_size: int, tta: bool = True,
                 save=lambda measured: None, finished_members: bool = False) -> dict:
    """Every configuration's scores on the holdout fold (the ensembles once every fold has
    finished, or with ``finished_members`` of the finished folds, 2 or more);
    ``save(partial result)`` after each group, so a stopped measurement keeps what it
    finished."""
    cv = root / f"cv_seed{seed}"
    paths, split, complete = _members(cv)
    complete = complete or finished_members and len(paths) > 1
    volumes = _volumes(paths[0].parent, split)
    plans = [plan_lib.read_plan(p) for p in paths]
    rows = {}
    result = {"split": split, "subjects": len(volumes), "members": [str(p) for p in paths],
              "rows": rows}
    for mirrored in (False, True) if tta else (False,):
        runs = [_predict(p, volumes, mirrored, batch_size) for p in paths]
        suffix = " + tta" if mirrored else ""
        for path, model_plan, (probabilities, seconds) in zip(paths, plans, runs):
            rows[f"member {path.parent.name}{suffix}"] = {
                **_scores(volumes, probabilities, model_plan.threshold),
                "seconds_per_case": float(np.mean(seconds))}
        if complete:
            shared = inference.ensemble_plan(plans)
            probabilities, seconds = _mean_of_members(runs)
            if not mirrored:  # what the ensemble path computes, on the first subject
                models = [arguments.load_model_file(str(p)) for p in paths]
                np.testing.assert_allclose(
                    inference.segment_on_grid(models, volumes[0]["image"], shared,
                                              batch_size=batch_size),
                    probabilities[0], atol=1e-5)
            rows[f"ensemble{suffix}"] = {**_scores(volumes, probabilities, shared.threshold),
                                         "seconds_per_case": seconds}
        save(result)
    single = root / f"single_seed{seed}" / "model.keras"
    if single.exists():
        trained = plan_lib.read_plan(single).record["splits"]
        if trained["test"] != split:
            raise SystemExit(f"{single} was tested on {trained['test']}, not {split}")
        for mirrored in (False, True) if tta else (False,):
            probabilities, seconds = _predict(single, volumes, mirrored, batch_size)
            rows["single (all folds)" + (" + tta" if mirrored else "")] = {
                **_scores(volumes, probabilities, plan_lib.read_plan(single).threshold),
                "seconds_per_case": float(np.mean(seconds))}
            save(result)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="folder of cv_seedS (and single_seedS)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--batch-size", type=int, default=4,
                        help="windows per model call (x8 with tta)")
    parser.add_argument("--no-tta", action="store_true", help="skip the mirrored passes")
    parser.add_argument("--finished-members", action="store_true",
                        help="ensemble the folds finished so far (2 or more) of a "
                             "cross-validation that has not run every fold")
    parser.add_argument("--out", required=True, help="JSON of every seed's rows")
    args = parser.parse_args(argv)
    root = pathlib.Path(args.root)
    out = pathlib.Path(args.out)
    measured = json.loads(out.read_text()) if out.exists() else {}  # other seeds kept
    for seed in args.seeds:
        def save(result, seed=seed):
            measured[str(seed)] = result
            out.write_text(json.dumps(measured, indent=2))

        measure_seed(root, seed, args.batch_size, tta=not args.no_tta, save=save,
                     finished_members=args.finished_members)
        print(f"seed {seed}: {measured[str(seed)]['subjects']} subjects of "
              f"{measured[str(seed)]['split']}")
        print("| configuration | DSC | lesion F1 | APR | HD95 (mm) | s/case |\n"
              "|---|---|---|---|---|---|")
        for name, row in measured[str(seed)]["rows"].items():
            print(f"| {name} | {100 * row['dsc']:.2f} | {100 * row['lesion_f1']:.2f} | "
                  f"{100 * row['apr']:.2f} | {row['hd95_mm']:.2f} | "
                  f"{row['seconds_per_case']:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
