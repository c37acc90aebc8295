"""One rule per argument: the checks that the Python API and the command lines share.

A rule is a plain function ``rule(value, name)``: it returns the value (normalised: a NumPy
int as an int, a patch size as a (d, h, w) triple) or raises ``InvalidArgument``, a
``ValueError`` in Keras's words::

    Invalid value for argument `overlap`: expected a number in [0, 1). Received: overlap=1.0

``Plan``, ``predict_volume``, ``segment``, ``patch_dataset``, ``TverskyLoss`` and ``unet3d``
call the rules directly. The command lines call the same functions, so a value is refused by
one rule wherever it enters:

* ``flag_type(rule, parse)`` is argparse's ``type=``: ``argument --overlap: expected a number
  in [0, 1), got '1'``;
* ``check_flags(parser, args)`` runs every flag's rule again on a namespace that never went
  through argparse (``examples/reproduce_table1.py`` builds one per run), and ``usage_error``
  turns a rule's error into a command's line: ``--patch-size 50: expected ...``.
  Combinations (``--patch-size`` against ``--depth``) are checked by the commands with the
  same rules, before a dataset is built or a model loaded.

``UsageError`` is a mistake a command-line user can fix: one line on stderr, exit code 2
(``run_command``, which reports a missing extra, such as TensorFlow on a JAX-only install, the
same way).
``ArgumentParser`` reports argparse's own errors (a bad value, a missing flag) in one line too.
``load_model_file`` loads the file of ``--model`` (``predict`` and ``evaluate``).
"""

from __future__ import annotations

import argparse
import math
import numbers
import re
import sys

from tfversky import _extras


class UsageError(Exception):
    """A mistake the user can fix; reported in one line, exit code 2."""


def run_command(prog: str, handler, args) -> int:
    """Runs a command line's ``handler(args)`` and returns its exit code.

    A ``UsageError``, or a module of an extra that is not installed (``tfversky train``
    without TensorFlow), ends as one line on stderr, ``{prog}: error: ...``, and exit code 2
    instead of a traceback.
    """
    try:
        return handler(args)
    except UsageError as error:
        message = error
    except ModuleNotFoundError as error:
        message = _extras.missing_extra(error, prog)
        if message is None:
            raise
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 2


class InvalidArgument(ValueError):
    """A value outside its argument's range.

    Attributes:
        name: The argument (``overlap``); a command line shows it as its flag.
        value: The value received.
        expected: What the argument takes, e.g. ``"a number in [0, 1)"``.
    """

    def __init__(self, name: str, value, expected: str):
        self.name, self.value, self.expected = name, value, expected
        super().__init__(f"Invalid value for argument `{name}`: expected {expected}. "
                         f"Received: {name}={value!r}")


# --- the rules --------------------------------------------------------------------------------


def _is_int(value) -> bool:
    # NumPy ints are Integral; bools are too, but True is no size or count.
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def integer(value, name: str, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an int in [low, high] (either bound may be None); NumPy ints are ints,
    bools are not.

    Example:

    >>> integer(3, "epochs", low=1)
    3
    """
    if not _is_int(value) or (low is not None and value < low) or (
            high is not None and value > high):
        expected = ("an int" if low is None and high is None else f"an int >= {low}"
                    if high is None else f"an int in [{low}, {high}]")
        raise InvalidArgument(name, value, expected)
    return int(value)


def number(value, name: str, low: float | None = None, high: float | None = None, *,
           low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a finite float within the bounds (open where ``*_open``; None: none).

    Example:

    >>> number(0.5, "threshold", 0, 1, low_open=True, high_open=True)
    0.5
    """
    finite = (isinstance(value, numbers.Real) and not isinstance(value, bool)
              and math.isfinite(value))
    if not finite or (low is not None and (value <= low if low_open else value < low)) or (
            high is not None and (value >= high if high_open else value > high)):
        if high is None:
            expected = ("a finite number" if low is None else
                        f"a finite number {'>' if low_open else '>='} {low:g}")
        else:
            expected = (f"a number in {'(' if low_open else '['}{low:g}, "
                        f"{high:g}{')' if high_open else ']'}")
        raise InvalidArgument(name, value, expected)
    return float(value)


def positive_int(value, name: str) -> int:
    """An int >= 1 (a count, a size)."""
    return integer(value, name, low=1)


def non_negative_int(value, name: str) -> int:
    """An int >= 0 (an index)."""
    return integer(value, name, low=0)


def fold_count(value, name: str = "num_folds") -> int:
    """A number of cross-validation folds: an int >= 2 (one fold leaves nothing to train on)."""
    return integer(value, name, low=2)


def seed(value, name: str = "seed") -> int:
    """A random seed: an int in [0, 2**32 - 1], what NumPy's and TensorFlow's seeding take."""
    return integer(value, name, 0, 2 ** 32 - 1)


def positive_number(value, name: str) -> float:
    """A finite number > 0 (a learning rate, an exponent)."""
    return number(value, name, 0, low_open=True)


def non_negative_number(value, name: str) -> float:
    """A finite number >= 0 (a weight, a volume, an angle range)."""
    return number(value, name, 0)


def probability(value, name: str) -> float:
    """A number in [0, 1] (a per-patch probability, a fraction of patches)."""
    return number(value, name, 0, 1)


def overlap(value, name: str = "overlap") -> float:
    """The fraction of a sliding window shared with the next one: [0, 1) (1 never moves)."""
    return number(value, name, 0, 1, high_open=True)


def smoothing_weight(value, name: str = "ema_alpha") -> float:
    """An exponential moving average's weight of its past: [0, 1) (0: no smoothing; 1 would
    never move from the first value)."""
    return number(value, name, 0, 1, high_open=True)


def threshold(value, name: str = "threshold") -> float:
    """A probability threshold in (0, 1): 0 or 1 would call every voxel, or none, lesion."""
    return number(value, name, 0, 1, low_open=True, high_open=True)


def tversky_weight(value, name: str) -> float:
    """The Tversky loss's ``alpha`` or ``beta``: a finite number >= 0."""
    try:
        return non_negative_number(value, name)
    except InvalidArgument as error:
        raise InvalidArgument(name, value, f"{error.expected} (alpha weighs false positives, "
                                           f"beta false negatives)") from None


def tversky_weights(alpha, beta) -> tuple[float, float]:
    """The Tversky loss's ``alpha`` (false positives) and ``beta`` (false negatives): each a
    ``tversky_weight``, not both 0.

    Example:

    >>> tversky_weights(0.3, 0.7)
    (0.3, 0.7)
    """
    alpha, beta = tversky_weight(alpha, "alpha"), tversky_weight(beta, "beta")
    if alpha == 0 and beta == 0:
        raise InvalidArgument("beta", beta, "a number > 0 when alpha is 0 (if both are 0 the "
                              "loss ignores every error and is constant; 0.3, 0.7 is the "
                              "paper's best, 0.5, 0.5 the Dice loss)")
    return alpha, beta


def validation_subjects(value, name: str = "val_subjects"):
    """How many training subjects validate: 0 (none), a count >= 1, or a fraction in (0, 1).

    Example:

    >>> validation_subjects(0.1), validation_subjects(2)
    (0.1, 2)
    """
    if _is_int(value) and value >= 0:
        return int(value)
    if isinstance(value, float) and 0 < value < 1:
        return value
    raise InvalidArgument(name, value, "0 (no validation), a count >= 1 or a fraction in "
                                       "(0, 1) of the training subjects")


def regex(value, name: str) -> str:
    """A regular expression (Python's ``re`` syntax).

    Example:

    >>> regex("^MS_[0-9]+", "subject_pattern")
    '^MS_[0-9]+'
    """
    try:
        re.compile(value)
    except (re.error, TypeError) as error:
        raise InvalidArgument(name, value, f"a regular expression ({error})") from None
    return value


def size_multiple(depth: int) -> int:
    """Spatial sizes a U-Net of ``depth`` levels accepts are multiples of this: 2**(depth-1).

    Example:

    >>> size_multiple(3)
    4
    """
    return 2 ** (depth - 1)


def nearest_valid_sizes(size: int, multiple: int) -> tuple[int, ...]:
    """The multiples of ``multiple`` just below and above ``size`` (only positive ones).

    Example:

    >>> nearest_valid_sizes(30, 4), nearest_valid_sizes(3, 4)
    ((28, 32), (4,))
    """
    below = size // multiple * multiple
    above = below + multiple
    return (below, above) if below > 0 else (above,)


def patch_size(value, name: str = "patch_size", multiple=1, why: str = "") -> tuple:
    """A patch or window size: a positive int (a cube) or three of them (D, H, W), NumPy
    ints included, bools not; each a multiple of ``multiple`` (an int, or one per axis)
    where the network needs it, ``why`` saying whose (e.g. "2^(depth-1) for depth 4").

    Returns:
        The (d, h, w) triple of ints.

    Example:

    >>> patch_size(64), patch_size((32, 32, 16), multiple=8)
    ((64, 64, 64), (32, 32, 16))
    """
    if _is_int(value):
        triple = (value,) * 3
    elif isinstance(value, (tuple, list)) or type(value).__name__ == "ndarray":
        triple = tuple(value)
    else:
        triple = ()
    if len(triple) != 3 or not all(_is_int(v) and v >= 1 for v in triple):
        raise InvalidArgument(name, value, "a positive int or three of them (D, H, W)")
    multiples = (multiple,) * 3 if _is_int(multiple) else tuple(multiple)
    for axis, (size, step) in enumerate(zip(triple, multiples)):
        if size % step:
            valid = " or ".join(map(str, nearest_valid_sizes(int(size), int(step))))
            where = f" (axis {axis})" if len(set(triple)) > 1 else ""
            raise InvalidArgument(name, value, f"sizes that are each a multiple of {step}"
                                               f"{f' ({why})' if why else ''}: {valid} for "
                                               f"{size}{where}")
    return tuple(int(v) for v in triple)


# --- the command lines ------------------------------------------------------------------------


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, whose errors (a bad value, a missing flag) are one line on stderr
    and exit code 2, as every other usage error; ``--help`` shows the usage."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # "--lr -1e-3" passes a (negative) value, not a flag, so that its rule can refuse it
        # by name; argparse itself knows only "-1" and "-0.5" (the matcher is its own attribute).
        self._negative_number_matcher = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _shown(value) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def usage_error(error: InvalidArgument, flag: str | None = None) -> UsageError:
    """The one line of a command for a rule's error: ``--FLAG VALUE: expected ...``; the flag
    defaults to the argument's name (``patch_size`` -> ``--patch-size``)."""
    flag = flag or "--" + error.name.replace("_", "-")
    return UsageError(f"{flag} {_shown(error.value)}: expected {error.expected}")


def _expected(rule) -> str:
    """What ``rule`` takes, in its own words (every rule refuses None)."""
    try:
        rule(None, "value")
    except InvalidArgument as error:
        return error.expected
    return "a valid value"


def flag_type(rule, parse=float):
    """argparse's ``type=`` for a flag: ``parse`` the text (``int``, ``float``,
    ``parse_size``...), then apply ``rule``; either failure is argparse's one-line error
    naming the flag. The rule rides along (``.rule``) for ``check_flags``.

    Example:

    >>> parser = ArgumentParser(prog="demo")
    >>> _ = parser.add_argument("--overlap", type=flag_type(overlap), default=0.5)
    >>> parser.parse_args(["--overlap", "0.25"]).overlap
    0.25
    """
    def convert(text: str):
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {_expected(rule)}, got {text!r}") from None
        try:
            rule(value, "value")
        except InvalidArgument as error:
            raise argparse.ArgumentTypeError(f"expected {error.expected}, got {text!r}") from None
        return value

    convert.rule = rule
    convert.__name__ = rule.__name__  # argparse names the type in some messages
    return convert


def parse_size(text: str):
    """``'64'`` -> 64, ``'64,64,32'`` or ``'64x64x32'`` -> (64, 64, 32); the range is
    ``patch_size``'s."""
    values = tuple(int(part) for part in text.replace("x", ",").split(","))
    return values[0] if len(values) == 1 else values


def parse_count_or_fraction(text: str):
    """``'3'`` -> 3, ``'0.2'`` -> 0.2 (``validation_subjects``)."""
    return float(text) if any(c in text for c in ".eE") else int(text)


def check_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Applies each flag's rule (its ``flag_type``) to ``args``: a namespace made in Python
    gets the checks argparse gave the command line. Flags left at None are not checked.

    Raises:
        UsageError: ``--FLAG VALUE: expected ...`` for the first value out of range.
    """
    for action in parser._actions:  # argparse keeps its flags here, and nowhere public
        rule = getattr(action.type, "rule", None)
        value = getattr(args, action.dest, None)
        if rule is None or value is None:
            continue
        values = value if isinstance(action, argparse._AppendAction) else [value]
        for each in values:
            try:
                rule(each, action.dest)
            except InvalidArgument as error:
                raise usage_error(error, max(action.option_strings, key=len)) from None



def load_model_file(path: str, flag: str = "--model"):
    """The Keras model of a ``--model`` file, loaded without compiling; ``UsageError`` naming
    ``flag`` for a file that is not a loadable ``.keras`` archive."""
    import zipfile

    import keras

    if path.endswith(".keras") and not zipfile.is_zipfile(path):
        # Keras would report "File not found" for a file that exists but is not an archive.
        raise UsageError(f"{flag} file {path!r} is not a .keras archive (a zip file): it is "
                         f"damaged or not a model saved with model.save('....keras')")
    try:
        # Loading also needs no custom_objects: importing tfversky registered its losses.
        return keras.saving.load_model(path, compile=False)
    except Exception as err:  # any failure here is about the user's file
        reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise UsageError(f"{flag} file {path!r} cannot be loaded as a Keras model "
                         f"({type(err).__name__}: {reason})") from None
