"""Build script: setuptools for the Python packages, CMake for the fused op (CMakeLists.txt).

    pip install -r requirements.txt                 # TensorFlow first: the op compiles against it
    pip install --no-build-isolation -e .           # or without -e

The build_ext below configures, builds and installs the CMake project into the package
directory: the TensorFlow op library ``tfversky/_lib/_tfversky_ops.so`` and the pybind11
module ``tfversky/_tfversky_kernels``. Environment:

* ``CMAKE_ARGS``: extra CMake arguments, e.g. ``-DTFVERSKY_CUDA=OFF`` (skip the CUDA
  kernels), ``-DTFVERSKY_CUDA=ON`` (fail without nvcc), ``-DTFVERSKY_PORTABLE=ON`` (no
  ``-march=native``), ``-DCMAKE_CUDA_ARCHITECTURES=90``.
* ``CMAKE_BUILD_PARALLEL_LEVEL``: parallel compile jobs (default: every core).
"""

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def _tool(name):
    """A build tool from this Python's environment (pip's cmake, ninja), else from PATH."""
    return shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)


class CMakeBuild(build_ext):
    """Builds every CMake target and installs them next to the Python files."""

    def build_extension(self, ext):
        # build_ext.run builds into build_lib (inplace is off during run); editable installs
        # then copy the outputs into the source tree: see copy_extensions_to_source.
        package_parent = Path(self.get_ext_fullpath(ext.name)).resolve().parent.parent
        build_temp = Path(self.build_temp).resolve() / "cmake"
        build_temp.mkdir(parents=True, exist_ok=True)
        cmake = _tool("cmake")
        if cmake is None:
            raise RuntimeError("CMake is needed to build the fused op: pip install cmake")
        configure = [cmake, "-S", str(ROOT), "-B", str(build_temp),
                     f"-DPython_EXECUTABLE={sys.executable}",
                     f"-DCMAKE_BUILD_TYPE={'Debug' if self.debug else 'Release'}",
                     # The op is the point of this build: fail loudly without TensorFlow.
                     "-DTFVERSKY_TF_OP=ON"]
        ninja = _tool("ninja")
        if ninja and "CMAKE_GENERATOR" not in os.environ and not (build_temp / "CMakeCache.txt").exists():
            configure += ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}"]
        configure += shlex.split(os.environ.get("CMAKE_ARGS", ""))
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL") or str(os.cpu_count() or 1)
        subprocess.run(configure, check=True)
        subprocess.run([cmake, "--build", str(build_temp), "--parallel", jobs], check=True)
        subprocess.run([cmake, "--install", str(build_temp), "--prefix", str(package_parent)],
                       check=True)
        manifest = (build_temp / "install_manifest.txt").read_text().split()
        self._cmake_outputs = [(package_parent, Path(path)) for path in manifest]

    def copy_extensions_to_source(self):
        """Editable installs: copy every file CMake installed, not only the module."""
        source_parent = Path(self.get_finalized_command("build_py").get_package_dir("tfversky")).parent
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
