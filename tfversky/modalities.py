"""MR modality names: one canonical spelling each, and the aliases datasets use for them.

A model records the canonical names of its input channels in its plan, so a model trained
on BIDS files (``T1w``, ``FLAIR``) can segment nnU-Net files (``channel_names`` ``"T1"``) or
ISBI files (``mprage``): every layout maps its own names through ``canonical``.
"""

from __future__ import annotations

# Canonical name -> accepted spellings (compared case-insensitively, with '-', '_' and
# spaces ignored). BIDS suffixes: T1w, T2w, PDw, FLAIR; ISBI 2015: mprage, pd; MSSEG 2016:
# DP, GADO.
ALIASES = {
    "FLAIR": ("FLAIR", "T2FLAIR", "T2-FLAIR", "FLAIRw"),
    "T1": ("T1", "T1w", "MPRAGE", "T1MPRAGE", "T1-weighted"),
    "T2": ("T2", "T2w", "T2-weighted"),
    "PD": ("PD", "PDw", "DP", "proton-density"),
    "T1GD": ("T1GD", "T1Gd", "T1c", "T1ce", "T1CE", "GADO", "T1w-Gd", "T1post"),
    "T2STAR": ("T2STAR", "T2star", "T2starw", "T2*"),
    "DWI": ("DWI", "DW", "trace"),
    "BRAINMASK": ("BRAINMASK", "brain_mask", "brainmask", "mask"),
}

# What the first release trained on, in its channel order: the default plan of a model
# saved without one.
DEFAULT_MODALITIES = ("T1", "T2", "FLAIR")


def _key(name: str) -> str:
    return "".join(ch for ch in str(name).upper() if ch not in "-_ ")


_LOOKUP = {_key(alias): canonical for canonical, aliases in ALIASES.items()
           for alias in (canonical, *aliases)}


def canonical(name: str) -> str:
    """The canonical spelling of a modality name.

    Raises:
        ValueError: for a name that is not a known modality, listing the known ones.

    Example:

    >>> canonical("T1w"), canonical("flair"), canonical("DP"), canonical("mprage")
    ('T1', 'FLAIR', 'PD', 'T1')
    """
    found = _LOOKUP.get(_key(name))
    if found is None:
        known = ", ".join(ALIASES)
        raise ValueError(
            f"Unknown modality {name!r}. Known modalities: {known} (aliases such as T1w, T2w, "
            f"PDw, mprage, DP, GADO are accepted; see tfversky.modalities.ALIASES).")
    return found


def canonical_list(names) -> tuple[str, ...]:
    """Canonical names of an ordered modality list, given as a sequence or ``"FLAIR,T1w"``.

    Raises:
        ValueError: for an unknown name, an empty list, or a modality named twice.

    Example:

    >>> canonical_list("FLAIR,T1w")
    ('FLAIR', 'T1')
    """
    if isinstance(names, str):
        names = [part for part in names.split(",") if part.strip()]
    result = tuple(canonical(name.strip() if isinstance(name, str) else name) for name in names)
    if not result:
        raise ValueError("Invalid modality list: it is empty. Name at least one, e.g. FLAIR.")
    repeated = sorted({name for name in result if result.count(name) > 1})
    if repeated:
        raise ValueError(f"Invalid modality list {list(names)!r}: {', '.join(repeated)} is named "
                         f"more than once (aliases count as the same modality).")
    return result
