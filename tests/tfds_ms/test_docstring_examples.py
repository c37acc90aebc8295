"""The docstring examples of the data modules run and print what they show."""

import doctest
import importlib

import pytest

MODULES = ["tfds_ms.layouts", "tfds_ms.ms_lesions", "tfds_ms.scans", "tfds_ms.synth",
           "tfversky.data", "tfversky.preprocessing"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
    assert result.attempted > 0
