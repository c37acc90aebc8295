"""TFDS builder ``ms_lesions`` (MS lesion MRI on one reference grid) and the synthetic phantom.

Importing the package registers the builder::

    import tensorflow_datasets as tfds
    import tfds_ms  # registers "ms_lesions"

    ds = tfds.load("ms_lesions", split="fold0")                 # synthetic phantom, offline
    ds = tfds.load("ms_lesions/isbi2015", split="fold1", download_and_prepare_kwargs={
        "download_config": tfds.download.DownloadConfig(manual_dir="/data/isbi2015")})
    ds = tfds_ms.load_dataset("ms_lesions/nnunet", "fold0", manual_dir="/data/Dataset501_MS")
    ds = tfds_ms.load_dataset("ms_lesions/bids", "fold0", manual_dir="/data/bids",
                              modalities="FLAIR,T1w")

Modules: ``ms_lesions`` (the builder and its configs), ``load`` (a split by name: the
examples ``tfversky.data`` takes), ``layouts`` (each dataset's files),
``scans`` (reading and checking one scan), ``synth`` (the phantom, ``python -m tfds_ms.synth``).
"""

from tfversky._extras import require

# The builder needs TensorFlow and the `data` extra: say so once, here, rather than fail deep
# in an import.
for _module in ("tensorflow", "tensorflow_datasets", "nibabel", "scipy"):
    require(_module, "tfds_ms, the ms_lesions TFDS builder,")
del _module

from tfds_ms.load import builder, load_dataset, parse_grid
from tfds_ms.ms_lesions import (MANUAL_DOWNLOAD_INSTRUCTIONS, CacheMismatchError, MsLesions,
                                 MsLesionsConfig, assign_folds, dataset_grid,
                                 dataset_ignore_index, dataset_modalities,
                                 dataset_preparation, user_config)

__all__ = ["MANUAL_DOWNLOAD_INSTRUCTIONS", "CacheMismatchError", "MsLesions", "MsLesionsConfig",
           "assign_folds", "builder", "dataset_grid", "dataset_ignore_index",
           "dataset_modalities", "dataset_preparation", "load_dataset", "parse_grid",
           "user_config"]
