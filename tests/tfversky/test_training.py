"""Validation split, whole-volume validation, model selection, resume, TensorBoard images."""

import json
import math
import os
import pathlib
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfversky import training
from tfversky.models import unet3d

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _volume(seed=0, size=8, subject="s1"):
    rng = np.random.default_rng(seed)
    label = np.zeros((size,) * 3, np.uint8)
    label[2:5, 2:6, 3:6] = 1
    image = (rng.normal(size=(size,) * 3 + (3,)) + 2.0 * label[..., None]).astype(np.float32)
    return {"image": image, "label": label, "subject": subject}


class Scripted:
    """A fake predictor: at its n-th call it finds fraction ``found[n]`` of the lesion voxels
    (and nothing else), so the validation DSC is about 2 f / (1 + f): a scripted metric."""

    def __init__(self, found, volume):
        self.found, self.volume, self.calls = list(found), volume, 0

    def __call__(self, model, image):
        np.testing.assert_array_equal(image, self.volume["image"])
        lesion = np.flatnonzero(self.volume["label"])
        probs = np.zeros(self.volume["label"].size, np.float32)
        probs[lesion[:round(self.found[self.calls] * lesion.size)]] = 0.9
        self.calls += 1
        probs = probs.reshape(self.volume["label"].shape)
        return np.stack([1 - probs, probs], -1)


def _dsc(found, lesions=36):
    """The DSC of Scripted's prediction on _volume()'s 36 lesion voxels."""
    hits = round(found * lesions)
    return 2 * hits / (hits + lesions)


def _tiny_model(seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((None, None, None, 3)),
                              keras.layers.Conv3D(2, 1, activation="softmax")])
    model.compile(keras.optimizers.Adam(0.05), "sparse_categorical_crossentropy")
    return model


def _train_data():
    volume = _volume(seed=1)
    return volume["image"][None], volume["label"][None]


class WeightsPerEpoch(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.weights = {}

    def on_epoch_end(self, epoch, logs=None):
        self.weights[epoch + 1] = [w.copy() for w in self.model.get_weights()]


def _same_weights(model_path, weights):
    loaded = keras.models.load_model(model_path).get_weights()
    return all(np.array_equal(a, b) for a, b in zip(loaded, weights))


def test_selection_picks_the_best_validation_epoch_not_the_lowest_training_loss(tmp_path):
    volume = _volume()
    found = [0.5, 0.9, 0.6, 0.7]  # best validation at epoch 2
    validation = training.ValidationCallback([volume], tmp_path, predict=Scripted(found, volume))
    recorder = WeightsPerEpoch()
    model = _tiny_model()
    x, y = _train_data()
    history = model.fit(x, y, epochs=4, verbose=0, callbacks=[validation, recorder]).history
    # The training loss falls every epoch: selecting on it would take epoch 4.
    assert np.argmin(history["loss"]) == 3 and np.all(np.diff(history["loss"]) < 0)
    assert validation.selected_epoch == 2
    assert validation.best == pytest.approx(_dsc(0.9))
    np.testing.assert_allclose(history["val_dsc"], [_dsc(f) for f in found])
    np.testing.assert_allclose(history["val_sensitivity"], found, atol=0.02)
    assert _same_weights(tmp_path / "model.keras", recorder.weights[2])
    assert _same_weights(tmp_path / "last.keras", recorder.weights[4])
    state = json.loads((tmp_path / "validation.json").read_text())
    assert state["selected_epoch"] == 2 and [h["epoch"] for h in state["history"]] == [1, 2, 3, 4]
    assert state["history"][1]["val_dsc"] == pytest.approx(_dsc(0.9))


def _history(values, monitor="val_dsc"):
    return [{"epoch": e, monitor: v} for e, v in enumerate(values, 1)]


@pytest.mark.parametrize("values, alpha, expected", [
    # Noisy plateau (issue 22's curve): best takes the spike, ema the smoothed plateau.
    ([0.82, 0.89, 0.92, 0.91, 0.90, 0.90, 0.82, 0.89, 0.90], 0.5,
     {"last": 9, "best": 3, "ema": 6}),
    # Steadily rising: every rule takes the last epoch.
    ([0.1, 0.2, 0.3, 0.4], 0.9, {"last": 4, "best": 4, "ema": 4}),
    # A late spike, smoothed away: ema keeps the early plateau (the first of equals).
    ([0.8, 0.8, 0.5, 0.95, 0.4], 0.5, {"last": 5, "best": 4, "ema": 1}),
    # An undefined metric (NaN) is skipped, never selected.
    ([math.nan, 0.5, math.nan], 0.9, {"last": 3, "best": 2, "ema": 2}),
    ([math.nan, math.nan], 0.9, {"last": 2, "best": None, "ema": None}),
    # alpha 0: no smoothing, ema is best.
    ([0.3, 0.7, 0.6], 0.0, {"last": 3, "best": 2, "ema": 2}),
])
def test_each_rule_picks_its_epoch_on_a_scripted_curve(values, alpha, expected):
    chosen = training.select_epochs(_history(values), ema_alpha=alpha)
    assert {rule: chosen[rule]["epoch"] for rule in training.SELECTION_RULES} == expected
    smooth = training.smoothed(values, alpha)
    if expected["ema"] is not None:
        assert chosen["ema"]["score"] == pytest.approx(smooth[expected["ema"] - 1])
        assert chosen["best"]["score"] == pytest.approx(values[expected["best"] - 1])


def test_select_epochs_min_mode_min_delta_waiting_and_restart():
    history = _history([0.5, 0.4, 0.45, 0.39, 0.6], monitor="val_f2")
    chosen = training.select_epochs(history, "val_f2", mode="min", min_delta=0.02)
    assert chosen["best"]["epoch"] == 2 and chosen["waiting"] == 3  # 0.39 is within 0.02
    # A rule restarted after epoch 3 (its checkpoint was of an epoch trained again).
    restarted = training.select_epochs(history, "val_f2", mode="min", min_delta=0.02,
                                       since={"best": 3})
    assert restarted["best"]["epoch"] == 4 and restarted["waiting"] == 1


def test_one_run_keeps_the_model_of_every_rule(tmp_path):
    volume = _volume()
    found = [0.5, 0.9, 0.8, 0.6, 0.5]  # best 2; smoothed (alpha 0.5) best at 3
    chosen = training.select_epochs(_history([_dsc(f) for f in found]), ema_alpha=0.5)
    assert (chosen["best"]["epoch"], chosen["ema"]["epoch"]) == (2, 3)
    recorder = WeightsPerEpoch()
    validation = training.ValidationCallback([volume], tmp_path, select="ema", ema_alpha=0.5,
                                             predict=Scripted(found, volume))
    _tiny_model().fit(*_train_data(), epochs=5, verbose=0, callbacks=[validation, recorder])
    assert validation.selected_epoch == 3 and validation.best == pytest.approx(_dsc(0.9))
    for name, epoch in (("best", 2), ("ema", 3), ("last", 5), ("model", 3)):
        assert _same_weights(tmp_path / f"{name}.keras", recorder.weights[epoch]), name
    state = training.read_state(tmp_path)
    assert state["select"] == "ema" and state["selected_epoch"] == 3
    assert {rule: state["rules"][rule]["epoch"] for rule in state["rules"]} == \
        {"last": 5, "best": 2, "ema": 3}
    assert state["rules"]["last"]["score"] == pytest.approx(_dsc(0.5))


def test_select_last_makes_model_keras_the_last_epoch(tmp_path):
    volume = _volume()
    recorder = WeightsPerEpoch()
    validation = training.ValidationCallback([volume], tmp_path, select="last",
                                             predict=Scripted([0.9, 0.5, 0.6], volume))
    _tiny_model().fit(*_train_data(), epochs=3, verbose=0, callbacks=[validation, recorder])
    assert validation.selected_epoch == 3
    assert _same_weights(tmp_path / "model.keras", recorder.weights[3])
    assert _same_weights(tmp_path / "best.keras", recorder.weights[1])


def test_val_every_validates_every_nth_and_the_last_epoch_and_keeps_csv_columns(tmp_path):
    volume = _volume()
    predict = Scripted([0.2, 0.4, 0.8], volume)
    validation = training.ValidationCallback([volume], tmp_path, val_every=2, predict=predict)
    csv = keras.callbacks.CSVLogger(str(tmp_path / "log.csv"))
    history = _tiny_model().fit(*_train_data(), epochs=5, verbose=0,
                                callbacks=[validation, csv]).history
    assert [h["epoch"] for h in validation.history] == [2, 4, 5]
    assert np.isnan(history["val_dsc"][0]) and np.isnan(history["val_dsc"][2])
    assert validation.selected_epoch == 5
    header = (tmp_path / "log.csv").read_text().splitlines()[0].split(",")
    assert set(training.VALIDATION_METRICS) <= set(header)


def test_early_stopping_after_patience_validations_without_improvement(tmp_path):
    volume = _volume()
    validation = training.ValidationCallback(
        [volume], tmp_path, patience=2, predict=Scripted([0.5, 0.8, 0.7, 0.6, 0.9, 0.9], volume))
    history = _tiny_model().fit(*_train_data(), epochs=6, verbose=0,
                                callbacks=[validation]).history
    assert len(history["loss"]) == 4
    assert validation.stopped_epoch == 4 and validation.selected_epoch == 2
    assert json.loads((tmp_path / "validation.json").read_text())["stopped_epoch"] == 4


class KillAt(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise KeyboardInterrupt("killed")


def test_resume_keeps_the_validation_history_and_the_best(tmp_path):
    volume = _volume()
    x, y = _train_data()

    def callbacks(found, *extra):
        validation = training.ValidationCallback([volume], tmp_path,
                                                 predict=Scripted(found, volume))
        return validation, [keras.callbacks.BackupAndRestore(str(tmp_path / "backup")),
                            validation, *extra]

    first, first_callbacks = callbacks([0.9, 0.5])
    recorder = WeightsPerEpoch()
    with pytest.raises(KeyboardInterrupt):
        _tiny_model().fit(x, y, epochs=4, verbose=0, callbacks=first_callbacks + [recorder,
                                                                                  KillAt(2)])
    assert first.selected_epoch == 1
    # A validation written after epoch 3's end but before its backup: that epoch is trained
    # again, so the resumed run must drop it.
    state = json.loads((tmp_path / "validation.json").read_text())
    state["history"].append({"epoch": 3, **{m: 0.99 for m in training.VALIDATION_METRICS}})
    (tmp_path / "validation.json").write_text(json.dumps(state))

    second, second_callbacks = callbacks([0.6, 0.7])
    history = _tiny_model(seed=1).fit(x, y, epochs=4, verbose=0,
                                      callbacks=second_callbacks).history
    assert len(history["loss"]) == 2  # epochs 3 and 4 only
    assert [h["epoch"] for h in second.history] == [1, 2, 3, 4]
    np.testing.assert_allclose([h["val_dsc"] for h in second.history],
                               [_dsc(f) for f in (0.9, 0.5, 0.6, 0.7)])
    assert second.selected_epoch == 1 and second.best == pytest.approx(_dsc(0.9))
    assert _same_weights(tmp_path / "model.keras", recorder.weights[1])


def test_resume_after_a_kill_between_saving_the_best_and_the_backup(tmp_path):
    """Epoch 3 validated best and saved model.keras, then the kill came before its backup:
    epoch 3 is trained again, and the selection restarts there (the file no longer holds
    the earlier best), so model.keras is always the selected epoch."""
    volume = _volume()
    x, y = _train_data()

    def callbacks(found, *extra):
        validation = training.ValidationCallback([volume], tmp_path,
                                                 predict=Scripted(found, volume))
        return validation, [validation, *extra,
                            keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))]

    _, first_callbacks = callbacks([0.5, 0.9])
    with pytest.raises(KeyboardInterrupt):
        _tiny_model().fit(x, y, epochs=4, verbose=0, callbacks=first_callbacks + [KillAt(2)])
    state = json.loads((tmp_path / "validation.json").read_text())
    state["history"].append({"epoch": 3, **{m: 0.99 for m in training.VALIDATION_METRICS}})
    state.update(selected_epoch=3, best=0.99)
    state["rules"]["best"].update(epoch=3, score=0.99)
    (tmp_path / "validation.json").write_text(json.dumps(state))
    for name in ("best.keras", "model.keras"):  # the model of that lost epoch 3
        _tiny_model(seed=2).save(tmp_path / name)

    recorder = WeightsPerEpoch()
    second, second_callbacks = callbacks([0.6, 0.5], recorder)
    _tiny_model(seed=1).fit(x, y, epochs=4, verbose=0, callbacks=second_callbacks)
    assert [h["epoch"] for h in second.history] == [1, 2, 3, 4]
    assert second.selected_epoch == 3 and second.best == pytest.approx(_dsc(0.6))
    assert _same_weights(tmp_path / "model.keras", recorder.weights[3])


def test_resume_with_another_monitor_is_an_error(tmp_path):
    volume = _volume()
    validation = training.ValidationCallback([volume], tmp_path, predict=Scripted([0.5], volume))
    _tiny_model().fit(*_train_data(), epochs=1, verbose=0, callbacks=[validation])
    other = training.ValidationCallback([volume], tmp_path, monitor="val_apr",
                                        predict=Scripted([0.5], volume))
    with pytest.raises(ValueError, match="monitor='val_apr'.*same --monitor"):
        _tiny_model().fit(*_train_data(), epochs=1, verbose=0, callbacks=[other])


def _image_summaries(directory):
    tags = {}
    for path in pathlib.Path(directory).rglob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "images":
                    tags.setdefault(value.tag, []).append(event.step)
    return tags


def test_tensorboard_event_files_hold_overlays_and_the_pr_curve(tmp_path):
    """The real predictor (sliding windows) on a tiny U-Net, with Keras's TensorBoard."""
    volumes = [_volume(0, subject="s1"), _volume(1, subject="s2")]
    model = unet3d(base_filters=2, depth=2)
    model.compile("adam", "sparse_categorical_crossentropy")
    logs = tmp_path / "logs"
    validation = training.ValidationCallback(volumes, tmp_path, patch_size=8,
                                             tensorboard_dir=logs / "validation")
    history = model.fit(*_train_data(), epochs=2, verbose=0, callbacks=[
        validation, keras.callbacks.TensorBoard(str(logs), write_graph=False)]).history
    assert all(0 <= v <= 1 for v in history["val_dsc"] + history["val_apr"])
    tags = _image_summaries(logs)
    assert tags == {"validation/pr_curve": [1, 2], "validation/overlay/s1": [1, 2]}
    # Keras's scalars sit beside them: its TensorBoard writes val_dsc as "epoch_dsc" of the
    # validation run, in the same chart as a training metric named dsc.
    scalars = set()
    for path in (logs / "validation").rglob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            scalars |= {v.tag for v in event.summary.value}
    assert {"epoch_dsc", "epoch_apr", "epoch_f2", "epoch_sensitivity"} <= scalars


def test_split_subjects_is_seeded_and_by_subject():
    subjects = [f"s{k}" for k in range(10) for _ in range(2)]  # two scans per subject
    train, val = training.split_subjects(subjects, 0.3, seed=3)
    assert len(val) == 3 and len(train) == 7 and not set(train) & set(val)
    assert training.split_subjects(subjects, 0.3, seed=3) == (train, val)
    assert training.split_subjects(subjects, 3, seed=4) != (train, val)


def test_split_validation_keeps_each_subject_on_one_side():
    ds = tf.data.Dataset.from_tensor_slices({"subject": ["a", "b", "a", "c"],
                                             "scan": [0, 1, 2, 3]})
    train, val = training.split_validation(ds, ["a"])
    assert [int(e["scan"]) for e in train] == [1, 3]
    assert [int(e["scan"]) for e in val] == [0, 2]


@pytest.mark.parametrize("value, match", [
    (3, r"3 validation subject\(s\) would leave 2.*val_subjects <= 2.*val_subjects=3"),
    (0.8, r"4 validation subject\(s\) would leave 1"),
    (0, r"int >= 1.*val_subjects=0"),
    (1.5, r"\(0, 1\).*val_subjects=1.5"),
    (True, "val_subjects=True"),
])
def test_split_subjects_errors(value, match):
    with pytest.raises(ValueError, match=match):
        training.split_subjects(["a", "b", "c", "d", "e"], value)


@pytest.mark.parametrize("kwargs, match", [
    ({"monitor": "val_loss"}, r"`monitor`.*'val_loss' is not a logged.*val_dsc, val_sensitivity"),
    ({"mode": "best"}, r"`mode`.*'best'"),
    ({"val_every": 0}, r"`val_every`.*val_every=0"),
    ({"patience": 0}, r"`patience`.*patience=0"),
    ({"min_delta": -1}, r"`min_delta`"),
    ({"threshold": 1.5}, r"`threshold`"),
    ({"select": "first"}, r"`select`.*'last', 'best', 'ema'.*select='first'"),
    ({"ema_alpha": 1.0}, r"`ema_alpha`.*\[0, 1\).*ema_alpha=1.0"),
])
def test_callback_argument_errors(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        training.ValidationCallback([_volume()], tmp_path, **kwargs)


def test_callback_volume_errors(tmp_path):
    with pytest.raises(ValueError, match="no validation volumes"):
        training.ValidationCallback([], tmp_path)
    with pytest.raises(ValueError, match="element 0 must be a dict with `image`"):
        training.ValidationCallback([np.zeros((4, 4, 4, 3))], tmp_path)
    with pytest.raises(ValueError, match=r"image \(4, 4, 4, 3\) and label \(4, 4\)"):
        training.ValidationCallback([{"image": np.zeros((4, 4, 4, 3)),
                                      "label": np.zeros((4, 4))}], tmp_path)


WORKER = textwrap.dedent("""
    import json, os, sys
    import keras, numpy as np, tensorflow as tf
    sys.path.insert(0, {root!r}); sys.path.insert(0, {tests!r})
    from test_training import Scripted, _volume
    from tfversky import training

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    task = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    with strategy.scope():
        model = keras.Sequential([keras.Input((None, None, None, 3)),
                                  keras.layers.Conv3D(2, 1, activation="softmax")])
    volume = _volume()
    # Each worker's own predictions differ: alone, worker 1 would select epoch 4, never stop.
    found = {{0: [0.9, 0.5, 0.4, 0.3], 1: [0.1, 0.2, 0.3, 0.4]}}[task]
    callback = training.ValidationCallback([volume], sys.argv[1], patience=2,
                                           predict=Scripted(found, volume))
    callback.set_model(model)
    callback.set_params({{"epochs": 4}})
    callback.on_train_begin()
    for epoch in range(4):
        callback.on_epoch_begin(epoch)
        callback.on_epoch_end(epoch, {{}})
        if getattr(model, "stop_training", False):
            break
    callback.on_train_end()
    print("RESULT", json.dumps({{"selected": callback.selected_epoch,
                                "stopped": callback.stopped_epoch,
                                "dsc": [h["val_dsc"] for h in callback.history]}}))
""")


@pytest.mark.slow
def test_multi_worker_decisions_follow_the_chief(tmp_path, free_ports):
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(root=str(ROOT), tests=str(ROOT / "tests" / "tfversky")))
    workers = [f"localhost:{port}" for port in free_ports(2)]
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    processes = []
    for index in range(2):
        config = json.dumps({"cluster": {"worker": workers},
                             "task": {"type": "worker", "index": index}})
        processes.append(subprocess.Popen(
            [sys.executable, str(script), str(tmp_path / "run")],
            env={**env, "TF_CONFIG": config, "TF_CPP_MIN_LOG_LEVEL": "2"}, cwd=ROOT,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    try:
        outputs = [p.communicate(timeout=240)[0] for p in processes]
    finally:
        for p in processes:
            p.kill()
    results = []
    for p, output in zip(processes, outputs):
        assert p.returncode == 0, output[-3000:]
        results.append(json.loads(output.split("RESULT", 1)[1]))
    assert results[0] == results[1]
    assert results[0]["selected"] == 1 and results[0]["stopped"] == 3
    assert (tmp_path / "run" / "validation.json").exists()  # written by the chief alone
