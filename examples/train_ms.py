"""
Title: Tversky loss for MS lesion segmentation (Salehi et al. 2017)
Author: the tfversky authors
Description: A 3D U-Net trained with the Tversky loss on MS lesions, selected on
    whole-volume validation and evaluated as the paper does.

## Introduction

MS lesions fill well under 1 % of a brain MRI. A network trained with a Dice-like loss on
such data finds a segmentation that is precise but misses lesions: false positives and false
negatives cost the same, while the rare class needs recall. The Tversky loss weighs them
apart: 1 - TP / (TP + alpha FP + beta FN), where alpha weighs false positives and beta false
negatives, exactly as in the paper. Salehi et al. (2017) found alpha = 0.3, beta = 0.7 best
on MSSEG 2016: higher sensitivity and F2 than Dice (alpha = beta = 0.5) at the same DSC.

This example is the whole job, wired from the package (`tfversky train` runs the same
code, `tfversky.train_cli`):

1. devices and a `tf.distribute` strategy (`--strategy`, `--cpu-replicas`);
2. data: an `ms_lesions` TFDS config (the synthetic phantom by default; ISBI 2015, MSSEG
   2016, your nnU-Net or BIDS folder with `--manual-dir`), lesion-aware random patches,
   nnU-Net's augmentations (`--augment default`, the default), validation subjects held out
   of the training folds (`--val-subjects`, a tenth of them by default);
3. the U-Net with one input channel per modality, compiled with the Tversky loss;
4. `model.fit`, resumable after a kill (reuse `--out`), validating on whole volumes every
   `--val-every` epochs; `model.keras` is the epoch `--select` picks (the last, unless
   validation is enough to choose), at the operating point `--operating-point` chose on
   validation;
5. the selected model on the held-out fold: per-subject and pooled DSC, sensitivity,
   specificity, F2, APR, lesion-wise metrics, PR curves, overlays and masks on each scan.

    python examples/train_ms.py                      # the synthetic demo (2-core CPU: minutes)
    python examples/train_ms.py --alpha 0.5 --beta 0.5 --out runs/dice
    python examples/train_ms.py --val-every 2 --patience 5 --out runs/val
    python examples/train_ms.py --val-subjects 0 --augment none --out runs/plain  # paper's way
    python examples/train_ms.py --dataset ms_lesions/msseg2016 --manual-dir /data/msseg2016 \\
        --patch-size 64 --batch-size 4 --epochs 1000 --steps-per-epoch 100 --lr 1e-4
    python examples/train_ms.py --dataset ms_lesions/nnunet --manual-dir /data/Dataset501_MS
    python examples/train_ms.py --dataset ms_lesions/bids --manual-dir /data/bids \\
        --modalities FLAIR,T1w
"""

from __future__ import annotations

import os
import sys

# A quieter log, before TensorFlow is imported.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tfversky import train_cli  # noqa: E402
from tfversky.arguments import run_command  # noqa: E402


def _train(args) -> int:
    train_cli.run(args)  # sections 1-5 above, in this order
    return 0


def main(argv=None) -> int:
    args = train_cli.build_parser("train_ms.py").parse_args(argv)
    # A usage error, or TensorFlow missing (a JAX-only install): one line, exit code 2.
    return run_command("train_ms.py", _train, args)


if __name__ == "__main__":
    sys.exit(main())
