"""Optional dependencies: which pip extra brings each, and one clear error when it is missing.

The loss needs only TensorFlow and NumPy (``pip install tfversky``). The rest comes in
extras: ``tfversky[data]`` (TFDS, NIfTI I/O, resampling, the phantom, progress bars),
``tfversky[viz]`` (figures), ``tfversky[registration]`` (rigid registration),
``tfversky[jax]`` and ``tfversky[torch]`` (Keras's other backends) and ``tfversky[all]``
(data, viz and registration). Code that needs one imports it through ``require``.

Example:

>>> from tfversky._extras import EXTRAS, require
>>> require("scipy.ndimage").__name__
'scipy.ndimage'
>>> EXTRAS["matplotlib"]   # without it: "... Install it with: pip install 'tfversky[viz]' ..."
'viz'
"""

from __future__ import annotations

import importlib

# Top-level module -> the extra that installs it (pyproject.toml's optional-dependencies).
EXTRAS = {
    "tensorflow_datasets": "data",
    "nibabel": "data",
    "nilearn": "data",
    "scipy": "data",
    "tqdm": "data",
    "matplotlib": "viz",
    "SimpleITK": "registration",
    # Keras backends besides TensorFlow (the fused loss has a binding for each).
    "jax": "jax",
    "torch": "torch",
}
CORE = {"numpy", "tensorflow", "keras"}


class MissingExtraError(ModuleNotFoundError):
    """An optional dependency is not installed; the message names the extra to install."""


def require(module: str):
    """Imports ``module`` (e.g. ``"scipy.ndimage"``) or raises MissingExtraError naming its extra.

    Raises:
        MissingExtraError: the module's package is not installed.
        ValueError: ``module`` is not listed in EXTRAS (a programming error).
    """
    top = module.split(".")[0]
    if top not in EXTRAS and top not in CORE:
        raise ValueError(f"{module} is not an optional dependency of tfversky: add it to EXTRAS")
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        if error.name is None or error.name.split(".")[0] != top or top in CORE:
            raise  # something else is missing: not ours to explain
        extra = EXTRAS[top]
        raise MissingExtraError(
            f"{module} is not installed: it comes with tfversky's `{extra}` extra. Install it "
            f"with: pip install 'tfversky[{extra}]' (or 'tfversky[all]').", name=top) from error
