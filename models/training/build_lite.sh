#!/usr/bin/env bash
# The whole lite model build after CorrASL training, in order (each stage resumes if re-run).
# Usage: bash models/training/build_lite.sh   (from the repo root, with the training requirements installed)
set -euo pipefail
PY="${PY:-.venv/bin/python}"
$PY -m models.training calibrate --size lite --val-pairs 512
$PY -m models.training labels --size lite --n 3000
$PY -m models.training head goodness_sar --size lite --steps 600 --minutes 7
$PY -m models.training head goodness_opt --size lite --steps 600 --minutes 7
$PY -m models.training head orn --size lite --steps 800 --minutes 4
$PY -m models.training export --size lite
