"""Sliding-window inference.

What "equal to a direct prediction" can honestly mean: a network with context (the U-Net)
sees zero padding at a patch's border where the whole volume has tissue, so blended patches
differ from a whole-volume pass near patch borders by design. The tests therefore compare
exactly (1) with a network whose receptive field is one voxel, where any tiling must
reproduce the direct prediction everywhere, which checks the windows, padding, cropping and
weight normalisation; and (2) with the U-Net when one window covers the volume.
"""


import keras
import numpy as np
import pytest

from tfversky.inference import gaussian_weights, predict_volume
from tfversky.models import unet3d

ODD = (70, 90, 100)


def _pointwise_model(input_shape=(None, None, None, 3), layers=None):
    """Receptive field of one voxel: output at a voxel depends on that voxel only."""
    layers = layers or [keras.layers.Conv3D(6, 1, activation="tanh"),
                        keras.layers.Conv3D(2, 1, activation="softmax")]
    inputs = keras.Input(input_shape)
    x = inputs
    for layer in layers:
        x = layer(x)
    return keras.Model(inputs, x), layers


@pytest.fixture(scope="module")
def odd_volume():
    return np.random.default_rng(1).normal(size=(*ODD, 3)).astype("float32")


@pytest.mark.parametrize("patch_size, overlap", [(32, 0.5), ((24, 40, 36), 0.25), (48, 0.0)])
def test_tiling_equals_direct_prediction_for_pointwise_model(odd_volume, patch_size, overlap):
    model, _ = _pointwise_model()
    direct = model.predict(odd_volume[None], verbose=0)[0]
    probs = predict_volume(model, odd_volume, patch_size=patch_size, overlap=overlap,
                           batch_size=3, progress=False)
    assert probs.shape == (*ODD, 2) and probs.dtype == np.float32
    np.testing.assert_allclose(probs, direct, atol=1e-5)


def test_padding_equals_direct_prediction_for_pointwise_model(odd_volume):
    """A static 80^3 input forces padding on the 70 and 90 axes, and two windows on 100."""
    model, layers = _pointwise_model()
    static, _ = _pointwise_model((80, 80, 80, 3), layers)  # same weights
    probs = predict_volume(static, odd_volume, progress=False)
    np.testing.assert_allclose(probs, model.predict(odd_volume[None], verbose=0)[0], atol=1e-5)


def test_one_window_equals_direct_unet_prediction(odd_volume):
    model = unet3d(base_filters=2, depth=2)  # 70, 90, 100 are multiples of 2
    direct = model.predict(odd_volume[None], verbose=0)[0]
    # A larger patch shrinks to the volume: one window, no padding.
    probs = predict_volume(model, odd_volume, patch_size=128, progress=False)
    np.testing.assert_allclose(probs, direct, atol=1e-5)


def test_odd_size_unet_equals_direct_prediction_of_the_padded_volume(odd_volume):
    """69 x 89 x 99 is not valid for a depth-3 U-Net: predict_volume pads with 0 to
    72 x 92 x 100 and crops; the direct prediction fits only on that padded volume."""
    volume = odd_volume[:69, :89, :99]
    model = unet3d(base_filters=2, depth=3)
    padded = np.pad(volume, [(0, 3), (0, 3), (0, 1), (0, 0)])
    direct = model.predict(padded[None], verbose=0)[0, :69, :89, :99]
    probs = predict_volume(model, volume, patch_size=(72, 92, 100), progress=False)
    assert probs.shape == (69, 89, 99, 2)
    np.testing.assert_allclose(probs, direct, atol=1e-5)


def test_unet_windows_sum_to_one_and_logits_give_the_same_probabilities(odd_volume):
    volume = odd_volume[:40, :44, :36]
    logits_model = unet3d(base_filters=2, depth=3, final_activation=None)
    probs_model = keras.Model(logits_model.inputs,
                              keras.layers.Softmax()(logits_model.outputs[0]))
    from_logits = predict_volume(logits_model, volume, patch_size=16, from_logits=True,
                                 progress=False)
    from_probs = predict_volume(probs_model, volume, patch_size=16, progress=False)
    np.testing.assert_allclose(from_logits.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(from_logits, from_probs, atol=1e-5)


@pytest.mark.parametrize("overlap", [0.0, 0.5, 0.75])
def test_constant_model_gives_constant_output(overlap):
    bias = np.array([0.4, -0.3], "float32")
    head = keras.layers.Conv3D(2, 1, activation="softmax", kernel_initializer="zeros",
                               bias_initializer=keras.initializers.Constant(bias))
    model, _ = _pointwise_model(layers=[head])
    volume = np.random.default_rng(2).normal(size=(23, 37, 41, 3))
    probs = predict_volume(model, volume, patch_size=16, overlap=overlap, progress=False)
    expected = np.exp(bias) / np.exp(bias).sum()
    # Up to float32 rounding of the weighted sums (up to 64 windows per voxel at 0.75).
    np.testing.assert_allclose(probs, np.broadcast_to(expected, probs.shape), atol=1e-5)


def test_memory_is_bounded_by_the_batch_of_patches(monkeypatch):
    """The model only ever sees batches of `batch_size` patches, one call per batch."""
    model, _ = _pointwise_model()
    shapes = []
    predict = model.predict_on_batch
    monkeypatch.setattr(model, "predict_on_batch", lambda x: shapes.append(x.shape) or predict(x))
    predict_volume(model, np.ones((40, 30, 20, 3)), patch_size=16, overlap=0.5, batch_size=4,
                   progress=False)
    windows = 4 * 3 * 2  # starts 0, 8, 16, 24 | 0, 8, 14 | 0, 4
    assert shapes == [(4, 16, 16, 16, 3)] * (windows // 4)
    shapes.clear()  # a batch larger than the number of windows shrinks to it
    predict_volume(model, np.ones((20, 16, 16, 3)), patch_size=16, batch_size=8, progress=False)
    assert shapes == [(2, 16, 16, 16, 3)]


def test_progress_bar(capsys):
    model, _ = _pointwise_model()
    predict_volume(model, np.ones((8, 8, 8, 3)), patch_size=4, progress=True)
    assert "predict_volume" in capsys.readouterr().err


def test_gaussian_weights_peak_in_the_centre():
    weights = gaussian_weights((9, 8, 7))
    assert weights.shape == (9, 8, 7) and weights.dtype == np.float32
    assert weights[4, 3:5, 3].min() == weights.max() == 1.0
    np.testing.assert_allclose(weights, weights[::-1, ::-1, ::-1])
    assert weights.min() >= 1e-3


@pytest.mark.parametrize("kwargs, match", [
    (dict(volume=np.zeros((8, 8, 8))), r"volume\[..., None\]"),
    (dict(volume=np.zeros((8, 8, 8, 2))), "3 channel"),
    (dict(volume=np.full((8, 8, 8, 3), np.nan)), "NaN"),
    (dict(overlap=1.0), "overlap"),
    (dict(batch_size=0), "batch_size"),
    (dict(activation="relu"), "activation"),
    (dict(patch_size=(8, 8)), "patch_size"),
    (dict(patch_size=6), r"6 \(axis 0\) is not a multiple of 4.* 4 or 8"),
])
def test_invalid_arguments(kwargs, match):
    model = unet3d(base_filters=2, depth=3)
    kwargs = {"volume": np.zeros((8, 8, 8, 3)), **kwargs}
    with pytest.raises(ValueError, match=match):
        predict_volume(model, progress=False, **kwargs)


def test_patch_size_must_match_a_static_model():
    model, _ = _pointwise_model((8, 8, 8, 3))
    with pytest.raises(ValueError, match="fixed input size"):
        predict_volume(model, np.zeros((9, 9, 9, 3)), patch_size=4, progress=False)


def test_logits_without_from_logits_are_refused():
    model, _ = _pointwise_model(layers=[keras.layers.Conv3D(2, 1, bias_initializer="ones")])
    with pytest.raises(ValueError, match="from_logits=True"):
        predict_volume(model, np.full((4, 4, 4, 3), 5.0), progress=False)


# NIfTI helpers
