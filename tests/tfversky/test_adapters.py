"""tfversky._adapters: the core finds the builder through entry points, never by import."""

import sys

import pytest

from tfversky import _adapters


def test_the_builder_and_the_registration_are_found_by_their_entry_points():
    assert _adapters.load("tfversky.datasets", "ms_lesions").__name__ == "tfds_ms.adapter"
    register = _adapters.load("tfversky.grid_placements", "registration")
    assert register.__module__ == "tfds_ms.registration"


def test_an_unknown_adapter_names_the_installed_ones():
    with pytest.raises(_adapters.AdapterUnavailableError,
                       match=r"no dataset named 'isbi' is installed \(known: ms_lesions\)"):
        _adapters.load("tfversky.datasets", "isbi")


def test_an_adapter_that_cannot_import_names_the_extra(monkeypatch):
    for name in [m for m in sys.modules if m == "tfds_ms" or m.startswith("tfds_ms.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # as if not installed
    with pytest.raises(_adapters.AdapterUnavailableError,
                       match=r"needs the data extras.*pip install 'tfversky\[data\]'"):
        _adapters.load("tfversky.datasets", "ms_lesions")
