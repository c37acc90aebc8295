"""The fused loss on every Keras backend: tests/tfversky/fused_backend_cases.py, run in a
subprocess per backend (Keras picks its backend once, at import), plus the bindings' build
checks, which need no framework loaded."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

CASES = Path(__file__).with_name("fused_backend_cases.py")
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("backend, framework", [("jax", "jax"), ("torch", "torch")])
def test_fused_loss_on_backend(backend, framework):
    pytest.importorskip(framework)
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(CASES)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    summary = result.stdout.strip().splitlines()[-1:] if result.stdout else []
    assert result.returncode == 0, f"{backend}:\n{result.stdout[-6000:]}\n{result.stderr[-3000:]}"
    assert "passed" in " ".join(summary) and "skipped" not in " ".join(summary), summary
