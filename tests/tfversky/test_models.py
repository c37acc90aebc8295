"""The 3D U-Net: structure as the paper describes it, the input-size contract, options,
mixed precision, and saving/loading with the Tversky loss."""

import keras
import numpy as np
import pytest

from tfversky.losses import TverskyLoss
from tfversky.models import nearest_valid_sizes, size_multiple, unet3d


def _count(model, layer_type):
    return sum(isinstance(layer, layer_type) for layer in model.layers)


@pytest.fixture
def mixed_float16():
    keras.mixed_precision.set_global_policy("mixed_float16")
    yield
    keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("normalization", [None, "batch", "group", "instance"])
def test_output_shape_and_probabilities_sum_to_one(normalization, rng):
    model = unet3d(base_filters=4, depth=3, normalization=normalization, norm_groups=2,
                   dropout=0.2)
    volume = rng.normal(size=(2, 12, 16, 20, 3)).astype("float32")
    probs = model.predict(volume, verbose=0)
    assert probs.shape == (2, 12, 16, 20, 2)
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    assert probs.min() >= 0


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_layer_structure_matches_the_paper(depth):
    """Per level two 3x3x3 convs; depth-1 poolings, transposed convs and concatenations;
    features doubled per level; one 1x1x1 conv to the classes, then softmax."""
    base = 3
    model = unet3d((None, None, None, 3), num_classes=2, base_filters=base, depth=depth)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv3D)]
    assert len(convs) == 2 * depth + 2 * (depth - 1) + 1
    assert _count(model, keras.layers.MaxPooling3D) == depth - 1
    assert _count(model, keras.layers.Conv3DTranspose) == depth - 1
    assert _count(model, keras.layers.Concatenate) == depth - 1

    three = [conv for conv in convs if conv.kernel_size == (3, 3, 3)]
    assert all(conv.padding == "same" and conv.activation.__name__ == "relu" for conv in three)
    contracting = [conv.filters for conv in three[:2 * depth]]
    assert contracting == [base * 2 ** (i // 2) for i in range(2 * depth)]
    expanding = [conv.filters for conv in three[2 * depth:]]
    assert expanding == [base * 2 ** (i // 2) for i in reversed(range(2 * (depth - 1)))]
    for pool in (layer for layer in model.layers if isinstance(layer, keras.layers.MaxPooling3D)):
        assert pool.pool_size == (2, 2, 2) and pool.strides == (2, 2, 2)
    for up in (layer for layer in model.layers if isinstance(layer, keras.layers.Conv3DTranspose)):
        assert up.kernel_size == (2, 2, 2) and up.strides == (2, 2, 2)
    for level in range(depth - 1):  # skip features + upsampled features
        assert model.get_layer(f"concat{level}").output.shape[-1] == 2 * base * 2 ** level
    head = convs[-1]
    assert head.kernel_size == (1, 1, 1) and head.filters == 2
    assert model.layers[-1].activation.__name__ == "softmax"


def test_parameter_count_of_the_design_brief_network():
    """docs/model.md times depth 4, base 16 on the CPU: 1.40 M parameters."""
    assert unet3d(base_filters=16, depth=4).count_params() == 1_401_442


@pytest.mark.parametrize("final_activation, check", [
    (None, lambda out: out.min() < 0 or out.max() > 1),  # logits
    ("sigmoid", lambda out: 0 <= out.min() and out.max() <= 1),
])
def test_final_activation(final_activation, check, rng):
    model = unet3d(num_classes=1 if final_activation == "sigmoid" else 2, base_filters=2,
                   depth=2, final_activation=final_activation)
    out = model.predict(rng.normal(size=(1, 8, 8, 8, 3)) * 10, verbose=0)
    assert out.shape[-1] == model.output.shape[-1]
    assert check(out)
    assert model.layers[-1].name == ("logits" if final_activation is None else "probabilities")


def test_static_size_not_divisible_names_size_and_nearest_valid():
    with pytest.raises(ValueError, match=r"input_shape\[1\]=30 .* multiple of 4 .*depth=3.* "
                                         r"28 or 32"):
        unet3d((32, 30, 32, 3), depth=3)
    assert unet3d((32, 28, 36, 3), base_filters=2, depth=3).output.shape == (None, 32, 28, 36, 2)
    assert nearest_valid_sizes(30, 4) == (28, 32) and nearest_valid_sizes(2, 8) == (8,)
    assert size_multiple(1) == 1 and size_multiple(5) == 16


def test_dynamic_size_not_divisible_fails_at_call_as_documented():
    model = unet3d(base_filters=2, depth=3)
    with pytest.raises(ValueError, match="Concatenate"):
        model.predict(np.zeros((1, 6, 8, 8, 3), "float32"), verbose=0)


@pytest.mark.parametrize("kwargs, match", [
    (dict(input_shape=(8, 8, 3)), "input_shape"),
    (dict(input_shape=(8, 8, 8, None)), "channel count"),
    (dict(num_classes=0), "num_classes"),
    (dict(base_filters=2.5), "base_filters"),
    (dict(depth=0), "depth"),
    (dict(num_classes=1), "sigmoid"),
    (dict(final_activation="relu"), "final_activation"),
    (dict(normalization="layer"), "normalization"),
    (dict(normalization="group", base_filters=4, norm_groups=8), "norm_groups"),
    (dict(dropout=1.0), "dropout"),
])
def test_invalid_options_raise_naming_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        unet3d(**kwargs)


def test_mixed_float16_builds_trains_and_outputs_float32(mixed_float16, rng):
    model = unet3d((8, 8, 8, 3), base_filters=2, depth=2, normalization="batch")
    assert model.get_layer("enc0_conv1").compute_dtype == "float16"
    assert model.output.dtype == "float32"
    model.compile(optimizer="adam", loss=TverskyLoss(0.3, 0.7))
    x = rng.normal(size=(2, 8, 8, 8, 3)).astype("float32")
    y = (rng.random((2, 8, 8, 8)) < 0.2).astype("int32")
    loss = model.train_on_batch(x, y)
    assert np.isfinite(loss)
    probs = model.predict(x, verbose=0)
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-3)


# Keras's own saving code trips NumPy 2's copy-keyword deprecation; not ours to fix.
@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_saves_and_loads_with_tversky_loss_without_custom_objects(tmp_path, rng):
    model = unet3d(base_filters=2, depth=2, normalization="instance")
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=TverskyLoss(alpha=0.2, beta=0.8, gamma=0.75),
                  metrics=[keras.metrics.SparseCategoricalAccuracy()])
    x = rng.normal(size=(1, 8, 8, 8, 3)).astype("float32")
    y = (rng.random((1, 8, 8, 8)) < 0.2).astype("int32")
    model.train_on_batch(x, y)
    path = tmp_path / "model.keras"
    model.save(path)

    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.loss, TverskyLoss)
    assert (loaded.loss.alpha, loaded.loss.beta, loaded.loss.gamma) == (0.2, 0.8, 0.75)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0),
                               atol=1e-6)
    # The optimizer state came back too: training goes on from where it was.
    assert np.isfinite(loaded.train_on_batch(x, y)[0])
