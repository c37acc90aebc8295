"""TFDS builder ``ms_lesions`` (MS lesion MRI on one reference grid) and the synthetic phantom.

Importing the package registers the builder::

    import tensorflow_datasets as tfds
    import tfds_ms  # registers "ms_lesions"

    ds = tfds.load("ms_lesions", split="fold0")                 # synthetic phantom, offline
    ds = tfds.load("ms_lesions/isbi2015", split="fold1", download_and_prepare_kwargs={
        "download_config": tfds.download.DownloadConfig(manual_dir="/data/isbi2015")})

Modules: ``ms_lesions`` (the builder and its configs), ``layouts`` (each dataset's files),
``scans`` (reading and checking one scan), ``synth`` (the phantom, ``python -m tfds_ms.synth``).
"""

from tfversky._extras import require

# The builder needs the `data` extra: say so once, here, rather than fail deep in an import.
for _module in ("tensorflow_datasets", "nibabel", "scipy"):
    require(_module)
del _module

from tfds_ms.ms_lesions import (MANUAL_DOWNLOAD_INSTRUCTIONS, MsLesions, MsLesionsConfig,
                                 assign_folds)

__all__ = ["MANUAL_DOWNLOAD_INSTRUCTIONS", "MsLesions", "MsLesionsConfig", "assign_folds"]
