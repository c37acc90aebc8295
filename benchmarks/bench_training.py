"""End-to-end training throughput of examples/train_ms.py: fused vs pure loss, 1 vs 2 replicas.

    python benchmarks/bench_training.py                      # ms_lesions/synthetic, 48^3, batch 2
    python benchmarks/bench_training.py --dataset ms_lesions/synthetic_lowres --patch-size 32

Each configuration runs in its own process (logical CPU devices must be configured before
TensorFlow starts), through the same code as train_ms.py: its data pipeline, model, loss
and strategy. A process trains --warmup steps, then times --steps steps of model.fit. The
configurations take turns, in a rotated order, for --rounds rounds, so that load from other
jobs falls on all of them; the table gives medians and ratios to the pure loss on one
replica. On a 2-core CPU, two replicas share the same two cores, so this measures the
overhead of MirroredStrategy, not a speed-up.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = (("tf", 1), ("fused", 1), ("tf", 2), ("fused", 2))


def child(args) -> None:
    """One configuration: prints {"patches_per_second": ...} as the last line."""
    from tfversky import train_cli

    run_args = train_cli.build_parser().parse_args([
        "--dataset", args.dataset, "--patch-size", str(args.patch_size),
        "--batch-size", str(args.batch_size), "--loss-impl", args.loss_impl,
        "--cpu-replicas", str(args.cpu_replicas)])
    strategy = train_cli.make_strategy("auto", args.cpu_replicas)
    patches, *_ = train_cli.load_splits(run_args)
    with strategy.scope():
        model = train_cli.build_model(run_args)
    model.fit(patches, steps_per_epoch=args.warmup, epochs=1, verbose=0)
    start = time.perf_counter()
    model.fit(patches, steps_per_epoch=args.steps, epochs=1, verbose=0)
    seconds = time.perf_counter() - start
    print(json.dumps({"patches_per_second": args.steps * args.batch_size / seconds,
                      "step_ms": 1e3 * seconds / args.steps}))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ms_lesions/synthetic")
    parser.add_argument("--patch-size", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" /
                                              "bench_training.json"))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--loss-impl", default="tf", help=argparse.SUPPRESS)
    parser.add_argument("--cpu-replicas", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return 0
    common = ["--dataset", args.dataset, "--patch-size", str(args.patch_size), "--batch-size",
              str(args.batch_size), "--warmup", str(args.warmup), "--steps", str(args.steps)]
    samples = {config: [] for config in CONFIGS}
    for round_index in range(args.rounds):
        order = CONFIGS[round_index % len(CONFIGS):] + CONFIGS[:round_index % len(CONFIGS)]
        for loss_impl, replicas in order:
            command = [sys.executable, __file__, "--child", "--loss-impl", loss_impl,
                       "--cpu-replicas", str(replicas), *common]
            done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT,
                                  env={**os.environ, "PYTHONPATH": str(ROOT),
                                       "TF_CPP_MIN_LOG_LEVEL": "3"})
            if done.returncode:
                print(done.stderr[-3000:], file=sys.stderr)
                return done.returncode
            result = json.loads(done.stdout.strip().splitlines()[-1])
            samples[(loss_impl, replicas)].append(result["patches_per_second"])
            print(f"round {round_index + 1}: loss {loss_impl}, {replicas} replica(s): "
                  f"{result['patches_per_second']:.2f} patches/s", flush=True)
    baseline = statistics.median(samples[("tf", 1)])
    rows = []
    print(f"\n{args.dataset}, patches {args.patch_size}^3, global batch {args.batch_size}, "
          f"{args.steps} timed steps, medians of {args.rounds} rounds\n")
    print("| loss | replicas | patches/s | vs pure, 1 replica |\n|---|---|---|---|")
    for loss_impl, replicas in CONFIGS:
        median = statistics.median(samples[(loss_impl, replicas)])
        rows.append({"loss": loss_impl, "replicas": replicas, "patches_per_second": median,
                     "samples": samples[(loss_impl, replicas)]})
        print(f"| {loss_impl} | {replicas} | {median:.2f} | {median / baseline:.2f}x |")
    path = pathlib.Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"config": {k: v for k, v in vars(args).items()
                                           if k not in ("child", "loss_impl", "cpu_replicas")},
                                "rows": rows}, indent=2))
    print(f"\nJSON: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
