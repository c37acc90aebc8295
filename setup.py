"""Build script: setuptools for the Python packages, CMake for the fused op (CMakeLists.txt).

    pip install -r requirements.txt                 # TensorFlow first: the op compiles against it
    pip install --no-build-isolation -e .           # or without -e

The build_ext below configures, builds and installs the CMake project into the package
directory: the TensorFlow op library ``tfversky/_lib/_tfversky_ops.so`` (and its XLA
lowering), the JAX and PyTorch bindings ``tfversky/_lib/_tfversky_jax.so`` and
``_tfversky_torch.so`` (each only where its framework is importable by the build) and the
pybind11 module ``tfversky/_tfversky_kernels``.

Installing always succeeds: the pure keras.ops loss needs no compiled code. Where the op
cannot be built (no framework in the build environment, as under pip's build isolation
or an sdist install; no C++ compiler; a failed build) the package installs without it, and
``tfversky/_lib/NOT_BUILT.txt`` records why; the loader then names that reason and the
command that builds the op. Environment:

* ``TFVERSKY_CUDA``: unset, the CUDA kernels are built where nvcc and an NVIDIA driver are
  found (a machine that can run them); ``1`` builds them wherever nvcc is (fails without
  it: CI's compile check, a build for another machine); ``0`` never.
* ``CMAKE_ARGS``: extra CMake arguments (after the above), e.g.
  ``-DCMAKE_CUDA_ARCHITECTURES=90``.
* ``TFVERSKY_PORTABLE=1``: build for any x86-64 CPU (no ``-march=native``), for environments
  that move between machines.
* ``TFVERSKY_REQUIRE_OP=1``: fail the install when the op cannot be built (``make`` sets it).
* ``CMAKE_BUILD_PARALLEL_LEVEL``: parallel compile jobs (default: every core).
"""

import importlib.util
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
NOT_BUILT_NOTE = Path("tfversky") / "_lib" / "NOT_BUILT.txt"  # read by tfversky/_loader.py
BUILD_COMMAND = "pip install --no-build-isolation -e ."


def _tool(name):
    """A build tool from this Python's environment (pip's cmake, ninja), else from PATH."""
    return shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)


def _flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "on", "true", "yes")


def _cuda_option():
    """CMake's TFVERSKY_CUDA from the environment's: AUTO unless set (1 is ON, 0 is OFF)."""
    value = os.environ.get("TFVERSKY_CUDA", "").strip().lower()
    if not value or value == "auto":
        return "AUTO"
    return "ON" if _flag("TFVERSKY_CUDA") else "OFF"


class OpNotBuilt(Exception):
    """Why the op was not built, in one sentence for NOT_BUILT.txt."""


class CMakeBuild(build_ext):
    """Builds every CMake target and installs them next to the Python files, or records why not."""

    def build_extension(self, ext):
        # build_ext.run builds into build_lib (inplace is off during run); editable installs
        # then copy the outputs into the source tree: see copy_extensions_to_source.
        package_parent = Path(self.get_ext_fullpath(ext.name)).resolve().parent.parent
        note = package_parent / NOT_BUILT_NOTE
        note.unlink(missing_ok=True)
        try:
            self._cmake_outputs = self._cmake(package_parent)
        except OpNotBuilt as reason:
            if _flag("TFVERSKY_REQUIRE_OP"):
                raise RuntimeError(f"tfversky: the fused op was not built: {reason}") from None
            print(f"\ntfversky: installing WITHOUT the fused op: {reason}\n  The pure keras.ops "
                  f"loss works. To build the op, install TensorFlow, JAX or PyTorch and a C++ "
                  f"compiler, then, from the source tree:\n    {BUILD_COMMAND}\n", file=sys.stderr)
            note.parent.mkdir(parents=True, exist_ok=True)
            note.write_text(f"{reason}\n")
            self._cmake_outputs = [(package_parent, note)]

    def _cmake(self, package_parent):
        """Configures, builds and installs; the installed files as (prefix, path) pairs."""
        # One binding per framework the build's Python has: each is built only there.
        frameworks = {name: importlib.util.find_spec(name) is not None
                      for name in ("tensorflow", "jax", "torch")}
        if not any(frameworks.values()):
            raise OpNotBuilt(f"none of TensorFlow, JAX and PyTorch was importable by the "
                             f"build's Python ({sys.executable}; pip's build isolation, and "
                             f"installs from an sdist, build without them)")
        cmake = _tool("cmake")
        if cmake is None:
            raise OpNotBuilt("CMake was not found (pip install cmake)")
        build_temp = Path(self.build_temp).resolve() / "cmake"
        build_temp.mkdir(parents=True, exist_ok=True)
        configure = [cmake, "-S", str(ROOT), "-B", str(build_temp),
                     f"-DPython_EXECUTABLE={sys.executable}",
                     f"-DCMAKE_BUILD_TYPE={'Debug' if self.debug else 'Release'}",
                     # Importable frameworks (checked above): fail loudly if CMake disagrees.
                     f"-DTFVERSKY_TF_OP={'ON' if frameworks['tensorflow'] else 'OFF'}",
                     f"-DTFVERSKY_JAX={'ON' if frameworks['jax'] else 'OFF'}",
                     f"-DTFVERSKY_TORCH={'ON' if frameworks['torch'] else 'OFF'}",
                     f"-DTFVERSKY_PORTABLE={'ON' if _flag('TFVERSKY_PORTABLE') else 'OFF'}",
                     f"-DTFVERSKY_CUDA={_cuda_option()}"]
        ninja = _tool("ninja")
        if ninja and "CMAKE_GENERATOR" not in os.environ and not (build_temp / "CMakeCache.txt").exists():
            configure += ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}"]
        configure += shlex.split(os.environ.get("CMAKE_ARGS", ""))
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL") or str(os.cpu_count() or 1)
        self._run(configure, "configuring")
        self._run([cmake, "--build", str(build_temp), "--parallel", jobs], "compiling")
        self._run([cmake, "--install", str(build_temp), "--prefix", str(package_parent)],
                  "installing")
        manifest = (build_temp / "install_manifest.txt").read_text().split()
        return [(package_parent, Path(path)) for path in manifest]

    @staticmethod
    def _run(command, step):
        """Runs a CMake step, its output streamed to stderr; a failure becomes OpNotBuilt."""
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True)
        output = []
        for line in process.stdout:
            print(line, end="", file=sys.stderr)
            output.append(line)
        output = "".join(output)
        if process.wait() != 0:
            compiler = os.environ.get("CXX", "c++")
            hint = (f" (no working C++ compiler: CXX={compiler})"
                    if "CMAKE_CXX_COMPILER" in output
                    or "compile a simple test program" in output else "")
            raise OpNotBuilt(f"the CMake build failed while {step}{hint}; its log is in the "
                             f"pip output (pip install -v)")

    def copy_extensions_to_source(self):
        """Editable installs: copy every file CMake installed (or the note), not only the module."""
        source_parent = Path(self.get_finalized_command("build_py").get_package_dir("tfversky")).parent
        (source_parent / NOT_BUILT_NOTE).unlink(missing_ok=True)
        for prefix, output in self._cmake_outputs:
            target = source_parent / output.relative_to(prefix)
            self.mkpath(str(target.parent))
            self.copy_file(str(output), str(target), level=self.verbose)

    def get_outputs(self):
        installed = [str(output) for _, output in getattr(self, "_cmake_outputs", [])]
        return sorted({*super().get_outputs(), *installed})


setup(
    ext_modules=[Extension("tfversky._tfversky_kernels", sources=[])],
    cmdclass={"build_ext": CMakeBuild},
)
