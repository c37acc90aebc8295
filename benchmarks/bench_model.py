"""Speed and size of the 3D U-Net: training steps/s and inference voxels/s of the default
model on this machine, and the parameter count and memory estimate of the paper-size model.

    python benchmarks/bench_model.py              # about 1-2 minutes on a 2-core CPU
    python benchmarks/bench_model.py --steps 20 --patch 64 --infer-shape 128,224,256

Training: ``model.train_on_batch`` with Adam and ``TverskyLoss(0.3, 0.7)`` on random
(batch, patch^3, 3) inputs, graph mode (never XLA on CPU: docs/model.md, "Graph mode, not
XLA, on the CPU"), the median over ``--steps`` steps after ``--warmup`` steps. Inference: ``predict_volume`` on a
random volume of ``--infer-shape`` with its default patch (128) and overlap 0.5, voxels of
the volume per second of wall time, plus the bare model throughput on one patch.

Memory is estimated, not measured: every layer's output stays alive for the backward pass,
the backward adds about two of the largest tensors, and each parameter costs 16 bytes
(weight, gradient, Adam's two moments, float32). On this CPU that estimate is within ~5 % of
the measured peak RSS increase of a training step at 128^3 (0.85 GiB measured, 0.88 GiB
estimated, default model). GPU allocators and cuDNN workspaces add their own overhead.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfversky.inference import DEFAULT_PATCH_SIZE, predict_volume  # noqa: E402
from tfversky.losses import TverskyLoss  # noqa: E402
from tfversky.models import (DEFAULT_BASE_FILTERS, DEFAULT_DEPTH, PAPER_BASE_FILTERS,  # noqa: E402
                             PAPER_DEPTH, unet3d)

PAPER_VOLUME = (128, 224, 256)


def memory_estimate(depth: int, base_filters: int, spatial, bytes_per_value: int = 4) -> dict:
    """Parameters and estimated training memory per sample (GiB) of unet3d at ``spatial``."""
    model = unet3d((*spatial, 3), base_filters=base_filters, depth=depth)
    sizes = [int(np.prod(layer.output.shape[1:])) for layer in model.layers]
    activations = sum(sizes) * bytes_per_value
    params = model.count_params()
    peak = activations + 2 * max(sizes) * bytes_per_value + 16 * params
    return {"params": params, "activations_gib": activations / 2**30,
            "train_gib_per_sample": peak / 2**30}


def time_training(model, patch: int, batch: int, steps: int, warmup: int) -> float:
    """Median seconds per training step."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, patch, patch, patch, 3)).astype("float32")
    y = (rng.random((batch, patch, patch, patch)) < 0.02).astype("int32")
    for _ in range(warmup):
        model.train_on_batch(x, y)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        model.train_on_batch(x, y)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_inference(model, shape, repeats: int) -> tuple[float, float]:
    """(volume voxels/s through predict_volume, model voxels/s on one default patch)."""
    rng = np.random.default_rng(1)
    volume = rng.normal(size=(*shape, 3)).astype("float32")
    patch = tuple(min(DEFAULT_PATCH_SIZE, s) for s in shape)
    one = rng.normal(size=(1, *patch, 3)).astype("float32")
    model.predict_on_batch(one)  # trace once
    start = time.perf_counter()
    for _ in range(repeats):
        model.predict_on_batch(one)
    model_rate = repeats * np.prod(patch) / (time.perf_counter() - start)
    start = time.perf_counter()
    predict_volume(model, volume, progress=False)
    volume_rate = np.prod(shape) / (time.perf_counter() - start)
    return float(volume_rate), float(model_rate)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patch", type=int, nargs="+", default=[32, 48],
                        help="training patch sizes (cubes) to time (default: 32 48)")
    parser.add_argument("--batch", type=int, default=2, help="training batch (default: 2)")
    parser.add_argument("--steps", type=int, default=8, help="timed steps (default: 8)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps (default: 2)")
    parser.add_argument("--infer-shape", default="128,224,256",
                        help="inference volume D,H,W (default: the paper's 128,224,256)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="model calls timed on one patch (default: 3)")
    args = parser.parse_args()
    infer_shape = tuple(int(v) for v in args.infer_shape.split(","))

    print(f"# bench_model: TF {tf.__version__}, Keras {keras.__version__}, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"GPUs: {len(tf.config.list_physical_devices('GPU'))}")
    model = unet3d()
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss=TverskyLoss(0.3, 0.7))
    print(f"\ndefault unet3d(depth={DEFAULT_DEPTH}, base_filters={DEFAULT_BASE_FILTERS}): "
          f"{model.count_params():,} parameters")
    print("| training patch | batch | s/step | steps/s | voxels/s |")
    print("|---|---|---|---|---|")
    for patch in args.patch:
        seconds = time_training(model, patch, args.batch, args.steps, args.warmup)
        print(f"| {patch}^3 | {args.batch} | {seconds:.3f} | {1 / seconds:.2f} | "
              f"{args.batch * patch ** 3 / seconds / 1e6:.2f} M |", flush=True)

    volume_rate, model_rate = time_inference(model, infer_shape, args.repeats)
    print(f"\ninference, predict_volume on {'x'.join(map(str, infer_shape))} (patch "
          f"{DEFAULT_PATCH_SIZE}, overlap 0.5, batch 1): {volume_rate / 1e6:.2f} M voxels/s "
          f"({np.prod(infer_shape) / volume_rate:.1f} s per volume); bare model on one patch: "
          f"{model_rate / 1e6:.2f} M voxels/s")

    print("\n| configuration | input | parameters | activations | est. training memory / sample |")
    print("|---|---|---|---|---|")
    rows = [("default", DEFAULT_DEPTH, DEFAULT_BASE_FILTERS, (48, 48, 48), 4),
            ("default", DEFAULT_DEPTH, DEFAULT_BASE_FILTERS, PAPER_VOLUME, 4),
            ("paper (GPU)", PAPER_DEPTH, PAPER_BASE_FILTERS, PAPER_VOLUME, 4),
            ("paper (GPU), mixed_float16", PAPER_DEPTH, PAPER_BASE_FILTERS, PAPER_VOLUME, 2),
            ("larger GPU", PAPER_DEPTH, 2 * PAPER_BASE_FILTERS, PAPER_VOLUME, 4)]
    for label, depth, base, spatial, nbytes in rows:
        estimate = memory_estimate(depth, base, spatial, nbytes)
        print(f"| {label}: depth {depth}, base {base} | {'x'.join(map(str, spatial))} | "
              f"{estimate['params']:,} | {estimate['activations_gib']:.2f} GiB | "
              f"{estimate['train_gib_per_sample']:.2f} GiB |")


if __name__ == "__main__":
    main()
