"""The fused op inside XLA (csrc/xla): custom calls in the compiled HLO, the pure loss's
values and gradients, model.fit(jit_compile=True), the loading order, the fallback."""

import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import tfversky
from tests.csrc.kernel_reference import random_inputs
from tfversky import _loader, fused

TOLERANCE = {"float64": 1e-10, "float32": 2e-5, "float16": 2e-3, "bfloat16": 2e-2}
TARGETS = ('custom_call_target="tfversky_fused_tversky_sums"',
           'custom_call_target="tfversky_fused_tversky_sums_grad"')


def loss_and_grad(labels, y_pred, implementation, **options):
    with tf.GradientTape() as tape:
        tape.watch(y_pred)
        loss = tfversky.tversky_loss(labels, y_pred, alpha=0.3, beta=0.7,
                                     implementation=implementation, **options)
        total = tf.reduce_sum(loss)
    return loss, tape.gradient(total, y_pred)


def xla_step(implementation, **options):
    return tf.function(lambda labels, y: loss_and_grad(labels, y, implementation, **options),
                       jit_compile=True)


def case(shape, classes, *, dtype="float32", dense=False, label_dtype="uint8", seed=0,
         **options):
    y, target = random_inputs(np.random.default_rng(seed), shape, classes, dense=dense,
                              logit_scale=2.0, probability_range=(0.02, 0.98), **options)
    return tf.constant(target.astype("float32" if dense else label_dtype)), tf.constant(y, dtype)


def test_hlo_of_a_jit_loss_step_holds_both_custom_calls():
    labels, y_pred = case((2, 6, 7, 8), 2)
    hlo = xla_step("auto", from_logits=True).experimental_get_compiler_ir(labels, y_pred)(
        stage="hlo")
    for target in TARGETS:
        assert target in hlo
    assert "tfversky-xla-v1 elem=2 labels=0 batch=2 voxels=336 classes=2 activation=1" in hlo


CASES = {  # name: (shape, classes, case options, loss options)
    "softmax sparse uint8": ((2, 5, 6, 7), 3, {}, dict(from_logits=True)),
    "softmax sparse int32, ignore 255": ((2, 5, 6, 7), 3,
                                         dict(label_dtype="int32", ignore_index=255),
                                         dict(from_logits=True, ignore_index=255)),
    "softmax one-hot": ((2, 5, 6, 7), 3, dict(dense=True), dict(from_logits=True)),
    "softmax probabilities, int64": ((1, 9, 8, 7), 2, dict(label_dtype="int64",
                                                          from_logits=False), {}),
    "sigmoid 1 channel": ((2, 5, 6, 7), 1, dict(activation="sigmoid"),
                          dict(from_logits=True, activation="sigmoid")),
    "sigmoid one-hot 3 channels": ((2, 5, 6, 7), 3, dict(activation="sigmoid", dense=True),
                                   dict(from_logits=True, activation="sigmoid")),
    "float16 softmax, ignore 255": ((2, 5, 6, 7), 2, dict(dtype="float16", ignore_index=255),
                                    dict(from_logits=True, ignore_index=255)),
    "bfloat16 sigmoid": ((2, 5, 6, 7), 2, dict(dtype="bfloat16", activation="sigmoid"),
                         dict(from_logits=True, activation="sigmoid")),
    "float64 softmax one-hot": ((1, 5, 6, 7), 4, dict(dtype="float64", dense=True),
                                dict(from_logits=True)),
}


@pytest.mark.parametrize("name", CASES)
def test_fused_inside_xla_equals_the_pure_loss(name):
    shape, classes, case_options, options = CASES[name]
    labels, y_pred = case(shape, classes, **case_options)
    step = xla_step("fused", **options)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a fallback would say so
        loss_x, grad_x = step(labels, y_pred)
    hlo = step.experimental_get_compiler_ir(labels, y_pred)(stage="hlo")
    assert all(target in hlo for target in TARGETS)
    loss_t, grad_t = loss_and_grad(labels, y_pred, "tf", **options)
    assert loss_x.dtype == loss_t.dtype and grad_x.dtype == y_pred.dtype
    tol = TOLERANCE[y_pred.dtype.name]
    np.testing.assert_allclose(loss_x.numpy(), loss_t.numpy(), rtol=tol, atol=tol)
    grad_x, grad_t = (np.asarray(tf.cast(g, "float64")) for g in (grad_x, grad_t))
    np.testing.assert_allclose(grad_x, grad_t, rtol=tol, atol=tol * np.abs(grad_t).max())


def test_the_ops_inside_xla_equal_the_ops_outside_bit_for_bit():
    """The same kernels with the same attributes: identical sums and gradient. (The loss's
    glue around them may round differently once XLA fuses it.)"""
    library = _loader.load()
    labels, y_pred = case((2, 17, 18, 19), 2, ignore_index=255)
    attrs = dict(from_logits=True, has_ignore_index=True, ignore_index=255)

    def ops(labels, y):
        sums = library.tfversky_fused_tversky_sums(y, labels, Tsum=tf.float32, **attrs)
        upstream = (-sums[0] / 7, sums[1] / 5, sums[2] / 3)
        return (*sums, library.tfversky_fused_tversky_sums_grad(y, labels, *upstream, **attrs))

    inside = tf.function(ops, jit_compile=True)(labels, y_pred)
    outside = tf.function(ops)(labels, y_pred)
    for a, b in zip(inside, outside):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_labels_out_of_range_make_nan_inside_xla():
    """The custom call cannot raise (see csrc/xla/tversky_xla_call.h): its sums become NaN."""
    labels, y_pred = case((1, 4, 4, 4), 2)
    labels = tf.tensor_scatter_nd_update(labels, [[0, 1, 2, 3]], tf.constant([7], tf.uint8))
    loss, grad = xla_step("fused", from_logits=True)(labels, y_pred)
    assert np.isnan(loss.numpy()).all() and np.isnan(grad.numpy()).all()


def test_fallback_when_the_lowering_cannot_load(monkeypatch, tmp_path):
    """Pure sums inside XLA, one warning naming the reason; the op still runs outside XLA."""
    missing = _loader._Cache()
    missing.error = fused.FusedOpUnavailableError(f"{tmp_path}/_tfversky_xla.so: not found")
    monkeypatch.setattr(_loader, "_xla_cache", missing)
    monkeypatch.setattr(fused, "_warned", set())
    labels, y_pred = case((1, 4, 5, 6), 2)
    assert "not found" in fused.xla_unavailable_reason()
    step = xla_step("fused", from_logits=True)
    with pytest.warns(RuntimeWarning, match="cannot be compiled by XLA.*not found"):
        loss_x, grad_x = step(labels, y_pred)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # once
        xla_step("fused", from_logits=True)(labels, y_pred)
        xla_step("auto", from_logits=True)(labels, y_pred)  # no GPU: "auto" is silent
    assert "custom-call" not in step.experimental_get_compiler_ir(labels, y_pred)(stage="hlo")
    loss_t, grad_t = loss_and_grad(labels, y_pred, "tf", from_logits=True)
    np.testing.assert_allclose(loss_x, loss_t, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad_x, grad_t, rtol=1e-5, atol=1e-7)


LATE_LOAD = textwrap.dedent("""
    import warnings
    import numpy as np
    import tensorflow as tf
    # An unrelated XLA compilation first: tf2xla registers its compilation kernels now.
    assert float(tf.function(lambda x: tf.reduce_sum(x * 2), jit_compile=True)(tf.ones(3))) == 6
    import tfversky
    from tfversky import _loader
    assert _loader._cache.library is None  # the op library is not loaded yet
    warnings.simplefilter("error", RuntimeWarning)
    rng = np.random.default_rng(0)
    y = tf.constant(rng.normal(size=(2, 6, 7, 8, 2)), tf.float32)
    labels = tf.constant(rng.random((2, 6, 7, 8)) < 0.2, tf.uint8)
    def step(labels, y, implementation):
        with tf.GradientTape() as tape:
            tape.watch(y)
            loss = tf.reduce_sum(tfversky.tversky_loss(labels, y, from_logits=True,
                                                       implementation=implementation))
        return loss, tape.gradient(loss, y)
    xla = tf.function(lambda a, b: step(a, b, "auto"), jit_compile=True)
    loss, grad = xla(labels, y)
    hlo = xla.experimental_get_compiler_ir(labels, y)(stage="hlo")
    assert 'custom_call_target="tfversky_fused_tversky_sums_grad"' in hlo
    pure_loss, pure_grad = step(labels, y, "tf")
    np.testing.assert_allclose(loss, pure_loss, rtol=1e-5)
    np.testing.assert_allclose(grad, pure_grad, rtol=1e-4, atol=1e-7)
    print("lowered after an earlier XLA compilation")
""")


def test_library_loaded_after_an_earlier_xla_compilation_still_lowers():
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=str(root), TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run([sys.executable, "-c", LATE_LOAD], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "lowered after an earlier XLA compilation" in result.stdout
