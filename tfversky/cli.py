"""The ``python -m tfversky`` (or ``tfversky``) command line.

One subcommand per job; each registers its parser in ``_SUBCOMMANDS`` and gets a handler
that returns the exit code. Mistakes a user can fix (a missing file, a bad option) end with a
one-line message on stderr and exit code 2, without a traceback.

    python -m tfversky predict --model model.keras --t1 T1.nii.gz --t2 T2.nii.gz \\
        --flair FLAIR.nii.gz --out seg.nii.gz --probabilities lesion_prob.nii.gz
"""

from __future__ import annotations

import argparse
import os
import sys

# Channel order of the network input, as in training (tfversky.preprocessing.MODALITIES).
_MODALITY_FLAGS = (("t1", "T1"), ("t2", "T2"), ("flair", "FLAIR"))


class UsageError(Exception):
    """A mistake the user can fix; reported in one line, exit code 2."""


def _patch_size(text: str):
    """'64' or '64,64,32' / '64x64x32' -> int or (d, h, w)."""
    parts = text.replace("x", ",").split(",")
    try:
        values = [int(part) for part in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an int or three ints like 64,64,32, got {text!r}") from None
    if len(values) not in (1, 3) or min(values) < 1:
        raise argparse.ArgumentTypeError(
            f"expected a positive int or three of them like 64,64,32, got {text!r}")
    return values[0] if len(values) == 1 else tuple(values)


def _fraction(low_open: bool):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not (0 < value < 1 if low_open else 0 <= value < 1):
            interval = "(0, 1)" if low_open else "[0, 1)"
            raise argparse.ArgumentTypeError(f"expected a number in {interval}, got {text!r}")
        return value
    return parse


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {text!r}")
    return value


def _add_predict(subparsers) -> None:
    parser = subparsers.add_parser(
        "predict", help="segment lesions in one subject's T1, T2 and FLAIR scans",
        description="Segment MS lesions with a trained model: reads the T1, T2 and FLAIR "
                    "scans (NIfTI, co-registered), normalises them like the training data, "
                    "runs sliding-window inference and writes a uint8 lesion mask (1 = lesion) "
                    "on the scans' grid, with the T1's affine and header.")
    parser.add_argument("--model", required=True, metavar="FILE",
                        help="trained Keras model (.keras), e.g. from examples/train_ms.py")
    for flag, name in _MODALITY_FLAGS:
        parser.add_argument(f"--{flag}", required=True, metavar="FILE",
                            help=f"{name} scan (.nii / .nii.gz)")
    parser.add_argument("--out", required=True, metavar="FILE",
                        help="output lesion mask, .nii or .nii.gz (uint8, 0/1)")
    parser.add_argument("--probabilities", metavar="FILE",
                        help="also write the lesion probability map here (float32 NIfTI)")
    parser.add_argument("--threshold", type=_fraction(low_open=True), default=0.5, metavar="P",
                        help="lesion if its probability is >= this (default: 0.5, the paper's)")
    parser.add_argument("--patch-size", type=_patch_size, default=None, metavar="N|D,H,W",
                        help="sliding-window patch, an int or D,H,W; multiples of the model's "
                             "downsampling (default: the model's input size, else 128)")
    parser.add_argument("--overlap", type=_fraction(low_open=False), default=0.5, metavar="F",
                        help="fraction of a patch shared by neighbouring windows (default: 0.5)")
    parser.add_argument("--batch-size", type=_positive_int, default=1, metavar="N",
                        help="patches per model call (default: 1)")
    parser.add_argument("--from-logits", action="store_true",
                        help="the model outputs logits (e.g. unet3d(final_activation=None)); "
                             "apply softmax (2 classes) or sigmoid (1 channel)")
    parser.add_argument("--resample-to-first", action="store_true",
                        help="resample T2 and FLAIR linearly onto the T1 grid when their shapes "
                             "or affines differ (otherwise that is an error)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    parser.set_defaults(handler=_predict)


_SUBCOMMANDS = (_add_predict,)


def build_parser() -> argparse.ArgumentParser:
    """The ``tfversky`` argument parser, one subparser per subcommand."""
    from tfversky import __version__

    parser = argparse.ArgumentParser(
        prog="python -m tfversky",
        description="Tversky-loss 3D segmentation of multiple sclerosis lesions.")
    parser.add_argument("--version", action="version", version=f"tfversky {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in _SUBCOMMANDS:
        add(subparsers)
    return parser


def _check_output(path: str, flag: str, inputs) -> None:
    if not path.endswith((".nii", ".nii.gz")):
        raise UsageError(f"{flag} {path!r}: the file name must end in .nii or .nii.gz")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UsageError(f"{flag} {path!r}: the folder {folder!r} does not exist")
    if not os.access(folder, os.W_OK):
        raise UsageError(f"{flag} {path!r}: the folder {folder!r} is not writable")
    if os.path.realpath(path) in {os.path.realpath(p) for p in inputs}:
        raise UsageError(f"{flag} {path!r} is one of the input files: choose another name")


def _load_model(path: str):
    import zipfile

    import keras

    if path.endswith(".keras") and not zipfile.is_zipfile(path):
        # Keras would report "File not found" for a file that exists but is not an archive.
        raise UsageError(f"--model file {path!r} is not a .keras archive (a zip file): it is "
                         f"damaged or not a model saved with model.save('....keras')")
    try:
        # Loading also needs no custom_objects: importing tfversky registered its losses.
        return keras.saving.load_model(path, compile=False)
    except Exception as err:  # any failure here is about the user's file
        reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise UsageError(f"--model file {path!r} cannot be loaded as a Keras model "
                         f"({type(err).__name__}: {reason})") from None


def _predict(args) -> int:
    import numpy as np

    from tfversky.inference import predict_volume
    from tfversky.io import ScanError, load_modalities, save_like
    from tfversky.preprocessing import normalize_intensity

    scans = {name: getattr(args, flag) for flag, name in _MODALITY_FLAGS}
    inputs = [args.model, *scans.values()]
    _check_output(args.out, "--out", inputs)
    if args.probabilities:
        _check_output(args.probabilities, "--probabilities", inputs)
        if os.path.abspath(args.probabilities) == os.path.abspath(args.out):
            raise UsageError("--probabilities and --out name the same file: choose two names")
    if not os.path.isfile(args.model):
        raise UsageError(f"--model file {args.model!r} does not exist")
    try:
        image, reference = load_modalities(scans, resample_to_first=args.resample_to_first)
    except ScanError as err:
        raise UsageError(str(err)) from None
    model = _load_model(args.model)
    channels, classes = model.inputs[0].shape[-1], model.outputs[0].shape[-1]
    if channels is not None and channels != len(scans):
        raise UsageError(f"--model {args.model!r} takes {channels} input channel(s), but this "
                         f"command feeds {len(scans)} (T1, T2, FLAIR)")
    if classes not in (1, 2):
        raise UsageError(f"--model {args.model!r} outputs {classes} channels; predict needs 2 "
                         f"(background, lesion) or 1 (lesion probability)")
    try:
        normalised = normalize_intensity(image)
        probs = predict_volume(model, normalised, patch_size=args.patch_size,
                               overlap=args.overlap, batch_size=args.batch_size,
                               from_logits=args.from_logits,
                               activation="softmax" if classes == 2 else "sigmoid",
                               progress=not args.quiet)
    except ValueError as err:  # our own checks; a model's shape error spans several lines
        raise UsageError(" ".join(str(err).split())) from None
    lesion = probs[..., classes - 1]  # softmax: channel 1 is the lesion; sigmoid: the only one
    mask = (lesion >= args.threshold).astype(np.uint8)
    save_like(mask, reference, args.out)
    if args.probabilities:
        save_like(lesion.astype(np.float32), reference, args.probabilities)
    if not args.quiet:
        voxel_ml = float(np.prod(reference.header.get_zooms()[:3])) / 1000.0
        count = int(mask.sum())
        written = args.out + (f" and {args.probabilities}" if args.probabilities else "")
        print(f"wrote {written}: {count} lesion voxels ({count * voxel_ml:.2f} mL) at threshold "
              f"{args.threshold}")
    return 0


def main(argv=None) -> int:
    """Run the command line; returns the exit code (0 ok, 2 usage error).

    Example (what ``python -m tfversky ...`` runs)::

        exit_code = main(["predict", "--model", "model.keras", "--t1", "T1.nii.gz",
                          "--t2", "T2.nii.gz", "--flair", "FLAIR.nii.gz", "--out", "seg.nii.gz"])
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except UsageError as err:
        print(f"{parser.prog} {args.command}: error: {err}", file=sys.stderr)
        return 2
