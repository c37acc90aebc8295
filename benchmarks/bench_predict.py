"""What ensembles and test-time mirroring cost per case: ``inference.segment`` end to end on
one phantom scan (load, prepare, sliding windows, back to the scan, lesion table), with 1, 2
and 5 members, with and without ``tta``; and, at the grid stage, the eight mirrorings batched
(one model call per window, what ``tta`` does) against eight separate passes.

    TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1 python benchmarks/bench_predict.py

The members are untrained U-Nets of ``tfversky train``'s default architecture (8 base
filters, depth 4, instance normalisation) on the low-resolution grid of the realistic phantom
(64x112x128 voxels of 2.5x1.8x1.5 mm), each run on windows of its 48^3 training patch with
overlap 0.5 (40 windows per pass): the time does not depend on the weights. Every member
first runs once on a batch of 1 and of 8 windows (tracing its function), then each
configuration runs ``--repeats`` times; the median is reported, in CPU seconds of this
process (``time.process_time``: on a shared machine the wall time measures the neighbours;
with one TensorFlow thread the CPU time is about the wall time of an idle machine), with the
wall time beside it.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfversky import inference, io, plan as plan_lib, preprocessing  # noqa: E402
from tfversky.models import unet3d  # noqa: E402

GRID = preprocessing.PAPER_GRID.scaled(2)  # the *_lowres datasets' grid
PATCH = 48  # tfversky train's default --patch-size


def members(count: int) -> list:
    plan = plan_lib.Plan(grid=GRID, training_patch_size=PATCH, skull_stripped=True)
    models = []
    for seed in range(count):
        keras.utils.set_random_seed(seed)
        models.append(plan_lib.attach(unet3d(base_filters=8, depth=4,
                                             normalization="instance"), plan))
    return models


def phantom_scans(folder: pathlib.Path) -> dict:
    """One realistic phantom subject at 1.5 mm, written as T1/T2/FLAIR NIfTI files."""
    from tfds_ms import synth

    subject = synth.synthesize_subject(synth.load_anatomy(1.5), 1, seed=0)
    paths = {}
    for name in ("T1", "T2", "FLAIR"):
        paths[name] = str(folder / f"{name}.nii.gz")
        nib.save(nib.Nifti1Image(subject.images[name.lower()].astype(np.float32),
                                 subject.affine), paths[name])
    return paths


def warm_up(models) -> None:
    """Trace each member's function for the batch shapes of a plain and a mirrored pass."""
    for model in models:
        for batch in (1, len(inference.MIRRORINGS)):
            model.predict_on_batch(np.zeros((batch, PATCH, PATCH, PATCH, 3), np.float32))


def timed(run, repeats: int) -> tuple[float, float]:
    """Median (CPU seconds, wall seconds) of ``repeats`` calls."""
    cpu, wall = [], []
    for _ in range(repeats):
        start_cpu, start_wall = time.process_time(), time.perf_counter()
        run()
        cpu.append(time.process_time() - start_cpu)
        wall.append(time.perf_counter() - start_wall)
    return statistics.median(cpu), statistics.median(wall)


def shown(seconds, baseline=None) -> str:
    cpu, wall = seconds
    ratio = f", {cpu / baseline[0]:.1f}x" if baseline else ""
    return f"{cpu:.1f} s (wall {wall:.1f} s{ratio})"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--members", default="1,2,5",
                        help="ensemble sizes to time, comma-separated")
    args = parser.parse_args(argv)
    sizes = [int(n) for n in args.members.split(",")]
    print(f"tfversky bench_predict: {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, TF {tf.__version__}, intra-op threads "
          f"{os.environ.get('TF_NUM_INTRAOP_THREADS', 'default')}")
    models = members(max(sizes))
    warm_up(models)
    folder = pathlib.Path(tempfile.mkdtemp())
    scans = phantom_scans(folder)
    shape = nib.load(scans["T1"]).shape
    print(f"scan {'x'.join(map(str, shape))} voxels of 1.5 mm; grid "
          f"{'x'.join(map(str, GRID.shape))}; window {PATCH}^3, overlap 0.5")

    # Grid stage: the eight mirrorings in one batch per window, or eight separate passes.
    stacked, reference = io.load_modalities(scans)
    on_grid, _ = inference.prepare_scan(stacked, reference.affine, models[0].plan)
    one = models[:1]
    plain = timed(lambda: inference.segment_on_grid(one, on_grid), args.repeats)
    batched = timed(lambda: inference.segment_on_grid(one, on_grid, tta=True), args.repeats)
    separate = timed(lambda: [inference.segment_on_grid(one, np.flip(on_grid, axes))
                              for axes in ((), (0,), (1,), (2,), (0, 1), (0, 2), (1, 2),
                                           (0, 1, 2))], args.repeats)
    print("\ngrid stage, one member (CPU s):")
    print(f"| no mirroring | {shown(plain)} |")
    print(f"| 8 mirrorings batched (--tta) | {shown(batched, plain)} |")
    print(f"| 8 mirrorings as 8 passes | {shown(separate, plain)} |", flush=True)

    print("\nper case, inference.segment + lesion table:")
    print("| members | --tta | network passes | CPU s (wall s, x one model) |")
    print("|---|---|---|---|")
    single = None
    for tta in (False, True):
        for count in sizes:
            def run(tta=tta, count=count):
                result = inference.segment(models[:count], scans, tta=tta)
                result.lesion_table("case")
            seconds = timed(run, args.repeats)
            single = single or seconds
            passes = count * (len(inference.MIRRORINGS) if tta else 1)
            print(f"| {count} | {'on' if tta else 'off'} | {passes} | "
                  f"{shown(seconds, single)} |", flush=True)


if __name__ == "__main__":
    main()
