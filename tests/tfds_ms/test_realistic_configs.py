"""ms_lesions configs of the realistic phantom: registered names, a build with folds by
centre, and the config's errors."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from tfds_ms import MsLesions, MsLesionsConfig, realistic
from tfds_ms.ms_lesions import assign_centre_folds
from tfversky.preprocessing import PAPER_GRID


def test_configs_registered():
    configs = {c.name: c for c in MsLesions.BUILDER_CONFIGS}
    for name in ("synthetic_realistic", "synthetic_realistic_lowres",
                 "synthetic_realistic_by_centre_lowres"):
        assert configs[name].phantom == "realistic"
    assert configs["synthetic"].phantom == "easy"  # the easy phantom keeps its names
    by_centre = configs["synthetic_realistic_by_centre_lowres"]
    assert by_centre.folds_by == "centre" and by_centre.num_folds == len(by_centre.synth_centres)


def test_build_with_folds_by_centre(tmp_path):
    """Six subjects: five from centre 1 (fold0) and one from centre 2 (fold1)."""
    config = MsLesionsConfig(name="realistic_by_centre_test", source="synthetic",
                             phantom="realistic", grid=PAPER_GRID.scaled(4), synth_subjects=6,
                             synth_resolution=6.0, folds_by="centre", difficulty=0.7)
    builder = MsLesions(config=config, data_dir=tmp_path / "data")
    builder.download_and_prepare(download_dir=tmp_path / "downloads")
    subjects = {split: sorted(ex["subject"].decode() for ex in
                              tfds.as_numpy(builder.as_dataset(split=split)))
                for split in ("fold0", "fold1")}
    assert subjects["fold0"] == [f"center01_patient0{k}" for k in range(1, 6)]
    assert subjects["fold1"] == ["center02_patient01"]
    examples = list(tfds.as_numpy(builder.as_dataset(split="fold0")))
    assert all(ex["image"].shape == (32, 56, 64, 3) for ex in examples)
    assert all(np.isfinite(ex["image"]).all() for ex in examples)
    assert max(ex["label"].max() for ex in examples) == 1  # the high-load subject at least
    folder = next((tmp_path / "downloads").glob("phantom_*realistic_d0.7_*"))
    assert (folder / "phantom.json").exists()


def test_centre_folds_need_one_fold_per_centre():
    with pytest.raises(ValueError, match="num_folds=3; set it to 2"):
        assign_centre_folds(["center01_patient01", "center02_patient01"], 3)
    with pytest.raises(ValueError, match="has no centre"):
        assign_centre_folds(["training01"], 1)


@pytest.mark.parametrize("kwargs, message", [
    ({"difficulty": 2.0}, "difficulty=2.0"),
    ({"difficulty": -0.5}, "difficulty=-0.5"),
    ({"synth_centres": ("3t_iso", "7t_dream")}, "['7t_dream'] is not a centre"),
    ({"phantom": "hard"}, "phantom='hard'"),
    ({"folds_by": "scanner"}, "folds_by='scanner'"),
    ({"folds_by": "centre", "layout": "isbi2015"}, "layout 'isbi2015' has no centres"),
])
def test_config_errors(kwargs, message):
    with pytest.raises(ValueError) as info:
        MsLesionsConfig(name="bad", source="synthetic", **kwargs)
    assert message in str(info.value)


def test_centre_names():
    assert set(realistic.DEFAULT_CENTRES) < set(realistic.CENTRES)
    assert {c.section_mm for c in realistic.CENTRES.values()} >= {1.0, 3.0}
