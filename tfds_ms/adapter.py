"""The ``ms_lesions`` builder as the dataset adapter of ``tfversky train`` and ``evaluate``.

The core finds this module by its entry point (``tfversky.datasets``: ``ms_lesions``, see
``tfversky/_adapters.py``) and never imports it by name. Every mistake in the dataset flags
is a ``tfversky.arguments.UsageError``: one line, exit code 2.
"""

from __future__ import annotations

from tfversky.arguments import UsageError

# Options of the user layouts (nnunet, bids) only.
USER_OPTIONS = ("modalities", "subject_pattern", "mask_folder", "mask_pattern", "bids_filter",
                "bids_filter_file", "require_labels", "grid_shape", "grid_spacing")


def open_dataset(args, prepare: bool = True):
    """The ``ms_lesions`` builder of ``--dataset`` and its options; ``UsageError`` if wrong.
    With ``prepare=False`` nothing is built: its description (``describe``) is known, its
    splits are not."""
    try:  # the builder is an adapter: only this step needs it
        import tensorflow_datasets as tfds

        import tfds_ms
    except ImportError as error:
        raise UsageError(f"--dataset {args.dataset} needs the data extras (tensorflow-datasets "
                         f"and tfds_ms): {error}. Install them: pip install "
                         f"'tensorflow-datasets==4.9.*' (tfds_ms ships with tfversky).") from None
    from tfds_ms import layouts

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
                       num_folds=args.num_folds, bids_filter=getattr(args, "bids_filter", None),
                       bids_filter_file=getattr(args, "bids_filter_file", None),
                       require_labels=getattr(args, "require_labels", None))
    try:
        builder = tfds_ms.builder(args.dataset, data_dir=args.data_dir,
                                  manual_dir=args.manual_dir, prepare=prepare, **options)
    except _dataset_errors(tfds) as error:
        raise UsageError(f"--dataset {args.dataset}: {error}".splitlines()[0]) from None
    return builder


def version(args) -> str:
    """The ``ms_lesions`` builder's version (the same for every config): a release that
    makes a config's data differently bumps it (``MsLesions.RELEASE_NOTES``)."""
    import tfds_ms

    return str(tfds_ms.MsLesions.VERSION)


def num_folds(args, builder=None) -> int | None:
    """The folds of ``--dataset``: a config's own, or those a user dataset was built with
    (``--num-folds``, else 2 or its ``splits_final.json``: None until ``builder`` is open).
    ``--num-folds`` against a config's own folds is a ``UsageError``."""
    if builder is not None:
        return builder.builder_config.num_folds
    import tfds_ms
    from tfds_ms import layouts

    config = args.dataset.split("/", 1)[1]
    if config in layouts.USER_LAYOUTS:
        return args.num_folds
    declared = {c.name: c.num_folds for c in tfds_ms.MsLesions.BUILDER_CONFIGS}.get(config)
    if declared is not None and args.num_folds not in (None, declared):
        raise UsageError(f"--num-folds {args.num_folds}: {args.dataset} has {declared} "
                         f"folds of its own; leave --num-folds out (it is for "
                         f"ms_lesions/nnunet and ms_lesions/bids)")
    return declared  # None for an unknown config: open_dataset's error


def _dataset_errors(tfds):
    return (tfds.core.download.download_manager.NonMatchingChecksumError, ValueError,
            FileNotFoundError, AssertionError)


def read_split(args, builder, split: str, flag: str = "--split"):
    """One split of ``builder`` as a dataset of whole volumes; ``UsageError`` if wrong."""
    import tensorflow_datasets as tfds

    try:
        return builder.as_dataset(split=split, shuffle_files=False)
    except _dataset_errors(tfds) as error:
        raise UsageError(f"{flag} {split!r} of --dataset {args.dataset}: "
                         f"{error}".splitlines()[0]) from None


def describe(builder):
    """(modalities, grid, ignore_index, placement) of a dataset: its canonical modality names
    in channel order (the model's inputs), its ``ReferenceGrid``, the label value the loss
    leaves out (or None), and how the grid was placed on each scan (the plan's
    ``placement``)."""
    import tfds_ms

    placement = ("registration" if getattr(builder.builder_config, "register", False)
                 else "brain_bbox")
    return (tfds_ms.dataset_modalities(builder), tfds_ms.dataset_grid(builder),
            tfds_ms.dataset_ignore_index(builder), placement)


def preparation(builder) -> dict:
    """How a dataset made its volumes, as ``tfversky.plan.Plan`` fields: the intensity
    normalisation and whether its scans were skull-stripped (``tfds_ms.dataset_preparation``).
    A model trained on it records them in its plan, so ``predict`` prepares a scan the same
    way and knows whether the model has seen raw scans."""
    import tfds_ms

    return tfds_ms.dataset_preparation(builder)
