"""Adapters found by name, so the core never imports one.

The dataset builder (``tfds_ms``) and other adapters depend on the core; the core finds
them through the entry points they declare in ``pyproject.toml``:

* ``tfversky.datasets``: ``--dataset NAME/CONFIG`` of ``tfversky train``/``evaluate``; the
  entry point is a module with ``open_dataset(args)``, ``num_folds(args, builder=None)``,
  ``read_split(args, builder, split, flag)``, ``describe(builder)`` and
  ``preparation(builder)`` (``tfds_ms.adapter`` for ``ms_lesions``);
* ``tfversky.grid_placements``: a plan's ``placement`` other than the brain's bounding box;
  the entry point is ``f(image, affine, grid) -> grid affine`` (``registration``:
  ``tfds_ms.registration.registered_grid_affine``).
"""

from __future__ import annotations

from importlib import metadata

GROUPS = {"tfversky.datasets": "dataset", "tfversky.grid_placements": "grid placement"}


class AdapterUnavailableError(LookupError):
    """No installed package provides the named adapter, or it cannot be imported."""


def load(group: str, name: str):
    """The object the entry point ``name`` of ``group`` names, imported now.

    Raises:
        AdapterUnavailableError: no installed package declares it (names those that are),
            or importing it failed (with the reason, e.g. a missing extra).

    Example:

    >>> load("tfversky.datasets", "ms_lesions").__name__
    'tfds_ms.adapter'
    """
    found = metadata.entry_points(group=group, name=name)
    if not found:
        known = sorted(ep.name for ep in metadata.entry_points(group=group))
        raise AdapterUnavailableError(
            f"no {GROUPS[group]} named {name!r} is installed (known: "
            f"{', '.join(known) or 'none'}). tfversky's own are declared by its package "
            f"metadata: install tfversky (pip install 'tfversky[data]', or make install in a "
            f"checkout) rather than running it from a bare source folder")
    try:
        return next(iter(found)).load()
    except ImportError as error:
        raise AdapterUnavailableError(
            f"the {GROUPS[group]} {name!r} needs the data extras, which cannot be imported "
            f"({error}). Install them: pip install 'tfversky[data]'") from None
