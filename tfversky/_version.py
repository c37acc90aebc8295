"""Single source of the package version (read by setup.py and passed to the C++ build)."""

__version__ = "0.1.0"
