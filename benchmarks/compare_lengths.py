"""Do the paper's claims depend on the training length? Two finished Table 1 reproductions
that differ only in their number of steps, compared over the same subjects (issue 21, item 4).

    python benchmarks/compare_lengths.py /work/runs/length/x1 /work/runs/length/x4 \\
        --settings 0.5,0.5 0.3,0.7

SHORT and LONG are `examples/reproduce_table1.py --out` folders (their runs, or the
`rescored/` copy of a run where `--rescore` made one: today's metrics). They must hold the
same settings, seeds, folds and data, made with the same flags but --epochs and
--steps-per-epoch; anything else is refused, naming it. Prints, in Markdown:

1. each setting against Dice at each length (DSC, sensitivity, F2, APR as one Holm family;
   lesion F1, HD95, volume difference as another, as `reproduce_table1.py` does), and whether
   the sign or the significance (Holm p < 0.05) changes with the length;
2. what the length changes for each setting (LONG - SHORT, paired over subjects, Holm over
   the table): how far the shorter schedule is from converged.

The subject is the unit: each subject's scans and seeds are averaged first.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "examples"))

import reproduce_table1  # noqa: E402
from tfversky import statistics, train_cli  # noqa: E402
from tfversky.arguments import UsageError  # noqa: E402

PAPER = ("dsc", "sensitivity", "f2", "apr")
CHALLENGE = tuple(reproduce_table1.CHALLENGE_METRICS)
LENGTH_FLAGS = ("epochs", "steps_per_epoch")
ALPHA = 0.05


def steps(folder: pathlib.Path) -> int:
    """The training steps of the runs in a reproduction folder (their recorded config)."""
    config = json.loads(next(folder.glob("seed*/alpha*_beta*/fold*/results.json"))
                        .read_text())["config"]
    return int(config["epochs"]) * int(config["steps_per_epoch"])


def subject_means(folder: pathlib.Path, settings, seeds) -> tuple[dict, str, dict]:
    """``{setting: {metric: {subject: mean}}}`` of a reproduction, its sample and the first
    run's results (for the check that both lengths are the same experiment)."""
    folds = len(list(folder.glob(f"seed{min(seeds)}/alpha{settings[0][0]}_beta"
                                 f"{settings[0][1]}/fold*")))
    args = argparse.Namespace(settings=settings, seed=min(seeds), seeds=len(seeds),
                              num_folds=folds)
    if not folds:
        raise UsageError(f"{folder} holds no run of alpha={settings[0][0]}, beta="
                         f"{settings[0][1]}, seed {min(seeds)}: give a reproduction's --out")
    runs = reproduce_table1.finished_runs(args, folder)
    reproduce_table1.check_rescore(runs)  # one reproduction: same flags, same data
    scored = {setting: {seed: [f / "rescored" if (f / "rescored" / "evaluation.json").exists()
                               else f for f in folders] for seed, folders in by_seed.items()}
              for setting, by_seed in runs.items()}
    _, subjects, _, sample = reproduce_table1.summarize(scored)
    first = next(iter(next(iter(runs.values())).values()))[0]
    return subjects, sample, json.loads((first / "results.json").read_text())


def check_same_experiment(short: dict, long: dict) -> None:
    """The two lengths differ in --epochs / --steps-per-epoch only, on the same data."""
    differ = train_cli.flags_differing(
        {"config": long["config"]}, argparse.Namespace(**short["config"]),
        ignore=reproduce_table1.PER_RUN_FLAGS + LENGTH_FLAGS)
    data = [r.get("record", {}).get("dataset", {}).get("digest") for r in (short, long)]
    if data[0] != data[1]:
        differ.append(f"data digest {data[1]} there, {data[0]} here")
    if differ:
        raise UsageError(f"LONG differs from SHORT in more than its length (there: LONG, now: "
                         f"SHORT; {'; '.join(differ)}): the comparison would mix two experiments")


def against_dice(subjects: dict) -> dict:
    """``{(setting, metric): Comparison}``: the paper's metrics as one Holm family, the
    challenges' (paired where defined) as another."""
    found = [m for m in CHALLENGE if m in subjects[statistics.DICE]]
    return {**statistics.compare_settings(subjects, metrics=PAPER),
            **statistics.compare_settings(subjects, metrics=found, common_subjects=True)}


def scale(metric: str) -> float:
    return reproduce_table1.CHALLENGE_METRICS.get(metric, ("points", 100))[1]


def describe(c) -> str:
    return (f"{c.difference:+.2f} [{c.ci_low:+.2f}, {c.ci_high:+.2f}], Holm {c.p_holm:.2g}"
            if c else "")


def scaled(c, factor: float):
    return dataclasses.replace(c, difference=factor * c.difference, ci_low=factor * c.ci_low,
                               ci_high=factor * c.ci_high)


def verdict(short, long) -> str:
    """Whether a comparison's sign or its significance changed with the length."""
    significant = [c.p_holm < ALPHA for c in (short, long)]
    signs = [(c.difference > 0) - (c.difference < 0) for c in (short, long)]
    changes = (["sign"] if signs[0] != signs[1] else []) + (
        ["significance"] if significant[0] != significant[1] else [])
    return ("changes: " + " and ".join(changes)) if changes else "same"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("short", type=pathlib.Path, help="the shorter reproduction's --out")
    parser.add_argument("long", type=pathlib.Path, help="the longer reproduction's --out")
    parser.add_argument("--settings", nargs="+", type=reproduce_table1._setting,
                        default=[statistics.DICE, (0.3, 0.7)])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args(argv)
    try:
        if statistics.DICE not in args.settings:
            raise UsageError(f"--settings {args.settings}: the claims are against Dice: add 0.5,0.5")
        short, sample, short_run = subject_means(args.short, args.settings, args.seeds)
        long, long_sample, long_run = subject_means(args.long, args.settings, args.seeds)
        check_same_experiment(short_run, long_run)
    except UsageError as error:
        print(f"compare_lengths.py: error: {error}", file=sys.stderr)
        return 2
    lengths = f"{steps(args.short)} and {steps(args.long)} steps"
    print(f"Against Dice at {lengths}, over {sample} (long: {long_sample}); differences in "
          f"points, mm or mL, 95 % bootstrap CI, Holm within each family:\n")
    print("| alpha, beta | metric | short | long | with length |\n|---|---|---|---|---|")
    at_short, at_long = against_dice(short), against_dice(long)
    for (setting, metric), c in at_short.items():
        factor, other = scale(metric), at_long[setting, metric]
        print(f"| {setting[0]}, {setting[1]} | {metric} | {describe(scaled(c, factor))} | "
              f"{describe(scaled(other, factor))} | {verdict(c, other)} |")
    print(f"\nWhat the length changes (long - short), paired over subjects, Holm over the "
          f"table:\n")
    metrics = [m for m in PAPER + CHALLENGE if m in short[statistics.DICE]
               and m in long[statistics.DICE]]
    raw = {}
    for setting in args.settings:
        for metric in metrics:
            shared = set(short[setting][metric]) & set(long[setting][metric])
            raw[setting, metric] = statistics.paired_comparison(
                {s: long[setting][metric][s] for s in shared},
                {s: short[setting][metric][s] for s in shared})
    adjusted = statistics.holm([c.p_value for c in raw.values()])
    print("| alpha, beta | metric | short (mean) | long (mean) | change | subjects |\n"
          "|---|---|---|---|---|---|")
    for ((setting, metric), c), p in zip(raw.items(), adjusted):
        factor = scale(metric)
        mean = {name: factor * sum(v.values()) / len(v)
                for name, v in (("short", short[setting][metric]),
                                ("long", long[setting][metric]))}
        c = dataclasses.replace(scaled(c, factor), p_holm=float(p))
        print(f"| {setting[0]}, {setting[1]} | {metric} | {mean['short']:.2f} | "
              f"{mean['long']:.2f} | {describe(c)} | {c.n_subjects} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
