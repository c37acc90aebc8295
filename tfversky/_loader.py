"""Finds and loads the fused op library: lazily, once, with one clear error.

Nothing here runs at ``import tfversky``: the library is loaded on the first use of the
fused loss. Where it is looked for, in order:

1. ``$TFVERSKY_OPS_LIBRARY``, if set (a path to ``_tfversky_ops.so``; nothing else is tried);
2. ``_lib/`` in the package directory (``pip install``, and editable installs, which build
   in place);
3. ``build/`` next to the package (a development build: ``cmake -S . -B build``).

The op's XLA lowering (``_tfversky_xla.so``, csrc/xla) is a second library, loaded by
``load_xla`` from the folder of the op library that loaded, with the same checks.

Before loading, the TensorFlow version the library was built against (recorded in the
library itself, see csrc/ops/build_info.cc) is compared with the running one: a library
built for another TensorFlow can crash the process instead of raising.
"""

from __future__ import annotations

import os
from pathlib import Path

from tfversky._version import __version__

LIBRARY_NAME = "_tfversky_ops.so"
ENV_LIBRARY = "TFVERSKY_OPS_LIBRARY"
_MARKER = b"tfversky-build-info:"
REBUILD_COMMAND = "pip install --no-build-isolation -e .   (from the tfversky source tree)"


class FusedOpUnavailableError(RuntimeError):
    """The fused op library is missing, was built for another TensorFlow, or failed to load."""


def search_paths() -> list[Path]:
    """Where the library is looked for, in order (see the module docstring)."""
    explicit = os.environ.get(ENV_LIBRARY)
    if explicit:
        return [Path(explicit)]
    package_dir = Path(__file__).resolve().parent
    return [package_dir / "_lib" / LIBRARY_NAME, package_dir.parent / "build" / LIBRARY_NAME]


def read_build_info(path) -> dict | None:
    """The build info recorded in a library file, without loading it; None if absent.

    Example: ``{"version": "0.1.0", "tensorflow": "2.21.0", "cuda": "13.0.88", ...}``
    (``cuda`` is empty for a CPU-only build).
    """
    data = Path(path).read_bytes()
    start = data.find(_MARKER)
    if start < 0:
        return None
    end = data.find(b"\0", start)
    fields = data[start + len(_MARKER):end].decode("utf-8", "replace").split(";")
    return dict(field.split("=", 1) for field in fields if "=" in field)


def _tensorflow_version() -> str:
    import tensorflow as tf

    return tf.__version__


def find_library(paths=None, *, what="fused Tversky op library") -> tuple[Path, dict]:
    """The first usable library among ``paths`` (default: ``search_paths()``) and its info.

    Raises:
        FusedOpUnavailableError: naming every path tried and why it was rejected, the
            TensorFlow versions, and the command that rebuilds the library.
    """
    running = _tensorflow_version()
    tried = []
    for path in map(Path, search_paths() if paths is None else paths):
        if not path.is_file():
            tried.append(f"{path}: not found")
            continue
        info = read_build_info(path)
        if info is None:
            tried.append(f"{path}: not a tfversky op library (no build info)")
        elif info.get("tensorflow") != running:
            tried.append(f"{path}: built for TensorFlow {info.get('tensorflow')}, running {running}")
        elif info.get("version") != __version__:
            tried.append(f"{path}: built from tfversky {info.get('version')}, this is {__version__}")
        else:
            return path, info
    raise FusedOpUnavailableError(_message(tried, running, what))


def _message(tried, running, what) -> str:
    lines = "\n".join(f"  {entry}" for entry in tried) or "  (no paths)"
    return (
        f"The {what} is not available for tfversky {__version__} with "
        f"TensorFlow {running}. Looked for:\n{lines}\n"
        f"Build it against the running TensorFlow with:\n  {REBUILD_COMMAND}\n"
        f"or set {ENV_LIBRARY} to a built {LIBRARY_NAME}. implementation='tf' computes the "
        f"same loss in pure TensorFlow.")


class _Cache:
    """The outcome of the first load (success or failure), reused by later calls."""

    def __init__(self):
        self.library = None
        self.info = None
        self.error = None


_cache = _Cache()


def load():
    """The loaded op library (the module from ``tf.load_op_library``), loading it once.

    Raises:
        FusedOpUnavailableError: see ``find_library``; also when TensorFlow refuses the file.
    """
    if _cache.library is None and _cache.error is None:
        try:
            path, info = find_library()
            import tensorflow as tf

            try:
                library = tf.load_op_library(str(path))
            except tf.errors.OpError as error:
                raise FusedOpUnavailableError(
                    f"TensorFlow could not load {path}: {error.message}\nRebuild it with:\n"
                    f"  {REBUILD_COMMAND}") from error
            _cache.library, _cache.info = library, dict(info, path=str(path))
        except FusedOpUnavailableError as error:
            _cache.error = error
    if _cache.error is not None:
        raise _cache.error
    return _cache.library


def build_info() -> dict:
    """Build info of the loaded library, plus its ``path``. Loads it if needed."""
    load()
    return dict(_cache.info)


# ---- the XLA lowering (csrc/xla) ----

XLA_LIBRARY_NAME = "_tfversky_xla.so"
_xla_cache = _Cache()


def load_xla() -> dict:
    """Loads the op's XLA lowering once, after the op library; returns its build info and path.

    The library holds XLA compilation kernels of the two ops (custom calls to the same
    kernels) and nothing to call from Python. It is looked for next to the op library that
    loaded and checked as that one is.

    Raises:
        FusedOpUnavailableError: the op library or the lowering cannot be loaded.
    """
    load()
    if _xla_cache.info is None and _xla_cache.error is None:
        try:
            path, info = find_library([Path(_cache.info["path"]).with_name(XLA_LIBRARY_NAME)],
                                      what="XLA lowering of the fused op")
            import tensorflow as tf

            try:
                tf.load_library(str(path))
            except tf.errors.OpError as error:
                raise FusedOpUnavailableError(
                    f"TensorFlow could not load {path}: {error.message}\nRebuild it with:\n"
                    f"  {REBUILD_COMMAND}") from error
            _xla_cache.info = dict(info, path=str(path))
        except FusedOpUnavailableError as error:
            _xla_cache.error = error
    if _xla_cache.error is not None:
        raise _xla_cache.error
    return dict(_xla_cache.info)
