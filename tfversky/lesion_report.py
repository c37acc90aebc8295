"""The lesion report of a prediction: what clinicians and MS researchers read per patient.

``tfversky predict`` writes two cohort files, one row per lesion and one per case:

* ``lesions.csv``: ``LESION_COLUMNS``: each lesion's voxel count and volume (mm^3), its
  centroid in world coordinates (mm, the scan's affine applied to the mean voxel index, as
  ``tfversky evaluate``'s lesion table), and the highest and mean lesion probability inside it;
* ``summary.csv``: ``SUMMARY_COLUMNS``: each case's lesion count, total volume (mL) and
  the operating point that made the mask.

Lesions are the connected components of the mask with the connectivity of the operating
point's small-lesion removal (``inference.LESION_CONNECTIVITY``, 26 neighbours), labelled by
the same function (``metrics.label_lesions``), so the report counts what the mask's lesion
count counts. Volumes are counted on the scan's own grid, with its voxel size: a case's
lesion volumes add up to its mask's volume.
"""

from __future__ import annotations

import numpy as np

from tfversky import detection, inference, metrics
from tfversky._files import atomic_write_text, csv_text

LESIONS_FILE, SUMMARY_FILE = "lesions.csv", "summary.csv"
LESION_COLUMNS = ("case", "lesion", "voxels", "volume_mm3", "centroid_x_mm", "centroid_y_mm",
                  "centroid_z_mm", "max_probability", "mean_probability")
SUMMARY_COLUMNS = ("case", "lesion_count", "lesion_volume_ml", "threshold", "min_lesion_mm3",
                   "operating_point", "members", "tta", "mask", "inputs")


def lesion_table(case: str, mask, probabilities, affine) -> dict:
    """One case's lesions as ``LESION_COLUMNS`` (NumPy columns, one entry per lesion).

    Args:
        case: The case's name (the ``case`` column).
        mask: 3D 0/1 lesion mask on the scan's grid (``Segmentation.mask``).
        probabilities: 3D lesion probabilities on the same grid.
        affine: The scan's voxel-to-world affine.

    Returns:
        dict of columns; lesions numbered 1..n in scan order.

    Raises:
        ValueError: for a mask and probabilities of different shapes.

    Example:

    >>> mask = np.zeros((6, 6, 6), np.uint8); mask[0, 0, :2] = 1; mask[3:5, 3:5, 3:5] = 1
    >>> table = lesion_table("a", mask, mask * 0.9, np.diag([1.0, 1.0, 2.0, 1.0]))
    >>> table["volume_mm3"].tolist(), table["centroid_z_mm"].tolist()
    ([4.0, 16.0], [1.0, 7.0])
    """
    mask, probabilities = np.asarray(mask), np.asarray(probabilities, np.float64)
    if mask.shape != probabilities.shape or mask.ndim != 3:
        raise ValueError(f"Invalid arguments: `mask` and `probabilities` must be one 3D grid; "
                         f"received shapes {mask.shape} and {probabilities.shape}.")
    spacing = inference.voxel_size_mm(affine)
    ids, count = metrics.label_lesions(mask > 0, 0.0, spacing, inference.LESION_CONNECTIVITY)
    sizes = np.bincount(ids.ravel(), minlength=count + 1)
    inside = ids > 0
    labels = ids[inside]
    lesion_probabilities = probabilities[inside]
    highest = np.zeros(count + 1)
    np.maximum.at(highest, labels, lesion_probabilities)
    mean = np.bincount(labels, weights=lesion_probabilities,
                       minlength=count + 1) / np.maximum(sizes, 1)
    world = detection.to_world(detection.lesion_centroids(ids, sizes), affine)
    return {"case": np.full(count, case), "lesion": np.arange(1, count + 1),
            "voxels": sizes[1:], "volume_mm3": sizes[1:] * float(np.prod(spacing)),
            "centroid_x_mm": world[:, 0], "centroid_y_mm": world[:, 1],
            "centroid_z_mm": world[:, 2], "max_probability": highest[1:],
            "mean_probability": mean[1:]}


def write_report(lesions_path, summary_path, tables: list, rows: list) -> None:
    """Writes ``lesions.csv`` (the ``lesion_table`` of every case) and ``summary.csv`` (one
    row per case, ``SUMMARY_COLUMNS``), each atomically.

    Example:

    >>> import pathlib, tempfile
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> mask = np.zeros((4, 4, 4), np.uint8); mask[1, 1, 1] = 1
    >>> row = dict.fromkeys(SUMMARY_COLUMNS, ""); row.update(case="a", lesion_count=1)
    >>> write_report(folder / LESIONS_FILE, folder / SUMMARY_FILE,
    ...              [lesion_table("a", mask, mask * 0.7, np.eye(4))], [row])
    >>> (folder / LESIONS_FILE).read_text().splitlines()[1]
    'a,1,1,1.0,1.0,1.0,1.0,0.7,0.7'
    """
    atomic_write_text(lesions_path, csv_text(LESION_COLUMNS, tables))
    atomic_write_text(summary_path, csv_text(
        SUMMARY_COLUMNS, [{k: [row[k]] for k in SUMMARY_COLUMNS} for row in rows]))
