"""One rule per argument (tfversky.arguments): the rules' ranges and messages, the argparse
adapter and the namespace check, the same patch-size rule in every module that takes one,
and the core's independence from the command lines."""

import argparse
import ast
import importlib.util
import pathlib

import numpy as np
import pytest

from tfversky import arguments
from tfversky.arguments import InvalidArgument

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.mark.parametrize("rule, good, bad, expected", [
    (arguments.positive_int, [1, np.int64(3)], [0, -2, 1.0, True, "2", None], "an int >= 1"),
    (arguments.non_negative_int, [0, 5], [-1, 0.5, False], "an int >= 0"),
    (arguments.seed, [0, 2 ** 32 - 1], [-1, 2 ** 32], "an int in [0, 4294967295]"),
    (arguments.fold_count, [2, 5], [1, 0], "an int >= 2"),
    (arguments.positive_number, [1e-3, 2, np.float32(0.5)], [0, -1e-3, float("nan"),
                                                             float("inf"), True],
     "a finite number > 0"),
    (arguments.non_negative_number, [0, 0.5, 90], [-0.1, float("inf")], "a finite number >= 0"),
    (arguments.probability, [0, 1, 0.5], [-0.01, 1.5, float("nan")], "a number in [0, 1]"),
    (arguments.overlap, [0, 0.5, 0.99], [1, 1.0, -0.1], "a number in [0, 1)"),
    (arguments.threshold, [0.01, 0.5], [0, 1.0, 1.5], "a number in (0, 1)"),
    (arguments.validation_subjects, [0, 1, 7, 0.1], [-1, 1.5, 1.0, 0.0, True],
     "0 (no validation), a count >= 1 or a fraction in (0, 1) of the training subjects"),
])
def test_each_rule_takes_its_range_and_names_the_argument(rule, good, bad, expected):
    for value in good:
        assert rule(value, "x") == value
    for value in bad:
        with pytest.raises(ValueError) as refused:
            rule(value, "x")
        assert str(refused.value) == (f"Invalid value for argument `x`: expected {expected}. "
                                      f"Received: x={value!r}")


def test_tversky_weights_refuse_negative_or_both_zero():
    assert arguments.tversky_weights(0, 1) == (0.0, 1.0)
    with pytest.raises(InvalidArgument, match="`alpha`.*alpha weighs false positives"):
        arguments.tversky_weights(-1, 0.7)
    with pytest.raises(InvalidArgument, match="both are 0"):
        arguments.tversky_weights(0, 0.0)


@pytest.mark.parametrize("value, triple", [(64, (64, 64, 64)), (np.int64(64), (64, 64, 64)),
                                           ((32, 32, 16), (32, 32, 16)),
                                           (np.array([8, 16, 24]), (8, 16, 24))])
def test_patch_size_takes_an_int_or_a_triple(value, triple):
    assert arguments.patch_size(value) == triple
    assert all(type(v) is int for v in arguments.patch_size(value))


BAD_PATCHES = [True, 0, -8, 8.0, "64", (8, 8), (8, 0, 8), (8, 8, 8.5), None]


@pytest.mark.parametrize("value", BAD_PATCHES)
def test_patch_size_refuses(value):
    with pytest.raises(InvalidArgument, match="a positive int or three of them"):
        arguments.patch_size(value)


def test_patch_size_multiple_names_the_reason_and_the_nearest_sizes():
    with pytest.raises(InvalidArgument) as refused:
        arguments.patch_size((16, 100, 16), "window", 8, "2^(depth-1) for depth 4")
    assert refused.value.expected == ("sizes that are each a multiple of 8 (2^(depth-1) for "
                                      "depth 4): 96 or 104 for 100 (axis 1)")
    assert arguments.patch_size((16, 6, 16), multiple=(8, 1, 8)) == (16, 6, 16)


@pytest.mark.parametrize("value", BAD_PATCHES[:-1])
def test_one_patch_size_rule_for_the_plan_inference_data_and_the_command_line(value):
    """Issue 20, item 7: Plan, predict_volume, patch_dataset and --patch-size refuse (and
    accept) the same patch sizes, with the same message."""
    import tensorflow as tf

    from tfversky import cli, data, inference, plan
    from tfversky.models import unet3d

    with pytest.raises(InvalidArgument) as expected:
        arguments.patch_size(value)
    model = unet3d(base_filters=2, depth=2)
    volumes = tf.data.Dataset.from_tensor_slices({"image": np.zeros((1, 8, 8, 8, 3), "float32"),
                                                  "label": np.zeros((1, 8, 8, 8), "uint8")})
    for call in (lambda: plan.Plan(patch_size=value),
                 lambda: inference.predict_volume(model, np.zeros((8, 8, 8, 3)),
                                                  patch_size=value, progress=False),
                 lambda: data.patch_dataset(volumes, patch_size=value)):
        with pytest.raises(InvalidArgument) as refused:
            call()
        assert str(refused.value) == str(expected.value)
    if isinstance(value, int) and not isinstance(value, bool):  # what a flag can spell
        with pytest.raises(SystemExit):
            cli.build_parser().parse_args(["predict", "--model", "m.keras", "--patch-size",
                                           str(value)])


def test_numpy_ints_are_patch_sizes_everywhere():
    import tensorflow as tf

    from tfversky import data, inference, plan
    from tfversky.models import unet3d

    assert plan.Plan(patch_size=np.int64(64)).patch_size == (64, 64, 64)
    probs = inference.predict_volume(unet3d(base_filters=2, depth=2), np.zeros((8, 8, 8, 3)),
                                     patch_size=np.int64(8), progress=False)
    assert probs.shape == (8, 8, 8, 2)
    volumes = tf.data.Dataset.from_tensor_slices({"image": np.zeros((1, 8, 8, 8, 3), "float32"),
                                                  "label": np.zeros((1, 8, 8, 8), "uint8")})
    x, _ = next(iter(data.patch_dataset(volumes, patch_size=np.int64(8), batch_size=1)))
    assert x.shape == (1, 8, 8, 8, 3)


@pytest.mark.parametrize("option", [dict(threshold=1.0), dict(overlap=1.0),
                                    dict(patch_size=True), dict(min_lesion_mm3=-1.0),
                                    dict(batch_size=0)])
def test_segment_checks_its_options_before_reading_a_scan(option, tmp_path):
    from tfversky import inference, plan
    from tfversky.models import unet3d

    model = plan.attach(unet3d(base_filters=2, depth=2), plan.Plan(patch_size=8))
    missing = {m: str(tmp_path / f"{m}.nii.gz") for m in ("T1", "T2", "FLAIR")}
    with pytest.raises(InvalidArgument, match=f"`{next(iter(option))}`"):
        inference.segment(model, missing, **option)


def _parser():
    parser = arguments.ArgumentParser(prog="demo")
    parser.add_argument("--lr", type=arguments.flag_type(arguments.positive_number))
    parser.add_argument("--window", type=arguments.flag_type(arguments.patch_size,
                                                             arguments.parse_size))
    parser.add_argument("--count", type=arguments.flag_type(arguments.positive_int, int),
                        action="append", default=[])
    return parser


@pytest.mark.parametrize("argv, line", [
    (["--lr", "-1e-3"], "demo: error: argument --lr: expected a finite number > 0, got '-1e-3'"),
    (["--lr", "fast"], "demo: error: argument --lr: expected a finite number > 0, got 'fast'"),
    (["--window", "8,8"], "demo: error: argument --window: expected a positive int or three of "
                          "them (D, H, W), got '8,8'"),
    (["--count", "2", "--count", "0"], "demo: error: argument --count: expected an int >= 1, "
                                       "got '0'"),
    (["--nope"], "demo: error: unrecognized arguments: --nope"),
])
def test_a_flag_error_is_one_line_naming_the_flag_the_value_and_the_range(argv, line, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _parser().parse_args(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0] == f"{line} (see demo --help)", err


def test_flags_parse_to_their_values():
    args = _parser().parse_args(["--lr", "1e-3", "--window", "16x16x8", "--count", "3"])
    assert (args.lr, args.window, args.count) == (1e-3, (16, 16, 8), [3])
    assert _parser().parse_args(["--window", "16"]).window == 16


def test_check_flags_applies_the_same_rules_to_a_namespace_made_in_python():
    parser = _parser()
    arguments.check_flags(parser, argparse.Namespace(lr=0.1, window=None, count=[1, 2]))
    for namespace, line in [
            (argparse.Namespace(lr=-0.1, window=None, count=[]),
             "--lr -0.1: expected a finite number > 0"),
            (argparse.Namespace(lr=None, window=(8, 8), count=[]),
             "--window (8, 8): expected a positive int or three of them (D, H, W)"),
            (argparse.Namespace(lr=None, window=None, count=[1, 0]),
             "--count 0: expected an int >= 1")]:
        with pytest.raises(arguments.UsageError) as refused:
            arguments.check_flags(parser, namespace)
        assert str(refused.value) == line


def test_usage_error_names_the_flag_of_the_argument():
    error = InvalidArgument("patch_size", 100, "a multiple of 8")
    assert str(arguments.usage_error(error)) == "--patch-size 100: expected a multiple of 8"
    assert str(arguments.usage_error(InvalidArgument("split", "x", "y"), "-s")) == \
        "-s 'x': expected y"


def _imports(module) -> set:
    """The modules ``module``'s source imports, anywhere in it (at the top or in a function)."""
    tree = ast.parse(pathlib.Path(importlib.util.find_spec(module).origin).read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return found


@pytest.mark.parametrize("module", ["tfversky.train_cli", "tfds_ms.adapter", "tfversky.plan",
                                    "tfversky.inference", "tfversky.data"])
def test_the_core_does_not_import_the_command_line(module):
    """cli imports train_cli (its subcommands), not the reverse; an adapter needs the core."""
    assert "tfversky.cli" not in _imports(module)


def test_usage_error_is_still_importable_from_the_cli():
    from tfversky import cli

    assert cli.UsageError is arguments.UsageError
