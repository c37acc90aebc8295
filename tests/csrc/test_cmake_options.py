"""CMake's choice options: a bad value stops the configure naming it; TFVERSKY_XLA=GPU leaves
the XLA lowering out where there is no NVIDIA driver (what `make demo` builds)."""

import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
CMAKE = shutil.which("cmake", path=str(pathlib.Path(sys.executable).parent)) or shutil.which("cmake")
pytestmark = pytest.mark.skipif(CMAKE is None, reason="needs CMake")
NOTHING = ["-DTFVERSKY_TF_OP=OFF", "-DTFVERSKY_JAX=OFF", "-DTFVERSKY_TORCH=OFF",
           "-DTFVERSKY_CUDA=OFF", "-DTFVERSKY_PYBIND=OFF"]


def configure(tmp_path, *options):
    return subprocess.run([CMAKE, "-S", str(ROOT), "-B", str(tmp_path / "build"),
                           f"-DPython_EXECUTABLE={sys.executable}", *options],
                          capture_output=True, text=True)


@pytest.mark.parametrize("option, value, choices", [
    ("TFVERSKY_XLA", "FOO", "ON, OFF, GPU"), ("TFVERSKY_TORCH", "maybe", "AUTO, ON, OFF"),
    ("TFVERSKY_CUDA", "yes", "AUTO, ON, OFF")])
def test_a_value_not_among_the_choices_stops_the_configure(tmp_path, option, value, choices):
    done = configure(tmp_path, *NOTHING, f"-D{option}={value}")
    assert done.returncode != 0
    assert f"-D{option}={value}: expected one of {choices}" in done.stderr


def test_choices_are_taken_in_any_case(tmp_path):
    done = configure(tmp_path, *NOTHING, "-DTFVERSKY_XLA=off", "-DTFVERSKY_CUDA=Off")
    assert done.returncode == 0, done.stderr


@pytest.mark.skipif(pathlib.Path("/proc/driver/nvidia/version").exists(),
                    reason="an NVIDIA driver is here: GPU builds the lowering")
def test_xla_gpu_leaves_the_lowering_out_without_a_driver(tmp_path):
    pytest.importorskip("tensorflow")
    options = [o for o in NOTHING if "TF_OP" not in o]  # the TensorFlow op, nothing else
    for value, built in (("GPU", False), ("ON", True)):
        shutil.rmtree(tmp_path / "build", ignore_errors=True)
        done = configure(tmp_path, *options, f"-DTFVERSKY_XLA={value}")
        assert done.returncode == 0, done.stderr
        assert ("not building the op's XLA lowering" not in done.stdout) == built
        assert (tmp_path / "build" / "CMakeFiles" / "tfversky_xla.dir").is_dir() == built
