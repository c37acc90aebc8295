"""Regenerates the builder tests' dummy data: tiny phantoms in both dataset layouts.

    python tests/tfds_ms/make_dummy_data.py

Four subjects per layout at 8 mm (a few KB per file), seed 0. The ISBI copy gets a second
time point for training01, so that a subject with several scans is tested too.
"""

import pathlib
import shutil
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from tfds_ms import synth  # noqa: E402

DUMMY = HERE / "dummy_data"
SUBJECTS, RESOLUTION_MM = 4, 8.0


def main() -> None:
    for layout in synth.LAYOUTS:
        out = DUMMY / layout
        shutil.rmtree(out, ignore_errors=True)
        synth.synthesize(out, SUBJECTS, layout, seed=0, resolution=RESOLUTION_MM,
                         progress=False)
        (out / "phantom.json").unlink()  # not part of the real layouts
    subject = DUMMY / "isbi2015" / "training" / "training01"
    for path in sorted(subject.glob("*/training01_01_*")):
        shutil.copy(path, path.with_name(path.name.replace("_01_", "_02_")))
    total = sum(f.stat().st_size for f in DUMMY.rglob("*.nii*"))
    print(f"wrote {len(list(DUMMY.rglob('*.nii*')))} files, {total / 1024:.0f} KiB, to {DUMMY}")


if __name__ == "__main__":
    main()
