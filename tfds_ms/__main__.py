"""Build ``ms_lesions`` from the command line (TFDS's own ``tfds build`` needs apache_beam).

    python -m tfds_ms --config synthetic_lowres --data-dir ~/tensorflow_datasets
    python -m tfds_ms --config msseg2016 --manual-dir /data/msseg2016
    python -m tfds_ms --config nnunet --manual-dir /data/Dataset501_MS --subject-pattern '^MS_[0-9]+'
    python -m tfds_ms --config bids --manual-dir /data/bids --modalities FLAIR,T1w
    python -m tfds_ms --config bids --manual-dir BIDS --modalities FLAIR --bids-filter FLAIR:acq=3D

A wrong folder or option is one line on stderr and exit status 2.
"""

import argparse
import sys
import time


def main(argv=None) -> int:

    import tfds_ms

    configs = [config.name for config in tfds_ms.MsLesions.BUILDER_CONFIGS]
    parser = argparse.ArgumentParser(prog="python -m tfds_ms", description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=configs, default="synthetic",
                        help="builder config (default synthetic)")
    parser.add_argument("--data-dir", default=None,
                        help="where TFDS keeps datasets (default ~/tensorflow_datasets)")
    parser.add_argument("--manual-dir", default=None,
                        help="the dataset folder: ISBI 2015 / MSSEG 2016 download, nnU-Net raw "
                             "dataset (holding dataset.json), BIDS dataset")
    user = parser.add_argument_group("nnunet and bids")
    user.add_argument("--modalities", help="input channels in order, e.g. FLAIR,T1w (bids: "
                                           "required; nnunet: default all channel_names)")
    user.add_argument("--subject-pattern", metavar="REGEX",
                      help="nnunet: regex on the case id giving the subject")
    user.add_argument("--mask-folder", help="bids: masks folder glob (default derivatives/*)")
    user.add_argument("--mask-pattern",
                      help="bids: mask file glob (default: _desc-lesion_mask, "
                           "_label-lesion_mask, _dseg with dseg.tsv)")
    user.add_argument("--bids-filter", action="append", metavar="CHANNEL:K=V",
                      help="bids: choose among several files of one channel, e.g. "
                           "FLAIR:acq=3D (repeatable)")
    user.add_argument("--bids-filter-file", metavar="JSON",
                      help="bids: filters as fMRIPrep's --bids-filter-file")
    user.add_argument("--require-labels", action="store_true", default=None,
                      help="refuse cases without a mask (default: leave them out, warning)")
    user.add_argument("--num-folds", type=int, help="folds (default 2, or splits_final.json's)")
    user.add_argument("--grid-shape", metavar="D,H,W",
                      help="grid voxels (default 128,224,256)")
    user.add_argument("--grid-spacing", metavar="X,Y,Z",
                      help="grid voxel size in mm (default 1.25,0.9,0.75)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    options = {name: getattr(args, name) for name in
               ("modalities", "subject_pattern", "mask_folder", "mask_pattern", "num_folds",
                "bids_filter", "bids_filter_file", "require_labels")}
    try:
        options["grid"] = tfds_ms.parse_grid(args.grid_shape, args.grid_spacing)
        builder = tfds_ms.builder(f"ms_lesions/{args.config}", data_dir=args.data_dir,
                                  manual_dir=args.manual_dir, **options)
    except (ValueError, FileNotFoundError, AssertionError) as error:
        print(f"python -m tfds_ms: error: {str(error).splitlines()[0]}", file=sys.stderr)
        return 2
    splits = ", ".join(f"{name}: {split.num_examples}"
                       for name, split in sorted(builder.info.splits.items()))
    print(f"ms_lesions/{builder.builder_config.name} ({', '.join(tfds_ms.dataset_modalities(builder))})"
          f" in {builder.data_dir} ({splits}; {time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
