"""What validation may choose, and when it has enough data to choose on: the one home of
these rules for ``tfversky.training`` (the epoch), ``tfversky.operating_point`` (threshold
and minimum lesion volume) and ``tfversky train``'s flags.

Plain Python: ``tfversky train --help`` reads it without TensorFlow, which a JAX or PyTorch
install of tfversky does not have.
"""

from __future__ import annotations

# Which epoch becomes model.keras: the last one trained, the best validated one, or the best
# of the validation curve smoothed by an exponential moving average (training.select_epochs).
SELECTION_RULES = ("last", "best", "ema")
# What --select auto takes where validation is enough to choose on: on an unseen centre,
# best tested 3 DSC points above the last epoch (benchmarks/RESULTS.md, issue 22).
AUTO_SELECT = "best"
EMA_ALPHA = 0.9  # nnU-Net's weight of the running average of its validation pseudo-Dice
# The criteria an operating point can maximise on validation (operating_point.choose), and
# the default: none, as chosen on 2 validation subjects it did not carry over (RESULTS.md).
OPERATING_POINT_CRITERIA = ("dsc", "f2", "lesion_f1")
DEFAULT_OPERATING_POINT = "none"
# Enough validation to choose on (an epoch, an operating point): fewer subjects is one
# brain's noise; 20 lesions put a lesion-wise rate's standard error at 0.11 or less.
MIN_VALIDATION_SUBJECTS = 2
MIN_VALIDATION_LESIONS = 20


def validation_shortfall(subjects: int, lesions: int) -> str:
    """Why validation data are too few to choose on (``MIN_VALIDATION_SUBJECTS`` subjects
    and ``MIN_VALIDATION_LESIONS`` lesions), or "" when they are enough.

    Example:

    >>> validation_shortfall(1, 40), validation_shortfall(3, 40)
    ('1 subject(s) (fewer than 2)', '')
    """
    short = []
    if subjects < MIN_VALIDATION_SUBJECTS:
        short.append(f"{subjects} subject(s) (fewer than {MIN_VALIDATION_SUBJECTS})")
    if lesions < MIN_VALIDATION_LESIONS:
        short.append(f"{lesions} lesion(s) (fewer than {MIN_VALIDATION_LESIONS})")
    return ", ".join(short)
