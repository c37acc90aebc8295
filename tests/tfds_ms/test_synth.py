"""The synthetic MS phantom: lesions where MS puts them, with MS contrast, deterministic."""

import json

import nibabel as nib
import numpy as np
import pytest

from tfds_ms import layouts, synth


@pytest.fixture(scope="module")
def anatomy():
    return synth.load_anatomy(2.0)


@pytest.fixture(scope="module")
def subjects(anatomy):
    indices = (0, synth.HIGH_LOAD_SUBJECT, synth.LOW_LOAD_SUBJECT)
    return {i: synth.synthesize_subject(anatomy, i, seed=0) for i in indices}


def test_lesions_lie_in_white_matter(subjects):
    for subject in subjects.values():
        lesion = subject.lesion >= 0.5
        assert lesion.sum() > 0
        assert np.mean(subject.wm[lesion] > 0.5) > 0.9


def test_lesion_contrast(subjects):
    """Hyperintense on FLAIR and T2, hypointense on T1, against normal white matter."""
    for subject in subjects.values():
        lesion = subject.lesion >= 0.5
        normal_wm = (subject.wm > 0.9) & (subject.lesion < 0.01)
        ratio = {m: subject.images[m][lesion].mean() / subject.images[m][normal_wm].mean()
                 for m in ("flair", "t2", "t1")}
        assert ratio["flair"] > 1.4, ratio
        assert ratio["t2"] > 1.4, ratio
        assert ratio["t1"] < 0.8, ratio


def test_partial_volume_edges(subjects):
    soft = subjects[synth.HIGH_LOAD_SUBJECT].lesion
    assert ((soft > 0.05) & (soft < 0.95)).sum() > 0.2 * (soft >= 0.5).sum()


def test_lesion_load_range_and_extremes(subjects):
    fraction = {i: s.info["lesion_fraction_of_brain"] for i, s in subjects.items()}
    assert all(0.0005 < f < 0.012 for f in fraction.values()), fraction
    assert fraction[synth.HIGH_LOAD_SUBJECT] > 0.006
    assert fraction[synth.LOW_LOAD_SUBJECT] < 0.002
    assert fraction[synth.LOW_LOAD_SUBJECT] < fraction[0] < fraction[synth.HIGH_LOAD_SUBJECT]


def test_skull_stripped_and_scan_geometry_differs(subjects):
    a, b = subjects[0], subjects[synth.HIGH_LOAD_SUBJECT]
    for subject in (a, b):
        brain = subject.images["t1"] > 0
        assert 0.1 < brain.mean() < 0.7  # zero background around the brain
        assert all((subject.images[m] > 0).sum() == brain.sum() for m in subject.images)
    assert a.images["t1"].shape != b.images["t1"].shape
    assert not np.allclose(a.affine, b.affine)


def test_deterministic_with_seed(anatomy, subjects):
    again = synth.synthesize_subject(anatomy, 0, seed=0)
    np.testing.assert_array_equal(again.images["flair"], subjects[0].images["flair"])
    other = synth.synthesize_subject(anatomy, 0, seed=1)
    assert other.info["lesion_ml"] != subjects[0].info["lesion_ml"]


@pytest.mark.parametrize("layout", synth.LAYOUTS)
def test_cli_writes_a_readable_layout(tmp_path, layout):
    extra = ["--modalities", "FLAIR,T1"] if layout in ("nnunet", "bids") else []
    assert synth.main(["--out", str(tmp_path), "--subjects", "2", "--layout", layout,
                       "--resolution", "8", "--seed", "3", "--rater-masks", *extra]) == 0
    found = layouts.find_scans(tmp_path, layout,
                               modalities="FLAIR,T1w" if layout == "bids" else None)
    assert len(found) == 2
    manifest = json.loads((tmp_path / "phantom.json").read_text())
    assert manifest["seed"] == 3 and [s["subject"] for s in manifest["subjects"]] == [
        s.scan_id if layout == "nnunet" else s.subject for s in found]
    flair = nib.load(found[0].images["FLAIR"])
    assert flair.get_data_dtype() == np.int16 and flair.header["qform_code"] == 1
    if layout == "msseg2016":
        assert layouts._existing(layouts.msseg2016_files(tmp_path, 1, 1)["7"]) is not None
    elif layout == "isbi2015":
        assert found[0].images["T1"].name == "training01_01_mprage_pp.nii.gz"
    else:
        assert tuple(found[0].images) == ("FLAIR", "T1")
        names = {"nnunet": ("MS_001_0000.nii.gz", "MS_001_0001.nii.gz"),
                 "bids": ("sub-01_ses-01_FLAIR.nii.gz", "sub-01_ses-01_T1w.nii.gz")}[layout]
        assert tuple(path.name for path in found[0].images.values()) == names


def test_nnunet_test_cases_take_axis_orders_no_training_case_has(tmp_path):
    manifest = synth.synthesize(tmp_path, subjects=3, layout="nnunet", resolution=8,
                                progress=False, modalities=("FLAIR", "T1"), test_subjects=2)
    train = {nib.aff2axcodes(nib.load(s.images["FLAIR"]).affine)
             for s in layouts.find_scans(tmp_path, "nnunet")}
    tests = [nib.load(tmp_path / "imagesTs" / f"MS_00{k}_0001.nii.gz") for k in (4, 5)]
    codes = [nib.aff2axcodes(image.affine) for image in tests]
    assert not set(codes) & train and len(set(codes)) == 2
    assert [t["axis_codes"] for t in manifest["test_subjects"]] == ["".join(c) for c in codes]
    label = nib.load(tmp_path / "labelsTs" / "MS_004.nii.gz")
    np.testing.assert_allclose(label.affine, tests[0].affine)


@pytest.mark.parametrize("kwargs, match", [
    ({"layout": "bids", "modalities": ("T1GD",)}, "the phantom's bids writer has no T1GD"),
    ({"layout": "nnunet", "modalities": ("T3",)}, "the phantom's nnunet writer has no T3"),
    ({"layout": "bids", "test_subjects": 2}, "test_subjects"),
])
def test_layout_writer_errors(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        synth.synthesize(tmp_path, subjects=1, resolution=8, progress=False, **kwargs)


@pytest.mark.parametrize("argv, message", [
    (["--layout", "miccai2008"], "invalid choice"),
    (["--subjects", "0"], "subjects"),
    (["--resolution", "0.5"], "resolution"),
    (["--resolution", "30"], "resolution"),
])
def test_cli_errors(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit):
        synth.main(["--out", str(tmp_path)] + argv)
    assert message in capsys.readouterr().err


@pytest.fixture(scope="module")
def bids_phantom(tmp_path_factory):
    out = tmp_path_factory.mktemp("bids_phantom")
    manifest = synth.synthesize(out, subjects=2, layout="bids", resolution=8.0, progress=False,
                                modalities=("FLAIR", "T1"))
    return out, manifest


def test_bids_output_carries_what_the_tools_ask_for(bids_phantom):
    out, manifest = bids_phantom
    description = json.loads((out / "derivatives/lesions/dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert description["GeneratedBy"][0]["Name"] == "tfds_ms.synth"
    assert (out / "README").read_text().strip()
    assert "phantom.json" in (out / ".bidsignore").read_text().split()
    written = [out / f for s in manifest["subjects"] for f in s["files"].values()]
    assert len(written) == 6
    for path in written:
        assert nib.load(path).header.get_xyzt_units()[0] == "mm"


def test_pybids_opens_the_bids_output_and_finds_every_image_and_mask(bids_phantom):
    bids = pytest.importorskip("bids")
    out, manifest = bids_phantom
    layout = bids.BIDSLayout(out, derivatives=True)
    images = layout.get(scope="raw", datatype="anat", extension=".nii.gz",
                        return_type="filename")
    masks = layout.get(scope="derivatives", desc="lesion", suffix="mask",
                       extension=".nii.gz", return_type="filename")
    expected = {key: sorted(str(out / f) for s in manifest["subjects"]
                            for k, f in s["files"].items() if (k == "mask") == (key == "mask"))
                for key in ("image", "mask")}
    assert sorted(images) == expected["image"] and len(images) == 4
    assert sorted(masks) == expected["mask"] and len(masks) == 2
    assert layout.get_subjects() == ["01", "02"] and layout.get_sessions() == ["01"]
