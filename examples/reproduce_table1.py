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

Beside the paper's five metrics the table reports what the MS challenges score: the lesion
F1 of the challenges' detection rule (tfversky.detection), HD95 (mm) and the volume
difference (predicted - reference, mL), each a mean over subjects, compared with Dice as a
second family (Holm-adjusted on its own, so the paper's claims keep their family).

`--rescore` trains nothing: it scores the runs already in --out again with today's metrics
(each run's model on its recorded test split, read from the prepared copy of the dataset
version it was trained on, under --data-dir or the run's own), into each run's `rescored/`
folder, and writes the tables to OUT/rescored/. Use it when the metrics grew after the runs.

alpha weighs false positives, beta false negatives. Outputs in --out: table1.csv (alpha,
beta, seeds, then each metric's mean and sd over seeds: the paper's metrics and lesion F1
as fractions, hd95_mm in mm, volume_difference_ml in mL), table1.md (ours next to the
paper's, in percent; the paired comparison of every setting against Dice over subjects with
bootstrap CIs and Holm-adjusted Wilcoxon p-values; the trend tests; one sentence per claim
of the paper), statistics.json (the same numbers), fig2.png (PR curves of the first seed:
all test data, the highest- and the lowest-lesion-load subject), and one `tfversky train`
run folder per seed, setting and fold (seedS/alphaA_betaB/foldK).
"""

from __future__ import annotations

import argparse
import csv
import json
import pathlib
import sys

from tfversky import arguments, cli, train_cli
from tfversky._files import atomic_write_text

SETTINGS = ((0.5, 0.5), (0.4, 0.6), (0.3, 0.7), (0.2, 0.8), (0.1, 0.9))
# The paper's Table 1 (test set, percent; columns as tfversky.metrics.PAPER_METRICS): MSSEG 2016 data, 15 subjects, 1000 epochs.
PAPER_TABLE1 = {
    (0.5, 0.5): (53.42, 49.85, 99.93, 51.77, 52.57),
    (0.4, 0.6): (54.57, 55.85, 99.91, 55.47, 54.34),
    (0.3, 0.7): (56.42, 56.85, 99.93, 57.32, 56.04),
    (0.2, 0.8): (48.57, 61.00, 99.89, 54.53, 53.31),
    (0.1, 0.9): (46.42, 65.57, 99.87, 56.11, 51.65),
}

# The challenges' scores beside the paper's (evaluation.SUBJECT_SCORES): (unit, scale shown).
CHALLENGE_METRICS = {"lesion_f1": ("points", 100), "hd95_mm": ("mm", 1),
                     "volume_difference_ml": ("mL", 1)}


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
    parser.add_argument("--rescore", action="store_true",
                        help="train nothing: score the finished runs in --out again with "
                             "today's metrics (into each run's rescored/) and write the tables "
                             "to OUT/rescored/")
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
PER_RUN_FLAGS = ("alpha", "beta", "fold", "seed", "settings", "seeds", "rescore") + \
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


def finished_runs(args, out: pathlib.Path) -> dict:
    """``{(alpha, beta): {seed: [fold folders]}}`` of the runs ``--out`` holds for
    ``--settings``, ``--seeds`` and ``--num-folds`` (``UsageError`` naming a missing one)."""
    runs = {setting: {} for setting in args.settings}
    for seed in range(args.seed, args.seed + args.seeds):
        for alpha, beta in args.settings:
            folders = [out / f"seed{seed}" / f"alpha{alpha}_beta{beta}" / f"fold{fold}"
                       for fold in range(args.num_folds)]
            missing = [str(f) for f in folders if not (f / "results.json").exists()]
            if missing:
                raise cli.UsageError(f"--rescore: {missing[0]} holds no finished run: run the "
                                     f"reproduction without --rescore first (or name the "
                                     f"--settings, --seeds and --seed it ran)")
            runs[(alpha, beta)][seed] = folders
    return runs


def check_rescore(runs: dict) -> None:
    """The runs to pool were made with the same flags on the same data (one digest)."""
    folders = [f for by_seed in runs.values() for fs in by_seed.values() for f in fs]
    saved = [json.loads((f / "results.json").read_text()) for f in folders]
    reference = argparse.Namespace(**saved[0]["config"])
    def data(results):  # the dataset each run recorded: name, version and digest
        dataset = results.get("record", {}).get("dataset", {})
        return tuple(dataset.get(k) for k in ("name", "version", "digest"))

    for folder, results in zip(folders[1:], saved[1:]):
        # The versions are compared between the runs here, not with today's dataset.
        differ = train_cli.flags_differing({"config": results["config"]}, reference,
                                           ignore=PER_RUN_FLAGS)
        if data(results) != data(saved[0]):
            differ.append(f"dataset {' '.join(map(str, data(results)))} there, "
                          f"{' '.join(map(str, data(saved[0])))} in {folders[0]}")
        if differ:
            raise cli.UsageError(
                f"--rescore: {folder} and {folders[0]} were made with other flags or data "
                f"({'; '.join(differ)}): they cannot be pooled")


def rescore(folder: pathlib.Path, data_dir=None) -> pathlib.Path:
    """``folder``'s model scored again with today's metrics on its recorded test split, read
    from the prepared copy of the dataset version it was trained on (under ``data_dir``,
    else the run's own --data-dir), into ``folder/rescored`` (the run's files stay as they
    are). An earlier rescore is reused."""
    import tensorflow_datasets as tfds

    from tfversky import data, evaluation

    target = folder / "rescored"
    if (target / evaluation.RESULT_FILE).exists():
        return target
    results = json.loads((folder / "results.json").read_text())
    record, config = results.get("record") or {}, results["config"]
    dataset, split = record.get("dataset", {}), record.get("splits", {}).get("test")
    if not dataset.get("version") or not split:
        raise cli.UsageError(f"--rescore: {folder} carries no run record (made before tfversky "
                             f"recorded one): its data cannot be found again; train it anew")
    data_dir = data_dir or config.get("data_dir") or tfds.core.constants.DATA_DIR
    prepared = pathlib.Path(data_dir).expanduser() / dataset["name"] / dataset["version"]
    if not (prepared / "dataset_info.json").exists():
        raise cli.UsageError(f"--rescore: {folder} was trained on {dataset['name']} "
                             f"{dataset['version']}, not prepared under {data_dir}: give the "
                             f"--data-dir it was trained with")
    builder = tfds.builder_from_directory(str(prepared))
    run_args = argparse.Namespace(**config)
    adapter = train_cli.dataset_adapter(run_args)
    if train_cli.fold_members(run_args, builder, dataset["num_folds"])[1] != dataset["digest"]:
        raise cli.UsageError(f"--rescore: {prepared} holds other scans or folds than {folder} "
                             f"was trained on (digest {dataset['digest']})")
    volumes = adapter.read_split(run_args, builder, split)
    print(f"rescoring {folder} on {dataset['name']} {dataset['version']}, {split}")
    evaluation.evaluate_fold(arguments.load_model_file(str(folder / "model.keras"), "--rescore"),
                             data.iterate_volumes(volumes), target,
                             ignore_index=adapter.describe(builder)[2],
                             total=int(volumes.cardinality()))
    return target


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

    The paper's metrics are pooled over every test voxel of a seed; the challenges' metrics
    (``CHALLENGE_METRICS``) are each seed's mean over subjects (a subject's scans averaged
    first, undefined values such as HD95 of an empty mask left out). Runs scored before
    tfversky had them lack them (their ``lesion_f1`` was the any-overlap F1): then those
    columns are left out (``--rescore`` adds them).

    Returns:
        ``pooled[(alpha, beta)][metric]``: list over seeds; ``subjects[(alpha, beta)][metric]``:
        ``{subject: mean over its scans and the seeds}``; ``first[(alpha, beta)]``: the first
        seed's (evaluator, rows, curves) for the figure; ``"n subjects (m scans)"``.
    """
    from tfversky import evaluation, statistics
    from tfversky.metrics import PAPER_METRICS

    results = {setting: {seed: evaluation.pool_folds(folders)
                         for seed, folders in sorted(by_seed.items())}
               for setting, by_seed in runs.items()}
    rows = [row for by_seed in results.values() for _, scans, _ in by_seed.values()
            for row in scans]
    scored = PAPER_METRICS + tuple(m for m in CHALLENGE_METRICS if all(m in r for r in rows))
    pooled, subjects, first = {}, {}, {}
    for setting, by_seed in results.items():
        first[setting] = by_seed[min(by_seed)]
        pooled[setting] = {m: [r[0].result()[m] for r in by_seed.values()]
                           for m in PAPER_METRICS}
        for m in scored[len(PAPER_METRICS):]:
            pooled[setting][m] = [_subject_mean(scans, m) for _, scans, _ in by_seed.values()]
        subjects[setting] = {
            m: statistics.subject_means((s["subject"], s[m]) for _, per_subject, _ in
                                        by_seed.values() for s in per_subject)
            for m in scored}
    return pooled, subjects, first, statistics.units(rows)


def _subject_mean(rows, metric: str) -> float:
    """The mean over subjects of ``metric`` (each subject's scans averaged first; NaN if no
    subject has a value)."""
    import numpy as np

    from tfversky import statistics

    values = statistics.subject_means((r["subject"], r[metric]) for r in rows).values()
    return float(np.mean(list(values))) if values else float("nan")


def write_table(pooled: dict, out: pathlib.Path) -> list[str]:
    """table1.csv (mean and sd over seeds; fractions, mm and mL) and the Markdown table (the
    paper's metrics and lesion F1 in percent)."""
    import numpy as np

    from tfversky.metrics import PAPER_METRICS
    from tfversky.statistics import format_mean_sd

    columns = [c for c in PAPER_METRICS + tuple(CHALLENGE_METRICS) if c in next(
        iter(pooled.values()))]
    rows = [("alpha", "beta", "seeds") + tuple(n for c in columns for n in (c, f"{c}_sd"))]
    for (alpha, beta), values in pooled.items():
        cells = []
        for c in columns:
            sd = np.std(values[c], ddof=1) if len(values[c]) > 1 else float("nan")
            cells += [f"{np.mean(values[c]):.6f}", f"{sd:.6f}"]
        rows.append((alpha, beta, len(values[columns[0]]), *cells))
    atomic_write_text(out / "table1.csv", "".join(",".join(map(str, r)) + "\n" for r in rows))
    extra = columns[len(PAPER_METRICS):]
    lines = ["| alpha, beta | seeds | " + " | ".join(
        [f"{c} (ours: mean +- sd / paper)" for c in PAPER_METRICS] +
        [f"{c} ({'%' if CHALLENGE_METRICS[c][1] == 100 else CHALLENGE_METRICS[c][0]}: "
         f"mean +- sd)" for c in extra]) + " |", "|---" * (len(columns) + 2) + "|"]
    for (alpha, beta), values in pooled.items():
        paper = PAPER_TABLE1.get((alpha, beta), (float("nan"),) * len(PAPER_METRICS))
        cells = [f"{format_mean_sd(values[c])} / {p:.2f}" for c, p in zip(PAPER_METRICS, paper)]
        cells += [format_mean_sd(values[c], scale=CHALLENGE_METRICS[c][1]) for c in extra]
        lines.append(f"| {alpha}, {beta} | {len(values[columns[0]])} | " + " | ".join(cells)
                     + " |")
    if not extra:
        lines += ["", "Lesion F1 (the challenges' rule), HD95 and the volume difference: not "
                      "in these runs' scores (made before tfversky had them; their lesion_f1 "
                      "was the any-overlap F1); `--rescore` scores the runs again."]
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
        extra = [m for m in CHALLENGE_METRICS if m in subjects[statistics.DICE]]
        if extra:
            lines += _challenge_comparison(subjects, extra, sample, report)
    claims = statistics.paper_claims(subjects)
    lines += ["", f"The paper's claims, tested over {sample}:", ""] + [f"* {c}" for c in claims]
    report["claims"] = claims
    atomic_write_text(out / "statistics.json", json.dumps(report, indent=1))
    return lines


def _challenge_comparison(subjects: dict, names: list, sample: str, report: dict) -> list[str]:
    """The challenges' metrics against Dice: a family of its own (Holm within it), each
    paired over the subjects where the metric is defined for both settings."""
    import dataclasses

    from tfversky import statistics

    comparisons = statistics.compare_settings(subjects, metrics=names, common_subjects=True)
    lines = ["", f"The challenges' metrics against Dice (0.5, 0.5), over {sample} where each "
                 f"is defined (HD95 needs both masks non-empty): lesion F1 in points, HD95 in "
                 f"mm (lower is better), volume difference (predicted - reference) in mL; "
                 f"Holm-adjusted within this family, apart from the paper's claims.", "",
             "| alpha, beta | metric | difference | 95 % CI | Wilcoxon p | Holm p | "
             "subjects |", "|---|---|---|---|---|---|---|"]
    for ((alpha, beta), metric), c in comparisons.items():
        scale = CHALLENGE_METRICS[metric][1]
        lines.append(f"| {alpha}, {beta} | {metric} | {scale * c.difference:+.2f} | "
                     f"[{scale * c.ci_low:+.2f}, {scale * c.ci_high:+.2f}] | {c.p_value:.3g} "
                     f"| {c.p_holm:.3g} | {c.n_subjects} |")
    report["challenge_metrics_against_dice"] = [
        {"alpha": k[0], "beta": k[1], "metric": m, **dataclasses.asdict(c)}
        for (k, m), c in comparisons.items()]
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


def _recorded_folds(out: pathlib.Path) -> int:
    """The number of folds the runs in ``out`` were made with (their run record's)."""
    for path in sorted(out.glob("seed*/alpha*_beta*/fold*/results.json")):
        results = json.loads(path.read_text())
        folds = (results.get("record", {}).get("dataset", {}).get("num_folds")
                 or results["config"].get("num_folds"))
        if folds:
            return int(folds)
    raise cli.UsageError(f"--rescore: {out} holds no finished run of a reproduction: run it "
                         f"without --rescore first, or give the --out it wrote")


def main(argv=None) -> int:
    from tfversky import plotting

    args = build_parser().parse_args(argv)
    out = pathlib.Path(args.out)
    try:
        if args.rescore:
            if args.seeds < 1:
                check_reproduction(args)  # its --seeds error
            args.num_folds = args.num_folds or _recorded_folds(out)
            runs = finished_runs(args, out)
            check_rescore(runs)
            runs = {setting: {seed: [rescore(f, args.data_dir) for f in folders]
                              for seed, folders in by_seed.items()}
                    for setting, by_seed in runs.items()}
            out = out / "rescored"
            out.mkdir(exist_ok=True)
        else:
            train_cli.check_args(args)
            if args.num_folds is None:  # check_args left a user dataset's folds to the dataset
                train_cli.resolve_folds(args, train_cli.dataset_adapter(args).open_dataset(args))
            check_reproduction(args)
            runs = run_all(args, out)
        pooled, subjects, first, sample = summarize(runs)
    except cli.UsageError as error:
        print(f"reproduce_table1.py: error: {error}", file=sys.stderr)
        return 2
    lines = write_table(pooled, out) + write_statistics(subjects, out, sample)
    atomic_write_text(out / "table1.md", "\n".join(lines) + "\n")
    print("\n" + "\n".join(lines))
    plotting.plot_pr_panels(figure_panels(first), out / "fig2.png")
    print(f"\nwritten to {out}: table1.csv, table1.md, statistics.json, fig2.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
