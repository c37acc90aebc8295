"""The fused loss on the JAX and PyTorch backends against the pure keras.ops loss.

Not collected by itself (the Keras backend is chosen at import): test_fused_backends.py runs
this file in a subprocess per backend, with KERAS_BACKEND set. Each case compares the loss
and its gradient, fused (the backend's binding) against pure, as test_fused.py does on
TensorFlow, then checks what each framework adds: jit/vmap and Keras fit on JAX,
torch.compile without graph breaks and torch.library's opcheck on PyTorch, and the errors.

The cases run on the framework's default device: on a GPU machine (scripts/gpu_check.sh) the
bindings' CUDA kernels. The error cases are pinned to the CPU, whose kernels raise where the
CUDA ones write NaN.
"""

import itertools
import warnings

import keras
import numpy as np
import pytest

import tfversky
from tests.csrc.kernel_reference import random_inputs
from tfversky import _loader, fused

BACKEND = keras.backend.backend()
if BACKEND not in ("jax", "torch"):
    pytest.skip("run by test_fused_backends.py with KERAS_BACKEND=jax or torch",
                allow_module_level=True)

TOLERANCE = {"float64": 1e-10, "float32": 2e-5, "float16": 2e-3, "bfloat16": 2e-2}
LABEL_ERROR = r"labels holds 7 at sample 1, voxel 9, outside \[0, 2\).*ignore_index"

if BACKEND == "jax":
    import jax
    import jax.numpy as jnp

    def to_backend(x, dtype=None, cpu=False):
        return jax.device_put(jnp.asarray(x, dtype), jax.devices("cpu")[0] if cpu else None)

    def loss_and_grad(labels, y_pred, implementation, **options):
        def total(y):
            loss = tfversky.tversky_loss(labels, y, implementation=implementation, **options)
            return jnp.sum(loss), loss

        (_, loss), grad = jax.value_and_grad(total, has_aux=True)(y_pred)
        return np.asarray(loss), np.asarray(grad.astype(jnp.float64 if grad.dtype ==
                                                        jnp.float64 else jnp.float32)), grad.dtype
else:
    import torch

    DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

    def to_backend(x, dtype=None, cpu=False):
        return torch.as_tensor(np.asarray(x), dtype=getattr(torch, dtype) if dtype else None,
                               device="cpu" if cpu else DEVICE)

    def loss_and_grad(labels, y_pred, implementation, **options):
        y = y_pred.detach().clone().requires_grad_(True)
        loss = tfversky.tversky_loss(labels, y, implementation=implementation, **options)
        loss.sum().backward()
        return (loss.detach().float().cpu().numpy(), y.grad.float().cpu().numpy(),
                y.grad.dtype)


def make_case(rng, shape, classes, *, dtype="float32", layout="uint8", from_logits=True,
              activation="softmax", ignore_index=None, cpu=False):
    """(labels, y_pred) as backend tensors, on the data test_fused.py's TOLERANCE was set with."""
    dense = layout == "dense"
    y, target = random_inputs(rng, shape, classes, dense=dense, from_logits=from_logits,
                              activation=activation, ignore_index=ignore_index, lesion=0.2,
                              logit_scale=2.0, probability_range=(0.02, 0.98))
    return (to_backend(target.astype("float32" if dense else layout), cpu=cpu),
            to_backend(y.astype("float32"), dtype, cpu=cpu))


def assert_same(labels, y_pred, dtype="float32", **options):
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # "fused" never falls back
        loss_f, grad_f, grad_dtype = loss_and_grad(labels, y_pred, "fused", **options)
    loss_t, grad_t, _ = loss_and_grad(labels, y_pred, "tf", **options)
    assert grad_dtype == y_pred.dtype
    tol = TOLERANCE[dtype]
    np.testing.assert_allclose(loss_f, loss_t, rtol=tol, atol=tol)
    scale = max(np.abs(grad_t).max(), 1e-30)
    np.testing.assert_allclose(grad_f, grad_t, rtol=tol, atol=tol * scale)


# ---- fused == pure: the per-backend equality table ----

# Every activation with every label layout, the dtypes taking turns (each meets every
# layout): the bindings' plumbing per case; the kernels' math is test_fused.py's.
EQUALITY_CASES = [
    (("float32", "float16", "bfloat16")[i % 3], activation, classes, layout, ignore_index)
    for i, ((activation, classes), (layout, ignore_index)) in enumerate(itertools.product(
        [("softmax", 2), ("softmax", 3), ("sigmoid", 1), ("sigmoid", 2)],
        [("uint8", None), ("int32", -1), ("uint8", 255), ("dense", None)]))]


@pytest.mark.parametrize("dtype, activation, classes, layout, ignore_index", EQUALITY_CASES)
def test_fused_matches_pure(dtype, activation, classes, layout, ignore_index):
    rng = np.random.default_rng(classes * 7 + len(layout))
    labels, y_pred = make_case(rng, (2, 5, 6, 7), classes, dtype=dtype, layout=layout,
                               activation=activation, ignore_index=ignore_index)
    assert_same(labels, y_pred, dtype, activation=activation, from_logits=True,
                ignore_index=ignore_index)


@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
def test_probabilities_and_options_match_pure(rng, activation):
    labels, y_pred = make_case(rng, (2, 9, 10), 3, from_logits=False, activation=activation,
                               ignore_index=255)
    assert_same(labels, y_pred, activation=activation, from_logits=False, ignore_index=255,
                gamma=0.75, include_background=True, batch=True, alpha=0.4, beta=0.6)


def test_auto_takes_the_fused_op_without_warning(rng):
    assert fused.is_available() and fused.build_info()["path"].endswith(
        {"jax": _loader.JAX_LIBRARY_NAME, "torch": _loader.TORCH_LIBRARY_NAME}[BACKEND])
    labels, y_pred = make_case(rng, (1, 4, 5, 6), 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        assert fused.should_use("auto", labels, y_pred, sparse=True, options={})
        tfversky.tversky_loss(labels, y_pred, from_logits=True)


def test_auto_falls_back_with_one_warning_and_fused_raises(rng, monkeypatch, tmp_path):
    labels, y_pred = make_case(rng, (1, 4, 5, 6), 2)
    monkeypatch.setenv(_loader.ENV_LIBRARY, str(tmp_path / _loader.LIBRARY_NAME))
    monkeypatch.setattr(_loader, f"_{BACKEND}_cache", _loader._Cache())
    monkeypatch.setattr(fused._binding(), "_info", {})  # as if never loaded
    monkeypatch.setattr(fused, "_warned", set())
    with pytest.warns(RuntimeWarning, match="not available") as record:
        fallback = tfversky.tversky_loss(labels, y_pred, from_logits=True)
        tfversky.tversky_loss(labels, y_pred, from_logits=True)
    runtime = [r for r in record if r.category is RuntimeWarning]
    assert len(runtime) == 1
    assert "Using the pure keras.ops sums" in str(runtime[0].message)
    with pytest.raises(fused.FusedOpUnavailableError, match=str(tmp_path)):
        tfversky.tversky_loss(labels, y_pred, from_logits=True, implementation="fused")
    pure = tfversky.tversky_loss(labels, y_pred, from_logits=True, implementation="tf")
    np.testing.assert_allclose(np.asarray(fallback), np.asarray(pure))


def test_refuses_a_binding_built_for_another_version():
    running = _loader.FRAMEWORKS[BACKEND][2]()
    key = _loader.FRAMEWORKS[BACKEND][0]
    info = dict(fused.build_info(), **{key: "0.0.1"})
    reason = _loader._rejection(info, running, BACKEND)
    assert reason == f"built for {_loader.FRAMEWORKS[BACKEND][1]} 0.0.1, running {running}"


# ---- errors: the TensorFlow op's messages ----

def test_errors(rng):
    labels, y_pred = make_case(rng, (2, 3, 4), 2, cpu=True)
    bad = np.asarray(labels).copy()
    bad[1, 2, 1] = 7
    with pytest.raises(ValueError, match=r"outside \[0, 2\)"):  # the loss's own check
        tfversky.tversky_loss(bad, y_pred, from_logits=True, implementation="fused")
    with pytest.raises(Exception, match=LABEL_ERROR):  # the kernel's check
        np.asarray(fused.confusion_sums(to_backend(bad, cpu=True), y_pred, sparse=True,
                                        from_logits=True, activation="softmax",
                                        ignore_index=None)[0])
    with pytest.raises(Exception, match=r"labels shape \[2,3,3\] does not match y_pred shape"):
        np.asarray(fused.confusion_sums(to_backend(np.asarray(labels)[:, :, :3], cpu=True), y_pred,
                                        sparse=True, from_logits=False, activation="softmax",
                                        ignore_index=None)[0])
    with pytest.raises(ValueError, match="Shape mismatch"):
        tfversky.tversky_loss(np.asarray(labels)[:, :, :3], y_pred, implementation="fused")


# ---- what each framework adds ----

def fit_histories():
    """Keras fit with the fused and the pure loss, step by step (as test_fused.py)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 8, 8, 8, 1)).astype("float32")
    y = (x[..., 0] > 1.0).astype("float32")[..., None]
    histories = {}
    for implementation in ("fused", "tf"):
        keras.utils.set_random_seed(1)
        model = keras.Sequential([keras.Input((8, 8, 8, 1)),
                                  keras.layers.Conv3D(4, 3, padding="same", activation="relu"),
                                  keras.layers.Conv3D(2, 1)])
        model.compile(optimizer=keras.optimizers.Adam(1e-2),
                      loss=tfversky.TverskyLoss(0.3, 0.7, from_logits=True,
                                                implementation=implementation))
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            history = model.fit(x, y, batch_size=2, epochs=3, verbose=0, shuffle=False)
        histories[implementation] = history.history["loss"]
    return histories


def test_keras_fit():
    histories = fit_histories()
    assert np.isfinite(histories["fused"]).all()
    np.testing.assert_allclose(histories["fused"], histories["tf"], rtol=1e-4, atol=1e-5)


if BACKEND == "jax":
    def test_jit_grad_and_vmap(rng):
        labels, y_pred = make_case(rng, (2, 5, 6, 7), 3, ignore_index=255)

        def loss(y, implementation):
            return jnp.sum(tfversky.tversky_loss(labels, y, from_logits=True, ignore_index=255,
                                                 implementation=implementation))

        jitted = jax.jit(jax.value_and_grad(loss), static_argnums=1)
        hlo = jitted.lower(y_pred, "fused").as_text()
        assert "tfversky_fused_tversky_sums_grad" in hlo  # the fused backward, inside XLA
        for a, b in zip(jitted(y_pred, "fused"), jitted(y_pred, "tf")):
            np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-7)
        # vmap over a leading axis: the mapped axis is folded into the batch.
        stacked = jnp.stack([y_pred, y_pred[::-1]])
        sums = jax.vmap(lambda y: fused.confusion_sums(labels, y, sparse=True, from_logits=True,
                                                       activation="softmax",
                                                       ignore_index=255))(stacked)
        for i, y in enumerate(stacked):
            single = fused.confusion_sums(labels, y, sparse=True, from_logits=True,
                                          activation="softmax", ignore_index=255)
            for a, b in zip(sums, single):
                np.testing.assert_array_equal(a[i], b)
        grads = jax.vmap(jax.grad(lambda y: loss(y, "fused")))(stacked)
        np.testing.assert_allclose(grads[0], jax.grad(lambda y: loss(y, "tf"))(y_pred),
                                   rtol=2e-5, atol=1e-7)

    def test_bad_label_inside_jit_raises_the_op_message(rng):
        labels, y_pred = make_case(rng, (2, 3, 4), 2, cpu=True)
        bad = np.asarray(labels).copy()
        bad[1, 2, 1] = 7
        jitted = jax.jit(lambda y, l: tfversky.tversky_loss(l, y, from_logits=True,
                                                            implementation="fused"))
        with pytest.raises(Exception, match=LABEL_ERROR):
            np.asarray(jitted(y_pred, to_backend(bad, cpu=True)))

if BACKEND == "torch":
    def test_opcheck(rng):
        """torch.library's own checks: schema, fake implementation, autograd registration."""
        fused.is_available()
        labels, y_pred = make_case(rng, (2, 3, 4), 2, ignore_index=255)
        args = (y_pred.requires_grad_(True), labels, 1, True, 255)
        torch.library.opcheck(torch.ops.tfversky.fused_tversky_sums.default, args)
        upstream = [torch.ones(2, 2, device=y_pred.device) for _ in range(3)]
        torch.library.opcheck(torch.ops.tfversky.fused_tversky_sums_grad.default,
                              (y_pred.detach(), labels, *upstream, 1, True, 255))

    def test_torch_compile_without_graph_breaks(rng):
        labels, y_pred = make_case(rng, (2, 5, 6, 7), 2)

        def step(y, implementation):
            y = y.detach().requires_grad_(True)
            loss = tfversky.tversky_loss(labels, y, from_logits=True,
                                         implementation=implementation).sum()
            loss.backward()
            return loss.detach(), y.grad

        def loss_only(y):
            return tfversky.tversky_loss(labels, y, from_logits=True, implementation="fused")

        # aot_eager: Dynamo and AOTAutograd trace (through the fake implementations) as with
        # the default backend, without Inductor's code generation (minutes on 2 cores).
        torch._dynamo.reset()
        compiled = torch.compile(loss_only, fullgraph=True, backend="aot_eager")  # breaks raise
        np.testing.assert_allclose(compiled(y_pred).cpu().numpy(),
                                   loss_only(y_pred).cpu().numpy(), rtol=1e-6)
        explanation = torch._dynamo.explain(loss_only)(y_pred)
        assert explanation.graph_break_count == 0
        compiled_step = torch.compile(lambda y: step(y, "fused"), backend="aot_eager")
        for a, b in zip(compiled_step(y_pred), step(y_pred, "tf")):
            np.testing.assert_allclose(a.cpu().numpy(), b.cpu().numpy(), rtol=2e-5, atol=1e-7)


def test_unet_inference_and_metrics_run_on_the_backend():
    """What the docs promise besides the loss on every backend: unet3d trains with the fused
    loss, predict_volume blends its windows, metrics.evaluate scores them."""
    from tfversky import inference, metrics
    from tfversky.models import unet3d

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 8, 8, 8, 1)).astype("float32")
    y = (x[..., 0] > 1.0).astype("uint8")
    keras.utils.set_random_seed(0)
    model = unet3d(input_shape=(None, None, None, 1), num_classes=2, base_filters=4, depth=2)
    # Not compiled: test_keras_fit covers the fused loss inside the backend's compiled step,
    # and XLA compiling a U-Net step on 2 cores takes a minute.
    model.compile(optimizer="adam", loss=tfversky.TverskyLoss(0.3, 0.7, implementation="fused"),
                  jit_compile=False)
    history = model.fit(x, y, batch_size=2, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    probabilities = inference.predict_volume(model, x[0], patch_size=8, overlap=0.5,
                                             progress=False)
    assert probabilities.shape == (8, 8, 8, 2)
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=1e-5)
    scores = metrics.evaluate(y[0], probabilities[..., 1])
    assert 0.0 <= scores["dsc"] <= 1.0
