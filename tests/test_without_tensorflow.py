"""tfversky without TensorFlow (issue 25, packaging): scripts/notf_smoke.py, in a subprocess.

* Here, with TensorFlow hidden (every import of it fails as if it were not installed): the
  package imports and trains on JAX, and the TensorFlow-only entry points refuse in one line.
* In a real environment without TensorFlow, when ``TFVERSKY_NOTF_PYTHON`` names its Python
  (tfversky installed there with its bindings, docs/install.md): the same checks against that
  installation, on each backend it has, with the fused binding required.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "scripts" / "notf_smoke.py"
NOTF_PYTHON = os.environ.get("TFVERSKY_NOTF_PYTHON")


def _run(python, args, tmp_path, **env):
    environment = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    environment.update(TF_CPP_MIN_LOG_LEVEL="3", **env)
    return subprocess.run([python, *args], cwd=tmp_path, env=environment, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow
def test_import_train_and_refusals_with_tensorflow_hidden(tmp_path):
    pytest.importorskip("jax")
    result = _run(sys.executable, [str(SMOKE), "--hide-tensorflow"], tmp_path,
                  KERAS_BACKEND="jax", PYTHONPATH=str(ROOT))
    assert result.returncode == 0, f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    for line in ("import tfds_ms: tensorflow is not installed",
                 "tfversky train: python -m tfversky train: error: tensorflow is not installed",
                 "examples/train_ms.py: train_ms.py: error: tensorflow is not installed",
                 "without TensorFlow on jax: all checks passed"):
        assert line in result.stdout, result.stdout


def test_keras_on_a_missing_tensorflow_backend_is_one_line(tmp_path):
    hide = "import sys; sys.modules['tensorflow'] = None; import tfversky"
    result = _run(sys.executable, ["-c", hide], tmp_path, KERAS_BACKEND="tensorflow",
                  PYTHONPATH=str(ROOT))
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("tfversky._extras.MissingExtraError: Keras's backend is tensorflow"), last
    assert "pip install 'tfversky[tensorflow]', or set KERAS_BACKEND" in last, last


def test_evaluate_folders_of_masks_needs_no_tensorflow(tmp_path):
    pytest.importorskip("jax")
    script = """if True:
        import sys; sys.modules['tensorflow'] = None
        import nibabel as nib, numpy as np
        from tfversky import cli
        mask = np.zeros((8, 8, 8), np.uint8); mask[2:5, 2:5, 2:5] = 1
        for folder in ('p', 't'):
            nib.save(nib.Nifti1Image(mask, np.eye(4)), f'{folder}/a.nii.gz')
        sys.exit(cli.main(['evaluate', '--predictions', 'p', '--truth', 't', '--out', 'o']))
    """
    (tmp_path / "p").mkdir(), (tmp_path / "t").mkdir()
    result = _run(sys.executable, ["-c", script], tmp_path, KERAS_BACKEND="jax",
                  PYTHONPATH=str(ROOT))
    assert result.returncode == 0, f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [
        "cases.csv", "lesions.csv", "summary.json"]


def _backends_of(python) -> list[str]:
    probe = ("import importlib.util as u; print(' '.join(b for b in ('jax', 'torch') "
             "if u.find_spec(b)))")
    found = subprocess.run([python, "-c", probe], capture_output=True, text=True, check=True)
    return found.stdout.split()


@pytest.mark.slow
@pytest.mark.skipif(not NOTF_PYTHON, reason="TFVERSKY_NOTF_PYTHON (a Python without "
                                            "TensorFlow, tfversky installed) is not set")
def test_an_installation_without_tensorflow(tmp_path):
    backends = _backends_of(NOTF_PYTHON)
    assert backends, f"{NOTF_PYTHON} has neither JAX nor PyTorch"
    for backend in backends:
        # Outside the checkout, without PYTHONPATH or a library override: the installed package.
        result = _run(NOTF_PYTHON, [str(SMOKE), "--expect-fused"], tmp_path,
                      KERAS_BACKEND=backend, PYTHONPATH="", TFVERSKY_OPS_LIBRARY="")
        assert result.returncode == 0, (
            f"{backend}:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
        assert str(ROOT / "tfversky") not in result.stdout, "imported the checkout, not the install"
        assert f"without TensorFlow on {backend}: all checks passed" in result.stdout
