"""Draws docs/figures/phantom.png: the synthetic phantom's highest- and lowest-load subjects.

    python docs/figures/make_phantom_figure.py
"""

import pathlib
import sys
import tempfile

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from tfds_ms import layouts, synth  # noqa: E402


def main() -> None:
    out = pathlib.Path(tempfile.mkdtemp())
    synth.synthesize(out, subjects=4, layout="msseg2016", seed=0)
    found = layouts.find_scans(out, "msseg2016")
    rows = [(found[synth.HIGH_LOAD_SUBJECT], "highest load"),
            (found[synth.LOW_LOAD_SUBJECT], "lowest load")]
    fig, axes = plt.subplots(len(rows), 4, figsize=(10, 5.6))
    for (scan, title), row in zip(rows, axes):
        images = {k: nib.as_closest_canonical(nib.load(p))
                  for k, p in {**scan.images, "label": scan.label}.items()}
        volumes = {k: img.get_fdata() for k, img in images.items()}
        dx, dy = images["t1"].header.get_zooms()[:2]  # voxels are anisotropic: draw in mm
        z = int(np.argmax(volumes["label"].sum((0, 1))))
        for ax, key in zip(row, ("t1", "t2", "flair", "flair")):
            ax.imshow(np.rot90(volumes[key][:, :, z]), cmap="gray", aspect=dy / dx)
            ax.set_axis_off()
            ax.set_title(f"{key.upper()}" if ax is not row[3] else "FLAIR + lesion mask",
                         fontsize=9)
        row[3].contour(np.rot90(volumes["label"][:, :, z]), levels=[0.5], colors="r",
                       linewidths=0.8)
        row[0].text(-10, volumes["t1"].shape[1] / 2, f"{scan.subject}\n{title}", rotation=90,
                    va="center", ha="right", fontsize=9)
    fig.suptitle("Synthetic MS phantom (MNI152 anatomy, seed 0): axial slice with most lesion",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(HERE / "phantom.png", dpi=80)


if __name__ == "__main__":
    main()
