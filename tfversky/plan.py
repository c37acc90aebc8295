"""What a model was trained with, saved inside its ``.keras`` file: the plan.

A scan must reach the network prepared exactly as the training volumes were, so a trained
model carries:

* ``modalities``: canonical modality names (``tfversky.modalities``), in channel order;
* the reference grid (``grid``: shape and spacing; axes along RAS+, as every
  ``ReferenceGrid``) and how it is placed on a scan (``placement``: the centre of the brain's
  bounding box, or rigid registration to the MNI152 template);
* the intensity normalisation (per-modality z-score inside the brain, clipped to
  percentiles) and whether the training scans were skull-stripped, as the dataset recorded
  them (``tfds_ms.dataset_preparation``);
* the training patch (``training_patch_size``) and the sliding-window settings
  (``patch_size``: the training patch unless set, ``overlap``) and the operating point
  (``threshold``, ``min_lesion_mm3``, and in ``operating_point`` how they were chosen);
* the run record (``record``): the dataset (name, version, the options that decide its
  content and folds), the training recipe and seed, and the subjects and splits it was
  trained, validated and tested on, so ``tfversky evaluate`` can refuse data the model was
  not made for;
* the ``class_names``, whether the network outputs logits, the ``loss`` settings and the
  tfversky version that trained it.

The plan travels with the model object: ``attach`` returns a ``PlannedModel`` (a Keras
functional model registered with Keras) whose ``get_config`` holds the plan, so a plain
``model.save("m.keras")`` / ``keras.saving.load_model("m.keras")`` round trip keeps it, as
does every checkpoint Keras writes. ``read_plan`` reads it back from a model or a file. A
model without a plan (older files, bare Keras models) gets ``DEFAULT_PLAN``, what training
used before plans existed, with one ``PlanWarning`` that says so.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
import zipfile

import keras

from tfversky import arguments, modalities as modalities_lib
from tfversky._version import __version__
from tfversky import preprocessing
from tfversky.preprocessing import PAPER_GRID, ReferenceGrid

PLACEMENTS = ("brain_bbox", "registration")
# Plans saved before the field was renamed (it was confused with the U-Net's --normalization).
_RENAMED = {"normalization": "intensity_normalization"}


class PlanWarning(UserWarning):
    """A model without a plan: the defaults are assumed."""


@dataclasses.dataclass(frozen=True)
class Plan:
    """How a model's input was prepared in training, and how to run it.

    Args:
        modalities: Modality names in channel order (aliases such as ``T1w`` are stored in
            their canonical spelling). Defaults to ``("T1", "T2", "FLAIR")``.
        grid: The reference grid the training volumes were resampled onto. Defaults to
            ``PAPER_GRID`` (128x224x256).
        placement: ``"brain_bbox"`` (the grid centred on the bounding box of the non-zero,
            i.e. brain, voxels; axis-aligned) or ``"registration"`` (placed by rigid
            registration of the T1 to the MNI152 template, ``tfds_ms.registration``).
            Defaults to ``"brain_bbox"``.
        intensity_normalization: ``"zscore"``: per modality, clipped to
            ``clip_percentiles`` and scaled to mean 0, std 1 inside the brain
            (``preprocessing.normalize_intensity``; ``preprocessing.INTENSITY_NORMALIZATIONS``
            lists what it can do). Training copies it from the dataset. Defaults to
            ``"zscore"``. (Plans saved as ``normalization`` are read too.)
        clip_percentiles: Defaults to ``preprocessing.DEFAULT_CLIP_PERCENTILES``, (0.5, 99.5).
        patch_size: Sliding-window patch (int or (d, h, w)); None: the training patch
            (``training_patch_size``), else the model's static size, else
            ``inference.DEFAULT_PATCH_SIZE``. A network that normalises per window (instance
            or group normalisation) is run only on windows of its training patch
            (``inference.check_window``). Defaults to None.
        training_patch_size: The patch the network was trained on (int or (d, h, w)), or
            None where unknown (plans saved before tfversky 0.x recorded it). Defaults to
            None.
        overlap: Sliding-window overlap in [0, 1). Defaults to 0.5.
        threshold: Lesion where its probability is >= this, in (0, 1). Defaults to 0.5.
        min_lesion_mm3: Lesions (26-connected components of the thresholded mask) smaller
            than this, in mm^3 on the scan's own grid, are dropped. Defaults to 0 (all kept).
        operating_point: How ``threshold`` and ``min_lesion_mm3`` were chosen: e.g.
            ``{"criterion": "f2", "value": 0.81, "subjects": 4, "lesions": 37}`` when chosen
            on validation subjects, or ``{"criterion": None, "reason": "..."}`` when the
            defaults were kept. Empty: never chosen (the defaults). Defaults to {}.
        class_names: One name per output channel. Defaults to ("background", "lesion").
        from_logits: Whether the network outputs logits. Defaults to False.
        loss: The training loss's settings (e.g. ``TverskyLoss.get_config()``: alpha weighs
            false positives, beta false negatives, as in the paper). Defaults to {}.
        tfversky_version: The version that trained the model. Defaults to this one.
        record: The run record (``tfversky.train_cli.run_record``): ``dataset`` (name,
            version, options, modalities, grid, placement, folds, digest), ``recipe`` (the
            flags that change the model, the seed) and ``splits`` (the training, validation
            and test subjects). Empty for a model not trained by ``tfversky train``.
            Defaults to {}.
        skull_stripped: Whether the training scans were skull-stripped (True: all of them;
            False: some were raw, so raw scans are accepted; None: unknown). Training copies
            it from the dataset. Defaults to None.

    Raises:
        ValueError: for an unknown modality, placement or normalisation, out-of-range
            percentiles, window setting, threshold or minimum lesion volume, or a ``skull_stripped`` that is not
            True, False or None.

    Example:

    >>> plan = Plan(modalities=("FLAIR", "T1w"), grid=PAPER_GRID.scaled(2))
    >>> plan.modalities, plan.grid.shape
    (('FLAIR', 'T1'), (64, 112, 128))
    >>> Plan.from_dict(plan.to_dict()) == plan
    True
    """

    modalities: tuple = modalities_lib.DEFAULT_MODALITIES
    grid: ReferenceGrid = PAPER_GRID
    placement: str = "brain_bbox"
    intensity_normalization: str = preprocessing.INTENSITY_NORMALIZATIONS[0]
    clip_percentiles: tuple = preprocessing.DEFAULT_CLIP_PERCENTILES
    patch_size: object = None
    training_patch_size: object = None
    overlap: float = 0.5
    threshold: float = 0.5
    min_lesion_mm3: float = 0.0
    operating_point: dict = dataclasses.field(default_factory=dict, compare=False, hash=False)
    class_names: tuple = ("background", "lesion")
    from_logits: bool = False
    loss: dict = dataclasses.field(default_factory=dict, compare=False, hash=False)
    tfversky_version: str = ""
    record: dict = dataclasses.field(default_factory=dict, compare=False, hash=False)
    # How the training data were prepared (the dataset's record, not a default of this class).
    skull_stripped: bool | None = None

    def __post_init__(self):
        setattr_ = object.__setattr__  # frozen: normalise the fields once, here
        setattr_(self, "modalities", modalities_lib.canonical_list(self.modalities))
        if not isinstance(self.grid, ReferenceGrid):
            raise ValueError(f"Invalid value for argument `grid`: expected a "
                             f"preprocessing.ReferenceGrid. Received: grid={self.grid!r}")
        if self.placement not in PLACEMENTS:
            raise ValueError(f"Invalid value for argument `placement`: expected one of "
                             f"{PLACEMENTS}. Received: placement={self.placement!r}")
        setattr_(self, "clip_percentiles", preprocessing.check_intensity_normalization(
            self.intensity_normalization, self.clip_percentiles)[1])
        if self.skull_stripped not in (True, False, None):
            raise ValueError(f"Invalid value for argument `skull_stripped`: expected True, "
                             f"False or None (unknown). Received: "
                             f"skull_stripped={self.skull_stripped!r}")
        setattr_(self, "skull_stripped", None if self.skull_stripped is None
                 else bool(self.skull_stripped))
        for name in ("patch_size", "training_patch_size"):
            if getattr(self, name) is not None:
                setattr_(self, name, arguments.patch_size(getattr(self, name), name))
        setattr_(self, "overlap", arguments.overlap(self.overlap))
        setattr_(self, "threshold", arguments.threshold(self.threshold))
        setattr_(self, "min_lesion_mm3",
                 arguments.non_negative_number(self.min_lesion_mm3, "min_lesion_mm3"))
        setattr_(self, "operating_point", json.loads(json.dumps(self.operating_point)))
        setattr_(self, "class_names", tuple(str(name) for name in self.class_names))
        setattr_(self, "loss", dict(self.loss))
        setattr_(self, "record", json.loads(json.dumps(self.record)))  # JSON-ready, a copy
        setattr_(self, "tfversky_version", self.tfversky_version or __version__)

    def to_dict(self) -> dict:
        """A JSON-ready dict (what the ``.keras`` file stores)."""
        fields = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        fields["grid"] = {"shape": list(self.grid.shape), "spacing": list(self.grid.spacing),
                          "orientation": "RAS"}
        return json.loads(json.dumps(fields))  # tuples -> lists, as the file will hold them

    @property
    def window(self):
        """The sliding window inference uses: ``patch_size``, else the training patch (None
        where neither is known: the model's static size or the default then)."""
        return self.patch_size or self.training_patch_size

    @classmethod
    def from_dict(cls, config: dict) -> "Plan":
        """The plan ``to_dict`` wrote.

        Raises:
            ValueError: for a field this version does not know, or an invalid value.
        """
        config = dict(config)
        for old, new in _RENAMED.items():
            if old in config and new not in config:
                config[new] = config.pop(old)
        unknown = sorted(set(config) - {field.name for field in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"The model's plan has fields {unknown} that tfversky "
                             f"{__version__} does not know: upgrade tfversky.")
        grid = config.pop("grid", None)
        if grid is not None:
            config["grid"] = ReferenceGrid(tuple(grid["shape"]), tuple(grid["spacing"]))
        for name in ("modalities", "clip_percentiles", "class_names"):
            if name in config:
                config[name] = tuple(config[name])
        for name in ("patch_size", "training_patch_size"):
            if isinstance(config.get(name), list):
                config[name] = tuple(config[name])
        return cls(**config)

    def describe(self) -> str:
        """One line for messages: modalities, grid and placement.

        Example:

        >>> Plan().describe()
        'T1, T2, FLAIR on a 128x224x256 grid of 1.25x0.9x0.75 mm voxels (brain_bbox placement)'
        """
        shape = "x".join(map(str, self.grid.shape))
        spacing = "x".join(f"{s:g}" for s in self.grid.spacing)
        return (f"{', '.join(self.modalities)} on a {shape} grid of {spacing} mm voxels "
                f"({self.placement} placement)")


# What training did before plans existed: the default of a model saved without one.
DEFAULT_PLAN = Plan(tfversky_version="unknown (no plan saved)")


@keras.saving.register_keras_serializable(package="tfversky")
class PlannedModel(keras.Model):
    """A Keras functional model that carries its ``Plan`` in its config (see ``attach``).

    The constructor has the functional signature, so Keras serialises and rebuilds the
    graph as for any functional model; ``plan`` is added to (and read back from) the config.
    """

    def __init__(self, inputs, outputs, name=None, **kwargs):
        plan = kwargs.pop("plan", None)
        super().__init__(inputs, outputs, name=name, **kwargs)
        self.plan = Plan.from_dict(plan) if isinstance(plan, dict) else plan  # None: no plan

    def get_config(self):
        return {**super().get_config(),
                "plan": None if self.plan is None else self.plan.to_dict()}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        stored = config.pop("plan", None)
        model = super().from_config(config, custom_objects=custom_objects)
        model.plan = None if stored is None else Plan.from_dict(stored)
        return model


def attach(model, plan: Plan):
    """``model`` with ``plan`` attached: a ``PlannedModel`` sharing its layers and weights.

    A compiled model stays compiled with the same settings (``get_compile_config``) but a
    fresh optimizer state, so attach the plan before training (``examples/train_ms.py``
    does), or to a finished model that is only saved for inference.

    Args:
        model: A Keras functional model (e.g. ``tfversky.models.unet3d()``).
        plan: What it is (or was) trained with.

    Returns:
        A ``PlannedModel`` whose ``plan`` is ``plan``.

    Raises:
        ValueError: if ``model`` is not a functional model, or its input channels differ
            from the plan's number of modalities.

    Example:

    >>> from tfversky.models import unet3d
    >>> model = attach(unet3d(base_filters=2, depth=2), Plan(modalities=("T1", "T2", "FLAIR")))
    >>> read_plan(model).modalities
    ('T1', 'T2', 'FLAIR')
    """
    if not isinstance(plan, Plan):
        raise ValueError(f"Invalid value for argument `plan`: expected a tfversky.plan.Plan. "
                         f"Received: plan={plan!r}")
    if not getattr(model, "inputs", None) or not getattr(model, "outputs", None):
        raise ValueError(f"Invalid value for argument `model`: a plan can be attached to a "
                         f"Keras functional model (inputs and outputs known). Received: "
                         f"{type(model).__name__}")
    check_channels(model, plan)
    planned = PlannedModel(model.inputs, model.outputs, name=model.name, plan=plan)
    if getattr(model, "compiled", False):
        planned.compile_from_config(model.get_compile_config())
    return planned


def check_channels(model, plan: Plan) -> None:
    """Raise a ValueError if ``model``'s input channels are not one per plan modality."""
    channels = model.inputs[0].shape[-1]
    if channels is not None and channels != len(plan.modalities):
        raise ValueError(
            f"The model takes {channels} input channel(s), but its plan names "
            f"{len(plan.modalities)} modalities ({', '.join(plan.modalities)}): give the plan "
            f"the modalities the model was trained on, in channel order.")


def _plan_in_file(path) -> dict | None:
    """The plan stored in a ``.keras`` file's config.json, without loading the weights."""
    if not zipfile.is_zipfile(path):
        raise ValueError(f"Model file {str(path)!r} is not a .keras archive (a zip file): it "
                         f"is damaged or not a model saved with model.save('....keras').")
    with zipfile.ZipFile(path) as archive:
        try:
            config = json.loads(archive.read("config.json"))
        except (KeyError, json.JSONDecodeError):
            raise ValueError(f"Model file {str(path)!r} holds no readable config.json: it is "
                             f"not a Keras 3 .keras model.") from None
    return config.get("config", {}).get("plan") if config.get("class_name") == "PlannedModel" \
        else None


def read_plan(source) -> Plan:
    """The plan a model was trained with, from a model or a ``.keras`` file.

    A file's plan is read from its config without loading the weights. A model without a
    plan gets ``DEFAULT_PLAN`` (T1, T2, FLAIR on ``PAPER_GRID``, placed on the brain's
    bounding box, z-score normalisation, windows as ``predict_volume``'s defaults, threshold
    0.5; ``skull_stripped`` unknown, so raw scans are refused) and one ``PlanWarning``
    saying so.

    Args:
        source: A Keras model, or the path of a ``.keras`` file.

    Raises:
        ValueError: for a path that is not a ``.keras`` archive, or a stored plan this
            version cannot read.

    Example:

    >>> import warnings
    >>> from tfversky.models import unet3d
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     plan = read_plan(unet3d(base_filters=2, depth=2))
    >>> plan.modalities, [w.category.__name__ for w in caught]
    (('T1', 'T2', 'FLAIR'), ['PlanWarning'])
    """
    if isinstance(source, (str, os.PathLike)):
        stored, where = _plan_in_file(source), f"model file {str(source)!r}"
        found = None if stored is None else Plan.from_dict(stored)
    else:
        found, where = getattr(source, "plan", None), f"model {getattr(source, 'name', '')!r}"
    if found is not None:
        return found
    warnings.warn(
        f"The {where} carries no plan (saved before tfversky plans, or a bare Keras model): "
        f"assuming the defaults of earlier training: {DEFAULT_PLAN.describe()}, z-score "
        f"normalisation, threshold {DEFAULT_PLAN.threshold}; whether it was trained on "
        f"skull-stripped scans is unknown. Attach the right plan with "
        f"tfversky.plan.attach(model, Plan(...)) and save the model again.",
        PlanWarning, stacklevel=2)
    return DEFAULT_PLAN
