"""Throughput of the patch pipeline (tfversky.data.patch_dataset), in patches per second.

    python benchmarks/bench_data.py                                   # random paper-size volumes
    python benchmarks/bench_data.py --dataset ms_lesions/synthetic --data-dir ~/tensorflow_datasets
    python benchmarks/bench_data.py --augment none default all     # one row each, one process

Reports the time to fill the volume cache (first pass: reading and decoding every volume)
and the steady-state rate afterwards, which is what training sees. Compare it with the
training step's consumption: a 3D U-Net step on 2 x 64^3 patches takes ~0.8 s on a 2-core
CPU (docs/model.md), i.e. ~2.5 patches/s.

``--augment``: ``none`` (flips only), ``default`` (``AugmentConfig()``: nnU-Net's
probabilities) and ``all`` (every transform on every patch, the worst case).

``--fit-steps N`` also times N ``model.fit`` steps of train_ms.py's demo U-Net (depth 4, 8
base filters, instance normalisation, Tversky loss) fed by the same pipeline: there the
augmentation competes with the step for the same cores, which is what training sees.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import tensorflow as tf  # noqa: E402

from tfversky import data  # noqa: E402
from tfversky.augmentation import TRANSFORMS, AugmentConfig  # noqa: E402

AUGMENT = {"none": None, "default": AugmentConfig(),
           "all": AugmentConfig.only(*TRANSFORMS, probability=1.0)}


def random_volumes(count: int, shape) -> tf.data.Dataset:
    """Volumes of the given grid with 0.1 % lesion voxels, generated in memory."""
    def make(index):
        seed = tf.stack([tf.constant(0, tf.int64), index])
        image = tf.random.stateless_normal((*shape, 3), seed)
        label = tf.cast(tf.random.stateless_uniform(shape, seed) < 0.001, tf.uint8)
        return {"image": image, "label": label}

    return tf.data.Dataset.range(count).map(make)


def measure(volumes, count, patch_size, batch_size, batches, augment=None) -> dict:
    ds = data.patch_dataset(volumes, patch_size=patch_size, batch_size=batch_size,
                            augment=augment)
    iterator = iter(ds)
    start = time.perf_counter()
    for _ in range(max(1, count // batch_size + 1)):  # every volume visited once: cache full
        next(iterator)
    warm = time.perf_counter() - start
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(batches):
        next(iterator)
    steady, cpu = time.perf_counter() - start, time.process_time() - cpu
    # CPU seconds (all threads) per patch: less sensitive than wall time to other jobs' load.
    return {"cache_fill_s": round(warm, 2),
            "patches_per_s": round(batches * batch_size / steady, 1),
            "cpu_s_per_patch": round(cpu / (batches * batch_size), 4),
            "batches": batches, "batch_size": batch_size, "patch_size": list(patch_size)}


def measure_fit(volumes, patch_size, batch_size, steps, augment=None) -> dict:
    """Seconds per model.fit step of the demo U-Net on the pipeline (after a warm-up epoch)."""
    import keras

    import tfversky
    from tfversky import models

    keras.utils.set_random_seed(0)
    model = models.unet3d(base_filters=8, depth=4, normalization="instance")
    model.compile(keras.optimizers.Adam(1e-3), loss=tfversky.TverskyLoss(0.3, 0.7, batch=True))
    ds = data.patch_dataset(volumes, patch_size=patch_size, batch_size=batch_size,
                            augment=augment)
    model.fit(ds, steps_per_epoch=3, epochs=1, verbose=0)  # traces, fills the cache
    start, cpu = time.perf_counter(), time.process_time()
    model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0)
    return {"fit_step_s": round((time.perf_counter() - start) / steps, 3),
            "fit_cpu_s_per_step": round((time.process_time() - cpu) / steps, 3),
            "fit_steps": steps}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default=None,
                        help="TFDS name, e.g. ms_lesions/synthetic (default: random volumes)")
    parser.add_argument("--data-dir", default=None, help="TFDS data dir of --dataset")
    parser.add_argument("--split", default="fold0")
    parser.add_argument("--grid", type=int, nargs=3, default=(128, 224, 256),
                        help="random volumes' shape (default 128 224 256)")
    parser.add_argument("--volumes", type=int, default=8, help="random volumes (default 8)")
    parser.add_argument("--patch-size", type=int, nargs=3, default=(64, 64, 64))
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--fit-steps", type=int, default=0,
                        help="also time this many model.fit steps on the pipeline (default 0)")
    parser.add_argument("--augment", nargs="+", choices=sorted(AUGMENT), default=["none"],
                        help="augmentation settings to measure, one row each (default none)")
    args = parser.parse_args(argv)

    if args.dataset:
        import tfds_ms

        volumes = tfds_ms.load_dataset(args.dataset, args.split, data_dir=args.data_dir)
        count, source = int(volumes.cardinality()), f"{args.dataset}[{args.split}]"
    else:
        volumes, count = random_volumes(args.volumes, tuple(args.grid)), args.volumes
        source = f"random {args.volumes} x {tuple(args.grid)}"
    for setting in args.augment:
        result = {"source": source, "volumes": count, "cpus": os.cpu_count(), "augment": setting,
                  **measure(volumes, count, tuple(args.patch_size), args.batch_size,
                            args.batches, AUGMENT[setting])}
        if args.fit_steps:
            result.update(measure_fit(volumes, tuple(args.patch_size), args.batch_size,
                                      args.fit_steps, AUGMENT[setting]))
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
