#!/usr/bin/env bash
# Where a fresh clone's `make demo` spends its time (issue 22, item 4), for each git REF given:
# a clone of REF in a temporary folder with a fresh .venv and a fresh TFDS data folder, then
# the three things `make demo` does, each timed: the install, the phantom (TFDS build of
# ms_lesions/synthetic), and examples/train_ms.py (training, validation, the test fold).
#
#     bash benchmarks/time_demo.sh 4077b20 HEAD     # before and after, one after the other
#
# Run it on an idle machine: every phase uses every core. Prints one line per REF, the
# seconds of each phase, the training and test seconds train_ms.py records, and the pooled
# test DSC (so a faster demo that tests worse shows).
set -euo pipefail
repo=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)
# Every REF is checked before anything is cloned or installed.
if [ $# -eq 0 ]; then
  echo "time_demo.sh: no REF given: pass one or more commits, e.g. 4077b20 HEAD" >&2; exit 2
fi
for ref in "$@"; do
  if ! git -C "$repo" rev-parse -q --verify "$ref^{commit}" >/dev/null; then
    echo "time_demo.sh: REF $ref: not a commit of $repo; pass a commit, branch or tag" >&2
    exit 2
  fi
done
work=""
trap 'if [ -n "$work" ]; then rm -rf "$work"; fi' EXIT  # the clone and its venv, always
for ref in "$@"; do
  work=$(mktemp -d)
  git clone -q "$repo" "$work/clone"
  git -C "$work/clone" checkout -q "$(git -C "$repo" rev-parse "$ref")"
  cd "$work/clone"
  export TFDS_DATA_DIR="$work/tfds"
  # The demo's own install where the Makefile has one (after 4077b20), else the full one.
  install=install
  if make -n demo-install >/dev/null 2>&1; then install=demo-install; fi
  t0=$(date +%s.%N)
  make "$install" > "$work/install.log" 2>&1
  t1=$(date +%s.%N)
  .venv/bin/python -m tfds_ms --config synthetic > "$work/phantom.log" 2>&1
  t2=$(date +%s.%N)
  make demo > "$work/demo.log" 2>&1
  t3=$(date +%s.%N)
  .venv/bin/python - "$ref" "$t0" "$t1" "$t2" "$t3" <<'PY'
import json, sys
ref, t0, t1, t2, t3 = sys.argv[1], *map(float, sys.argv[2:])
results = json.load(open("runs/demo/results.json"))
timing, pooled = results["timing"], results["pooled"]
print(f"{ref}: install {t1 - t0:.0f} s, phantom {t2 - t1:.0f} s, demo {t3 - t2:.0f} s "
      f"(training {timing['train_seconds']:.0f} s, test {timing['inference_seconds']:.0f} s), "
      f"total {t3 - t0:.0f} s; pooled test DSC {100 * pooled['dsc']:.2f} %")
PY
  cd "$repo"
  rm -rf "$work"
  work=""
done
