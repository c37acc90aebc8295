"""Training wiring: validation subjects, whole-volume validation, model selection, resume.

On small medical datasets a validation Dice computed over whole volumes (nnU-Net, the
MONAI tutorials) says how training goes; whether it should also choose the model depends
on how much validation there is: the maximum of a noisy curve is noise. nnU-Net predicts
with its final checkpoint and smooths its validation pseudo-Dice with an exponential moving
average; the paper tests the last epoch. This module gives ``model.fit`` what each takes:

* ``split_subjects`` / ``split_validation``: hold validation *subjects* out of the training
  folds (all scans of one subject on the same side), seeded;
* ``select_epochs``: the epoch each rule picks from a validation history (``last``,
  ``best`` on the monitored metric, ``ema``: best on its smoothed curve, ``smoothed``);
* ``ValidationCallback``: every ``val_every`` epochs, sliding-window inference on each
  validation volume, the paper's metrics pooled over them (``val_dsc``, ``val_sensitivity``,
  ``val_specificity``, ``val_f2``, ``val_apr``) added to the epoch's logs, the model of every
  rule saved (``best.keras``, ``ema.keras``, ``last.keras``; ``model.keras`` is the one
  ``select`` names), optional early stopping, TensorBoard images (FLAIR overlays, the PR
  curve), and a JSON state file that survives a resume.

Wiring (what ``tfversky train`` / ``examples/train_ms.py`` do)::

    train_ids, val_ids = training.split_subjects(subject_ids, val_subjects=0.2, seed=0)
    train_ds, val_ds = training.split_validation(volumes, val_ids)
    validation = training.ValidationCallback(
        data.iterate_volumes(val_ds), run_dir, val_every=5, monitor="val_dsc", select="ema")
    model.fit(patches, epochs=..., steps_per_epoch=..., callbacks=[
        validation,                       # before the loggers: they read its val_* logs
        training.EpochTimer(),            # each epoch's wall time, into the log
        keras.callbacks.CSVLogger(run_dir / training.LOG_FILE, append=True),
        keras.callbacks.TensorBoard(run_dir / "logs"),
        keras.callbacks.BackupAndRestore(run_dir / "backup")])  # last: see Resume
    training.read_state(run_dir)["selected_epoch"]  # run_dir / "model.keras" is that epoch
    training.read_state(run_dir)["rules"]  # each rule's epoch; best/ema/last.keras hold them

Resume: ``BackupAndRestore`` restores the weights and the epoch, not a checkpoint
callback's best value. ``ValidationCallback`` writes its history and each rule's epoch to
``validation.json`` after every validation and reads it back when training starts, keeping
the entries of the epochs before the one training resumes at (if a rule's model was saved
by an epoch trained again, that rule's selection restarts at that epoch, so that each saved
model is always its rule's epoch). With the backup last among
the callbacks, an epoch's log row and validation are on disk before its backup: a killed
run trains again only epochs whose records ``keep_epochs`` (the CSV log) and the callback
(``validation.json``) then drop. These two files, not Keras's in-process ``History``
(which holds the last process's epochs only), are the run's record (``read_log``,
``read_state``).

Distribution: every worker validates (the model calls inside are collective under
``MultiWorkerMirroredStrategy``), the metrics of replica 0 are broadcast to all
(``broadcast_from_first_replica``), so every worker takes the same save / stop decision and
none waits for a collective another skipped. Only the chief writes files.
"""

from __future__ import annotations

import io
import json
import csv
import math
import pathlib
import shutil
import time

import keras
import numpy as np
import tensorflow as tf

from tfversky import arguments, metrics, plotting
from tfversky._files import atomic_path, atomic_write_text
from tfversky.validation_rules import (  # noqa: F401  (training.X names them too)
    EMA_ALPHA, MIN_VALIDATION_LESIONS, MIN_VALIDATION_SUBJECTS, SELECTION_RULES,
    validation_shortfall)

VALIDATION_METRICS = ("val_dsc", "val_sensitivity", "val_specificity", "val_f2", "val_apr")
_MODES = ("max", "min")
STATE_FILE = "validation.json"
LOG_FILE = "training_log.csv"  # keras.callbacks.CSVLogger's, one row per epoch
EPOCH_SECONDS = "epoch_seconds"  # the log's column of each epoch's wall time (EpochTimer)


# --- validation subjects ----------------------------------------------------------------------


def split_subjects(subjects, val_subjects, seed: int = 0) -> tuple[list[str], list[str]]:
    """Splits subject ids into (training, validation), seeded; each id on one side only.

    Args:
        subjects: Subject ids, one per scan (repeats, e.g. a longitudinal subject's time
            points, count once).
        val_subjects: How many subjects validate: an int >= 1, or a fraction in (0, 1)
            (rounded, at least 1).
        seed: Seed of the draw. Defaults to 0.

    Returns:
        (training ids, validation ids), each sorted.

    Raises:
        ValueError: ``val_subjects`` not a positive int or a fraction in (0, 1), or more
            validation subjects than training subjects would remain.

    Example:

    >>> split_subjects(["a", "b", "c", "d", "d"], 1, seed=0)
    (['a', 'b', 'd'], ['c'])
    >>> split_subjects(["a", "b", "c", "d"], 0.5, seed=1)
    (['c', 'd'], ['a', 'b'])
    """
    unique = sorted({str(s) for s in subjects})
    if isinstance(val_subjects, bool) or not isinstance(val_subjects, (int, float, np.number)):
        raise ValueError(f"Invalid value for argument `val_subjects`: expected an int >= 1 or a "
                         f"fraction in (0, 1). Received: val_subjects={val_subjects!r}")
    if isinstance(val_subjects, (int, np.integer)):
        count = int(val_subjects)
        if count < 1:
            raise ValueError(f"Invalid value for argument `val_subjects`: expected an int >= 1 "
                             f"or a fraction in (0, 1). Received: val_subjects={val_subjects!r}")
    else:
        if not 0 < val_subjects < 1:
            raise ValueError(f"Invalid value for argument `val_subjects`: a fraction must lie "
                             f"in (0, 1). Received: val_subjects={val_subjects!r}")
        count = max(1, round(val_subjects * len(unique)))
    if count > len(unique) - count:
        raise ValueError(
            f"Invalid value for argument `val_subjects`: {count} validation subject(s) would "
            f"leave {len(unique) - count} for training out of {len(unique)}; validation may "
            f"not outnumber training. Use val_subjects <= {len(unique) // 2}. Received: "
            f"val_subjects={val_subjects!r}")
    order = np.random.default_rng(seed).permutation(len(unique))
    validation = sorted(unique[i] for i in order[:count])
    return sorted(set(unique) - set(validation)), validation


def split_validation(volumes: tf.data.Dataset, val_ids) -> tuple[tf.data.Dataset,
                                                                 tf.data.Dataset]:
    """(training, validation) datasets of ``volumes`` by their ``subject`` feature.

    Args:
        volumes: Dataset of dicts with a string ``subject`` (e.g. a ``ms_lesions`` split).
        val_ids: Subject ids to validate on (``split_subjects``).

    Example:

    >>> ds = tf.data.Dataset.from_tensor_slices({"subject": ["a", "b", "a"], "x": [1, 2, 3]})
    >>> train, val = split_validation(ds, ["a"])
    >>> [int(e["x"]) for e in train], [int(e["x"]) for e in val]
    ([2], [1, 3])
    """
    ids = tf.constant([str(i) for i in val_ids], tf.string)

    def held_out(element):
        return tf.reduce_any(tf.equal(element["subject"], ids))

    return (volumes.filter(lambda e: tf.logical_not(held_out(e))), volumes.filter(held_out))


# --- distribution -----------------------------------------------------------------------------


def is_chief(strategy=None) -> bool:
    """Whether this process writes files: the chief (or worker 0 without one), else True.

    Example:

    >>> is_chief(tf.distribute.get_strategy())
    True
    """
    strategy = strategy or tf.distribute.get_strategy()
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or resolver.task_type is None:
        return True
    return resolver.task_type in ("chief", "worker") and resolver.task_id == 0 and (
        resolver.task_type == "chief" or "chief" not in resolver.cluster_spec().as_dict())


def broadcast_from_first_replica(values, strategy=None) -> np.ndarray:
    """Replica 0's float64 ``values`` on every replica and worker (a no-op without one).

    An all-reduce sum in which only replica 0 contributes (NaN-safe: the others contribute
    exact zeros, not ``0 * value``). Under ``MultiWorkerMirroredStrategy`` replica 0 lives
    on the chief, so every worker gets the chief's numbers. Every worker must call it.

    Example:

    >>> broadcast_from_first_replica([0.5, float("nan")]).tolist()
    [0.5, nan]
    """
    values = np.asarray(values, np.float64)
    strategy = strategy or tf.distribute.get_strategy()
    if strategy.num_replicas_in_sync == 1:
        return values

    def first_only():
        context = tf.distribute.get_replica_context()
        mine = tf.constant(values)
        first = tf.equal(context.replica_id_in_sync_group, 0)
        return context.all_reduce(tf.distribute.ReduceOp.SUM,
                                  tf.where(first, mine, tf.zeros_like(mine)))

    result = strategy.run(tf.function(first_only))
    return strategy.experimental_local_results(result)[0].numpy()


# --- TensorBoard images -----------------------------------------------------------------------


def _png_image(draw) -> tf.Tensor:
    """(1, H, W, 4) uint8 image of a figure drawn by ``draw(buffer)`` (a plotting function)."""
    buffer = io.BytesIO()
    draw(buffer)
    return tf.image.decode_png(buffer.getvalue(), channels=4)[None]


# --- model selection --------------------------------------------------------------------------


def smoothed(values, alpha: float = EMA_ALPHA) -> list[float]:
    """The exponential moving average of a validation curve, as nnU-Net keeps it:
    ``s_1 = v_1``, ``s_k = alpha s_{k-1} + (1 - alpha) v_k``; a NaN value (an undefined
    metric) leaves the average as it was (NaN until a value is defined).

    Example:

    >>> smoothed([0.2, 0.6, float("nan"), 1.0], alpha=0.5)
    [0.2, 0.4, 0.4, 0.7]
    """
    average, curve = math.nan, []
    for value in values:
        if not math.isnan(value):
            average = value if math.isnan(average) else alpha * average + (1 - alpha) * value
        curve.append(average)
    return curve


def select_epochs(history, monitor: str = "val_dsc", mode: str = "max", min_delta: float = 0.0,
                  ema_alpha: float = EMA_ALPHA, since=None) -> dict:
    """The epoch each selection rule (``SELECTION_RULES``) picks from a validation history,
    and the score it picked it on.

    * ``last``: the last validated epoch (validation always runs at the last epoch);
    * ``best``: the first epoch whose ``monitor`` beat every earlier one by more than
      ``min_delta`` and was never beaten so since: the maximum of a noisy curve;
    * ``ema``: the same on the curve smoothed by ``smoothed(..., ema_alpha)``.

    Args:
        history: Validation entries, in epoch order: dicts with ``epoch`` and ``monitor``.
        monitor, mode, min_delta: As ``ValidationCallback``'s.
        ema_alpha: The running average's weight of its past, in [0, 1). Defaults to 0.9.
        since: ``{rule: epoch}``: the rule considers only later entries (a resumed run
            whose checkpoint of that rule holds an epoch trained again). Defaults to None.

    Returns:
        ``{rule: {"epoch": int or None, "score": float or None}}`` (None: no defined value),
        and ``"waiting"``: validations since the ``best`` epoch (what ``patience`` counts).

    Example:

    >>> history = [{"epoch": e, "val_dsc": v} for e, v in enumerate([0.5, 0.9, 0.6, 0.8], 1)]
    >>> chosen = select_epochs(history, ema_alpha=0.5)
    >>> {rule: chosen[rule]["epoch"] for rule in SELECTION_RULES}, chosen["waiting"]
    ({'last': 4, 'best': 2, 'ema': 4}, 2)
    """
    since = since or {}

    def better(value, than):
        if math.isnan(value):
            return False
        if than is None:
            return True
        return value > than + min_delta if mode == "max" else value < than - min_delta

    chosen = {"last": {"epoch": history[-1]["epoch"] if history else None,
                       "score": _defined(history[-1].get(monitor)) if history else None}}
    for rule in ("best", "ema"):
        kept = [e for e in history if e["epoch"] > since.get(rule, 0)]
        values = [math.nan if e.get(monitor) is None else float(e[monitor]) for e in kept]
        if rule == "ema":
            values = smoothed(values, ema_alpha)
        epoch = score = None
        waiting = 0  # validations since the last improvement
        for entry, value in zip(kept, values):
            if better(value, score):
                epoch, score, waiting = entry["epoch"], value, 0
            else:
                waiting += 1
        chosen[rule] = {"epoch": epoch, "score": score}
        if rule == "best":
            chosen["waiting"] = waiting
    return chosen


def _defined(value):
    return None if value is None or math.isnan(value) else float(value)


# --- the callback -----------------------------------------------------------------------------


class ValidationCallback(keras.callbacks.Callback):
    """Whole-volume validation, model selection, early stopping and TensorBoard images.

    Every ``val_every`` epochs (and at the last epoch), each validation volume is predicted
    whole (``predict``), and the paper's metrics, pooled over all validation voxels
    (``tfversky.metrics.Evaluator``), are added to the epoch's ``logs``
    (``VALIDATION_METRICS``; NaN on epochs without validation, so CSV columns stay put).

    One run keeps the model of every selection rule (``select_epochs``): ``best_path`` is
    saved when ``monitor`` improves, ``ema_path`` when its smoothed curve does, and
    ``last_path`` at the end of training; ``model_path`` is a copy of the one ``select``
    names (of the last epoch while that rule has no defined value). Put this callback
    *before* ``CSVLogger`` and ``TensorBoard`` in ``callbacks``: they read the logs it writes.

    Args:
        volumes: Validation volumes: an iterable of dicts with ``image`` (D, H, W, M) float
            and ``label`` (D, H, W) binary (e.g. ``tfversky.data.iterate_volumes``); read
            once into memory. An optional ``subject`` names the overlay images.
        run_dir: The run folder: the models and the state file ``validation.json`` go there.
        val_every: Validate every this many epochs. Defaults to 1.
        monitor: The metric that selects the model, one of ``VALIDATION_METRICS``.
            Defaults to ``"val_dsc"``.
        mode: ``"max"`` or ``"min"``: which way ``monitor`` improves. Defaults to "max".
        min_delta: An improvement must exceed this. Defaults to 0.
        patience: Stop after this many validations without improvement of ``monitor``.
            Defaults to None (no early stopping).
        select: The rule whose model ``model_path`` holds, one of ``SELECTION_RULES``.
            Defaults to ``"best"``.
        ema_alpha: The smoothed curve's weight of its past, in [0, 1). Defaults to 0.9.
        predict: ``predict(model, image) -> probabilities (D, H, W, C)``. Defaults to
            ``tfversky.inference.predict_volume`` with ``patch_size``, ``overlap``,
            ``batch_size``.
        patch_size, overlap, batch_size: The default predictor's sliding windows (see
            ``predict_volume``). Default to None (the model's or 128), 0.5, 1.
        threshold: Lesion where p >= threshold. Defaults to 0.5.
        model_path, best_path, ema_path, last_path: File names in ``run_dir``. Default to
            "model.keras", "best.keras", "ema.keras" and "last.keras".
        tensorboard_dir: Where the image summaries go (e.g. ``run_dir / "logs" /
            "validation"``, beside Keras's scalars). Defaults to None (no images).
        image_volumes: How many validation volumes get an overlay image. Defaults to 1.
        flair_channel: The FLAIR channel of ``image`` for the overlays. Defaults to -1
            (``ms_lesions`` stacks T1, T2, FLAIR).
        ignore_index: Label value left out of the validation metrics (nnU-Net's
            ``ignore``, e.g. 255), not scored as lesion. Defaults to None.

    Attributes:
        history: One dict per validation: ``epoch`` (1-based, as Keras prints it), the
            metrics and ``seconds`` (its wall time, inference and metrics).
        chosen: ``select_epochs``'s answer on ``history``: each rule's epoch and score.
        best: The best ``monitor`` value (None before any).
        selected_epoch: The epoch of the ``select`` rule (None before any).

    Raises:
        ValueError: ``monitor`` not a logged validation metric, ``mode`` not max/min,
            ``select`` not a rule, ``ema_alpha`` outside [0, 1), ``val_every`` < 1,
            ``patience`` < 1, no validation volumes, or a volume without ``image``/``label``
            (each named with its value and the fix).

    Example:

    >>> import tempfile
    >>> from tfversky.models import unet3d
    >>> model = unet3d(base_filters=2, depth=2)
    >>> model.compile("adam", "sparse_categorical_crossentropy")
    >>> image = np.random.default_rng(0).normal(size=(1, 8, 8, 8, 3)).astype("float32")
    >>> label = (image[..., 2] > 1).astype("uint8")
    >>> validation = ValidationCallback([{"image": image[0], "label": label[0]}],
    ...                                 tempfile.mkdtemp(), patch_size=8, select="last")
    >>> _ = model.fit(image, label, epochs=2, verbose=0, callbacks=[validation])
    >>> [h["epoch"] for h in validation.history], validation.selected_epoch
    ([1, 2], 2)
    """

    def __init__(self, volumes, run_dir, *, val_every: int = 1, monitor: str = "val_dsc",
                 mode: str = "max", min_delta: float = 0.0, patience: int | None = None,
                 select: str = "best", ema_alpha: float = EMA_ALPHA, predict=None,
                 patch_size=None, overlap: float = 0.5, batch_size: int = 1,
                 threshold: float = 0.5, model_path: str = "model.keras",
                 best_path: str = "best.keras", ema_path: str = "ema.keras",
                 last_path: str = "last.keras", tensorboard_dir=None, image_volumes: int = 1,
                 flair_channel: int = -1, ignore_index=None):
        super().__init__()
        if monitor not in VALIDATION_METRICS:
            raise ValueError(
                f"Invalid value for argument `monitor`: {monitor!r} is not a logged validation "
                f"metric. Use one of {', '.join(VALIDATION_METRICS)}. Received: "
                f"monitor={monitor!r}")
        if mode not in _MODES:
            raise ValueError(f"Invalid value for argument `mode`: expected one of {_MODES}. "
                             f"Received: mode={mode!r}")
        if select not in SELECTION_RULES:
            raise ValueError(f"Invalid value for argument `select`: expected one of "
                             f"{SELECTION_RULES}. Received: select={select!r}")
        ema_alpha = arguments.smoothing_weight(ema_alpha)  # --ema-alpha's rule
        for name, value, floor in (("val_every", val_every, 1), ("image_volumes",
                                                                  image_volumes, 0)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) \
                    or value < floor:
                raise ValueError(f"Invalid value for argument `{name}`: expected an int >= "
                                 f"{floor}. Received: {name}={value!r}")
        if patience is not None and (isinstance(patience, bool) or not isinstance(
                patience, (int, np.integer)) or patience < 1):
            raise ValueError(f"Invalid value for argument `patience`: expected None (no early "
                             f"stopping) or an int >= 1 (validations without improvement). "
                             f"Received: patience={patience!r}")
        if not np.isfinite(min_delta) or min_delta < 0:
            raise ValueError(f"Invalid value for argument `min_delta`: expected a finite "
                             f"number >= 0. Received: min_delta={min_delta!r}")
        self.volumes = [self._checked_volume(v, k) for k, v in enumerate(volumes)]
        if not self.volumes:
            raise ValueError("Invalid value for argument `volumes`: no validation volumes. "
                             "Hold out at least one subject (split_subjects).")
        self.run_dir = pathlib.Path(run_dir)
        self.val_every, self.monitor, self.mode = int(val_every), monitor, mode
        self.min_delta, self.patience = float(min_delta), patience
        self.select, self.ema_alpha = select, ema_alpha
        self.threshold = threshold
        metrics.Evaluator(threshold)  # validates the threshold now, not after an epoch
        self.predict = predict or self._predict_volume
        self._window = dict(patch_size=patch_size, overlap=overlap, batch_size=batch_size)
        self.model_path = self.run_dir / model_path
        self.paths = {"best": self.run_dir / best_path, "ema": self.run_dir / ema_path,
                      "last": self.run_dir / last_path}
        self.state_path = self.run_dir / STATE_FILE
        self.tensorboard_dir = None if tensorboard_dir is None else pathlib.Path(tensorboard_dir)
        self.image_volumes, self.flair_channel = int(image_volumes), flair_channel
        self.ignore_index = ignore_index
        self.history: list[dict] = []
        self.chosen = select_epochs([])
        self.stopped_epoch = None
        self._since = {}  # rule -> epoch: its checkpoint was of an epoch trained again
        self._resumed = False
        self._writer = None

    @property
    def best(self):
        return self.chosen["best"]["score"]

    @property
    def selected_epoch(self):
        return self.chosen[self.select]["epoch"]

    @staticmethod
    def _checked_volume(volume, index):
        if not isinstance(volume, dict) or "image" not in volume or "label" not in volume:
            raise ValueError(
                f"Invalid value for argument `volumes`: element {index} must be a dict with "
                f"`image` (D, H, W, M) and `label` (D, H, W), as tfversky.data.iterate_volumes "
                f"yields. Received: {type(volume).__name__} with keys "
                f"{sorted(volume) if isinstance(volume, dict) else None}")
        image, label = np.asarray(volume["image"], np.float32), np.asarray(volume["label"])
        if image.ndim != 4 or label.shape != image.shape[:3]:
            raise ValueError(
                f"Invalid value for argument `volumes`: element {index} has image "
                f"{image.shape} and label {label.shape}; expected (D, H, W, M) and (D, H, W).")
        return {"image": image, "label": label, "subject": str(volume.get("subject", index))}

    def _predict_volume(self, model, image):
        from tfversky import inference

        return inference.predict_volume(model, image, progress=False, **self._window)

    # -- state ---------------------------------------------------------------------------

    def _choose(self):
        self.chosen = select_epochs(self.history, self.monitor, self.mode, self.min_delta,
                                    self.ema_alpha, self._since)

    def _write_state(self):
        state = {"monitor": self.monitor, "mode": self.mode, "select": self.select,
                 "ema_alpha": self.ema_alpha, "best": self.best,
                 "selected_epoch": self.selected_epoch, "stopped_epoch": self.stopped_epoch,
                 "rules": {rule: {**self.chosen[rule], "path": self.paths[rule].name}
                           for rule in SELECTION_RULES},
                 "since": self._since, "model_path": self.model_path.name,
                 "history": self.history}
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # NaN is not JSON: null stands for "undefined" (e.g. sensitivity without lesions).
        atomic_write_text(self.state_path, json.dumps(_nan_to_none(state), indent=1))

    def _read_state(self, start_epoch: int):
        if not self.state_path.exists():
            return
        state = json.loads(self.state_path.read_text())
        recorded = (state.get("monitor"), state.get("mode"), state.get("select", "best"),
                    state.get("ema_alpha", self.ema_alpha))
        if recorded != (self.monitor, self.mode, self.select, self.ema_alpha):
            raise ValueError(
                f"{self.state_path} selects with monitor/mode/select/ema_alpha "
                f"{'/'.join(map(str, recorded))}, but this run with monitor={self.monitor!r}, "
                f"mode={self.mode!r}, select={self.select!r}, ema_alpha={self.ema_alpha}: "
                f"resume with the same --monitor and --select, or start in a new run folder.")
        # Epochs from start_epoch on are trained again (the kill came before their backup).
        self.history = [{k: math.nan if v is None else v for k, v in e.items()}
                        for e in state["history"] if e["epoch"] <= start_epoch]
        self._since = {rule: epoch for rule, epoch in state.get("since", {}).items()
                       if epoch <= start_epoch}
        for rule, recorded in state.get("rules", {}).items():
            if (recorded.get("epoch") or 0) > start_epoch:
                # Its file holds an epoch trained again, no kept one: this rule's selection
                # restarts there, so each saved model is always its rule's epoch.
                self._since[rule] = start_epoch
        self._choose()

    def _save(self, rule):
        save_model(self.model, self.paths[rule])
        if rule == self.select:
            with atomic_path(self.model_path) as partial:
                shutil.copyfile(self.paths[rule], partial)

    # -- Keras hooks ---------------------------------------------------------------------

    def on_train_begin(self, logs=None):
        self._resumed = False
        self._chief = is_chief(self.model.distribute_strategy)

    def on_epoch_begin(self, epoch, logs=None):
        if not self._resumed:  # after BackupAndRestore has set the epoch training starts at
            self._resumed = True
            self._read_state(epoch)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        last = (self.params or {}).get("epochs") == epoch + 1
        if (epoch + 1) % self.val_every and not last:
            logs.update({name: math.nan for name in VALIDATION_METRICS})
            return
        start = time.perf_counter()
        evaluator, predictions = metrics.Evaluator(self.threshold), []
        for k, volume in enumerate(self.volumes):
            probs = np.asarray(self.predict(self.model, volume["image"]))[..., -1]
            label = volume["label"]
            keep = label != self.ignore_index if self.ignore_index is not None else ...
            evaluator.update(label[keep] == 1, probs[keep])
            if k < self.image_volumes:
                predictions.append(probs >= self.threshold)
        result = evaluator.result()
        values = broadcast_from_first_replica(
            [result[name[len("val_"):]] for name in VALIDATION_METRICS],
            self.model.distribute_strategy)
        entry = {"epoch": epoch + 1, **dict(zip(VALIDATION_METRICS, values.tolist())),
                 "seconds": time.perf_counter() - start}  # what validation costs
        self._record(entry)
        logs.update({name: entry[name] for name in VALIDATION_METRICS})
        if self.patience is not None and self.chosen["waiting"] >= self.patience:
            self.model.stop_training = True
            self.stopped_epoch = epoch + 1
        if self._chief:
            for rule in ("best", "ema"):
                if self.chosen[rule]["epoch"] == epoch + 1:
                    self._save(rule)
            self._write_state()
            if self.tensorboard_dir is not None:
                self._write_images(epoch + 1, evaluator, predictions)

    def _record(self, entry):
        """Adds a validation to the history and chooses again (tests script it here)."""
        self.history.append(entry)
        self._choose()

    def on_train_end(self, logs=None):
        if self._chief:
            save_model(self.model, self.paths["last"])
            if self.select == "last" or self.selected_epoch is None:
                # ``last``, or a rule that never had a defined value: the last epoch.
                with atomic_path(self.model_path) as partial:
                    shutil.copyfile(self.paths["last"], partial)
            self._write_state()
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _write_images(self, step, evaluator, predictions):
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(str(self.tensorboard_dir))
        precision, recall, _ = evaluator.precision_recall_curve()
        apr = evaluator.result()["apr"]
        with self._writer.as_default(step=step):
            tf.summary.image("validation/pr_curve", _png_image(
                lambda out: plotting.plot_pr_curves(
                    {"validation": (precision, recall, apr)}, out,
                    title=f"Validation PR curve, epoch {step}")))
            for volume, predicted in zip(self.volumes, predictions):
                flair = volume["image"][..., self.flair_channel]
                tf.summary.image(f"validation/overlay/{volume['subject']}", _png_image(
                    lambda out: plotting.plot_overlay(
                        flair, volume["label"] == 1, predicted, out,
                        title=f"{volume['subject']}, epoch {step}")))
        self._writer.flush()


# --- the persisted record of a run ---------------------------------------------------------


class EpochTimer(keras.callbacks.Callback):
    """Adds each epoch's wall time to its logs as ``epoch_seconds`` (``EPOCH_SECONDS``).

    Put it after ``ValidationCallback`` (its time counts) and before ``CSVLogger``: the log
    then holds the time of every epoch, including those of a killed process, so the
    throughput of a resumed run is computed over all of them (``read_log``).

    Example:

    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> model.compile("sgd", "mse")
    >>> history = model.fit(np.ones((4, 2)), np.ones(4), epochs=2, verbose=0,
    ...                     callbacks=[EpochTimer()]).history
    >>> len(history[EPOCH_SECONDS]), min(history[EPOCH_SECONDS]) > 0
    (2, True)
    """

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs[EPOCH_SECONDS] = time.perf_counter() - self._start


class BackupAndRestore(keras.callbacks.BackupAndRestore):
    """Keras's ``BackupAndRestore`` whose weights and epoch files are each written under a
    temporary name and renamed (``tfversky._files``): a kill during a backup leaves the
    previous backup whole, not a weights file that cannot be read (Keras writes in place).
    The weights go first, so a kill between the two renames means training an epoch again.
    """

    def _save_model(self):
        pathlib.Path(self.backup_dir).mkdir(parents=True, exist_ok=True)
        with atomic_path(self._weights_path) as partial:
            self.model.save_weights(str(partial), overwrite=True)
        atomic_write_text(self._training_metadata_path, json.dumps(
            {"epoch": self._current_epoch, "batch": self._last_batch_seen}))


def read_log(path) -> dict[str, list]:
    """A ``CSVLogger`` file as ``{column: [value per epoch]}``: ``epoch`` (0-based, as Keras
    logs it) as ints, the rest as floats (NaN where a value is missing or not a number).
    Columns missing from every epoch's logs (``NA`` throughout: the ``val_*`` twins that
    ``CSVLogger`` adds for each key) are left out.

    Args:
        path: The CSV log (``LOG_FILE`` in a run folder).

    Returns:
        The columns, ``{}`` when the file is missing or has no rows.

    Example:

    >>> import tempfile
    >>> path = pathlib.Path(tempfile.mkdtemp()) / LOG_FILE
    >>> _ = path.write_text("epoch,loss,val_dsc\\n0,0.9,nan\\n1,0.8,0.5\\n")
    >>> read_log(path)
    {'epoch': [0, 1], 'loss': [0.9, 0.8], 'val_dsc': [nan, 0.5]}
    """
    path = pathlib.Path(path)
    if not path.exists():
        return {}
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {column: [int(row[column]) if column == "epoch" else _number(row[column])
                     for row in rows] for column in (rows[0] if rows else ())
            if any(row[column] != "NA" for row in rows)}


def keep_epochs(path, epochs: int) -> None:
    """Drops the rows of epochs ``>= epochs`` (0-based) from a CSV log, atomically.

    A killed run resumes after its last backup; epochs logged after it are trained again,
    so their first rows go (the log never holds an epoch twice, nor two runs interleaved).

    Example:

    >>> import tempfile
    >>> path = pathlib.Path(tempfile.mkdtemp()) / LOG_FILE
    >>> _ = path.write_text("epoch,loss\\n0,0.9\\n1,0.8\\n2,0.7\\n")
    >>> keep_epochs(path, 2)
    >>> read_log(path)["epoch"]
    [0, 1]
    """
    path = pathlib.Path(path)
    if not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)
    kept = lines[:1] + [line for line in lines[1:] if int(line.split(",", 1)[0]) < epochs]
    if len(kept) < len(lines):
        atomic_write_text(path, "".join(kept))


def read_state(run_dir) -> dict | None:
    """The validation record ``ValidationCallback`` keeps in ``run_dir`` (``STATE_FILE``:
    ``monitor``, ``select``, ``ema_alpha``, ``best``, ``selected_epoch``, ``stopped_epoch``,
    ``rules`` (each rule's epoch, score and file), ``history``; null where a metric was
    undefined), or None when the run never validated.

    Example:

    >>> import tempfile
    >>> read_state(tempfile.mkdtemp()) is None
    True
    """
    path = pathlib.Path(run_dir) / STATE_FILE
    return json.loads(path.read_text()) if path.exists() else None


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:  # CSVLogger writes "NA" for a key missing from an epoch's logs
        return math.nan


def save_model(model, path) -> None:
    """``model.save(path)`` that a kill never leaves half-written (``tfversky._files``)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as partial:
        model.save(partial)


def _nan_to_none(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    return value
