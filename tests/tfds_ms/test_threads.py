"""Per-subject work on threads: order, errors, bounded work in flight, and the same phantom."""

import threading
import time

import nibabel as nib
import numpy as np
import pytest

from tfds_ms import synth, threads


def test_results_come_in_order_whatever_finishes_first():
    def slow_first(x):
        time.sleep(0.05 if x == 0 else 0.0)
        return x * 10
    assert list(threads.ordered_map(slow_first, range(6), workers=3)) == [0, 10, 20, 30, 40, 50]


def test_at_most_workers_items_in_flight():
    running, peak, lock = [0], [0], threading.Lock()

    def work(x):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.01)
        with lock:
            running[0] -= 1
        return x
    consumed = []
    for x in threads.ordered_map(work, range(12), workers=2):
        consumed.append(x)
        time.sleep(0.01)  # a slow consumer must not let work pile up
    assert consumed == list(range(12)) and peak[0] <= 2


def test_an_error_is_raised_in_its_turn_and_later_items_are_dropped():
    started = []

    def work(x):
        started.append(x)
        if x == 2:
            raise ValueError("item 2")
        return x
    results = []
    with pytest.raises(ValueError, match="item 2"):
        for x in threads.ordered_map(work, range(100), workers=2):
            results.append(x)
    assert results == [0, 1] and max(started) < 10


def test_a_phantom_made_on_threads_equals_one_made_on_one(tmp_path, monkeypatch):
    kwargs = dict(subjects=3, layout="nnunet", resolution=6, progress=False, test_subjects=1)
    monkeypatch.setattr(threads, "default_workers", lambda: 1)
    one = synth.synthesize(tmp_path / "one", **kwargs)
    monkeypatch.setattr(threads, "default_workers", lambda: 3)
    three = synth.synthesize(tmp_path / "three", **kwargs)
    strip = [{k: v for k, v in s.items() if k != "seconds"}
             for s in one["subjects"] + one["test_subjects"]]
    assert strip == [{k: v for k, v in s.items() if k != "seconds"}
                     for s in three["subjects"] + three["test_subjects"]]
    files = sorted((tmp_path / "one").rglob("*.nii.gz"))
    assert len(files) == 4 * 4  # 3 + 1 subjects: T1, T2, FLAIR and the mask
    for path in files:
        a, b = nib.load(path), nib.load(tmp_path / "three" / path.relative_to(tmp_path / "one"))
        assert np.array_equal(a.affine, b.affine)
        assert np.array_equal(a.get_fdata(), b.get_fdata()), path.name
