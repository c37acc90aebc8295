"""``python -m tfversky predict``: the written NIfTI files and every user-error path.

Most cases call ``tfversky.cli.main`` in this process (fast); two run the real
``python -m tfversky`` to check the entry point, the exit codes and that no traceback leaks.
"""

import os
import subprocess
import sys

import keras
import nibabel as nib
import numpy as np
import pytest

from tfversky.cli import main
from tfversky.inference import predict_volume
from tfversky.losses import TverskyLoss
from tfversky.models import unet3d
from tfversky.preprocessing import normalize_intensity

SHAPE = (20, 24, 28)
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


def _save_model(path, **kwargs):
    model = unet3d(**{"base_filters": 2, "depth": 2, **kwargs})
    model.compile(optimizer="adam", loss=TverskyLoss(0.3, 0.7))
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
    paths["logits_model"] = _save_model(folder / "logits.keras", final_activation=None)
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


def test_predict_writes_mask_and_probabilities_on_the_t1_grid(files, tmp_path, capsys):
    out, prob = tmp_path / "seg.nii.gz", tmp_path / "prob.nii"
    assert main(_args(files, out, "--probabilities", str(prob), "--threshold", "0.4",
                      "--patch-size", "16", "--overlap", "0.25")) == 0
    t1 = nib.load(files["t1"])
    mask, lesion = nib.load(out), nib.load(prob)
    for image, dtype in ((mask, np.uint8), (lesion, np.float32)):
        assert image.shape == SHAPE and image.get_data_dtype() == dtype
        np.testing.assert_allclose(image.affine, t1.affine)
        assert (int(image.header["qform_code"]), int(image.header["sform_code"])) == (1, 2)
        assert image.header.get_zooms() == t1.header.get_zooms()
    # Same normalisation and inference as the library calls, lesion = softmax channel 1.
    image = np.stack([nib.load(files[m]).get_fdata() for m in ("t1", "t2", "flair")], -1)
    model = keras.saving.load_model(files["model"], compile=False)
    expected = predict_volume(model, normalize_intensity(image), patch_size=16, overlap=0.25,
                              progress=False)[..., 1]
    np.testing.assert_allclose(lesion.get_fdata(), expected, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(mask.dataobj), expected >= 0.4)


def test_summary_line(files, tmp_path, capsys):
    argv = [a for a in _args(files, tmp_path / "seg.nii") if a != "--quiet"]
    assert main(argv) == 0
    assert "lesion voxels" in capsys.readouterr().out


def test_logits_model_needs_from_logits(files, tmp_path, capsys):
    out = tmp_path / "seg.nii.gz"
    err = _error(capsys, _args(files, out, model=files["logits_model"]))
    assert "--from-logits" in err
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


def _corrupt(path):
    path.write_bytes(b"\x1f\x8b" + b"garbage" * 20)
    return str(path)


@pytest.mark.parametrize("case, expected", [
    ("missing_model", ["--model", "does not exist"]),
    ("corrupt_model", ["--model", "not a .keras archive"]),
    ("model_not_keras", ["--model", "cannot be loaded as a Keras model"]),
    ("missing_t2", ["T2 file", "does not exist"]),
    ("corrupt_flair", ["FLAIR file", "cannot be read"]),
    ("4d_t1", ["T1 file", "(20, 24, 28, 2)", "3D volume"]),
    ("other_shape_t2", ["T2 file", "shape (20, 24, 30) vs (20, 24, 28)",
                        "--resample-to-first"]),
    ("bad_out_extension", ["--out", ".nii or .nii.gz"]),
    ("out_folder_missing", ["--out", "does not exist"]),
    ("out_is_input", ["--out", "input files"]),
    ("probabilities_is_out", ["--probabilities and --out"]),
    ("patch_not_multiple", ["patch_size", "multiple of 2", "8 or 10"]),
    ("model_with_4_channels", ["4 input channel"]),
    ("model_with_3_classes", ["outputs 3 channels"]),
    ("empty_scans", ["brain mask is empty"]),
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
    elif case == "other_shape_t2":
        replace["t2"] = _write_scan(tmp_path / "t2.nii.gz", np.ones((20, 24, 30)))
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
    elif case == "model_with_4_channels":
        replace["model"] = _save_model(tmp_path / "m.keras", input_shape=(None, None, None, 4))
    elif case == "model_with_3_classes":
        replace["model"] = _save_model(tmp_path / "m.keras", num_classes=3)
    elif case == "empty_scans":
        for flag in ("t1", "t2", "flair"):
            replace[flag] = _write_scan(tmp_path / f"{flag}.nii.gz", np.zeros(SHAPE))
    err = _error(capsys, _args(files, out, *extra, **replace))
    assert err.startswith("python -m tfversky predict: error: ")
    for text in expected:
        assert text in err
    assert not os.path.exists(out) or case == "out_is_input"


@pytest.mark.parametrize("extra", [["--threshold", "1.5"], ["--overlap", "1"],
                                   ["--patch-size", "8,8"], ["--batch-size", "0"]])
def test_invalid_option_values_are_argparse_errors(files, tmp_path, capsys, extra):
    with pytest.raises(SystemExit) as info:
        main(_args(files, tmp_path / "seg.nii.gz", *extra))
    assert info.value.code == 2
    assert "error: argument" in capsys.readouterr().err


def test_missing_required_flag_and_no_command(capsys):
    for argv in (["predict", "--t1", "x.nii"], []):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
    assert "required" in capsys.readouterr().err


def _run_module(*argv):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, "-m", "tfversky", *argv], capture_output=True,
                          text=True, env=env, timeout=240)


def test_module_entry_point(files, tmp_path):
    out = tmp_path / "seg.nii.gz"
    result = _run_module(*_args(files, out, "--patch-size", "16"))
    assert result.returncode == 0, result.stderr
    assert nib.load(out).get_data_dtype() == np.uint8

    result = _run_module(*_args(files, out, t1=tmp_path / "missing.nii.gz"))
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
