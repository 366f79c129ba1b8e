#!/usr/bin/env bash
# Installs everything the project needs on Debian 12, skipping what is already there.
# Usage: scripts/setup.sh [--training] [VENV_DIR]   (idempotent; fast on re-runs)
#   --training  also installs requirements-training.txt (torch CPU, onnx, onnxscript): needed by the
#               test suite and models/training, never by the engine or the plugin at run time.
set -euo pipefail
cd "$(dirname "$0")/.."
REQS=(requirements.txt)
if [ "${1:-}" = "--training" ]; then REQS+=(requirements-training.txt); shift; fi
VENV="${1:-.venv}"
APT_PKGS=(qgis python3-qgis qgis-providers python3-gdal python3-rasterio python3-scipy python3-venv xvfb)

missing=()
for p in "${APT_PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "[setup] installing Debian packages: ${missing[*]}"
    SUDO=""
    if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

want="$(cat "${REQS[@]}" constraints.txt | sha256sum | cut -c1-16)"
stamp="$VENV/.setup-stamp-$want"   # one per requirement set, so demo and test setups do not undo each other
if [ ! -x "$VENV/bin/python" ] || [ ! -e "$stamp" ]; then
    echo "[setup] creating virtual environment $VENV (Debian python, system site packages)"
    /usr/bin/python3 -m venv --system-site-packages "$VENV"
    for r in "${REQS[@]}"; do
        "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$r" -c constraints.txt
    done
    echo "$want" > "$stamp"
fi
