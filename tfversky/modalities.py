"""MR channel names: one canonical spelling for each known modality, any other name as written.

A model records the names of its input channels in its plan, so a model trained on BIDS
files (``T1w``, ``FLAIR``) can segment nnU-Net files (``channel_names`` ``"T1"``) or ISBI
files (``mprage``): every layout maps its own names through ``canonical``. Channels are
names, not a closed list: a name that is not a known modality (``DIR``, ``zscore``) is kept
as written. A name a dataset repeats (a baseline and a follow-up FLAIR) is told apart by its
position among the channels of that name: ``FLAIR@0``, ``FLAIR@1`` (``channel_names``).
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


# Separates a repeated channel's name from its position among the channels of that name.
POSITION_MARK = "@"


def known(name: str) -> str | None:
    """The canonical spelling of a known modality (``ALIASES``), or None for any other name.

    Example:

    >>> known("T1w"), known("flair"), known("DIR")
    ('T1', 'FLAIR', None)
    """
    return _LOOKUP.get(_key(name))


def canonical(name: str) -> str:
    """The canonical spelling of a channel name: a known modality's (``ALIASES``), any
    other name as written; a position suffix (``FLAIR@1``) is kept.

    Raises:
        ValueError: for an empty name, one holding a comma, or a position that is not a
            whole number.

    Example:

    >>> canonical("T1w"), canonical("flair"), canonical("DP"), canonical("mprage")
    ('T1', 'FLAIR', 'PD', 'T1')
    >>> canonical("DIR"), canonical("zscore"), canonical("t2-flair@1")
    ('DIR', 'zscore', 'FLAIR@1')
    """
    text = str(name).strip()
    base, mark, position = text.partition(POSITION_MARK)
    base = base.strip()
    if not base or "," in text or (mark and not position.strip().isdigit()):
        raise ValueError(
            f"Invalid channel name {text!r}: expected a modality (e.g. FLAIR, T1w, or any name "
            f"the dataset gives its channel, e.g. DIR), optionally with the position among "
            f"channels of that name (FLAIR{POSITION_MARK}0, FLAIR{POSITION_MARK}1).")
    base = known(base) or base
    return base + (f"{POSITION_MARK}{int(position)}" if mark else "")


def base_name(name: str) -> str:
    """A channel name without its position: ``FLAIR@1`` -> ``FLAIR``.

    Example:

    >>> base_name("FLAIR@1"), base_name("T1")
    ('FLAIR', 'T1')
    """
    return str(name).partition(POSITION_MARK)[0]


def channel_names(names) -> tuple[str, ...]:
    """Distinct canonical names of a dataset's channels, in order: a name given more than
    once gets its position among the channels of that name (``FLAIR@0``, ``FLAIR@1``).

    Example:

    >>> channel_names(["FLAIR", "T1w", "flair", "DIR"])
    ('FLAIR@0', 'T1', 'FLAIR@1', 'DIR')
    """
    names = [canonical(name) for name in names]
    seen = {}
    result = []
    for name in names:
        if names.count(name) > 1:
            result.append(f"{name}{POSITION_MARK}{seen.get(name, 0)}")
            seen[name] = seen.get(name, 0) + 1
        else:
            result.append(name)
    return tuple(result)


def canonical_list(names) -> tuple[str, ...]:
    """Canonical names of an ordered channel list, given as a sequence or ``"FLAIR,T1w"``.

    Raises:
        ValueError: for a malformed name, an empty list, or a channel named twice (the
            message shows how to address repeated channels by position).

    Example:

    >>> canonical_list("FLAIR,T1w")
    ('FLAIR', 'T1')
    >>> canonical_list("FLAIR@0,FLAIR@1,DIR")
    ('FLAIR@0', 'FLAIR@1', 'DIR')
    """
    if isinstance(names, str):
        names = [part for part in names.split(",") if part.strip()]
    result = tuple(canonical(name) for name in names)
    if not result:
        raise ValueError("Invalid modality list: it is empty. Name at least one, e.g. FLAIR.")
    repeated = sorted({name for name in result if result.count(name) > 1})
    if repeated:
        raise ValueError(
            f"Invalid modality list {list(names)!r}: {', '.join(repeated)} is named more than "
            f"once (aliases count as the same modality). Two channels of one name are told "
            f"apart by position: {repeated[0]}{POSITION_MARK}0,{repeated[0]}{POSITION_MARK}1.")
    return result


def resolve(requested, channels, where: str) -> tuple[str, ...]:
    """The dataset's channels that ``requested`` asks for, in the order asked.

    ``channels`` are a dataset's distinct names (``channel_names``). A name with position 0
    finds a channel that is not repeated (``FLAIR@0`` is the only ``FLAIR``); a repeated
    name without a position is refused, since which channel it means is not clear.

    Args:
        requested: Channel names (canonical), in the order wanted.
        channels: What the dataset holds.
        where: The file or layout that holds them, for the error message.

    Raises:
        ValueError: naming ``where``, what it holds and the ``--modalities`` fix.

    Example:

    >>> resolve(("FLAIR@1", "T1@0"), ("FLAIR@0", "FLAIR@1", "T1"), "dataset.json")
    ('FLAIR@1', 'T1')
    """
    result = []
    for name in requested:
        if name not in channels and name.endswith(f"{POSITION_MARK}0") \
                and base_name(name) in channels:
            name = base_name(name)
        if name not in channels:
            positions = [c for c in channels if base_name(c) == name]
            holds = ", ".join(channels)
            if positions:
                raise ValueError(
                    f"Invalid value for argument `modalities`: {where} has {len(positions)} "
                    f"channels named {name} ({holds}): name the one(s) wanted by position, "
                    f"e.g. --modalities {','.join(positions)}.")
            raise ValueError(f"Invalid value for argument `modalities`: {where} has no "
                             f"{name}; it holds {holds}. Pass --modalities with some of those "
                             f"names, in the order wanted.")
        result.append(name)
    return canonical_list(result)
