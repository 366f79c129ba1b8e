# The two commands a new user needs (see README): `make demo` and `make test`.
# Each installs whatever is missing (Debian packages, the venv, pip packages) and then runs.
VENV ?= .venv
PY := $(VENV)/bin/python
export QT_QPA_PLATFORM ?= offscreen

.PHONY: setup setup-training demo test package wheelhouse bench bench-quick clean

setup:
	@bash scripts/setup.sh $(VENV)

setup-training:
	@bash scripts/setup.sh --training $(VENV)

demo: setup
	$(PY) -m engine demo --out demo_output

test: setup-training
	$(PY) -m pytest -q

bench: setup
	$(PY) -m bench --full

bench-quick: setup
	$(PY) -m bench --quick

package:
	python3 scripts/package.py --out dist

# Wheels of the plugin's optional dependencies (onnxruntime-gpu, Dask) for QGIS's Python on this platform,
# for the plugin's offline install (Raster > SAR-Optical Matcher > Install dependencies...).
wheelhouse:
	python3 scripts/wheelhouse.py --out wheelhouse

clean:
	rm -rf demo_output .pytest_cache .qgis-settings build dist wheelhouse
