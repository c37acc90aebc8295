"""The lesion report: one row per lesion, counted as the mask's lesion count counts them,
volumes on the scan's grid that add up to the mask's volume, world centroids."""

import csv

import nibabel as nib
import numpy as np
import pytest

from tfversky import lesion_report, metrics
from tfversky.lesion_report import LESION_COLUMNS, lesion_table

# An oblique scan of 0.9 x 1.1 x 3 mm voxels: rotated about z, shifted.
_ANGLE = np.deg2rad(20)
AFFINE = np.array([[np.cos(_ANGLE) * 0.9, -np.sin(_ANGLE) * 1.1, 0, -40.0],
                   [np.sin(_ANGLE) * 0.9, np.cos(_ANGLE) * 1.1, 0, 12.0],
                   [0, 0, 3.0, -20.0],
                   [0, 0, 0, 1]])
VOXEL_MM3 = 0.9 * 1.1 * 3.0


def _mask_and_probabilities(seed=0, shape=(30, 32, 12)):
    rng = np.random.default_rng(seed)
    probabilities = rng.random(shape).astype(np.float32)
    mask = (probabilities > 0.8).astype(np.uint8)  # many lesions, some touching by corners
    return mask, probabilities


def test_lesion_volumes_add_up_to_the_mask_volume():
    mask, probabilities = _mask_and_probabilities()
    table = lesion_table("a", mask, probabilities, AFFINE)
    assert table["voxels"].sum() == mask.sum()
    assert table["volume_mm3"].sum() == pytest.approx(mask.sum() * VOXEL_MM3)
    # The lesions are the mask's lesions as the operating point counts them (26-connected).
    _, count = metrics.remove_small_lesions(mask, 0, (0.9, 1.1, 3.0))
    assert len(table["lesion"]) == count and table["lesion"].tolist() == list(range(1, count + 1))
    assert count < len(np.unique(metrics.label_lesions(mask, 0, (1, 1, 1), 1)[0])) - 1


def test_centroids_are_world_coordinates_and_probabilities_are_inside_the_lesion():
    mask = np.zeros((10, 10, 6), np.uint8)
    probabilities = np.zeros(mask.shape, np.float32)
    mask[2:4, 5, 1] = 1  # two voxels
    probabilities[2, 5, 1], probabilities[3, 5, 1] = 0.6, 0.9
    mask[7, 7, 4] = 1
    probabilities[7, 7, 4] = 0.75
    probabilities[0, 0, 0] = 1.0  # outside every lesion: in no row
    table = lesion_table("case 1", mask, probabilities, AFFINE)
    world = nib.affines.apply_affine(AFFINE, [[2.5, 5, 1], [7, 7, 4]])
    centroids = np.stack([table[f"centroid_{axis}_mm"] for axis in "xyz"], axis=1)
    np.testing.assert_allclose(centroids, world)
    np.testing.assert_allclose(table["max_probability"], [0.9, 0.75], atol=1e-6)
    np.testing.assert_allclose(table["mean_probability"], [0.75, 0.75], atol=1e-6)
    assert table["voxels"].tolist() == [2, 1] and set(table["case"]) == {"case 1"}


def test_an_empty_mask_has_no_rows_and_shapes_must_match():
    table = lesion_table("a", np.zeros((4, 4, 4)), np.zeros((4, 4, 4)), np.eye(4))
    assert all(len(column) == 0 for column in table.values())
    with pytest.raises(ValueError, match="one 3D grid"):
        lesion_table("a", np.zeros((4, 4, 4)), np.zeros((4, 4, 5)), np.eye(4))


def test_report_files_have_the_columns_and_one_row_per_lesion(tmp_path):
    tables = [lesion_table(case, *_mask_and_probabilities(seed), AFFINE)
              for seed, case in enumerate(("a", "b"))]
    rows = [{**dict.fromkeys(lesion_report.SUMMARY_COLUMNS, ""), "case": case,
             "lesion_count": len(table["lesion"])} for case, table in zip("ab", tables)]
    lesion_report.write_report(tmp_path / "lesions.csv", tmp_path / "summary.csv", tables, rows)
    with open(tmp_path / "lesions.csv") as handle:
        reader = csv.DictReader(handle)
        lesions = list(reader)
    assert tuple(reader.fieldnames) == LESION_COLUMNS
    assert len(lesions) == sum(len(t["lesion"]) for t in tables)
    assert sum(float(row["volume_mm3"]) for row in lesions if row["case"] == "b") == \
        pytest.approx(tables[1]["volume_mm3"].sum())
    with open(tmp_path / "summary.csv") as handle:
        assert [row["case"] for row in csv.DictReader(handle)] == ["a", "b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lesions.csv", "summary.csv"]
