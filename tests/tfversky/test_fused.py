"""The fused Tversky op: same results as the pure TensorFlow loss, exact gradients,
determinism, errors, the loader, and the dispatch (auto, fused, XLA, model.fit)."""

import os
import subprocess
import sys
import textwrap
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tfversky
from tests.csrc.kernel_reference import load_module, random_inputs
from tfversky import _loader, fused

TOLERANCE = {"float64": 1e-10, "float32": 2e-5, "float16": 2e-3, "bfloat16": 2e-2}


@pytest.fixture
def on_cpu():
    """Pins the op to its CPU kernels, whose contract these tests state: they raise on a bad
    label, where the CUDA kernels (which cannot raise) write NaN. TensorFlow would otherwise
    place the op on a visible GPU."""
    with tf.device("/CPU:0"):
        yield


def make_case(rng, shape, classes, *, dtype="float32", labels="sparse", label_dtype="uint8",
              from_logits=True, activation="softmax", ignore_index=None, lesion=0.2):
    """(labels, y_pred): NumPy class ids or float32 one-hot/soft targets, and a tf.Tensor."""
    dense = labels == "dense"
    # Milder logits than the kernel tests' and probabilities kept off 0 and 1: the data that
    # TOLERANCE was set with.
    y, target = random_inputs(rng, shape, classes, dense=dense, from_logits=from_logits,
                              activation=activation, ignore_index=ignore_index, lesion=lesion,
                              logit_scale=2.0, probability_range=(0.02, 0.98))
    return target.astype("float32" if dense else label_dtype), tf.constant(y, dtype)


def loss_and_grad(labels, y_pred, implementation, **options):
    with tf.GradientTape() as tape:
        tape.watch(y_pred)
        loss = tfversky.tversky_loss(labels, y_pred, implementation=implementation, **options)
        total = tf.reduce_sum(loss)
    return loss, tape.gradient(total, y_pred)


def assert_same(labels, y_pred, dtype="float32", **options):
    loss_f, grad_f = loss_and_grad(labels, y_pred, "fused", **options)
    loss_t, grad_t = loss_and_grad(labels, y_pred, "tf", **options)
    assert loss_f.dtype == loss_t.dtype and grad_f.dtype == y_pred.dtype
    tol = TOLERANCE[dtype]
    np.testing.assert_allclose(loss_f.numpy(), loss_t.numpy(), rtol=tol, atol=tol)
    grad_f, grad_t = (np.asarray(tf.cast(g, "float64")) for g in (grad_f, grad_t))
    scale = max(np.abs(grad_t).max(), 1e-30)
    np.testing.assert_allclose(grad_f, grad_t, rtol=tol, atol=tol * scale)


# ---- fused == pure ----

@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shape=st.lists(st.integers(1, 7), min_size=1, max_size=3).map(tuple),
    batch_size=st.integers(1, 2),
    classes=st.sampled_from([1, 2, 3]),
    dtype=st.sampled_from(["float32", "float16", "bfloat16"]),
    layout=st.sampled_from(["uint8", "int32", "int64", "dense"]),
    from_logits=st.booleans(),
    activation=st.sampled_from(["softmax", "sigmoid"]),
    ignore=st.booleans(),
    include_background=st.booleans(),
    batch=st.booleans(),
    gamma=st.sampled_from([1.0, 0.75, 2.0]),
    alpha=st.floats(0.1, 0.9),
    seed=st.integers(0, 2**16),
)
def test_fused_matches_pure(shape, batch_size, classes, dtype, layout, from_logits, activation,
                            ignore, include_background, batch, gamma, alpha, seed):
    if classes == 1:
        activation = "sigmoid"
    ignore_index = None
    if ignore and layout != "dense":
        ignore_index = 255 if layout == "uint8" else -1
    labels, y_pred = make_case(np.random.default_rng(seed), (batch_size,) + shape, classes,
                               dtype=dtype, labels="dense" if layout == "dense" else "sparse",
                               label_dtype=layout, from_logits=from_logits,
                               activation=activation, ignore_index=ignore_index)
    assert_same(labels, y_pred, dtype, alpha=alpha, beta=1 - alpha, gamma=gamma,
                from_logits=from_logits, activation=activation,
                include_background=include_background, batch=batch, ignore_index=ignore_index)


def test_odd_volume_matches_pure(rng):
    labels, y_pred = make_case(rng, (2, 33, 34, 35), 2, lesion=0.01, ignore_index=255)
    assert_same(labels, y_pred, from_logits=True, ignore_index=255)


def test_labels_as_keras_passes_them(rng):
    """Keras hands y_true over as float32, with a trailing 1: the same result."""
    labels, y_pred = make_case(rng, (2, 5, 6, 7), 2)
    assert_same(labels[..., None].astype("float32"), y_pred, from_logits=True)


@pytest.mark.parametrize("case", ["no lesion in one sample", "all background", "all lesion"])
@pytest.mark.parametrize("classes, activation", [(2, "softmax"), (1, "sigmoid")])
def test_empty_and_full_volumes(rng, case, classes, activation):
    labels, y_pred = make_case(rng, (2, 6, 7, 8), classes, activation=activation)
    if case == "no lesion in one sample":
        labels[1] = 0
    else:
        labels[:] = 0 if case == "all background" else 1
    assert_same(labels, y_pred, from_logits=True, activation=activation)
    loss, grad = loss_and_grad(labels, y_pred, "fused", from_logits=True, activation=activation)
    assert np.isfinite(loss.numpy()).all() and np.isfinite(grad.numpy()).all()


# ---- gradients: float64 against finite differences ----

@pytest.mark.parametrize("options, classes, layout", [
    (dict(from_logits=True), 2, "sparse"),
    (dict(from_logits=True, ignore_index=255, gamma=2.0, batch=True), 3, "sparse"),
    (dict(from_logits=True, activation="sigmoid"), 1, "sparse"),
    (dict(from_logits=True, activation="sigmoid", include_background=True), 3, "dense"),
    (dict(from_logits=False, gamma=0.75, include_background=True), 2, "sparse"),
])
def test_gradient_against_finite_differences(rng, options, classes, layout):
    activation = options.get("activation", "softmax")
    labels, y_pred = make_case(rng, (2, 3, 2, 2), classes, dtype="float64",
                               labels=layout, from_logits=options["from_logits"],
                               activation=activation, ignore_index=options.get("ignore_index"),
                               lesion=0.4)
    if layout == "dense":
        labels = labels.astype("float64")

    def loss(y):
        return tfversky.tversky_loss(labels, y, implementation="fused", **options)

    theoretical, numerical = tf.test.compute_gradient(loss, [y_pred], delta=1e-6)
    np.testing.assert_allclose(theoretical[0], numerical[0], rtol=1e-6, atol=1e-8)
    with tf.GradientTape() as tape:  # and the graph really holds the fused gradient op
        tape.watch(y_pred)
        value = tf.reduce_sum(loss(y_pred))
    assert tape.gradient(value, y_pred) is not None


# ---- determinism ----

DETERMINISM_SCRIPT = textwrap.dedent("""
    import hashlib, sys, numpy as np, tensorflow as tf
    threads = int(sys.argv[1])
    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
    from tfversky import fused
    tf.device("/CPU:0").__enter__()  # the CPU kernels' determinism (the GPU's: cuda_checks)
    rng = np.random.default_rng(7)
    labels = (rng.random((2, 40, 41, 42)) < 0.05).astype("uint8")
    y = tf.constant(rng.normal(size=(2, 40, 41, 42, 2)), tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(y)
        tp, fp, fn = fused.confusion_sums(labels, y, sparse=True, from_logits=True,
                                          activation="softmax", ignore_index=None)
        total = tf.reduce_sum(tp * 1.5 - fp * 0.3 + fn * 0.7)
    grad = tape.gradient(total, y)
    sys.stdout.write(np.concatenate([t.numpy().ravel() for t in (tp, fp, fn)]).tobytes().hex())
    sys.stdout.write(" " + hashlib.sha256(grad.numpy().tobytes()).hexdigest())
""")


def _run_determinism(threads):
    env = dict(os.environ, PYTHONPATH=os.getcwd(), TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, "-c", DETERMINISM_SCRIPT, str(threads)], env=env,
                            capture_output=True, text=True, check=True)
    return result.stdout.split()


def test_bitwise_identical_across_runs_and_thread_counts():
    single, default = _run_determinism(1), _run_determinism(0)
    assert single == default, "the sums or the gradient depend on the number of threads"


def test_bitwise_identical_to_the_kernel_module(rng, on_cpu):
    """The op and the pybind11 module run the same kernels: same bits, any thread count."""
    kernels = load_module()
    labels, y_pred = make_case(rng, (2, 30, 31, 32), 3, ignore_index=255)
    op = fused.confusion_sums(labels, y_pred, sparse=True, from_logits=True,
                              activation="softmax", ignore_index=255)
    again = fused.confusion_sums(labels, y_pred, sparse=True, from_logits=True,
                                 activation="softmax", ignore_index=255)
    module = kernels.confusion_sums(y_pred.numpy(), labels, from_logits=True, ignore_index=255,
                                    num_threads=3)
    for a, b, c in zip(op, again, module):
        assert a.numpy().tobytes() == b.numpy().tobytes() == c.tobytes()


# ---- errors ----

def test_labels_out_of_range(rng, on_cpu):
    labels, y_pred = make_case(rng, (2, 3, 4), 2)
    labels[1, 2, 1] = 7
    with pytest.raises(ValueError, match=r"outside \[0, 2\)"):
        tfversky.tversky_loss(labels, y_pred, from_logits=True, implementation="fused")
    traced = tf.function(lambda y: tfversky.tversky_loss(labels, y, from_logits=True,
                                                         implementation="fused"))
    with pytest.raises(tf.errors.InvalidArgumentError, match="outside"):
        traced(y_pred)
    # The op guards itself too, when called directly.
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"labels holds 7 at sample 1, voxel 9, outside \[0, 2\).*ignore_index"):
        fused.confusion_sums(labels, y_pred, sparse=True, from_logits=True,
                             activation="softmax", ignore_index=None)
    zeros = tf.zeros((2, 2))
    with pytest.raises(tf.errors.InvalidArgumentError, match="labels holds 7"):
        _loader.load().tfversky_fused_tversky_sums_grad(y_pred, labels, zeros, zeros, zeros,
                                                        from_logits=True)


def test_mismatched_shapes(rng, on_cpu):
    labels, y_pred = make_case(rng, (2, 3, 4), 2)
    with pytest.raises(ValueError, match="Shape mismatch"):
        tfversky.tversky_loss(labels[:, :, :3], y_pred, implementation="fused")
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"does not match y_pred shape"):
        fused.confusion_sums(labels[:, :, :3], y_pred, sparse=True, from_logits=False,
                             activation="softmax", ignore_index=None)
    library = _loader.load()
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError), match="Tsum must be float"):
        tf.function(lambda y: library.tfversky_fused_tversky_sums(
            y, labels, Tsum=tf.float64))(y_pred)
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError),
                       match=r"upstream gradients must have shape \(batch, classes\)"):
        tf.function(lambda y: library.tfversky_fused_tversky_sums_grad(
            y, labels, tf.zeros((2, 3)), tf.zeros((2, 3)), tf.zeros((2, 3))))(y_pred)


@pytest.mark.parametrize("classes, activation", [(2, "softmax"), (1, "sigmoid"), (3, "softmax")])
def test_nan_logit_at_an_ignored_voxel_raises_on_every_path(rng, on_cpu, classes, activation):
    """0 * NaN: the sums are NaN, so the loss's check raises (in a graph), for the fused op as
    for the pure sums. The binary CPU kernels used to drop it, then wrote NaN in the backward."""
    labels, y_pred = make_case(rng, (2, 3, 4, 5), classes, activation=activation,
                               ignore_index=255)
    labels[1, 2, 3, 4] = 255
    y = y_pred.numpy()
    y[1, 2, 3, 4, classes - 1] = np.nan
    sums = fused.confusion_sums(labels, y, sparse=True, from_logits=True, activation=activation,
                                ignore_index=255)
    assert all(np.isnan(s.numpy()[1]).all() for s in sums)
    for implementation in ("fused", "tf"):
        traced = tf.function(lambda y, implementation=implementation: tfversky.tversky_loss(
            labels, y, from_logits=True, activation=activation, ignore_index=255,
            implementation=implementation))
        with pytest.raises(tf.errors.InvalidArgumentError, match="not finite"):
            traced(tf.constant(y))


def test_too_many_classes(rng, monkeypatch):
    monkeypatch.setattr(fused, "_warned", set())
    labels, y_pred = make_case(rng, (1, 2, 3), 65)
    with pytest.raises(ValueError, match="at most 64"):
        tfversky.tversky_loss(labels, y_pred, implementation="fused")
    with pytest.warns(RuntimeWarning, match="at most 64"):
        auto = tfversky.tversky_loss(labels, y_pred, implementation="auto")
    np.testing.assert_array_equal(auto, tfversky.tversky_loss(labels, y_pred, implementation="tf"))


def test_op_suggests_the_tf_implementation_only_for_too_many_classes(rng, on_cpu):
    library = _loader.load()
    labels, y_pred = make_case(rng, (1, 2, 3), 1, activation="sigmoid")
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match="softmax needs at least 2 channels; use sigmoid") as error:
        library.tfversky_fused_tversky_sums(y_pred, labels, Tsum=tf.float32, from_logits=True,
                                            activation="softmax")
    assert "implementation='tf'" not in str(error.value)
    labels, y_pred = make_case(rng, (1, 2, 3), 65)
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"must be in \[1, 64\].*Use implementation='tf' for more classes"):
        library.tfversky_fused_tversky_sums(y_pred, labels, Tsum=tf.float32)


# ---- loader ----

def test_missing_library_message(tmp_path):
    with pytest.raises(fused.FusedOpUnavailableError) as error:
        _loader.find_library([tmp_path / "_tfversky_ops.so"])
    message = str(error.value)
    assert f"{tmp_path / '_tfversky_ops.so'}: not found" in message
    assert f"TensorFlow {tf.__version__}" in message
    assert "pip install --no-build-isolation -e ." in message
    assert "implementation='tf'" in message


def test_mismatched_library_message(tmp_path):
    stale = tmp_path / "stale.so"
    stale.write_bytes(b"\x7fELF...tfversky-build-info:version=0.0.1;tensorflow=2.99.0;cuda=\0...")
    other = tmp_path / "other.so"
    other.write_bytes(b"\x7fELF not ours")
    with pytest.raises(fused.FusedOpUnavailableError) as error:
        _loader.find_library([stale, other])
    message = str(error.value)
    assert f"built for TensorFlow 2.99.0, running {tf.__version__}" in message
    assert "not a tfversky op library" in message


def test_environment_variable_overrides_the_search(monkeypatch, tmp_path):
    monkeypatch.setenv(_loader.ENV_LIBRARY, str(tmp_path / "mine.so"))
    assert _loader.search_paths() == [tmp_path / "mine.so"]


def test_auto_falls_back_with_one_warning_and_fused_raises(rng, monkeypatch, tmp_path):
    monkeypatch.setattr(_loader, "_cache", _loader._Cache())
    monkeypatch.setattr(fused, "_warned", set())
    monkeypatch.setenv(_loader.ENV_LIBRARY, str(tmp_path / "_tfversky_ops.so"))
    labels, y_pred = make_case(rng, (1, 4, 4), 2)
    assert not fused.is_available()
    with pytest.warns(RuntimeWarning, match="not available"):
        auto = tfversky.tversky_loss(labels, y_pred, implementation="auto")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tfversky.tversky_loss(labels, y_pred, implementation="auto")  # no second warning
    np.testing.assert_array_equal(auto, tfversky.tversky_loss(labels, y_pred, implementation="tf"))
    with pytest.raises(fused.FusedOpUnavailableError, match="not found"):
        tfversky.tversky_loss(labels, y_pred, implementation="fused")


def test_build_info_records_versions():
    info = fused.build_info()
    assert info["version"] == tfversky.__version__
    assert info["tensorflow"] == tf.__version__
    assert _loader.read_build_info(info["path"]) == {k: v for k, v in info.items() if k != "path"}


# ---- dispatch: graphs, XLA, Keras ----

def test_in_xla_context():
    assert not fused.in_xla_context()
    assert not bool(tf.function(fused.in_xla_context)())
    assert bool(tf.function(fused.in_xla_context, jit_compile=True)())
    inner = tf.function(fused.in_xla_context)
    assert bool(tf.function(lambda: inner(), jit_compile=True)())


def _op_types(function, *args):
    graph = function.get_concrete_function(*args).graph
    return {op.type for op in graph.get_operations()}


def test_auto_uses_the_op_in_graphs_and_under_xla(rng):
    labels, y_pred = make_case(rng, (2, 4, 5), 2)

    def loss_and_gradient(y):
        with tf.GradientTape() as tape:
            tape.watch(y)
            loss = tf.reduce_sum(tfversky.tversky_loss(labels, y, from_logits=True))
        return loss, tape.gradient(loss, y)

    graph = _op_types(tf.function(loss_and_gradient), y_pred)
    assert {"Tfversky>FusedTverskySums", "Tfversky>FusedTverskySumsGrad"} <= graph
    xla = tf.function(loss_and_gradient, jit_compile=True)  # lowered: tests/tfversky/test_xla.py
    assert {"Tfversky>FusedTverskySums", "Tfversky>FusedTverskySumsGrad"} <= _op_types(xla, y_pred)
    expected = loss_and_gradient(y_pred)
    for a, b in zip(xla(y_pred), expected):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("jit_compile", [False, True])
def test_model_fit(jit_compile):
    """Training with the fused loss follows training with the pure loss step by step; with
    jit_compile=True, TverskyLoss(0.3, 0.7) runs the kernels inside XLA (no fallback
    warning)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 8, 8, 8, 1)).astype("float32")
    y = (x[..., 0] > 1.0).astype("float32")[..., None]
    histories = {}
    for implementation in ("fused", "tf"):
        keras.utils.set_random_seed(1)
        model = keras.Sequential([keras.Input((8, 8, 8, 1)),
                                  keras.layers.Conv3D(4, 3, padding="same", activation="relu"),
                                  keras.layers.Conv3D(2, 1)])
        model.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=jit_compile,
                      loss=tfversky.TverskyLoss(0.3, 0.7, from_logits=True,
                                                implementation=implementation))
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # no fallback, inside XLA too
            history = model.fit(x, y, batch_size=2, epochs=3, verbose=0, shuffle=False)
        histories[implementation] = history.history["loss"]
    assert np.isfinite(histories["fused"]).all()
    np.testing.assert_allclose(histories["fused"], histories["tf"], rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
def test_gpu_kernels_match_cpu(rng):
    for classes, activation in ((2, "softmax"), (4, "softmax"), (64, "softmax"), (1, "sigmoid")):
        labels, y_pred = make_case(rng, (2, 33, 34, 35), classes, activation=activation,
                                   ignore_index=255 if classes > 1 else None)
        options = dict(from_logits=True, activation=activation,
                       ignore_index=255 if classes > 1 else None)
        with tf.device("/CPU:0"):
            cpu = loss_and_grad(labels, y_pred, "fused", **options)
        with tf.device("/GPU:0"):
            gpu = loss_and_grad(labels, tf.identity(y_pred), "fused", **options)
        for a, b in zip(gpu, cpu):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
def test_gpu_bad_labels_give_nan(rng):
    """The CUDA kernels cannot raise: a bad label makes its sample's sums and its voxel's
    gradient NaN (which the loss's check on the sums then reports)."""
    labels, y_pred = make_case(rng, (2, 3, 4, 5), 2)
    labels[1, 2, 1, 3] = 7
    with tf.device("/GPU:0"):
        y = tf.identity(y_pred)
        with tf.GradientTape() as tape:
            tape.watch(y)
            sums = fused.confusion_sums(labels, y, sparse=True, from_logits=True,
                                        activation="softmax", ignore_index=None)
            total = tf.reduce_sum(sums[0]) + tf.reduce_sum(sums[2])
        grad = tape.gradient(total, y).numpy()
    for s in sums:
        assert np.isfinite(s.numpy()[0]).all() and np.isnan(s.numpy()[1]).all()
    assert np.isnan(grad[1, 2, 1, 3]).all()
    grad[1, 2, 1, 3] = 0
    assert np.isfinite(grad).all()
