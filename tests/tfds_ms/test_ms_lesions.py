"""The ms_lesions builder: TFDS's own builder tests on dummy data in each layout, folds,
feature shapes, and an offline build."""

import pathlib
import socket

import numpy as np
import pytest
import tensorflow_datasets as tfds

import tfds_ms
from tfds_ms import MsLesions, MsLesionsConfig, assign_folds
from tfversky.preprocessing import PAPER_GRID, ReferenceGrid

DUMMY = pathlib.Path(__file__).parent / "dummy_data"
# The dummy scans' field of view on a 16x24x24 grid (10 x 8.4 x 8 mm voxels).
TINY = ReferenceGrid((16, 24, 24), (10.0, 8.4, 8.0))


class Isbi2015BuilderTest(tfds.testing.DatasetBuilderTestCase):
    """training01 has two time points, both in fold0 with training03."""

    DATASET_CLASS = MsLesions
    BUILDER_CONFIG_NAMES_TO_TEST = [MsLesionsConfig(name="isbi2015_tiny", layout="isbi2015",
                                                    grid=TINY)]
    EXAMPLE_DIR = DUMMY / "isbi2015"
    SPLITS = {"fold0": 3, "fold1": 2}
    SKIP_CHECKSUMS = True


class Msseg2016BuilderTest(tfds.testing.DatasetBuilderTestCase):
    DATASET_CLASS = MsLesions
    BUILDER_CONFIG_NAMES_TO_TEST = [MsLesionsConfig(name="msseg2016_tiny", layout="msseg2016",
                                                    grid=TINY)]
    EXAMPLE_DIR = DUMMY / "msseg2016"
    SPLITS = {"fold0": 2, "fold1": 2}
    SKIP_CHECKSUMS = True


def _build(tmp_path, config, manual_dir=None):
    builder = MsLesions(config=config, data_dir=tmp_path / "data")
    builder.download_and_prepare(
        download_dir=tmp_path / "downloads",
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    return builder


@pytest.fixture(scope="module")
def isbi_3fold(tmp_path_factory):
    config = MsLesionsConfig(name="isbi2015_3fold_tiny", layout="isbi2015", grid=TINY,
                             num_folds=3, rater="mask2")
    return _build(tmp_path_factory.mktemp("isbi"), config, DUMMY / "isbi2015")


def test_folds_are_disjoint_by_subject_and_cover_all(isbi_3fold):
    subjects = {}
    for split in isbi_3fold.info.splits:
        examples = list(tfds.as_numpy(isbi_3fold.as_dataset(split=split)))
        subjects[split] = {ex["subject"].decode() for ex in examples}
        for ex in examples:
            assert ex["scan_id"].decode().startswith(ex["subject"].decode())
    assert sorted(subjects) == ["fold0", "fold1", "fold2"]
    everyone = set().union(*subjects.values())
    assert everyone == {f"training0{i}" for i in range(1, 5)}
    assert sum(len(s) for s in subjects.values()) == len(everyone)  # no subject twice
    assert subjects["fold0"] == {"training01", "training04"}  # sorted ids, i % 3


def test_examples_shapes_dtypes_and_provenance(isbi_3fold):
    ex = next(iter(tfds.as_numpy(isbi_3fold.as_dataset(split="fold1"))))
    assert ex["image"].shape == (16, 24, 24, 3) and ex["image"].dtype == np.float32
    assert ex["label"].shape == (16, 24, 24) and ex["label"].dtype == np.uint8
    assert set(np.unique(ex["label"])) <= {0, 1}
    assert ex["lesion_voxels"] == ex["label"].sum()
    brain = ex["image"].any(-1)
    # z-scored inside the brain, 0 outside
    np.testing.assert_allclose(ex["image"][brain].mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(ex["image"][brain].std(0), 1, atol=1e-3)
    assert ex["affine"].shape == (4, 4) and ex["shape"].dtype == np.int32
    np.testing.assert_allclose(np.diag(ex["grid_affine"])[:3], TINY.spacing)


@pytest.mark.parametrize("name", ["synthetic", "isbi2015", "isbi2015_mask2", "msseg2016"])
def test_paper_grid_features(name, tmp_path):
    features = tfds.builder(f"ms_lesions/{name}", data_dir=tmp_path).info.features
    assert features["image"].shape == (128, 224, 256, 3)
    assert features["image"].np_dtype == np.float32
    assert features["label"].shape == (128, 224, 256)
    assert features["label"].np_dtype == np.uint8


def test_lowres_config_grid(tmp_path):
    features = tfds.builder("ms_lesions/synthetic_lowres", data_dir=tmp_path).info.features
    assert features["image"].shape == (64, 112, 128, 3)
    assert PAPER_GRID.scaled(2).field_of_view == PAPER_GRID.field_of_view


def test_default_config_is_synthetic(tmp_path):
    assert tfds.builder("ms_lesions", data_dir=tmp_path).builder_config.name == "synthetic"


def test_synthetic_builds_offline(tmp_path, monkeypatch):
    """The synthetic config makes its phantom and builds with every socket refused."""
    attempts = []

    def refuse(self, address, *args):
        attempts.append(address)
        raise OSError(f"network access during the build: {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: refuse(None, a))
    config = MsLesionsConfig(name="synthetic_offline", source="synthetic", grid=TINY,
                             synth_subjects=4, synth_resolution=8)
    builder = MsLesions(config=config, data_dir=tmp_path / "data")
    builder.download_and_prepare()  # default download config, as tfds.load uses
    assert attempts == []
    assert {s: builder.info.splits[s].num_examples for s in ("fold0", "fold1")} == {
        "fold0": 2, "fold1": 2}
    phantom = next((tmp_path / "data" / "downloads").glob("phantom_msseg2016_4subjects_*"))
    assert (phantom / "phantom.json").is_file()
    assert len(list(builder.as_dataset(split="fold0"))) == 2


def test_tfds_load_with_manual_dir(tmp_path):
    """The documented tfds.load call (on the tiny grid: the named configs use the paper's)."""
    config = MsLesionsConfig(name="msseg2016_tiny", layout="msseg2016", grid=TINY)
    ds = tfds.load("ms_lesions", split="fold1", data_dir=tmp_path,
                   builder_kwargs={"config": config},
                   download_and_prepare_kwargs={"download_config": tfds.download.DownloadConfig(
                       manual_dir=DUMMY / "msseg2016")})
    subjects = sorted(ex["subject"].decode() for ex in tfds.as_numpy(ds))
    assert subjects == ["center01_patient02", "center01_patient04"]


def test_wrong_layout_in_manual_dir_is_named(tmp_path):
    config = MsLesionsConfig(name="isbi2015_tiny", layout="isbi2015", grid=TINY)
    with pytest.raises(tfds_ms.layouts.LayoutError, match="No isbi2015 data under .*msseg2016"):
        _build(tmp_path, config, DUMMY / "msseg2016")


def test_assign_folds():
    folds = assign_folds([f"s{i:02d}" for i in range(15)] + ["s00"], 2)
    assert list(folds.values()).count(0) == 8 and list(folds.values()).count(1) == 7
    assert assign_folds(["b", "a"], 2) == {"a": 0, "b": 1}


@pytest.mark.parametrize("kwargs, match", [
    ({"layout": "miccai2008"}, "layout"),
    ({"source": "web"}, "source"),
    ({"layout": "isbi2015", "rater": "consensus"}, "rater"),
    ({"num_folds": 1}, "num_folds"),
    ({"source": "synthetic", "synth_subjects": 1}, "synth_subjects"),
])
def test_config_errors_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MsLesionsConfig(name="bad", **kwargs)


def test_too_few_subjects_for_the_folds(tmp_path):
    config = MsLesionsConfig(name="msseg_5fold", layout="msseg2016", grid=TINY, num_folds=5)
    with pytest.raises(ValueError, match="4 subjects cannot fill 5 folds"):
        _build(tmp_path, config, DUMMY / "msseg2016")


def test_manual_download_instructions_name_both_layouts():
    text = tfds_ms.MANUAL_DOWNLOAD_INSTRUCTIONS
    assert "training01_01_" in text and "Consensus.nii.gz" in text


def test_build_cli_rejects_unknown_config(capsys):
    from tfds_ms.__main__ import main

    with pytest.raises(SystemExit):
        main(["--config", "miccai2008"])
    assert "invalid choice: 'miccai2008'" in capsys.readouterr().err
