"""The Tversky loss family (Salehi et al. 2017), pure TensorFlow/Keras.

Convention, as in the paper: **alpha weighs false positives, beta weighs false negatives.**
Per sample b and class c, over voxels i, with p the predicted probability and g the label:

    TP = sum_i p g      FP = sum_i p (1 - g)      FN = sum_i (1 - p) g
    T  = (TP + smooth_nr) / (TP + alpha FP + beta FN + smooth_dr)
    loss = (1 - T) ** gamma

alpha = beta = 0.5 is the Dice loss, alpha = beta = 1 the Tanimoto (Jaccard) loss, and
alpha + beta = 1 gives the F-beta family; beta > alpha trades precision for recall.

The computation has two halves, each with one home:

* ``confusion_sums``: the heavy part, one pass over the volume, giving TP, FP, FN per
  (sample, class). It has two implementations: the pure one here and the fused C++/CUDA op
  (``tfversky.fused``); ``implementation=`` picks one in ``_confusion_sums``.
* ``loss_from_sums``: the Tversky index, focal exponent, class selection and batch pooling,
  computed on the (batch, classes) sums. Both implementations share it, so every option
  means the same in both, and the gradient of the fused op only has to map dloss/dsums back
  onto the voxels. Per-class weights (``class_weights``) are applied here too.

``ce_weight`` adds a voxel-wise cross-entropy term (``cross_entropy``, pure TensorFlow, for
both implementations), as nnU-Net's Dice + CE and MONAI's ``DiceCELoss`` do:

    loss = (1 - T) ** gamma  +  ce_weight * CE
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from tfversky import _checks, arguments

_ACTIVATIONS = ("softmax", "sigmoid")
_IMPLEMENTATIONS = ("auto", "tf", "fused")

_DOC_OPTIONS = """
        alpha: Weight of false positives (precision side). Defaults to 0.3 (the paper's best).
        beta: Weight of false negatives (recall side); raise it to raise sensitivity.
            Defaults to 0.7.
        gamma: Focal exponent: loss = (1 - T) ** gamma. gamma < 1 emphasises samples that
            are nearly right, gamma > 1 hard ones. Defaults to 1.0 (plain Tversky).
        from_logits: Whether ``y_pred`` holds logits (the activation is then applied here,
            or fused into the op). Defaults to False (probabilities).
        activation: ``"softmax"`` (classes exclusive, channel 0 is background) or
            ``"sigmoid"`` (every channel an independent binary map). With probabilities it
            only decides how labels map onto channels. Defaults to ``"softmax"``.
        include_background: With softmax, whether class 0 enters the loss. The paper's Eq. 3
            scores the lesion class only. Ignored with sigmoid (every channel is scored).
            Defaults to False.
        smooth_nr: Added to the numerator. Defaults to 1e-5.
        smooth_dr: Added to the denominator; must be > 0 so that an empty class (no lesion
            in label and prediction) gives T = smooth_nr / smooth_dr instead of 0 / 0.
            Defaults to 1e-5.
        batch: False: one T per sample and class, then the mean over classes. True: TP, FP,
            FN pooled over the whole batch (nnU-Net's "batch dice"); every sample then
            carries the pooled loss, so the batch mean equals it. Defaults to False.
        ignore_index: Label value whose voxels are left out (e.g. outside the brain mask).
            Needs sparse labels. Defaults to None.
        implementation: ``"tf"`` (pure TensorFlow), ``"fused"`` (the C++/CUDA op; an error if
            it cannot be used) or ``"auto"`` (fused where available and supported, pure TF
            otherwise). Defaults to ``"auto"``.
        ce_weight: Weight of the cross-entropy term added to the Tversky loss (per sample,
            the mean over its voxels; all classes, background included, ignored voxels
            left out). Pure TensorFlow with either implementation: a second pass over the
            volume. 1.0 is nnU-Net's Dice + CE. Defaults to 0.0 (Tversky only).
        class_weights: One weight >= 0 per scored class (so C - 1 with softmax and no
            background), for the weighted mean of the per-class Tversky losses; they weigh
            the Tversky term only, not the cross-entropy. Defaults to None (equal weights)."""


def _validate_options(alpha, beta, gamma, activation, smooth_nr, smooth_dr, ignore_index,
                      implementation, ce_weight=0.0, class_weights=None):
    """Raises ValueError naming the argument, the value and the fix."""
    if not isinstance(ce_weight, (int, float, np.number)) or not np.isfinite(ce_weight) \
            or ce_weight < 0:
        raise ValueError(
            f"Invalid value for argument `ce_weight`: expected a finite number >= 0 (0 turns "
            f"the cross-entropy term off, 1 is nnU-Net's Dice + CE). Received: "
            f"ce_weight={ce_weight!r}")
    if class_weights is not None:
        weights = np.asarray(class_weights, dtype=object)
        numeric = weights.ndim == 1 and weights.size > 0 and all(
            isinstance(w, (int, float, np.number)) and np.isfinite(w) and w >= 0
            for w in weights)
        if not numeric or not sum(float(w) for w in weights) > 0:
            raise ValueError(
                f"Invalid value for argument `class_weights`: expected None or a list of "
                f"finite weights >= 0, one per scored class, not all 0. Received: "
                f"class_weights={class_weights!r}")
    arguments.tversky_weights(alpha, beta)
    arguments.positive_number(gamma, "gamma")
    if activation not in _ACTIVATIONS:
        raise ValueError(
            f"Invalid value for argument `activation`: expected one of {_ACTIVATIONS}. "
            f"Received: activation={activation!r}")
    if not np.isfinite(smooth_nr) or smooth_nr < 0:
        raise ValueError(
            f"Invalid value for argument `smooth_nr`: expected a finite number >= 0. "
            f"Received: smooth_nr={smooth_nr!r}")
    if not np.isfinite(smooth_dr) or smooth_dr <= 0:
        raise ValueError(
            f"Invalid value for argument `smooth_dr`: expected a finite number > 0 (with 0, a "
            f"class absent from both label and prediction gives 0/0 = NaN). "
            f"Received: smooth_dr={smooth_dr!r}. The default is 1e-5.")
    if ignore_index is not None and not isinstance(ignore_index, (int, np.integer)):
        raise ValueError(
            f"Invalid value for argument `ignore_index`: expected None or an integer label "
            f"value. Received: ignore_index={ignore_index!r}")
    if implementation not in _IMPLEMENTATIONS:
        raise ValueError(
            f"Invalid value for argument `implementation`: expected one of {_IMPLEMENTATIONS}. "
            f"Received: implementation={implementation!r}")


def compute_dtype(dtype) -> str:
    """The accumulation and output dtype: float64 stays, everything else is float32.

    float16/bfloat16 sums over a volume overflow or lose all precision (2^18 voxels of
    probability ~1 exceed float16's maximum 65504), so they accumulate in float32.
    """
    return "float64" if keras.backend.standardize_dtype(dtype) == "float64" else "float32"


def probabilities(y_pred, from_logits: bool, activation: str):
    """Class probabilities in the compute dtype, from probabilities or logits."""
    y_pred = ops.cast(y_pred, compute_dtype(y_pred.dtype))
    if not from_logits:
        return y_pred
    if activation == "softmax":
        return ops.softmax(y_pred, axis=-1)
    return ops.sigmoid(y_pred)


def pure_confusion_sums(labels, y_pred, *, sparse: bool, from_logits: bool, activation: str,
                        ignore_index):
    """TP, FP, FN per sample and class: three tensors of shape (batch, classes).

    Args:
        labels: Standardised labels (see ``_checks.standardize_labels``): sparse class ids of
            shape (B, *spatial) or dense one-hot/soft targets of shape (B, *spatial, C).
        y_pred: (B, *spatial, C) probabilities or logits.
        sparse: Whether ``labels`` are class ids.
    """
    probs = probabilities(y_pred, from_logits, activation)
    targets, weight = _targets(labels, probs, sparse=sparse, ignore_index=ignore_index)
    if weight is not None:
        targets = targets * weight
        probs = probs * weight
    tp = _sum_over_space(probs * targets)
    fp = _sum_over_space(probs * (1 - targets))
    fn = _sum_over_space((1 - probs) * targets)
    return tp, fp, fn


def _targets(labels, probs, *, sparse: bool, ignore_index):
    """(targets (B, *spatial, C) in probs' dtype, valid-voxel weight (B, *spatial, 1) or None)."""
    dtype = probs.dtype
    if not sparse:
        return ops.cast(labels, dtype), None
    valid = None if ignore_index is None else ops.not_equal(labels, ignore_index)
    ids = labels if valid is None else ops.where(valid, labels, ops.zeros_like(labels))
    if probs.shape[-1] == 1:  # sigmoid, binary: the label is the target itself
        targets = ops.expand_dims(ops.cast(ids, dtype), -1)
    else:
        targets = ops.one_hot(ops.cast(ids, "int32"), probs.shape[-1], dtype=dtype)
    weight = None if valid is None else ops.expand_dims(ops.cast(valid, dtype), -1)
    return targets, weight


_LOG_EPSILON = 1e-7  # probabilities are clipped to [1e-7, 1] before the log (Keras's epsilon)


def cross_entropy(labels, y_pred, *, sparse: bool, from_logits: bool, activation: str,
                  ignore_index):
    """Per-sample voxel-mean cross-entropy, shape (batch,): the ``ce_weight`` term.

    Softmax: CE_i = -sum_c g_ic log p_ic. Sigmoid: the binary cross-entropy of every channel,
    averaged over channels. Voxels labelled ``ignore_index`` are left out of the mean. From
    logits it uses log-softmax / log-sigmoid (exact for any logit); from probabilities it
    clips them to [1e-7, 1] first.

    Args:
        labels, y_pred, sparse: as in ``pure_confusion_sums``.
        from_logits, activation, ignore_index: as in ``tversky_loss``.

    Example:

    >>> import numpy as np
    >>> probs = np.array([[[0.8, 0.2], [0.4, 0.6]]])   # (B=1, 2 voxels, C=2)
    >>> ce = cross_entropy(np.array([[0, 1]]), probs, sparse=True, from_logits=False,
    ...                    activation="softmax", ignore_index=None)
    >>> round(float(ce[0]), 4), round(float(-(np.log(0.8) + np.log(0.6)) / 2), 4)
    (0.367, 0.367)
    """
    y_pred = ops.cast(y_pred, compute_dtype(y_pred.dtype))
    targets, weight = _targets(labels, y_pred, sparse=sparse, ignore_index=ignore_index)
    if activation == "softmax":
        log_p = (ops.log_softmax(y_pred, axis=-1) if from_logits
                 else ops.log(ops.clip(y_pred, _LOG_EPSILON, 1.0)))
        voxel = -ops.sum(targets * log_p, axis=-1, keepdims=True)
    else:
        if from_logits:
            log_p, log_q = ops.log_sigmoid(y_pred), ops.log_sigmoid(-y_pred)
        else:
            log_p = ops.log(ops.clip(y_pred, _LOG_EPSILON, 1.0))
            log_q = ops.log(ops.clip(1 - y_pred, _LOG_EPSILON, 1.0))
        voxel = -ops.mean(targets * log_p + (1 - targets) * log_q, axis=-1, keepdims=True)
    if weight is None:
        count = float(np.prod(y_pred.shape[1:-1])) if None not in y_pred.shape[1:-1] else \
            ops.cast(ops.prod(ops.shape(y_pred)[1:-1]), voxel.dtype)
        return _sum_over_space(voxel)[:, 0] / count
    total = _sum_over_space(voxel * weight)[:, 0]
    return total / ops.maximum(_sum_over_space(weight)[:, 0], 1.0)


def _sum_over_space(x):
    """Sum over the spatial axes, one axis at a time from the innermost.

    A single reduce_sum over (D, H, W) accumulates sequentially in TensorFlow: its float32
    relative error reaches 4e-3 on a 128x224x256 volume. Axis by axis, no running sum is
    longer than one axis, the error stays near 1e-6, and it is faster as well.
    """
    for axis in range(len(x.shape) - 2, 0, -1):
        x = ops.sum(x, axis=axis)
    return x


def loss_from_sums(tp, fp, fn, *, alpha, beta, gamma, smooth_nr, smooth_dr, batch,
                   scored_classes, class_weights=None):
    """Per-sample focal Tversky loss, shape (batch,), from (batch, classes) sums.

    ``scored_classes`` is a Python slice over the class axis (background excluded or not).
    With ``batch=True`` the sums are pooled over the batch first and every sample gets the
    pooled loss. ``class_weights`` (one per scored class) turn the mean over classes into
    the weighted mean sum_c w_c L_c / sum_c w_c.

    Raises:
        ValueError: ``class_weights`` of another length than the scored classes.
    """
    tp, fp, fn = (s[:, scored_classes] for s in (tp, fp, fn))
    if class_weights is not None and tp.shape[-1] is not None \
            and len(class_weights) != tp.shape[-1]:
        raise ValueError(
            f"Invalid value for argument `class_weights`: expected {tp.shape[-1]} weights, one "
            f"per scored class (with softmax, class 0 is scored only with "
            f"include_background=True). Received: class_weights={list(class_weights)!r}")
    batch_size = ops.shape(tp)[0]
    if batch:
        tp, fp, fn = (ops.sum(s, axis=0, keepdims=True) for s in (tp, fp, fn))
    index = (tp + smooth_nr) / (tp + alpha * fp + beta * fn + smooth_dr)
    # T can exceed 1 only by rounding or smooth_nr > smooth_dr; clamp so (1 - T)**gamma is real.
    distance = ops.maximum(1 - index, 0)
    if gamma != 1:
        # x**gamma has an infinite slope at 0 for gamma < 1: route x == 0 around the power so
        # both the value (0) and the gradient (0, a subgradient) stay finite.
        positive = distance > 0
        safe = ops.where(positive, distance, ops.ones_like(distance))
        distance = ops.where(positive, ops.power(safe, gamma), ops.zeros_like(distance))
    if class_weights is None:
        per_sample = ops.mean(distance, axis=-1)
    else:
        weights = ops.convert_to_tensor(np.asarray(class_weights, np.float64), distance.dtype)
        per_sample = ops.sum(distance * weights, axis=-1) / ops.sum(weights)
    if batch:
        per_sample = ops.broadcast_to(per_sample, (batch_size,))
    return per_sample


def _scored_classes(activation: str, include_background: bool) -> slice:
    if activation == "softmax" and not include_background:
        return slice(1, None)
    return slice(None)


def _confusion_sums(labels, y_pred, *, sparse, implementation, options):
    """The one dispatch point between the pure sums and the fused op."""
    from tfversky import fused  # local: fused imports this module

    use_fused = fused.should_use(implementation, labels, y_pred, sparse=sparse, options=options)
    compute = fused.confusion_sums if use_fused else pure_confusion_sums
    return compute(labels, y_pred, sparse=sparse, **options)


def tversky_loss(y_true, y_pred, alpha=0.3, beta=0.7, gamma=1.0, from_logits=False,
                 activation="softmax", include_background=False, smooth_nr=1e-5,
                 smooth_dr=1e-5, batch=False, ignore_index=None, implementation="auto",
                 ce_weight=0.0, class_weights=None):
    """Per-sample (focal) Tversky loss of Salehi et al. (2017).

    alpha weighs false positives, beta weighs false negatives, as in the paper:

        T = (TP + smooth_nr) / (TP + alpha * FP + beta * FN + smooth_dr),   loss = (1 - T)^gamma

    with TP, FP, FN the soft counts per sample and class (see the module docstring). The loss
    is averaged over the scored classes. A sample without any lesion gets, with the default
    smoothing, a loss near 0 when it predicts no lesion and near 1 when it does: finite, and
    rewarding an empty prediction. ``ce_weight`` adds ``ce_weight * CE`` per sample.

    Args:
        y_true: Labels, channels-last. Sparse class ids of shape (B, D, H, W) or
            (B, D, H, W, 1) (any integer dtype, or floats holding integers), or one-hot/soft
            targets of shape (B, D, H, W, C). Any number >= 1 of spatial dims works.
        y_pred: (B, D, H, W, C) probabilities (or logits with ``from_logits=True``).
            float16 and bfloat16 accumulate in float32.
{options}

    Returns:
        A float32 tensor of shape (B,) (float64 for float64 inputs).

    Raises:
        ValueError: on an invalid option, a shape mismatch, labels outside [0, C), or
            NaN/Inf in the inputs (in eager mode). Inside a ``tf.function`` the data checks
            raise ``tf.errors.InvalidArgumentError`` instead; under XLA they are skipped.

    Example:

    >>> import numpy as np, tfversky
    >>> labels = np.zeros((1, 4, 4, 4), "int32"); labels[0, 1:3, 1:3, 1:3] = 1
    >>> probs = np.stack([1 - 0.8 * labels, 0.8 * labels], axis=-1).astype("float32")
    >>> loss = tfversky.tversky_loss(labels, probs, alpha=0.3, beta=0.7)
    >>> [round(float(v), 4) for v in loss]   # TP=6.4, FP=0, FN=1.6: 1 - 6.4 / 7.52
    [0.1489]

    Reference:
        S. S. M. Salehi, D. Erdogmus, A. Gholipour. Tversky loss function for image
        segmentation using 3D fully convolutional deep networks. MLMI (MICCAI) 2017.
        https://arxiv.org/abs/1706.05721
    """
    _validate_options(alpha, beta, gamma, activation, smooth_nr, smooth_dr, ignore_index,
                      implementation, ce_weight, class_weights)
    y_pred = ops.convert_to_tensor(y_pred)
    y_true = ops.convert_to_tensor(y_true)
    _checks.check_prediction(y_pred, from_logits=from_logits, activation=activation)
    labels, sparse = _checks.standardize_labels(y_true, y_pred, activation=activation,
                                                ignore_index=ignore_index)
    options = dict(from_logits=from_logits, activation=activation, ignore_index=ignore_index)
    tp, fp, fn = _confusion_sums(labels, y_pred, sparse=sparse, implementation=implementation,
                                 options=options)
    tp, fp, fn = _checks.check_finite_sums(tp, fp, fn)
    loss = loss_from_sums(
        tp, fp, fn, alpha=alpha, beta=beta, gamma=gamma, smooth_nr=smooth_nr,
        smooth_dr=smooth_dr, batch=batch,
        scored_classes=_scored_classes(activation, include_background),
        class_weights=class_weights)
    if ce_weight:
        loss = loss + ce_weight * cross_entropy(labels, y_pred, sparse=sparse, **options)
    return loss


tversky_loss.__doc__ = tversky_loss.__doc__.format(options=_DOC_OPTIONS)


@keras.saving.register_keras_serializable(package="tfversky")
class TverskyLoss(keras.losses.Loss):
    """Keras loss wrapper of ``tversky_loss``: alpha weighs FP, beta weighs FN (the paper).

    Args:
{options}
        reduction: Keras reduction over the per-sample losses. Defaults to
            ``"sum_over_batch_size"`` (the mean).
        name: Defaults to ``"tversky_loss"``.

    Example:

    >>> import keras, tfversky
    >>> model = keras.Sequential([keras.Input((8, 8, 8, 1)),
    ...                           keras.layers.Conv3D(2, 3, padding="same", activation="softmax")])
    >>> model.compile(optimizer="adam", loss=tfversky.TverskyLoss(0.3, 0.7))

    Reference:
        Salehi, Erdogmus, Gholipour, MLMI 2017, https://arxiv.org/abs/1706.05721
    """

    def __init__(self, alpha=0.3, beta=0.7, gamma=1.0, from_logits=False, activation="softmax",
                 include_background=False, smooth_nr=1e-5, smooth_dr=1e-5, batch=False,
                 ignore_index=None, implementation="auto", ce_weight=0.0, class_weights=None,
                 reduction="sum_over_batch_size", name="tversky_loss", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        _validate_options(alpha, beta, gamma, activation, smooth_nr, smooth_dr, ignore_index,
                          implementation, ce_weight, class_weights)
        self.alpha, self.beta, self.gamma = float(alpha), float(beta), float(gamma)
        self.from_logits = bool(from_logits)
        self.activation = activation
        self.include_background = bool(include_background)
        self.smooth_nr, self.smooth_dr = float(smooth_nr), float(smooth_dr)
        self.batch = bool(batch)
        self.ignore_index = None if ignore_index is None else int(ignore_index)
        self.implementation = implementation
        self.ce_weight = float(ce_weight)
        # A list, not a tuple: what a JSON config gives back, so a round trip compares equal.
        self.class_weights = None if class_weights is None else [float(w) for w in class_weights]

    def _loss_options(self):
        return dict(alpha=self.alpha, beta=self.beta, gamma=self.gamma,
                    from_logits=self.from_logits, activation=self.activation,
                    include_background=self.include_background, smooth_nr=self.smooth_nr,
                    smooth_dr=self.smooth_dr, batch=self.batch, ignore_index=self.ignore_index,
                    implementation=self.implementation, ce_weight=self.ce_weight,
                    class_weights=self.class_weights)

    def call(self, y_true, y_pred):
        return tversky_loss(y_true, y_pred, **self._loss_options())

    def get_config(self):
        return {"name": self.name, "reduction": self.reduction, **self._loss_options()}


TverskyLoss.__doc__ = TverskyLoss.__doc__.format(options=_DOC_OPTIONS)
