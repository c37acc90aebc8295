"""One file to share a trained model or a fold ensemble, and the safe way to open one.

    tfversky export --model runs/cv --out ms_model.zip    # a `train --folds` run: every fold
    tfversky export --model runs/demo --out demo.zip       # a single run: its model.keras
    tfversky predict --model ms_model.zip -i scans -o masks

``export_run`` writes the archive (atomically, ``tfversky._files``); ``open_archive`` checks
one and unpacks its members for ``tfversky predict``. The archive is a zip file holding:

* ``members/NAME.keras``: each fold's selected model (``fold_K.keras``; ``model.keras`` for a
  single run), each with its own plan and run record inside;
* ``plan.json``: the members' shared plan (``inference.ensemble_plan``: their operating
  points averaged where they differ), its run record left out (each member carries its own);
* ``model_card.json`` and ``model_card.md``: what a user should know before trusting the
  model: the training data (the run record's dataset: name, version, folds, digest,
  modalities, grid), what each member trained and was tested on, the folds no member
  trained on, the cross-validation scores, the operating point, the recipe and versions,
  and each member's SHA-256.

A shared file comes from strangers, so opening one never runs code from it: every entry's
name is checked before anything is written (absolute paths, ``..``, links, and anything but
the files above are refused), members are written under names tfversky makes, never their
stored paths; a member whose ``config.json`` holds a ``Lambda`` layer (Python code, which
Keras would otherwise deserialise) is refused, naming the layer; and the models are loaded
with Keras's ``safe_mode`` on (its default, ``tfversky.arguments.load_model_file``). Nothing
is unpickled: the plan and the card are JSON.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import pathlib
import re
import stat
import zipfile

from tfversky import _files

ARCHIVE_FORMAT = "tfversky-model-archive/1"
CARD_JSON, CARD_MARKDOWN, PLAN_JSON = "model_card.json", "model_card.md", "plan.json"
MEMBERS = "members/"
_MEMBER_NAME = re.compile(r"members/([A-Za-z0-9_.-]+)\.keras")
# Layer classes that carry Python code: Keras runs it when it rebuilds the layer.
CODE_LAYERS = ("Lambda",)


class ArchiveError(ValueError):
    """A run that cannot be exported, or an archive that is refused: one line saying what
    was found and what to do."""


# --- the members of a run ---------------------------------------------------------------------


def run_members(run_dir) -> tuple[list[tuple[str, pathlib.Path]], dict]:
    """The models a run folder shares: ``[(name, model.keras path)]`` and its
    ``results.json``. A cross-validation (``tfversky train --folds``) gives every fold's
    ``fold_K/model.keras``, K over the dataset's folds but the holdout one; a single run
    its ``model.keras``.

    Raises:
        ArchiveError: not a finished run; a fold missing or unfinished (named, with the
            command that finishes it); a cross-validation whose ``results.json`` does not
            pool every finished fold.
    """
    run_dir = pathlib.Path(run_dir)
    if not run_dir.is_dir():
        raise ArchiveError(f"{str(run_dir)!r} is not a folder: give the --out folder of "
                           f"tfversky train (a single run or a --folds run)")
    from tfversky import train_cli

    results_path = run_dir / "results.json"
    folds = train_cli.fold_folders(run_dir)
    finish = f"finish it with the tfversky train --folds command that made it, --out {run_dir}"
    if not results_path.exists():
        names = ", ".join(p.name for _, p in sorted(folds.items()))
        what = (f"an unfinished cross-validation ({names}, no results.json): {finish}"
                if folds else "an unfinished run (no results.json): finish it with the "
                "tfversky train command that started it" if (run_dir / "run.json").exists()
                else "no tfversky run (no results.json)")
        raise ArchiveError(f"{str(run_dir)!r} holds {what}")
    results = json.loads(results_path.read_text())
    cross_validation = results.get("cross_validation")
    if cross_validation is None:
        model = run_dir / "model.keras"
        if not model.exists():
            raise ArchiveError(f"{str(run_dir)!r} holds results.json but no model.keras: not "
                               f"a finished tfversky train run")
        return [("model", model)], results
    holdout = cross_validation.get("holdout_fold")
    expected = train_cli.cross_validation_folds(cross_validation["num_folds"], holdout)
    for fold in expected:
        folder = run_dir / train_cli.FOLD_FOLDER.format(fold)
        state = ("missing" if not folder.is_dir() else "unfinished (no results.json)"
                 if not (folder / "results.json").exists() else
                 "without model.keras" if not (folder / "model.keras").exists() else None)
        if state:
            raise ArchiveError(
                f"{str(run_dir)!r}: {folder.name} is {state}, and an ensemble takes every "
                f"fold of its cross-validation: {finish} (finished folds are kept), or "
                f"export one fold's run (--model {folder})")
    if sorted(cross_validation["folds"]) != expected:
        raise ArchiveError(
            f"{str(run_dir)!r}: results.json pools folds {cross_validation['folds']}, not every "
            f"finished fold ({expected}): run the tfversky train --folds command that made it "
            f"again to pool them (finished folds are not trained again)")
    names = [train_cli.FOLD_FOLDER.format(k) for k in expected]
    return [(name, run_dir / name / "model.keras") for name in names], results


# --- what a .keras file holds -----------------------------------------------------------------


def _unsafe_path(name: str) -> bool:
    """An entry name that would land outside the folder it is extracted into."""
    parts = name.replace("\\", "/").split("/")
    return name.startswith(("/", "\\")) or bool(re.match(r"[A-Za-z]:", name)) or ".." in parts


def _is_link(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


def code_layers(config) -> list[str]:
    """``"NAME (CLASS)"`` of every layer in a Keras model config (``config.json``, nested
    models included) whose class carries Python code (``CODE_LAYERS``).

    Example:

    >>> code_layers({"class_name": "Functional", "config": {"layers": [
    ...     {"class_name": "Conv3D", "config": {"name": "conv"}},
    ...     {"class_name": "Lambda", "config": {"name": "shift", "function": "..."}}]}})
    ['shift (Lambda)']
    """
    found = []
    if isinstance(config, dict):
        if config.get("class_name") in CODE_LAYERS:
            name = (config.get("config") or {}).get("name", "?")
            found.append(f"{name} ({config['class_name']})")
        for value in config.values():
            found += code_layers(value)
    elif isinstance(config, list):
        for value in config:
            found += code_layers(value)
    return found


def check_keras_file(source, name: str) -> None:
    """Refuses a ``.keras`` file (a path or bytes) a stranger could have crafted to run code:
    one that is not a zip with a readable ``config.json``, holds an entry with an absolute
    path or ``..``, or a layer of ``CODE_LAYERS`` (e.g. ``Lambda``).

    Raises:
        ArchiveError: naming ``name`` and what was found.
    """
    data = io.BytesIO(source) if isinstance(source, bytes) else source
    if not zipfile.is_zipfile(data):
        raise ArchiveError(f"{name} is not a .keras model (not a zip file)")
    with zipfile.ZipFile(data) as model:
        unsafe = [info.filename for info in model.infolist()
                  if _unsafe_path(info.filename) or _is_link(info)]
        if unsafe:
            raise ArchiveError(f"{name} holds the entry {unsafe[0]!r} (an absolute path, '..' "
                               f"or a link), which a model file never needs: refused")
        try:
            config = json.loads(model.read("config.json"))
        except (KeyError, ValueError):
            raise ArchiveError(f"{name} holds no readable config.json: not a Keras 3 .keras "
                               f"model") from None
    layers = code_layers(config)
    if layers:
        raise ArchiveError(f"{name} holds {len(layers)} layer(s) that carry Python code "
                           f"({', '.join(layers[:3])}), which loading would run: refused (a "
                           f"shared model must be rebuilt from layers alone)")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- writing ----------------------------------------------------------------------------------


def _member_card(name: str, results: dict, data: bytes) -> dict:
    splits = results.get("record", {}).get("splits", {})
    return {"file": f"{MEMBERS}{name}.keras", "sha256": _sha256(data),
            "trained_on": splits.get("train"), "tested_on": splits.get("test"),
            "training_subjects": len(splits.get("train_subjects", [])),
            "validation_subjects": len(splits.get("validation_subjects", [])),
            "selected_epoch": results.get("selection", {}).get("selected_epoch")}


def model_card(results: dict, members: list[dict], member_results: list[dict], plan) -> dict:
    """The model card of an archive: ``results`` is the run's ``results.json``, ``members``
    each member's entry (``file``, ``sha256``, its splits), ``member_results`` their runs'
    ``results.json`` and ``plan`` the shared plan."""
    from tfversky._version import __version__

    record = member_results[0].get("record", {})
    dataset = record.get("dataset", {})
    trained = {part for r in member_results
               for part in r.get("record", {}).get("splits", {}).get("train", "").split("+")}
    all_folds = [f"fold{k}" for k in range(dataset.get("num_folds") or 0)]
    scores = {k: results[k] for k in ("pooled", "subject_mean", "fold_mean") if k in results}
    cross_validation = results.get("cross_validation")
    return {
        "format": ARCHIVE_FORMAT,
        "exported_with": {"tfversky": __version__},
        "trained_with": member_results[0].get("versions", {}),
        "members": members,
        "training_data": dataset,
        "not_trained_on": [f for f in all_folds if f not in trained],
        "scores": {"what": ("cross-validation: every subject of the folds "
                            f"{cross_validation['folds']} tested by the member that did not "
                            f"train on it ({cross_validation['sample']})" if cross_validation
                            else f"test split {record.get('splits', {}).get('test')}"),
                   **scores},
        "operating_point": {"threshold": plan.threshold, "min_lesion_mm3": plan.min_lesion_mm3,
                            "how_chosen": plan.operating_point},
        "recipe": {k: v for k, v in record.get("recipe", {}).items() if k != "fold"},
        "plan": plan.describe(),
    }


def _card_markdown(card: dict) -> str:
    data = card["training_data"]
    pooled = card["scores"].get("pooled", {})
    point = card["operating_point"]
    lines = [
        "# tfversky model card", "",
        f"- Members: {len(card['members'])} ("
        + ", ".join(f"{m['file']}: trained on {m['trained_on']}, tested on {m['tested_on']}"
                    for m in card["members"]) + ")",
        f"- Training data: {data.get('name')} version {data.get('version')}, "
        f"{data.get('num_folds')} folds, digest {data.get('digest')}; inputs "
        f"{', '.join(data.get('modalities', []))}",
        f"- No member trained on: {', '.join(card['not_trained_on']) or 'none'}",
        f"- Input preparation: {card['plan']}",
        f"- Operating point: threshold {point['threshold']:g}, smallest lesion "
        f"{point['min_lesion_mm3']:g} mm^3 ("
        + (json.dumps(point["how_chosen"]) if point["how_chosen"] else
           "the defaults, never chosen on validation") + ")",
        f"- Scores ({card['scores']['what']}): "
        + ", ".join(f"{k} {100 * pooled[k]:.2f} %" for k in
                    ("dsc", "sensitivity", "f2", "apr", "lesion_f1") if k in pooled),
        f"- Recipe: " + ", ".join(f"{k}={v}" for k, v in card["recipe"].items()
                                  if k in ("alpha", "beta", "epochs", "steps_per_epoch",
                                           "patch_size", "seed", "holdout_fold")),
        f"- Trained with {json.dumps(card['trained_with'])}; exported with tfversky "
        f"{card['exported_with']['tfversky']}", ""]
    return "\n".join(lines)


def export_run(run_dir, out, *, overwrite: bool = False) -> dict:
    """Writes ``out`` (a ``.zip``): the run's members, their shared plan and a model card.

    Args:
        run_dir: A ``tfversky train`` output folder: a ``--folds`` cross-validation (every
            fold's model) or a single run.
        out: The archive to write, ending in ``.zip``; written to a temporary name and
            renamed when complete.
        overwrite: Replace an existing ``out``. Defaults to False.

    Returns:
        The model card (also ``model_card.json`` in the archive).

    Raises:
        ArchiveError: what ``run_members`` refuses; ``out`` not a ``.zip`` name, in a
            missing folder, a folder, or existing (without ``overwrite``); members that
            do not share a plan or carry code (``check_keras_file``).

    Example::

        export_run("runs/cv", "ms_model.zip")
    """
    from tfversky import inference, plan as plan_lib

    out = pathlib.Path(out)
    if out.suffix != ".zip":
        raise ArchiveError(f"{str(out)!r}: the archive's name must end in .zip")
    if not out.parent.is_dir():
        raise ArchiveError(f"{str(out)!r}: the folder {str(out.parent)!r} does not exist")
    members, results = run_members(run_dir)  # .keras and .json files: never the .zip
    if out.is_dir():
        raise ArchiveError(f"{str(out)!r} is a folder: give a file name ending in .zip")
    if out.exists() and not overwrite:
        raise ArchiveError(f"{str(out)!r} exists: pass --overwrite to replace it, or choose "
                           f"another name")
    contents, plans, cards, member_results = {}, [], [], []
    for name, path in members:
        data = path.read_bytes()
        check_keras_file(data, str(path))
        contents[f"{MEMBERS}{name}.keras"] = data
        plans.append(plan_lib.read_plan(path))
        run_results = json.loads((path.parent / "results.json").read_text())
        member_results.append(run_results)
        cards.append(_member_card(name, run_results, data))
    try:
        shared = inference.ensemble_plan(plans)
    except ValueError as err:
        raise ArchiveError(f"{run_dir}: {err}") from None
    shared = dataclasses.replace(shared, record={})
    card = model_card(results, cards, member_results, shared)
    contents[PLAN_JSON] = json.dumps(shared.to_dict(), indent=2).encode()
    contents[CARD_JSON] = json.dumps(card, indent=2, default=float).encode()
    contents[CARD_MARKDOWN] = _card_markdown(card).encode()
    with _files.atomic_path(out) as partial:
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive:
            for name, data in contents.items():
                archive.writestr(name, data)
    return card


# --- reading ----------------------------------------------------------------------------------


def open_archive(path, into_dir) -> tuple[list[pathlib.Path], object]:
    """Checks an archive ``export_run`` wrote and unpacks its members into ``into_dir``.

    Every check runs before anything is written: the entries' names (an absolute path,
    ``..``, a link, a duplicate, or anything but ``members/NAME.keras``, ``plan.json`` and
    the model card is refused), each member's content (``check_keras_file``: no layer
    that carries code) and SHA-256 against the card, and the plan against the members'.
    Members are written as ``into_dir/NAME.keras``, names tfversky makes.

    Args:
        path: The ``.zip`` archive.
        into_dir: An existing folder (e.g. a temporary one) for the members.

    Returns:
        ``(member paths, plan)``: load each with ``tfversky.arguments.load_model_file``
        (Keras's safe mode) and ensemble them with ``plan``
        (``inference.segment_on_grid``).

    Raises:
        ArchiveError: naming the archive and what was found.

    Example::

        with tempfile.TemporaryDirectory() as folder:
            paths, plan = open_archive("ms_model.zip", folder)
            models = [arguments.load_model_file(str(p)) for p in paths]
    """
    from tfversky import inference, plan as plan_lib

    where = str(path)
    if not zipfile.is_zipfile(path):
        raise ArchiveError(f"{where} is not a zip file: give an archive made by tfversky "
                           f"export")
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
        names = [info.filename for info in infos]
        unsafe = [info.filename for info in infos if _unsafe_path(info.filename)
                  or _is_link(info)]
        if unsafe:
            raise ArchiveError(f"{where} holds the entry {unsafe[0]!r} (an absolute path, '..' "
                               f"or a link), which could write outside its folder: refused, "
                               f"nothing extracted")
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ArchiveError(f"{where} holds {duplicates[0]!r} more than once: refused")
        known = {CARD_JSON, CARD_MARKDOWN, PLAN_JSON, MEMBERS}
        strays = [n for n in names if n not in known and not _MEMBER_NAME.fullmatch(n)]
        if strays:
            raise ArchiveError(f"{where} holds {strays[0]!r}, which is not a .keras model "
                               f"(members/NAME.keras), plan.json or the model card: refused")
        members = [n for n in names if _MEMBER_NAME.fullmatch(n)]
        for required in (CARD_JSON, PLAN_JSON):
            if required not in names:
                raise ArchiveError(f"{where} has no {required}: not an archive of tfversky "
                                   f"export")
        if not members:
            raise ArchiveError(f"{where} holds no model (members/NAME.keras)")
        try:
            card = json.loads(archive.read(CARD_JSON))
            stored_plan = plan_lib.Plan.from_dict(json.loads(archive.read(PLAN_JSON)))
        except (ValueError, TypeError) as err:
            raise ArchiveError(f"{where}: its plan or model card cannot be read "
                               f"({' '.join(str(err).split())})") from None
        digests = {m.get("file"): m.get("sha256") for m in card.get("members", [])}
        contents = {}
        for name in members:
            data = archive.read(name)
            check_keras_file(data, f"{where}: {name}")
            if digests.get(name) != _sha256(data):
                raise ArchiveError(f"{where}: {name} is not the file its model card "
                                   f"describes (SHA-256 differs): damaged or altered")
            contents[name] = data
    into_dir = pathlib.Path(into_dir)
    paths = []
    for name, data in contents.items():
        target = into_dir / f"{_MEMBER_NAME.fullmatch(name)[1]}.keras"
        with _files.atomic_path(target) as partial:
            partial.write_bytes(data)
        paths.append(target)
    try:
        shared = inference.ensemble_plan([plan_lib.read_plan(p) for p in paths])
        if dataclasses.replace(shared, record={}) != stored_plan:
            raise ValueError("plan.json is not the members' shared plan: damaged or altered")
    except ValueError as err:
        for written in paths:
            written.unlink()
        raise ArchiveError(f"{where}: {' '.join(str(err).split())}") from None
    return paths, stored_plan


# --- the command ------------------------------------------------------------------------------


def add_export(subparsers) -> None:
    """Registers ``tfversky export``."""
    import argparse

    parser = subparsers.add_parser(
        "export", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="bundle a run's models (every fold of a --folds run), their plan and a model "
             "card into one .zip to share",
        description="Write one .zip holding a tfversky train run's selected models (every "
                    "fold of a --folds cross-validation, or a single run's model.keras), "
                    "their shared plan and a model card (training data, cross-validation "
                    "scores, operating point, versions). tfversky predict --model MODEL.zip "
                    "runs it; opening it never runs code from it.")
    parser.add_argument("--model", required=True, metavar="RUN_DIR",
                        help="the --out folder of tfversky train (--folds or a single run)")
    parser.add_argument("--out", required=True, metavar="MODEL.zip",
                        help="the archive to write")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing --out")
    parser.set_defaults(handler=_export)


def _export(args) -> int:
    from tfversky.arguments import UsageError

    try:
        card = export_run(args.model, args.out, overwrite=args.overwrite)
    except ArchiveError as err:
        raise UsageError(f"--model {args.model} --out {args.out}: {err}") from None
    pooled = card["scores"].get("pooled", {})
    print(f"wrote {args.out}: {len(card['members'])} member(s), "
          f"{card['training_data'].get('name')}; {card['scores']['what']}: DSC "
          f"{100 * pooled.get('dsc', float('nan')):.2f} %, lesion F1 "
          f"{100 * pooled.get('lesion_f1', float('nan')):.2f} %")
    return 0
