#!/usr/bin/env bash
# What we write, their tools accept: the phantom's BIDS output through the BIDS validator, its
# nnU-Net output (NIfTI and .mha) through nnU-Net's verify_dataset_integrity, and each read back
# by tfds_ms.layouts. Not part of CI (it needs node and a separate nnU-Net environment).
#
#   scripts/check_layouts.sh [WORK_DIR]
#
# Environment (defaults in brackets):
#   PYTHON          tfversky's Python [python]
#   BIDS_VALIDATOR  the npm package's command [bids-validator]
#                   (npm install bids-validator@1.15 --prefix DIR; DIR/node_modules/.bin/...)
#   NNUNET_PYTHON   a Python with nnunetv2 installed, kept apart from tfversky's [python]
#                   (python3 -m venv DIR && DIR/bin/pip install torch nnunetv2)
# Exits non-zero at the first check that fails.
set -euo pipefail

PYTHON=${PYTHON:-python}
BIDS_VALIDATOR=${BIDS_VALIDATOR:-bids-validator}
NNUNET_PYTHON=${NNUNET_PYTHON:-python}
work=${1:-$(mktemp -d)}
mkdir -p "$work"
bids="$work/bids"
nnunet="$work/Dataset501_Phantom"
mha="$work/Dataset502_PhantomMha"

echo "== writing the phantom (3 subjects, 4 mm) into $work"
"$PYTHON" -m tfds_ms.synth --out "$bids" --layout bids --modalities FLAIR,T1 --subjects 3 \
    --resolution 4 > /dev/null
"$PYTHON" -m tfds_ms.synth --out "$nnunet" --layout nnunet --modalities FLAIR,T1 --subjects 3 \
    --test-subjects 1 --resolution 4 > /dev/null

echo "== BIDS validator $("$BIDS_VALIDATOR" --version 2>/dev/null | tail -n 1) on $bids"
"$BIDS_VALIDATOR" "$bids"  # exits 1 on any error; warnings are listed

echo "== the same nnU-Net dataset as .mha, through SimpleITK"
"$PYTHON" - "$nnunet" "$mha" <<'PY'
import json, pathlib, shutil, sys
import SimpleITK as sitk
sitk.ProcessObject_SetGlobalWarningDisplay(False)  # NIfTI-only header items, dropped
source, target = (pathlib.Path(p) for p in sys.argv[1:])
shutil.rmtree(target, ignore_errors=True)
for path in sorted(source.glob("*s[TrTs]*/*.nii.gz")):
    out = target / path.parent.name / path.name.replace(".nii.gz", ".mha")
    out.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.ReadImage(str(path)), str(out))
spec = json.loads((source / "dataset.json").read_text())
(target / "dataset.json").write_text(json.dumps(dict(spec, file_ending=".mha"), indent=1))
PY

for dataset in "$nnunet" "$mha"; do
    echo "== nnU-Net verify_dataset_integrity on $dataset"
    # -c, not a here-document: nnU-Net's worker processes re-import the main script.
    "$NNUNET_PYTHON" -c '
import sys
from importlib.metadata import version
from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity
print("nnunetv2", version("nnunetv2"))
verify_dataset_integrity(sys.argv[1], num_processes=1)  # raises on any problem
print("integrity check passed")
' "$dataset"
done

echo "== read back by tfds_ms.layouts"
"$PYTHON" - "$bids" "$nnunet" "$mha" <<'PY'
import sys
import numpy as np
from tfds_ms import layouts, scans
bids, nnunet, mha = sys.argv[1:]
for root, layout, options in ((bids, "bids", {"modalities": "FLAIR,T1w"}),
                              (nnunet, "nnunet", {}), (mha, "nnunet", {})):
    found = layouts.find_scans(root, layout, **options)
    print(f"{layout} {root}: {len(found)} cases, channels {tuple(found[0].images)}")
nifti, from_mha = (scans.load_scan(layouts.find_scans(r, "nnunet")[0]) for r in (nnunet, mha))
assert np.array_equal(nifti.image, from_mha.image) and np.allclose(nifti.affine, from_mha.affine,
                                                                   atol=1e-4)
print("the .mha case reads as the same array and RAS affine as its NIfTI")
PY
echo "== all checks passed"
