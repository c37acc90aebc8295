"""Reproduce the paper's Table 1 and Fig. 2: five (alpha, beta) settings, two-fold CV.

Title: The alpha/beta trade-off of the Tversky loss (Salehi et al. 2017, Table 1, Fig. 2)
Description: trains once (tfversky.train_cli, what `tfversky train` and
    examples/train_ms.py run) per setting, test fold and seed, pools each
    setting's test predictions over the folds (every subject is tested exactly once), and
    writes the table (mean +- sd over seeds), the paper's claims tested over subjects, and
    the PR curves, next to the paper's numbers.

    python examples/reproduce_table1.py                       # CPU default: realistic phantom
    python examples/reproduce_table1.py --dataset ms_lesions/msseg2016 --manual-dir DIR \\
        --epochs 1000 --steps-per-epoch 100 --lr 1e-4 --lr-schedule step \\
        --patch-size 64                                                  # the paper's scale
    python examples/reproduce_table1.py --dataset ms_lesions/nnunet --manual-dir DIR
    python examples/reproduce_table1.py --dataset ms_lesions/bids --manual-dir DIR \\
        --modalities FLAIR,T1w                                           # your own data

Takes every flag of `tfversky train`, plus --settings and --seeds (runs per setting and fold,
seeds --seed, --seed + 1, ...). Unlike `tfversky train`, it trains as the paper did by
default: no validation subjects (every training subject trains, the last epoch is tested)
and no augmentation beyond flips; `--val-subjects 0.1 --augment default` turns both on.
Its CPU default trains 16 epochs x 100 steps with the learning rate annealed to 0
(`--lr-schedule poly`): the paper's step decay over 1000 epochs is `--lr-schedule step`.
A run that already has results in --out is not trained again, so an interrupted
reproduction continues where it stopped; a folder holding runs made with other flags, or
on another version of the dataset, is refused (their results cannot be pooled).

alpha weighs false positives, beta false negatives. Outputs in --out: table1.csv (alpha,
beta, seeds, then each metric's mean and sd over seeds, as fractions), table1.md (ours next
to the paper's, in percent; the paired comparison of every setting against Dice over
subjects with bootstrap CIs and Holm-adjusted Wilcoxon p-values; the trend tests; one
sentence per claim of the paper), statistics.json (the same numbers), fig2.png (PR curves
of the first seed: all test data, the highest- and the lowest-lesion-load subject), and one
`tfversky train` run folder per seed, setting and fold (seedS/alphaA_betaB/foldK).
"""

from __future__ import annotations

import argparse
import csv
import json
import pathlib
import sys

from tfversky import arguments, cli, train_cli

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
    parser = train_cli.build_parser("reproduce_table1.py")
    parser.description = (__doc__.splitlines()[0] + ". Every tfversky train flag applies to each "
                          "run; --alpha, --beta and --fold are set per run.")
    parser.add_argument("--settings", nargs="+", type=_setting, default=list(SETTINGS),
                        metavar="ALPHA,BETA",
                        help="the (alpha, beta) settings to train (default: the paper's five)")
    parser.add_argument("--seeds", type=int, default=3,
                        help="training runs per setting and fold, with seeds --seed, --seed + 1, "
                             "... (>= 1; mean +- sd and the tests over subjects use them all)")
    # The paper's protocol: a fixed number of epochs, the last one tested, no augmentation
    # (Salehi et al. 2017, section 2.3). On the CPU, 1600 steps keep 30 runs within about
    # 90 minutes, and the poly schedule makes the last epoch a settled model for that length
    # (the paper's step decay is --lr-schedule step).
    parser.set_defaults(out="runs/table1", dataset="ms_lesions/synthetic_realistic_lowres",
                        patch_size=32, epochs=16, steps_per_epoch=100, lr_schedule="poly",
                        val_subjects=0, augment="none")
    return parser


def _setting(text: str) -> tuple[float, float]:
    try:
        alpha, beta = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected ALPHA,BETA such as 0.3,0.7, got {text!r}")
    try:  # the loss's own rule, as for --alpha and --beta
        return arguments.tversky_weights(alpha, beta)
    except arguments.InvalidArgument as error:
        raise argparse.ArgumentTypeError(f"{error.name}: expected {error.expected}, got "
                                         f"{text!r}") from None


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
        run_args = train_cli.build_parser().parse_args([])
        run_args.__dict__.update({k: v for k, v in vars(args).items()
                                  if k not in ("settings", "seeds")},
                                 alpha=alpha, beta=beta, fold=fold, out=str(folder))
        train_cli.run(run_args)
    return folders


# Flags that differ between the runs of one reproduction, and those that cannot change a run.
PER_RUN_FLAGS = ("alpha", "beta", "fold", "seed", "settings", "seeds") + \
    train_cli.OUTPUT_ONLY_FLAGS


def check_reproduction(args) -> None:
    """``--seeds`` >= 1, and no run in ``--out`` made with other flags or another version of
    the data (never pool those)."""
    if args.seeds < 1:
        raise cli.UsageError(f"--seeds {args.seeds}: each setting and fold needs at least "
                                  f"one training run; use --seeds 1 or more (3 for mean +- sd)")
    for path in sorted(pathlib.Path(args.out).glob("seed*/alpha*_beta*/fold*/results.json")):
        differ = train_cli.flags_differing(json.loads(path.read_text()), args,
                                           ignore=PER_RUN_FLAGS)
        if differ:
            raise cli.UsageError(
                f"{path.parent} holds a run made with other flags or data "
                f"({'; '.join(differ)}): such runs cannot be pooled into one table. Use "
                f"another --out, or the flags and data of that run.")


def run_all(args, out: pathlib.Path) -> dict:
    """Trains every seed, setting and fold (seed by seed, so a partial run has whole tables).

    Returns ``{(alpha, beta): {seed: [fold folders]}}``.
    """
    runs = {setting: {} for setting in args.settings}
    for seed in range(args.seed, args.seed + args.seeds):
        seed_args = argparse.Namespace(**{**vars(args), "seed": seed})
        for alpha, beta in args.settings:
            runs[(alpha, beta)][seed] = run_setting(seed_args, alpha, beta, out / f"seed{seed}")
    return runs


def summarize(runs: dict) -> tuple[dict, dict, dict, str]:
    """Pools folds per seed; returns per-seed pooled metrics, subject means, Fig. 2 data and
    the sample the tests pair over.

    Returns:
        ``pooled[(alpha, beta)][metric]``: list over seeds; ``subjects[(alpha, beta)][metric]``:
        ``{subject: mean over its scans and the seeds}``; ``first[(alpha, beta)]``: the first
        seed's (evaluator, rows, curves) for the figure; ``"n subjects (m scans)"``.
    """
    from tfversky import evaluation, statistics
    from tfversky.metrics import PAPER_METRICS

    pooled, subjects, first, rows = {}, {}, {}, []
    for setting, by_seed in runs.items():
        results = {seed: evaluation.pool_folds(folders)
                   for seed, folders in sorted(by_seed.items())}
        rows += [row for _, scans, _ in results.values() for row in scans]
        first[setting] = results[min(results)]
        pooled[setting] = {m: [r[0].result()[m] for r in results.values()]
                           for m in PAPER_METRICS}
        subjects[setting] = {
            m: statistics.subject_means((s["subject"], s[m]) for _, per_subject, _ in
                                        results.values() for s in per_subject)
            for m in PAPER_METRICS}
    return pooled, subjects, first, statistics.units(rows)


def write_table(pooled: dict, out: pathlib.Path) -> list[str]:
    """table1.csv (mean and sd over seeds, fractions) and the Markdown table (percent)."""
    import numpy as np

    from tfversky.metrics import PAPER_METRICS as COLUMNS
    from tfversky.statistics import format_mean_sd

    with open(out / "table1.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(("alpha", "beta", "seeds") + tuple(
            name for c in COLUMNS for name in (c, f"{c}_sd")))
        for (alpha, beta), values in pooled.items():
            cells = []
            for c in COLUMNS:
                sd = np.std(values[c], ddof=1) if len(values[c]) > 1 else float("nan")
                cells += [f"{np.mean(values[c]):.6f}", f"{sd:.6f}"]
            writer.writerow([alpha, beta, len(values[COLUMNS[0]])] + cells)
    lines = ["| alpha, beta | seeds | " + " | ".join(f"{c} (ours: mean +- sd / paper)"
                                                    for c in COLUMNS) + " |",
             "|---" * (len(COLUMNS) + 2) + "|"]
    for (alpha, beta), values in pooled.items():
        paper = PAPER_TABLE1.get((alpha, beta), (float("nan"),) * len(COLUMNS))
        cells = [f"{format_mean_sd(values[c])} / {p:.2f}" for c, p in zip(COLUMNS, paper)]
        lines.append(f"| {alpha}, {beta} | {len(values[COLUMNS[0]])} | " + " | ".join(cells)
                     + " |")
    return lines


def write_statistics(subjects: dict, out: pathlib.Path, sample: str = "subjects") -> list[str]:
    """The paired comparison against Dice, the trend tests and the claims (Markdown lines),
    over ``sample`` (``"n subjects (m scans)"``)."""
    import dataclasses

    from tfversky import statistics

    lines, report = [], {"unit": "subject (each subject's metric averaged over its scans and "
                                 "the seeds first)", "sample": sample}
    if statistics.DICE in subjects and len(subjects) > 1:
        comparisons = statistics.compare_settings(subjects)
        lines += ["", f"Each setting against Dice (0.5, 0.5), paired over {sample} (a "
                      f"subject's scans and seeds averaged first): mean difference in points, "
                      f"95 % bootstrap CI over subjects, Wilcoxon signed-rank p, Holm-adjusted "
                      f"over the whole table.", "",
                  "| alpha, beta | metric | difference | 95 % CI | Wilcoxon p | Holm p | "
                  "subjects |", "|---|---|---|---|---|---|---|"]
        for ((alpha, beta), metric), c in comparisons.items():
            lines.append(f"| {alpha}, {beta} | {metric} | {100 * c.difference:+.2f} | "
                         f"[{100 * c.ci_low:+.2f}, {100 * c.ci_high:+.2f}] | {c.p_value:.3g} "
                         f"| {c.p_holm:.3g} | {c.n_subjects} |")
        report["against_dice"] = [{"alpha": k[0], "beta": k[1], "metric": m,
                                   **dataclasses.asdict(c)} for (k, m), c in comparisons.items()]
    claims = statistics.paper_claims(subjects)
    lines += ["", f"The paper's claims, tested over {sample}:", ""] + [f"* {c}" for c in claims]
    report["claims"] = claims
    (out / "statistics.json").write_text(json.dumps(report, indent=1))
    return lines


def _scan(row: dict) -> str:
    return row.get("scan_id") or row["subject"]  # rows of runs saved before scan ids


def figure_panels(pooled_first: dict) -> dict:
    """Fig. 2's three panels from each setting's first seed: all data, highest, lowest load."""
    panels, loads = {"(a) all test data": {}}, None
    for (alpha, beta), (evaluator, subjects, curves) in pooled_first.items():
        label = f"alpha={alpha}, beta={beta}"
        precision, recall, _ = evaluator.precision_recall_curve()
        panels["(a) all test data"][label] = (precision, recall, evaluator.result()["apr"])
        if loads is None:  # the same subjects in every setting: pick them once
            by_load = sorted(subjects, key=lambda s: s["lesion_voxels"])
            loads = {"(b) highest lesion load": _scan(by_load[-1]),
                     "(c) lowest lesion load": _scan(by_load[0])}
        for panel, name in loads.items():
            apr = next(s["apr"] for s in subjects if _scan(s) == name)
            panels.setdefault(f"{panel}: {name}", {})[label] = (
                curves[name]["precision"], curves[name]["recall"], apr)
    return panels


def main(argv=None) -> int:
    from tfversky import plotting

    args = build_parser().parse_args(argv)
    out = pathlib.Path(args.out)
    try:
        train_cli.check_args(args)
        if args.num_folds is None:  # check_args left a user dataset's folds to the dataset
            train_cli.resolve_folds(args, train_cli.dataset_adapter(args).open_dataset(args))
        check_reproduction(args)
        pooled, subjects, first, sample = summarize(run_all(args, out))
    except cli.UsageError as error:
        print(f"reproduce_table1.py: error: {error}", file=sys.stderr)
        return 2
    lines = write_table(pooled, out) + write_statistics(subjects, out, sample)
    (out / "table1.md").write_text("\n".join(lines) + "\n")
    print("\n" + "\n".join(lines))
    plotting.plot_pr_panels(figure_panels(first), out / "fig2.png")
    print(f"\nwritten to {out}: table1.csv, table1.md, statistics.json, fig2.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
