"""``tfversky predict``: the written NIfTI files, folder mode, and every user-error path.

Most cases call ``tfversky.cli.main`` in this process (fast); two run the real
``python -m tfversky`` to check the entry point, the exit codes and that no traceback leaks.
The models carry a small plan (a 16^3 grid of 2 mm voxels), so each call takes well under a
second; one plan-less model checks the defaults and their warning.
"""

import csv
import dataclasses
import os
import subprocess
import sys

import keras
import nibabel as nib
import numpy as np
import pytest

from tfversky import inference, metrics, plan
from tfversky.cli import main
from tfversky.losses import TverskyLoss
from tfversky.models import unet3d
from tfversky.preprocessing import ReferenceGrid, brain_center

SHAPE = (20, 24, 28)
GRID = ReferenceGrid((16, 16, 16), (2.0, 2.0, 2.0))
PLAN = plan.Plan(grid=GRID, patch_size=16, overlap=0.25)
# What folder mode writes for cases case_a and case_b.
OUTPUTS = ["case_a.nii.gz", "case_b.nii.gz", "lesions.csv", "summary.csv"]
# Keras's own saving code trips NumPy 2's copy-keyword deprecation; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _affine(shift=0.0):
    return np.array([[-1.0, 0, 0, 90 + shift], [0, 1.0, 0, -126], [0, 0, 1.2, -72],
                     [0, 0, 0, 1]])


def _write_scan(path, data, affine=None):
    affine = _affine() if affine is None else affine
    image = nib.Nifti1Image(np.asarray(data, "float32"), affine)
    image.header.set_qform(affine, code=1)
    image.header.set_sform(affine, code=2)
    nib.save(image, path)
    return str(path)


def _save_model(path, model_plan=PLAN, **kwargs):
    model = unet3d(**{"base_filters": 2, "depth": 2, **kwargs})
    model.compile(optimizer="adam", loss=TverskyLoss(0.3, 0.7))
    (model if model_plan is None else plan.attach(model, model_plan)).save(path)
    return str(path)


def _pointwise_logits(path):
    """A plan-less model of logits: lesion logit = FLAIR z-score - 1 (1x1x1 convolution)."""
    inputs = keras.Input((None, None, None, 3))
    conv = keras.layers.Conv3D(2, 1)
    model = keras.Model(inputs, conv(inputs))
    kernel = np.zeros((1, 1, 1, 3, 2), "float32")
    kernel[0, 0, 0, 2, 1] = 1.0
    conv.set_weights([kernel, np.array([0.0, -1.0], "float32")])
    model.save(path)
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("subject")
    rng = np.random.default_rng(0)
    brain = np.zeros(SHAPE, bool)
    brain[3:-3, 4:-4, 4:-4] = True
    paths = {}
    for name, mean in (("t1", 300.0), ("t2", 500.0), ("flair", 200.0)):
        data = np.where(brain, rng.normal(mean, 50, SHAPE), 0.0)
        paths[name] = _write_scan(folder / f"{name}.nii.gz", data)
    paths["model"] = _save_model(folder / "model.keras")
    paths["logits_model"] = _pointwise_logits(folder / "logits.keras")
    return paths


def _args(files, out, *extra, **replace):
    options = {flag: files[flag] for flag in ("model", "t1", "t2", "flair")}
    options.update(out=str(out), **replace)
    argv = ["predict", "--quiet"]
    for flag, value in options.items():
        argv += [f"--{flag.replace('_', '-')}", str(value)]
    return argv + list(extra)


def _error(capsys, argv):
    """Runs the command expecting a user error: exit 2, one line on stderr."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def test_predict_writes_what_segment_computes_with_the_first_scans_header(files, tmp_path):
    out, prob = tmp_path / "seg.nii.gz", tmp_path / "prob.nii"
    assert main(_args(files, out, "--probabilities", str(prob), "--threshold", "0.4")) == 0
    t1 = nib.load(files["t1"])
    mask, lesion = nib.load(out), nib.load(prob)
    for image, dtype in ((mask, np.uint8), (lesion, np.float32)):
        assert image.shape == SHAPE and image.get_data_dtype() == dtype
        np.testing.assert_allclose(image.affine, t1.affine)
        assert (int(image.header["qform_code"]), int(image.header["sform_code"])) == (1, 2)
        assert image.header.get_zooms() == t1.header.get_zooms()
    # The command line is the library's one path, nothing else.
    model = keras.saving.load_model(files["model"], compile=False)
    expected = inference.segment(model, {m: files[m.lower()] for m in ("T1", "T2", "FLAIR")},
                                 threshold=0.4)
    np.testing.assert_allclose(lesion.get_fdata(), expected.probabilities, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(mask.dataobj), expected.mask)


def test_image_flags_take_aliases_in_any_order(files, tmp_path):
    out_a, out_b = tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"
    assert main(["predict", "--quiet", "--model", files["model"], "--out", str(out_a),
                 "--image", f"flair={files['flair']}", "--image", f"T1w={files['t1']}",
                 "--t2", files["t2"]]) == 0
    assert main(_args(files, out_b)) == 0
    np.testing.assert_array_equal(np.asarray(nib.load(out_a).dataobj),
                                  np.asarray(nib.load(out_b).dataobj))


def test_summary_line(files, tmp_path, capsys):
    argv = [a for a in _args(files, tmp_path / "seg.nii") if a != "--quiet"]
    assert main(argv) == 0
    assert "1 case(s)" in capsys.readouterr().out


def test_plan_less_model_warns_once_and_needs_from_logits(files, tmp_path, capsys):
    out = tmp_path / "seg.nii.gz"
    argv = [a for a in _args(files, out, model=files["logits_model"]) if a != "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("carries no plan") == 1 and "T1, T2, FLAIR on a 128x224x256" in err
    assert "--from-logits" in err.strip().splitlines()[-1]
    assert main(_args(files, out, "--from-logits", model=files["logits_model"])) == 0
    assert set(np.unique(nib.load(out).dataobj)) <= {0, 1}


def test_resample_to_first(files, tmp_path, capsys):
    flair = _write_scan(tmp_path / "flair.nii.gz", nib.load(files["flair"]).get_fdata(),
                        _affine(shift=1.0))
    out = tmp_path / "seg.nii.gz"
    err = _error(capsys, _args(files, out, flair=flair))
    assert flair in err and "--resample-to-first" in err
    assert main(_args(files, out, "--resample-to-first", flair=flair)) == 0
    assert nib.load(out).shape == SHAPE


def test_min_lesion_size_in_mm3_uses_the_scans_voxel_size(files, tmp_path):
    everything, large = tmp_path / "all.nii.gz", tmp_path / "large.nii.gz"
    assert main(_args(files, everything, "--threshold", "0.3")) == 0
    assert main(_args(files, large, "--threshold", "0.3", "--min-lesion-volume", "30")) == 0
    mask = np.asarray(nib.load(everything).dataobj) > 0
    expected, _ = metrics.remove_small_lesions(mask, 30.0, (1.0, 1.0, 1.2))  # 25 voxels
    np.testing.assert_array_equal(np.asarray(nib.load(large).dataobj) > 0, expected)


def _case_folder(files, folder, cases=("case_a", "case_b")):
    folder.mkdir()
    for case in cases:
        for channel, name in enumerate(("t1", "t2", "flair")):
            os.symlink(files[name], folder / f"{case}_{channel:04d}.nii.gz")
    return folder


def test_folder_mode_writes_masks_and_summary(files, tmp_path, capsys):
    images, out = _case_folder(files, tmp_path / "imagesTs"), tmp_path / "out"
    out.mkdir()
    assert main(["predict", "--model", files["model"], "-i", str(images), "-o", str(out),
                 "--threshold", "0.3"]) == 0
    assert "predict" in capsys.readouterr().err  # the progress bar over the cases
    assert sorted(os.listdir(out)) == OUTPUTS
    with open(out / "summary.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["case"] for row in rows] == ["case_a", "case_b"]
    mask = np.asarray(nib.load(out / "case_a.nii.gz").dataobj) > 0
    _, count = metrics.remove_small_lesions(mask, 0, (1, 1, 1))
    assert int(rows[0]["lesion_count"]) == count
    assert float(rows[0]["lesion_volume_ml"]) == pytest.approx(mask.sum() * 1.2e-3, abs=1e-4)
    assert rows[0]["inputs"].split(";")[2].endswith("case_a_0002.nii.gz")


def test_folder_mode_makes_a_new_output_folder_with_the_users_umask(files, tmp_path):
    images, out = _case_folder(files, tmp_path / "imagesTs"), tmp_path / "new"
    umask = os.umask(0o027)
    try:
        assert main(["predict", "--quiet", "--model", files["model"], "-i", str(images), "-o",
                     str(out)]) == 0
    finally:
        os.umask(umask)
    assert sorted(os.listdir(out)) == OUTPUTS
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".")]
    assert out.stat().st_mode & 0o777 == 0o750  # as mkdir makes it, not mkdtemp's 0700


def _contents(folder):
    return {path.relative_to(folder): path.read_bytes() for path in sorted(folder.rglob("*"))
            if path.is_file()}


def test_no_output_is_an_input(files, tmp_path, capsys):
    """The brain mask, a scan or (in folder mode) a case's brain mask named as an output is
    refused before any work, and left as it was."""
    brain = (nib.load(files["t1"]).get_fdata() != 0).astype("float32")
    mask_file = _write_scan(tmp_path / "brain.nii.gz", brain)
    before = _contents(tmp_path)
    err = _error(capsys, _args(files, mask_file, "--brain-mask", mask_file, "--overwrite"))
    assert f"--out {mask_file!r} is one of the input files (--brain-mask)" in err, err
    err = _error(capsys, _args(files, tmp_path / "seg.nii.gz", "--probabilities",
                               files["flair"], "--overwrite"))
    assert "--probabilities" in err and "(the FLAIR scan)" in err, err
    assert _contents(tmp_path) == before
    images, masks = _case_folder(files, tmp_path / "imagesTs"), tmp_path / "masks"
    masks.mkdir()
    for case in ("case_a", "case_b"):
        _write_scan(masks / f"{case}.nii.gz", brain)
    before = _contents(masks)
    err = _error(capsys, ["predict", "--quiet", "--model", files["model"], "-i", str(images),
                          "-o", str(masks), "--brain-mask", str(masks), "--overwrite"])
    assert "case_a.nii.gz is one of the input files (case 'case_a''s --brain-mask)" in err, err
    assert _contents(masks) == before


def test_existing_outputs_are_replaced_only_with_overwrite(files, tmp_path, capsys):
    out = tmp_path / "seg.nii.gz"
    out.write_bytes(b"earlier work")
    err = _error(capsys, _args(files, out))
    assert f"--out {str(out)!r} exists: pass --overwrite" in err, err
    assert out.read_bytes() == b"earlier work"
    assert main(_args(files, out, "--overwrite")) == 0
    assert nib.load(out).shape == SHAPE
    images, folder = _case_folder(files, tmp_path / "imagesTs"), tmp_path / "masks"
    folder.mkdir()
    (folder / "summary.csv").write_text("earlier work")
    (folder / "notes.txt").write_text("kept")
    argv = ["predict", "--quiet", "--model", files["model"], "-i", str(images), "-o",
            str(folder)]
    err = _error(capsys, argv)
    assert "already holds 1 of the files this would write (summary.csv, ...)" in err, err
    assert sorted(os.listdir(folder)) == ["notes.txt", "summary.csv"]
    assert (folder / "summary.csv").read_text() == "earlier work"
    assert main(argv + ["--overwrite"]) == 0
    assert sorted(os.listdir(folder)) == sorted(OUTPUTS + ["notes.txt"])
    assert (folder / "summary.csv").read_text().startswith("case,")


def test_output_folder_that_is_a_file_is_refused_before_any_work(files, tmp_path, capsys,
                                                                 monkeypatch):
    import tfversky.cli

    def no_work(path):
        raise AssertionError("the model was loaded before the output was checked")

    monkeypatch.setattr(tfversky.cli, "_load_model", no_work)
    images, out = _case_folder(files, tmp_path / "imagesTs"), tmp_path / "masks"
    out.write_text("a file")
    err = _error(capsys, ["predict", "--quiet", "--model", files["model"], "-i", str(images),
                          "-o", str(out), "--overwrite"])
    assert f"-o {str(out)!r} is a file: give a folder" in err, err
    assert out.read_text() == "a file"


def _heads(files, folder):
    """'Heads': the scans with noise everywhere around the brain, as raw scans keep it."""
    rng = np.random.default_rng(1)
    brain = nib.load(files["t1"]).get_fdata() != 0
    return brain, {name: _write_scan(folder / f"{name}.nii.gz", np.where(
        brain, nib.load(files[name]).get_fdata(), rng.uniform(5, 50, SHAPE)))
        for name in ("t1", "t2", "flair")}


def test_brain_mask_makes_an_unstripped_scan_usable(files, tmp_path, capsys):
    """A 'head': noise everywhere around the brain. Refused; with the brain mask it gives
    the stripped scan's mask."""
    brain, heads = _heads(files, tmp_path)
    mask_file = _write_scan(tmp_path / "brain.nii.gz", brain.astype("float32"))
    out = tmp_path / "seg.nii.gz"
    err = _error(capsys, _args(files, out, **heads))
    assert "does not look skull-stripped" in err and "--brain-mask" in err
    assert not out.exists()
    assert main(_args(files, out, "--brain-mask", mask_file, **heads)) == 0
    assert main(_args(files, tmp_path / "stripped.nii.gz")) == 0
    np.testing.assert_array_equal(np.asarray(nib.load(out).dataobj),
                                  np.asarray(nib.load(tmp_path / "stripped.nii.gz").dataobj))
    assert main(_args(files, tmp_path / "forced.nii.gz", "--no-skull-check", **heads)) == 0


def test_raw_scans_are_refused_or_taken_as_the_plan_records(files, tmp_path, capsys):
    """Whether the training scans were skull-stripped is the plan's record: raw scans are
    refused for a model trained on stripped ones, and for a model nothing records it of
    (without claiming how it was trained); a model trained on raw scans takes them."""
    _, heads = _heads(files, tmp_path)
    out = tmp_path / "seg.nii.gz"
    for record, reason in ((True, "The model was trained on skull-stripped scans"),
                           (None, "No plan records whether the model was trained on "
                                  "skull-stripped scans")):
        model = _save_model(tmp_path / f"{record}.keras",
                            dataclasses.replace(PLAN, skull_stripped=record))
        err = _error(capsys, _args(files, out, model=model, **heads))
        assert "does not look skull-stripped" in err and reason in err, err
        assert "--brain-mask" in err and ("--no-skull-check" in err) == (record is None)
    # A model without a plan: the warning that says so, then the refusal.
    assert main(_args(files, out, "--from-logits", model=files["logits_model"], **heads)) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "No plan records whether" in err and "The model was trained on" not in err, err
    assert not out.exists()
    raw = _save_model(tmp_path / "raw.keras", dataclasses.replace(PLAN, skull_stripped=False))
    assert main(_args(files, out, model=raw, **heads)) == 0
    assert nib.load(out).shape == SHAPE


def test_folder_mode_brain_masks_come_from_a_folder_of_cases(files, tmp_path, capsys):
    images, out, masks = _case_folder(files, tmp_path / "imagesTs"), tmp_path / "out", \
        tmp_path / "masks"
    out.mkdir()
    masks.mkdir()
    brain = (nib.load(files["t1"]).get_fdata() != 0).astype("float32")
    _write_scan(masks / "case_a.nii.gz", brain)
    argv = ["predict", "--quiet", "--model", files["model"], "-i", str(images), "-o", str(out),
            "--brain-mask", str(masks)]
    err = _error(capsys, argv)
    assert "lacks case_b.nii.gz" in err and os.listdir(out) == []
    _write_scan(masks / "case_b.nii.gz", brain)
    assert main(argv) == 0
    assert sorted(os.listdir(out)) == OUTPUTS


def test_registration_plan_places_the_grid_by_registering_the_t1(files, tmp_path, monkeypatch):
    """The wiring only (registration itself is tested in tests/tfds_ms): the command line
    hands segment a placement that registers the plan's T1 channel."""
    from tfds_ms import registration

    calls = []

    def fake(t1, affine, grid):
        calls.append(float(t1.max()))
        return grid.affine(brain_center(t1, affine))

    monkeypatch.setattr(registration, "registered_grid_affine", fake)
    model = _save_model(tmp_path / "registered.keras",
                        plan.Plan(modalities=("FLAIR", "T1", "T2"), grid=GRID, patch_size=16,
                                  placement="registration"))
    assert main(_args(files, tmp_path / "seg.nii.gz", model=model)) == 0
    t1_max = float(nib.load(files["t1"]).get_fdata().max())
    assert len(calls) == 1 and calls[0] == pytest.approx(t1_max, rel=1e-5)


def _corrupt(path):
    path.write_bytes(b"\x1f\x8b" + b"garbage" * 20)
    return str(path)


@pytest.mark.parametrize("case, expected", [
    ("missing_model", ["--model", "does not exist"]),
    ("corrupt_model", ["--model", "not a .keras archive"]),
    ("model_not_keras", ["--model", "not a .keras archive"]),
    ("missing_t2", ["T2 file", "does not exist", "This model takes T1, T2, FLAIR"]),
    ("corrupt_flair", ["FLAIR file", "cannot be read"]),
    ("4d_t1", ["T1 file", "(20, 24, 28, 2)", "3D volume", "This model takes T1, T2, FLAIR"]),
    ("nan_in_t2", ["T2 file", "NaN"]),
    ("other_shape_t2", ["T2 file", "shape (20, 24, 30) vs (20, 24, 28)",
                        "--resample-to-first"]),
    ("missing_modality", ["expects T1, T2, FLAIR", "missing: FLAIR", "--image"]),
    ("extra_modality", ["expects T1, T2, FLAIR", "does not take PD"]),
    ("plan_names_missing_modality", ["expects FLAIR, T1, T2, PD", "missing: PD"]),
    ("bad_image_name", ["expects T1, T2, FLAIR", "does not take T9"]),
    ("bad_out_extension", ["--out", ".nii or .nii.gz"]),
    ("out_folder_missing", ["--out", "does not exist"]),
    ("out_is_input", ["--out", "input files"]),
    ("probabilities_is_out", ["--probabilities and --out"]),
    ("patch_not_multiple", ["patch_size", "multiple of 2", "8 or 10"]),
    ("model_with_3_classes", ["outputs 3 channel"]),
    ("window_not_the_training_patch", ["--patch-size", "training patch 16x16x16, not 32x32x32"]),
    ("empty_scans", ["all zero"]),
    ("mask_on_other_grid", ["brain mask", "not on the scans' voxel grid"]),
    ("folder_and_case_mixed", ["do not mix"]),
])
def test_user_errors_exit_2_with_one_line(files, tmp_path, capsys, case, expected):
    out = tmp_path / "seg.nii.gz"
    extra, replace = [], {}
    if case == "missing_model":
        replace["model"] = tmp_path / "nope.keras"
    elif case == "corrupt_model":
        replace["model"] = _corrupt(tmp_path / "model.keras")
    elif case == "model_not_keras":
        replace["model"] = files["t1"]
    elif case == "missing_t2":
        replace["t2"] = tmp_path / "T2.nii.gz"
    elif case == "corrupt_flair":
        replace["flair"] = _corrupt(tmp_path / "flair.nii.gz")
    elif case == "4d_t1":
        replace["t1"] = _write_scan(tmp_path / "t1.nii.gz", np.ones((*SHAPE, 2)))
    elif case == "nan_in_t2":
        data = nib.load(files["t2"]).get_fdata()
        data[5, 5, 5] = np.nan
        replace["t2"] = _write_scan(tmp_path / "t2.nii.gz", data)
    elif case == "other_shape_t2":
        replace["t2"] = _write_scan(tmp_path / "t2.nii.gz", np.ones((20, 24, 30)))
    elif case == "missing_modality":
        replace["flair"] = ""
    elif case == "extra_modality":
        extra = ["--image", f"PD={files['t2']}"]
    elif case == "plan_names_missing_modality":
        model_plan = plan.Plan(modalities=("FLAIR", "T1", "T2", "PD"), grid=GRID, patch_size=16)
        replace["model"] = _save_model(tmp_path / "m.keras", model_plan,
                                       input_shape=(None, None, None, 4))
    elif case == "bad_image_name":
        extra = ["--image", f"T9={files['t2']}"]
    elif case == "bad_out_extension":
        out = tmp_path / "seg.png"
    elif case == "out_folder_missing":
        out = tmp_path / "missing" / "seg.nii.gz"
    elif case == "out_is_input":
        out = files["flair"]
    elif case == "probabilities_is_out":
        extra = ["--probabilities", str(out)]
    elif case == "patch_not_multiple":
        extra = ["--patch-size", "9"]
    elif case == "model_with_3_classes":
        replace["model"] = _save_model(tmp_path / "m.keras",
                                       plan.Plan(grid=GRID, patch_size=16,
                                                 class_names=("a", "b", "c")), num_classes=3)
    elif case == "window_not_the_training_patch":
        replace["model"] = _save_model(tmp_path / "m.keras",
                                       plan.Plan(grid=GRID, training_patch_size=16))
        extra = ["--patch-size", "32"]
    elif case == "empty_scans":
        for flag in ("t1", "t2", "flair"):
            replace[flag] = _write_scan(tmp_path / f"{flag}.nii.gz", np.zeros(SHAPE))
    elif case == "mask_on_other_grid":
        extra = ["--brain-mask", _write_scan(tmp_path / "mask.nii.gz", np.ones((20, 24, 30)))]
    elif case == "folder_and_case_mixed":
        extra = ["-i", str(tmp_path), "-o", str(tmp_path)]
    argv = [a for a in _args(files, out, *extra, **replace)]
    if case == "missing_modality":
        argv = argv[:argv.index("--flair")] + argv[argv.index("--flair") + 2:]
    err = _error(capsys, argv)
    assert err.startswith("python -m tfversky predict: error: ")
    for text in expected:
        assert text in err
    assert not os.path.exists(out) or case == "out_is_input"


@pytest.mark.parametrize("case, expected", [
    ("empty_folder", ["holds no CASE_XXXX.nii.gz", "_0002 = FLAIR"]),
    ("missing_channel", ["case 'case_b' lacks case_b_0001.nii.gz (T2)"]),
    ("extra_channel", ["case_a_0003", "takes 3 modalities"]),
    ("stray_file", ["'notes.nii' is not named CASE_XXXX.nii.gz"]),
    ("output_is_input", ["is the input folder"]),
    ("bad_case_scan", ["case 'case_b'", "NaN"]),
    ("output_parent_missing", ["-o", "its parent", "does not exist"]),
])
def test_folder_errors_write_nothing(files, tmp_path, capsys, case, expected):
    images, out = tmp_path / "imagesTs", tmp_path / "out"
    out.mkdir()
    if case == "empty_folder":
        images.mkdir()
    else:
        _case_folder(files, images)
    if case == "missing_channel":
        os.remove(images / "case_b_0001.nii.gz")
    elif case == "extra_channel":
        os.symlink(files["t1"], images / "case_a_0003.nii.gz")
    elif case == "stray_file":
        os.symlink(files["t1"], images / "notes.nii")
    elif case == "output_is_input":
        out = images
    elif case == "bad_case_scan":
        data = nib.load(files["t2"]).get_fdata()
        data[0, 0, 0] = np.nan
        os.remove(images / "case_b_0001.nii.gz")
        _write_scan(images / "case_b_0001.nii.gz", data)
    elif case == "output_parent_missing":
        out = tmp_path / "nowhere" / "out"
    before = sorted(os.listdir(out)) if out.is_dir() else None
    err = _error(capsys, ["predict", "--quiet", "--model", files["model"], "-i", str(images),
                          "-o", str(out)])
    for text in expected:
        assert text in err
    assert (sorted(os.listdir(out)) if out.is_dir() else None) == before


@pytest.mark.parametrize("extra, message", [
    (["--threshold", "1.5"], "--threshold: expected a number in (0, 1), got '1.5'"),
    (["--threshold", "0"], "--threshold: expected a number in (0, 1), got '0'"),
    (["--overlap", "1"], "--overlap: expected a number in [0, 1), got '1'"),
    (["--patch-size", "8,8"], "--patch-size: expected a positive int or three of them (D, H, W), "
                              "got '8,8'"),
    (["--patch-size", "0"], "--patch-size: expected a positive int or three of them"),
    (["--batch-size", "0"], "--batch-size: expected an int >= 1, got '0'"),
    (["--min-lesion-volume", "-1"], "--min-lesion-volume/--min-lesion-size: expected a finite "
                                    "number >= 0, got '-1'"),
    (["--min-lesion-size", "inf"], "--min-lesion-volume/--min-lesion-size: expected a finite "
                                   "number >= 0, got 'inf'"),
    (["--image", "T1"], "--image: expected NAME=FILE"),
])
def test_invalid_option_values_are_one_line_argparse_errors(files, tmp_path, capsys, extra,
                                                            message):
    with pytest.raises(SystemExit) as info:
        main(_args(files, tmp_path / "seg.nii.gz", *extra))
    assert info.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and f"predict: error: argument {message}" in lines[0], lines


def test_missing_inputs_and_no_command(capsys):
    assert main(["predict", "--model", "m.keras"]) == 2
    assert "--image NAME=FILE" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    assert "required" in capsys.readouterr().err


def _run_module(*argv):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, "-m", "tfversky", *argv], capture_output=True,
                          text=True, env=env, timeout=240)


def test_module_entry_point(files, tmp_path):
    out = tmp_path / "seg.nii.gz"
    result = _run_module(*_args(files, out))
    assert result.returncode == 0, result.stderr
    assert nib.load(out).get_data_dtype() == np.uint8

    result = _run_module(*_args(files, tmp_path / "other.nii.gz",
                                t1=tmp_path / "missing.nii.gz"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"T1 file {str(tmp_path / 'missing.nii.gz')!r} does not exist" in result.stderr


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="root may write into any folder")
def test_unwritable_output_folder(files, tmp_path, capsys):
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        err = _error(capsys, _args(files, folder / "seg.nii.gz"))
    finally:
        folder.chmod(0o700)
    assert "not writable" in err


def test_channels_by_name_and_mha_cases_keep_the_plans_order(files, tmp_path, capsys):
    """A plan of repeated and unknown channel names (a longitudinal FLAIR pair, DIR) takes
    its channels in order, from --image NAME=FILE or from a folder of .mha cases."""
    sitk = pytest.importorskip("SimpleITK")
    named = plan.Plan(modalities=("FLAIR@0", "DIR", "FLAIR@1"), grid=GRID, patch_size=16,
                      overlap=0.25)
    # Lesion probability from the last channel (FLAIR@1) alone: sigmoid(z-score - 1).
    inputs = keras.Input((None, None, None, 3))
    conv = keras.layers.Conv3D(2, 1, activation="softmax")
    model = keras.Model(inputs, conv(inputs))
    kernel = np.zeros((1, 1, 1, 3, 2), "float32")
    kernel[0, 0, 0, 2, 1] = 1.0
    conv.set_weights([kernel, np.array([0.0, -1.0], "float32")])
    model_path = str(tmp_path / "named.keras")
    plan.attach(model, named).save(model_path)

    def one_case(out, **scans):
        images = [arg for name, path in scans.items() for arg in ("--image", f"{name}={path}")]
        assert main(["predict", "--model", model_path, *images, "--out", str(out),
                     "--quiet"]) == 0
        return np.asarray(nib.load(out).dataobj)

    one = one_case(tmp_path / "one.nii.gz", **{"FLAIR@1": files["flair"], "DIR": files["t2"],
                                               "flair@0": files["t1"]})
    swapped = one_case(tmp_path / "swapped.nii.gz", **{"FLAIR@1": files["t1"],
                                                       "DIR": files["t2"],
                                                       "FLAIR@0": files["flair"]})
    assert one.any() and (one != swapped).any()  # the order reaches the model
    images = tmp_path / "imagesTs"
    images.mkdir()
    for channel, name in enumerate(("t1", "t2", "flair")):  # FLAIR@0, DIR, FLAIR@1
        sitk.WriteImage(sitk.ReadImage(files[name]), str(images / f"case_a_{channel:04d}.mha"))
    assert main(["predict", "--model", model_path, "-i", str(images), "-o",
                 str(tmp_path / "out"), "--quiet"]) == 0
    from_folder = nib.load(tmp_path / "out" / "case_a.nii.gz")
    np.testing.assert_array_equal(np.asarray(from_folder.dataobj), one)
    np.testing.assert_allclose(from_folder.affine, nib.load(tmp_path / "one.nii.gz").affine,
                               atol=1e-4)


# --- Ensembles, mirroring, maps, the plan's operating point and the lesion report (issue 23) --

def _read_csv(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    """A run folder of `tfversky train --folds` (fold_0, fold_1), and a third model."""
    run = tmp_path_factory.mktemp("run")
    paths = []
    for fold in range(2):
        (run / f"fold_{fold}").mkdir()
        keras.utils.set_random_seed(fold)
        paths.append(_save_model(run / f"fold_{fold}" / "model.keras"))
    return {"run": str(run), "files": paths}


def test_an_ensemble_averages_its_members_and_a_run_folder_gives_its_folds(files, members,
                                                                           tmp_path):
    def argv(out, *models):
        return ["predict", "--quiet", "--model", *models, "--t1", files["t1"], "--t2",
                files["t2"], "--flair", files["flair"], "--out", str(out),
                "--save-probabilities"]

    assert main(argv(tmp_path / "both.nii.gz", *members["files"])) == 0
    assert main(argv(tmp_path / "run.nii.gz", members["run"])) == 0
    alone = []
    for k, path in enumerate(members["files"]):
        assert main(argv(tmp_path / f"m{k}.nii.gz", path)) == 0
        alone.append(nib.load(tmp_path / f"m{k}_probabilities.nii.gz").get_fdata())
    both = nib.load(tmp_path / "both_probabilities.nii.gz").get_fdata()
    np.testing.assert_allclose(both, np.mean(alone, axis=0), atol=1e-5)
    np.testing.assert_array_equal(both, nib.load(tmp_path / "run_probabilities.nii.gz")
                                  .get_fdata())
    rows = _read_csv(tmp_path / "both_summary.csv")
    assert [(r["case"], r["members"], r["tta"]) for r in rows] == [("both", "2", "False")]


def test_model_folders_and_repeated_members_are_checked(files, members, tmp_path, capsys):
    unfinished = tmp_path / "run"
    (unfinished / "fold_0").mkdir(parents=True)
    (unfinished / "fold_1").mkdir()
    os.symlink(members["files"][0], unfinished / "fold_0" / "model.keras")
    out = tmp_path / "seg.nii.gz"
    err = _error(capsys, _args(files, out, model=unfinished))
    assert "fold_1 has no model.keras" in err, err
    err = _error(capsys, _args(files, out, model=unfinished / "fold_1"))
    assert "holding neither fold_K/model.keras" in err, err
    argv = _args(files, out)
    argv[argv.index("--model") + 1:argv.index("--model") + 2] = [members["files"][0],
                                                                  members["run"]]
    err = _error(capsys, argv)
    assert "is given twice" in err, err
    assert not out.exists()


def test_members_with_different_plans_are_refused_before_any_case(files, members, tmp_path,
                                                                   capsys, monkeypatch):
    import tfversky.cli

    monkeypatch.setattr(tfversky.cli, "_load_model", lambda path: pytest.fail("loaded"))
    other = _save_model(tmp_path / "other.keras", dataclasses.replace(
        PLAN, grid=ReferenceGrid((16, 16, 16), (1.5, 1.5, 1.5))))
    argv = _args(files, tmp_path / "seg.nii.gz")
    argv[argv.index("--model") + 1:argv.index("--model") + 2] = [members["files"][0], other]
    err = _error(capsys, argv)
    assert ("--model: The ensemble's members do not share a plan: member 2 has grid 16x16x16 "
            "of 1.5x1.5x1.5 mm, member 1 16x16x16 of 2x2x2 mm") in err, err
    assert os.listdir(tmp_path) == ["other.keras"]


def test_uncertainty_needs_several_members_or_tta(files, tmp_path, capsys):
    out = tmp_path / "seg.nii.gz"
    err = _error(capsys, _args(files, out, "--save-uncertainty"))
    assert "--save-uncertainty: " in err and "nothing to measure" in err and "--tta" in err
    assert os.listdir(tmp_path) == []
    assert main(_args(files, out, "--save-uncertainty", "--tta")) == 0
    spread = nib.load(tmp_path / "seg_uncertainty.nii.gz")
    assert spread.shape == SHAPE and spread.get_data_dtype() == np.float32
    assert float(spread.get_fdata().max()) > 0  # a U-Net is not mirror-symmetric
    assert sorted(os.listdir(tmp_path)) == ["seg.nii.gz", "seg_lesions.csv", "seg_summary.csv",
                                            "seg_uncertainty.nii.gz"]


def test_the_operating_point_comes_from_the_plan_and_the_flags_override_it(files, tmp_path,
                                                                           capsys):
    chosen = dataclasses.replace(PLAN, threshold=0.3, min_lesion_mm3=30.0,
                                 operating_point={"criterion": "f2", "value": 0.7})
    model = _save_model(tmp_path / "chosen.keras", chosen)
    out, given = tmp_path / "plan.nii.gz", tmp_path / "given.nii.gz"
    argv = [a for a in _args(files, out, model=model) if a != "--quiet"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert ("operating point: threshold 0.3 from the plan (chosen by f2 on validation), min "
            "lesion 30 mm^3 from the plan") in printed, printed
    # What the plan's operating point gives, computed here from the same probabilities.
    assert main(_args(files, given, "--save-probabilities", "--threshold", "0.4",
                      "--min-lesion-volume", "0", model=model)) == 0
    probabilities = nib.load(tmp_path / "given_probabilities.nii.gz").get_fdata()
    expected, _ = metrics.remove_small_lesions(probabilities >= 0.3, 30.0, (1.0, 1.0, 1.2))
    np.testing.assert_array_equal(np.asarray(nib.load(out).dataobj) > 0, expected)
    np.testing.assert_array_equal(np.asarray(nib.load(given).dataobj) > 0, probabilities >= 0.4)
    plan_row, = _read_csv(tmp_path / "plan_summary.csv")
    given_row, = _read_csv(tmp_path / "given_summary.csv")
    assert (plan_row["threshold"], plan_row["min_lesion_mm3"]) == ("0.3", "30.0")
    assert (given_row["threshold"], given_row["min_lesion_mm3"]) == ("0.4", "0.0")
    assert given_row["operating_point"] == "threshold 0.4 given, min lesion 0 mm^3 given"


def test_folder_mode_writes_maps_and_a_lesion_report_that_adds_up(files, members, tmp_path):
    images, out = _case_folder(files, tmp_path / "imagesTs"), tmp_path / "out"
    assert main(["predict", "--quiet", "--model", members["run"], "-i", str(images), "-o",
                 str(out), "--threshold", "0.45", "--save-probabilities",
                 "--save-uncertainty"]) == 0
    assert sorted(os.listdir(out)) == sorted(OUTPUTS + [
        f"{case}_{kind}.nii.gz" for case in ("case_a", "case_b")
        for kind in ("probabilities", "uncertainty")])
    lesions, summary = _read_csv(out / "lesions.csv"), _read_csv(out / "summary.csv")
    assert tuple(lesions[0]) == ("case", "lesion", "voxels", "volume_mm3", "centroid_x_mm",
                                 "centroid_y_mm", "centroid_z_mm", "max_probability",
                                 "mean_probability")
    for row in summary:
        mask = np.asarray(nib.load(out / f"{row['case']}.nii.gz").dataobj) > 0
        mine = [lesion for lesion in lesions if lesion["case"] == row["case"]]
        assert len(mine) == int(row["lesion_count"]) > 0
        assert sum(float(lesion["volume_mm3"]) for lesion in mine) == pytest.approx(
            mask.sum() * 1.2)  # 1 x 1 x 1.2 mm voxels
        assert float(row["lesion_volume_ml"]) == pytest.approx(mask.sum() * 1.2e-3, abs=1e-4)
        assert min(float(lesion["max_probability"]) for lesion in mine) >= 0.45
        assert row["members"] == "2" and row["threshold"] == "0.45"


def test_existing_report_files_are_replaced_only_with_overwrite(files, tmp_path, capsys):
    out = tmp_path / "seg.nii.gz"
    (tmp_path / "seg_lesions.csv").write_text("earlier work")
    err = _error(capsys, _args(files, out))
    assert "seg_lesions.csv' exists: pass --overwrite" in err, err
    assert not out.exists()
    assert main(_args(files, out, "--overwrite")) == 0
    assert (tmp_path / "seg_lesions.csv").read_text().startswith("case,lesion,")
    err = _error(capsys, _args(files, out, "--save-probabilities", "--probabilities",
                               str(tmp_path / "p.nii.gz")))
    assert "give one" in err


def test_an_archive_is_opened_by_tfversky_export_into_a_folder_removed_afterwards(
        files, members, tmp_path, monkeypatch):
    """The wiring of --model MODEL.zip (the archive's checks are tests/tfversky/test_export.py's):
    its members, unpacked by export.open_archive into a temporary folder, are the ensemble."""
    export = pytest.importorskip("tfversky.export")
    import shutil

    folders = []

    def open_archive(path, into_dir):
        folders.append(into_dir)
        copies = [shutil.copy(member, os.path.join(into_dir, f"fold_{k}.keras"))
                  for k, member in enumerate(members["files"])]
        return copies, plan.read_plan(copies[0])

    monkeypatch.setattr(export, "open_archive", open_archive)
    archive = tmp_path / "model.zip"
    archive.write_bytes(b"checked by the stand-in")
    assert main(_args(files, tmp_path / "zip.nii.gz", "--save-probabilities",
                      model=archive)) == 0
    argv = _args(files, tmp_path / "run.nii.gz", "--save-probabilities", model=members["run"])
    assert main(argv) == 0
    np.testing.assert_array_equal(
        nib.load(tmp_path / "zip_probabilities.nii.gz").get_fdata(),
        nib.load(tmp_path / "run_probabilities.nii.gz").get_fdata())
    assert len(folders) == 1 and not os.path.exists(folders[0])
    assert _read_csv(tmp_path / "zip_summary.csv")[0]["members"] == "2"
