"""benchmarks/compare_lengths.py: two reproductions that differ only in their length."""

import importlib.util
import json
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def modules():
    sys.path.insert(0, str(ROOT / "examples"))
    fakes = _load("fake_reproductions", ROOT / "tests" / "examples" / "test_reproduce_table1.py")
    compare = _load("compare_lengths", ROOT / "benchmarks" / "compare_lengths.py")
    return fakes, compare


def _reproduction(modules, out, **config):
    fakes, compare = modules
    reproduce = sys.modules.get("reproduce_table1") or compare.reproduce_table1
    fakes._fake_reproduction(reproduce, out, [(0.5, 0.5), (0.3, 0.7)], seeds=2,
                             challenge=True)
    for path in out.glob("seed*/alpha*/fold*/results.json"):
        results = json.loads(path.read_text())
        results["config"].update(config)
        path.write_text(json.dumps(results))


def test_the_same_runs_at_two_lengths_change_nothing(modules, tmp_path, capsys):
    _, compare = modules
    _reproduction(modules, tmp_path / "short")
    _reproduction(modules, tmp_path / "long", epochs=64)
    assert compare.main([str(tmp_path / "short"), str(tmp_path / "long"),
                         "--seeds", "0", "1"]) == 0
    text = capsys.readouterr().out
    assert "Against Dice at 1600 and 6400 steps, over 6 subjects (6 scans)" in text
    # The fake runs are the same at both lengths: every claim keeps its sign and
    # significance, and every change is zero.
    rows = [line for line in text.splitlines() if line.startswith("| 0.3, 0.7 |")]
    assert len(rows) == 14  # 7 comparisons with Dice, 7 changes with the length
    assert all(line.endswith("| same |") for line in rows[:7])
    assert "| 0.3, 0.7 | lesion_f1 | +5.00 [" in text
    changes = [line for line in text.splitlines() if line.startswith("| 0.5, 0.5 |")]
    assert len(changes) == 7 and all("| +0.00 [+0.00, +0.00], Holm 1 |" in line
                                     for line in changes)


def test_refuses_reproductions_that_differ_in_more_than_length(modules, tmp_path, capsys):
    _, compare = modules
    _reproduction(modules, tmp_path / "short")
    _reproduction(modules, tmp_path / "long", epochs=64, lr=0.01)
    assert compare.main([str(tmp_path / "short"), str(tmp_path / "long"),
                         "--seeds", "0", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "more than its length" in err[0]
    assert "--lr 0.01 there, 0.001 now" in err[0] and "--epochs" not in err[0]
