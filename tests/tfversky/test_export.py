"""``tfversky export`` and ``export.open_archive`` (tfversky.export): an archive round-trips
(the same predictions), a missing or unfinished fold is refused, and an archive that could
write outside its folder or run code (``..``, an absolute path, a Lambda layer, a stray file,
an altered member) is refused before anything is written. The runs are made by hand in the
layout ``tfversky train --folds`` writes (the real one: tests/tfversky/test_train_cli.py)."""

import io
import json
import zipfile

import keras
import numpy as np
import pytest

from tfversky import arguments, cli, export, plan
from tfversky.models import unet3d

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _fold_run(folder, fold, num_folds=3, holdout=None, seed=0, threshold=0.5):
    """A finished run of test fold ``fold``: model.keras (a tiny U-Net with its plan and
    record) and results.json, as ``tfversky train --fold`` writes them."""
    folder.mkdir(parents=True)
    train = "+".join(f"fold{k}" for k in range(num_folds) if k not in (fold, holdout))
    record = {"dataset": {"name": "ms_lesions/synthetic_tiny", "version": "1.3.0",
                          "num_folds": num_folds, "digest": "0123456789abcdef",
                          "modalities": ["T1", "T2", "FLAIR"]},
              "recipe": {"fold": fold, "seed": seed, "alpha": 0.3, "beta": 0.7},
              "splits": {"train": train, "test": f"fold{fold}", "train_subjects": ["a", "b"],
                         "validation_subjects": ["c"], "test_subjects": [f"s{fold}"]}}
    keras.utils.set_random_seed(fold)
    model = plan.attach(unet3d(base_filters=2, depth=2),
                        plan.Plan(patch_size=8, threshold=threshold, record=record))
    model.save(folder / "model.keras")
    (folder / "results.json").write_text(json.dumps({
        "record": record, "selection": {"selected_epoch": 2},
        "versions": {"tfversky": "0.1.0"}, "pooled": {"dsc": 0.5}}))
    return model


def _cv_run(root, folds=(0, 1, 2), num_folds=3, holdout=None, thresholds=None):
    """A finished ``--folds`` run in ``root``: its models by fold."""
    models = {k: _fold_run(root / f"fold_{k}", k, num_folds, holdout,
                           threshold=(thresholds or {}).get(k, 0.5)) for k in folds}
    (root / "results.json").write_text(json.dumps({
        "cross_validation": {"num_folds": num_folds, "folds": list(folds),
                             "holdout_fold": holdout, "sample": "3 subjects (3 scans)"},
        "pooled": {"dsc": 0.6, "lesion_f1": 0.4}, "subject_mean": {"dsc": 0.55}}))
    return models


def test_an_export_round_trips(tmp_path):
    models = _cv_run(tmp_path / "cv", folds=(0, 1), holdout=2,
                     thresholds={0: 0.4, 1: 0.6})
    archive = tmp_path / "model.zip"
    card = export.export_run(tmp_path / "cv", archive)
    assert [m["file"] for m in card["members"]] == ["members/fold_0.keras",
                                                    "members/fold_1.keras"]
    assert card["not_trained_on"] == ["fold2"]  # the holdout fold: unseen by every member
    assert card["training_data"]["digest"] == "0123456789abcdef"
    assert card["scores"]["pooled"]["dsc"] == 0.6
    # The members chose their thresholds apart: the ensemble's is their mean, said so.
    assert card["operating_point"]["threshold"] == pytest.approx(0.5)
    assert card["operating_point"]["how_chosen"]["thresholds"] == [0.4, 0.6]
    with zipfile.ZipFile(archive) as opened:
        assert json.loads(opened.read("model_card.json")) == json.loads(json.dumps(card))
        assert "fold2" in opened.read("model_card.md").decode()
    unpacked = tmp_path / "unpacked"
    unpacked.mkdir()
    paths, shared = export.open_archive(archive, unpacked)
    assert [p.name for p in paths] == ["fold_0.keras", "fold_1.keras"]
    assert shared.threshold == pytest.approx(0.5) and shared.record == {}
    image = np.random.default_rng(0).normal(size=(1, 8, 8, 8, 3)).astype("float32")
    for path, original in zip(paths, models.values()):
        loaded = arguments.load_model_file(str(path))  # Keras's safe mode
        np.testing.assert_array_equal(loaded.predict(image, verbose=0),
                                      original.predict(image, verbose=0))
        assert plan.read_plan(path).record["splits"]["test"] == \
            plan.read_plan(original).record["splits"]["test"]
    # Never over an existing file without --overwrite; with it, replaced whole.
    with pytest.raises(export.ArchiveError, match="exists: pass --overwrite"):
        export.export_run(tmp_path / "cv", archive)
    export.export_run(tmp_path / "cv", archive, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cv", "model.zip", "unpacked"]


def test_a_single_run_exports_its_model(tmp_path):
    _fold_run(tmp_path / "run", 1, num_folds=2)
    card = export.export_run(tmp_path / "run", tmp_path / "one.zip")
    assert [m["file"] for m in card["members"]] == ["members/model.keras"]
    assert card["scores"]["what"] == "test split fold1"


@pytest.mark.parametrize("damage, message", [
    ("remove", "fold_1 is missing"),
    ("unfinish", "fold_1 is unfinished (no results.json)"),
])
def test_a_run_with_a_missing_fold_is_refused(damage, message, tmp_path, capsys):
    _cv_run(tmp_path / "cv")
    if damage == "remove":
        import shutil

        shutil.rmtree(tmp_path / "cv" / "fold_1")
    else:
        (tmp_path / "cv" / "fold_1" / "results.json").unlink()
    code = cli.main(["export", "--model", str(tmp_path / "cv"), "--out",
                     str(tmp_path / "m.zip")])
    lines = capsys.readouterr().err.splitlines()
    assert code == 2 and len(lines) == 1, lines
    assert message in lines[0] and "tfversky train --folds command" in lines[0], lines
    assert not (tmp_path / "m.zip").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_unfinished_or_unpooled_runs_are_refused(tmp_path):
    _fold_run(tmp_path / "cv" / "fold_0", 0)
    with pytest.raises(export.ArchiveError, match="unfinished cross-validation"):
        export.export_run(tmp_path / "cv", tmp_path / "m.zip")
    _cv_run(tmp_path / "stale", folds=(0, 1))
    _fold_run(tmp_path / "stale" / "fold_2", 2)  # finished after results.json pooled 0, 1
    with pytest.raises(export.ArchiveError, match=r"pools folds \[0, 1\], not every"):
        export.export_run(tmp_path / "stale", tmp_path / "m.zip")
    with pytest.raises(export.ArchiveError, match="must end in .zip"):
        export.export_run(tmp_path / "stale", tmp_path / "m.keras")


def _archive(tmp_path, entries):
    """A zip of ``entries`` ({name: bytes}) with a model card listing their SHA-256."""
    import hashlib

    card = {"members": [{"file": name, "sha256": hashlib.sha256(data).hexdigest()}
                        for name, data in entries.items() if name.endswith(".keras")]}
    path = tmp_path / "shared.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("model_card.json", json.dumps(card))
        archive.writestr("plan.json", json.dumps(plan.Plan(patch_size=8).to_dict()))
        for name, data in entries.items():
            archive.writestr(name, data)
    return path


def _keras_bytes(model, tmp_path):
    model.save(tmp_path / "m.keras")
    return (tmp_path / "m.keras").read_bytes()


@pytest.mark.parametrize("name, message", [
    ("../x.keras", "'../x.keras' (an absolute path, '..' or a link)"),
    ("members/../../x.keras", "(an absolute path, '..' or a link)"),
    ("/tmp/x.keras", "'/tmp/x.keras' (an absolute path"),
    ("members/run.py", "'members/run.py', which is not a .keras model"),
])
def test_an_archive_that_could_write_elsewhere_is_refused_before_extracting(name, message,
                                                                            tmp_path):
    model = plan.attach(unet3d(base_filters=2, depth=2), plan.Plan(patch_size=8))
    data = _keras_bytes(model, tmp_path)
    path = _archive(tmp_path, {"members/fold_0.keras": data, name: data})
    into = tmp_path / "into"
    into.mkdir()
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(export.ArchiveError, match=message.replace("(", r"\(").replace(
            ")", r"\)").replace(".", r"\.")):
        export.open_archive(path, into)
    assert not list(into.iterdir())  # nothing extracted, not even the good member
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_model_with_a_lambda_layer_is_refused(tmp_path):
    inputs = keras.Input((None, None, None, 3))
    shifted = keras.layers.Lambda(lambda x: x + 1.0, name="shift")(inputs)
    model = keras.Model(inputs, keras.layers.Conv3D(2, 1, activation="softmax")(shifted))
    data = _keras_bytes(model, tmp_path)
    path = _archive(tmp_path, {"members/fold_0.keras": data})
    into = tmp_path / "into"
    into.mkdir()
    with pytest.raises(export.ArchiveError, match=r"shift \(Lambda\).*refused"):
        export.open_archive(path, into)
    assert not list(into.iterdir())
    # And a run whose model has one is not exported.
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.keras").write_bytes(data)
    (run / "results.json").write_text("{}")
    with pytest.raises(export.ArchiveError, match=r"shift \(Lambda\)"):
        export.export_run(run, tmp_path / "m.zip")
    assert not (tmp_path / "m.zip").exists()


def test_an_altered_member_or_plan_is_refused(tmp_path):
    _cv_run(tmp_path / "cv", folds=(0, 1), holdout=2)
    good = tmp_path / "model.zip"
    export.export_run(tmp_path / "cv", good)
    with zipfile.ZipFile(good) as archive:
        entries = {info.filename: archive.read(info) for info in archive.infolist()}
    other = plan.attach(unet3d(base_filters=2, depth=2), plan.Plan(patch_size=8))
    for name, data, message in [
            ("members/fold_1.keras", _keras_bytes(other, tmp_path), "SHA-256 differs"),
            ("plan.json", json.dumps(plan.Plan(patch_size=16).to_dict()).encode(),
             "plan.json is not the members' shared plan")]:
        altered = tmp_path / "altered.zip"
        with zipfile.ZipFile(altered, "w") as archive:
            for entry, content in {**entries, name: data}.items():
                archive.writestr(entry, content)
        into = tmp_path / f"into_{len(message)}"
        into.mkdir()
        with pytest.raises(export.ArchiveError, match=message):
            export.open_archive(altered, into)
        assert not list(into.iterdir())


def test_code_layers_are_found_in_nested_models():
    config = {"class_name": "Functional", "config": {"layers": [
        {"class_name": "Functional", "config": {"name": "inner", "layers": [
            {"class_name": "Lambda", "config": {"name": "hidden"}}]}}]}}
    assert export.code_layers(config) == ["hidden (Lambda)"]
    assert export.code_layers({"class_name": "Conv3D", "config": {"name": "c"}}) == []


def test_check_keras_file_refuses_what_is_not_a_model():
    with pytest.raises(export.ArchiveError, match="not a .keras model"):
        export.check_keras_file(b"plain text", "x.keras")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("weights.h5", b"")
    with pytest.raises(export.ArchiveError, match="no readable config.json"):
        export.check_keras_file(buffer.getvalue(), "x.keras")
