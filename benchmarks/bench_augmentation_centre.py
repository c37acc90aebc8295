"""What augmentation buys on a scanner that training never saw: `tfversky train` with and
without it, tested on the realistic phantom's unseen centre.

    python benchmarks/bench_augmentation_centre.py --seeds 0 1 2 3 --out runs/aug_centre

`ms_lesions/synthetic_realistic_by_centre_lowres` has one fold per centre; `--fold 3` (the
default) tests on `15t_legacy` (1.5 T, FLAIR/T2/PD in 3 mm sections, the lowest lesion
contrast, the most noise and bias field) and trains on the other three. Each seed trains
twice with every other `tfversky train` default (a tenth of the training subjects held out
for validation, model.keras selected on val_dsc): `--augment default` and `--augment none`
(flips only). Runs live in OUT/seed{S}_{augment}; a finished one is reused, one made with
other flags is refused. Prints the test metrics of every run, the mean per arm, and the
paired difference (default - none) per seed with its mean and sd.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys

from tfversky import train_cli

METRICS = ("dsc", "sensitivity", "f2", "apr", "ltpr", "lfpr")
ARMS = ("default", "none")


def run_arm(seed: int, augment: str, extra: list[str], out: pathlib.Path) -> dict:
    folder = out / f"seed{seed}_{augment}"
    argv = [*extra, "--seed", str(seed), "--augment", augment, "--out", str(folder)]
    args = train_cli.build_parser("tfversky train").parse_args(argv)
    train_cli.check_args(args)  # also sets --num-folds from the dataset, as the run saved it
    saved = folder / "results.json"
    if saved.exists():
        results = json.loads(saved.read_text())
        differ = train_cli.flags_differing(results, args, ignore=train_cli.OUTPUT_ONLY_FLAGS)
        if differ:
            raise SystemExit(f"{folder} was trained with other flags or data "
                             f"({'; '.join(differ)}): use another --out")
        return results
    return train_cli.run(args)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--out", default="runs/aug_centre")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--fold", type=int, default=3)
    args = parser.parse_args(argv)
    extra = ["--dataset", "ms_lesions/synthetic_realistic_by_centre_lowres", "--fold",
             str(args.fold), "--patch-size", "32", "--epochs",
             str(args.epochs), "--steps-per-epoch", "100", "--verbose", "2"]
    out = pathlib.Path(args.out)
    rows = {(s, a): run_arm(s, a, extra, out) for s in args.seeds for a in ARMS}
    print("\nseed  augment  selected " + " ".join(f"{m:>11}" for m in METRICS))
    for (seed, arm), result in rows.items():
        print(f"{seed:>4}  {arm:<7}  {result['selection']['selected_epoch']:>8} " +
              " ".join(f"{100 * result['pooled'][m]:10.2f}%" for m in METRICS))
    for arm in ARMS:
        means = [statistics.mean(100 * rows[(s, arm)]["pooled"][m] for s in args.seeds)
                 for m in METRICS]
        print(f"mean  {arm:<7}  {'':>8} " + " ".join(f"{v:10.2f}%" for v in means))
    for m in METRICS:
        gains = [100 * (rows[(s, "default")]["pooled"][m] - rows[(s, "none")]["pooled"][m])
                 for s in args.seeds]
        spread = statistics.stdev(gains) if len(gains) > 1 else float("nan")
        print(f"{m}: default - none per seed {', '.join(f'{g:+.1f}' for g in gains)} points; "
              f"mean {statistics.mean(gains):+.1f}, sd {spread:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
