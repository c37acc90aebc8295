"""The ms_lesions builder: TFDS's own builder tests on dummy data in each layout, folds,
feature shapes, modalities as data, content-keyed user configs, and an offline build."""

import json
import pathlib
import shutil
import socket

import nibabel as nib
import numpy as np
import pytest
import tensorflow_datasets as tfds

import tfds_ms
from tfds_ms import MsLesions, MsLesionsConfig, assign_folds, layouts, scans
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


SESSIONS = r"^MS_\d+"


class NnunetBuilderTest(tfds.testing.DatasetBuilderTestCase):
    """FLAIR + T1; MS_001's two sessions (MS_001_s1, MS_001_s2) both in fold0 with MS_003."""

    DATASET_CLASS = MsLesions
    BUILDER_CONFIG_NAMES_TO_TEST = [tfds_ms.user_config("nnunet", DUMMY / "nnunet", grid=TINY,
                                                        subject_pattern=SESSIONS)]
    EXAMPLE_DIR = DUMMY / "nnunet"
    SPLITS = {"fold0": 3, "fold1": 2}
    SKIP_CHECKSUMS = True


class BidsBuilderTest(tfds.testing.DatasetBuilderTestCase):
    """Three modalities; sub-01's two sessions both in fold0 with sub-03."""

    DATASET_CLASS = MsLesions
    BUILDER_CONFIG_NAMES_TO_TEST = [tfds_ms.user_config("bids", DUMMY / "bids", grid=TINY,
                                                        modalities="FLAIR,T1w,T2w")]
    EXAMPLE_DIR = DUMMY / "bids"
    SPLITS = {"fold0": 3, "fold1": 2}
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


# --- user datasets: nnU-Net and BIDS ----------------------------------------------------------


def _user_build(data_dir, layout, manual_dir, **options):
    return tfds_ms.builder(f"ms_lesions/{layout}", data_dir=str(data_dir),
                           manual_dir=str(manual_dir), grid=TINY, **options)


def _subjects_by_fold(builder):
    return {split: sorted((ex["subject"].decode(), ex["scan_id"].decode())
                          for ex in tfds.as_numpy(builder.as_dataset(split=split)))
            for split in builder.info.splits}


@pytest.fixture(scope="module")
def flair_only(tmp_path_factory):
    """An nnU-Net dataset holding FLAIR alone, written by the phantom, built once."""
    root = tmp_path_factory.mktemp("nnunet") / "Dataset502_FLAIR"
    tfds_ms.synth.synthesize(root, subjects=4, layout="nnunet", resolution=8, progress=False,
                             modalities=("FLAIR",))
    return _user_build(tmp_path_factory.mktemp("data"), "nnunet", root)


def test_flair_only_nnunet_flows_to_features_and_metadata(flair_only):
    assert flair_only.info.features["image"].shape == (*TINY.shape, 1)
    assert tfds_ms.dataset_modalities(flair_only) == ("FLAIR",)
    assert tfds_ms.dataset_grid(flair_only) == TINY
    assert tfds_ms.dataset_ignore_index(flair_only) is None
    assert "FLAIR (channels last)" in flair_only.info.features["image"].doc.desc
    assert flair_only.builder_config.name.startswith("nnunet_dataset502_flair_flair_")
    ex = next(iter(tfds.as_numpy(flair_only.as_dataset(split="fold0"))))
    assert ex["image"].shape == (*TINY.shape, 1) and ex["subject"].decode() == "MS_001"


def test_a_reader_of_the_prepared_files_knows_the_modalities(flair_only):
    """From the files alone (no builder code, no folder): TFDS's read-only builder."""
    reader = tfds.builder(f"ms_lesions/{flair_only.builder_config.name}",
                          data_dir=flair_only.data_dir_root)
    assert type(reader) is not MsLesions
    assert tfds_ms.dataset_modalities(reader) == ("FLAIR",)
    assert tfds_ms.dataset_grid(reader.info) == TINY


@pytest.mark.parametrize("layout, options, channels", [
    ("nnunet", {}, ("FLAIR", "T1")),
    ("nnunet", {"modalities": "T1,FLAIR"}, ("T1", "FLAIR")),
    ("bids", {"modalities": "FLAIR"}, ("FLAIR",)),
    ("bids", {"modalities": "FLAIR,T1w"}, ("FLAIR", "T1")),
])
def test_modality_sets_and_their_order(tmp_path, layout, options, channels):
    builder = _user_build(tmp_path, layout, DUMMY / layout, **options)
    assert tfds_ms.dataset_modalities(builder) == channels
    ex = next(iter(tfds.as_numpy(builder.as_dataset(split="fold1"))))
    assert ex["image"].shape == (*TINY.shape, len(channels))


def test_channel_order_follows_the_modalities(tmp_path):
    both = _user_build(tmp_path, "nnunet", DUMMY / "nnunet")
    swapped = _user_build(tmp_path, "nnunet", DUMMY / "nnunet", modalities="T1,FLAIR")
    assert both.data_dir != swapped.data_dir
    a = next(iter(tfds.as_numpy(both.as_dataset(split="fold0"))))["image"]
    b = next(iter(tfds.as_numpy(swapped.as_dataset(split="fold0"))))["image"]
    np.testing.assert_allclose(a[..., ::-1], b, atol=1e-5)


@pytest.mark.parametrize("layout, options, fold0", [
    ("nnunet", {"subject_pattern": SESSIONS}, ["MS_001", "MS_001", "MS_003"]),
    ("bids", {"modalities": "FLAIR"}, ["sub-01", "sub-01", "sub-03"]),
])
def test_folds_group_a_subjects_sessions(tmp_path, layout, options, fold0):
    folds = _subjects_by_fold(_user_build(tmp_path, layout, DUMMY / layout, **options))
    assert [subject for subject, _ in folds["fold0"]] == fold0
    assert not {s for s, _ in folds["fold0"]} & {s for s, _ in folds["fold1"]}


def test_without_a_subject_pattern_sessions_are_subjects(tmp_path):
    folds = _subjects_by_fold(_user_build(tmp_path, "nnunet", DUMMY / "nnunet"))
    assert [case for _, case in folds["fold1"]] == ["MS_001_s2", "MS_003_s1"]


def test_splits_final_json_sets_the_folds(tmp_path):
    root = tmp_path / "Dataset501_MS"
    shutil.copytree(DUMMY / "nnunet", root)
    (root / "splits_final.json").write_text(json.dumps(
        [{"train": [], "val": ["MS_002_s1"]}, {"train": [], "val": ["MS_003_s1", "MS_004_s1"]},
         {"train": [], "val": ["MS_001_s1", "MS_001_s2"]}]))
    builder = _user_build(tmp_path / "data", "nnunet", root, subject_pattern=SESSIONS)
    assert builder.builder_config.num_folds == 3
    assert {k: v.num_examples for k, v in builder.info.splits.items()} == {
        "fold0": 1, "fold1": 2, "fold2": 2}
    with pytest.raises(ValueError, match="splits_final.json holds 3 folds.*num_folds=2"):
        _user_build(tmp_path / "data", "nnunet", root, num_folds=2)


def test_a_cache_built_from_one_dataset_is_refused_for_another(tmp_path):
    first, second = tmp_path / "a" / "Dataset501_MS", tmp_path / "b" / "Dataset501_MS"
    shutil.copytree(DUMMY / "nnunet", first)
    shutil.copytree(DUMMY / "nnunet", second)
    for path in second.glob("*/MS_004_s1*"):
        path.unlink()  # the same name, other contents
    data_dir = tmp_path / "data"
    built = _user_build(data_dir, "nnunet", first)
    assert _user_build(data_dir, "nnunet", first).data_dir == built.data_dir  # reused
    with pytest.raises(tfds_ms.CacheMismatchError,
                       match=f"was built from other files .* delete {built.data_dir}"):
        _user_build(data_dir, "nnunet", second)
    # Another folder name is another dataset: built beside the first, not refused.
    other = tmp_path / "c" / "Dataset503_MS"
    shutil.copytree(second, other)
    assert _user_build(data_dir, "nnunet", other).info.splits["fold0"].num_examples == 2


def test_a_folder_changed_after_its_config_was_made_is_refused(tmp_path):
    root = tmp_path / "Dataset501_MS"
    shutil.copytree(DUMMY / "nnunet", root)
    config = tfds_ms.user_config("nnunet", root, grid=TINY)
    for path in root.glob("*/MS_004_s1*"):
        path.unlink()
    with pytest.raises(tfds_ms.CacheMismatchError, match="changed after config"):
        _build(tmp_path, config)


def test_tfds_load_reads_a_user_dataset_by_its_layout_name(tmp_path):
    ds = tfds.load("ms_lesions/nnunet", split="fold1", data_dir=tmp_path,
                   builder_kwargs={"manual_dir": DUMMY / "nnunet", "grid": TINY,
                                   "subject_pattern": SESSIONS})
    assert sorted(ex["scan_id"].decode() for ex in tfds.as_numpy(ds)) == ["MS_002_s1",
                                                                          "MS_004_s1"]


def test_the_ignore_label_maps_to_the_loss_ignore_index(tmp_path):
    root = tmp_path / "Dataset501_MS"
    shutil.copytree(DUMMY / "nnunet", root)
    spec = json.loads((root / "dataset.json").read_text())
    spec["labels"] = {"background": 0, "MS lesion": 1, "ignore": 2}
    (root / "dataset.json").write_text(json.dumps(spec))
    for path in (root / "labelsTr").glob("*.nii.gz"):
        image = nib.load(path)
        data = np.asarray(image.dataobj).copy()
        data[:, :, : data.shape[2] // 2][data[:, :, : data.shape[2] // 2] == 0] = 2
        nib.save(nib.Nifti1Image(data, image.affine, image.header), path)
    builder = _user_build(tmp_path / "data", "nnunet", root)
    assert tfds_ms.dataset_ignore_index(builder) == tfds_ms.scans.IGNORE_LABEL == 255
    labels = [ex["label"] for ex in tfds.as_numpy(builder.as_dataset(split="fold0"))]
    assert all(set(np.unique(label)) <= {0, 1, 255} for label in labels)
    assert any((label == 255).any() for label in labels)
    assert all(ex == (label == 1).sum() for ex, label in zip(
        [e["lesion_voxels"] for e in tfds.as_numpy(builder.as_dataset(split="fold0"))], labels))


def test_label_values_outside_dataset_json_are_named(tmp_path):
    root = tmp_path / "Dataset501_MS"
    shutil.copytree(DUMMY / "nnunet", root)
    path = root / "labelsTr" / "MS_002_s1.nii.gz"
    image = nib.load(path)
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj) * 3, image.affine, image.header), path)
    with pytest.raises(tfds_ms.scans.InvalidScanError,
                       match="Case MS_002_s1: the mask file .*MS_002_s1.nii.gz holds values 0, 3; "
                             "expected 0 \\(background\\), 1 \\(lesion\\)"):
        _user_build(tmp_path / "data", "nnunet", root)
    assert not list((tmp_path / "data").rglob(str(MsLesions.VERSION)))  # nothing half-built


@pytest.mark.parametrize("layout, kwargs, error, match", [
    ("nnunet", {}, ValueError, "reads your dataset folder: pass manual_dir=DIR"),
    ("bids", {"manual_dir": DUMMY / "bids"}, ValueError, "needs the modalities"),
    ("bids", {"manual_dir": DUMMY / "bids", "modalities": "FLAIR,DWI"}, ValueError,
     "no session under .* has DWI"),
    ("nnunet", {"manual_dir": DUMMY / "nnunet", "subject_pattern": "^sub"}, ValueError,
     "does not match case id 'MS_001_s1'"),
    ("nnunet", {"manual_dir": DUMMY / "bids"}, ValueError, "No nnU-Net dataset.json"),
    ("msseg2016", {"modalities": "FLAIR"}, ValueError, "are for ms_lesions/nnunet"),
])
def test_user_dataset_errors(tmp_path, layout, kwargs, error, match):
    with pytest.raises(error, match=match):
        tfds.builder(f"ms_lesions/{layout}", data_dir=tmp_path, **kwargs)
    assert not (tmp_path / "ms_lesions").exists()


def test_build_cli_builds_a_user_dataset_and_names_bad_input(tmp_path, capsys):
    from tfds_ms.__main__ import main

    argv = ["--config", "nnunet", "--manual-dir", str(DUMMY / "nnunet"), "--data-dir",
            str(tmp_path), "--grid-shape", "16,24,24", "--grid-spacing", "10,8.4,8"]
    assert main(argv) == 0
    assert "ms_lesions/nnunet_nnunet_flair_t1_" in capsys.readouterr().out
    assert main(argv + ["--modalities", "FLAIR,T2"]) == 2
    err = capsys.readouterr().err
    assert "has no T2; it holds FLAIR, T1" in err and err.count("\n") == 1


def test_a_longitudinal_pair_chosen_by_bids_filters_builds_as_two_channels(tmp_path):
    root = tmp_path / "bids"
    shutil.copytree(DUMMY / "bids", root)
    for path in sorted(root.glob("sub-*/ses-*/anat/*_FLAIR.nii.gz")):
        shutil.copy(path, path.with_name(path.name.replace("_FLAIR", "_run-2_FLAIR")))
        path.rename(path.with_name(path.name.replace("_FLAIR", "_run-1_FLAIR")))
    (root / "filters.json").write_text('{"flair@1": {"run": 2}}')
    builder = _user_build(tmp_path / "data", "bids", root, modalities="FLAIR@0,FLAIR@1,T1w",
                          bids_filter=["FLAIR@0:run=1"], bids_filter_file=root / "filters.json")
    assert tfds_ms.dataset_modalities(builder) == ("FLAIR@0", "FLAIR@1", "T1")
    assert builder.builder_config.bids_filter == ("FLAIR@0:run=1", "FLAIR@1:run=2")
    assert builder.builder_config.name.startswith("bids_bids_flair_0_flair_1_t1_")
    example = next(iter(tfds.as_numpy(builder.as_dataset(split="fold0"))))
    assert example["image"].shape == (*TINY.shape, 3)
    np.testing.assert_array_equal(example["image"][..., 0], example["image"][..., 1])
    with pytest.raises(ValueError, match="the nnunet layout has none.*--bids-filter"):
        _user_build(tmp_path / "data", "nnunet", DUMMY / "nnunet", bids_filter=["FLAIR:acq=3D"])


def test_raw_scans_are_recorded_and_cut_to_their_foreground(tmp_path,
                                                           keep_noise_outside_the_brain):
    """The same phantom written skull-stripped and raw (noise outside the brain): each
    dataset records what its scans were, per example and in the metadata the plan copies,
    and the raw scans' foreground is their brain, so both give the same volumes."""
    builders = {}
    for raw in (False, True):
        root = tmp_path / f"raw{raw}" / "Dataset503_MS"
        tfds_ms.synth.synthesize(root, subjects=4, layout="nnunet", resolution=8,
                                 progress=False)
        if raw:
            keep_noise_outside_the_brain(sorted((root / "imagesTr").glob("*.nii.gz")))
        builders[raw] = _user_build(tmp_path / f"data{raw}", "nnunet", root)
    for raw, builder in builders.items():
        assert tfds_ms.dataset_preparation(builder) == {
            "intensity_normalization": "zscore", "clip_percentiles": (0.5, 99.5),
            "skull_stripped": not raw}
        flags = [ex["skull_stripped"] for ex in tfds.as_numpy(builder.as_dataset("fold0"))]
        assert flags == [not raw] * 2
    for stripped, raw in zip(*(tfds.as_numpy(builders[key].as_dataset("fold0"))
                               for key in (False, True))):
        assert stripped["scan_id"] == raw["scan_id"]
        np.testing.assert_allclose(raw["image"], stripped["image"], atol=1e-4)  # float32
        np.testing.assert_array_equal(raw["grid_affine"], stripped["grid_affine"])


def test_the_config_is_the_one_place_of_the_normalisation(tmp_path):
    """The builder normalises with its config's percentiles, and its metadata says so."""
    config = MsLesionsConfig(name="isbi2015_clip1_tiny", layout="isbi2015", grid=TINY,
                             clip_percentiles=(1, 99))
    builder = _build(tmp_path, config, DUMMY / "isbi2015")
    assert tfds_ms.dataset_preparation(builder)["clip_percentiles"] == (1.0, 99.0)
    example = next(iter(tfds.as_numpy(builder.as_dataset(split="fold1"))))
    scan = next(s for s in layouts.find_scans(DUMMY / "isbi2015", "isbi2015")
                if s.scan_id == example["scan_id"].decode())
    np.testing.assert_allclose(
        example["image"], scans.make_example(scan, TINY, clip_percentiles=(1, 99))["image"])
    assert not np.allclose(example["image"], scans.make_example(scan, TINY)["image"])
    with pytest.raises(ValueError, match="`clip_percentiles`"):
        MsLesionsConfig(name="bad", clip_percentiles=(99, 1))
