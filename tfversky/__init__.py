"""tfversky: the Tversky loss (Salehi et al. 2017) for 3D segmentation in TensorFlow/Keras."""

from tfversky._version import __version__

__all__ = ["__version__"]
