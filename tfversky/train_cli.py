"""``tfversky train`` and ``tfversky evaluate``: the training and test wiring, as a command.

    tfversky train --out runs/demo                             # the synthetic demo
    tfversky train --dataset ms_lesions/synthetic_lowres --val-every 2 --patience 5 \\
        --out runs/val
    tfversky evaluate --model runs/val/model.keras --out runs/val/test
    tfversky train --dataset ms_lesions/synthetic_realistic_by_centre_lowres --folds all \\
        --holdout-fold 3 --out runs/cv                         # cross-validation, fold 3 unseen

``train``: data (a ``ms_lesions`` config through the dataset adapter its entry point names,
``tfversky._adapters``) -> patches with nnU-Net's augmentations (``--augment default``) ->
3D U-Net with the Tversky loss (alpha weighs false positives, beta false negatives, as in
Salehi et al. 2017) -> ``model.fit`` under a ``tf.distribute`` strategy, resumable
(``BackupAndRestore``) -> on ``--val-subjects`` (a tenth of the training subjects by
default), whole-volume validation and model selection (``--select``;
``tfversky.training.ValidationCallback`` on the reference-grid stage
``tfversky.inference.segment_on_grid``) -> the operating point chosen on the validation
subjects (``--operating-point``, ``tfversky.operating_point``) into the model's plan -> the
selected model evaluated on the test fold (``tfversky.evaluation.evaluate_fold``). ``examples/train_ms.py`` is this, as a script.

``evaluate``: a saved model on the test split of the data its run record names (or on data
the record allows: the same grid, placement and modalities, never its training subjects), or
(``--predictions DIR --truth DIR``) any folder of masks against a folder of references
(``tfversky.evaluation.evaluate_folders``).

Every flag has one rule (``tfversky.arguments``), checked before any data is read; mistakes a
user can fix are ``UsageError``s: one line on stderr, exit code 2.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import re
import shutil
import sys
import time

from tfversky import _files, arguments
from tfversky.arguments import UsageError, flag_type as _flag
from tfversky.validation_rules import (AUTO_SELECT, DEFAULT_OPERATING_POINT, EMA_ALPHA,
                                       MIN_VALIDATION_LESIONS, MIN_VALIDATION_SUBJECTS,
                                       OPERATING_POINT_CRITERIA, SELECTION_RULES,
                                       validation_shortfall)

STRATEGIES = ("auto", "mirrored", "multiworker", "default")
RUN_JSON = "run.json"  # the run's flags and versions, written before training starts
# Flags that cannot change the trained model: where the run is written, what it prints,
# where TFDS keeps its files (the data are compared by their version), and the subcommand
# plumbing. A killed run resumes only when every other flag is the one it recorded.
OUTPUT_ONLY_FLAGS = ("out", "overwrite", "verbose", "data_dir", "handler", "command")
AUGMENT_CHOICES = ("none", "default", "all")
LR_SCHEDULES = ("step", "poly")
DEFAULT_FOLD = 1  # --fold's default (None on the namespace until resolve_folds: --folds)


# --- flags ------------------------------------------------------------------------------------


def _probability(text: str):
    """'NAME=P' -> (name, p); the range is checked in ``check_args`` (one line, exit 2)."""
    name, sep, value = text.partition("=")
    try:
        return name.strip(), float(value) if sep else None
    except ValueError:
        return name.strip(), None


def add_data_arguments(parser) -> None:
    """The dataset flags shared by ``train`` and ``evaluate``."""
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", default="ms_lesions/synthetic",
                      help="TFDS name/config: ms_lesions/{synthetic,synthetic_lowres,isbi2015,"
                           "isbi2015_mask2,msseg2016,nnunet,bids}")
    data.add_argument("--data-dir", default=None,
                      help="where TFDS keeps built datasets (default: ~/tensorflow_datasets)")
    data.add_argument("--manual-dir", default=None,
                      help="the dataset folder: ISBI 2015 / MSSEG 2016 download, nnU-Net raw "
                           "dataset (holding dataset.json) or BIDS dataset")
    data.add_argument("--modalities", default=None,
                      help="nnunet/bids: the input channels, in order, by canonical name or "
                           "alias (e.g. FLAIR,T1w). bids: required; nnunet: default all "
                           "channel_names of dataset.json")
    data.add_argument("--subject-pattern", type=_flag(arguments.regex, str), default=None,
                      metavar="REGEX",
                      help="nnunet: regular expression on the case id whose match (or group "
                           "'subject') is the subject, so that a subject's sessions share a fold "
                           "(e.g. '^MS_[0-9]+' for MS_003_ses2)")
    data.add_argument("--mask-folder", default=None,
                      help="bids: folder(s) holding the lesion masks, a glob relative to "
                           "--manual-dir (default derivatives/*)")
    data.add_argument("--mask-pattern", default=None,
                      help="bids: file name glob of the masks (default: *_desc-lesion_mask, "
                           "*_label-lesion_mask, and *_dseg with a dseg.tsv naming a lesion "
                           "label; .nii or .nii.gz)")
    data.add_argument("--bids-filter", action="append", default=None, metavar="CHANNEL:K=V",
                      help="bids: choose among several files of one channel by their entities "
                           "(repeatable), e.g. FLAIR:acq=3D, T1w:run=1,ce= (empty = absent), "
                           "FLAIR@1:ses=02; 'mask:...' filters the masks")
    data.add_argument("--bids-filter-file", default=None, metavar="JSON",
                      help="bids: the filters as fMRIPrep's --bids-filter-file: "
                           '{"flair": {"acquisition": "3D"}}')
    data.add_argument("--require-labels", action="store_true", default=None,
                      help="nnunet/bids: refuse cases without a mask (default: leave them out "
                           "of training and evaluation with one warning listing them)")
    data.add_argument("--grid-shape", default=None, metavar="D,H,W",
                      help="nnunet/bids: reference grid voxels (default the paper's 128,224,256)")
    data.add_argument("--grid-spacing", default=None, metavar="X,Y,Z",
                      help="nnunet/bids: reference grid voxel size in mm (default 1.25,0.9,0.75: "
                           "a 160 x 201.6 x 192 mm field of view; larger brains are cropped, "
                           "with a warning)")
    data.add_argument("--num-folds", type=_flag(arguments.fold_count, int), default=None,
                      help="nnunet/bids: cross-validation folds (default 2, as the paper, or "
                           "those of splits_final.json); the other configs have their own "
                           "(2; one per centre for *_by_centre*)")


def add_train_arguments(parser) -> None:
    """Every flag of ``tfversky train`` (and ``examples/train_ms.py``) on ``parser``."""
    add_data_arguments(parser)
    data = parser.add_argument_group("training data")
    data.add_argument("--fold", type=_flag(arguments.non_negative_int, int), default=None,
                      help=f"test fold, {DEFAULT_FOLD} unless given (or --folds); training "
                           f"uses the other(s). Fold 1 of the synthetic data holds its "
                           f"highest- and lowest-lesion-load subjects")
    data.add_argument("--folds", nargs="+", default=None, metavar="K|all",
                      help="cross-validation: one run per fold (test fold K, as --fold K) in "
                           "OUT/fold_K/, then OUT/results.json pooling every fold's test "
                           "subjects; 'all' or a list (e.g. 0 2). Resumable per fold")
    data.add_argument("--holdout-fold", type=_flag(arguments.non_negative_int, int),
                      default=None, metavar="T",
                      help="a fold no run trains, validates or tests on: it leaves the training "
                           "folds (of --fold, or of every --folds run, 'all' then meaning the "
                           "other folds), so an ensemble of the runs can be tested on subjects "
                           "none of its members saw")
    data.add_argument("--patch-size", type=_flag(arguments.patch_size, int), default=48,
                      help="cubic training patch edge; a multiple of 2^(depth-1)")
    data.add_argument("--lesion-fraction", type=_flag(arguments.probability), default=0.5,
                      help="fraction of patches centred on a lesion voxel, in [0, 1]")
    aug = parser.add_argument_group("augmentation (tfversky.augmentation, on the CPU)")
    aug.add_argument("--augment", choices=AUGMENT_CHOICES, default="default",
                     help="none: flips only; default: nnU-Net's set and probabilities "
                          "(rotation, scaling, gamma, brightness, contrast, noise, blur, bias "
                          "field, low resolution); all: every transform on every patch")
    aug.add_argument("--augment-prob", type=_probability, action="append", default=[],
                     metavar="NAME=P",
                     help="per-patch probability of one transform (repeatable), switching it "
                          "on, e.g. rotation=0.5 (noise=0 turns noise off); with --augment "
                          "none only the named ones run")
    aug.add_argument("--augment-rotation", type=_flag(arguments.non_negative_number),
                     default=15.0, metavar="DEGREES",
                     help="rotations about each axis drawn from [-DEGREES, DEGREES]")
    loss = parser.add_argument_group("loss")
    loss.add_argument("--alpha", type=_flag(arguments.tversky_weight), default=0.3,
                      help="false-positive weight, >= 0")
    loss.add_argument("--beta", type=_flag(arguments.tversky_weight), default=0.7,
                      help="false-negative weight, >= 0 (not 0 with --alpha 0)")
    loss.add_argument("--gamma", type=_flag(arguments.positive_number), default=1.0,
                      help="focal exponent, > 0 (1: plain)")
    loss.add_argument("--batch-dice", action=argparse.BooleanOptionalAction, default=True,
                      help="pool TP/FP/FN over the batch (TverskyLoss(batch=True), as nnU-Net): "
                           "a patch without lesion otherwise costs ~1 for any false-positive "
                           "mass, whose huge gradient can kill training")
    loss.add_argument("--loss-impl", choices=("auto", "tf", "fused"), default="auto",
                      help="pure TensorFlow, the fused C++/CUDA op, or fused where available")
    train = parser.add_argument_group("training")
    train.add_argument("--epochs", type=_flag(arguments.positive_int, int), default=12)
    train.add_argument("--steps-per-epoch", type=_flag(arguments.positive_int, int), default=100)
    train.add_argument("--batch-size", type=_flag(arguments.positive_int, int), default=2,
                       help="global batch (split over the replicas)")
    train.add_argument("--lr", type=_flag(arguments.positive_number), default=1e-3,
                       help="Adam's initial learning rate, > 0 (paper: 1e-4 for 1000 epochs; 1e-3 "
                            "suits the short CPU demo)")
    train.add_argument("--lr-schedule", choices=LR_SCHEDULES, default="step",
                       help="step: x0.9 every 1000 steps (the paper's); poly: lr (1 - t/T)^0.9 "
                            "down to 0 at the last step (nnU-Net's), so a short run ends "
                            "on a settled model for its length")
    train.add_argument("--base-filters", type=_flag(arguments.positive_int, int), default=8,
                       help="U-Net features at level 0")
    train.add_argument("--depth", type=_flag(arguments.positive_int, int), default=4,
                       help="U-Net resolution levels")
    train.add_argument("--normalization", choices=("none", "batch", "group", "instance"),
                       default="instance",
                       help="U-Net normalisation layers (the paper: none; see docs/training.md)")
    train.add_argument("--mixed-precision", action="store_true",
                       help="mixed_float16 policy (GPUs; the loss stays float32)")
    train.add_argument("--strategy", choices=STRATEGIES, default="auto",
                       help="auto: MirroredStrategy over >1 GPUs or --cpu-replicas, else default; "
                            "multiworker reads TF_CONFIG")
    train.add_argument("--cpu-replicas", type=_flag(arguments.positive_int, int), default=1,
                       help="split the CPU into N logical devices (to run MirroredStrategy "
                            "without GPUs)")
    train.add_argument("--seed", type=_flag(arguments.seed, int), default=0,
                       help="seed of the patches, augmentations, initial weights and validation "
                            "subjects, in [0, 2^32)")
    train.add_argument("--verbose", type=int, choices=(0, 1, 2), default=None,
                       help="Keras fit verbosity (default: a progress bar on a terminal, one "
                            "line per epoch otherwise)")
    val = parser.add_argument_group("validation and model selection")
    val.add_argument("--val-subjects", type=_flag(arguments.validation_subjects,
                                                  arguments.parse_count_or_fraction),
                     default=0.1, metavar="N|FRACTION",
                     help="hold out N (or this fraction, rounded, at least 1, of the) training "
                          "subjects, seeded by --seed, for whole-volume validation (every one "
                          "of them, every --val-every epochs), which chooses the operating "
                          "point and, with --select, the epoch. 0: no validation, model.keras "
                          "is the last epoch")
    val.add_argument("--val-every", type=_flag(arguments.positive_int, int), default=1,
                     metavar="N",
                     help="validate every N epochs (and at the last)")
    val.add_argument("--select", choices=("auto",) + SELECTION_RULES, default="auto",
                     help="which epoch model.keras is: last; best (on --monitor); ema (best "
                          "on its curve smoothed by --ema-alpha, as nnU-Net tracks it); auto: "
                          f"{AUTO_SELECT} with enough validation data (at least "
                          f"{MIN_VALIDATION_SUBJECTS} subjects and {MIN_VALIDATION_LESIONS} "
                          "lesions), else last. best/last/ema.keras are all kept")
    val.add_argument("--ema-alpha", type=_flag(arguments.smoothing_weight), default=EMA_ALPHA,
                     metavar="A",
                     help="--select ema: the smoothed curve s = A s + (1 - A) value, A in "
                          "[0, 1)")
    val.add_argument("--monitor", default="val_dsc",
                     help="validation metric that selects the model: val_dsc, val_sensitivity, "
                          "val_specificity, val_f2 or val_apr (higher is better)")
    val.add_argument("--patience", type=_flag(arguments.positive_int, int), default=None,
                     metavar="N",
                     help="stop after N validations without improvement (default: never)")
    ev = parser.add_argument_group("evaluation")
    ev.add_argument("--overlap", type=_flag(arguments.overlap), default=0.25,
                    help="sliding-window overlap of whole-volume inference, in [0, 1)")
    ev.add_argument("--threshold", type=_flag(arguments.threshold), default=0.5,
                    help="lesion if p >= threshold, in (0, 1): the operating point kept "
                         "unless --operating-point finds a better one on validation")
    ev.add_argument("--operating-point", choices=("none",) + OPERATING_POINT_CRITERIA,
                    default=DEFAULT_OPERATING_POINT,
                    help="after training, choose the threshold and minimum lesion volume "
                         "(mm^3) on the validation subjects from a small grid to maximise "
                         "this (lesion_f1: the MSSEG challenges' detection), and write them "
                         "into model.keras's plan; kept at --threshold and no minimum with "
                         f"fewer than {MIN_VALIDATION_SUBJECTS} validation subjects or "
                         f"{MIN_VALIDATION_LESIONS} lesions. none: keep them")
    parser.add_argument("--out", default="runs/train_ms",
                        help="output folder; the same command again resumes a killed run there "
                             "(a finished one, or one made with other flags, is refused)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start over in an --out that holds a run, finished or killed: its "
                             "files are removed first")


def build_parser(prog: str = "train_ms.py") -> argparse.ArgumentParser:
    """A stand-alone parser of the training flags (``examples/train_ms.py``)."""
    parser = arguments.ArgumentParser(
        prog=prog, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Train a 3D U-Net with the Tversky loss on MS lesion data and report the "
                    "paper's metrics on the held-out fold. alpha weighs false positives, beta "
                    "false negatives.")
    add_train_arguments(parser)
    return parser


def check_args(args) -> None:
    """Every flag's rule (``tfversky.arguments``, as argparse applied it: a namespace made in
    Python is checked too) and their combinations, before any data is read or a model built:
    mistakes that would otherwise surface minutes later, deep inside TensorFlow, or never.

    Raises:
        UsageError: naming the flag, the value and what it takes.
    """
    from tfversky import augmentation, training

    arguments.check_flags(build_parser(), args)
    try:  # the network halves the patch depth - 1 times
        arguments.patch_size(args.patch_size, "patch_size", arguments.size_multiple(args.depth),
                             f"2^(depth-1) for --depth {args.depth}")
        arguments.tversky_weights(args.alpha, args.beta)
    except arguments.InvalidArgument as error:
        raise arguments.usage_error(error) from None
    if args.strategy == "multiworker" and not os.environ.get("TF_CONFIG"):
        raise UsageError("--strategy multiworker needs the TF_CONFIG environment variable (the "
                         "cluster and this worker's task), e.g. TF_CONFIG='{\"cluster\": "
                         "{\"worker\": [\"host1:12345\", \"host2:12345\"]}, \"task\": "
                         "{\"type\": \"worker\", \"index\": 0}}'")
    if args.batch_size % args.cpu_replicas:
        raise UsageError(f"--batch-size {args.batch_size} must be divisible by --cpu-replicas "
                         f"{args.cpu_replicas} (each replica takes an equal share)")
    _check_dataset_name(args)
    resolve_folds(args)
    if args.monitor not in training.VALIDATION_METRICS:
        raise UsageError(f"--monitor {args.monitor!r} is not a logged metric: use one of "
                         f"{', '.join(training.VALIDATION_METRICS)}")
    if args.select in ("best", "ema") and not args.val_subjects:
        raise UsageError(f"--select {args.select} chooses the epoch on validation, and "
                         f"--val-subjects 0 holds out none: give --val-subjects N (e.g. 0.2), "
                         f"or --select last")
    for name, p in args.augment_prob:
        if name not in augmentation.TRANSFORMS:
            raise UsageError(f"--augment-prob {name}=...: unknown transform {name!r}; use one "
                             f"of {', '.join(augmentation.TRANSFORMS)}")
        try:
            arguments.probability(p, f"{name}_p")
        except arguments.InvalidArgument:
            raise UsageError(f"--augment-prob {name}={'?' if p is None else p}: a probability "
                             f"must be a number in [0, 1] (0 turns {name} off), e.g. "
                             f"{name}=0.2") from None
    # The dataset flags by the adapter's own rules (grid, modalities, layout), nothing built.
    dataset_adapter(args).open_dataset(args, prepare=False)


def _check_dataset_name(args) -> None:
    if not args.dataset.startswith("ms_lesions/"):
        raise UsageError(f"--dataset {args.dataset!r}: expected ms_lesions/<config>")
    if args.manual_dir and not pathlib.Path(args.manual_dir).is_dir():
        raise UsageError(f"--manual-dir {args.manual_dir}: no such folder")
    if args.data_dir and pathlib.Path(args.data_dir).exists() and \
            not pathlib.Path(args.data_dir).is_dir():
        raise UsageError(f"--data-dir {args.data_dir}: not a folder (TFDS keeps the built "
                         f"datasets there; give a folder, new or existing)")


def augment_config(args, voxel_spacing=(1.0, 1.0, 1.0)):
    """The ``AugmentConfig`` of ``--augment``/``--augment-prob``/``--augment-rotation``, or
    None (flips only). ``voxel_spacing`` keeps rotations rigid on an anisotropic grid."""
    from tfversky import augmentation

    if args.augment == "none" and not args.augment_prob:
        return None
    settings = {}
    if args.augment != "default":  # all: every transform always; none: only those named
        for name in augmentation.TRANSFORMS:
            settings[name] = args.augment == "all"
            settings[f"{name}_p"] = 1.0
    for name, p in args.augment_prob:
        settings[name], settings[f"{name}_p"] = True, p
    return augmentation.AugmentConfig(rotation_degrees=args.augment_rotation,
                                      voxel_spacing=tuple(voxel_spacing), **settings)


# --- 1. devices and strategy ------------------------------------------------------------------


def make_strategy(name: str, cpu_replicas: int):
    """The tf.distribute strategy; logical CPUs must be set before the runtime starts."""
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    if cpu_replicas > 1 and tf.config.get_logical_device_configuration(cpu) is None:
        # Only possible before the runtime starts; a second run in one process (e.g.
        # reproduce_table1.py) keeps the first run's split.
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(cpu_replicas)])
    gpus = tf.config.list_physical_devices("GPU")
    if name == "auto":
        name = "mirrored" if len(gpus) > 1 or cpu_replicas > 1 else "default"
    if name == "multiworker":
        return _reduce_leaf_by_leaf(tf.distribute.MultiWorkerMirroredStrategy())
    if name == "mirrored":
        devices = None if gpus else [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    return tf.distribute.get_strategy()


def _reduce_leaf_by_leaf(strategy):
    """Works around Keras 3's fit() under MultiWorkerMirroredStrategy (keras#20585).

    fit() reduces the first (x, y) batch as a nest, which the collective strategy cannot
    take (nor uint8 labels), only to learn the batch's shapes: the local batch does that.
    It also reduces scalar metrics "along axis 0": across replicas is what it means.
    """
    import tensorflow as tf

    reduce = strategy.reduce

    def fixed_reduce(reduce_op, value, axis=None):
        if not isinstance(value, tf.distribute.DistributedValues):
            return tf.nest.map_structure(lambda v: strategy.experimental_local_results(v)[0],
                                         value)
        scalar = tf.convert_to_tensor(value.values[0]).shape.rank == 0
        return reduce(reduce_op, value, axis=None if scalar else axis)

    strategy.reduce = fixed_reduce
    return strategy


# --- 2. data ----------------------------------------------------------------------------------


def dataset_adapter(args):
    """The adapter of ``--dataset NAME/CONFIG`` (``tfversky._adapters``, group
    ``tfversky.datasets``: ``tfds_ms.adapter`` for ``ms_lesions``); ``UsageError`` if none."""
    from tfversky import _adapters

    try:
        return _adapters.load("tfversky.datasets", args.dataset.split("/", 1)[0])
    except _adapters.AdapterUnavailableError as error:
        raise UsageError(f"--dataset {args.dataset}: {error}") from None


def dataset_version(args) -> str | None:
    """The version of the data ``--dataset`` reads, as its adapter's ``version(args)`` gives
    it (None for an adapter without one): each run saves it, so runs on data that a newer
    release makes differently are never reused or pooled with today's."""
    version = getattr(dataset_adapter(args), "version", None)
    return None if version is None else str(version(args))


# Flags that act only through the validation subjects: with --val-subjects 0 on both sides
# they cannot change the model (a run recorded before one of them existed stays comparable).
VALIDATION_ONLY_FLAGS = ("val_every", "select", "ema_alpha", "monitor", "patience",
                         "operating_point")


def flags_differing(saved: dict, args, ignore=()) -> list[str]:
    """How ``args`` differ from a run's record (``saved``: its ``results.json`` or
    ``run.json``): one ``--flag X there, Y now`` per flag (those in ``ignore`` left out), and
    the dataset's version where the run recorded one. Runs that differ cannot be resumed,
    reused or pooled as if they were the same."""
    config = saved.get("config", {})
    if config.get("val_subjects") == 0 and getattr(args, "val_subjects", None) == 0:
        ignore = (*ignore, *VALIDATION_ONLY_FLAGS)
    # Compared as JSON, the way each run saved its flags.
    expected = json.loads(json.dumps({k: v for k, v in vars(args).items() if k not in ignore},
                                     default=str))
    differ = [f"--{k.replace('_', '-')} {config.get(k)!r} there, {v!r} now"
              for k, v in expected.items() if config.get(k) != v]
    recorded = saved.get("versions", {}).get("dataset")
    if recorded is not None and recorded != (current := dataset_version(args)):
        differ.append(f"{args.dataset} version {recorded} there, {current} now")
    return differ


# The flags that choose a dataset's content and folds (the rest of ``add_data_arguments``,
# --data-dir, only says where TFDS keeps the built copy).
DATASET_FLAGS = ("dataset", "manual_dir", "modalities", "subject_pattern", "mask_folder",
                 "mask_pattern", "grid_shape", "grid_spacing", "num_folds", "bids_filter",
                 "bids_filter_file", "require_labels")
# Flags that change neither the data nor the trained model: left out of the recipe.
NOT_RECIPE_FLAGS = DATASET_FLAGS + OUTPUT_ONLY_FLAGS


def fold_members(args, builder, num_folds: int | None = None) -> tuple[dict, str]:
    """``{fold: [(subject, scan id), ...]}`` of every fold of a built dataset (one pass over
    its records), and a digest of it: two copies of a dataset with other scans or other
    folds get other digests. ``num_folds``: where the builder cannot say (a copy opened with
    ``tfds.builder_from_directory``), the run record's."""
    import hashlib

    adapter = dataset_adapter(args)
    members = {}
    for k in range(num_folds or adapter.num_folds(args, builder)):
        volumes = adapter.read_split(args, builder, f"fold{k}")
        members[f"fold{k}"] = [(subject.decode(), scan.decode()) for subject, scan in volumes.map(
            lambda e: (e["subject"], e["scan_id"])).as_numpy_iterator()]
    text = json.dumps({fold: sorted(pairs) for fold, pairs in members.items()}, sort_keys=True)
    return members, hashlib.sha256(text.encode()).hexdigest()[:16]


def split_subjects(members: dict, split: str) -> list[str]:
    """The subject of every scan of ``split`` (e.g. ``fold0+fold2``), from ``fold_members``."""
    return [subject for part in split.split("+") for subject, _ in members[part]]


def run_record(args, builder, description, splits: tuple[str, str], folds: tuple[dict, str],
               validation_ids=()) -> dict:
    """A run's identity, written once into ``results.json`` and the model's plan: the dataset
    (name, version, the options that decide its content and folds, its modalities, grid,
    placement, folds and a digest of which scans sit in which fold), the recipe (every flag
    that changes the model, the seed among them), the tfversky version, and the subjects the
    run trained, validated and tested on (``folds``: ``fold_members``). ``tfversky
    evaluate`` checks data against it."""
    from tfversky._version import __version__

    modalities, grid, _, placement = description
    members, digest = folds

    def subjects(split):
        return sorted(set(split_subjects(members, split)))

    train_split, test_split = splits
    validation = sorted(map(str, validation_ids))
    return {
        "dataset": {"name": args.dataset, "version": dataset_version(args),
                    "options": {k: getattr(args, k) for k in DATASET_FLAGS},
                    "modalities": list(modalities),
                    "grid": {"shape": list(grid.shape), "spacing": list(grid.spacing)},
                    "placement": placement, "num_folds": args.num_folds,
                    "digest": digest,
                    # Intensity normalisation, skull-stripped: the plan copies them.
                    "preparation": dataset_adapter(args).preparation(builder)},
        "recipe": json.loads(json.dumps({k: v for k, v in vars(args).items()
                                         if k not in NOT_RECIPE_FLAGS}, default=str)),
        "tfversky_version": __version__,
        "splits": {"train": train_split, "test": test_split,
                   "train_subjects": [s for s in subjects(train_split) if s not in validation],
                   "validation_subjects": validation,
                   "test_subjects": subjects(test_split)},
    }


def resolve_folds(args, builder=None) -> tuple[str, str] | None:
    """Sets ``args.num_folds`` to the dataset's folds when not given (and ``args.fold`` to
    ``DEFAULT_FOLD`` when None), checks ``--fold`` and ``--holdout-fold`` against them, and
    returns the (training, test) split names: ``data.fold_splits``'s, the holdout fold left
    out of training.

    A config declares its folds; a user dataset's may come from its ``splits_final.json``,
    known only once it is open: without ``builder``, None then.
    """
    from tfversky import data

    if args.fold is None:
        args.fold = DEFAULT_FOLD
    folds = dataset_adapter(args).num_folds(args, builder)
    if folds is None:
        return None
    args.num_folds = folds
    if not 0 <= args.fold < args.num_folds:
        raise UsageError(f"--fold {args.fold}: {args.dataset} has {args.num_folds} folds; "
                         f"use --fold 0 to {args.num_folds - 1}")
    train, test = data.fold_splits(args.fold, args.num_folds)
    holdout = getattr(args, "holdout_fold", None)
    if holdout is None:
        return train, test
    check_holdout_fold(args)
    if holdout == args.fold:
        raise UsageError(f"--holdout-fold {holdout} is the test fold (--fold {args.fold}): "
                         f"the holdout fold is left out of every run; test on another fold")
    return "+".join(p for p in train.split("+") if p != f"fold{holdout}"), test


def check_holdout_fold(args) -> None:
    """``--holdout-fold`` against ``args.num_folds``: a fold of the dataset, leaving a
    training fold and a test fold beside it."""
    holdout = args.holdout_fold
    if not 0 <= holdout < args.num_folds:
        raise UsageError(f"--holdout-fold {holdout}: {args.dataset} has {args.num_folds} "
                         f"folds; use --holdout-fold 0 to {args.num_folds - 1}")
    if args.num_folds < 3:
        raise UsageError(f"--holdout-fold {holdout}: {args.dataset} has {args.num_folds} "
                         f"folds, and a holdout fold needs 3 or more (one held out, one to "
                         f"test on, one to train on); leave --holdout-fold out, or give the "
                         f"dataset more folds (--num-folds for nnunet/bids)")


def load_splits(args, skip_batches: int = 0):
    """(training patches, test-fold volumes, (modalities, grid, ignore_index, placement),
    validation volumes or None, the run record ``run_record``).

    With ``--val-subjects``, that many training subjects (seeded by ``--seed``) are held out
    of the patches for whole-volume validation. Wrong datasets and options are
    ``UsageError``s.
    """
    from tfversky import data, training

    adapter = dataset_adapter(args)
    splits = resolve_folds(args)  # before the dataset is built (minutes) where its config tells
    builder = adapter.open_dataset(args)
    train_split, test_split = splits or resolve_folds(args, builder)
    train = adapter.read_split(args, builder, train_split, "--fold")
    test = adapter.read_split(args, builder, test_split, "--fold")
    description = adapter.describe(builder)
    folds = fold_members(args, builder)  # one pass: the record's and validation's subjects
    validation, val_ids = None, ()
    if args.val_subjects:
        subjects = split_subjects(folds[0], train_split)
        try:
            _, val_ids = training.split_subjects(subjects, args.val_subjects, seed=args.seed)
        except ValueError as error:
            unique = len(set(subjects))
            raise UsageError(
                f"--val-subjects {args.val_subjects}: the training folds hold {unique} "
                f"subject(s) and validation may not outnumber training; use --val-subjects "
                f"{unique // 2} or less (0: no validation)" if unique > 1 else
                f"--val-subjects {args.val_subjects}: the training folds hold {unique} "
                f"subject(s), none to spare; use --val-subjects 0") from error
        train, validation = training.split_validation(train, val_ids)
    patches = data.patch_dataset(train, patch_size=(args.patch_size,) * 3,
                                 batch_size=args.batch_size,
                                 lesion_fraction=args.lesion_fraction, seed=args.seed,
                                 skip_batches=skip_batches,
                                 augment=augment_config(args, description[1].spacing))
    record = run_record(args, builder, description, (train_split, test_split), folds, val_ids)
    return patches, test, description, validation, record


# --- 3. model and loss ------------------------------------------------------------------------


def learning_rate_schedule(args):
    """Adam's learning rate per step: ``step`` is the paper's (x0.9 every 1000 steps);
    ``poly`` is nnU-Net's polynomial decay to 0 over the run's epochs x steps per epoch."""
    import keras

    if args.lr_schedule == "poly":
        return keras.optimizers.schedules.PolynomialDecay(
            args.lr, decay_steps=args.epochs * args.steps_per_epoch, end_learning_rate=0.0,
            power=0.9)
    return keras.optimizers.schedules.ExponentialDecay(
        args.lr, decay_steps=1000, decay_rate=0.9, staircase=True)


def build_model(args, modalities=None, ignore_index=None):
    """The U-Net with one input channel per modality, compiled with the Tversky loss.

    ``modalities`` defaults to ``tfversky.modalities.DEFAULT_MODALITIES`` (T1, T2, FLAIR);
    ``ignore_index`` is the label value the loss leaves out (nnU-Net's ``ignore`` label).
    """
    import keras

    import tfversky
    from tfversky import metrics, models
    from tfversky.modalities import DEFAULT_MODALITIES

    channels = len(modalities or DEFAULT_MODALITIES)
    normalization = None if args.normalization == "none" else args.normalization
    model = models.unet3d(input_shape=(None, None, None, channels),
                          base_filters=args.base_filters, depth=args.depth,
                          normalization=normalization)
    schedule = learning_rate_schedule(args)
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        # alpha weighs false positives, beta false negatives (Salehi et al. 2017).
        loss=tfversky.TverskyLoss(args.alpha, args.beta, gamma=args.gamma,
                                  batch=args.batch_dice, implementation=args.loss_impl,
                                  ignore_index=ignore_index),
        metrics=[metrics.DiceScore(), metrics.Sensitivity(), metrics.FBetaScore(2.0)],
        # Keras's choice (XLA on a single GPU): the fused op lowers into XLA (docs/fused_op.md).
        jit_compile="auto")
    return model


def training_plan(args, modalities, grid, placement: str = "brain_bbox", record=None):
    """What this run trains with, for the model's plan: the dataset's modalities and grid
    (and how the grid was placed), the dataset's record of how it prepared its volumes
    (``record["dataset"]["preparation"]``: the intensity normalisation, whether the scans
    were skull-stripped), the training patch and the evaluation's window settings, and the
    run record (``run_record``)."""
    from tfversky import plan

    loss = {"name": "TverskyLoss", "alpha": args.alpha, "beta": args.beta, "gamma": args.gamma,
            "batch": args.batch_dice}  # alpha weighs false positives, beta false negatives
    preparation = (record or {}).get("dataset", {}).get("preparation", {})
    return plan.Plan(modalities=tuple(modalities), grid=grid, placement=placement,
                     **preparation,  # what the dataset did, not the plan's defaults
                     training_patch_size=args.patch_size,  # the window (check_window)
                     overlap=args.overlap,
                     threshold=args.threshold, loss=loss, record=record or {})


# --- 4. the run folder and training ----------------------------------------------------------

# What makes a folder a run's (a run.json-less one comes from an older tfversky).
_RUN_FILES = (RUN_JSON, "results.json", "backup", "training_log.csv", "model.keras")


def run_started(args) -> dict:
    """What ``run.json`` records before training (and ``results.json`` after): the flags
    (``config``) and the versions of tfversky and of the dataset, all that a resume is
    checked against before any data are built (``run_record``, the data's identity, needs
    them built)."""
    import tfversky

    return {"config": {k: v for k, v in vars(args).items() if k not in ("handler", "command")},
            "versions": {"tfversky": tfversky.__version__, "dataset": dataset_version(args)}}


def check_run_folder(args) -> dict | None:
    """What ``--out`` holds, checked before any work: None to start a run (a new or empty
    folder, or a run with ``--overwrite``), or what ``run.json`` holds of a killed run that
    these flags resume.

    Raises:
        UsageError: ``--out`` is a file; a non-empty folder that holds no run (even
            with ``--overwrite``: only a run's files are ever removed); a finished run
            (``results.json``) without ``--overwrite``; a killed run without ``run.json``, of
            another tfversky version, or made with flags (``OUTPUT_ONLY_FLAGS`` aside) or
            data that differ, each named. The folder is left as it was.
    """
    import tfversky

    out = pathlib.Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {args.out!r} is a file: give a folder for the run")
    # worker-N folders alone: the other workers of a multi-worker run starting now.
    if not out.is_dir() or all(p.name.startswith("worker-") for p in out.iterdir()):
        return None
    if not any((out / name).exists() for name in _RUN_FILES):
        raise UsageError(f"--out {args.out!r} is not empty and holds no tfversky run: "
                         f"choose a new or empty folder (--overwrite replaces runs only)")
    if args.overwrite:
        return None
    again = "pass --overwrite to start over (its files are removed), or choose another --out"
    if (out / "results.json").exists():
        raise UsageError(f"--out {args.out!r} holds a finished run (results.json), left as "
                         f"it is: {again}")
    if not (out / RUN_JSON).exists():
        raise UsageError(f"--out {args.out!r} holds a killed run with no record of its "
                         f"flags ({RUN_JSON}; made by an older tfversky), which cannot "
                         f"be resumed safely: {again}")
    started = json.loads((out / RUN_JSON).read_text())
    version = started.get("versions", {}).get("tfversky")
    if version != tfversky.__version__:
        raise UsageError(f"--out {args.out!r} holds a killed run of tfversky {version} and "
                         f"this is {tfversky.__version__}: a resumed run would mix two "
                         f"versions; finish it with tfversky {version}, or {again}")
    differ = flags_differing(started, args, ignore=OUTPUT_ONLY_FLAGS)
    if differ:
        raise UsageError(f"--out {args.out!r} holds a killed run made with other flags or "
                         f"data ({'; '.join(differ)}): resume it with its own, or {again}")
    return started


def start_run_folder(args, out: pathlib.Path, started: dict | None) -> dict:
    """Makes ``out`` ready (the chief's part of ``check_run_folder``): a run being started
    over is moved aside in one rename and then deleted (a kill leaves it whole beside
    ``out``, never half of it in ``out``), and a new run's ``run.json`` is written before
    training. Returns what ``run.json`` holds."""
    if started is None and args.overwrite and out.is_dir() and any(out.iterdir()):
        aside = _files.partial_name(out)
        os.rename(out, aside)
        shutil.rmtree(aside)
    out.mkdir(parents=True, exist_ok=True)
    if started is None:
        started = {**run_started(args), "training_finished": False}
        _write_run_json(out, started)
    return started


def _write_run_json(out: pathlib.Path, started: dict) -> None:
    _files.atomic_write_text(out / RUN_JSON, json.dumps(started, indent=1, default=str))


def completed_epochs(backup: pathlib.Path) -> int:
    """Epochs a killed run finished, from BackupAndRestore's metadata (0 for a new run)."""
    metadata = backup / "training_metadata.json"
    return json.loads(metadata.read_text())["epoch"] if metadata.exists() else 0


def train(args, strategy, out: pathlib.Path, chief: bool, started: dict) -> dict:
    """Builds the data and the model and runs ``model.fit`` (resuming a killed run, skipped
    when ``started``, the run's ``run.json``, says training finished); returns what the
    evaluation needs: ``test``, ``modalities``, ``ignore_index`` and ``record`` (the run
    record, ``run_record``). What training did is in the run folder: the CSV log,
    ``validation.json`` and the models."""
    import keras

    from tfversky import data, inference, plan, training

    # Non-chief workers keep their checkpoints apart, so they never overwrite the chief's.
    work = out if chief else out / f"worker-{strategy.cluster_resolver.task_id}"
    # A resumed run continues the patch stream where the killed one stopped, so it trains
    # on exactly the batches an uninterrupted run would have.
    work.mkdir(parents=True, exist_ok=True)
    finished = started.get("training_finished", False)
    done = completed_epochs(work / "backup")
    if finished:
        print(f"training in {out} finished before: evaluating its model.keras")
    elif done:
        print(f"resuming after epoch {done} from {work / 'backup'}")
    patches, test, (modalities, grid, ignore_index, placement), val, record = load_splits(
        args, skip_batches=done * args.steps_per_epoch)
    print(f"data: {args.dataset}, inputs {', '.join(modalities)} on a "
          f"{'x'.join(map(str, grid.shape))} grid of {' x '.join(f'{s:g}' for s in grid.spacing)} "
          f"mm" + (f", label {ignore_index} ignored by the loss" if ignore_index is not None
                   else ""))
    volumes = [] if val is None else list(data.iterate_volumes(val))
    rule, why = selection_rule(args, volumes, grid.spacing)
    trained = dict(test=test, modalities=modalities, ignore_index=ignore_index, record=record,
                   validation=volumes, selection=(rule, why))
    if finished:
        return trained
    # Epochs logged after the last backup are trained again: their rows go.
    training.keep_epochs(work / training.LOG_FILE, done)
    model_plan = training_plan(args, modalities, grid, placement, record)
    with strategy.scope():
        # The plan rides in every .keras file written below, so `tfversky predict` prepares
        # scans as these volumes were.
        model = plan.attach(build_model(args, modalities, ignore_index), model_plan)
    callbacks = []
    validation = None
    if volumes:
        validation = training.ValidationCallback(
            volumes, work, val_every=args.val_every, monitor=args.monitor,
            patience=args.patience, select=rule, ema_alpha=args.ema_alpha,
            threshold=args.threshold,
            # The reference-grid stage of the scan-to-mask path: what predict computes.
            predict=lambda m, image: inference.segment_on_grid(m, image, model_plan)[..., None],
            tensorboard_dir=work / "logs" / "validation", ignore_index=ignore_index,
            flair_channel=modalities.index("FLAIR") if "FLAIR" in modalities else 0)
        print(f"validation: {len(volumes)} volume(s) of the training folds held out, every "
              f"{args.val_every} epoch(s); model.keras: the {rule} epoch ({why})")
        callbacks.append(validation)  # before the loggers: they read its val_* logs
    callbacks += [training.EpochTimer(),
                  keras.callbacks.CSVLogger(str(work / training.LOG_FILE), append=True),
                  keras.callbacks.TensorBoard(str(work / "logs"), write_graph=False),
                  # Last: an epoch's log row and validation are written before its backup,
                  # so a kill between them means training that epoch again, not losing it.
                  # Kept until the run records that training finished (below).
                  training.BackupAndRestore(str(work / "backup"), delete_checkpoint=False)]
    verbose = args.verbose if args.verbose is not None else (1 if sys.stdout.isatty() else 2)
    model.fit(patches, epochs=args.epochs, steps_per_epoch=args.steps_per_epoch,
              callbacks=callbacks, verbose=verbose, shuffle=False)
    if chief and validation is None:  # no selection: the last epoch is the model
        training.save_model(model, out / "last.keras")
        training.save_model(model, out / "model.keras")
    if chief:
        _write_run_json(out, {**started, "training_finished": True})
    shutil.rmtree(work / "backup", ignore_errors=True)
    return trained


def selection_rule(args, volumes, spacing) -> tuple[str, str]:
    """The rule that makes model.keras (``SELECTION_RULES``) and why: ``--select``,
    or for ``auto`` ``AUTO_SELECT`` where the validation volumes (lesions counted on the
    grid of ``spacing``) are enough to choose on (``validation_shortfall``), else
    the last epoch."""
    from tfversky import operating_point

    if not volumes:
        return "last", "no validation subjects"
    subjects = len({v["subject"] for v in volumes})
    lesions = sum(operating_point.count_lesions(v["label"], spacing) for v in volumes)
    seen = f"{subjects} validation subject(s), {lesions} lesion(s)"
    if args.select != "auto":
        return args.select, f"--select {args.select}; {seen}"
    shortfall = validation_shortfall(subjects, lesions)
    if shortfall:
        return "last", f"--select auto: too little validation data to choose an epoch: " \
                       f"{shortfall}"
    return AUTO_SELECT, f"--select auto: {seen}, enough to choose"


# --- 5. evaluation and report -----------------------------------------------------------------


def print_report(results: dict, out: pathlib.Path, files=()) -> None:
    from tfversky import metrics

    from tfversky import statistics

    scans = results["subjects"]
    rows = [(r.get("scan_id") or r["subject"], r) for r in scans]
    rows.append((f"pooled, {statistics.units(scans)}", results["pooled"]))
    keys = metrics.PAPER_METRICS + ("ltpr", "lfpr")
    width = max(len(name) for name, _ in rows)
    print(f"\n{'scan':<{width}}  " + "  ".join(f"{k:>11}" for k in keys))
    for name, row in rows:
        print(f"{name:<{width}}  " + "  ".join(f"{100 * row[k]:>10.2f}%" for k in keys))
    print(f"\nwritten to {out}:")
    for path in files:
        if (out / path).exists():  # best/ema.keras only where validation chose
            print(f"  {out / path}")


def persisted_training(out: pathlib.Path, args, reason: str = "") -> dict:
    """``history``, ``selection`` and ``timing`` of ``results.json``, from the files a resume
    keeps (every epoch of every process that trained the run): the CSV log and the
    validation record. Keras's ``History`` holds only the last process's epochs.

    ``selection``: the rule that made model.keras (``rule``) and why (``reason``, from
    ``selection_rule``), the selected epoch (1-based; the last without a defined
    validation metric), its logged metrics, every rule's epoch and score (``rules``: the
    files best/ema/last.keras hold them), the last epoch's validation score beside it, and
    the validation history. ``timing``: the epochs' wall time (validation included) and the
    training patches per second over it.
    """
    from tfversky import training

    history = training.read_log(out / training.LOG_FILE)
    epochs = len(history.pop("epoch", []))
    state = training.read_state(out)
    if state is None:
        selection = {"rule": "last", "reason": reason, "monitor": None,
                     "selected_epoch": epochs, "best": None,
                     "note": "no validation subjects: model.keras is the last epoch"}
    else:
        rules = state["rules"]
        selection = {"rule": state["select"], "reason": reason,
                     **{k: state[k] for k in ("monitor", "best", "stopped_epoch")},
                     "selected_epoch": rules[state["select"]]["epoch"] or epochs,
                     "rules": {rule: {"epoch": rules[rule]["epoch"],
                                      "score": rules[rule]["score"]} for rule in rules},
                     "last_epoch_score": rules["last"]["score"]}
        if rules[state["select"]]["epoch"] is None:
            selection["note"] = (f"{state['monitor']} was never defined: model.keras is the "
                                 f"last epoch")
        selection["validation_history"] = state["history"]
    if epochs:
        selection["metrics"] = {k: v[selection["selected_epoch"] - 1] for k, v in
                                history.items()}
    seconds = sum(history.get(training.EPOCH_SECONDS, []))
    patches = epochs * args.steps_per_epoch * args.batch_size
    return dict(history=history, selection=selection,
                timing={"epochs": epochs, "train_seconds": seconds,
                        "patches_per_second": patches / seconds if seconds else None})


def settle_operating_point(args, model_path: pathlib.Path, volumes, ignore_index=None):
    """Chooses the operating point of ``--operating-point`` on the validation ``volumes``
    (``tfversky.operating_point.choose``, on the probabilities ``tfversky evaluate``
    scores) and writes it into the plan of ``model_path``; returns the model. A model whose
    plan already records one (a resumed run that chose it) is left as it is.
    """
    import dataclasses

    import keras

    from tfversky import inference, operating_point, plan as plan_lib, training

    model = keras.models.load_model(model_path)
    model_plan = plan_lib.read_plan(model)
    if model_plan.operating_point:
        return model
    baseline = (args.threshold, 0.0)
    if args.operating_point == "none" or not volumes:
        chosen = {"threshold": args.threshold, "min_lesion_mm3": 0.0, "operating_point": {
            "criterion": None, "baseline": list(baseline),
            "reason": "--operating-point none" if volumes else "no validation subjects"}}
    else:
        start = time.perf_counter()
        scored = [{"probabilities": inference.segment_on_grid(model, v["image"], model_plan),
                   "label": v["label"], "subject": v["subject"]} for v in volumes]
        chosen = operating_point.choose(scored, args.operating_point, model_plan.grid.spacing,
                                        baseline=baseline, ignore_index=ignore_index)
        chosen["operating_point"]["seconds"] = time.perf_counter() - start
    model.plan = dataclasses.replace(model_plan, **chosen)
    training.save_model(model, model_path)
    record = chosen["operating_point"]
    print(f"operating point: threshold {chosen['threshold']:g}, minimum lesion "
          f"{chosen['min_lesion_mm3']:g} mm^3" + (
              f" ({record['criterion']} {record['value']:.4f} on validation, "
              f"{record['baseline_value']:.4f} at the baseline)" if "reason" not in record
              else f" (kept: {record['reason']})"))
    return model


def run(args) -> dict:
    """Trains, selects and evaluates one run (``tfversky train``); returns ``results.json``'s
    content (empty on a non-chief worker). With ``--folds``, a cross-validation
    (``run_folds``)."""
    if getattr(args, "folds", None) is not None:
        return run_folds(args)
    check_args(args)
    started = check_run_folder(args)  # a refusal leaves the folder as it was
    strategy = make_strategy(args.strategy, args.cpu_replicas)  # before any other TF work
    import keras
    import tensorflow as tf

    import tfversky
    from tfversky import data, evaluation, fused, training

    keras.backend.clear_session()  # a fresh graph and layer names for every run in a process
    keras.utils.set_random_seed(args.seed)
    if args.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    out = pathlib.Path(args.out)
    chief = training.is_chief(strategy)
    if chief:
        started = start_run_folder(args, out, started)
    else:
        out.mkdir(parents=True, exist_ok=True)
    # What "auto" resolves to here, inside XLA too (Keras's default on a single GPU).
    loss_impl = "tf" if args.loss_impl == "tf" or not fused.is_available() else "fused"
    if loss_impl == "fused" and fused.xla_unavailable_reason() is not None:
        loss_impl = "fused, or tf where Keras compiles with XLA"
    print(f"tfversky {tfversky.__version__}, TensorFlow {tf.__version__}, Keras "
          f"{keras.__version__}; strategy {type(strategy).__name__} with "
          f"{strategy.num_replicas_in_sync} replica(s); loss: {loss_impl}, alpha={args.alpha} "
          f"(FP), beta={args.beta} (FN)")
    trained = train(args, strategy, out, chief, started or {})
    if not chief:
        return {}
    # The selected model is evaluated, loaded from its file outside the strategy: inference
    # runs locally (the other workers have finished) and checks the artifact users get,
    # with the operating point chosen on validation in its plan.
    model = settle_operating_point(args, out / "model.keras", trained["validation"],
                                   trained["ignore_index"])
    test = trained["test"]
    persisted = persisted_training(out, args, reason=trained["selection"][1])
    start = time.perf_counter()
    results = evaluation.evaluate_fold(model, data.iterate_volumes(test), out,
                                       ignore_index=trained["ignore_index"],
                                       total=int(test.cardinality()))
    persisted["timing"]["inference_seconds"] = time.perf_counter() - start
    identity = run_started(args)
    identity["versions"].update(tensorflow=tf.__version__, keras=keras.__version__)
    model_plan = model.plan
    results.update(**identity, modalities=list(trained["modalities"]), **persisted,
                   operating_point={"threshold": model_plan.threshold,
                                    "min_lesion_mm3": model_plan.min_lesion_mm3,
                                    **model_plan.operating_point},
                   loss_implementation=loss_impl, record=trained["record"])
    _files.atomic_write_text(out / "results.json", json.dumps(results, indent=2, default=float))
    selection = results["selection"]
    print(f"\nmodel.keras: epoch {selection['selected_epoch']} ({selection['rule']}: "
          f"{selection['reason']})" + (
              f"; {selection['monitor']} there {selection['metrics'][selection['monitor']]:.4f}"
              f", at the last epoch {selection['last_epoch_score']:.4f}"
              if selection.get("last_epoch_score") is not None
              and "metrics" in selection else ""))
    print_report(results, out, ["results.json", "model.keras", "best.keras", "ema.keras",
                                "last.keras", "validation.json", "pr_curve.png",
                                "overlays/", "predictions/", "training_log.csv", RUN_JSON,
                                "logs/"])
    return results


# --- 6. cross-validation: one run per fold, their test folds pooled (--folds) ----------------

FOLD_FOLDER = "fold_{}"  # OUT/fold_K: the run whose test fold is K
_FOLD_FOLDER = re.compile(r"fold_(\d+)")


def cross_validation_folds(num_folds: int, holdout_fold: int | None) -> list[int]:
    """The test folds of a cross-validation: every fold of the dataset but the holdout one.

    >>> cross_validation_folds(4, 3), cross_validation_folds(2, None)
    ([0, 1, 2], [0, 1])
    """
    return [k for k in range(num_folds) if k != holdout_fold]


def fold_args(args, fold: int) -> argparse.Namespace:
    """The flags of fold ``fold``'s run of a cross-validation: those of ``tfversky train
    --fold FOLD --out OUT/fold_FOLD``, so each fold's folder is an ordinary run."""
    return argparse.Namespace(**{**vars(args), "fold": fold, "folds": None,
                                 "out": str(pathlib.Path(args.out) / FOLD_FOLDER.format(fold))})


def check_folds(args) -> list[int]:
    """``--folds`` and what goes with it, before any work: the folds to run (sorted), every
    flag checked as ``check_args`` checks a run's. Sets ``args.num_folds``.

    Raises:
        UsageError: ``--fold`` with ``--folds``; multi-worker training; a ``--folds`` value
            that is not ``all`` or a fold of the dataset (naming its folds); the holdout
            fold among ``--folds``; any flag ``check_args`` refuses.
    """
    if args.fold is not None:
        raise UsageError(f"--fold {args.fold} and --folds {' '.join(args.folds)}: --fold "
                         f"trains one run, --folds one per fold; give one of them")
    if args.strategy == "multiworker":
        raise UsageError("--folds with --strategy multiworker: run the folds one by one "
                         "(--fold K --out OUT/fold_K on the workers), or --folds on one "
                         "machine (--strategy mirrored uses its GPUs)")
    words = [str(value) for value in args.folds]
    if "all" in words and len(words) > 1 or not all(w == "all" or w.isdigit() for w in words):
        raise UsageError(f"--folds {' '.join(words)}: expected 'all' or fold numbers (e.g. "
                         f"--folds 0 2)")
    holdout = args.holdout_fold
    # Every other flag as a run checks it (nothing built): fold 0's, or 1's if 0 is held out.
    probe = fold_args(args, 1 if holdout == 0 else 0)
    check_args(probe)
    if probe.num_folds is None:  # a user dataset whose folds only its build tells
        adapter = dataset_adapter(args)
        resolve_folds(probe, adapter.open_dataset(args))
    args.num_folds = probe.num_folds
    if holdout is not None:
        check_holdout_fold(args)
    valid = cross_validation_folds(args.num_folds, holdout)
    if words == ["all"]:
        return valid
    requested = sorted({int(w) for w in words})
    for fold in requested:
        if fold == holdout:
            raise UsageError(f"--folds {' '.join(words)}: fold {fold} is the holdout fold "
                             f"(--holdout-fold {holdout}), which no run trains or tests on; "
                             f"give folds among {', '.join(map(str, valid))}, or all")
        if fold >= args.num_folds:
            raise UsageError(f"--folds {' '.join(words)}: {args.dataset} has "
                             f"{args.num_folds} folds (0 to {args.num_folds - 1}); give "
                             f"folds among them, or all")
    return requested


def fold_folders(out) -> dict[int, pathlib.Path]:
    """``{K: OUT/fold_K}`` of the fold folders ``out`` holds (a ``--folds`` run's)."""
    out = pathlib.Path(out)
    if not out.is_dir():
        return {}
    return {int(m[1]): p for p in out.iterdir()
            if p.is_dir() and (m := _FOLD_FOLDER.fullmatch(p.name))}


def check_cross_validation_folder(args, folds: list[int]) -> dict[int, bool]:
    """What ``--out`` holds, checked before any work: ``{K: finished}`` for each fold of
    ``folds``. A cross-validation folder holds fold folders made with the same flags (one
    cross-validation: their test folds are pooled), each resumed or started over as a run's
    folder is (``check_run_folder``); a finished fold is kept (``--overwrite``: started over).

    Raises:
        UsageError: ``--out`` is a file, a single run's folder, or a non-empty folder with
            no fold folders; a fold folder of another fold count or holdout, or made with
            other flags or data (each named); a killed fold ``check_run_folder`` refuses.
    """
    out = pathlib.Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {args.out!r} is a file: give a folder for the "
                         f"cross-validation")
    existing = fold_folders(out)
    if any((out / name).exists() for name in _RUN_FILES if name != "results.json"):
        raise UsageError(f"--out {args.out!r} holds a single run ({RUN_JSON}, model.keras): "
                         f"--folds writes one run per fold into OUT/fold_K; choose another "
                         f"--out")
    if out.is_dir() and not existing and any(not p.name.startswith(".") for p in
                                             out.iterdir()):
        raise UsageError(f"--out {args.out!r} is not empty and holds no cross-validation "
                         f"(fold_K folders): choose a new or empty folder")
    again = "give the flags it was made with, or another --out"
    for fold, folder in sorted(existing.items()):
        if fold >= args.num_folds or fold == args.holdout_fold:
            raise UsageError(f"--out {args.out!r} holds {folder.name}, not a fold of this "
                             f"cross-validation ({args.dataset}: {args.num_folds} folds"
                             + (f", fold {args.holdout_fold} held out" if
                                args.holdout_fold is not None else "") + f"): {again}")
        saved = next((folder / name for name in ("results.json", RUN_JSON)
                      if (folder / name).exists()), None)
        if saved is None or (args.overwrite and fold in folds):
            continue  # nothing recorded, or started over: check_run_folder below
        differ = flags_differing(json.loads(saved.read_text()), fold_args(args, fold),
                                 ignore=OUTPUT_ONLY_FLAGS)
        if differ:
            raise UsageError(f"--out {args.out!r}: {folder.name} was made with other flags or "
                             f"data ({'; '.join(differ)}), and one cross-validation pools "
                             f"runs of one recipe: {again}")
    finished = {}
    for fold in folds:
        run_args = fold_args(args, fold)
        finished[fold] = (pathlib.Path(run_args.out) / "results.json").exists() and \
            not args.overwrite
        if not finished[fold]:
            check_run_folder(run_args)
    return finished


def run_folds(args) -> dict:
    """Cross-validation (``tfversky train --folds``): one run per fold of ``--folds`` in
    ``OUT/fold_K`` (each as ``--fold K`` writes it; a finished one is kept, a killed one
    resumed), then ``OUT/results.json`` pooling the test folds of every finished fold in
    ``OUT`` (``pool_cross_validation``). Returns its content."""
    folds = check_folds(args)
    finished = check_cross_validation_folder(args, folds)
    for number, fold in enumerate(folds, 1):
        where = pathlib.Path(args.out) / FOLD_FOLDER.format(fold)
        if finished[fold]:
            print(f"fold {fold} ({number} of {len(folds)}): finished before, kept in {where}")
            continue
        print(f"\n=== fold {fold} ({number} of {len(folds)}): test fold {fold}, run in "
              f"{where} ===")
        run(fold_args(args, fold))
    return pool_cross_validation(args)


def _subject_mean(rows: list[dict]) -> dict:
    """Each numeric score averaged over the subjects (a subject's scans first averaged:
    ``statistics.subject_means``; NaN, e.g. no lesion, left out)."""
    import numpy as np

    from tfversky import statistics

    means = {}
    for key, value in rows[0].items():
        if isinstance(value, (int, float)) and key not in ("lesion_voxels", "fold"):
            per_subject = statistics.subject_means((r["subject"], r[key]) for r in rows)
            means[key] = float(np.mean(list(per_subject.values()))) if per_subject \
                else math.nan
    return means


def _read_cases(folder: pathlib.Path) -> list[dict]:
    """The rows of a run's ``cases.csv`` (``evaluation.write_scores``), numbers as floats."""
    import csv

    with open(folder / "cases.csv", newline="") as handle:
        return [{k: v if k == "case" else float(v) for k, v in row.items()}
                for row in csv.DictReader(handle)]


def pool_cross_validation(args) -> dict:
    """Pools the test folds of every finished fold in ``--out`` into ``OUT/results.json``,
    as nnU-Net scores its cross-validation: every subject once, predicted by the run that
    never trained on it. ``pooled``: over all test voxels and lesions (each fold's mask at
    its own plan's threshold; APR from the pooled histograms); ``subject_mean``: each score
    averaged over the subjects; ``folds``: each fold's own, with ``fold_mean`` (mean and
    sd over folds) beside. Also writes ``evaluator.npz`` and ``subject_curves.npz`` of the
    pooled folds, so ``evaluation.load_fold(OUT)`` reads the cross-validation as one test.

    Returns:
        What ``results.json`` holds: ``cross_validation`` (the folds pooled, the missing
        ones, the holdout fold), ``pooled``, ``subject_mean``, ``folds``, ``fold_mean``,
        ``subjects`` (every fold's rows, each naming its ``fold``), ``config``,
        ``versions`` and ``record`` (the dataset and the recipe, ``fold`` left out).
    """
    import numpy as np

    from tfversky import evaluation, metrics, statistics

    out = pathlib.Path(args.out)
    done = {k: p for k, p in sorted(fold_folders(out).items())
            if (p / "results.json").exists()}
    if not done:
        return {}
    saved = {k: json.loads((p / "results.json").read_text()) for k, p in done.items()}
    digests = {k: results["record"]["dataset"]["digest"] for k, results in saved.items()}
    if len(set(digests.values())) > 1:
        raise UsageError(f"--out {args.out!r}: its folds were tested on different copies of "
                         f"{args.dataset} (digests {digests}): their folds may overlap, so "
                         f"they are not pooled; train them again on one copy (--overwrite)")
    pooled_evaluator, rows, curves, cases, folds = None, [], {}, [], {}
    for fold, folder in done.items():
        results = saved[fold]
        evaluator, subjects, fold_curves = evaluation.load_fold(folder)
        if pooled_evaluator is None:
            pooled_evaluator = metrics.Evaluator(evaluator.threshold, evaluator.mantissa_bits)
        # Not Evaluator.merge: each fold counts its masks at its own plan's threshold (the
        # held-out masks as its model makes them); the APR histograms do not depend on it.
        for name in ("counts", "positives", "negatives"):
            getattr(pooled_evaluator, name)[:] += getattr(evaluator, name)
        rows += [{**row, "fold": fold} for row in subjects]
        curves.update(fold_curves)
        cases += _read_cases(folder)
        splits = results["record"]["splits"]
        folds[FOLD_FOLDER.format(fold)] = {
            "test": splits["test"], "train": splits["train"],
            "subjects": len(set(splits["test_subjects"])),
            "threshold": evaluator.threshold,
            "selected_epoch": results["selection"]["selected_epoch"],
            "pooled": results["pooled"], "subject_mean": _subject_mean(subjects)}
    lesion_keys = [k for k in next(iter(folds.values()))["pooled"]
                   if k not in metrics.PAPER_METRICS + metrics.COUNTS]
    summary = metrics.summarize_cases(cases)
    pooled = {**{k: v for k, v in pooled_evaluator.result().items()
                 if k in metrics.PAPER_METRICS + metrics.COUNTS},
              **{k: summary["pooled"][k] for k in lesion_keys}}
    fold_mean = {k: {"mean": float(np.mean(values)), "sd": float(np.std(values, ddof=1))
                     if len(values) > 1 else math.nan}
                 for k in metrics.PAPER_METRICS + ("lesion_f1",)
                 for values in [[f["pooled"][k] for f in folds.values()]]}
    last = saved[max(saved)]
    record = dict(last["record"])
    record["recipe"] = {k: v for k, v in record["recipe"].items() if k != "fold"}
    record.pop("splits", None)  # each fold's: under folds
    missing = [k for k in cross_validation_folds(args.num_folds, args.holdout_fold)
               if k not in done]
    results = {
        "cross_validation": {
            "num_folds": args.num_folds, "folds": sorted(done), "missing": missing,
            "complete": not missing, "holdout_fold": args.holdout_fold,
            "sample": statistics.units(rows)},
        "pooled": pooled, "subject_mean": _subject_mean(rows), "folds": folds,
        "fold_mean": fold_mean, "subjects": rows,
        "config": {k: v for k, v in run_started(args)["config"].items() if k != "fold"},
        "versions": last["versions"], "record": record}
    pooled_evaluator.save(out / "evaluator.npz")
    with _files.atomic_path(out / "subject_curves.npz") as partial:
        np.savez_compressed(partial, **{f"{name}/{part}": values for name, curve in
                                        curves.items() for part, values in curve.items()})
    _files.atomic_write_text(out / "results.json", json.dumps(results, indent=2, default=float))
    print(f"\ncross-validation: folds {', '.join(map(str, sorted(done)))} of "
          f"{args.num_folds} pooled"
          + (f" (not yet run: {', '.join(map(str, missing))})" if missing else "")
          + (f"; fold {args.holdout_fold} held out of every run" if args.holdout_fold
             is not None else ""))
    print_report(results, out, ["results.json", "evaluator.npz", "subject_curves.npz"] + [
        f"{FOLD_FOLDER.format(k)}/" for k in sorted(done)])
    return results


# --- the subcommands --------------------------------------------------------------------------


def add_train(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="train a 3D U-Net with the Tversky loss, select it on validation, test it",
        description="Train a 3D U-Net with the Tversky loss (alpha weighs false positives, "
                    "beta false negatives) on an ms_lesions dataset, select the checkpoint on "
                    "whole-volume validation (--val-subjects), and report the paper's metrics "
                    "on the held-out fold. Reuse --out to resume a killed run.")
    add_train_arguments(parser)
    parser.set_defaults(handler=_train)


def _train(args) -> int:
    run(args)
    return 0


def add_evaluate(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="score a saved model on a split of a dataset, or a folder of masks against "
             "references (per case, pooled, lesion-wise, boundary distances)",
        description="Whole-volume inference of a saved model on every volume of a dataset "
                    "split, through the same path as predict: per-scan and pooled DSC, "
                    "sensitivity, specificity, F2, APR, lesion-wise LTPR/LFPR, PR curves, "
                    "overlays and the masks on each scan. The dataset and the test split come "
                    "from the model's run record (its plan); dataset flags that differ from it, "
                    "and splits holding the model's training or validation subjects, are "
                    "refused. With --predictions DIR --truth DIR instead of --model: score any "
                    "folder of masks (e.g. nnU-Net's or LST-AI's) against references.")
    parser.add_argument("--model", metavar="FILE",
                        help="a .keras model saved by tfversky train (carrying its plan)")
    parser.add_argument("--split", default=None,
                        help="the split to score, e.g. fold1 or fold0+fold1 (default: the test "
                             "split of the model's run record)")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="output folder: evaluation.json, evaluator.npz, subject_curves.npz, "
                             "pr_curve.png, overlays/, predictions/")
    parser.add_argument("--min-lesion-volume", type=_flag(arguments.non_negative_number),
                        default=None, metavar="MM3",
                        help="--model: drop lesions smaller than this (mm^3) from the masks "
                             "scored (default: the model's plan, chosen on validation by "
                             "tfversky train --operating-point)")
    add_data_arguments(parser)
    add_folder_arguments(parser)
    parser.set_defaults(handler=_evaluate, dataset=None)  # None: the model's record says


def _given_or_recorded(args, record: dict) -> list[str]:
    """Fills the dataset flags not given from the run record; returns how the given ones
    differ from it (one ``--flag X (trained on Y)`` each)."""
    recorded = record.get("dataset", {}).get("options", {})
    if args.dataset is not None and args.dataset != recorded.get("dataset", args.dataset):
        return []  # another dataset (e.g. an external test set): checked on its grid etc.
    differ = []
    for name in DATASET_FLAGS:
        given, saved = getattr(args, name, None), recorded.get(name)
        if given is None:
            setattr(args, name, saved)
        elif saved is not None and str(given) != str(saved) and name != "manual_dir":
            differ.append(f"--{name.replace('_', '-')} {given} (trained on {saved})")
    return differ


def _describe_training(record: dict) -> str:
    splits = record.get("splits", {})
    return (f"the model was trained on {splits.get('train')} "
            f"({len(splits.get('train_subjects', []))} subjects), validated on "
            f"{len(splits.get('validation_subjects', []))} of them and tested on "
            f"{splits.get('test')}")


def check_evaluation_data(args, model_plan, adapter, builder) -> str:
    """Refuses data the model was not made for, before anything is built: every difference
    from the model's plan and run record (grid, placement, modalities, folds, version, the
    dataset flags) in one line, and a split that holds the model's training folds. Returns
    the split to score (``--split``, else the record's test split)."""
    record = model_plan.record
    modalities, grid, _, placement = adapter.describe(builder)
    differ = []
    if tuple(modalities) != tuple(model_plan.modalities):
        differ.append(f"modalities {','.join(modalities)} (the model takes "
                      f"{','.join(model_plan.modalities)})")
    if grid != model_plan.grid:
        differ.append(f"grid {'x'.join(map(str, grid.shape))} at "
                      f"{'x'.join(f'{v:g}' for v in grid.spacing)} mm (the model's: "
                      f"{'x'.join(map(str, model_plan.grid.shape))} at "
                      f"{'x'.join(f'{v:g}' for v in model_plan.grid.spacing)} mm)")
    if placement != model_plan.placement:
        differ.append(f"placement {placement} (the model's: {model_plan.placement})")
    trained = record.get("dataset", {})
    same_dataset = trained.get("name") == args.dataset
    folds = adapter.num_folds(args, builder)
    if same_dataset and trained.get("num_folds") not in (None, folds):
        differ.append(f"{folds} folds (trained with {trained['num_folds']}: --num-folds "
                      f"{trained['num_folds']})")
    version = dataset_version(args)
    if same_dataset and trained.get("version") not in (None, version):
        differ.append(f"{args.dataset} version {version} (trained on {trained['version']})")
    if differ:
        raise UsageError(
            f"--model {args.model} was not made for this data: {'; '.join(differ)}. "
            + (f"Leave the dataset flags out to evaluate on its own data ({trained['name']}); "
               + _describe_training(record) if trained else
               "Evaluate on data prepared as its plan says: " + model_plan.describe()))
    split = args.split or record.get("splits", {}).get("test")
    if split is None:
        raise UsageError(f"--model {args.model} records no test split: give --split "
                         f"(e.g. fold1)")
    names = [f"fold{k}" for k in range(folds or 0)]
    unknown = [part for part in split.split("+") if names and part not in names]
    if unknown:
        raise UsageError(f"--split {split!r}: {args.dataset} has no split "
                         f"{unknown[0]!r}; its splits are {', '.join(names)} (join them "
                         f"with +, e.g. {'+'.join(names[:2])})")
    if same_dataset and record.get("splits"):
        training_folds = set(record["splits"]["train"].split("+"))
        used = sorted(training_folds & set(split.split("+")))
        if used:
            raise UsageError(
                f"--split {split}: {'+'.join(used)} held the model's training or validation "
                f"subjects ({_describe_training(record)}); score {record['splits']['test']}, "
                f"or train another fold")
    return split


def add_folder_arguments(parser) -> None:
    """``tfversky evaluate``'s folder mode: masks in folders instead of a model."""
    folders = parser.add_argument_group(
        "folders of masks (instead of --model): cases.csv, lesions.csv, summary.json in --out")
    folders.add_argument("--predictions", metavar="DIR",
                         help="predicted masks (0/1), label maps (--label) or lesion "
                              "probability maps, one per case: CASE.nii.gz or BIDS names")
    folders.add_argument("--truth", metavar="DIR",
                         help="reference masks, matched to the predictions by case name; the "
                              "scores are on each reference's grid and voxel size")
    folders.add_argument("--allow-missing", action="store_true",
                         help="score the matched cases when some have no partner (listed in "
                              "summary.json) instead of refusing")
    folders.add_argument("--label", type=_flag(arguments.non_negative_int, int), default=None,
                         metavar="VALUE",
                         help="the lesion's value in label maps (other values are background)")
    folders.add_argument("--threshold", type=_flag(arguments.threshold), default=None,
                         help="lesion where a probability map is >= this (default: with "
                              "--model, the model's plan; with --predictions, 0.5)")
    folders.add_argument("--tolerance-mm", type=_flag(arguments.non_negative_number), default=1.0,
                         metavar="MM",
                         help="the normalised surface Dice's tolerance")
    folders.add_argument("--overwrite", action="store_true",
                         help="replace an earlier evaluation's files in --out (both modes; "
                              "never a training run's)")


def _evaluate_folders(args) -> int:
    from tfversky import evaluation

    if args.model is not None:
        raise UsageError("--model scores a model on a dataset split, --predictions/--truth "
                         "score folders of masks: give one or the other")
    if not (args.predictions and args.truth):
        raise UsageError("--predictions DIR and --truth DIR go together: give both")
    if args.min_lesion_volume is not None:
        raise UsageError(f"--min-lesion-volume {args.min_lesion_volume:g}: applies to a "
                         f"--model's probabilities; masks in --predictions are scored as they "
                         f"are")
    try:
        summary = evaluation.evaluate_folders(
            args.predictions, args.truth, args.out, allow_missing=args.allow_missing,
            label=args.label, threshold=0.5 if args.threshold is None else args.threshold,
            tolerance_mm=args.tolerance_mm,
            overwrite=args.overwrite)
    except evaluation.FolderError as err:
        raise UsageError(str(err)) from None
    mean, pooled = summary["mean"], summary["pooled"]
    print(f"{summary['cases']} case(s): mean DSC {mean['dsc']:.4f}, HD95 {mean['hd95_mm']:.2f} "
          f"mm, lesion F1 {mean['lesion_f1']:.4f}; pooled DSC {pooled['dsc']:.4f}, lesion F1 "
          f"{pooled['lesion_f1']:.4f}; lesion load r = "
          f"{summary['volume_correlation']['pearson_r']:.3f}")
    for side, names in summary["unmatched"].items():
        if names:
            print(f"not scored (only in --{side}): {', '.join(names)}")
    print(f"written to {args.out}: " + ", ".join(evaluation.SCORE_FILES))
    return 0


def _evaluate(args) -> int:
    import warnings

    if args.predictions is not None or args.truth is not None:
        return _evaluate_folders(args)  # masks alone: no TensorFlow needed

    from tfversky import data, evaluation, plan as plan_lib

    if args.model is None:
        raise UsageError("give --model FILE (a model on a dataset split) or --predictions "
                         "DIR --truth DIR (folders of masks)")
    if not os.path.isfile(args.model):
        raise UsageError(f"--model file {args.model!r} does not exist")
    # Before any work: never into a training run (its evaluation is part of its record),
    # nor over an earlier evaluation without --overwrite.
    if (pathlib.Path(args.out) / "results.json").exists():
        raise UsageError(f"--out {args.out!r} holds a training run (results.json), whose "
                         f"evaluation belongs to it: give another folder")
    try:
        evaluation.check_outputs(args.out, args.overwrite, evaluation.FOLD_FILES)
    except evaluation.FolderError as err:
        raise UsageError(str(err)) from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", plan_lib.PlanWarning)
            model_plan = plan_lib.read_plan(args.model)
    except ValueError as err:
        raise UsageError(f"--model: {err}") from None
    record = model_plan.record
    differ = _given_or_recorded(args, record)
    if args.dataset is None:
        raise UsageError(
            f"--model {args.model} carries no run record (trained before tfversky recorded "
            f"one, or outside tfversky train): give the dataset flags (--dataset, and "
            f"--manual-dir etc. for nnunet/bids); its data cannot be checked then")
    if differ:
        raise UsageError(
            f"--model {args.model} was trained on other data: {'; '.join(differ)}; leave "
            f"these flags out to evaluate on its own data ({_describe_training(record)})")
    _check_dataset_name(args)
    adapter = dataset_adapter(args)
    adapter.num_folds(args)  # --num-folds against a config's own: a UsageError
    split = check_evaluation_data(args, model_plan, adapter,
                                  adapter.open_dataset(args, prepare=False))
    if not record:
        print(f"warning: --model {args.model} carries no run record: the data and the split "
              f"cannot be checked against what it was trained on", file=sys.stderr)
    builder = adapter.open_dataset(args)  # builds the dataset on first use (minutes)
    ignore_index = adapter.describe(builder)[2]
    volumes = adapter.read_split(args, builder, split)
    members, digest = fold_members(args, builder)
    if record.get("dataset", {}).get("name") == args.dataset:
        if digest != record["dataset"].get("digest", digest):
            raise UsageError(
                f"--model {args.model}: {args.dataset} now holds other scans or other folds "
                f"than it was trained on (digest {digest}, trained on "
                f"{record['dataset']['digest']}): its test split may hold training subjects; "
                f"evaluate on the data it was trained on, or retrain")
    seen = set(record.get("splits", {}).get("train_subjects", [])) | set(
        record.get("splits", {}).get("validation_subjects", []))
    overlap = sorted(seen & set(split_subjects(members, split)))
    if overlap:
        raise UsageError(
            f"--split {split} holds {len(overlap)} subject(s) the model was trained or "
            f"validated on ({', '.join(overlap[:5])}{', ...' if len(overlap) > 5 else ''}): "
            f"{_describe_training(record)}")
    model = arguments.load_model_file(args.model)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        results = evaluation.evaluate_fold(model, data.iterate_volumes(volumes), out,
                                           plan=model_plan, threshold=args.threshold,
                                           min_lesion_mm3=args.min_lesion_volume,
                                           ignore_index=ignore_index,
                                           total=int(volumes.cardinality()))
    except ValueError as err:
        raise UsageError(f"--split {split!r}: {' '.join(str(err).split())}") from None
    point = results["operating_point"]
    print(f"operating point ({point['from']}): threshold {point['threshold']:g}, minimum "
          f"lesion {point['min_lesion_mm3']:g} mm^3")
    print_report(results, out, [evaluation.RESULT_FILE, "evaluator.npz", "pr_curve.png",
                                "overlays/", "predictions/"])
    return 0
