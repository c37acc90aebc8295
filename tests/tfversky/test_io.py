"""tfversky.io: reading scans with errors that name the file, writing like the input."""

import gzip

import nibabel as nib
import numpy as np
import pytest

from tfversky.io import ScanError, load_modalities, load_scan, same_grid, save_like


def _affine():
    return np.array([[0, 0, -1.2, 90], [0.9, 0, 0, -126], [0, 1.1, 0, -72], [0, 0, 0, 1]])


def _write(path, data, affine=None, qform_code=1, sform_code=4):
    affine = _affine() if affine is None else affine
    image = nib.Nifti1Image(np.asarray(data, "float32"), affine)
    image.header.set_qform(affine, code=qform_code)
    image.header.set_sform(affine, code=sform_code)
    image.header.set_xyzt_units("mm", "sec")
    nib.save(image, path)
    return str(path)


@pytest.mark.parametrize("qform_code, sform_code", [(1, 4), (1, 0), (0, 2), (2, 1)])
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nifti_round_trip_keeps_affine_codes_and_header(tmp_path, qform_code, sform_code,
                                                        suffix):
    scan = _write(tmp_path / f"t1{suffix}", np.arange(60).reshape(3, 4, 5), None, qform_code,
                  sform_code)
    data, reference = load_scan(scan, "T1")
    mask = (data > 30).astype(np.uint8)
    save_like(mask, reference, tmp_path / f"mask{suffix}")
    save_like(data / 60, reference, tmp_path / f"prob{suffix}")

    out = nib.load(tmp_path / f"mask{suffix}")
    assert out.get_data_dtype() == np.uint8
    assert out.header.get_slope_inter() == (None, None)  # no scaling
    np.testing.assert_array_equal(np.asarray(out.dataobj), mask)
    np.testing.assert_allclose(out.affine, reference.affine)
    assert int(out.header["qform_code"]) == qform_code
    assert int(out.header["sform_code"]) == sform_code
    np.testing.assert_allclose(out.header.get_qform(), reference.header.get_qform())
    np.testing.assert_allclose(out.header.get_sform(), reference.header.get_sform())
    assert out.header.get_zooms() == reference.header.get_zooms()
    assert out.header.get_xyzt_units() == ("mm", "sec")
    prob = nib.load(tmp_path / f"prob{suffix}")
    assert prob.get_data_dtype() == np.float32
    np.testing.assert_allclose(prob.get_fdata(), data / 60, atol=1e-6)


def test_save_like_refuses_wrong_shape_and_extension(tmp_path):
    _, reference = load_scan(_write(tmp_path / "t1.nii", np.ones((3, 4, 5))))
    with pytest.raises(ValueError, match="shape"):
        save_like(np.zeros((3, 4, 6), np.uint8), reference, tmp_path / "m.nii")
    with pytest.raises(ValueError, match=r"\.nii or \.nii\.gz"):
        save_like(np.zeros((3, 4, 5), np.uint8), reference, tmp_path / "m.img")


def test_load_scan_drops_trailing_singleton_axes(tmp_path):
    data, _ = load_scan(_write(tmp_path / "t1.nii.gz", np.ones((3, 4, 5, 1))))
    assert data.shape == (3, 4, 5) and data.dtype == np.float32


def _corrupt_gzip(path):
    payload = gzip.compress(np.ones(1000, "float32").tobytes())
    path.write_bytes(payload[:len(payload) // 2])


@pytest.mark.parametrize("make, match", [
    (lambda p: None, "does not exist"),
    (lambda p: p.mkdir(), "directory"),
    (lambda p: p.write_bytes(b"not an image at all" * 30), "cannot be read"),
    (_corrupt_gzip, "cannot be read"),
    (lambda p: _write(p, np.ones((3, 4, 5, 2))), r"shape \(3, 4, 5, 2\).* 3D volume"),
    (lambda p: _write(p, np.full((3, 4, 5), np.nan)), "NaN"),
])
def test_load_scan_errors_name_the_file(tmp_path, make, match):
    path = tmp_path / "flair.nii.gz"
    make(path)
    with pytest.raises(ScanError, match=match) as info:
        load_scan(path, "FLAIR")
    assert f"FLAIR file {str(path)!r}" in str(info.value)


def test_truncated_nifti_is_unreadable(tmp_path):
    path = tmp_path / "t2.nii.gz"
    _write(path, np.ones((20, 20, 20)))
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ScanError, match="t2.nii.gz.*cannot be read"):
        load_scan(path, "T2")


def _subject(tmp_path, flair_data=None, flair_affine=None):
    rng = np.random.default_rng(3)
    data = {m: rng.random((6, 7, 8)) for m in ("T1", "T2")}
    paths = {m: _write(tmp_path / f"{m}.nii.gz", d) for m, d in data.items()}
    flair = rng.random((6, 7, 8)) if flair_data is None else flair_data
    paths["FLAIR"] = _write(tmp_path / "FLAIR.nii.gz", flair, flair_affine)
    return paths, data


def test_load_modalities_stacks_in_the_given_order(tmp_path):
    paths, data = _subject(tmp_path)
    image, reference = load_modalities(paths)
    assert image.shape == (6, 7, 8, 3)
    np.testing.assert_allclose(image[..., 1], data["T2"], atol=1e-6)
    np.testing.assert_allclose(reference.affine, _affine())


@pytest.mark.parametrize("flair_data, shift, match", [
    (np.ones((6, 7, 9)), 0.0, r"shape \(6, 7, 9\) vs \(6, 7, 8\)"),
    (np.ones((6, 7, 8)), 2.5, "affine"),
])
def test_modalities_on_other_grids_are_refused_with_the_resampling_offer(
        tmp_path, flair_data, shift, match):
    affine = _affine()
    affine[0, 3] += shift
    paths, _ = _subject(tmp_path, flair_data, affine)
    with pytest.raises(ScanError, match=match) as info:
        load_modalities(paths)
    message = str(info.value)
    assert "FLAIR.nii.gz" in message and "T1.nii.gz" in message
    assert "--resample-to-first" in message and "\n" not in message


def test_resample_to_first_moves_flair_onto_the_t1_grid(tmp_path):
    """FLAIR's grid is shifted by two voxels along its first axis: linear resampling at
    integer offsets is exact, with 0 where FLAIR has no data."""
    rng = np.random.default_rng(4)
    flair = rng.random((6, 7, 8)) + 1
    affine = _affine()
    affine[:3, 3] += 2 * affine[:3, 0]  # FLAIR voxel (i, j, k) is T1 voxel (i + 2, j, k)
    paths, _ = _subject(tmp_path, flair, affine)
    image, _ = load_modalities(paths, resample_to_first=True)
    np.testing.assert_allclose(image[2:, ..., 2], flair[:4], atol=1e-5)
    np.testing.assert_array_equal(image[:2, ..., 2], 0)


def test_same_grid_measures_corner_displacement_in_mm():
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    rotated = affine.copy()
    angle = 0.002  # 2 mrad: the far corner of a 200-voxel grid moves about 0.5 mm
    rotated[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    assert same_grid((200, 200, 200), affine, (200, 200, 200), affine + 1e-5)
    assert not same_grid((200, 200, 200), affine, (200, 200, 200), rotated)
    assert same_grid((10, 10, 10), affine, (10, 10, 10), rotated)  # 0.03 mm at its corners
    assert not same_grid((10, 10, 10), affine, (10, 10, 11), affine)


def test_to_ras_is_a_lossless_reordering():
    import nibabel as nib

    from tfversky.io import to_ras

    data = np.random.default_rng(0).normal(size=(4, 5, 6, 2))
    ras_affine = np.diag([0.9, 1.1, 3.0, 1.0])
    for codes in ("LPS", "PIR", "ASL"):
        transform = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"),
                                                    nib.orientations.axcodes2ornt(codes))
        moved = nib.orientations.apply_orientation(data, transform)
        affine = ras_affine @ nib.orientations.inv_ornt_aff(transform, data.shape[:3])
        back, back_affine = to_ras(moved, affine)
        np.testing.assert_array_equal(back, data)
        np.testing.assert_allclose(back_affine, ras_affine, atol=1e-12)


def test_save_like_leaves_no_partial_file_on_failure(tmp_path, monkeypatch):
    import nibabel as nib

    from tfversky.io import grid_image

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(nib, "save", fail)
    with pytest.raises(OSError, match="disk full"):
        save_like(np.zeros((4, 5, 6), np.uint8), grid_image((4, 5, 6), np.eye(4)),
                  tmp_path / "mask.nii.gz")
    assert list(tmp_path.iterdir()) == []


# --- Readers behind one interface: nibabel and SimpleITK give the same volume ---------------


def _oblique_affine():
    angle = np.deg2rad(17)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0],
                         [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([-1.2, 0.9, 2.5])  # a flipped, anisotropic axis too
    affine[:3, 3] = [91.5, -120.25, -60.0]
    return affine


@pytest.mark.parametrize("ending", [".mha", ".nrrd", ".nii.gz"])
def test_simpleitk_and_nibabel_read_the_same_array_and_ras_affine(tmp_path, ending):
    sitk = pytest.importorskip("SimpleITK")
    from tfversky.io import read_image

    data = np.random.default_rng(0).normal(size=(5, 6, 7)).astype("float32")
    nifti = _write(tmp_path / "scan.nii.gz", data, _oblique_affine())
    # SimpleITK writes the other format itself (its LPS world), so the test converts nothing.
    other = str(tmp_path / f"scan_sitk{ending}")
    sitk.WriteImage(sitk.ReadImage(nifti), other)

    by_nibabel = read_image(nifti)
    by_sitk = read_image(other, reader="simpleitk" if ending == ".nii.gz" else None)
    assert by_nibabel.facts["reader"] == "nibabel" and by_sitk.facts["reader"] == "SimpleITK"
    np.testing.assert_array_equal(by_sitk.data, data)
    np.testing.assert_array_equal(by_nibabel.data, data)
    np.testing.assert_allclose(by_sitk.affine, by_nibabel.affine, atol=1e-4)
    np.testing.assert_allclose(by_sitk.affine, _oblique_affine(), atol=1e-4)
    np.testing.assert_allclose(by_sitk.facts["spacing"], [1.2, 0.9, 2.5], atol=1e-5)


def test_an_mha_modality_stacks_with_a_nifti_one(tmp_path):
    sitk = pytest.importorskip("SimpleITK")

    data = np.arange(60, dtype="float32").reshape(3, 4, 5) + 1
    t1 = _write(tmp_path / "t1.nii.gz", data, _oblique_affine())
    flair = str(tmp_path / "flair.mha")
    sitk.WriteImage(sitk.ReadImage(t1), flair)
    image, reference = load_modalities({"T1": t1, "FLAIR": flair})
    np.testing.assert_array_equal(image[..., 1], data)
    _, from_mha = load_modalities({"FLAIR": flair})
    np.testing.assert_allclose(from_mha.affine, reference.affine, atol=1e-4)
    assert from_mha.header.get_xyzt_units()[0] == "mm"


def test_an_mha_without_simpleitk_names_the_file_and_the_extra(tmp_path, monkeypatch):
    import sys

    from tfversky.io import read_image

    path = tmp_path / "case_0000.mha"
    path.write_bytes(b"ObjectType = Image\n")
    monkeypatch.setitem(sys.modules, "SimpleITK", None)  # import fails as if not installed
    with pytest.raises(ScanError, match=r"FLAIR file .*case_0000\.mha.* needs SimpleITK.*"
                                        r"pip install 'tfversky\[registration\]'"):
        read_image(path, "FLAIR")


def test_a_corrupt_mha_is_refused_naming_the_file(tmp_path):
    pytest.importorskip("SimpleITK")
    from tfversky.io import read_image

    path = tmp_path / "bad.mha"
    path.write_bytes(b"not an image" * 10)
    with pytest.raises(ScanError, match=r"bad\.mha.*cannot be read as an image by SimpleITK"):
        read_image(path)
