"""tfversky: the Tversky loss (Salehi et al. 2017) for 3D segmentation in Keras 3.

alpha weighs false positives, beta weighs false negatives, as in the paper::

    model.compile(optimizer="adam", loss=tfversky.TverskyLoss(alpha=0.3, beta=0.7))

Runs on Keras's TensorFlow, JAX and PyTorch backends (``KERAS_BACKEND``); only the dataset,
its ``tf.data`` pipeline and ``tfversky train`` need TensorFlow, imported when they are used.
"""

from tfversky import _extras

try:
    import keras  # noqa: F401  (its backend: KERAS_BACKEND, else ~/.keras/keras.json, else tensorflow)
except ModuleNotFoundError as error:
    _backend = (error.name or "").split(".")[0]
    if _backend not in ("tensorflow", "jax", "torch"):
        raise
    raise _extras.MissingExtraError(
        f"Keras's backend is {_backend} (KERAS_BACKEND, else ~/.keras/keras.json, else "
        f"tensorflow), which is not installed: pip install 'tfversky[{_extras.EXTRAS[_backend]}]', "
        f"or set KERAS_BACKEND to an installed backend (tensorflow, jax or torch).",
        name=_backend) from error

from tfversky import metrics, plan  # noqa: E402  (plan registers PlannedModel with Keras)
from tfversky._version import __version__  # noqa: E402
from tfversky.losses import TverskyLoss, tversky_loss  # noqa: E402

__all__ = ["__version__", "TverskyLoss", "tversky_loss", "metrics", "plan"]
