"""Sliding-window inference.

What "equal to a direct prediction" can honestly mean: a network with context (the U-Net)
sees zero padding at a patch's border where the whole volume has tissue, so blended patches
differ from a whole-volume pass near patch borders by design. The tests therefore compare
exactly (1) with a network whose receptive field is one voxel, where any tiling must
reproduce the direct prediction everywhere, which checks the windows, padding, cropping and
weight normalisation; and (2) with the U-Net when one window covers the volume.
"""


import dataclasses
import re

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
    shapes.clear()  # mirroring: the eight mirrorings of each window in the same call
    predict_volume(model, np.ones((24, 16, 16, 3)), patch_size=16, overlap=0.5, batch_size=2,
                   mirror=True, progress=False)
    assert shapes == [(16, 16, 16, 16, 3)]  # 2 windows x 8 mirrorings


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
    (dict(patch_size=6), r"each a multiple of 4 \(the model's total downsampling\): 4 or 8 "
                         r"for 6\. Received: patch_size=6"),
    (dict(patch_size=(8, 6, 8)), r"4 or 8 for 6 \(axis 1\)"),
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


# --- The scan-to-mask path: segment, segment_on_grid, back_to_scan ---------------------------

import nibabel as nib  # noqa: E402

from tfversky import inference, io, metrics, plan, preprocessing  # noqa: E402

# A 160x192x160 mm grid of 2 mm voxels: small enough for seconds per scan.
SMALL_GRID = preprocessing.ReferenceGrid((80, 96, 80), (2.0, 2.0, 2.0))


def _flair_threshold_model(z=1.25, gain=8.0, model_plan=None):
    """Lesion probability = sigmoid(gain * (FLAIR z-score - z)) per voxel: a sharp stand-in
    for a trained network (phantom lesions are bright on FLAIR), with no training noise."""
    inputs = keras.Input((None, None, None, 3))
    conv = keras.layers.Conv3D(2, 1, activation="softmax")
    model = keras.Model(inputs, conv(inputs))
    kernel = np.zeros((1, 1, 1, 3, 2), "float32")
    kernel[0, 0, 0, 2, 1] = gain
    conv.set_weights([kernel, np.array([0.0, -gain * z], "float32")])
    return plan.attach(model, model_plan or plan.Plan(grid=SMALL_GRID))


@pytest.fixture(scope="module")
def phantom():
    """One phantom subject (tfds_ms.synth, 1.5 mm working resolution, high lesion load)."""
    from tfds_ms import synth

    subject = synth.synthesize_subject(synth.load_anatomy(1.5), 1, seed=0)
    return subject, preprocessing.brain_center(subject.images["t1"], subject.affine)


def _scan(phantom, spacing):
    """The phantom resampled onto an axis-aligned RAS scan of ``spacing`` mm, with its truth."""
    subject, centre = phantom
    spacing = np.asarray(spacing, float)
    shape = np.ceil(np.array([180.0, 215.0, 190.0]) / spacing).astype(int)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = centre - affine[:3, :3] @ ((shape - 1) / 2)
    images = {name: preprocessing.resample_to_grid(subject.images[name.lower()], subject.affine,
                                                   affine, shape)
              for name in ("T1", "T2", "FLAIR")}
    truth = preprocessing.resample_label(subject.lesion >= 0.5, subject.affine, affine, shape)
    return images, truth, affine


def _write(folder, images, affine):
    folder.mkdir(exist_ok=True)
    paths = {}
    for name, data in images.items():
        paths[name] = str(folder / f"{name}.nii.gz")
        nib.save(nib.Nifti1Image(np.asarray(data, np.float32), affine), paths[name])
    return paths


def _reorient(data, affine, codes):
    transform = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"),
                                                nib.orientations.axcodes2ornt(codes))
    return (nib.orientations.apply_orientation(data, transform),
            affine @ nib.orientations.inv_ornt_aff(transform, data.shape))


def _dsc(a, b):
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def test_five_voxel_orders_give_one_mask_in_world_space(phantom, tmp_path):
    """A pure reordering is lossless: at most 0.5 DSC points between orders, in world space
    (a 1.5 mm scan keeps this test fast; reordering does not depend on the voxel size)."""
    images, truth, affine = _scan(phantom, (1.5, 1.5, 1.5))
    model = _flair_threshold_model()
    masks = {}
    for codes in ("RAS", "LPS", "LAS", "PIR", "ASL"):
        reordered = {name: _reorient(data, affine, codes)[0] for name, data in images.items()}
        _, scan_affine = _reorient(truth, affine, codes)
        assert "".join(nib.aff2axcodes(scan_affine)) == codes
        result = inference.segment(model, _write(tmp_path / codes, reordered, scan_affine),
                                   tmp_path / f"{codes}.nii.gz")
        written = nib.load(tmp_path / f"{codes}.nii.gz")
        np.testing.assert_allclose(written.affine, scan_affine, atol=1e-6)
        masks[codes], ras_affine = io.to_ras(np.asarray(written.dataobj), written.affine)
        np.testing.assert_allclose(ras_affine, affine, atol=1e-6)  # back in RAS: same voxels
        assert result.lesion_count > 0
    for codes, mask in masks.items():
        assert _dsc(mask, masks["RAS"]) >= 0.995, codes
    assert _dsc(masks["RAS"], truth) > 0.8


@pytest.mark.slow
def test_three_voxel_sizes_meet_one_bound_against_their_own_truth(phantom, tmp_path):
    """1 mm isotropic, 0.9x0.9x3 mm and 1.2x1.2x2 mm: DSC >= 0.80 against the truth on each
    scan's own grid, and within 0.03 of each other (measured: 0.842, 0.841, 0.841)."""
    model = _flair_threshold_model()
    scores = []
    for spacing in ((1.0, 1.0, 1.0), (0.9, 0.9, 3.0), (1.2, 1.2, 2.0)):
        images, truth, affine = _scan(phantom, spacing)
        name = "x".join(map(str, spacing))
        result = inference.segment(model, _write(tmp_path / name, images, affine))
        assert result.mask.shape == truth.shape
        scores.append(_dsc(result.mask, truth))
    assert min(scores) >= 0.80, scores
    assert max(scores) - min(scores) <= 0.03, scores


def test_back_to_scan_interpolates_probabilities_then_thresholds():
    """A grid voxel at 0.4 between two at 0.6: interpolated probabilities cross 0.5 where a
    nearest-neighbour map of the thresholded mask would not."""
    probabilities = np.zeros((4, 4, 4), np.float32)
    probabilities[1, 1, 1], probabilities[2, 1, 1] = 0.6, 0.4
    grid_affine = np.diag([2.0, 2.0, 2.0, 1.0])
    on_scan, mask, count = inference.back_to_scan(probabilities, grid_affine, np.eye(4),
                                                  (8, 8, 8), threshold=0.5)
    assert on_scan[2, 2, 2] == pytest.approx(0.6) and on_scan[3, 2, 2] == pytest.approx(0.5)
    assert on_scan[4, 2, 2] == pytest.approx(0.4)
    assert mask[3, 2, 2] == 1 and mask[4, 2, 2] == 0 and count == 1


def test_segment_on_grid_is_the_reference_grid_stage_of_segment(phantom, tmp_path):
    """What evaluation on ms_lesions records runs: the same numbers as segment's own stage."""
    images, _, affine = _scan(phantom, (1.5, 1.5, 2.0))
    model = _flair_threshold_model()
    result = inference.segment(model, _write(tmp_path, images, affine))
    # The files hold float32 affines: compare with what segment read.
    stacked, reference = io.load_modalities(result.inputs)
    on_grid, grid_affine = inference.prepare_scan(stacked, reference.affine, model.plan)
    probabilities = inference.segment_on_grid(model, on_grid)
    _, mask, _ = inference.back_to_scan(probabilities, grid_affine, reference.affine,
                                        stacked.shape[:3], threshold=0.5)
    np.testing.assert_array_equal(mask, result.mask)
    np.testing.assert_allclose(result.grid_affine, grid_affine)


def test_registration_plan_needs_a_grid_placement():
    registered = plan.Plan(grid=SMALL_GRID, placement="registration")
    with pytest.raises(ValueError, match="rigid registration.*grid_affine"):
        inference.prepare_scan(np.ones((8, 8, 8, 3)), np.eye(4), registered)
    placed = np.diag([2.0, 2.0, 2.0, 1.0])
    out, grid_affine = inference.prepare_scan(
        np.ones((8, 8, 8, 3)), np.eye(4), registered, grid_affine=lambda *_: placed)
    assert out.shape == (*SMALL_GRID.shape, 3) and grid_affine is placed


def test_match_modalities_errors():
    default = plan.Plan()
    with pytest.raises(ValueError, match="given twice"):
        inference.match_modalities({"T1": "a", "T1w": "b", "T2": "c", "FLAIR": "d"}, default)
    with pytest.raises(ValueError, match="missing: T2"):
        inference.match_modalities({"T1": "a", "FLAIR": "d"}, default)
    with pytest.raises(ValueError, match="does not take PD"):
        inference.match_modalities({"T1": "a", "T2": "c", "FLAIR": "d", "PD": "e"}, default)


@pytest.mark.parametrize("normalization, dependent", [
    ("instance", True), ("group", True), ("batch", False), (None, False)])
def test_window_dependent_layers(normalization, dependent):
    model = unet3d(base_filters=4, depth=2, normalization=normalization, norm_groups=2)
    assert bool(inference.window_dependent_layers(model)) is dependent


def test_per_window_normalisation_runs_only_on_the_training_patch():
    model = unet3d(base_filters=2, depth=2, normalization="instance")
    volume = np.random.default_rng(0).normal(size=(16, 16, 16, 3)).astype(np.float32)
    trained_on_8 = plan.attach(model, plan.Plan(grid=SMALL_GRID, training_patch_size=8))
    direct = inference.segment_on_grid(trained_on_8, volume)  # the window: the training patch
    assert direct.shape == (16, 16, 16)
    np.testing.assert_allclose(inference.segment_on_grid(trained_on_8, volume, patch_size=8),
                               direct)
    with pytest.raises(ValueError, match="only on windows of its training patch 8x8x8, not "
                                         "16x16x16: it normalises per window"):
        inference.segment_on_grid(trained_on_8, volume, patch_size=16)
    # A plan whose window differs from its training patch: refused too.
    mismatched = plan.attach(model, plan.Plan(grid=SMALL_GRID, training_patch_size=8,
                                              patch_size=16))
    with pytest.raises(ValueError, match="training patch 8x8x8, not 16x16x16"):
        inference.segment_on_grid(mismatched, volume)
    # No training patch recorded: a warning that the window may not be the training one.
    unknown = plan.attach(model, plan.Plan(grid=SMALL_GRID, patch_size=8))
    with pytest.warns(plan.PlanWarning, match="does not record the patch it was trained on"):
        inference.segment_on_grid(unknown, volume)


def test_per_window_model_keeps_its_window_on_a_small_volume():
    # A volume smaller than the patch is padded to the whole window, never run on a smaller
    # window whose statistics the network did not see in training.
    model = unet3d(base_filters=2, depth=2, normalization="instance")
    volume = np.random.default_rng(1).normal(size=(6, 6, 6, 3)).astype(np.float32)
    probs = predict_volume(model, volume, patch_size=8, progress=False)
    padded = np.zeros((1, 8, 8, 8, 3), np.float32)
    padded[0, :6, :6, :6] = volume
    expected = np.asarray(model(padded))[0, :6, :6, :6]
    np.testing.assert_allclose(probs, expected, atol=1e-5)


def _blobs(seed, size=32):
    """A volume with bright cubes (the lesions) in noise, and their label."""
    rng = np.random.default_rng(seed)
    label = np.zeros((size,) * 3, np.uint8)
    for _ in range(6):
        corner = rng.integers(0, size - 4, 3)
        label[tuple(slice(c, c + int(rng.integers(2, 5))) for c in corner)] = 1
    image = rng.normal(size=(size,) * 3 + (3,)) + 3.0 * label[..., None]
    return image.astype(np.float32), label


def test_trained_model_without_window_statistics_changes_on_larger_windows():
    # The check: one trained model, the same volume, a larger window against the
    # training patch: DSC within 1 point, or the plan does not allow that window. Even
    # batch normalisation (no per-window statistics) moved by ~2 points here (zero-padded
    # window borders move), so no plan allows a window other than its training patch.
    import tfversky

    keras.utils.set_random_seed(0)
    volumes = [_blobs(seed) for seed in range(4)]
    rng = np.random.default_rng(0)

    def patches():
        while True:
            batch = [volumes[i] for i in rng.integers(0, 3, 4)]
            starts = rng.integers(0, 17, (4, 3))
            yield (np.stack([im[a:a + 16, b:b + 16, c:c + 16] for (im, _), (a, b, c)
                             in zip(batch, starts)]),
                   np.stack([lb[a:a + 16, b:b + 16, c:c + 16] for (_, lb), (a, b, c)
                             in zip(batch, starts)]))

    model = unet3d(input_shape=(None, None, None, 3), base_filters=4, depth=2,
                   normalization="batch")
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss=tfversky.TverskyLoss(0.3, 0.7, implementation="tf"))
    model.fit(patches(), steps_per_epoch=60, epochs=1, verbose=0)
    image, label = volumes[3]  # not trained on
    unchecked = plan.Plan(grid=SMALL_GRID)  # no training patch recorded: any window runs
    dsc = {window: metrics.evaluate(label == 1, inference.segment_on_grid(
        model, image, unchecked, patch_size=window))["dsc"] for window in (32, 16)}
    assert dsc[16] > 0.5, dsc  # a trained model, so the comparison means something
    recorded = plan.Plan(grid=SMALL_GRID, training_patch_size=16)
    print(f"DSC with 32^3 windows {dsc[32]:.3f}, with the 16^3 training patch {dsc[16]:.3f}")
    with pytest.raises(ValueError, match="moves the zero-padded borders"):
        inference.segment_on_grid(model, image, recorded, patch_size=32)
    assert inference.check_window(model, recorded) == (16, 16, 16)


# --- Ensembles, test-time mirroring and the operating point (issue 23) -----------------------

SCAN_SHAPE = (20, 24, 28)
TINY_GRID = preprocessing.ReferenceGrid((16, 16, 16), (2.0, 2.0, 2.0))


def _pointwise_planned(seed, model_plan=None, width=4):
    """A random network of 1x1x1 convolutions (each voxel alone) carrying ``model_plan``."""
    keras.utils.set_random_seed(seed)
    model, _ = _pointwise_model(layers=[keras.layers.Conv3D(width, 1, activation="tanh"),
                                        keras.layers.Conv3D(2, 1, activation="softmax")])
    return plan.attach(model, model_plan or plan.Plan(grid=TINY_GRID, patch_size=8))


def _mirror_symmetric_model(seed):
    """3x3x3 kernels equal to their own mirror images along each axis, zero padding: the
    network commutes with every flip, so mirroring can change nothing."""
    rng = np.random.default_rng(seed)
    inputs = keras.Input((None, None, None, 3))
    conv = keras.layers.Conv3D(4, 3, padding="same", activation="relu")
    head = keras.layers.Conv3D(2, 1, activation="softmax")
    model = keras.Model(inputs, head(conv(inputs)))
    kernel = rng.normal(size=(3, 3, 3, 3, 4)).astype("float32")
    for axis in range(3):
        kernel = (kernel + np.flip(kernel, axis)) / 2
    conv.set_weights([kernel, rng.normal(size=4).astype("float32")])
    return model


@pytest.fixture(scope="module")
def tiny_scans(tmp_path_factory):
    """T1, T2, FLAIR files of a 20x24x28 'brain' block of noise on 1x1x1.2 mm voxels."""
    folder = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    brain = np.zeros(SCAN_SHAPE, bool)
    brain[3:-3, 4:-4, 4:-4] = True
    affine = np.diag([-1.0, 1.0, 1.2, 1.0])
    paths = {}
    for name, mean in (("T1", 300.0), ("T2", 500.0), ("FLAIR", 200.0)):
        paths[name] = str(folder / f"{name}.nii.gz")
        nib.save(nib.Nifti1Image(np.where(brain, rng.normal(mean, 50, SCAN_SHAPE), 0.0)
                                 .astype("float32"), affine), paths[name])
    return paths


def test_ensemble_probability_is_the_mean_of_its_members_on_the_scans_grid(tiny_scans):
    members = [_pointwise_planned(seed) for seed in (1, 2, 3)]
    alone = [inference.segment(member, tiny_scans).probabilities for member in members]
    together = inference.segment(members, tiny_scans)
    assert together.probabilities.shape == SCAN_SHAPE
    # Averaged on the grid, mapped back once: linear interpolation of the mean is the mean
    # of the interpolations, up to float32 rounding.
    np.testing.assert_allclose(together.probabilities, np.mean(alone, axis=0), atol=1e-5)
    assert not np.allclose(alone[0], alone[1], atol=1e-3)  # the members differ


def test_mirroring_changes_nothing_for_a_mirror_symmetric_network(odd_volume):
    volume = odd_volume[:20, :24, :28]
    symmetric = _mirror_symmetric_model(0)
    # Several windows, the last flush with the end: each window is mirrored, not the volume.
    plain = predict_volume(symmetric, volume, patch_size=16, overlap=0.5, progress=False)
    mirrored = predict_volume(symmetric, volume, patch_size=16, overlap=0.5, mirror=True,
                              progress=False)
    np.testing.assert_allclose(mirrored, plain, atol=1e-5)
    # The same network with one kernel left unsymmetric: mirroring changes its output, so
    # the comparison above can fail.
    lopsided = _mirror_symmetric_model(0)
    conv = lopsided.layers[1]
    kernel, bias = conv.get_weights()
    kernel[0] += 1.0
    conv.set_weights([kernel, bias])
    changed = np.abs(predict_volume(lopsided, volume, patch_size=16, mirror=True,
                                    progress=False) -
                     predict_volume(lopsided, volume, patch_size=16, progress=False))
    assert changed.max() > 1e-2


def test_mirrorings_are_each_passes_flipped_back(odd_volume):
    """keep_mirrorings gives the eight passes; each is the network on the mirrored volume,
    flipped back (one window covers the volume here, so the windows cannot differ)."""
    volume = odd_volume[:16, :16, :16]
    model = unet3d(base_filters=2, depth=2)
    passes = predict_volume(model, volume, patch_size=16, mirror=True, keep_mirrorings=True,
                            progress=False)
    assert passes.shape == (8, 16, 16, 16, 2)
    for k, axes in enumerate(inference.MIRRORINGS):
        spatial = tuple(a - 1 for a in axes)
        expected = np.flip(model.predict(np.flip(volume, spatial)[None], verbose=0)[0], spatial)
        np.testing.assert_allclose(passes[k], expected, atol=1e-5)
    np.testing.assert_allclose(predict_volume(model, volume, patch_size=16, mirror=True,
                                              progress=False), passes.mean(0), atol=1e-6)
    with pytest.raises(ValueError, match="keep_mirrorings"):
        predict_volume(model, volume, keep_mirrorings=True, progress=False)


def test_uncertainty_is_the_spread_over_members_and_mirrorings(odd_volume):
    image = odd_volume[:16, :16, :16]
    a, b = _pointwise_planned(1), _pointwise_planned(2)
    pa, pb = (inference.segment_on_grid(m, image) for m in (a, b))
    mean, spread = inference.segment_on_grid([a, b], image, uncertainty=True)
    np.testing.assert_allclose(mean, (pa + pb) / 2, atol=1e-6)
    np.testing.assert_allclose(spread, np.abs(pa - pb) / 2, atol=1e-5)  # std of two values
    # A pointwise network commutes with mirroring: eight equal passes, no spread.
    _, alone = inference.segment_on_grid(a, image, tta=True, uncertainty=True)
    assert alone.max() < 1e-5
    with pytest.raises(ValueError, match="nothing to measure.*--tta"):
        inference.segment_on_grid(a, image, uncertainty=True)


def test_uncertainty_map_is_written_and_one_plain_member_is_refused(tiny_scans, tmp_path):
    a, b = _pointwise_planned(1), _pointwise_planned(2)
    result = inference.segment([a, b], tiny_scans, uncertainty_out=tmp_path / "u.nii.gz")
    written = nib.load(tmp_path / "u.nii.gz")
    assert written.shape == SCAN_SHAPE and written.get_data_dtype() == np.float32
    np.testing.assert_allclose(written.get_fdata(), result.uncertainty, atol=1e-6)
    assert result.uncertainty.max() > 0
    with pytest.raises(ValueError, match="nothing to measure"):
        inference.segment(a, tiny_scans, uncertainty_out=tmp_path / "v.nii.gz")
    assert not (tmp_path / "v.nii.gz").exists()


@pytest.mark.parametrize("field, value, shown", [
    ("modalities", ("T1", "FLAIR"), "modalities T1, FLAIR, member 1 T1, T2, FLAIR"),
    ("grid", preprocessing.ReferenceGrid((16, 16, 16), (1.0, 1.0, 1.0)),
     "grid 16x16x16 of 1x1x1 mm, member 1 16x16x16 of 2x2x2 mm"),
    ("placement", "registration", "placement 'registration'"),
    ("clip_percentiles", (1.0, 99.0), "clip_percentiles 1.0x99.0"),
    ("training_patch_size", 8, "training_patch_size 8x8x8, member 1 None"),
])
def test_members_with_different_plans_are_refused(field, value, shown):
    base = plan.Plan(grid=TINY_GRID, patch_size=8)
    other = dataclasses.replace(base, **{field: value})
    with pytest.raises(ValueError, match="do not share a plan: member 2 has " + re.escape(shown)):
        inference.ensemble_plan([base, other])


def test_members_operating_points_are_averaged_and_said_so():
    plans = [plan.Plan(threshold=t, min_lesion_mm3=v, operating_point={"criterion": "f2"})
             for t, v in ((0.4, 0.0), (0.6, 6.0))]
    merged = inference.ensemble_plan(plans)
    assert (merged.threshold, merged.min_lesion_mm3) == (0.5, 3.0)
    assert merged.operating_point["thresholds"] == [0.4, 0.6]
    assert "mean of the members" in inference.operating_point(merged)["source"]
    assert inference.ensemble_plan(plans[:1]) is plans[0]


def test_the_operating_point_comes_from_the_plan_unless_overridden(tmp_path):
    """Two bright FLAIR cubes, of about 350 and 30 mm^3: the plan's 60 mm^3 keeps one."""
    rng = np.random.default_rng(3)
    brain = np.zeros(SCAN_SHAPE, np.float32)
    brain[3:-3, 4:-4, 4:-4] = 1
    flair = brain * rng.normal(100, 5, SCAN_SHAPE)
    flair[5:12, 6:13, 6:12] += 200
    flair[14:17, 16:19, 18:21] += 200
    scans = {}
    for name, data in (("T1", brain * rng.normal(300, 5, SCAN_SHAPE)),
                       ("T2", brain * rng.normal(500, 5, SCAN_SHAPE)), ("FLAIR", flair)):
        scans[name] = str(tmp_path / f"{name}.nii.gz")
        nib.save(nib.Nifti1Image(data.astype("float32"), np.diag([1.0, 1.0, 1.2, 1.0])),
                 scans[name])
    chosen = plan.Plan(grid=TINY_GRID, patch_size=8, threshold=0.45, min_lesion_mm3=60.0,
                       operating_point={"criterion": "f2", "value": 0.8})
    model = _flair_threshold_model(z=2.0, model_plan=chosen)
    result = inference.segment(model, scans)
    assert (result.operating_point["threshold"], result.operating_point["min_lesion_mm3"]) \
        == (0.45, 60.0)
    assert result.operating_point["source"] == ("threshold 0.45 from the plan (chosen by f2 on "
                                                "validation), min lesion 60 mm^3 from the plan")
    _, before = metrics.remove_small_lesions(result.probabilities >= 0.45, 0, (1, 1, 1.2))
    expected, count = metrics.remove_small_lesions(result.probabilities >= 0.45, 60.0,
                                                   (1.0, 1.0, 1.2))
    np.testing.assert_array_equal(result.mask, expected)
    assert (before, count, result.lesion_count) == (2, 1, 1)
    given = inference.segment(model, scans, threshold=0.6, min_lesion_mm3=0)
    np.testing.assert_array_equal(given.mask, given.probabilities >= 0.6)
    assert given.lesion_count == 2
    assert given.operating_point["source"] == "threshold 0.6 given, min lesion 0 mm^3 given"
    with pytest.raises(ValueError, match="min_lesion_mm3"):
        inference.segment(model, scans, min_lesion_mm3=-1)
