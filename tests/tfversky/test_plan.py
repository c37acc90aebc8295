"""The plan inside a model's .keras file: round trips, defaults with a warning, bad plans."""

import warnings

import keras
import numpy as np
import pytest

from tfversky import plan
from tfversky.losses import TverskyLoss
from tfversky.metrics import DiceScore
from tfversky.models import unet3d
from tfversky.preprocessing import PAPER_GRID, ReferenceGrid

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

PLAN = plan.Plan(modalities=("FLAIR", "T1w"), grid=ReferenceGrid((32, 40, 48), (2.0, 2.5, 3.0)),
                 placement="registration", patch_size=(16, 16, 32), overlap=0.25,
                 threshold=0.4, loss=TverskyLoss(0.3, 0.7).get_config())


def _model(channels=2):
    model = unet3d(input_shape=(None, None, None, channels), base_filters=2, depth=2)
    model.compile(optimizer="adam", loss=TverskyLoss(0.3, 0.7), metrics=[DiceScore()])
    return model


def test_keras_round_trip_keeps_the_plan_and_the_weights(tmp_path):
    model = plan.attach(_model(), PLAN)
    assert model.compiled and isinstance(model.loss, TverskyLoss)
    model.save(tmp_path / "m.keras")  # a plain Keras save: nothing tfversky-specific
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert isinstance(loaded, plan.PlannedModel)
    assert loaded.plan == PLAN and loaded.plan.loss["beta"] == 0.7
    assert plan.read_plan(loaded) == PLAN
    assert plan.read_plan(tmp_path / "m.keras") == PLAN  # from the file, weights unread
    x = np.random.default_rng(0).normal(size=(1, 8, 8, 8, 2)).astype("float32")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0),
                               atol=1e-6)


def test_a_checkpoint_written_during_fit_keeps_the_plan(tmp_path):
    model = plan.attach(_model(), PLAN)
    x = np.zeros((2, 8, 8, 8, 2), "float32")
    y = np.zeros((2, 8, 8, 8), "int32")
    model.fit(x, y, epochs=1, verbose=0, callbacks=[
        keras.callbacks.ModelCheckpoint(str(tmp_path / "best.keras"))])
    assert plan.read_plan(tmp_path / "best.keras") == PLAN


def test_old_model_loads_with_the_defaults_and_one_warning(tmp_path):
    _model(3).save(tmp_path / "old.keras")
    loaded = keras.saving.load_model(tmp_path / "old.keras")
    for source in (tmp_path / "old.keras", loaded):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            found = plan.read_plan(source)
        assert [w.category for w in caught] == [plan.PlanWarning]
        assert "carries no plan" in str(caught[0].message)
        assert found.modalities == ("T1", "T2", "FLAIR") and found.grid == PAPER_GRID
        assert (found.placement, found.intensity_normalization, found.threshold) == (
            "brain_bbox", "zscore", 0.5)
        # Nothing records what it was trained on: it must not claim skull-stripped scans.
        assert found.skull_stripped is None


def test_a_planned_model_built_without_a_plan_still_warns(tmp_path):
    bare = _model(3)
    plan.PlannedModel(bare.inputs, bare.outputs).save(tmp_path / "none.keras")
    loaded = keras.saving.load_model(tmp_path / "none.keras", compile=False)
    assert loaded.plan is None
    with pytest.warns(plan.PlanWarning, match="carries no plan"):
        assert plan.read_plan(loaded) == plan.DEFAULT_PLAN


def test_a_plan_saved_before_the_rename_reads_its_normalization():
    """Plans saved as `normalization` (the z-score, not the U-Net's --normalization layers)
    still load, under the new name; a plan records the skull-stripping it was given."""
    stored = PLAN.to_dict()
    assert "normalization" not in stored and stored["intensity_normalization"] == "zscore"
    stored["normalization"] = stored.pop("intensity_normalization")
    assert plan.Plan.from_dict(stored) == PLAN
    raw = plan.Plan(skull_stripped=False)
    assert plan.Plan.from_dict(raw.to_dict()).skull_stripped is False
    assert plan.Plan.from_dict(plan.Plan(skull_stripped=True).to_dict()) != raw


def test_to_dict_is_json_and_names_the_orientation():
    stored = PLAN.to_dict()
    assert stored["grid"] == {"shape": [32, 40, 48], "spacing": [2.0, 2.5, 3.0],
                              "orientation": "RAS"}
    assert stored["modalities"] == ["FLAIR", "T1"]
    assert plan.Plan.from_dict(stored) == PLAN


@pytest.mark.parametrize("kwargs, match", [
    ({"modalities": ("T1", "T9@first")}, "Invalid channel name 'T9@first'"),
    ({"modalities": ("T1", "T1w")}, "more than once"),
    ({"placement": "atlas"}, "`placement`"),
    ({"intensity_normalization": "minmax"}, "`intensity_normalization`"),
    ({"skull_stripped": "yes"}, "`skull_stripped`"),
    ({"threshold": 1.0}, "`threshold`"),
    ({"overlap": 1.0}, "`overlap`"),
    ({"patch_size": (8, 8)}, "`patch_size`"),
    ({"clip_percentiles": (50, 10)}, "`clip_percentiles`"),
    ({"clip_percentiles": (1, 99, 100)}, "`clip_percentiles`"),
    ({"grid": (64, 64, 64)}, "`grid`"),
])
def test_invalid_plans(kwargs, match):
    with pytest.raises(ValueError, match=match):
        plan.Plan(**kwargs)


def test_attach_and_read_errors(tmp_path):
    with pytest.raises(ValueError, match="takes 3 input channel.*names 2 modalities"):
        plan.attach(_model(3), PLAN)
    with pytest.raises(ValueError, match="`plan`"):
        plan.attach(_model(2), {"modalities": ["T1"]})
    (tmp_path / "x.keras").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a .keras archive"):
        plan.read_plan(tmp_path / "x.keras")
    with pytest.raises(ValueError, match="fields \\['future'\\].*upgrade"):
        plan.Plan.from_dict({**PLAN.to_dict(), "future": 1})
