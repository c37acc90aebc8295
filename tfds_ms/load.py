"""Loading ``ms_lesions`` by name: the TFDS side of ``tfversky.data``'s patch pipeline.

``tfversky.data`` takes examples (a ``tf.data`` dataset of dicts) and knows no dataset names;
this module turns a name such as ``"ms_lesions/nnunet"`` and a folder into those examples,
building the dataset on first use.
"""

from __future__ import annotations

import tensorflow_datasets as tfds

from tfversky.preprocessing import PAPER_GRID, ReferenceGrid

# Imported for its side effect too: the module registers the builder with TFDS.
from tfds_ms.ms_lesions import MsLesions

_OPTIONS = ("modalities", "grid", "num_folds", "subject_pattern", "mask_folder", "mask_pattern",
            "bids_filter", "bids_filter_file", "require_labels")


def builder(name: str = "ms_lesions/synthetic", *, data_dir: str | None = None,
            manual_dir: str | None = None, prepare: bool = True,
            **options) -> tfds.core.DatasetBuilder:
    """The ``ms_lesions`` builder for ``name``, prepared (built on first use).

    Args:
        name: ``"ms_lesions/<config>"``: ``synthetic``, ``synthetic_lowres``,
            ``synthetic_tiny``, ``isbi2015``, ``isbi2015_mask2``, ``msseg2016``, ``nnunet``,
            ``bids``. Defaults to ``"ms_lesions/synthetic"``.
        data_dir: Where TFDS keeps built datasets. Defaults to TFDS's (~/tensorflow_datasets).
        manual_dir: The dataset folder (real-data configs).
        prepare: Build the dataset if it is not there. Defaults to True.
        **options: For ``nnunet`` and ``bids``: ``modalities``, ``grid``, ``num_folds``,
            ``subject_pattern``, ``mask_folder``, ``mask_pattern``, ``bids_filter``,
            ``bids_filter_file``, ``require_labels`` (``user_config``); None values are left
            out.

    Raises:
        ValueError: an unknown config, option, or a dataset folder that breaks its layout
            (``tfds_ms.layouts.LayoutError``); ``CacheMismatchError`` for a prepared copy
            built from other files.

    Example:

    >>> import tempfile
    >>> b = builder("ms_lesions/synthetic_tiny", data_dir=tempfile.mkdtemp(), prepare=False)
    >>> b.info.features["image"].shape
    (32, 56, 64, 3)
    """
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise TypeError(f"Unknown option(s) {unknown}: expected some of {_OPTIONS}.")
    kwargs = {key: value for key, value in options.items() if value is not None}
    if not name.startswith("ms_lesions/") and name != "ms_lesions":
        found = tfds.builder(name, data_dir=data_dir, **kwargs)
    else:
        config = name.partition("/")[2] or MsLesions.DEFAULT_CONFIG_NAME
        found = MsLesions(config=config, data_dir=data_dir, manual_dir=manual_dir, **kwargs)
    if prepare:
        found.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    return found


def load_dataset(name: str = "ms_lesions/synthetic", split: str = "fold0", *,
                 data_dir: str | None = None, manual_dir: str | None = None, **options):
    """One split of ``ms_lesions``, unbatched, one whole volume per element.

    Args:
        name: As for ``builder``. Defaults to ``"ms_lesions/synthetic"``.
        split: e.g. ``"fold0"`` or ``"fold0+fold2"`` (``tfversky.data.fold_splits``).
            Defaults to "fold0".
        data_dir, manual_dir, **options: As for ``builder``.

    Returns:
        A ``tf.data.Dataset`` of dicts (features as in ``ms_lesions``), for
        ``tfversky.data.patch_dataset`` and ``tfversky.data.iterate_volumes``.

    Raises:
        ValueError: as ``builder``.

    Example:

    >>> import tempfile
    >>> load_dataset("ms_lesions/miccai2008", data_dir=tempfile.mkdtemp())  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: BuilderConfig miccai2008 not found ...
    """
    found = builder(name, data_dir=data_dir, manual_dir=manual_dir, **options)
    return found.as_dataset(split=split, shuffle_files=False)


def parse_grid(shape: str | None = None, spacing: str | None = None) -> ReferenceGrid | None:
    """A ``ReferenceGrid`` from command-line text; the part not given is the paper's.

    Args:
        shape: Voxels per axis, e.g. ``"128,224,256"``.
        spacing: Voxel size per axis in mm, e.g. ``"1.25,0.9,0.75"``.

    Returns:
        The grid, or None when neither is given (the dataset's default).

    Raises:
        ValueError: naming the flag (``--grid-shape`` / ``--grid-spacing``) and the value.

    Example:

    >>> parse_grid("16,24,24", "10,8.4,8").field_of_view
    (160.0, 201.6, 192.0)
    >>> parse_grid() is None
    True
    """
    if shape is None and spacing is None:
        return None
    values = {}
    for flag, text, kind, default in (("--grid-shape", shape, int, PAPER_GRID.shape),
                                      ("--grid-spacing", spacing, float, PAPER_GRID.spacing)):
        try:
            values[flag] = default if text is None else tuple(kind(v) for v in text.split(","))
        except ValueError:
            values[flag] = ()
        if len(values[flag]) != 3 or not all(v > 0 for v in values[flag]):
            raise ValueError(f"{flag} {text!r}: expected three positive "
                             f"{'integers' if kind is int else 'sizes in mm'} such as "
                             f"{','.join(f'{v:g}' for v in default)}")
    return ReferenceGrid(values["--grid-shape"], values["--grid-spacing"])
