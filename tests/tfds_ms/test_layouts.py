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
    (lambda root: _edit_json(root / "dataset.json", channel_names={"0": "FLAIR", "1": "T3"}),
     "Unknown modality 'T3'.*Rename the channel"),
    (lambda root: _edit_json(root / "dataset.json", labels=None), "lacks `labels`"),
    (lambda root: _edit_json(root / "dataset.json",
                             labels={"background": 0, "wm": 1, "gm": 2}), "one lesion class"),
    (lambda root: _edit_json(root / "dataset.json", file_ending=".mha"), "is not NIfTI"),
    (lambda root: (root / "imagesTr" / "MS_003_s1_0001.nii.gz").unlink(),
     "Case MS_003_s1: missing T1 file .*MS_003_s1_0001.nii.gz"),
    (lambda root: (root / "labelsTr" / "MS_002_s1.nii.gz").unlink(),
     "Case MS_002_s1: imagesTr/ holds its images but labelsTr/ has no MS_002_s1.nii.gz"),
    (lambda root: shutil.rmtree(root / "labelsTr"), "No training cases"),
])
def test_nnunet_bad_input(nnunet, damage, match):
    damage(nnunet)
    with pytest.raises(layouts.LayoutError, match=match):
        layouts.find_scans(nnunet, "nnunet")


def test_nnunet_bad_options(nnunet):
    with pytest.raises(layouts.LayoutError, match="'MS_X' does not match case id 'MS_001_s1'"):
        layouts.find_scans(nnunet, "nnunet", subject_pattern="MS_X")
    with pytest.raises(layouts.LayoutError, match="T2 is not a channel of .*dataset.json"):
        layouts.find_scans(nnunet, "nnunet", modalities="FLAIR,T2")
    with pytest.raises(ValueError, match="Unknown modality 'T3'"):
        layouts.find_scans(nnunet, "nnunet", modalities="T3")


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
    with pytest.raises(layouts.LayoutError, match="Case sub-01: no mask matching "
                                                  "'\\*_desc-lesion_mask.nii.gz' under"):
        layouts.find_scans(bids, "bids", modalities="FLAIR")


@pytest.mark.parametrize("damage, modalities, match", [
    (lambda root: [shutil.rmtree(p) for p in root.glob("sub-*")], "FLAIR", "No BIDS subject under"),
    (lambda root: (root / "derivatives/lesions/sub-02/ses-01/anat/"
                          "sub-02_ses-01_desc-lesion_mask.nii.gz").unlink(), "FLAIR",
     "Case sub-02_ses-01: no mask matching .* under .*derivatives/lesions"),
    (lambda root: (root / "sub-03/ses-01/anat/sub-03_ses-01_T1w.nii.gz").unlink(), "FLAIR,T1w",
     "Case sub-03_ses-01: missing T1 file .*sub-03_ses-01_T1w.nii.gz"),
    (lambda root: shutil.copy(root / "sub-03/ses-01/anat/sub-03_ses-01_T1w.nii.gz",
                              root / "sub-03/ses-01/anat/sub-03_ses-01_run-2_T1w.nii.gz"),
     "T1w", "Case sub-03_ses-01: 2 T1 files"),
    (lambda root: None, "FLAIR,PDw", "no subject under .* has PD \\(found: FLAIR, T1, T2\\)"),
    (lambda root: None, "FLAIR,T3", "Unknown modality 'T3'"),
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
