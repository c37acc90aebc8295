"""Optional dependencies: which pip extra brings each, and one clear error when it is missing.

The loss, the metrics, the U-Net and sliding-window inference need only Keras and NumPy, plus
one Keras backend, which is an extra: ``tfversky[tensorflow]``, ``tfversky[jax]`` or
``tfversky[torch]`` (the fused loss's binding for it is built where it is installed). The rest
comes in extras too: ``tfversky[data]`` (TFDS, NIfTI I/O, resampling, the phantom, progress
bars), ``tfversky[viz]`` (figures), ``tfversky[registration]`` (rigid registration) and
``tfversky[all]`` (TensorFlow, data, viz and registration). What needs TensorFlow (the
``ms_lesions`` TFDS builder, the ``tf.data`` pipeline, ``tfversky train`` with its
``tf.distribute`` strategies) imports it through ``require`` like any other extra.

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
    # Keras's backends (the fused loss has a binding for each). The dataset, its tf.data
    # pipeline and `tfversky train` need TensorFlow.
    "tensorflow": "tensorflow",
    "jax": "jax",
    "torch": "torch",
}
CORE = {"numpy", "keras"}
# What ``tfversky[all]`` installs (not the other backends: one Keras installs one of them).
ALL = ("tensorflow", "data", "viz", "registration")


class MissingExtraError(ModuleNotFoundError):
    """An optional dependency is not installed; the message names the extra to install."""


def require(module: str, needed_by: str | None = None):
    """Imports ``module`` (e.g. ``"scipy.ndimage"``) or raises MissingExtraError naming its extra.

    Args:
        module: The module to import; its top-level package must be listed in EXTRAS.
        needed_by: What needs it, for the message (e.g. ``"the ms_lesions TFDS builder"``).
            Defaults to None (the message names only the module).

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
        missing = missing_extra(error, needed_by)
        if missing is None or missing.name != top:
            raise  # something else is missing: not ours to explain
        raise missing from error


def missing_extra(error: ModuleNotFoundError, needed_by: str | None = None):
    """The MissingExtraError that explains ``error`` (a failed import of a package that one of
    tfversky's extras installs), or None when the missing module is not an extra's.

    The command line turns an import that fails deep inside a command into this one line.

    >>> print(missing_extra(ModuleNotFoundError("No module named 'tensorflow'", name="tensorflow"),
    ...                     "tfversky train"))
    tensorflow is not installed (tfversky train needs it): it comes with tfversky's `tensorflow` extra. Install it with: pip install 'tfversky[tensorflow]' (or 'tfversky[all]').
    """
    top = (error.name or "").split(".")[0]
    if top not in EXTRAS:
        return None
    extra = EXTRAS[top]
    why = f" ({needed_by} needs it)" if needed_by else ""
    alternative = " (or 'tfversky[all]')" if extra in ALL else ""
    return MissingExtraError(
        f"{top} is not installed{why}: it comes with tfversky's `{extra}` extra. Install it "
        f"with: pip install 'tfversky[{extra}]'{alternative}.", name=top)
