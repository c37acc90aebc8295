"""Every bad input a user can hand the builder: each error names the subject and the file."""

import gzip
import pathlib
import shutil
import sys

import nibabel as nib
import numpy as np
import pytest
import tensorflow_datasets as tfds

from tfds_ms import MsLesions, MsLesionsConfig, layouts, scans
from tfversky.preprocessing import ReferenceGrid

DUMMY = pathlib.Path(__file__).parent / "dummy_data"
TINY = ReferenceGrid((16, 24, 24), (10.0, 8.4, 8.0))
SUBJECT = "center01_patient01"


@pytest.fixture
def msseg(tmp_path):
    """A writable copy of the MSSEG dummy data; returns (root, files of the first patient)."""
    root = tmp_path / "msseg"
    shutil.copytree(DUMMY / "msseg2016", root)
    return root, layouts.msseg2016_files(root, 1, 1)


def _first_scan(root, layout="msseg2016"):
    return layouts.find_scans(root, layout)[0]


def _rewrite(path, transform, dtype=None):
    img = nib.load(path)
    data = transform(np.asarray(img.dataobj))
    nib.save(nib.Nifti1Image(data.astype(dtype or data.dtype), img.affine), path)


def test_dummy_scan_loads(msseg):
    root, _ = msseg
    loaded = scans.load_scan(_first_scan(root))
    assert loaded.image.shape[-1] == 3 and loaded.image.dtype == np.float32
    assert nib.aff2axcodes(loaded.affine) == ("R", "A", "S")
    assert loaded.label.shape == loaded.image.shape[:3] and loaded.label.dtype == np.uint8


def test_missing_modality(msseg):
    root, files = msseg
    files["T2"].unlink()
    with pytest.raises(layouts.LayoutError, match=f"Subject {SUBJECT}: missing T2 file .*T2_"):
        layouts.find_scans(root, "msseg2016")


def test_missing_mask(msseg):
    root, files = msseg
    files["consensus"].unlink()
    with pytest.raises(layouts.LayoutError, match=f"{SUBJECT}: missing consensus file"):
        layouts.find_scans(root, "msseg2016")


def test_missing_rater_mask_named(msseg):
    root, _ = msseg
    with pytest.raises(layouts.LayoutError, match="missing 3 file .*ManualSegmentation_3"):
        layouts.find_scans(root, "msseg2016", rater="3")


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_unreadable_file(msseg, damage):
    root, files = msseg
    path = files["FLAIR"]
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        path.write_bytes(gzip.compress(b"not a nifti file" * 50))
    with pytest.raises(scans.InvalidScanError,
                       match=f"Case {SUBJECT}: the FLAIR file .*FLAIR_.* cannot be read"):
        scans.load_scan(_first_scan(root))


def test_truncated_uncompressed_nii(tmp_path):
    """ISBI ships plain .nii: a cut-off one must fail as clearly as a broken .nii.gz."""
    root = tmp_path / "isbi"
    shutil.copytree(DUMMY / "isbi2015", root)
    files = layouts.isbi2015_files(root, 2, 1)
    gz = pathlib.Path(str(files["T1"]) + ".gz")
    nib.save(nib.load(gz), files["T1"])  # a plain .nii, found instead of the .gz
    gz.unlink()
    scan = [s for s in layouts.find_scans(root, "isbi2015") if s.subject == "training02"][0]
    assert scan.images["T1"] == files["T1"]
    scans.load_scan(scan)
    files["T1"].write_bytes(files["T1"].read_bytes()[:-500])
    with pytest.raises(scans.InvalidScanError, match="training02_01: the T1 file .* cannot be read"):
        scans.load_scan(scan)


def test_modalities_with_different_shapes(msseg):
    root, files = msseg
    _rewrite(files["T2"], lambda a: a[:-2])
    with pytest.raises(scans.InvalidScanError,
                       match=f"Case {SUBJECT}: the T2 file .*T2_.* is not on the voxel grid "
                             f"of the T1 file"):
        scans.load_scan(_first_scan(root))


def test_mask_on_another_grid(msseg):
    root, files = msseg
    img = nib.load(files["consensus"])
    moved = img.affine.copy()
    moved[:3, 3] += 5.0
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), moved), files["consensus"])
    with pytest.raises(scans.InvalidScanError, match="the mask file .* is not on the voxel grid"):
        scans.load_scan(_first_scan(root))


def test_nan_voxels(msseg):
    root, files = msseg

    def poke(a):
        a = a.astype(np.float32)
        a[2, 3, 4] = np.nan
        return a

    _rewrite(files["FLAIR"], poke)
    with pytest.raises(scans.InvalidScanError,
                       match=f"Case {SUBJECT}: the FLAIR file .* holds 1 NaN/Inf voxels"):
        scans.load_scan(_first_scan(root))


def test_label_values_other_than_0_1(msseg):
    root, files = msseg
    _rewrite(files["consensus"], lambda a: a * 2)
    with pytest.raises(scans.InvalidScanError,
                       match=f"Case {SUBJECT}: the mask file .*Consensus.* holds values 0, 2"):
        scans.load_scan(_first_scan(root))


def test_probabilistic_float_mask_is_an_error(msseg):
    root, files = msseg
    _rewrite(files["consensus"], lambda a: a * 0.5, np.float32)
    with pytest.raises(scans.InvalidScanError, match=r"holds values 0.0, 0.5"):
        scans.load_scan(_first_scan(root))


def test_float_mask_of_zeros_and_ones_is_fixed_up(msseg):
    """Masks stored as floating point with values 0.0/1.0 (up to rounding) are accepted."""
    root, files = msseg
    reference = scans.load_scan(_first_scan(root)).label
    _rewrite(files["consensus"], lambda a: a.astype(np.float32) * (1 + 1e-5), np.float32)
    label = scans.load_scan(_first_scan(root)).label
    assert label.dtype == np.uint8
    np.testing.assert_array_equal(label, reference)


def test_all_zero_scan(msseg):
    root, files = msseg
    for key in ("T1", "T2", "FLAIR"):
        _rewrite(files[key], np.zeros_like)
    with pytest.raises(scans.InvalidScanError, match=f"Case {SUBJECT}: every voxel"):
        scans.load_scan(_first_scan(root))


def test_not_3d(msseg):
    root, files = msseg
    _rewrite(files["T1"], lambda a: np.stack([a, a], -1))
    with pytest.raises(scans.InvalidScanError, match="the T1 file .* has shape .*a 3D volume is expected"):
        scans.load_scan(_first_scan(root))


@pytest.mark.parametrize("layout", ["isbi2015", "msseg2016"])
def test_empty_or_missing_folder(tmp_path, layout):
    with pytest.raises(layouts.LayoutError, match=f"No {layout} data under"):
        layouts.find_scans(tmp_path, layout)
    with pytest.raises(layouts.LayoutError, match="does not exist"):
        layouts.find_scans(tmp_path / "nowhere", layout)


def test_subject_folder_without_scans(tmp_path):
    (tmp_path / "training" / "training07" / "preprocessed").mkdir(parents=True)
    with pytest.raises(layouts.LayoutError, match="Subject training07: no scans"):
        layouts.find_scans(tmp_path, "isbi2015")


def test_root_may_be_the_training_folder_itself():
    direct = layouts.find_scans(DUMMY / "msseg2016" / "Training", "msseg2016")
    assert [s.subject for s in direct] == [s.subject for s in
                                           layouts.find_scans(DUMMY / "msseg2016", "msseg2016")]


def test_unknown_layout_and_rater():
    with pytest.raises(ValueError, match="argument `layout`.*layout='miccai2008'"):
        layouts.find_scans(DUMMY, "miccai2008")
    with pytest.raises(ValueError, match="argument `rater`.*rater='mask3'"):
        layouts.find_scans(DUMMY / "isbi2015", "isbi2015", rater="mask3")


def test_build_reports_the_bad_subject(msseg, tmp_path):
    """An error deep in the build reaches the user with the subject and file."""
    root, files = msseg
    _rewrite(files["consensus"], lambda a: a * 3)
    builder = MsLesions(config=MsLesionsConfig(name="msseg2016_tiny", grid=TINY),
                        data_dir=tmp_path / "data")
    with pytest.raises(scans.InvalidScanError, match=f"Case {SUBJECT}: the mask file"):
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=root))


def test_registration_without_simpleitk_says_how_to_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "SimpleITK", None)  # as if it were not installed
    scan = layouts.find_scans(DUMMY / "msseg2016", "msseg2016")[0]
    with pytest.raises(ImportError, match="pip install SimpleITK.*register=False"):
        scans.make_example(scan, TINY, register=True)


def test_a_brain_wider_than_the_grid_is_cropped_with_a_warning():
    scan = layouts.find_scans(DUMMY / "nnunet", "nnunet")[2]
    narrow = ReferenceGrid((8, 24, 24), (10.0, 8.4, 8.0))  # 80 mm from left to right
    with pytest.warns(scans.FieldOfViewWarning,
                      match=r"Case MS_002_s1 \(.*MS_002_s1_0000.nii.gz\): .* % of the brain lies "
                            r"outside the reference grid's field of view \(80 x 201.6 x 192 mm"):
        example = scans.make_example(scan, narrow)
    assert example["image"].shape == (8, 24, 24, 2)


def test_a_brain_inside_the_grid_gives_no_warning(recwarn):
    scans.make_example(layouts.find_scans(DUMMY / "nnunet", "nnunet")[2], TINY)
    assert not [w for w in recwarn if issubclass(w.category, scans.FieldOfViewWarning)]


def test_register_needs_a_t1():
    scan = layouts.find_scans(DUMMY / "bids", "bids", modalities="FLAIR,T2w")[0]
    with pytest.raises(scans.InvalidScanError, match="register=True aligns the T1"):
        scans.make_example(scan, TINY, register=True)
