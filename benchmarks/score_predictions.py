"""Score `tfversky predict -i imagesTs -o OUT` against an nnU-Net dataset's labelsTs.

Each mask is scored on its own scan's grid (the grid predict writes on); the voxel orders and
spacings of the training and test scans are printed, so a test on unseen geometry shows.

    python benchmarks/score_predictions.py DATASET_DIR OUT
"""
import glob
import os
import sys

import nibabel as nib
import numpy as np

from tfversky import metrics

root, pred = sys.argv[1], sys.argv[2]


def describe(path):
    img = nib.load(path)
    return "".join(nib.aff2axcodes(img.affine)), tuple(round(float(z), 2) for z in img.header.get_zooms()[:3])
train = sorted({describe(p) for p in glob.glob(f"{root}/imagesTr/*_0000.nii.gz")})
print("training orders/spacings:", train)

ev = metrics.Evaluator(0.5)
for path in sorted(glob.glob(f"{pred}/*.nii.gz")):
    case = os.path.basename(path)[:-7]
    truth = np.asarray(nib.load(f"{root}/labelsTs/{case}.nii.gz").dataobj) == 1
    mask = nib.load(path)
    assert np.allclose(mask.affine, nib.load(f"{root}/imagesTs/{case}_0000.nii.gz").affine)
    m = np.asarray(mask.dataobj).astype(np.float32)
    s = ev.update(truth, m)
    order, zooms = describe(f"{root}/imagesTs/{case}_0000.nii.gz")
    print(f"{case}: {order} {zooms} shape {mask.shape}: DSC {100*s['dsc']:.2f} sens {100*s['sensitivity']:.2f}")
r = ev.result()
print("pooled:", {k: round(100 * r[k], 2) for k in ("dsc", "sensitivity", "specificity", "f2")})
