"""The ``python -m tfversky`` (or ``tfversky``) command line.

One subcommand per job; each registers its parser in ``_SUBCOMMANDS`` and gets a handler
that returns the exit code. Mistakes a user can fix (a missing file, a bad option) end with a
one-line message on stderr and exit code 2, without a traceback.

    tfversky predict --model model.keras --image T1=T1.nii.gz --image T2=T2.nii.gz \\
        --image FLAIR=FLAIR.nii.gz --out seg.nii.gz --probabilities lesion_prob.nii.gz
    tfversky predict --model model.keras -i imagesTs -o predictions   # CASE_0000.nii.gz, ...
    tfversky predict --model runs/cv --tta -i imagesTs -o predictions  # a fold ensemble
    tfversky train --out runs/demo                 # tfversky.train_cli: validated, augmented
    tfversky evaluate --model runs/demo/model.keras --out runs/demo/test   # its own test split
"""

from __future__ import annotations

import argparse
import os
import sys

from tfversky import arguments
# UsageError lives in the core (tfversky.arguments); importable from here as before.
from tfversky.arguments import UsageError, flag_type as _flag, load_model_file as _load_model

# Single-flag aliases of --image NAME=FILE.
_MODALITY_FLAGS = (("t1", "T1"), ("t2", "T2"), ("flair", "FLAIR"))
# nnU-Net's file names: CASE_XXXX.nii.gz (or another ending tfversky.io reads), XXXX the channel.
_CASE_FILE = r"^(?P<case>.+)_(?P<channel>\d{4})$"
# A run folder of `tfversky train --folds`: one model per fold folder.


def _image(text: str):
    """'NAME=FILE' -> (NAME, FILE)."""
    name, sep, path = text.partition("=")
    if not sep or not name.strip() or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=FILE, e.g. FLAIR=flair.nii.gz, got "
                                         f"{text!r}")
    return name.strip(), path


def _add_predict(subparsers) -> None:
    parser = subparsers.add_parser(
        "predict", help="segment lesions in one subject's scans, or in a folder of cases",
        description="Segment MS lesions with a trained model, preparing the scans exactly as "
                    "its training did (the plan saved in the .keras file: modalities and "
                    "their order, reference grid and its placement, normalisation): RAS+ "
                    "reorientation, resampling onto the grid, z-score, sliding windows, "
                    "probabilities mapped back onto the scans' own grid and thresholded. "
                    "Writes a uint8 lesion mask (1 = lesion) with the first modality's affine "
                    "and header. Scans must be co-registered, and skull-stripped (or given "
                    "--brain-mask) unless the plan records that the model was trained on "
                    "raw scans.")
    parser.add_argument("--model", required=True, nargs="+", metavar="FILE|DIR|ZIP",
                        help="trained Keras model (.keras); several make an ensemble that "
                             "averages their probabilities (they must share a plan); a run "
                             "folder of `tfversky train` gives its model.keras, one of "
                             "`tfversky train --folds` every fold_*/model.keras; an archive "
                             "of `tfversky export` (.zip) its members")
    parser.add_argument("--image", type=_image, action="append", default=[],
                        metavar="NAME=FILE",
                        help="one modality of one case (repeat for each modality the model "
                             "takes; aliases such as T1w, flair are accepted)")
    for flag, name in _MODALITY_FLAGS:
        parser.add_argument(f"--{flag}", metavar="FILE", help=f"same as --image {name}=FILE")
    parser.add_argument("--out", metavar="FILE",
                        help="output lesion mask of one case, .nii or .nii.gz (uint8, 0/1)")
    parser.add_argument("-i", "--input", metavar="DIR",
                        help="folder of cases in nnU-Net naming: CASE_0000.nii.gz, "
                             "CASE_0001.nii.gz, ... in the model's channel order")
    parser.add_argument("-o", "--output", metavar="DIR",
                        help="with -i: writes CASE.nii.gz per case, lesions.csv and "
                             "summary.csv (a new folder is made once every case succeeded)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace output files that exist (masks, maps, lesions.csv, "
                             "summary.csv); never an input file")
    parser.add_argument("--probabilities", metavar="FILE",
                        help="one case: also write the lesion probability map (float32) here")
    parser.add_argument("--save-probabilities", action="store_true",
                        help="write CASE_probabilities.nii.gz (float32 lesion probability on "
                             "the scan's grid) beside each mask")
    parser.add_argument("--save-uncertainty", action="store_true",
                        help="write CASE_uncertainty.nii.gz beside each mask: the per-voxel "
                             "standard deviation of the lesion probability over the members "
                             "and mirrorings (needs several members or --tta)")
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=False,
                        help="test-time mirroring: average over the 8 mirrorings along the "
                             "three axes, in one batch per window (about 6x the time per case "
                             "on a CPU: benchmarks/RESULTS.md; default: off)")
    parser.add_argument("--brain-mask", metavar="FILE|DIR",
                        help="brain mask on the scans' grid (non-zero = brain), for scans that "
                             "are not skull-stripped; with -i a folder holding CASE.nii.gz")
    parser.add_argument("--no-skull-check", action="store_true",
                        help="do not refuse scans that do not look skull-stripped (needed "
                             "only for a model trained on raw scans whose plan does not "
                             "record it)")
    parser.add_argument("--threshold", type=_flag(arguments.threshold), default=None,
                        metavar="P", help="lesion if its probability is >= P (default: the "
                                          "model's plan: chosen on validation, else 0.5)")
    parser.add_argument("--min-lesion-volume", "--min-lesion-size", dest="min_lesion_volume",
                        type=_flag(arguments.non_negative_number), default=None, metavar="MM3",
                        help="drop lesions smaller than this many mm^3, measured with each "
                             "scan's voxel size (default: the model's plan, else 0: keep all; "
                             "--min-lesion-size is its older name)")
    parser.add_argument("--patch-size", type=_flag(arguments.patch_size, arguments.parse_size),
                        default=None, metavar="N|D,H,W",
                        help="sliding-window patch, an int or D,H,W; multiples of the model's "
                             "downsampling (default: the plan's training patch; a model whose "
                             "plan records it runs on no other; a plan-less model: its input "
                             "size, else 128)")
    parser.add_argument("--overlap", type=_flag(arguments.overlap), default=None,
                        metavar="F", help="fraction of a patch shared by neighbouring windows "
                                          "(default: the plan's, 0.5)")
    parser.add_argument("--batch-size", type=_flag(arguments.positive_int, int), default=1,
                        metavar="N",
                        help="patches per model call (default: 1)")
    parser.add_argument("--from-logits", action="store_true",
                        help="the model outputs logits (a model saved without a plan; a plan "
                             "records this): apply softmax (2 classes) or sigmoid (1 channel)")
    parser.add_argument("--resample-to-first", action="store_true",
                        help="resample the other modalities linearly onto the first one's grid "
                             "when their shapes or affines differ (otherwise that is an error)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    parser.set_defaults(handler=_predict)


def _add_train(subparsers) -> None:
    from tfversky import train_cli  # imports this module: here, not at the top

    train_cli.add_train(subparsers)


def _add_evaluate(subparsers) -> None:
    from tfversky import train_cli

    train_cli.add_evaluate(subparsers)


def _add_export(subparsers) -> None:
    from tfversky import export

    export.add_export(subparsers)


_SUBCOMMANDS = (_add_predict, _add_train, _add_evaluate, _add_export)


def build_parser() -> argparse.ArgumentParser:
    """The ``tfversky`` argument parser, one subparser per subcommand."""
    from tfversky import __version__

    parser = arguments.ArgumentParser(
        prog="python -m tfversky",
        description="Tversky-loss 3D segmentation of multiple sclerosis lesions.")
    parser.add_argument("--version", action="version", version=f"tfversky {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in _SUBCOMMANDS:
        add(subparsers)
    return parser


def _check_output(path: str, flag: str, inputs, overwrite: bool,
                  endings=(".nii", ".nii.gz")) -> None:
    """One output file, before any work: a name with one of ``endings`` in a writable folder,
    none of the ``inputs`` (what a model, scan or brain mask flag names), and new unless
    ``overwrite``."""
    if not path.endswith(endings):
        raise UsageError(f"{flag} {path!r}: the file name must end in {' or '.join(endings)}")
    _check_folder(os.path.dirname(os.path.abspath(path)), f"{flag} {path!r}: the folder")
    _check_not_input(path, f"{flag} {path!r}", inputs)
    if os.path.isdir(path):
        raise UsageError(f"{flag} {path!r} is a folder: give a file name")
    if os.path.lexists(path) and not overwrite:
        raise UsageError(f"{flag} {path!r} exists: pass --overwrite to replace it, or choose "
                         f"another name")


def _check_not_input(path: str, what: str, inputs) -> None:
    """``inputs``: {file: the flag or case that gives it}. Compared as real paths, so a
    link or another spelling of an input is one too."""
    given = {os.path.realpath(p): name for p, name in inputs.items()}
    if os.path.realpath(path) in given:
        raise UsageError(f"{what} is one of the input files ({given[os.path.realpath(path)]}): "
                         f"writing it would destroy that input; choose another name")


def _check_folder(folder: str, what: str) -> None:
    if not os.path.isdir(folder):
        raise UsageError(f"{what} {folder!r} does not exist")
    if not os.access(folder, os.W_OK):
        raise UsageError(f"{what} {folder!r} is not writable")


def _one_case_scans(args) -> dict:
    scans = {}
    given = list(args.image) + [(name, getattr(args, flag)) for flag, name in _MODALITY_FLAGS
                                if getattr(args, flag)]
    for name, path in given:
        if name in scans:
            raise UsageError(f"--image {name}= is given twice: give each modality once")
        scans[name] = path
    return scans


def _folder_cases(folder: str, modalities) -> dict:
    """CASE -> {modality: file} for a flat nnU-Net-style folder, every case checked first."""
    import re

    from tfversky import io

    if not os.path.isdir(folder):
        raise UsageError(f"-i {folder!r} is not a folder")
    cases, strays = {}, []
    for name in sorted(os.listdir(folder)):
        ending = next((e for e in io.IMAGE_ENDINGS if name.endswith(e)), None)
        if ending is None:
            continue
        match = re.match(_CASE_FILE, name[:-len(ending)])
        if match is None:
            strays.append(name)
            continue
        cases.setdefault(match["case"], {})[int(match["channel"])] = os.path.join(folder, name)
    expects = ", ".join(f"_{i:04d} = {m}" for i, m in enumerate(modalities))
    if strays:
        raise UsageError(f"-i {folder!r}: {strays[0]!r} is not named CASE_XXXX.nii.gz (XXXX the "
                         f"channel: {expects}); move it out")
    if not cases:
        raise UsageError(f"-i {folder!r} holds no CASE_XXXX.nii.gz files: the model expects "
                         f"one per modality ({expects})")
    result = {}
    for case, channels in cases.items():
        extra = sorted(set(channels) - set(range(len(modalities))))
        if extra:
            raise UsageError(f"case {case!r} has channel file {case}_{extra[0]:04d}, but the "
                             f"model takes {len(modalities)} modalities ({expects})")
        missing = [i for i in range(len(modalities)) if i not in channels]
        if missing:
            raise UsageError(f"case {case!r} lacks {case}_{missing[0]:04d}.nii.gz "
                             f"({modalities[missing[0]]}): the model expects {expects}")
        result[case] = {m: channels[i] for i, m in enumerate(modalities)}
    return result


def _model_files(given, unpack_into) -> list:
    """The .keras files of ``--model``: files as given; a run folder of ``tfversky train
    --folds`` gives every fold_K/model.keras (in fold order), a plain run folder its
    model.keras; an archive of ``tfversky export`` (.zip) its members, checked and unpacked
    into the folder ``unpack_into()`` returns (``tfversky.export.open_archive``)."""
    files = []
    for path in given:
        if path.endswith(".zip") and os.path.isfile(path):
            from tfversky import export

            try:
                members, _ = export.open_archive(path, unpack_into())
            except ValueError as err:
                raise UsageError(f"--model {path!r}: {' '.join(str(err).split())}") from None
            files += [str(member) for member in members]
        elif os.path.isdir(path):
            from tfversky.train_cli import fold_folders  # one rule for what a fold folder is

            folds = [folder.name for _, folder in sorted(fold_folders(path).items())]
            if folds:
                unfinished = [name for name in folds
                              if not os.path.isfile(os.path.join(path, name, "model.keras"))]
                if unfinished:
                    raise UsageError(f"--model {path!r}: {unfinished[0]} has no model.keras "
                                     f"(an unfinished fold?): finish the run (tfversky train "
                                     f"--folds resumes it), or give the fold models as files")
                files += [os.path.join(path, name, "model.keras") for name in folds]
            elif os.path.isfile(os.path.join(path, "model.keras")):
                files.append(os.path.join(path, "model.keras"))
            else:
                raise UsageError(f"--model {path!r} is a folder holding neither fold_K/model."
                                 f"keras (a run of tfversky train --folds) nor model.keras (a "
                                 f"run): give a run folder or .keras files")
        elif not os.path.isfile(path):
            raise UsageError(f"--model file {path!r} does not exist")
        else:
            files.append(path)
    seen = {}
    for path in files:
        if os.path.realpath(path) in seen:
            raise UsageError(f"--model {path!r} is given twice (also as "
                             f"{seen[os.path.realpath(path)]!r}): an ensemble takes each "
                             f"member once")
        seen[os.path.realpath(path)] = path
    return files


def _ensemble_plan(files):
    """The members' shared plan (``inference.ensemble_plan``); a plan-less model's warning
    shown once, even with --quiet (the defaults may not be how the model was trained)."""
    import warnings

    from tfversky import inference, plan as plan_lib

    plans = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", plan_lib.PlanWarning)
            for path in files:
                plans.append(plan_lib.read_plan(path))
    except ValueError as err:
        raise UsageError(f"--model: {err}") from None
    if caught:
        print(f"warning: {caught[0].message}" + (f" ({len(caught)} of the {len(files)} "
              f"members carry no plan)" if len(files) > 1 else ""), file=sys.stderr)
    try:
        return inference.ensemble_plan(plans)
    except ValueError as err:
        raise UsageError(f"--model: {err}") from None


def _predict(args) -> int:
    import contextlib
    import tempfile

    with contextlib.ExitStack() as stack:  # an archive's members live until the end
        return _predict_with(args, lambda: stack.enter_context(tempfile.TemporaryDirectory(
            prefix="tfversky-model-")))


def _predict_with(args, unpack_into) -> int:
    import dataclasses
    import shutil

    from tqdm.auto import tqdm

    from tfversky import _files, inference, lesion_report

    one_case = _one_case_scans(args)
    folder_mode = args.input is not None or args.output is not None
    if folder_mode and (one_case or args.out or args.probabilities):
        raise UsageError("-i/-o (a folder of cases) and --image/--out/--probabilities (one "
                         "case) do not mix: use one or the other")
    if folder_mode and (args.input is None or args.output is None):
        raise UsageError("-i DIR and -o DIR go together: give both")
    if not folder_mode and (not one_case or not args.out):
        raise UsageError("give --image NAME=FILE for each modality and --out FILE (one case), "
                         "or -i DIR -o DIR (a folder of cases)")
    if args.probabilities and args.save_probabilities:
        raise UsageError("--probabilities FILE and --save-probabilities both ask for the "
                         "probability map: give one (--save-probabilities names it "
                         "CASE_probabilities.nii.gz beside the mask)")
    files = _model_files(args.model, unpack_into)
    plan = _ensemble_plan(files)
    try:
        inference.check_uncertainty(len(files), args.tta, args.save_uncertainty)
    except ValueError as err:
        raise UsageError(f"--save-uncertainty: {err}") from None
    if args.from_logits:
        plan = dataclasses.replace(plan, from_logits=True)
    point = inference.operating_point(plan, args.threshold, args.min_lesion_volume)

    cases, masks = _cases(args, plan, folder_mode, files + list(args.model))

    models = [_load_model(path) for path in files]
    try:  # before any case: a window the model was not trained on is refused
        for model in models:
            inference.check_window(model, plan, args.patch_size)
    except ValueError as err:
        raise UsageError(f"--patch-size: {err}") from None
    if not args.quiet:
        ensemble = (f"{len(models)} members" if len(models) > 1 else "one model") + \
            (", 8 mirrorings each" if args.tta else "")
        print(f"predicting with {ensemble}; operating point: {point['source']}")
    grid_affine = _registration(plan) if plan.placement == "registration" else None
    options = dict(plan=plan, resample_to_first=args.resample_to_first, grid_affine=grid_affine,
                   threshold=point["threshold"], min_lesion_mm3=point["min_lesion_mm3"],
                   tta=args.tta, patch_size=args.patch_size, overlap=args.overlap,
                   batch_size=args.batch_size, check_skull=not args.no_skull_check)
    # Folder mode writes into a staging folder (beside a new -o, inside an existing one),
    # moved into place once every case is done: a failing case leaves nothing half-written.
    new_output = folder_mode and not os.path.isdir(args.output)
    staging = None
    if folder_mode:
        staging = str(_files.partial_name(os.path.abspath(args.output) if new_output else
                                          os.path.join(args.output, "staging")))
        os.mkdir(staging)  # the user's umask (a renamed mkdtemp folder would be 0700)
    rows, tables = [], []
    try:
        bar = tqdm(cases.items(), desc="predict", unit="case", disable=args.quiet or
                   not folder_mode)
        for case, scans in bar:
            outputs = _outputs(args, case, staging)
            try:
                result = inference.segment(
                    models, scans, outputs["mask"], probabilities_out=outputs["probabilities"],
                    uncertainty_out=outputs["uncertainty"], brain_mask=masks[case],
                    progress=not args.quiet and not folder_mode, **options)
            except ValueError as err:  # our checks; a model's shape error spans several lines
                where = f"case {case!r}: " if folder_mode else ""
                raise UsageError(where + " ".join(str(err).split())) from None
            name = case if folder_mode else _case_of(args.out)
            tables.append(result.lesion_table(name))
            rows.append({"case": name, "lesion_count": result.lesion_count,
                         "lesion_volume_ml": round(result.lesion_volume_ml, 4),
                         "threshold": point["threshold"],
                         "min_lesion_mm3": point["min_lesion_mm3"],
                         "operating_point": point["source"], "members": len(models),
                         "tta": args.tta, "mask": os.path.basename(outputs["mask"]),
                         "inputs": ";".join(os.path.abspath(p) for p in scans.values())})
        lesion_report.write_report(outputs["lesions"], outputs["summary"], tables, rows)
        if folder_mode:
            if new_output:
                os.rename(staging, args.output)
            else:  # each file replaced in one rename: the old one or the new, never half
                for name in os.listdir(staging):
                    os.replace(os.path.join(staging, name), os.path.join(args.output, name))
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    if not args.quiet:
        final = _outputs(args, None, args.output)
        where = final["summary"] if folder_mode else ", ".join(
            path for path in final.values() if path)
        total = sum(row["lesion_count"] for row in rows)
        volume = sum(row["lesion_volume_ml"] for row in rows)
        print(f"wrote {where}: {len(rows)} case(s), {total} lesion(s), {volume:.2f} mL at "
              f"threshold {point['threshold']:g}, lesions of {point['min_lesion_mm3']:g} mm^3 "
              f"and more")
    return 0


def _case_of(mask_path: str) -> str:
    """A single case's name: its mask's file name without the NIfTI ending."""
    name = os.path.basename(mask_path)
    return name[:-len(".nii.gz")] if name.endswith(".nii.gz") else os.path.splitext(name)[0]


def _outputs(args, case, folder) -> dict:
    """Every file one case writes (None: not asked for), and the report, in ``folder`` (folder
    mode: ``CASE.nii.gz``, ``CASE_probabilities.nii.gz``, ``CASE_uncertainty.nii.gz``,
    ``lesions.csv``, ``summary.csv``), or beside ``--out`` (named after the mask)."""
    from tfversky.lesion_report import LESIONS_FILE, SUMMARY_FILE

    if args.output is not None:
        stem = None if case is None else os.path.join(folder, case)
        report = (os.path.join(folder, name) for name in (LESIONS_FILE, SUMMARY_FILE))
    else:
        stem = os.path.join(os.path.dirname(args.out), _case_of(args.out))
        report = (f"{stem}_{name}" for name in (LESIONS_FILE, SUMMARY_FILE))
    lesions, summary = report
    probabilities = args.probabilities or (
        f"{stem}_probabilities.nii.gz" if args.save_probabilities and stem else None)
    return {"mask": args.out if args.output is None else
            (None if stem is None else f"{stem}.nii.gz"),
            "probabilities": probabilities,
            "uncertainty": f"{stem}_uncertainty.nii.gz" if args.save_uncertainty and stem
            else None,
            "lesions": lesions, "summary": summary}


def _cases(args, plan, folder_mode: bool, model_files):
    """(case -> {modality: file}, case -> brain mask file or None), every name checked; the
    single case of --image/--out is case None."""
    from tfversky import inference

    if folder_mode:
        cases = _folder_cases(args.input, plan.modalities)
        if os.path.realpath(args.output) == os.path.realpath(args.input):
            raise UsageError(f"-o {args.output!r} is the input folder: write the masks "
                             f"elsewhere (they would be mistaken for input files)")
        if os.path.lexists(args.output) and not os.path.isdir(args.output):
            raise UsageError(f"-o {args.output!r} is a file: give a folder (new or existing) "
                             f"for the masks")
        # A new output folder is made (as nnU-Net does) once every case is done.
        _check_folder(args.output if os.path.isdir(args.output) else
                      os.path.dirname(os.path.abspath(args.output)),
                      "-o" if os.path.isdir(args.output) else f"-o {args.output!r}: its parent")
        masks = {case: None for case in cases}
        if args.brain_mask:
            if not os.path.isdir(args.brain_mask):
                raise UsageError(f"--brain-mask {args.brain_mask!r}: with -i, give a folder "
                                 f"holding CASE.nii.gz for every case")
            masks = {case: _case_file(args.brain_mask, case) for case in cases}
        _check_folder_outputs(args, cases, masks, model_files)
    else:
        try:
            scans = inference.match_modalities(_one_case_scans(args), plan)
        except ValueError as err:
            raise UsageError(str(err)) from None
        inputs = {**{path: "--model" for path in model_files},
                  **{path: f"the {name} scan" for name, path in scans.items()}}
        if args.brain_mask:
            inputs[args.brain_mask] = "--brain-mask"
        outputs = _outputs(args, None, None)
        flags = {"mask": "--out", "probabilities": "--probabilities" if args.probabilities
                 else "--save-probabilities", "uncertainty": "--save-uncertainty",
                 "lesions": "the lesion report", "summary": "the lesion report's summary"}
        named = {}
        for kind, path in outputs.items():
            if path is None:
                continue
            if os.path.abspath(path) in named:
                raise UsageError(f"{flags[kind]} and {named[os.path.abspath(path)]} name the "
                                 f"same file {path!r}: choose two names")
            named[os.path.abspath(path)] = flags[kind]
            _check_output(path, flags[kind], inputs, args.overwrite,
                          (".csv",) if path.endswith(".csv") else (".nii", ".nii.gz"))
        cases = {None: scans}
        masks = {None: args.brain_mask}
    return cases, masks


def _check_folder_outputs(args, cases: dict, masks: dict, model_files) -> None:
    """No output of folder mode is an input (e.g. ``-o masks --brain-mask masks``) or
    another case's output, and none exists unless ``--overwrite``."""
    inputs = {path: "--model" for path in model_files}
    for case, scans in cases.items():
        inputs.update({path: f"case {case!r}'s {name} scan" for name, path in scans.items()})
        if masks[case]:
            inputs[masks[case]] = f"case {case!r}'s --brain-mask"
    outputs, owner = [], {}
    for case in cases:
        for kind, path in _outputs(args, case, args.output).items():
            if path is None or (kind in ("lesions", "summary") and path in owner):
                continue
            if path in owner:
                raise UsageError(f"-o {args.output!r}: {os.path.basename(path)} would be "
                                 f"written for case {owner[path]!r} and case {case!r}: "
                                 f"rename one of the cases")
            owner[path] = case
            outputs.append(path)
    for path in outputs:
        _check_not_input(path, f"-o {args.output!r}: {os.path.basename(path)}", inputs)
    existing = [path for path in outputs if os.path.lexists(path)]
    if existing and not args.overwrite:
        raise UsageError(f"-o {args.output!r} already holds {len(existing)} of the files this "
                         f"would write ({os.path.basename(existing[0])}, ...): pass --overwrite "
                         f"to replace them, or choose another folder")


def _case_file(folder: str, case: str) -> str:
    for name in (f"{case}.nii.gz", f"{case}.nii"):
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    raise UsageError(f"--brain-mask folder {folder!r} lacks {case}.nii.gz (the brain mask of "
                     f"case {case!r})")


def _registration(plan):
    """The grid placement of a plan made with rigid registration (needs SimpleITK): the
    ``registration`` adapter (``tfversky._adapters``)."""
    from tfversky import _adapters

    try:
        register = _adapters.load("tfversky.grid_placements", "registration")
    except _adapters.AdapterUnavailableError as err:
        raise UsageError(f"this model's grid is placed by rigid registration: {err}") from None
    t1 = plan.modalities.index("T1") if "T1" in plan.modalities else 0

    def place(image, affine, grid):
        return register(image[..., t1], affine, grid)

    return place


def main(argv=None) -> int:
    """Run the command line; returns the exit code (0 ok, 2 usage error or missing extra).

    Example (what ``python -m tfversky ...`` runs)::

        exit_code = main(["predict", "--model", "model.keras", "--image", "T1=T1.nii.gz",
                          "--image", "T2=T2.nii.gz", "--image", "FLAIR=FLAIR.nii.gz",
                          "--out", "seg.nii.gz"])
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    return arguments.run_command(f"{parser.prog} {args.command}", args.handler, args)
