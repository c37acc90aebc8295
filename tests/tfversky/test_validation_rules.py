"""tfversky.validation_rules: when validation data are enough to choose on, without
TensorFlow."""

import subprocess
import sys

from tfversky import validation_rules


def test_validation_shortfall_names_what_is_missing():
    rules = validation_rules
    assert rules.validation_shortfall(rules.MIN_VALIDATION_SUBJECTS,
                                      rules.MIN_VALIDATION_LESIONS) == ""
    assert rules.validation_shortfall(1, 5) == \
        "1 subject(s) (fewer than 2), 5 lesion(s) (fewer than 20)"
    assert rules.validation_shortfall(2, 19) == "19 lesion(s) (fewer than 20)"


def test_the_rules_import_no_framework():
    # Loaded alone (the package's __init__ imports keras): it needs nothing but Python.
    code = ("import importlib.util, sys; "
            f"spec = importlib.util.spec_from_file_location('rules', {validation_rules.__file__!r}); "
            "spec.loader.exec_module(importlib.util.module_from_spec(spec)); "
            "print(sorted(m for m in ('tensorflow', 'keras', 'jax', 'torch', 'numpy') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
