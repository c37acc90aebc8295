"""Finds and loads the fused op library: lazily, once, with one clear error.

Nothing here runs at ``import tfversky``: the library is loaded on the first use of the
fused loss. Where it is looked for, in order:

1. ``$TFVERSKY_OPS_LIBRARY``, if set (a path to ``_tfversky_ops.so``; nothing else is tried);
2. ``_lib/`` in the package directory (``pip install``, and editable installs, which build
   in place);
3. ``build/`` next to the package (a development build: ``cmake -S . -B build``).

Before loading, the build info recorded in the library itself (csrc/ops/build_info.cc) is
checked, because each of these would crash the process or fail at the first call instead of
raising here:

* the TensorFlow version it was built against must be the running one;
* the CPU features its kernels were compiled for (``-march=native`` by default) must all be
  present on this CPU (else SIGILL: an environment moved to another machine);
* the CUDA runtime it was built with must be supported by the installed NVIDIA driver.

A library that passes but has no CUDA kernels while a GPU is visible loads with one warning.

The op's XLA lowering (``_tfversky_xla.so``, csrc/xla) is a second library, loaded by
``load_xla`` from the folder of the op library that loaded, with the same checks.

The bindings of the same kernels for the other Keras backends, ``_tfversky_jax.so`` (XLA FFI
handlers, csrc/jax) and ``_tfversky_torch.so`` (``torch.library`` ops, csrc/torch), are
found the same way (beside ``$TFVERSKY_OPS_LIBRARY`` if set, else in ``_lib/``, then
``build/``) and checked the same way, against the running jaxlib or PyTorch instead of
TensorFlow: ``load_jax`` and ``load_torch``. Nothing of TensorFlow is imported for them.
"""

from __future__ import annotations

import ctypes
import os
import warnings
from pathlib import Path

from tfversky._extras import require
from tfversky._version import __version__

LIBRARY_NAME = "_tfversky_ops.so"
ENV_LIBRARY = "TFVERSKY_OPS_LIBRARY"
_MARKER = b"tfversky-build-info:"
REBUILD_COMMAND = "pip install --no-build-isolation -e .   (from the tfversky source tree)"
PORTABLE_COMMAND = "TFVERSKY_PORTABLE=1 " + REBUILD_COMMAND
CPU_ONLY_COMMAND = "CMAKE_ARGS=-DTFVERSKY_CUDA=OFF " + REBUILD_COMMAND
# Written by setup.py into _lib/ when an install skipped the op (no TensorFlow at build
# time, no compiler, a failed build): why, for the error message.
NOT_BUILT_NOTE = "NOT_BUILT.txt"


class FusedOpUnavailableError(RuntimeError):
    """The fused op library is missing, was built for another TensorFlow, or failed to load."""


def search_paths(name: str = LIBRARY_NAME) -> list[Path]:
    """Where the library ``name`` is looked for, in order (see the module docstring)."""
    explicit = os.environ.get(ENV_LIBRARY)
    if explicit:  # the op library itself, or beside it the binding `name`
        return [Path(explicit) if name == LIBRARY_NAME else Path(explicit).with_name(name)]
    package_dir = Path(__file__).resolve().parent
    return [package_dir / "_lib" / name, package_dir.parent / "build" / name]


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
    # The first thing the TensorFlow op's loading does: without TensorFlow (a JAX or PyTorch
    # install), one line naming the extra.
    return require("tensorflow", "the fused TensorFlow op").__version__


def _jaxlib_version() -> str:
    import jaxlib

    return jaxlib.__version__


def _torch_version() -> str:
    import torch

    return torch.__version__


# Per framework: the build-info key of the version a binding was built against, the name
# users know it by, and the running version.
FRAMEWORKS = {
    "tensorflow": ("tensorflow", "TensorFlow", lambda: _tensorflow_version()),
    "jax": ("jaxlib", "jaxlib", lambda: _jaxlib_version()),
    "torch": ("torch", "PyTorch", lambda: _torch_version()),
}


# ---- this machine: CPU features and CUDA driver ----

def cpu_flags() -> set[str] | None:
    """This CPU's feature flags as /proc/cpuinfo lists them; None where it cannot be read.

    >>> flags = cpu_flags()
    >>> flags is None or "sse2" in flags or "fp" in flags   # x86-64 or Arm
    True
    """
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return None


def missing_cpu_features(info: dict, flags: set[str] | None) -> list[str]:
    """The CPU features a library's kernels assume (its ``isa`` build info) that ``flags`` lack.

    Unknown flags (None: no /proc/cpuinfo) are not held against the library.

    >>> missing_cpu_features({"isa": "avx2,fma,avx512f"}, {"avx2", "fma"})
    ['avx512f']
    """
    if flags is None:
        return []
    return sorted(f for f in info.get("isa", "").split(",") if f and f not in flags)


def cuda_driver_version() -> int | None:
    """The CUDA version the installed NVIDIA driver supports, as 1000 * major + 10 * minor
    (cuDriverGetVersion: 12040 is CUDA 12.4); None without a driver (no libcuda).

    >>> version = cuda_driver_version()
    >>> version is None or version >= 1000
    True
    """
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    version = ctypes.c_int(0)
    if libcuda.cuDriverGetVersion(ctypes.byref(version)) != 0:
        return None
    return version.value


def cuda_driver_problem(info: dict, driver_version: int | None) -> str | None:
    """Why the driver cannot run a library's CUDA kernels, or None (also for CPU-only builds
    and machines without a driver, where the kernels are never launched).

    A CUDA runtime runs on any driver of its major version or newer (CUDA's minor-version
    compatibility); the op links the runtime statically, so this is all that matters.

    >>> cuda_driver_problem({"cuda": "13.0.88"}, 12040) is not None
    True
    >>> cuda_driver_problem({"cuda": "13.0.88"}, 13000) is None
    True
    """
    built = info.get("cuda", "")
    if not built or driver_version is None:
        return None
    needed = int(built.split(".")[0])
    major, minor = divmod(driver_version // 10, 100)
    if major >= needed:
        return None
    return (f"built with the CUDA {built} runtime, which needs an NVIDIA driver for CUDA "
            f"{needed}.0 or newer; the installed driver supports CUDA {major}.{minor} "
            f"(cuDriverGetVersion = {driver_version}). Update the driver, or rebuild the op "
            f"with a CUDA toolkit of version {major} or without CUDA kernels:\n"
            f"    {CPU_ONLY_COMMAND}")


def _visible_gpus() -> list:
    """GPUs the running Keras backend sees (TensorFlow is not imported for another backend)."""
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return [d for d in jax.devices() if d.platform == "gpu"]
    if backend == "torch":
        import torch

        return list(range(torch.cuda.device_count()))
    import tensorflow as tf

    return tf.config.list_physical_devices("GPU")


# ---- finding and loading ----

def _rejection(info: dict | None, running: str, framework: str = "tensorflow") -> str | None:
    """Why a library with build info ``info`` cannot be loaded here, or None."""
    if info is None:
        return "not a tfversky op library (no build info)"
    key, label, _ = FRAMEWORKS[framework]
    if info.get(key) != running:
        built = info.get(key)
        return (f"built for {label} {built}, running {running}" if built else
                f"not built for {label}")
    if info.get("version") != __version__:
        return f"built from tfversky {info.get('version')}, this is {__version__}"
    missing = missing_cpu_features(info, cpu_flags())
    if missing:
        return (f"compiled for CPU features this CPU lacks ({', '.join(missing)}): it was "
                f"built on another machine and would crash here (SIGILL). Rebuild it on this "
                f"machine, or build it for any x86-64 CPU:\n    {PORTABLE_COMMAND}")
    return cuda_driver_problem(info, cuda_driver_version())


def find_library(paths=None, *, what="fused Tversky op library",
                 framework="tensorflow") -> tuple[Path, dict]:
    """The first usable library among ``paths`` (default: ``search_paths()``) and its info.

    Raises:
        FusedOpUnavailableError: naming every path tried and why it was rejected (another
            TensorFlow, jaxlib or PyTorch, another tfversky, CPU features this CPU lacks, a
            CUDA runtime the driver cannot run), and the command that rebuilds the library.
    """
    running = FRAMEWORKS[framework][2]()
    tried = []
    for path in map(Path, search_paths() if paths is None else paths):
        if not path.is_file():
            tried.append(f"{path}: not found")
            continue
        info = read_build_info(path)
        reason = _rejection(info, running, framework)
        if reason is None:
            return path, info
        tried.append(f"{path}: {reason}")
    raise FusedOpUnavailableError(_message(tried, f"{FRAMEWORKS[framework][1]} {running}", what))


def not_built_reason() -> str | None:
    """Why this installation has no op library (setup.py's note), or None."""
    note = Path(__file__).resolve().parent / "_lib" / NOT_BUILT_NOTE
    return note.read_text().strip() if note.is_file() else None


def _message(tried, running, what) -> str:
    """``running``: the framework and its version, e.g. "TensorFlow 2.21.0"."""
    lines = "\n".join(f"  {entry}" for entry in tried) or "  (no paths)"
    skipped = not_built_reason()
    skipped = f"This installation was made without the op: {skipped}\n" if skipped else ""
    framework = running.rsplit(" ", 1)[0]
    return (
        f"The {what} is not available for tfversky {__version__} with "
        f"{running}. Looked for:\n{lines}\n{skipped}"
        f"Build it against the running {framework} with:\n  {REBUILD_COMMAND}\n"
        f"or set {ENV_LIBRARY} to a built {LIBRARY_NAME} (the other bindings are looked for "
        f"beside it). implementation='tf' computes the same loss with keras.ops.")


def _warn_if_gpu_without_cuda(path: Path, info: dict) -> None:
    """A CPU-only library on a GPU machine works, but every call copies off the GPU."""
    if not info.get("cuda") and _visible_gpus():
        warnings.warn(
            f"tfversky: a GPU is visible, but the fused op library {path} was built without "
            f"CUDA kernels, so the op runs on the CPU (tensors are copied off the GPU). Rebuild "
            f"it with nvcc on PATH: CMAKE_ARGS=-DTFVERSKY_CUDA=ON {REBUILD_COMMAND}; or use "
            f"implementation='tf'.", RuntimeWarning, stacklevel=3)


def _load_cached(cache, name, what, framework, open_library):
    """Finds the binding ``name`` for ``framework``, opens it once with ``open_library(path)``
    and caches the outcome (the opened library and its info, or the error)."""
    if cache.library is None and cache.error is None:
        try:
            path, info = find_library(search_paths(name), what=what, framework=framework)
            try:
                library = open_library(path)
            except (OSError, RuntimeError) as error:
                raise FusedOpUnavailableError(
                    f"{FRAMEWORKS[framework][1]} could not load {path}: {error}\nRebuild it "
                    f"with:\n  {REBUILD_COMMAND}") from error
            cache.library, cache.info = library, dict(info, path=str(path))
        except FusedOpUnavailableError as error:
            cache.error = error
    if cache.error is not None:
        raise cache.error
    return cache.library


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
            _warn_if_gpu_without_cuda(path, info)
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


# ---- the JAX and PyTorch bindings (csrc/jax, csrc/torch) ----

JAX_LIBRARY_NAME = "_tfversky_jax.so"
TORCH_LIBRARY_NAME = "_tfversky_torch.so"
_jax_cache = _Cache()
_torch_cache = _Cache()


def load_jax() -> tuple[ctypes.CDLL, dict]:
    """The JAX binding (XLA FFI handlers, opened with ctypes) and its build info, loaded once.

    Registering its handlers with JAX is ``tfversky._fused_jax``'s job.

    Raises:
        FusedOpUnavailableError: not built, or built for another jaxlib or tfversky.
    """
    library = _load_cached(_jax_cache, JAX_LIBRARY_NAME, "fused Tversky JAX binding", "jax",
                           lambda path: ctypes.CDLL(str(path)))
    return library, dict(_jax_cache.info)


def load_torch() -> dict:
    """Loads the PyTorch binding once (``torch.ops.load_library``: it registers the ops
    ``torch.ops.tfversky.*``); returns its build info.

    Raises:
        FusedOpUnavailableError: not built, or built for another PyTorch or tfversky.
    """
    def open_library(path):
        import torch

        torch.ops.load_library(str(path))
        return path

    _load_cached(_torch_cache, TORCH_LIBRARY_NAME, "fused Tversky PyTorch binding", "torch",
                 open_library)
    return dict(_torch_cache.info)
