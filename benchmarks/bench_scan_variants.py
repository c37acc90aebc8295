"""One scan three ways through `tfversky predict`: as given, reordered to PIR, as 3 mm slices.

Each variant's mask is scored (DSC) against the truth on the variant's own grid, beside the
grid ceiling: the truth itself sent to the model's reference grid and back (no network).

    python -m tfds_ms.synth --out heldout --subjects 1 --seed 7 --layout msseg2016
    python benchmarks/bench_scan_variants.py --subject heldout --model runs/demo/model.keras

``--subject`` is a folder in the MSSEG 2016 layout (its first patient is used).
"""

from __future__ import annotations

import argparse
import glob
import os
import pathlib
import subprocess
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402

from tfversky import inference, io, plan, preprocessing  # noqa: E402


def _save(data, affine, path) -> str:
    image = nib.Nifti1Image(np.asarray(data), affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nib.save(image, path)
    return str(path)


def _variants(files: dict, truth_file: str, work: pathlib.Path) -> dict:
    """name -> ({modality: file}, truth on that file's grid)."""
    first = nib.load(files["T1"])
    truth = np.asarray(nib.load(truth_file).dataobj) > 0
    transform = nib.orientations.ornt_transform(nib.io_orientation(first.affine),
                                                nib.orientations.axcodes2ornt("PIR"))
    reordered_affine = first.affine @ nib.orientations.inv_ornt_aff(transform, first.shape)
    ras_truth, ras_affine = io.to_ras(truth, first.affine)
    zooms = np.linalg.norm(ras_affine[:3, :3], axis=0)
    spacing = np.array([zooms[0], zooms[1], 3.0])  # axial slices of 3 mm, in-plane as given
    shape = np.ceil(np.array(ras_truth.shape) * zooms / spacing).astype(int)
    thick_affine = np.diag([*spacing, 1.0])
    centre = first.affine @ np.array([*(np.array(first.shape) - 1) / 2, 1.0])
    thick_affine[:3, 3] = centre[:3] - thick_affine[:3, :3] @ ((shape - 1) / 2)
    pir, thick = {}, {}
    for name, path in files.items():
        data = np.asarray(nib.load(path).dataobj, np.float32)
        pir[name] = _save(nib.orientations.apply_orientation(data, transform),
                          reordered_affine, work / f"PIR_{name}.nii.gz")
        thick[name] = _save(preprocessing.resample_to_grid(data, first.affine, thick_affine,
                                                           shape),
                            thick_affine, work / f"3mm_{name}.nii.gz")
    return {
        "as given": (files, truth),
        "PIR": (pir, nib.orientations.apply_orientation(truth, transform) > 0),
        "3 mm slices": (thick, preprocessing.resample_label(truth, first.affine, thick_affine,
                                                             shape) > 0),
    }


def _dsc(a, b) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def _ceiling(paths: dict, truth: np.ndarray, model_plan) -> float:
    image, reference = io.load_modalities(paths)
    _, grid_affine = inference.prepare_scan(image, reference.affine, model_plan)
    on_grid = preprocessing.resample_to_grid(truth.astype(np.float32), reference.affine,
                                             grid_affine, model_plan.grid.shape)
    _, back, _ = inference.back_to_scan(on_grid, grid_affine, reference.affine, truth.shape,
                                        threshold=0.5)
    return _dsc(back > 0, truth)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subject", required=True, help="MSSEG 2016-layout folder")
    parser.add_argument("--model", required=True, help="trained .keras model with a plan")
    args = parser.parse_args(argv)
    found = sorted(glob.glob(f"{args.subject}/Training/*/*/Preprocessed_Data"))
    if not found:
        print(f"{args.subject}: no Training/Center_XX/Patient_YY/Preprocessed_Data folder",
              file=sys.stderr)
        return 2
    folder = pathlib.Path(found[0])
    files = {m: str(folder / f"{m}_preprocessed.nii.gz") for m in ("T1", "T2", "FLAIR")}
    model_plan = plan.read_plan(args.model)
    print(f"model plan: {model_plan.describe()}")
    with tempfile.TemporaryDirectory() as work:
        work = pathlib.Path(work)
        for name, (paths, truth) in _variants(files, str(folder.parent / "Masks" /
                                                         "Consensus.nii.gz"), work).items():
            out = work / "seg.nii.gz"
            command = [sys.executable, "-m", "tfversky", "predict", "--quiet", "--model",
                       args.model, "--out", str(out)]
            for modality, path in paths.items():
                command += ["--image", f"{modality}={path}"]
            subprocess.run(command, check=True)
            written = nib.load(out)
            mask = np.asarray(written.dataobj) > 0
            print(f"{name:12s} {''.join(nib.aff2axcodes(written.affine))} "
                  f"{'x'.join(f'{z:.2f}' for z in written.header.get_zooms())} mm: DSC "
                  f"{_dsc(mask, truth):.3f} (grid ceiling {_ceiling(paths, truth, model_plan):.3f}"
                  f"; {int(mask.sum())} voxels predicted, {int(truth.sum())} true)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
