"""What whole-volume validation (tfversky.training.ValidationCallback) costs per epoch.

    python benchmarks/bench_validation.py                     # one synthetic_lowres-grid volume
    python benchmarks/bench_validation.py --grid 128 224 256  # the paper's grid

Times one validation (sliding-window inference, metrics, model.keras save, state file),
with and without the TensorBoard images, on a volume of the given grid (random intensities:
the cost depends on the grid, not the content), for the demo U-Net of examples/train_ms.py
(depth 4, 8 base filters, instance normalisation). In the same process it times training
steps (batch 2 of --patch-size^3) so the cost can be read as "steps' worth", and compares
with an epoch of --steps-per-epoch steps.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import numpy as np  # noqa: E402

import tfversky  # noqa: E402
from tfversky import models, training  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", type=int, nargs=3, default=(64, 112, 128),
                        help="volume shape (default: synthetic_lowres's 64 112 128)")
    parser.add_argument("--inference-patch", type=int, default=None,
                        help="sliding window (default: --patch-size; tfversky runs an "
                             "instance-normalised U-Net on its training patch only)")
    parser.add_argument("--overlap", type=float, nargs="+", default=[0.25, 0.5])
    parser.add_argument("--patch-size", type=int, default=48, help="training patch edge")
    parser.add_argument("--steps-per-epoch", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    args.inference_patch = args.inference_patch or args.patch_size

    rng = np.random.default_rng(0)
    volume = {"image": rng.normal(size=(*args.grid, 3)).astype(np.float32),
              "label": (rng.random(args.grid) < 0.01).astype(np.uint8), "subject": "bench"}
    model = models.unet3d(base_filters=8, depth=4, normalization="instance")
    model.compile(keras.optimizers.Adam(1e-3), loss=tfversky.TverskyLoss(0.3, 0.7, batch=True))
    x = rng.normal(size=(2, *(args.patch_size,) * 3, 3)).astype(np.float32)
    y = (rng.random((2, *(args.patch_size,) * 3)) < 0.01).astype(np.uint8)
    model.train_on_batch(x, y)  # traced once
    start = time.perf_counter()
    for _ in range(5):
        model.train_on_batch(x, y)
    step = (time.perf_counter() - start) / 5

    rows = []
    with tempfile.TemporaryDirectory() as run_dir:
        for overlap in args.overlap:
            for images in (False, True):
                callback = training.ValidationCallback(
                    [volume], run_dir, patch_size=args.inference_patch, overlap=overlap,
                    tensorboard_dir=pathlib.Path(run_dir) / "logs" if images else None)
                callback.set_model(model)
                callback.set_params({"epochs": 1000})
                callback.on_train_begin()
                callback.on_epoch_begin(0)
                callback.on_epoch_end(0, {})  # warm-up: traces the predict function
                times = []
                for epoch in range(1, args.repeats + 1):
                    start = time.perf_counter()
                    callback.on_epoch_end(epoch, {})
                    times.append(time.perf_counter() - start)
                seconds = statistics.median(times)
                rows.append({"grid": list(args.grid), "inference_patch": args.inference_patch,
                             "overlap": overlap, "tensorboard_images": images,
                             "validation_s": round(seconds, 2),
                             "train_step_s": round(step, 3),
                             "in_train_steps": round(seconds / step, 1),
                             "share_of_epoch": round(seconds / (seconds + step
                                                                * args.steps_per_epoch), 3),
                             "cpus": os.cpu_count()})
                print(json.dumps(rows[-1]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
