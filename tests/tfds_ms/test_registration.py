"""Optional rigid registration (SimpleITK): recovers the phantom's known head pose."""

import numpy as np
import pytest

from tfds_ms import synth

sitk = pytest.importorskip("SimpleITK")

from tfds_ms import registration  # noqa: E402
from tfversky import preprocessing  # noqa: E402


@pytest.fixture(scope="module")
def subject():
    return synth.synthesize_subject(synth.load_anatomy(2.0), index=0, seed=0)


def test_recovers_the_phantom_pose(subject):
    template, template_affine, center = registration._template()
    world = registration.rigid_transform(subject.images["t1"], subject.affine, template,
                                         template_affine)
    relative = np.linalg.inv(subject.pose) @ world  # identity if the pose is recovered
    angle = np.rad2deg(np.arccos(np.clip((np.trace(relative[:3, :3]) - 1) / 2, -1, 1)))
    assert angle < 1.0, angle
    for point in (center, center + [40, 0, 0], center + [0, 0, 40]):
        error = np.linalg.norm((world - subject.pose) @ np.append(point, 1))
        assert error < 1.5, error


def test_registered_grid_lies_in_the_template_frame(subject):
    grid = preprocessing.ReferenceGrid((32, 56, 64), (5.0, 3.6, 3.0))
    grid_affine = registration.registered_grid_affine(subject.images["t1"], subject.affine, grid)
    image = np.stack([subject.images[m] for m in ("t1", "t2", "flair")], -1)
    out, label, placed = preprocessing.prepare_volume(
        image, subject.affine, grid, (subject.lesion >= 0.5).astype(np.uint8),
        grid_affine=grid_affine)
    np.testing.assert_array_equal(placed, grid_affine)
    # The pose undone, the grid's axes are the template's (the phantom's rotation was 1-6 deg).
    in_template = np.linalg.inv(subject.pose) @ grid_affine
    np.testing.assert_allclose(in_template[:3, :3], np.diag(grid.spacing), atol=0.1)
    assert out.shape == (32, 56, 64, 3) and label.any()


def test_builder_with_registration(tmp_path):
    import pathlib

    import tensorflow_datasets as tfds

    from tfds_ms import MsLesions, MsLesionsConfig

    dummy = pathlib.Path(__file__).parent / "dummy_data" / "msseg2016"
    grid = preprocessing.ReferenceGrid((16, 24, 24), (10.0, 8.4, 8.0))
    config = MsLesionsConfig(name="msseg2016_registered_tiny", grid=grid, register=True)
    builder = MsLesions(config=config, data_dir=tmp_path)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=dummy))
    example = next(iter(tfds.as_numpy(builder.as_dataset(split="fold0"))))
    assert example["image"].shape == (16, 24, 24, 3)
    assert not np.allclose(example["grid_affine"][:3, :3], np.diag(grid.spacing))  # rotated
