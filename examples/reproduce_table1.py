"""Reproduce the paper's Table 1 and Fig. 2: five (alpha, beta) settings, two-fold CV.

Title: The alpha/beta trade-off of the Tversky loss (Salehi et al. 2017, Table 1, Fig. 2)
Description: trains examples/train_ms.py once per setting and test fold, pools each
    setting's test predictions over the folds (every subject is tested exactly once) and
    writes the table and the PR curves next to the paper's numbers.

    python examples/reproduce_table1.py                       # small CPU setting
    python examples/reproduce_table1.py --dataset ms_lesions/msseg2016 --manual-dir DIR \\
        --epochs 1000 --steps-per-epoch 100 --lr 1e-4 --patch-size 64    # the paper's scale
    python examples/reproduce_table1.py --dataset ms_lesions/nnunet --manual-dir DIR
    python examples/reproduce_table1.py --dataset ms_lesions/bids --manual-dir DIR \\
        --modalities FLAIR,T1w                                           # your own data

Takes every flag of train_ms.py. A setting whose folds already have results in --out is not
trained again, so an interrupted reproduction continues where it stopped.

alpha weighs false positives, beta false negatives. Outputs in --out: table1.csv (columns
alpha, beta, dsc, sensitivity, specificity, f2, apr, as fractions), table1.md (ours next to
the paper's, in percent), fig2.png (PR curves: all test data, the highest- and the
lowest-lesion-load subject), and one train_ms.py run folder per setting and fold.
"""

from __future__ import annotations

import argparse
import csv
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import train_ms  # noqa: E402  (the sibling script)

SETTINGS = ((0.5, 0.5), (0.4, 0.6), (0.3, 0.7), (0.2, 0.8), (0.1, 0.9))
# The paper's Table 1 (test set, percent; columns as tfversky.metrics.PAPER_METRICS): MSSEG 2016 data, 15 subjects, 1000 epochs.
PAPER_TABLE1 = {
    (0.5, 0.5): (53.42, 49.85, 99.93, 51.77, 52.57),
    (0.4, 0.6): (54.57, 55.85, 99.91, 55.47, 54.34),
    (0.3, 0.7): (56.42, 56.85, 99.93, 57.32, 56.04),
    (0.2, 0.8): (48.57, 61.00, 99.89, 54.53, 53.31),
    (0.1, 0.9): (46.42, 65.57, 99.87, 56.11, 51.65),
}


def build_parser():
    parser = train_ms.build_parser()
    parser.prog = "reproduce_table1.py"
    parser.description = (__doc__.splitlines()[0] + ". Every train_ms.py flag applies to each "
                          "run; --alpha, --beta and --fold are set per run.")
    parser.add_argument("--settings", nargs="+", type=_setting, default=list(SETTINGS),
                        metavar="ALPHA,BETA",
                        help="the (alpha, beta) settings to train (default: the paper's five)")
    parser.set_defaults(out="runs/table1", dataset="ms_lesions/synthetic_lowres", patch_size=32,
                        epochs=8, steps_per_epoch=100)
    return parser


def _setting(text: str) -> tuple[float, float]:
    try:
        alpha, beta = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected ALPHA,BETA such as 0.3,0.7, got {text!r}")
    return alpha, beta


def run_setting(args, alpha: float, beta: float, out: pathlib.Path) -> list[pathlib.Path]:
    """Trains and tests every fold of one setting; returns the fold folders."""
    folders = []
    for fold in range(args.num_folds):
        folder = out / f"alpha{alpha}_beta{beta}" / f"fold{fold}"
        folders.append(folder)
        if (folder / "results.json").exists():
            print(f"alpha={alpha}, beta={beta}, test fold {fold}: done before, reusing {folder}")
            continue
        print(f"\n=== alpha={alpha} (FP), beta={beta} (FN), test fold {fold} ===")
        run_args = train_ms.build_parser().parse_args([])
        run_args.__dict__.update({k: v for k, v in vars(args).items() if k != "settings"},
                                 alpha=alpha, beta=beta, fold=fold, out=str(folder))
        train_ms.run(run_args)
    return folders


def pool_folds(folders):
    """One setting's test metrics over all folds, its per-subject results and curves."""
    import numpy as np

    from tfversky import metrics

    evaluator, subjects, curves = None, [], {}
    for folder in folders:
        fold_evaluator = metrics.Evaluator.load(folder / "evaluator.npz")
        evaluator = fold_evaluator if evaluator is None else evaluator.merge(fold_evaluator)
        subjects += json.loads((folder / "results.json").read_text())["subjects"]
        with np.load(folder / "subject_curves.npz") as saved:
            for key in saved.files:
                name, part = key.split("/")
                curves.setdefault(name, {})[part] = saved[key]
    return evaluator, subjects, curves


def write_table(rows, out: pathlib.Path) -> None:
    from tfversky.metrics import PAPER_METRICS as COLUMNS

    with open(out / "table1.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(("alpha", "beta") + COLUMNS)
        for (alpha, beta), values in rows.items():
            writer.writerow([alpha, beta] + [f"{values[k]:.6f}" for k in COLUMNS])
    lines = ["| alpha, beta | " + " | ".join(f"{c} (ours / paper)" for c in COLUMNS) + " |",
             "|---" * (len(COLUMNS) + 1) + "|"]
    for (alpha, beta), values in rows.items():
        paper = PAPER_TABLE1.get((alpha, beta), (float("nan"),) * len(COLUMNS))
        cells = [f"{100 * values[k]:.2f} / {p:.2f}" for k, p in zip(COLUMNS, paper)]
        lines.append(f"| {alpha}, {beta} | " + " | ".join(cells) + " |")
    (out / "table1.md").write_text("\n".join(lines) + "\n")
    print("\n" + "\n".join(lines))


def main(argv=None) -> int:
    from tfversky import plotting

    args = build_parser().parse_args(argv)
    out = pathlib.Path(args.out)
    try:
        train_ms.check_args(args)
        rows, panels = {}, {"(a) all test data": {}}
        loads = None
        for alpha, beta in args.settings:
            folders = run_setting(args, alpha, beta, out)
            evaluator, subjects, curves = pool_folds(folders)
            rows[(alpha, beta)] = evaluator.result()
            label = f"alpha={alpha}, beta={beta}"
            precision, recall, _ = evaluator.precision_recall_curve()
            panels["(a) all test data"][label] = (precision, recall, rows[(alpha, beta)]["apr"])
            if loads is None:  # the same subjects in every setting: pick them once
                by_load = sorted(subjects, key=lambda s: s["lesion_voxels"])
                loads = {"(b) highest lesion load": by_load[-1]["subject"],
                         "(c) lowest lesion load": by_load[0]["subject"]}
            for panel, name in loads.items():
                apr = next(s["apr"] for s in subjects if s["subject"] == name)
                panels.setdefault(f"{panel}: {name}", {})[label] = (
                    curves[name]["precision"], curves[name]["recall"], apr)
    except train_ms.UsageError as error:
        print(f"reproduce_table1.py: error: {error}", file=sys.stderr)
        return 2
    write_table(rows, out)
    plotting.plot_pr_panels(panels, out / "fig2.png")
    print(f"\nwritten to {out}: table1.csv, table1.md, fig2.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
