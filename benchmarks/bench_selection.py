"""Which model and which operating point test better: the last epoch, the best validated
one, or the best of the smoothed validation curve; the threshold and minimum lesion volume
chosen on validation, or 0.5 and none (issue 22).

    python benchmarks/bench_selection.py --seeds 0 1 2 --out runs/selection

One `tfversky train` per seed (every default but `--select last`, so that model.keras is
the last epoch and the operating point is chosen for it) keeps the model of every rule:
best.keras, ema.keras and last.keras. Each is then scored on the test fold with
`tfversky evaluate` at 0.5 and no minimum (`--threshold 0.5 --min-lesion-volume 0`), and
model.keras (the last epoch) also at the operating point its plan carries. The default
data are the realistic phantom with its unseen 1.5 T centre as the test fold
(`ms_lesions/synthetic_realistic_by_centre_lowres --fold 3`); any `tfversky train` flag
after `--` replaces them. Runs live in OUT/seed{S}; finished runs and evaluations are
reused. Prints the test scores per seed and rule, and their mean.
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
# (row, model file, evaluate flags): the operating point at 0.5, and the plan's.
ROWS = (("last", "last.keras", ["--threshold", "0.5", "--min-lesion-volume", "0"]),
        ("best", "best.keras", ["--threshold", "0.5", "--min-lesion-volume", "0"]),
        ("ema", "ema.keras", ["--threshold", "0.5", "--min-lesion-volume", "0"]),
        ("last + operating point", "model.keras", []))


def tfversky(*argv) -> None:
    subprocess.run([sys.executable, "-m", "tfversky", *argv], check=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="runs/selection")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("train_flags", nargs="*", help="after --: tfversky train flags")
    args = parser.parse_args(argv)
    data_dir = ["--data-dir", args.data_dir] if args.data_dir else []
    table = {}
    for seed in args.seeds:
        run = pathlib.Path(args.out) / f"seed{seed}"
        if not (run / "results.json").exists():
            tfversky("train", *(args.train_flags or DATA), *data_dir, "--select", "last",
                     "--seed", str(seed), "--verbose", "2", "--out", str(run))
        results = json.loads((run / "results.json").read_text())
        epochs = {rule: chosen["epoch"] for rule, chosen in
                  results["selection"]["rules"].items()}
        for row, model, flags in ROWS:
            rule = row.split()[0]
            # A rule that chose the last epoch holds the last epoch's weights: scored once.
            same = "last" if rule != "last" and epochs[rule] == epochs["last"] else rule
            scored = run / f"test_{model.removesuffix('.keras') if same == rule else same}"
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
    for row, _, _ in ROWS:
        means = [statistics.mean(table[s, row][m] for s in args.seeds) for m in METRICS]
        print(f"| mean | {row} | | " + " | ".join(f"{100 * v:.2f}" for v in means) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
