"""Pure-TF Tversky loss: values, conventions, gradients, dtypes, Keras integration, errors."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfversky
from tfversky import fused, losses


def reference_loss(labels, probs, alpha, beta, gamma=1.0, smooth_nr=1e-5, smooth_dr=1e-5,
                   classes=slice(1, None)):
    """float64 NumPy reference from docs/losses.md, "The math" (sparse labels, per-sample)."""
    probs = np.asarray(probs, np.float64)
    onehot = np.eye(probs.shape[-1])[labels]
    axes = tuple(range(1, probs.ndim - 1))
    tp = (probs * onehot).sum(axes)
    fp = (probs * (1 - onehot)).sum(axes)
    fn = ((1 - probs) * onehot).sum(axes)
    t = (tp + smooth_nr) / (tp + alpha * fp + beta * fn + smooth_dr)
    return (np.maximum(1 - t, 0) ** gamma)[:, classes].mean(-1)


def random_case(rng, shape=(2, 5, 6, 7), classes=2, lesion=0.2):
    labels = (rng.random(shape) < lesion).astype(np.int32)
    if classes > 2:
        labels = rng.integers(0, classes, shape).astype(np.int32)
    logits = rng.normal(size=shape + (classes,)) + 2.0 * np.eye(classes)[labels]
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    return labels, logits.astype(np.float32), probs.astype(np.float32)


# Hand-computed: one sample, 4 voxels, lesion probabilities p and labels g.
# TP = sum p g, FP = sum p (1 - g), FN = sum (1 - p) g.
HAND_CASES = [
    # p, g, alpha, beta, expected loss (no smoothing)
    ([0.9, 0.8, 0.1, 0.0], [1, 1, 0, 0], 0.5, 0.5, 1 - 1.7 / (1.7 + 0.5 * 0.1 + 0.5 * 0.3)),
    ([0.9, 0.8, 0.1, 0.0], [1, 1, 0, 0], 0.3, 0.7, 1 - 1.7 / (1.7 + 0.3 * 0.1 + 0.7 * 0.3)),
    ([0.9, 0.8, 0.1, 0.0], [1, 1, 0, 0], 1.0, 1.0, 1 - 1.7 / (1.7 + 0.1 + 0.3)),
    ([0.5, 0.5, 0.5, 0.5], [1, 0, 0, 0], 0.3, 0.7, 1 - 0.5 / (0.5 + 0.3 * 1.5 + 0.7 * 0.5)),
    ([1.0, 1.0, 0.0, 0.0], [1, 1, 0, 0], 0.3, 0.7, 0.0),
    ([0.0, 0.0, 1.0, 1.0], [1, 1, 0, 0], 0.3, 0.7, 1.0),
]


@pytest.mark.parametrize("p, g, alpha, beta, expected", HAND_CASES)
def test_hand_computed(p, g, alpha, beta, expected):
    p = np.array(p, np.float64)
    probs = np.stack([1 - p, p], -1)[None]  # (1, 4, 2): one spatial dim
    loss = tfversky.tversky_loss(np.array([g]), probs, alpha, beta, smooth_nr=0,
                                 smooth_dr=1e-12)
    np.testing.assert_allclose(loss.numpy(), [expected], rtol=1e-9, atol=1e-9)


def test_matches_reference_on_random_3d(rng):
    labels, _, probs = random_case(rng, shape=(2, 9, 10, 11), classes=3)
    for kwargs in [dict(), dict(gamma=0.75), dict(include_background=True)]:
        classes = slice(None) if kwargs.get("include_background") else slice(1, None)
        expected = reference_loss(labels, probs, 0.3, 0.7, gamma=kwargs.get("gamma", 1.0),
                                  classes=classes)
        got = tfversky.tversky_loss(labels, probs, 0.3, 0.7, **kwargs)
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5)


def test_dice_and_tanimoto_special_cases(rng):
    labels, _, probs = random_case(rng)
    p, g = probs[..., 1].astype(np.float64), labels.astype(np.float64)
    axes = (1, 2, 3)
    tp, fp, fn = (p * g).sum(axes), (p * (1 - g)).sum(axes), ((1 - p) * g).sum(axes)
    dice = 2 * tp / (2 * tp + fp + fn)
    tanimoto = tp / (tp + fp + fn)
    exact = dict(smooth_nr=0, smooth_dr=1e-12)
    np.testing.assert_allclose(tfversky.tversky_loss(labels, probs, 0.5, 0.5, **exact), 1 - dice,
                               rtol=1e-5)
    np.testing.assert_allclose(tfversky.tversky_loss(labels, probs, 1.0, 1.0, **exact),
                               1 - tanimoto, rtol=1e-5)


def test_alpha_weighs_false_positives_beta_false_negatives():
    # Only false positives: the loss grows with alpha and ignores beta (paper convention).
    probs = np.array([[[0.0, 1.0], [0.0, 1.0], [1.0, 0.0]]], np.float32)[:, :, None]  # (1,3,1,2)
    labels = np.array([[1, 0, 0]])[:, :, None]
    fp_only = [tfversky.tversky_loss(labels, probs, a, b).numpy()[0]
               for a, b in [(0.2, 0.8), (0.8, 0.2), (0.8, 0.9)]]
    assert fp_only[1] > fp_only[0]
    assert fp_only[2] == pytest.approx(fp_only[1])


def test_sparse_squeezable_and_onehot_labels_agree(rng):
    labels, _, probs = random_case(rng, classes=3)
    sparse = tfversky.tversky_loss(labels, probs)
    with_axis = tfversky.tversky_loss(labels[..., None], probs)
    onehot = tfversky.tversky_loss(np.eye(3, dtype=np.float32)[labels], probs)
    as_float = tfversky.tversky_loss(labels.astype(np.float32), probs)  # how Keras passes them
    for other in (with_axis, onehot, as_float):
        np.testing.assert_allclose(other.numpy(), sparse.numpy(), rtol=1e-6)


def test_from_logits_equals_activation_then_loss(rng):
    labels, logits, probs = random_case(rng)
    np.testing.assert_allclose(tfversky.tversky_loss(labels, logits, from_logits=True),
                               tfversky.tversky_loss(labels, probs), rtol=1e-5)
    sigmoid = 1 / (1 + np.exp(-logits[..., 1:]))
    np.testing.assert_allclose(
        tfversky.tversky_loss(labels, logits[..., 1:], from_logits=True, activation="sigmoid"),
        tfversky.tversky_loss(labels, sigmoid, activation="sigmoid"), rtol=1e-5)


def test_sigmoid_single_channel_equals_softmax_lesion_class(rng):
    labels, _, probs = random_case(rng)
    np.testing.assert_allclose(
        tfversky.tversky_loss(labels, probs[..., 1:], activation="sigmoid"),
        tfversky.tversky_loss(labels, probs), rtol=1e-6)


def test_batch_pooling(rng):
    labels, _, probs = random_case(rng, shape=(1, 6, 6, 6))
    np.testing.assert_allclose(tfversky.tversky_loss(labels, probs, batch=True),
                               tfversky.tversky_loss(labels, probs), rtol=1e-6)
    labels, _, probs = random_case(rng, shape=(3, 6, 6, 6))
    pooled = tfversky.tversky_loss(labels, probs, batch=True).numpy()
    assert pooled.shape == (3,) and np.all(pooled == pooled[0])
    flat = reference_loss(labels.reshape(1, -1), probs.reshape(1, -1, 2), 0.3, 0.7)
    np.testing.assert_allclose(pooled[0], flat[0], rtol=1e-5)
    # Keras's batch mean of the per-sample values is the pooled loss.
    keras_value = tfversky.TverskyLoss(batch=True)(labels, probs)
    np.testing.assert_allclose(keras_value, pooled[0], rtol=1e-6)


def test_ignore_index_leaves_voxels_out(rng):
    labels, _, probs = random_case(rng)
    ignored = labels.copy()
    ignored[:, :2] = 255
    scrambled = probs.copy()
    scrambled[:, :2] = probs[:, :2, ::-1]  # predictions there must not matter
    a = tfversky.tversky_loss(ignored, probs, ignore_index=255)
    b = tfversky.tversky_loss(ignored, scrambled, ignore_index=255)
    expected = reference_loss(labels[:, 2:], probs[:, 2:], 0.3, 0.7)
    np.testing.assert_allclose(a, expected, rtol=1e-5)
    np.testing.assert_allclose(b, expected, rtol=1e-5)


def test_empty_ground_truth_is_finite_and_rewards_empty_prediction():
    labels = np.zeros((1, 8, 8, 8), np.int32)
    empty = np.stack([np.ones((1, 8, 8, 8)), np.zeros((1, 8, 8, 8))], -1).astype(np.float32)
    some = empty.copy()
    some[0, :2, :2, :2] = [0.4, 0.6]
    no_lesion_predicted = tfversky.tversky_loss(labels, empty).numpy()[0]
    lesion_predicted = tfversky.tversky_loss(labels, some).numpy()[0]
    assert no_lesion_predicted == pytest.approx(0.0, abs=1e-6)
    assert lesion_predicted > 0.99
    x = tf.constant(some)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tfversky.tversky_loss(labels, x)
    assert np.isfinite(tape.gradient(loss, x).numpy()).all()


@pytest.mark.parametrize("gamma", [0.5, 0.75, 2.0])
def test_focal_is_safe_at_a_perfect_prediction(gamma):
    labels = np.zeros((1, 4, 4, 4), np.int32)
    labels[0, 1:3, 1:3, 1:3] = 1
    x = tf.constant(np.eye(2, dtype=np.float32)[labels])
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tfversky.tversky_loss(labels, x, gamma=gamma)
    grad = tape.gradient(loss, x).numpy()
    assert loss.numpy()[0] == pytest.approx(0.0, abs=1e-6)
    assert np.isfinite(grad).all()


def test_focal_exponent(rng):
    labels, _, probs = random_case(rng)
    plain = tfversky.tversky_loss(labels, probs).numpy()
    np.testing.assert_allclose(tfversky.tversky_loss(labels, probs, gamma=0.75), plain ** 0.75,
                               rtol=1e-5)


@pytest.mark.parametrize("options", [
    dict(),
    dict(from_logits=True),
    dict(from_logits=True, gamma=0.75, include_background=True),
    dict(from_logits=True, activation="sigmoid"),
    dict(from_logits=True, batch=True),
    dict(ce_weight=1.0),
    dict(ce_weight=0.7, from_logits=True),
    dict(ce_weight=1.0, from_logits=True, activation="sigmoid"),
    dict(ce_weight=1.0, from_logits=True, ignore_index=5, batch=True),
    dict(class_weights=[2.0, 1.0], from_logits=True, include_background=True),
])
def test_gradient_against_finite_differences(rng, options):
    labels, logits, probs = random_case(rng, shape=(2, 3, 4, 3))
    if "ignore_index" in options:
        labels[0, 0, :2] = options["ignore_index"]
    x = logits if options.get("from_logits") else probs
    if options.get("activation") == "sigmoid":
        x = x[..., 1:]
    x = tf.constant(x.astype(np.float64))

    def f(v):
        return tf.reduce_sum(tfversky.tversky_loss(labels, v, **options))

    theoretical, numerical = tf.test.compute_gradient(f, [x], delta=1e-6)
    np.testing.assert_allclose(theoretical[0], numerical[0], rtol=1e-5, atol=1e-7)


def test_gradient_is_the_exact_derivative_not_the_printed_eq5(rng):
    """docs/losses.md: dT/dp_i = [g D - N (g + alpha (1 - g) - beta g)] / D^2, no factor 2."""
    alpha, beta, s = 0.3, 0.7, 1e-5
    labels, _, probs = random_case(rng, shape=(1, 4, 4, 4))
    x = tf.constant(probs.astype(np.float64))
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tfversky.tversky_loss(labels, x, alpha, beta)
    grad = tape.gradient(loss, x).numpy()[..., 1]
    p, g = probs[..., 1].astype(np.float64), labels.astype(np.float64)
    tp, fp, fn = (p * g).sum(), (p * (1 - g)).sum(), ((1 - p) * g).sum()
    n, d = tp + s, tp + alpha * fp + beta * fn + s
    closed_form = -(g * d - n * (g + alpha * (1 - g) - beta * g)) / d ** 2
    np.testing.assert_allclose(grad, closed_form, rtol=1e-10)
    assert not np.allclose(grad, 2 * closed_form)


@pytest.mark.parametrize("dtype, rtol", [("float16", 2e-3), ("bfloat16", 1e-2)])
def test_half_precision_inputs_accumulate_in_float32(rng, dtype, rtol):
    labels, logits, _ = random_case(rng, shape=(2, 9, 8, 7))
    reference = tfversky.tversky_loss(labels, logits, from_logits=True)
    half = tfversky.tversky_loss(labels, tf.cast(logits, dtype), from_logits=True)
    assert half.dtype == tf.float32
    np.testing.assert_allclose(half, reference, rtol=rtol)


def test_float16_sum_over_2_pow_18_voxels_does_not_overflow():
    # 2^18 voxels of lesion probability ~0.9: a float16 sum would pass 65504 and be Inf.
    shape = (1, 64, 64, 64)
    labels = np.ones(shape, np.int32)
    probs = np.stack([np.full(shape, 0.1), np.full(shape, 0.9)], -1)
    half = tf.constant(probs, tf.float16)
    assert not np.isfinite(tf.reduce_sum(half[..., 1]).numpy())
    loss = tfversky.tversky_loss(labels, half)
    p = float(np.float16(0.9))  # what the float16 input holds
    expected = 1 - p / (p + 0.7 * (1 - p))  # TP = p N, FN = (1 - p) N, FP = 0
    np.testing.assert_allclose(loss, [expected], rtol=1e-5)


def test_sums_are_accurate_on_a_paper_size_volume():
    # TensorFlow's one-shot reduce_sum over (D, H, W) drifts by ~4e-3 here (sequential
    # float32 accumulation); the loss must not inherit that.
    rng = np.random.default_rng(1)
    probs = (rng.random((1, 128, 224, 256, 1), np.float32) * 0.01).astype(np.float32)
    labels = np.zeros(probs.shape[:-1], np.int32)
    tp, fp, fn = losses.pure_confusion_sums(labels, probs, sparse=True, from_logits=False,
                                            activation="sigmoid", ignore_index=None)
    np.testing.assert_allclose(fp.numpy()[0, 0], probs.astype(np.float64).sum(), rtol=1e-5)


def test_odd_shape_and_float64_output(rng):
    labels, logits, _ = random_case(rng, shape=(2, 33, 34, 35))
    loss = tfversky.tversky_loss(labels, logits.astype(np.float64), from_logits=True)
    assert loss.shape == (2,) and loss.dtype == tf.float64


def test_one_and_two_spatial_dims(rng):
    for shape in [(2, 50), (2, 12, 13)]:
        labels, _, probs = random_case(rng, shape=shape)
        np.testing.assert_allclose(tfversky.tversky_loss(labels, probs),
                                   reference_loss(labels, probs, 0.3, 0.7), rtol=1e-5)


def test_graph_and_xla_match_eager(rng):
    labels, logits, _ = random_case(rng)
    eager = tfversky.tversky_loss(labels, logits, from_logits=True)
    for jit in (False, True):
        f = tf.function(lambda y, p: tfversky.tversky_loss(y, p, from_logits=True),
                        jit_compile=jit)
        np.testing.assert_allclose(f(labels, logits), eager, rtol=1e-5)


def test_keras_loss_reduction_and_config(rng):
    labels, _, probs = random_case(rng)
    loss = tfversky.TverskyLoss(0.2, 0.8, gamma=0.9, ignore_index=7)
    np.testing.assert_allclose(
        loss(labels, probs),
        np.mean(tfversky.tversky_loss(labels, probs, 0.2, 0.8, gamma=0.9, ignore_index=7)),
        rtol=1e-6)
    config = loss.get_config()
    assert config["alpha"] == 0.2 and config["beta"] == 0.8 and config["ignore_index"] == 7
    clone = tfversky.TverskyLoss.from_config(config)
    assert clone.get_config() == config
    assert keras.losses.deserialize(keras.losses.serialize(loss)).get_config() == config


def _imbalanced_volumes(rng, n=8, size=12):
    """Lesion voxels (1.5 %) brighter by one noise sd: not separable, so the loss decides."""
    labels = (rng.random((n, size, size, size)) < 0.015).astype(np.int32)
    images = rng.normal(size=labels.shape) + 1.0 * labels
    return images[..., None].astype(np.float32), labels


def _train_and_measure_sensitivity(images, labels, alpha, beta, steps=300):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((None, None, None, 1)),
                              keras.layers.Conv3D(2, 1, activation="softmax")])
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss=tfversky.TverskyLoss(alpha, beta))
    full_batch = tf.data.Dataset.from_tensors((images, labels)).repeat()
    model.fit(full_batch, steps_per_epoch=steps, epochs=1, shuffle=False, verbose=0)
    predicted = model.predict(images, verbose=0)[..., 1] >= 0.5
    lesion = labels == 1
    return (predicted & lesion).sum() / lesion.sum()


def test_larger_beta_raises_recall(rng):
    images, labels = _imbalanced_volumes(rng)
    balanced = _train_and_measure_sensitivity(images, labels, 0.5, 0.5)
    recall_weighted = _train_and_measure_sensitivity(images, labels, 0.1, 0.9)
    assert recall_weighted > balanced + 0.1, (balanced, recall_weighted)


def test_compiled_model_saves_and_loads(tmp_path, rng):
    images, labels = _imbalanced_volumes(rng, n=2, size=8)
    model = keras.Sequential([keras.Input((None, None, None, 1)),
                              keras.layers.Conv3D(2, 1, activation="softmax")])
    model.compile(optimizer="adam", loss=tfversky.TverskyLoss(0.3, 0.7, gamma=0.75),
                  metrics=[tfversky.metrics.DiceScore(), tfversky.metrics.Sensitivity(),
                           tfversky.metrics.Specificity(), tfversky.metrics.FBetaScore(2.0),
                           tfversky.metrics.AreaUnderPRCurve()])
    model.fit(images, labels, epochs=1, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)  # no custom_objects
    assert isinstance(loaded.loss, tfversky.TverskyLoss)
    assert loaded.loss.get_config() == model.loss.get_config()
    np.testing.assert_allclose(loaded.predict(images, verbose=0), model.predict(images, verbose=0))
    assert np.isfinite(loaded.evaluate(images, labels, verbose=0)).all()


# --- errors: name the argument, the value, and the fix ------------------------------------

OPTION_ERRORS = [
    (dict(alpha=-0.1), "`alpha`.*alpha=-0.1"),
    (dict(beta=float("nan")), "`beta`"),
    (dict(alpha=0, beta=0), "both are 0"),
    (dict(gamma=0), "`gamma`.*gamma=0"),
    (dict(activation="relu"), "`activation`.*'relu'"),
    (dict(smooth_dr=0), "`smooth_dr`.*NaN"),
    (dict(smooth_nr=-1), "`smooth_nr`"),
    (dict(ignore_index=1.5), "`ignore_index`"),
    (dict(implementation="cuda"), "`implementation`.*'cuda'"),
]


@pytest.mark.parametrize("options, message", OPTION_ERRORS)
def test_invalid_options(options, message):
    with pytest.raises(ValueError, match=message):
        tfversky.TverskyLoss(**options)
    labels, _, probs = random_case(np.random.default_rng(0))
    with pytest.raises(ValueError, match=message):
        tfversky.tversky_loss(labels, probs, **options)


def test_shape_mismatch_names_both_shapes(rng):
    labels, _, probs = random_case(rng)
    with pytest.raises(ValueError, match=r"y_true.shape=\(2, 5, 6, 6\).*y_pred.shape=\(2, 5, 6, 7, 2\)"):
        tfversky.tversky_loss(labels[..., :6], probs)
    with pytest.raises(ValueError, match="Shape mismatch"):
        tfversky.tversky_loss(np.zeros((2, 5, 6, 7, 3)), probs)


def test_labels_out_of_range_eager_and_graph(rng):
    labels, _, probs = random_case(rng)
    labels[0, 0, 0, 0] = 2
    with pytest.raises(ValueError, match=r"outside \[0, 2\).*max=2"):
        tfversky.tversky_loss(labels, probs)
    with pytest.raises(ValueError, match="outside"):
        tfversky.tversky_loss(labels - 3, probs)
    with pytest.raises(tf.errors.InvalidArgumentError, match="outside"):
        tf.function(tfversky.tversky_loss)(labels, probs)


def test_nan_in_predictions_eager_and_graph(rng):
    labels, logits, _ = random_case(rng)
    logits[1, 2, 3, 4, 0] = np.nan
    with pytest.raises(ValueError, match="1 NaN or Inf value"):
        tfversky.tversky_loss(labels, logits, from_logits=True)
    with pytest.raises(tf.errors.InvalidArgumentError, match="NaN or Inf"):
        tf.function(lambda y, p: tfversky.tversky_loss(y, p, from_logits=True))(labels, logits)


@pytest.mark.parametrize("labels, probs, message", [
    (np.zeros((2, 3)), np.full((2, 3), 0.5), "at least one spatial dim"),
    (np.zeros((1, 4, 4)), np.ones((1, 4, 4, 1)), "activation='sigmoid'"),
    (np.zeros((1, 0, 4)), np.ones((1, 0, 4, 2)), "empty volume"),
    (np.full((1, 4, 4), 0.5), np.full((1, 4, 4, 2), 0.5), "integer class ids"),
    (np.full((1, 4, 4, 2), 1.5), np.full((1, 4, 4, 2), 0.5), r"lie in \[0, 1\]"),
    (np.zeros((1, 4, 4, 2)), np.full((1, 4, 4, 2), 0.5, np.int32), "dtype"),
])
def test_bad_inputs(labels, probs, message):
    with pytest.raises(ValueError, match=message):
        tfversky.tversky_loss(labels, probs)


def test_ignore_index_needs_sparse_labels(rng):
    labels, _, probs = random_case(rng)
    with pytest.raises(ValueError, match="ignore_index=255.*needs sparse labels"):
        tfversky.tversky_loss(np.eye(2)[labels], probs, ignore_index=255)


def test_empty_batch_gives_empty_loss():
    loss = tfversky.tversky_loss(np.zeros((0, 4, 4), np.int32), np.zeros((0, 4, 4, 2), np.float32))
    assert loss.shape == (0,)


def test_loss_from_sums_is_shared_math():
    tp, fp, fn = (np.array([[0.0, 3.0]]), np.array([[1.0, 1.0]]), np.array([[0.0, 2.0]]))
    value = losses.loss_from_sums(tp, fp, fn, alpha=0.3, beta=0.7, gamma=1.0, smooth_nr=0,
                                  smooth_dr=1e-12, batch=False, scored_classes=slice(1, None))
    assert float(value[0]) == pytest.approx(1 - 3 / (3 + 0.3 + 1.4))
    assert not math.isnan(float(value[0]))


# --- Tversky + cross-entropy (ce_weight) and per-class weights (class_weights) -------------

def test_cross_entropy_term_against_a_hand_computation():
    # 1 sample, 4 voxels: p(lesion) and labels; CE = mean of -log p(true class).
    p = np.array([0.9, 0.8, 0.1, 0.3])
    g = np.array([1, 1, 0, 0])
    probs = np.stack([1 - p, p], -1)[None]
    ce = -(np.log(0.9) + np.log(0.8) + np.log(0.9) + np.log(0.7)) / 4
    tversky = 1 - 1.7 / (1.7 + 0.3 * 0.4 + 0.7 * 0.3)
    loss = tfversky.tversky_loss(g[None], probs, 0.3, 0.7, smooth_nr=0, smooth_dr=1e-12,
                                 ce_weight=0.5)
    np.testing.assert_allclose(loss.numpy(), [tversky + 0.5 * ce], rtol=1e-9)
    # The last voxel ignored: CE over the other three, Tversky without it.
    labels = np.array([[1, 1, 0, 255]])
    ce3 = -(np.log(0.9) + np.log(0.8) + np.log(0.9)) / 3
    tversky3 = 1 - 1.7 / (1.7 + 0.3 * 0.1 + 0.7 * 0.3)
    loss = tfversky.tversky_loss(labels, probs, 0.3, 0.7, smooth_nr=0, smooth_dr=1e-12,
                                 ce_weight=2.0, ignore_index=255)
    np.testing.assert_allclose(loss.numpy(), [tversky3 + 2.0 * ce3], rtol=1e-9)


def test_cross_entropy_sigmoid_and_logits_agree_with_probabilities(rng):
    labels, logits, probs = random_case(rng, shape=(2, 4, 5, 6))
    ce = lambda **kw: losses.cross_entropy(labels, kw.pop("y"), sparse=True, ignore_index=None,
                                           **kw).numpy()
    np.testing.assert_allclose(ce(y=logits, from_logits=True, activation="softmax"),
                               ce(y=probs, from_logits=False, activation="softmax"), rtol=1e-5)
    z = logits[..., 1:] - logits[..., :1]  # sigmoid(z) is the softmax lesion probability
    bce = -np.mean(np.where(labels == 1, np.log(probs[..., 1]), np.log(probs[..., 0])),
                   axis=(1, 2, 3))
    np.testing.assert_allclose(ce(y=z, from_logits=True, activation="sigmoid"), bce, rtol=1e-5)
    np.testing.assert_allclose(ce(y=probs, from_logits=False, activation="softmax"), bce,
                               rtol=1e-5)


def test_cross_entropy_changes_the_gradient(rng):
    """The CE term's gradient is checked by test_gradient_against_finite_differences."""
    labels, logits, _ = random_case(rng, shape=(2, 3, 4, 3))
    x = tf.constant(logits.astype(np.float64))

    def gradient(ce_weight):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(tfversky.tversky_loss(labels, x, from_logits=True,
                                                       ce_weight=ce_weight))
        return tape.gradient(loss, x).numpy()

    assert not np.allclose(gradient(1.0), gradient(0.0))


def test_class_weights_against_a_hand_computation(rng):
    labels, _, probs = random_case(rng, shape=(2, 6, 5, 4), classes=4)
    per_class = [reference_loss(labels, probs, 0.3, 0.7, classes=slice(c, c + 1))
                 for c in (1, 2, 3)]
    expected = (1 * per_class[0] + 0 * per_class[1] + 3 * per_class[2]) / 4
    loss = tfversky.tversky_loss(labels, probs, 0.3, 0.7, class_weights=[1, 0, 3])
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-5)
    equal = tfversky.tversky_loss(labels, probs, 0.3, 0.7, class_weights=[2, 2, 2])
    np.testing.assert_allclose(equal, tfversky.tversky_loss(labels, probs, 0.3, 0.7), rtol=1e-6)
    with_background = tfversky.tversky_loss(labels, probs, include_background=True,
                                            class_weights=[0, 1, 0, 3])
    np.testing.assert_allclose(with_background, expected, rtol=1e-5)


@pytest.mark.skipif(not fused.is_available(), reason="fused op not built")
@pytest.mark.parametrize("options", [
    dict(ce_weight=1.0, from_logits=True),
    dict(class_weights=[0.5, 1.0, 2.0], from_logits=True),
    dict(ce_weight=0.3, class_weights=[1.0, 0.0, 2.0], batch=True),
    dict(ce_weight=1.0, from_logits=True, activation="sigmoid", class_weights=[1, 2, 3]),
])
def test_pure_and_fused_sums_give_the_same_loss_and_gradient(rng, options):
    labels, logits, probs = random_case(rng, shape=(2, 5, 6, 7), classes=4)
    y = logits if options.get("from_logits") else probs
    if options.get("activation") == "sigmoid":
        y, labels = y[..., 1:], np.eye(4, dtype=np.float32)[labels][..., 1:]
    y = tf.constant(y)
    results = []
    for implementation in ("tf", "fused"):
        with tf.GradientTape() as tape:
            tape.watch(y)
            loss = tfversky.tversky_loss(labels, y, implementation=implementation, **options)
            total = tf.reduce_sum(loss)
        results.append((loss.numpy(), tape.gradient(total, y).numpy()))
    (loss_t, grad_t), (loss_f, grad_f) = results
    np.testing.assert_allclose(loss_f, loss_t, rtol=2e-5)
    np.testing.assert_allclose(grad_f, grad_t, rtol=2e-5, atol=2e-5 * np.abs(grad_t).max())


def test_new_options_serialise_and_load_with_a_model(tmp_path, rng):
    loss = tfversky.TverskyLoss(0.3, 0.7, ce_weight=1.0, class_weights=(1, 2, 3))
    config = loss.get_config()
    assert config["ce_weight"] == 1.0 and config["class_weights"] == [1.0, 2.0, 3.0]
    assert tfversky.TverskyLoss.from_config(config).get_config() == config
    assert keras.losses.deserialize(keras.losses.serialize(loss)).get_config() == config
    labels, _, probs = random_case(rng, classes=4)
    np.testing.assert_allclose(
        loss(labels, probs),
        np.mean(tfversky.tversky_loss(labels, probs, ce_weight=1.0, class_weights=[1, 2, 3])),
        rtol=1e-6)
    model = keras.Sequential([keras.Input((None, None, None, 1)),
                              keras.layers.Conv3D(4, 1, activation="softmax")])
    model.compile(optimizer="adam", loss=loss)
    model.fit(np.ones((1, 4, 4, 4, 1), np.float32), labels[:1, :4, :4, :4], verbose=0)
    model.save(tmp_path / "m.keras")
    assert keras.models.load_model(tmp_path / "m.keras").loss.get_config() == config


@pytest.mark.parametrize("options, message", [
    (dict(ce_weight=-1), r"`ce_weight`.*>= 0.*ce_weight=-1"),
    (dict(ce_weight=float("inf")), "`ce_weight`"),
    (dict(ce_weight="1"), "`ce_weight`"),
    (dict(class_weights=[1, -1]), r"`class_weights`.*class_weights=\[1, -1\]"),
    (dict(class_weights=[0, 0]), r"`class_weights`.*not all 0"),
    (dict(class_weights=[]), "`class_weights`"),
    (dict(class_weights=[[1, 2]]), "`class_weights`"),
    (dict(class_weights=["a"]), "`class_weights`"),
])
def test_invalid_new_options(options, message):
    with pytest.raises(ValueError, match=message):
        tfversky.TverskyLoss(**options)
    labels, _, probs = random_case(np.random.default_rng(0))
    with pytest.raises(ValueError, match=message):
        tfversky.tversky_loss(labels, probs, **options)


def test_class_weights_of_the_wrong_length_name_the_scored_classes(rng):
    labels, _, probs = random_case(rng, classes=3)
    with pytest.raises(ValueError, match=r"expected 2 weights, one per scored class.*"
                                         r"include_background=True.*\[1.0, 2.0, 3.0\]"):
        tfversky.tversky_loss(labels, probs, class_weights=[1.0, 2.0, 3.0])
