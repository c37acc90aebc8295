"""Optional dependencies (tfversky/_extras.py): a missing one names the extra to install."""

import sys

import pytest

from tfversky import _extras


@pytest.mark.parametrize("module, extra", [("matplotlib", "viz"), ("scipy.ndimage", "data"),
                                           ("nibabel", "data"), ("tensorflow_datasets", "data"),
                                           ("tensorflow", "tensorflow"), ("jax", "jax")])
def test_a_missing_module_names_its_extra(monkeypatch, module, extra):
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed
    with pytest.raises(_extras.MissingExtraError,
                       match=rf"comes with tfversky's `{extra}` extra. Install it with: "
                             rf"pip install 'tfversky\[{extra}\]'") as caught:
        _extras.require(module, "the test")
    message = str(caught.value)
    assert "\n" not in message and "(the test needs it)" in message
    # [all] is offered only where it holds the extra: not for the other backends.
    assert ("'tfversky[all]'" in message) == (extra in _extras.ALL), message


def test_missing_extra_explains_only_the_extras_modules():
    error = ModuleNotFoundError("No module named 'tensorflow.python'", name="tensorflow.python")
    assert "pip install 'tfversky[tensorflow]'" in str(_extras.missing_extra(error))
    assert _extras.missing_extra(ModuleNotFoundError("x", name="no_such_module_xyz")) is None
    assert _extras.missing_extra(ModuleNotFoundError("x")) is None  # no name: not ours


def test_the_extras_match_pyproject():
    import tomllib
    from pathlib import Path

    project = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    extras = project["project"]["optional-dependencies"]
    assert set(_extras.EXTRAS.values()) | {"all", "test"} == set(extras)
    assert extras["all"] == [f"tfversky[{','.join(_extras.ALL)}]"]
    distributions = {"tensorflow_datasets": "tensorflow-datasets"}
    for module, extra in _extras.EXTRAS.items():
        names = [r.split("=")[0].split(">")[0].split("<")[0].strip() for r in extras[extra]]
        assert distributions.get(module, module) in names, (module, extra)
    # No backend in the core: pip install 'tfversky[jax]' (or [torch]) brings no TensorFlow.
    core = [r.split("=")[0].split(">")[0].strip() for r in project["project"]["dependencies"]]
    assert set(core) == _extras.CORE, core
    assert extras["tensorflow"] == ["tensorflow==2.21.*"]


def test_a_module_that_is_present_is_returned():
    assert _extras.require("scipy.ndimage").__name__ == "scipy.ndimage"


def test_an_unlisted_module_is_a_programming_error():
    with pytest.raises(ValueError, match="not an optional dependency of tfversky: add it to EXTRAS"):
        _extras.require("no_such_module_xyz")
