"""tfversky: the Tversky loss (Salehi et al. 2017) for 3D segmentation in TensorFlow/Keras.

alpha weighs false positives, beta weighs false negatives, as in the paper::

    model.compile(optimizer="adam", loss=tfversky.TverskyLoss(alpha=0.3, beta=0.7))
"""

from tfversky import metrics, plan  # plan registers PlannedModel with Keras
from tfversky._version import __version__
from tfversky.losses import TverskyLoss, tversky_loss

__all__ = ["__version__", "TverskyLoss", "tversky_loss", "metrics", "plan"]
