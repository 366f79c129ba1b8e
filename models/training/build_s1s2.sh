#!/usr/bin/env bash
# The fine-tuned model set `lite-s1s2`: CorrASL lite fine-tuned on the declared s1s2_volkov training split
# (models/training/s1s2_volkov_split.json) with half of every batch simulated, then exported with the lite
# goodness networks and ORN. Needs ../shared/realdata/s1s2_volkov and a trained lite CorrASL (build_lite.sh).
# Usage: bash models/training/build_s1s2.sh   (from the repo root; re-running resumes)
set -euo pipefail
PY="${PY:-.venv/bin/python}"
$PY -m models.training corrasl --size lite --variant s1s2 --init models/training/runs/corrasl_lite/checkpoint.pt \
    --real-fraction 0.5 --flips h --lr 1e-4 --lr-min 1e-5 --steps 1100 --minutes 45
$PY -m models.training export --size lite --variant s1s2
