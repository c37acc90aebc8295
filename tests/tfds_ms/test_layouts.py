"""The nnU-Net and BIDS readers: cases, modalities, subjects, folds, and every bad input."""

import json
import pathlib
import shutil

import nibabel as nib
import numpy as np
import pytest

from tfds_ms import layouts

DUMMY = pathlib.Path(__file__).parent / "dummy_data"
SESSIONS = r"^MS_\d+"


@pytest.fixture
def nnunet(tmp_path):
    root = tmp_path / "Dataset501_MS"
    shutil.copytree(DUMMY / "nnunet", root)
    return root


@pytest.fixture
def bids(tmp_path):
    root = tmp_path / "bids"
    shutil.copytree(DUMMY / "bids", root)
    return root


def _edit_json(path, **changes):
    spec = json.loads(path.read_text())
    spec.update(changes)
    path.write_text(json.dumps(spec))


def test_nnunet_cases_channels_and_subjects():
    found = layouts.find_scans(DUMMY / "nnunet", "nnunet", subject_pattern=SESSIONS)
    assert [s.scan_id for s in found] == ["MS_001_s1", "MS_001_s2", "MS_002_s1", "MS_003_s1",
                                          "MS_004_s1"]
    assert [s.subject for s in found] == ["MS_001", "MS_001", "MS_002", "MS_003", "MS_004"]
    assert {name: path.name for name, path in found[0].images.items()} == {
        "FLAIR": "MS_001_s1_0000.nii.gz", "T1": "MS_001_s1_0001.nii.gz"}
    assert found[0].label.name == "MS_001_s1.nii.gz" and found[0].fold is None
    # Without a pattern every case is its own subject.
    assert len({s.subject for s in layouts.find_scans(DUMMY / "nnunet", "nnunet")}) == 5


def test_nnunet_subset_of_channels_in_the_order_asked():
    found = layouts.find_scans(DUMMY / "nnunet", "nnunet", modalities="T1w,FLAIR")
    assert [p.name[-11:] for p in found[0].images.values()] == ["0001.nii.gz", "0000.nii.gz"]
    assert tuple(found[0].images) == ("T1", "FLAIR")


def test_subject_of():
    assert layouts.subject_of("MS_001_s2", SESSIONS) == "MS_001"
    assert layouts.subject_of("MS_001_s2", r"MS_(\d+)") == "001"
    assert layouts.subject_of("MS_001_s2", None) == "MS_001_s2"


def test_splits_final_json_is_honoured(nnunet):
    splits = [{"train": ["MS_002_s1", "MS_003_s1"], "val": ["MS_001_s1", "MS_001_s2", "MS_004_s1"]},
              {"train": [], "val": ["MS_002_s1", "MS_003_s1"]}]
    (nnunet / "splits_final.json").write_text(json.dumps(splits))
    found = layouts.find_scans(nnunet, "nnunet", subject_pattern=SESSIONS)
    assert {s.scan_id: s.fold for s in found} == {"MS_001_s1": 0, "MS_001_s2": 0, "MS_002_s1": 1,
                                                 "MS_003_s1": 1, "MS_004_s1": 0}


@pytest.mark.parametrize("splits, match", [
    ([{"val": ["MS_001_s1", "MS_002_s1", "MS_003_s1", "MS_004_s1"]}, {"val": ["MS_001_s2"]}],
     "puts subject 'MS_001' .* in folds \\[0, 1\\]"),
    ([{"val": ["MS_001_s1", "MS_001_s2"]}, {"val": ["MS_002_s1"]}], "cases in no fold"),
    ([{"val": ["MS_009_s1"]}], "cases without files"),
    ({"val": 3}, "not an nnU-Net splits file"),
])
def test_bad_splits_final_json(nnunet, splits, match):
    (nnunet / "splits_final.json").write_text(json.dumps(splits))
    with pytest.raises(layouts.LayoutError, match=match):
        layouts.find_scans(nnunet, "nnunet", subject_pattern=SESSIONS)


@pytest.mark.parametrize("damage, match", [
    (lambda root: (root / "dataset.json").unlink(), "No nnU-Net dataset.json in .*Dataset501_MS"),
    (lambda root: (root / "dataset.json").write_text("{not json"),
     "dataset.json cannot be read as JSON"),
    (lambda root: _edit_json(root / "dataset.json", channel_names=None), "lacks `channel_names`"),
    (lambda root: _edit_json(root / "dataset.json", channel_names={"0": "FLAIR", "2": "T1"}),
     "keys must be"),
    (lambda root: _edit_json(root / "dataset.json", channel_names={"0": "FLAIR", "1": "T1@x"}),
     "Invalid channel name 'T1@x'.*Rename the channel"),
    (lambda root: _edit_json(root / "dataset.json", labels=None), "lacks `labels`"),
    (lambda root: _edit_json(root / "dataset.json",
                             labels={"background": 0, "wm": 1, "gm": 2}), "one lesion class"),
    (lambda root: _edit_json(root / "dataset.json", file_ending=".png"),
     "file_ending '.png' is not an image format tfversky reads"),
    (lambda root: (root / "imagesTr" / "MS_003_s1_0001.nii.gz").unlink(),
     "Case MS_003_s1: missing T1 file .*MS_003_s1_0001.nii.gz"),
    (lambda root: shutil.rmtree(root / "labelsTr"), "No training cases"),
])
def test_nnunet_bad_input(nnunet, damage, match):
    damage(nnunet)
    with pytest.raises(layouts.LayoutError, match=match):
        layouts.find_scans(nnunet, "nnunet")


def test_nnunet_bad_options(nnunet):
    with pytest.raises(layouts.LayoutError, match="'MS_X' does not match case id 'MS_001_s1'"):
        layouts.find_scans(nnunet, "nnunet", subject_pattern="MS_X")
    with pytest.raises(layouts.LayoutError, match="dataset.json \\(channel_names\\) has no "
                                                  "T2; it holds FLAIR, T1.*--modalities"):
        layouts.find_scans(nnunet, "nnunet", modalities="FLAIR,T2")


def test_bids_sessions_modalities_and_masks():
    found = layouts.find_scans(DUMMY / "bids", "bids", modalities="FLAIR,T1w,T2w")
    assert [s.scan_id for s in found] == ["sub-01_ses-01", "sub-01_ses-02", "sub-02_ses-01",
                                          "sub-03_ses-01", "sub-04_ses-01"]
    assert [s.subject for s in found][:2] == ["sub-01", "sub-01"]
    assert tuple(found[1].images) == ("FLAIR", "T1", "T2")
    assert found[1].images["T1"].name == "sub-01_ses-02_T1w.nii.gz"
    assert found[1].label.name == "sub-01_ses-02_desc-lesion_mask.nii.gz"


def test_bids_without_sessions_and_a_named_mask_folder(bids):
    for session in sorted(bids.rglob("ses-01")):  # sub-*/anat/sub-*_FLAIR.nii.gz, no sessions
        for path in list(session.rglob("*.nii.gz")):
            target = session.parent / "anat" / path.name.replace("_ses-01", "")
            target.parent.mkdir(exist_ok=True)
            path.rename(target)
    for folder in sorted(bids.rglob("ses-0*"), reverse=True):
        shutil.rmtree(folder)
    shutil.move(bids / "derivatives" / "lesions", bids / "derivatives" / "experts")
    for path in (bids / "derivatives" / "experts").rglob("*_desc-lesion_mask.nii.gz"):
        path.rename(path.with_name(path.name.replace("desc-lesion_mask", "label-lesion_roi")))
    found = layouts.find_scans(bids, "bids", modalities="FLAIR", mask_folder="derivatives/experts",
                               mask_pattern="*_label-lesion_roi.nii.gz")
    assert [s.scan_id for s in found] == ["sub-01", "sub-02", "sub-03", "sub-04"]
    with pytest.raises(layouts.LayoutError, match="No lesion mask matching "
                                                  "'\\*_desc-lesion_mask.* under"):
        layouts.find_scans(bids, "bids", modalities="FLAIR")


@pytest.mark.parametrize("damage, modalities, match", [
    (lambda root: [shutil.rmtree(p) for p in root.glob("sub-*")], "FLAIR", "No BIDS subject under"),
    (lambda root: shutil.rmtree(root / "derivatives/lesions"), "FLAIR",
     "No lesion mask matching .* under .*derivatives/\\* \\(no such folder\\).*--mask-folder"),
    (lambda root: (root / "sub-03/ses-01/anat/sub-03_ses-01_T1w.nii.gz").unlink(), "FLAIR,T1w",
     "Case sub-03_ses-01: missing T1 file .*sub-03_ses-01_T1w.nii.gz"),
    (lambda root: shutil.copy(root / "sub-03/ses-01/anat/sub-03_ses-01_T1w.nii.gz",
                              root / "sub-03/ses-01/anat/sub-03_ses-01_run-2_T1w.nii.gz"),
     "T1w", "Case sub-03_ses-01: 2 T1 files match; choose one with a filter. "
            "sub-03_ses-01_T1w.nii.gz: --bids-filter T1:run=; "
            "sub-03_ses-01_run-2_T1w.nii.gz: --bids-filter T1:run=2"),
    (lambda root: None, "FLAIR,PDw", "no session under .* has PD \\(found: FLAIR, T1, T2\\)"),
    (lambda root: None, "FLAIR,T3", "no session under .* has T3 .*--modalities"),
    (lambda root: None, None, "needs the modalities to read"),
])
def test_bids_bad_input(bids, damage, modalities, match):
    damage(bids)
    with pytest.raises(ValueError, match=match):
        layouts.find_scans(bids, "bids", modalities=modalities)


def test_isbi_and_msseg_take_a_chosen_set_of_modalities():
    found = layouts.find_scans(DUMMY / "msseg2016", "msseg2016", modalities="FLAIR,GADO")
    assert [p.name for p in found[0].images.values()] == ["FLAIR_preprocessed.nii.gz",
                                                          "GADO_preprocessed.nii.gz"]
    with pytest.raises(layouts.LayoutError, match="the isbi2015 layout has no T1GD; it holds T1, T2, FLAIR, PD"):
        layouts.find_scans(DUMMY / "isbi2015", "isbi2015", modalities="FLAIR,T1GD")


def test_fingerprint_follows_the_contents_not_the_place(nnunet, tmp_path):
    def digest(root):
        return layouts.fingerprint(layouts.find_scans(root, "nnunet"), [root / "dataset.json"])

    before = digest(nnunet)
    moved = tmp_path / "elsewhere" / "Dataset501_MS"
    shutil.copytree(nnunet, moved)
    assert digest(moved) == before
    label = moved / "labelsTr" / "MS_002_s1.nii.gz"
    image = nib.load(label)
    data = np.asarray(image.dataobj).copy()
    data[0, 0, 0] = 1 - data[0, 0, 0]
    nib.save(nib.Nifti1Image(data, image.affine, image.header), label)
    assert digest(moved) != before


# --- Real datasets as they come: every variant reads ----------------------------------------


def test_nnunet_channels_are_names_and_unasked_ones_are_never_looked_at(nnunet):
    _edit_json(nnunet / "dataset.json", channel_names={"0": "FLAIR", "1": "DIR"})
    for path in (nnunet / "imagesTr").glob("*_0001.nii.gz"):
        path.unlink()  # the DIR files are gone: reading FLAIR alone does not notice
    found = layouts.find_scans(nnunet, "nnunet", modalities="FLAIR")
    assert [tuple(s.images) for s in found] == [("FLAIR",)] * 5
    with pytest.raises(layouts.LayoutError, match="Case MS_001_s1: missing DIR file"):
        layouts.find_scans(nnunet, "nnunet")
    with pytest.raises(layouts.LayoutError, match="has no DIRR; it holds FLAIR, DIR.*--modalities"):
        layouts.find_scans(nnunet, "nnunet", modalities="DIRR")


def test_nnunet_repeated_channel_names_are_addressed_by_position(nnunet):
    _edit_json(nnunet / "dataset.json", channel_names={"0": "FLAIR", "1": "flair"})
    found = layouts.find_scans(nnunet, "nnunet")
    assert tuple(found[0].images) == ("FLAIR@0", "FLAIR@1")
    found = layouts.find_scans(nnunet, "nnunet", modalities="FLAIR@1,FLAIR@0")
    assert [p.name for p in found[0].images.values()] == ["MS_001_s1_0001.nii.gz",
                                                          "MS_001_s1_0000.nii.gz"]
    with pytest.raises(layouts.LayoutError, match="2 channels named FLAIR.*--modalities "
                                                  "FLAIR@0,FLAIR@1"):
        layouts.find_scans(nnunet, "nnunet", modalities="FLAIR")


def test_nnunet_dataset_key_lists_the_files(nnunet):
    listed = {}
    for label in sorted((nnunet / "labelsTr").glob("*.nii.gz")):
        case = label.name.removesuffix(".nii.gz")
        moved = nnunet / "elsewhere" / case
        moved.mkdir(parents=True)
        images = []
        for k, name in enumerate(("flair", "t1")):
            (nnunet / "imagesTr" / f"{case}_{k:04d}.nii.gz").rename(moved / f"{name}.nii.gz")
            images.append(f"elsewhere/{case}/{name}.nii.gz")
        label.rename(moved / "seg.nii.gz")
        listed[case] = {"images": images, "label": str(moved / "seg.nii.gz")}  # absolute too
    _edit_json(nnunet / "dataset.json", dataset=listed)
    found = layouts.find_scans(nnunet, "nnunet", modalities="T1")
    assert [s.scan_id for s in found] == sorted(listed)
    assert found[0].images["T1"] == nnunet / "elsewhere" / "MS_001_s1" / "t1.nii.gz"
    assert found[0].label.name == "seg.nii.gz"
    listed["MS_002_s1"]["images"] = listed["MS_002_s1"]["images"][:1]
    _edit_json(nnunet / "dataset.json", dataset=listed)
    with pytest.raises(layouts.LayoutError, match="`dataset` entry 'MS_002_s1' needs \"images\" "
                                                  "\\(a list of 2 files"):
        layouts.find_scans(nnunet, "nnunet")


def test_nnunet_mha_files_read_through_simpleitk(nnunet):
    sitk = pytest.importorskip("SimpleITK")
    from tfds_ms import scans as scans_lib

    before = scans_lib.load_scan(layouts.find_scans(nnunet, "nnunet")[0])
    for path in sorted(nnunet.glob("*Tr/*.nii.gz")):
        sitk.WriteImage(sitk.ReadImage(str(path)), str(path).replace(".nii.gz", ".mha"))
        path.unlink()
    _edit_json(nnunet / "dataset.json", file_ending=".mha")
    found = layouts.find_scans(nnunet, "nnunet")
    assert found[0].images["FLAIR"].name == "MS_001_s1_0000.mha"
    after = scans_lib.load_scan(found[0])
    np.testing.assert_array_equal(after.image, before.image)
    np.testing.assert_array_equal(after.label, before.label)
    np.testing.assert_allclose(after.affine, before.affine, atol=1e-4)


def test_nnunet_mha_without_simpleitk_names_dataset_json_and_the_extra(nnunet, monkeypatch):
    import sys

    _edit_json(nnunet / "dataset.json", file_ending=".mha")
    monkeypatch.setitem(sys.modules, "SimpleITK", None)
    with pytest.raises(layouts.LayoutError, match="dataset.json: file_ending '.mha' is read "
                                                  "with SimpleITK.*pip install 'tfversky"):
        layouts.find_scans(nnunet, "nnunet")


def test_unlabelled_cases_are_left_out_with_one_warning(nnunet, bids):
    (nnunet / "labelsTr" / "MS_002_s1.nii.gz").unlink()
    with pytest.warns(layouts.UnlabelledWarning, match="1 case\\(s\\) .* left out.*MS_002_s1"):
        found = layouts.find_scans(nnunet, "nnunet")
    assert "MS_002_s1" not in [s.scan_id for s in found] and len(found) == 4
    with pytest.raises(layouts.LayoutError, match="MS_002_s1.*--require-labels"):
        layouts.find_scans(nnunet, "nnunet", require_labels=True)
    for case in ("sub-01/ses-02", "sub-03/ses-01"):
        for mask in (bids / "derivatives/lesions" / case).rglob("*.nii.gz"):
            mask.unlink()
    with pytest.warns(layouts.UnlabelledWarning) as caught:
        found = layouts.find_scans(bids, "bids", modalities="FLAIR")
    assert len(caught) == 1 and "sub-01_ses-02, sub-03_ses-01" in str(caught[0].message)
    assert [s.scan_id for s in found] == ["sub-01_ses-01", "sub-02_ses-01", "sub-04_ses-01"]
    with pytest.raises(layouts.LayoutError, match="2 case\\(s\\) have images but no mask"):
        layouts.find_scans(bids, "bids", modalities="FLAIR", require_labels=True)


def _variants(bids, modality, *entities):
    """Every session's ``modality`` file, copied once per entity string (e.g. "acq-2D"); the
    original is renamed with the first."""
    for path in sorted(bids.glob(f"sub-*/ses-*/anat/*_{modality}.nii.gz")):
        stem = path.name.removesuffix(f"_{modality}.nii.gz")
        for entity in entities[1:]:
            shutil.copy(path, path.with_name(f"{stem}_{entity}_{modality}.nii.gz"))
        if entities[0]:
            path.rename(path.with_name(f"{stem}_{entities[0]}_{modality}.nii.gz"))


def test_bids_filters_choose_among_variants(bids, tmp_path):
    _variants(bids, "FLAIR", "acq-3D", "acq-2D")
    with pytest.raises(layouts.LayoutError, match="Case sub-01_ses-01: 2 FLAIR files match; "
                       ".*_acq-2D_FLAIR.nii.gz: --bids-filter FLAIR:acq=2D; "
                       ".*_acq-3D_FLAIR.nii.gz: --bids-filter FLAIR:acq=3D"):
        layouts.find_scans(bids, "bids", modalities="FLAIR")
    found = layouts.find_scans(bids, "bids", modalities="FLAIR", bids_filter=["FLAIR:acq=3D"])
    assert all("acq-3D" in s.images["FLAIR"].name for s in found)
    spec = tmp_path / "filter.json"
    spec.write_text(json.dumps({"flair": {"datatype": "anat", "acquisition": ["2D"]}}))
    found = layouts.find_scans(bids, "bids", modalities="FLAIR", bids_filter_file=spec)
    assert all("acq-2D" in s.images["FLAIR"].name for s in found)
    with pytest.raises(layouts.LayoutError, match="Case sub-01_ses-01: --bids-filter "
                                                  "FLAIR:acq=1D matches none of its FLAIR files"):
        layouts.find_scans(bids, "bids", modalities="FLAIR", bids_filter=["FLAIR:acq=1D"])
    with pytest.raises(layouts.LayoutError, match="expected CHANNEL:entity=value"):
        layouts.find_scans(bids, "bids", modalities="FLAIR", bids_filter=["FLAIR=3D"])


def test_bids_runs_as_two_channels_and_contrast_agent_as_t1gd(bids):
    _variants(bids, "FLAIR", "run-1", "run-02")
    _variants(bids, "T1w", "", "ce-gadolinium")
    found = layouts.find_scans(bids, "bids", modalities="FLAIR@0,FLAIR@1,T1w,T1GD",
                               bids_filter=["FLAIR@0:run=1", "FLAIR@1:run=2"])
    assert tuple(found[0].images) == ("FLAIR@0", "FLAIR@1", "T1", "T1GD")
    assert [p.name for p in found[0].images.values()] == [
        "sub-01_ses-01_run-1_FLAIR.nii.gz", "sub-01_ses-01_run-02_FLAIR.nii.gz",
        "sub-01_ses-01_T1w.nii.gz", "sub-01_ses-01_ce-gadolinium_T1w.nii.gz"]


def _dseg(bids, lesion_name="MS lesion"):
    pipeline = bids / "derivatives" / "lesions"
    for mask in sorted(pipeline.rglob("*_desc-lesion_mask.nii.gz")):
        image = nib.load(mask)
        data = np.asarray(image.dataobj).astype(np.uint8) * 2  # lesion = 2
        data[0] = 1  # and some white matter
        nib.save(nib.Nifti1Image(data, image.affine), mask.with_name(
            mask.name.replace("desc-lesion_mask", "desc-tissue_dseg").replace(".gz", "")))
        mask.unlink()
    (pipeline / "desc-tissue_dseg.tsv").write_text(
        f"index\tname\tabbreviation\n0\tbackground\tBG\n1\twhite matter\tWM\n2\t{lesion_name}\tL\n")


def test_bids_masks_as_they_are_named(bids):
    from tfds_ms import scans as scans_lib

    for mask in sorted(bids.rglob("*_desc-lesion_mask.nii.gz")):  # .nii, _label-lesion_mask
        image = nib.load(mask)
        nib.save(image, mask.with_name(mask.name.replace("desc-lesion", "label-lesion")
                                       .replace(".gz", "")))
        mask.unlink()
    found = layouts.find_scans(bids, "bids", modalities="FLAIR")
    assert found[0].label.name == "sub-01_ses-01_label-lesion_mask.nii"
    reference = scans_lib.load_scan(found[0]).label
    for mask in sorted(bids.rglob("*_label-lesion_mask.nii")):
        nib.save(nib.load(mask), str(mask).replace("label-lesion", "desc-lesion") + ".gz")
        mask.unlink()
    _dseg(bids)
    found = layouts.find_scans(bids, "bids", modalities="FLAIR")
    assert found[0].label.name == "sub-01_ses-01_desc-tissue_dseg.nii"
    assert found[0].labels == {"background": 0, "white matter": 1, "lesion": 2}
    np.testing.assert_array_equal(scans_lib.load_scan(found[0]).label, reference)


def test_a_dseg_tsv_without_a_lesion_label_is_refused(bids):
    _dseg(bids, lesion_name="grey matter")
    with pytest.raises(layouts.LayoutError, match="desc-tissue_dseg.tsv: expected one label whose "
                       "name holds 'lesion'.*none among.*--mask-pattern"):
        layouts.find_scans(bids, "bids", modalities="FLAIR")


def test_several_mask_pipelines_are_listed_and_mask_folder_chooses(bids):
    shutil.copytree(bids / "derivatives" / "lesions", bids / "derivatives" / "rater2")
    with pytest.raises(layouts.LayoutError, match="in 2 pipelines.*--mask-folder "
                       "derivatives/lesions \\(5 masks\\); --mask-folder derivatives/rater2"):
        layouts.find_scans(bids, "bids", modalities="FLAIR")
    found = layouts.find_scans(bids, "bids", modalities="FLAIR", mask_folder="derivatives/rater2")
    assert all("rater2" in s.label.parts for s in found)


def test_a_filter_chooses_among_a_sessions_masks(bids):
    for mask in sorted(bids.rglob("*_desc-lesion_mask.nii.gz")):
        shutil.copy(mask, mask.with_name(mask.name.replace("desc-lesion", "space-T1w_desc-lesion")))
    with pytest.raises(layouts.LayoutError, match="2 lesion mask files match; choose one with a "
                       "filter. .*_desc-lesion_mask.nii.gz: --bids-filter mask:space=; .*space-T1w"
                       "_desc-lesion_mask.nii.gz: --bids-filter mask:space=T1w\\.$"):
        layouts.find_scans(bids, "bids", modalities="FLAIR")
    found = layouts.find_scans(bids, "bids", modalities="FLAIR", bids_filter=["mask:space=T1w"])
    assert all("space-T1w" in s.label.name for s in found)
