"""Regenerates the builder tests' dummy data: tiny phantoms in every dataset layout.

    python tests/tfds_ms/make_dummy_data.py

Four subjects per layout at 8 mm (a few KB per file), seed 0. The first subject of each
layout gets a second scan, so that a subject with several scans is tested too: a second
time point (ISBI), a second session (BIDS: ses-02; nnU-Net: cases MS_001_s1 and MS_001_s2,
grouped with the subject pattern ``^MS_[0-9]+``). nnU-Net holds FLAIR + T1, BIDS FLAIR, T1w
and T2w.
"""

import pathlib
import shutil
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from tfds_ms import synth  # noqa: E402

DUMMY = HERE / "dummy_data"
SUBJECTS, RESOLUTION_MM = 4, 8.0


MODALITIES = {"nnunet": ("FLAIR", "T1"), "bids": ("FLAIR", "T1", "T2")}


def main() -> None:
    for layout in synth.LAYOUTS:
        out = DUMMY / layout
        shutil.rmtree(out, ignore_errors=True)
        synth.synthesize(out, SUBJECTS, layout, seed=0, resolution=RESOLUTION_MM,
                         progress=False, modalities=MODALITIES.get(layout))
        (out / "phantom.json").unlink()  # not part of the real layouts
    subject = DUMMY / "isbi2015" / "training" / "training01"
    for path in sorted(subject.glob("*/training01_01_*")):
        shutil.copy(path, path.with_name(path.name.replace("_01_", "_02_")))
    nnunet = DUMMY / "nnunet"
    for path in sorted(nnunet.glob("*Tr/MS_*")):
        case = path.name[:6]
        path.rename(path.with_name(path.name.replace(case, f"{case}_s1")))
        if case == "MS_001":
            shutil.copy(path.with_name(path.name.replace(case, f"{case}_s1")),
                        path.with_name(path.name.replace(case, f"{case}_s2")))
    for session in sorted((DUMMY / "bids").glob("**/sub-01/ses-01")):
        shutil.copytree(session, session.with_name("ses-02"))
        for path in session.with_name("ses-02").rglob("*.nii.gz"):
            path.rename(path.with_name(path.name.replace("ses-01", "ses-02")))
    total = sum(f.stat().st_size for f in DUMMY.rglob("*.nii*"))
    print(f"wrote {len(list(DUMMY.rglob('*.nii*')))} files, {total / 1024:.0f} KiB, to {DUMMY}")


if __name__ == "__main__":
    main()
