"""The README's quick start runs as written (on the tiny phantom, with fewer steps)."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_quick_start_runs(tiny_data_dir, capsys):
    readme = (ROOT / "README.md").read_text()
    code = re.search(r"## Quick start\s+```python\n(.*?)```", readme, re.S).group(1)
    shrunk = {
        '"ms_lesions/synthetic", "fold0")': f'"ms_lesions/synthetic_tiny", "fold0", data_dir=r"{tiny_data_dir}")',
        '"ms_lesions/synthetic", "fold1")': f'"ms_lesions/synthetic_tiny", "fold1", data_dir=r"{tiny_data_dir}")',
        "patch_size=(48, 48, 48)": "patch_size=(16, 16, 16)",
        "patch_size=48)": "patch_size=16)",
        "steps_per_epoch=100, epochs=10": "steps_per_epoch=2, epochs=1, verbose=0",
    }
    for text, replacement in shrunk.items():
        assert text in code, f"README quick start changed: update this test ({text})"
        code = code.replace(text, replacement)
    exec(compile(code, "README quick start", "exec"), {})
    printed = capsys.readouterr().out
    assert all(key in printed for key in ("'dsc'", "'sensitivity'", "'apr'"))
