"""What scoring one brain costs: every metric of tfversky.metrics.case_scores on a 1 mm brain.

    python benchmarks/bench_metrics.py                     # 182x218x182, 30 lesions
    python benchmarks/bench_metrics.py --lesions 40 --spacing 1 1 1 --repeats 7

Builds a 1 mm MNI-sized volume (182 x 218 x 182) with a brain-shaped ellipsoid holding
``--lesions`` random ellipsoidal lesions (periventricular-sized, 5-20 mL in all) and a
plausible prediction (shifted by a voxel, eroded and grown here and there, a few lesions
missed, a few false positives), then times ``case_scores`` (overlap, HD95/ASSD/NSD,
volumes, the challenge's detection and the any-overlap LTPR/LFPR) and its parts. For the
record it also times the alternative the boundary metrics do not use: a Euclidean distance
transform of the union's bounding box and of the whole volume. The median of ``--repeats``
runs is reported (the machine may be shared). Results go to stdout and, with ``--json``, to
a file.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

from tfversky import detection, metrics, surface  # noqa: E402


def brain_with_lesions(shape, count, rng):
    """(reference, prediction): ``count`` lesions inside a brain-sized ellipsoid."""
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    centre = np.array(shape) / 2
    brain = sum(((g - c) / (0.42 * n)) ** 2 for g, c, n in zip(grid, centre, shape)) <= 1
    inside = np.argwhere(ndimage.binary_erosion(brain, iterations=12))
    reference = np.zeros(shape, bool)
    for _ in range(count):
        middle = inside[rng.integers(len(inside))]
        radii = rng.uniform(2.0, 6.5, 3)
        box = tuple(slice(max(int(m - r) - 1, 0), int(m + r) + 2) for m, r in zip(middle, radii))
        local = np.ogrid[box]
        reference[box] |= sum(((g - m) / r) ** 2 for g, m, r in zip(local, middle, radii)) <= 1
    prediction = np.roll(reference, (1, 0, -1), axis=(0, 1, 2))
    noise = rng.random(shape) < 0.3
    edge = prediction ^ ndimage.binary_erosion(prediction)
    prediction &= ~(edge & noise)  # eroded here and there
    prediction |= ndimage.binary_dilation(prediction) & noise & ~brain  # grown here and there
    ids, n = ndimage.label(prediction)
    missed = rng.choice(np.arange(1, n + 1), size=max(n // 8, 1), replace=False)
    prediction &= ~np.isin(ids, missed)
    for _ in range(max(count // 6, 1)):  # false positives
        spot = inside[rng.integers(len(inside))]
        prediction[tuple(slice(s, s + 3) for s in spot)] = True
    return reference, prediction


def timed(function, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times), result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(182, 218, 182))
    parser.add_argument("--spacing", type=float, nargs=3, default=(1.0, 1.0, 1.0))
    parser.add_argument("--lesions", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the numbers to this file")
    args = parser.parse_args(argv)

    reference, prediction = brain_with_lesions(tuple(args.shape), args.lesions,
                                               np.random.default_rng(args.seed))
    spacing = tuple(args.spacing)
    box = surface.union_box(reference, prediction)
    ref_box, pred_box = reference[box], prediction[box]  # what case_scores hands its parts
    edges = [surface.boundary(m) for m in (pred_box, ref_box)]
    parts = {
        "case_scores (everything)": lambda: metrics.case_scores(reference, prediction, spacing),
        "  voxel counts (whole volume)": lambda: metrics._confusion(reference.ravel(),
                                                                    prediction.ravel()),
        "  union box of both masks": lambda: surface.union_box(reference, prediction),
        "  boundary: HD95, ASSD, NSD (box)": lambda: surface.boundary_scores(ref_box, pred_box,
                                                                             spacing),
        "  challenge detection (box)": lambda: detection.challenge_detection(ref_box, pred_box,
                                                                             spacing),
        "  any-overlap LTPR/LFPR (box)": lambda: metrics.lesion_metrics(ref_box, pred_box),
        "(not used) distance transform of the union box, both ways": lambda: [
            ndimage.distance_transform_edt(~e, sampling=spacing) for e in edges],
        "(not used) distance transform of the whole volume, one way": lambda:
            ndimage.distance_transform_edt(~surface.boundary(reference), sampling=spacing),
    }
    rows = {}
    for name, function in parts.items():
        median, best, result = timed(function, 1 if "whole volume" in name else args.repeats)
        rows[name] = {"median_s": median, "min_s": best}
        if name.startswith("case_scores"):
            scores = result[0]
    box_shape = [s.stop - s.start for s in box]
    print(f"volume {'x'.join(map(str, args.shape))} at {'x'.join(f'{s:g}' for s in spacing)} "
          f"mm, {scores['lesions_reference']} reference lesions (challenge rule), "
          f"{scores['volume_reference_ml']:.1f} mL; prediction {scores['lesions_predicted']} "
          f"lesions, {scores['volume_predicted_ml']:.1f} mL; union box "
          f"{'x'.join(map(str, box_shape))}; {os.cpu_count()} CPU(s)")
    print(f"DSC {scores['dsc']:.3f}, HD95 {scores['hd95_mm']:.2f} mm, ASSD "
          f"{scores['assd_mm']:.2f} mm, NSD {scores['nsd']:.3f}, lesion F1 "
          f"{scores['lesion_f1']:.3f}, LTPR {scores['ltpr']:.3f}")
    print(f"\n{'part':<60} {'median s':>9} {'min s':>7}")
    for name, row in rows.items():
        print(f"{name:<60} {row['median_s']:>9.3f} {row['min_s']:>7.3f}")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(
            {"shape": list(args.shape), "spacing": list(spacing), "union_box": box_shape,
             "scores": scores, "timings": rows, "cpus": os.cpu_count()}, indent=2,
            default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
