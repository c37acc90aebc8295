"""The loader's guards (tfversky/_loader.py): CPU features, the CUDA driver, a GPU without CUDA
kernels, and an installation made without the op (setup.py's note, the wheel smoke test)."""

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import tfversky
from tfversky import _loader, fused

ROOT = Path(__file__).resolve().parents[2]


def fake_library(tmp_path, **fields):
    """A file with the build info of a library built here, overridden by ``fields``."""
    info = dict(dict(version=tfversky.__version__, tensorflow=tf.__version__, cuda="", isa=""),
                **fields)
    path = tmp_path / "_tfversky_ops.so"
    body = ";".join(f"{key}={value}" for key, value in info.items())
    path.write_bytes(b"\x7fELF..." + _loader._MARKER + body.encode() + b"\0...")
    return path


@pytest.fixture
def fresh_loader(monkeypatch):
    """A loader and a dispatch that have loaded and warned nothing yet."""
    monkeypatch.setattr(_loader, "_cache", _loader._Cache())
    monkeypatch.setattr(fused, "_warned", set())


@pytest.fixture
def real_library():
    """Path and build info of the library this checkout built (found, not loaded)."""
    return _loader.find_library()


def _auto_and_fused(rng, match):
    """`auto` falls back with one warning matching `match`; `"fused"` raises it."""
    labels = (rng.random((1, 4, 5, 6)) < 0.3).astype("uint8")
    logits = tf.constant(rng.normal(size=(1, 4, 5, 6, 2)), tf.float32)
    with pytest.warns(RuntimeWarning, match=match):
        auto = tfversky.tversky_loss(labels, logits, from_logits=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tfversky.tversky_loss(labels, logits, from_logits=True)  # no second warning
    np.testing.assert_array_equal(
        auto, tfversky.tversky_loss(labels, logits, from_logits=True, implementation="tf"))
    with pytest.raises(fused.FusedOpUnavailableError, match=match):
        tfversky.tversky_loss(labels, logits, from_logits=True, implementation="fused")


# ---- CPU features ----

def test_refuses_a_library_built_for_cpu_features_this_cpu_lacks(tmp_path, monkeypatch):
    path = fake_library(tmp_path, isa="sse4_2,avx2,avx512f,amx_tile")
    monkeypatch.setattr(_loader, "cpu_flags", lambda: {"sse2", "sse4_2", "avx2"})
    with pytest.raises(fused.FusedOpUnavailableError) as error:
        _loader.find_library([path])
    message = str(error.value)
    assert "CPU features this CPU lacks (amx_tile, avx512f)" in message
    assert "SIGILL" in message and _loader.PORTABLE_COMMAND in message
    monkeypatch.setattr(_loader, "cpu_flags", lambda: {"sse4_2", "avx2", "avx512f", "amx_tile"})
    assert _loader.find_library([path])[0] == path
    monkeypatch.setattr(_loader, "cpu_flags", lambda: None)  # no /proc/cpuinfo: not held against it
    assert _loader.find_library([path])[0] == path


def test_the_built_library_records_the_features_it_assumes(real_library):
    path, info = real_library
    assert "isa" in info
    if info["portable"] == "0" and _loader.cpu_flags() and "sse2" in _loader.cpu_flags():
        assert {"avx", "sse4_2"} <= set(info["isa"].split(","))  # -march=native on any x86-64 here
    assert _loader.missing_cpu_features(info, _loader.cpu_flags()) == []


def test_auto_falls_back_when_this_cpu_lacks_a_feature(rng, fresh_loader, monkeypatch, real_library):
    path, info = real_library
    assumed = [f for f in info["isa"].split(",") if f]
    if not assumed:
        pytest.skip("a portable build assumes no optional CPU feature")
    monkeypatch.setenv(_loader.ENV_LIBRARY, str(path))
    monkeypatch.setattr(_loader, "cpu_flags", lambda: set(assumed[:-1]))
    _auto_and_fused(rng, f"CPU features this CPU lacks \\({assumed[-1]}\\)")


# ---- CUDA driver ----

@pytest.mark.parametrize("driver, accepted", [(12040, False), (11080, False), (13000, True),
                                              (13020, True), (14000, True), (None, True)])
def test_driver_check(tmp_path, monkeypatch, driver, accepted):
    path = fake_library(tmp_path, cuda="13.0.88")
    monkeypatch.setattr(_loader, "cuda_driver_version", lambda: driver)
    if accepted:
        assert _loader.find_library([path])[0] == path
        return
    with pytest.raises(fused.FusedOpUnavailableError) as error:
        _loader.find_library([path])
    message = str(error.value)
    major, minor = divmod(driver // 10, 100)
    assert (f"built with the CUDA 13.0.88 runtime, which needs an NVIDIA driver for CUDA 13.0 or "
            f"newer; the installed driver supports CUDA {major}.{minor}") in message
    assert _loader.CPU_ONLY_COMMAND in message


def test_driver_check_ignores_cpu_only_builds(tmp_path, monkeypatch):
    monkeypatch.setattr(_loader, "cuda_driver_version", lambda: 9000)
    assert _loader.cuda_driver_problem({"cuda": ""}, 9000) is None
    path = fake_library(tmp_path, cuda="")
    assert _loader.find_library([path])[0] == path


def test_auto_falls_back_on_an_old_driver(rng, fresh_loader, monkeypatch, real_library):
    path, info = real_library
    monkeypatch.setenv(_loader.ENV_LIBRARY, str(path))
    monkeypatch.setattr(_loader, "read_build_info", lambda _: dict(info, cuda="13.0.88"))
    monkeypatch.setattr(_loader, "cuda_driver_version", lambda: 12040)
    _auto_and_fused(rng, "needs an NVIDIA driver for CUDA 13.0 or newer")


def test_real_driver_version_is_read_or_absent():
    version = _loader.cuda_driver_version()
    assert version is None or version >= 1000


# ---- a GPU, but no CUDA kernels ----

def test_warns_once_when_a_gpu_is_visible_but_the_op_has_no_cuda_kernels(
        fresh_loader, monkeypatch, real_library):
    path, info = real_library
    if info["cuda"]:
        pytest.skip("this build has CUDA kernels")
    monkeypatch.setenv(_loader.ENV_LIBRARY, str(path))
    monkeypatch.setattr(_loader, "_visible_gpus", lambda: ["/physical_device:GPU:0"])
    with pytest.warns(RuntimeWarning, match="built without CUDA kernels, so the op runs on the CPU"):
        _loader.load()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _loader.load()
        assert fused.is_available()


def test_no_warning_without_a_gpu(fresh_loader, monkeypatch, real_library):
    monkeypatch.setenv(_loader.ENV_LIBRARY, str(real_library[0]))
    monkeypatch.setattr(_loader, "_visible_gpus", lambda: [])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _loader.load()


# ---- installations without the op ----

def test_the_message_names_why_the_install_has_no_op(tmp_path, monkeypatch):
    monkeypatch.setattr(_loader, "not_built_reason",
                        lambda: "the CMake build failed while configuring (no working C++ compiler)")
    with pytest.raises(fused.FusedOpUnavailableError) as error:
        _loader.find_library([tmp_path / "_tfversky_ops.so"])
    message = str(error.value)
    assert ("This installation was made without the op: the CMake build failed while "
            "configuring (no working C++ compiler)") in message
    assert _loader.REBUILD_COMMAND in message


@pytest.mark.slow
def test_install_without_a_compiler():
    """CXX=/bin/false: `pip wheel` succeeds, the installed package imports, the pure loss works,
    `auto` warns once, and `"fused"` raises naming the reason and the build command."""
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "wheel_smoke.py"),
                             "--no-compiler"], capture_output=True, text=True)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "This installation was made without the op: the CMake build failed while " \
           "configuring (no working C++ compiler: CXX=/bin/false)" in output
    assert "wheel smoke test passed (no compiler)" in output
