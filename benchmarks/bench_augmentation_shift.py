"""What augmentation buys on a test set from another "scanner": train with and without it.

    python benchmarks/bench_augmentation_shift.py --data-dir DIR     # ms_lesions/synthetic_lowres

Trains the same small 3D U-Net twice on fold0 (one subject held out for validation, the
checkpoint selected on its whole-volume DSC with ``tfversky.training.ValidationCallback``):
flips only, and flips + ``AugmentConfig()`` (nnU-Net's defaults). Both are tested on fold1
as it is and on fold1 as another scanner would show it. The shift is made with *other*
operations than the augmentation's, so the test does not reward learning its own recipe:

* contrast: a smooth compression of the z-scored brain intensities (1.5 tanh(x / 1.5)) and
  a different gain per channel (T1 x0.85, T2 x1.1, FLAIR x0.9);
* resolution: slices twice as thick along the first axis (pairs averaged, then repeated);
* noise: spatially correlated Gaussian noise (sd 0.25 after smoothing with sigma 0.7 voxel)
  in the brain.

A CPU-scale experiment (one seed, a few hundred steps): read its differences against the
spread of a repeated run before drawing conclusions.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from scipy import ndimage  # noqa: E402

import tfversky  # noqa: E402
from tfversky import data, inference, metrics, models, training  # noqa: E402
from tfversky.augmentation import AugmentConfig  # noqa: E402


def shifted(image: np.ndarray, seed: int) -> np.ndarray:
    """The scan as another scanner would show it (see the module docstring)."""
    brain = np.any(image != 0, axis=-1, keepdims=True)
    out = 1.5 * np.tanh(image / 1.5) * np.array([0.85, 1.1, 0.9], np.float32)
    depth = out.shape[0] // 2 * 2
    pairs = out[:depth].reshape(depth // 2, 2, *out.shape[1:]).mean(1)
    out[:depth] = np.repeat(pairs, 2, axis=0)
    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.normal(size=out.shape), sigma=(0.7, 0.7, 0.7, 0))
    noise *= 0.25 / noise.std()
    return np.where(brain, out + noise, 0).astype(np.float32)


def evaluate(model, volumes, transform=None) -> dict:
    evaluator = metrics.Evaluator()
    for k, volume in enumerate(volumes):
        image = volume["image"] if transform is None else transform(volume["image"], k)
        probs = inference.predict_volume(model, image, patch_size=64, overlap=0.25,
                                         progress=False)
        evaluator.update(volume["label"] > 0, probs[..., 1])
    result = evaluator.result()
    return {key: round(100 * result[key], 2) for key in ("dsc", "sensitivity", "apr")}


def run(augment, train, val, test, args, run_dir) -> dict:
    keras.utils.set_random_seed(args.seed)
    volumes = tf.data.Dataset.from_tensor_slices(
        {"image": np.stack([v["image"] for v in train]),
         "label": np.stack([v["label"] for v in train])})
    patches = data.patch_dataset(volumes, patch_size=(args.patch_size,) * 3, batch_size=2,
                                 seed=args.seed, augment=augment)
    model = models.unet3d(base_filters=8, depth=3, normalization="instance")
    model.compile(keras.optimizers.Adam(1e-3),
                  loss=tfversky.TverskyLoss(0.3, 0.7, batch=True))
    validation = training.ValidationCallback(val, run_dir, val_every=args.val_every,
                                             patch_size=64, overlap=0.25)
    start = time.perf_counter()
    model.fit(patches, epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, verbose=0,
              callbacks=[validation])
    seconds = time.perf_counter() - start
    best = keras.models.load_model(pathlib.Path(run_dir) / "model.keras")
    return {"augment": "none" if augment is None else "default",
            "selected_epoch": validation.selected_epoch,
            "val_dsc": round(100 * validation.best, 2), "train_s": round(seconds),
            "test": evaluate(best, test), "shifted_test": evaluate(best, test, shifted)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ms_lesions/synthetic_lowres")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--patch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--steps-per-epoch", type=int, default=50)
    parser.add_argument("--val-every", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--voxel-spacing", type=float, nargs=3, default=(2.5, 1.8, 1.5))
    args = parser.parse_args(argv)

    fold0 = list(data.iterate_volumes(data.load_dataset(args.dataset, "fold0",
                                                        data_dir=args.data_dir)))
    test = list(data.iterate_volumes(data.load_dataset(args.dataset, "fold1",
                                                       data_dir=args.data_dir)))
    train_ids, val_ids = training.split_subjects([v["subject"] for v in fold0], 1,
                                                 seed=args.seed)
    train = [v for v in fold0 if v["subject"] in train_ids]
    val = [v for v in fold0 if v["subject"] in val_ids]
    # --voxel-spacing: synthetic_lowres's 2.5 x 1.8 x 1.5 mm, so rotations are rigid in space.
    for augment in (None, AugmentConfig(voxel_spacing=args.voxel_spacing)):
        with tempfile.TemporaryDirectory() as run_dir:
            row = run(augment, train, val, test, args, run_dir)
        print(json.dumps({"dataset": args.dataset, "train_subjects": len(train_ids),
                          "test_scans": len(test), "steps": args.epochs * args.steps_per_epoch,
                          **row}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
