"""Train a 3D U-Net with the Tversky loss on MS lesions, then evaluate it as the paper does.

Title: Tversky loss for MS lesion segmentation (Salehi et al. 2017)
Description: data -> 3D U-Net -> Tversky loss -> model.fit (tf.distribute) ->
    whole-volume inference -> DSC / sensitivity / specificity / F2 / APR, PR curves, overlays.

    python examples/train_ms.py                      # the synthetic demo (2-core CPU: minutes)
    python examples/train_ms.py --alpha 0.5 --beta 0.5 --out runs/dice
    python examples/train_ms.py --dataset ms_lesions/msseg2016 --manual-dir /data/msseg2016 \\
        --patch-size 64 --batch-size 4 --epochs 1000 --steps-per-epoch 100 --lr 1e-4
    python examples/train_ms.py --dataset ms_lesions/nnunet --manual-dir /data/Dataset501_MS
    python examples/train_ms.py --dataset ms_lesions/bids --manual-dir /data/bids \\
        --modalities FLAIR,T1w

The model's input channels follow the dataset's modalities (nnU-Net: dataset.json's
channel_names; BIDS: --modalities).

alpha weighs false positives, beta false negatives, as in the paper (best: 0.3, 0.7).

Sections: 1. devices and strategy; 2. data; 3. model and loss; 4. training (resumable);
5. evaluation on the held-out fold and the report in --out.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

# Reproducible CPU numerics and a quieter log, before TensorFlow is imported.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

STRATEGIES = ("auto", "mirrored", "multiworker", "default")


class UsageError(Exception):
    """A user mistake: printed as one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="train_ms.py", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Train a 3D U-Net with the Tversky loss on MS lesion data and report the "
                    "paper's metrics on the held-out fold. alpha weighs false positives, beta "
                    "false negatives.")
    data = p.add_argument_group("data")
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
    data.add_argument("--subject-pattern", default=None, metavar="REGEX",
                      help="nnunet: regular expression on the case id whose match (or group "
                           "'subject') is the subject, so that a subject's sessions share a fold "
                           "(e.g. '^MS_[0-9]+' for MS_003_ses2)")
    data.add_argument("--mask-folder", default=None,
                      help="bids: folder(s) holding the lesion masks, a glob relative to "
                           "--manual-dir (default derivatives/*)")
    data.add_argument("--mask-pattern", default=None,
                      help="bids: file name glob of the masks (default *_desc-lesion_mask.nii.gz)")
    data.add_argument("--grid-shape", default=None, metavar="D,H,W",
                      help="nnunet/bids: reference grid voxels (default the paper's 128,224,256)")
    data.add_argument("--grid-spacing", default=None, metavar="X,Y,Z",
                      help="nnunet/bids: reference grid voxel size in mm (default 1.25,0.9,0.75: "
                           "a 160 x 201.6 x 192 mm field of view; larger brains are cropped, "
                           "with a warning)")
    data.add_argument("--fold", type=int, default=1,
                      help="test fold; training uses the other(s). Fold 1 of the synthetic data "
                           "holds its highest- and lowest-lesion-load subjects")
    data.add_argument("--num-folds", type=int, default=2,
                      help="folds of the dataset (paper: 2; nnunet: must match "
                           "splits_final.json when the dataset has one)")
    data.add_argument("--patch-size", type=int, default=48,
                      help="cubic training patch edge; a multiple of 2^(depth-1)")
    data.add_argument("--lesion-fraction", type=float, default=0.5,
                      help="fraction of patches centred on a lesion voxel")
    loss = p.add_argument_group("loss")
    loss.add_argument("--alpha", type=float, default=0.3, help="false-positive weight")
    loss.add_argument("--beta", type=float, default=0.7, help="false-negative weight")
    loss.add_argument("--gamma", type=float, default=1.0, help="focal exponent (1: plain)")
    loss.add_argument("--batch-dice", action=argparse.BooleanOptionalAction, default=True,
                      help="pool TP/FP/FN over the batch (TverskyLoss(batch=True), as nnU-Net): "
                           "a patch without lesion otherwise costs ~1 for any false-positive "
                           "mass, whose huge gradient can kill training")
    loss.add_argument("--loss-impl", choices=("auto", "tf", "fused"), default="auto",
                      help="pure TensorFlow, the fused C++/CUDA op, or fused where available")
    train = p.add_argument_group("training")
    train.add_argument("--epochs", type=int, default=12)
    train.add_argument("--steps-per-epoch", type=int, default=100)
    train.add_argument("--batch-size", type=int, default=2,
                       help="global batch (split over the replicas)")
    train.add_argument("--lr", type=float, default=1e-3,
                       help="Adam learning rate, x0.9 every 1000 steps (paper: 1e-4 for 1000 "
                            "epochs; 1e-3 suits the short CPU demo)")
    train.add_argument("--base-filters", type=int, default=8, help="U-Net features at level 0")
    train.add_argument("--depth", type=int, default=4, help="U-Net resolution levels")
    train.add_argument("--normalization", choices=("none", "batch", "group", "instance"),
                       default="instance",
                       help="U-Net normalisation layers (the paper: none; see docs/training.md)")
    train.add_argument("--mixed-precision", action="store_true",
                       help="mixed_float16 policy (GPUs; the loss stays float32)")
    train.add_argument("--strategy", choices=STRATEGIES, default="auto",
                       help="auto: MirroredStrategy over >1 GPUs or --cpu-replicas, else default; "
                            "multiworker reads TF_CONFIG")
    train.add_argument("--cpu-replicas", type=int, default=1,
                       help="split the CPU into N logical devices (to run MirroredStrategy "
                            "without GPUs)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--verbose", type=int, choices=(0, 1, 2), default=None,
                       help="Keras fit verbosity (default: a progress bar on a terminal, one "
                            "line per epoch otherwise)")
    ev = p.add_argument_group("evaluation")
    ev.add_argument("--overlap", type=float, default=0.25,
                    help="sliding-window overlap of whole-volume inference")
    ev.add_argument("--inference-patch", type=int, default=128,
                    help="sliding-window edge of whole-volume inference")
    ev.add_argument("--threshold", type=float, default=0.5, help="lesion if p >= threshold")
    p.add_argument("--out", default="runs/train_ms", help="output folder (reuse it to resume)")
    return p


def check_args(args) -> None:
    """Mistakes that would otherwise surface minutes later, deep inside TensorFlow."""
    multiple = 2 ** (args.depth - 1)
    if args.patch_size % multiple or args.patch_size < multiple:
        lower = max(multiple, args.patch_size // multiple * multiple)
        raise UsageError(f"--patch-size {args.patch_size} is not a multiple of 2^(depth-1) = "
                         f"{multiple} for --depth {args.depth}; use {lower} or {lower + multiple}")
    if args.strategy == "multiworker" and not os.environ.get("TF_CONFIG"):
        raise UsageError("--strategy multiworker needs the TF_CONFIG environment variable (the "
                         "cluster and this worker's task), e.g. TF_CONFIG='{\"cluster\": "
                         "{\"worker\": [\"host1:12345\", \"host2:12345\"]}, \"task\": "
                         "{\"type\": \"worker\", \"index\": 0}}'")
    if args.cpu_replicas < 1:
        raise UsageError(f"--cpu-replicas must be >= 1, got {args.cpu_replicas}")
    if args.batch_size % max(args.cpu_replicas, 1):
        raise UsageError(f"--batch-size {args.batch_size} must be divisible by --cpu-replicas "
                         f"{args.cpu_replicas} (each replica takes an equal share)")
    if not args.dataset.startswith("ms_lesions/"):
        raise UsageError(f"--dataset {args.dataset!r}: expected ms_lesions/<config>")
    for name in ("epochs", "steps_per_epoch", "batch_size"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.manual_dir and not pathlib.Path(args.manual_dir).is_dir():
        raise UsageError(f"--manual-dir {args.manual_dir}: no such folder")


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


def is_chief(strategy) -> bool:
    """Only the chief worker writes the report (every worker trains)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or resolver.task_type is None:
        return True
    return resolver.task_type in ("chief", "worker") and resolver.task_id == 0 and (
        resolver.task_type == "chief" or "chief" not in resolver.cluster_spec().as_dict())


# --- 2. data ----------------------------------------------------------------------------------


USER_OPTIONS = ("modalities", "subject_pattern", "mask_folder", "mask_pattern", "grid_shape",
                "grid_spacing")


def load_splits(args, skip_batches: int = 0):
    """(training patches, test-fold volumes, (modalities, grid, ignore_index, placement)).

    The third item describes the dataset: its canonical modality names in channel order
    (the model's inputs), its ``ReferenceGrid``, the label value the loss leaves out
    (or None), and how the grid was placed on each scan (the plan's ``placement``). Wrong datasets and options are ``UsageError``s.
    """
    try:  # the builder is an adapter: only this step needs it
        import tensorflow_datasets as tfds

        import tfds_ms
    except ImportError as error:
        raise UsageError(f"--dataset {args.dataset} needs the data extras (tensorflow-datasets "
                         f"and tfds_ms): {error}. Install them: pip install "
                         f"'tensorflow-datasets==4.9.*' (tfds_ms ships with tfversky).") from None
    from tfds_ms import layouts
    from tfversky import data

    config = args.dataset.split("/", 1)[1]
    known = [c.name for c in tfds_ms.MsLesions.BUILDER_CONFIGS]
    if config not in known:
        raise UsageError(f"--dataset {args.dataset!r}: unknown config {config!r}; expected one "
                         f"of {', '.join('ms_lesions/' + k for k in known)}")
    user = config in layouts.USER_LAYOUTS
    given = [name for name in USER_OPTIONS if getattr(args, name, None) is not None]
    if given and not user:
        raise UsageError(f"--{given[0].replace('_', '-')} is for --dataset ms_lesions/nnunet or "
                         f"ms_lesions/bids, not {args.dataset}")
    options = {}
    if user:
        try:
            grid = tfds_ms.parse_grid(args.grid_shape, args.grid_spacing)
        except ValueError as error:
            raise UsageError(str(error)) from None
        options = dict(modalities=args.modalities, subject_pattern=args.subject_pattern,
                       mask_folder=args.mask_folder, mask_pattern=args.mask_pattern, grid=grid,
                       num_folds=args.num_folds)
    try:
        train_split, test_split = data.fold_splits(args.fold, args.num_folds)
    except ValueError as error:
        raise UsageError(f"--fold {args.fold}: {error}") from None
    try:
        builder = tfds_ms.builder(args.dataset, data_dir=args.data_dir,
                                  manual_dir=args.manual_dir, **options)
        train = builder.as_dataset(split=train_split, shuffle_files=False)
        test = builder.as_dataset(split=test_split, shuffle_files=False)
    except (tfds.core.download.download_manager.NonMatchingChecksumError, ValueError,
            FileNotFoundError, AssertionError) as error:
        raise UsageError(f"--dataset {args.dataset}: {error}".splitlines()[0]) from None
    modalities = tfds_ms.dataset_modalities(builder)
    grid = tfds_ms.dataset_grid(builder)
    patches = data.patch_dataset(train, patch_size=(args.patch_size,) * 3,
                                 batch_size=args.batch_size,
                                 lesion_fraction=args.lesion_fraction, seed=args.seed,
                                 skip_batches=skip_batches)
    placement = "registration" if getattr(builder.builder_config, "register", False) else "brain_bbox"
    return patches, test, (modalities, grid, tfds_ms.dataset_ignore_index(builder), placement)


# --- 3. model and loss ------------------------------------------------------------------------


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
    model = models.unet3d(input_shape=(None, None, None, channels), base_filters=args.base_filters,
                          depth=args.depth,
                          normalization=None if args.normalization == "none" else args.normalization)
    schedule = keras.optimizers.schedules.ExponentialDecay(
        args.lr, decay_steps=1000, decay_rate=0.9, staircase=True)
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss=tfversky.TverskyLoss(args.alpha, args.beta, gamma=args.gamma,
                                  batch=args.batch_dice, implementation=args.loss_impl,
                                  ignore_index=ignore_index),
        metrics=[metrics.DiceScore(), metrics.Sensitivity(), metrics.FBetaScore(2.0)],
        # Keras's choice (XLA on a single GPU): the fused op lowers into XLA (docs/fused_op.md).
        jit_compile="auto")
    return model


def training_plan(args, modalities, grid, placement: str = "brain_bbox"):
    """What this run trains with, for the model's plan: the dataset's modalities and grid
    (and how the grid was placed), the normalisation, and the evaluation's window settings."""
    from tfversky import plan

    loss = {"name": "TverskyLoss", "alpha": args.alpha, "beta": args.beta, "gamma": args.gamma,
            "batch": args.batch_dice}  # alpha weighs false positives, beta false negatives
    return plan.Plan(modalities=tuple(modalities), grid=grid, placement=placement,
                     patch_size=args.inference_patch, overlap=args.overlap,
                     threshold=args.threshold, loss=loss)


# --- 4. training ------------------------------------------------------------------------------


def completed_epochs(backup: pathlib.Path) -> int:
    """Epochs a killed run finished, from BackupAndRestore's metadata (0 for a new run)."""
    metadata = backup / "training_metadata.json"
    return json.loads(metadata.read_text())["epoch"] if metadata.exists() else 0


def train(args, strategy, out: pathlib.Path, chief: bool):
    import keras

    from tfversky import plan

    # Non-chief workers keep their checkpoints apart, so they never overwrite the chief's.
    work = out if chief else out / f"worker-{strategy.cluster_resolver.task_id}"
    # A resumed run continues the patch stream where the killed one stopped, so it trains
    # on exactly the batches an uninterrupted run would have.
    work.mkdir(parents=True, exist_ok=True)
    done = completed_epochs(work / "backup")
    if done:
        print(f"resuming after epoch {done} from {work / 'backup'}")
    patches, test, (modalities, grid, ignore_index, placement) = load_splits(
        args, skip_batches=done * args.steps_per_epoch)
    print(f"data: {args.dataset}, inputs {', '.join(modalities)} on a "
          f"{'x'.join(map(str, grid.shape))} grid of {' x '.join(f'{s:g}' for s in grid.spacing)} "
          f"mm" + (f", label {ignore_index} ignored by the loss" if ignore_index is not None else ""))
    with strategy.scope():
        # The plan rides in every .keras file written below (checkpoints included), so
        # `tfversky predict` prepares scans as these volumes were.
        model = plan.attach(build_model(args, modalities, ignore_index),
                            training_plan(args, modalities, grid, placement))
    callbacks = [
        keras.callbacks.BackupAndRestore(str(work / "backup")),
        keras.callbacks.ModelCheckpoint(str(work / "best.keras"), monitor="loss",
                                        save_best_only=True),
        keras.callbacks.CSVLogger(str(work / "training_log.csv"), append=True),
        keras.callbacks.TensorBoard(str(work / "logs"), write_graph=False),
    ]
    verbose = args.verbose if args.verbose is not None else (1 if sys.stdout.isatty() else 2)
    start = time.perf_counter()
    history = model.fit(patches, epochs=args.epochs, steps_per_epoch=args.steps_per_epoch,
                        callbacks=callbacks, verbose=verbose, shuffle=False)
    seconds = time.perf_counter() - start
    return model, test, history.history, seconds, modalities, ignore_index


# --- 5. evaluation and report -----------------------------------------------------------------


def print_report(results: dict, out: pathlib.Path) -> None:
    rows = results["subjects"] + [{"subject": "pooled", **results["pooled"]}]
    from tfversky import metrics

    keys = metrics.PAPER_METRICS + ("ltpr", "lfpr")
    width = max(len(r["subject"]) for r in rows)
    print(f"\n{'subject':<{width}}  " + "  ".join(f"{k:>11}" for k in keys))
    for row in rows:
        print(f"{row['subject']:<{width}}  " + "  ".join(f"{100 * row[k]:>10.2f}%" for k in keys))
    print(f"\nwritten to {out}:")
    for path in ["results.json", "model.keras", "pr_curve.png", "overlays/", "predictions/",
                 "training_log.csv", "logs/"]:
        print(f"  {out / path}")


def run(args) -> dict:
    check_args(args)
    strategy = make_strategy(args.strategy, args.cpu_replicas)  # before any other TF work
    import keras
    import tensorflow as tf

    import tfversky
    from tfversky import data, evaluation, fused

    keras.backend.clear_session()  # a fresh graph and layer names for every run in a process
    keras.utils.set_random_seed(args.seed)
    if args.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    out = pathlib.Path(args.out)
    chief = is_chief(strategy)
    out.mkdir(parents=True, exist_ok=True)
    # What "auto" resolves to here, inside XLA too (Keras's default on a single GPU).
    loss_impl = "tf" if args.loss_impl == "tf" or not fused.is_available() else "fused"
    if loss_impl == "fused" and fused.xla_unavailable_reason() is not None:
        loss_impl = "fused, or tf where Keras compiles with XLA"
    print(f"tfversky {tfversky.__version__}, TensorFlow {tf.__version__}, Keras "
          f"{keras.__version__}; strategy {type(strategy).__name__} with "
          f"{strategy.num_replicas_in_sync} replica(s); loss: {loss_impl}, alpha={args.alpha} "
          f"(FP), beta={args.beta} (FN)")
    model, test, history, train_seconds, modalities, ignore_index = train(args, strategy, out,
                                                                          chief)
    if not chief:
        return {}
    model.save(out / "model.keras")
    # Inference uses the saved model, loaded outside the strategy: it runs locally (the other
    # workers have finished) and it checks the artifact users get.
    model = keras.models.load_model(out / "model.keras")
    start = time.perf_counter()
    results = evaluation.evaluate_fold(model, data.iterate_volumes(test), out,
                                       ignore_index=ignore_index, total=int(test.cardinality()))
    results.update(
        config=vars(args), modalities=list(modalities), history=history,
        timing={"train_seconds": train_seconds,
                "inference_seconds": time.perf_counter() - start,
                "patches_per_second": args.epochs * args.steps_per_epoch * args.batch_size
                / train_seconds},
        loss_implementation=loss_impl,
        versions={"tfversky": tfversky.__version__, "tensorflow": tf.__version__,
                  "keras": keras.__version__})
    (out / "results.json").write_text(json.dumps(results, indent=2, default=float))
    print_report(results, out)
    return results


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except UsageError as error:
        print(f"train_ms.py: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
