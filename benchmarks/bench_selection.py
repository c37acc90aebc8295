"""Which model and which operating point test better: the last epoch, the best validated
one, or the best of the smoothed validation curve; the threshold and minimum lesion volume
chosen on validation, or 0.5 and none (issue 22).

    python benchmarks/bench_selection.py --seeds 0 1 2 --out runs/selection

One `tfversky train` per seed (every default but `--select last --operating-point
lesion_f1`, so that model.keras is the last epoch with the operating point chosen for it)
keeps the model of every rule: best.keras, ema.keras and last.keras. Each is then
scored on the test fold with `tfversky evaluate` at 0.5 and no minimum (`--threshold 0.5
--min-lesion-volume 0`), and model.keras (the last epoch) at the operating point its plan
carries. With `--criteria dsc f2`, the last epoch is also scored at the operating point
each other criterion chooses on the same validation subjects (`operating_point.choose`,
as `tfversky train --operating-point` would). The default data are the realistic phantom
with its unseen 1.5 T centre as the test fold
(`ms_lesions/synthetic_realistic_by_centre_lowres --fold 3`); any `tfversky train` flag
after `--` replaces them. Runs live in OUT/seed{S}; finished runs and evaluations are
reused. Prints the test scores per seed and row, and their mean.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import subprocess
import sys

METRICS = ("dsc", "sensitivity", "f2", "apr", "lesion_f1")
DATA = ["--dataset", "ms_lesions/synthetic_realistic_by_centre_lowres", "--fold", "3"]
AT_DEFAULTS = ["--threshold", "0.5", "--min-lesion-volume", "0"]
# (row, model file, evaluate flags): the operating point at 0.5, and the plan's.
ROWS = (("last", "last.keras", AT_DEFAULTS), ("best", "best.keras", AT_DEFAULTS),
        ("ema", "ema.keras", AT_DEFAULTS), ("last + operating point", "model.keras", []))


def tfversky(*argv) -> None:
    subprocess.run([sys.executable, "-m", "tfversky", *argv], check=True)


def choose_on_validation(run: pathlib.Path, criteria, data_dir) -> dict:
    """``{criterion: operating_point.choose(...)}`` for the last epoch of ``run``, on the
    validation subjects its record names (saved as operating_points.json)."""
    saved = run / "operating_points.json"
    chosen = json.loads(saved.read_text()) if saved.exists() else {}
    if all(c in chosen for c in criteria):
        return chosen
    import keras
    import tensorflow_datasets as tfds

    import tfds_ms  # noqa: F401  (registers ms_lesions)
    from tfversky import data, inference, operating_point, plan as plan_lib

    model = keras.models.load_model(run / "last.keras")
    model_plan = plan_lib.read_plan(model)
    record = model_plan.record
    validation = set(record["splits"]["validation_subjects"])
    split = tfds.builder(record["dataset"]["name"], data_dir=data_dir).as_dataset(
        split=record["splits"]["train"])
    scored = [{"probabilities": inference.segment_on_grid(model, v["image"], model_plan),
               "label": v["label"], "subject": v["subject"]}
              for v in data.iterate_volumes(split) if v["subject"] in validation]
    for criterion in criteria:
        chosen[criterion] = operating_point.choose(scored, criterion, model_plan.grid.spacing)
    saved.write_text(json.dumps(chosen, indent=1))
    return chosen


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="runs/selection")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--criteria", nargs="*", default=[],
                        help="other --operating-point criteria to test on the last epoch")
    parser.add_argument("train_flags", nargs="*", help="after --: tfversky train flags")
    args = parser.parse_args(argv)
    data_dir = ["--data-dir", args.data_dir] if args.data_dir else []
    table, rows = {}, [row for row, _, _ in ROWS]
    for seed in args.seeds:
        run = pathlib.Path(args.out) / f"seed{seed}"
        if not (run / "results.json").exists():
            tfversky("train", *(args.train_flags or DATA), *data_dir, "--select", "last",
                     "--operating-point", "lesion_f1", "--seed", str(seed), "--verbose", "2",
                     "--out", str(run))
        results = json.loads((run / "results.json").read_text())
        epochs = {rule: chosen["epoch"] for rule, chosen in
                  results["selection"]["rules"].items()}
        jobs = list(ROWS)
        for criterion, chosen in choose_on_validation(run, args.criteria,
                                                      args.data_dir).items():
            jobs.append((f"last + operating point ({criterion})", "last.keras", [
                "--threshold", str(chosen["threshold"]), "--min-lesion-volume",
                str(chosen["min_lesion_mm3"])]))
            print(f"seed {seed}, {criterion}: {chosen['threshold']:g} / "
                  f"{chosen['min_lesion_mm3']:g} mm^3")
        for row, model, flags in jobs:
            rows += [row] if row not in rows else []
            rule = row.split()[0]
            # A rule that chose the last epoch holds the last epoch's weights: scored once.
            same = "last" if rule != "last" and epochs[rule] == epochs["last"] else rule
            name = row.split("(")[-1].rstrip(")") if "(" in row else (
                model.removesuffix(".keras") if same == rule else same)
            scored = run / f"test_{name}"
            if not (scored / "evaluation.json").exists():
                tfversky("evaluate", "--model", str(run / model), *data_dir, *flags,
                         "--out", str(scored), "--overwrite")
            pooled = json.loads((scored / "evaluation.json").read_text())["pooled"]
            table[seed, row] = {"epoch": epochs[rule], **{m: pooled[m] for m in METRICS}}
        point = results["operating_point"]
        print(f"seed {seed}: operating point {point['threshold']:g} / "
              f"{point['min_lesion_mm3']:g} mm^3 ({point.get('reason') or point['criterion']})")
    print("\n| seed | model | epoch | " + " | ".join(METRICS) + " |")
    print("|---|---|---|" + "---|" * len(METRICS))
    for (seed, row), scores in table.items():
        print(f"| {seed} | {row} | {scores['epoch']} | " +
              " | ".join(f"{100 * scores[m]:.2f}" for m in METRICS) + " |")
    for row in rows:
        means = [statistics.mean(table[s, row][m] for s in args.seeds) for m in METRICS]
        print(f"| mean | {row} | | " + " | ".join(f"{100 * v:.2f}" for v in means) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
