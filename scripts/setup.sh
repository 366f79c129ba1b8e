#!/usr/bin/env bash
# Installs everything the project needs on Debian 12, skipping what is already there.
# Usage: scripts/setup.sh [VENV_DIR]   (idempotent; fast on re-runs)
set -euo pipefail
cd "$(dirname "$0")/.."
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

stamp="$VENV/.setup-stamp"
want="$(cat requirements.txt constraints.txt | sha256sum | cut -c1-16)"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "[setup] creating virtual environment $VENV (Debian python, system site packages)"
    /usr/bin/python3 -m venv --system-site-packages "$VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r requirements.txt -c constraints.txt
    echo "$want" > "$stamp"
fi
