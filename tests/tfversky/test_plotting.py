"""PNG figures: PR curves and overlays are written, readable, and errors are clear."""

import numpy as np
import pytest

from tfversky import plotting


def _is_png(path):
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pr_curves_png(tmp_path):
    curves = {"0.5, 0.5": (np.array([1.0, 0.8, 0.4]), np.array([0.2, 0.5, 1.0]), 0.6),
              "0.3, 0.7": (np.array([0.9, 0.5]), np.array([0.4, 1.0]), 0.65)}
    assert _is_png(plotting.plot_pr_curves(curves, tmp_path / "sub" / "pr.png"))
    panels = {"(a) all": curves, "(b) high load": curves, "(c) low load": curves}
    assert _is_png(plotting.plot_pr_panels(panels, tmp_path / "fig2.png"))


def test_overlay_png_and_slice_choice(tmp_path):
    flair = np.random.default_rng(0).random((20, 22, 24)).astype(np.float32)
    truth = np.zeros(flair.shape, bool)
    truth[1, 1, 4] = True  # 1 voxel
    truth[3:8, 2, 7] = True  # 5 voxels
    truth[3:6, 9, 15] = True  # 3 voxels
    assert plotting.lesion_slices(truth, count=2) == [7, 15]
    assert _is_png(plotting.plot_overlay(flair, truth, truth, tmp_path / "o.png", title="s01"))
    assert len(plotting.lesion_slices(np.zeros((4, 4, 10)), count=3)) == 3


def test_overlay_shape_mismatch(tmp_path):
    with pytest.raises(ValueError, match="Shape mismatch"):
        plotting.plot_overlay(np.zeros((4, 4, 4)), np.zeros((4, 4, 5)), np.zeros((4, 4, 4)),
                              tmp_path / "x.png")
