"""Build ``ms_lesions`` from the command line (TFDS's own ``tfds build`` needs apache_beam).

    python -m tfds_ms --config synthetic_lowres --data-dir ~/tensorflow_datasets
    python -m tfds_ms --config msseg2016 --manual-dir /data/msseg2016
"""

import argparse
import sys
import time


def main(argv=None) -> int:
    import tensorflow_datasets as tfds

    from tfds_ms import MsLesions

    configs = [config.name for config in MsLesions.BUILDER_CONFIGS]
    parser = argparse.ArgumentParser(prog="python -m tfds_ms", description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=configs, default="synthetic",
                        help="builder config (default synthetic)")
    parser.add_argument("--data-dir", default=None,
                        help="where TFDS keeps datasets (default ~/tensorflow_datasets)")
    parser.add_argument("--manual-dir", default=None,
                        help="the unpacked ISBI 2015 / MSSEG 2016 folder (real-data configs)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    builder = tfds.builder(f"ms_lesions/{args.config}", data_dir=args.data_dir)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=args.manual_dir))
    splits = ", ".join(f"{name}: {split.num_examples}"
                       for name, split in sorted(builder.info.splits.items()))
    print(f"ms_lesions/{args.config} in {builder.data_dir} ({splits}; "
          f"{time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
