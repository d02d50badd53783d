# stabkit — set-up, reproduction and tests. The two commands a user needs: `make reproduce` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
SCALE ?= ci
DEVICE ?= cpu
ONLY ?=
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NBVAL := --nbval-lax --nbval-current-env --nbval-sanitize-with notebooks/sanitize.cfg
LINT_PATHS := stabkit tests benchmarks notebooks conftest.py

.PHONY: help install reproduce test lint notebooks lab clean gpu-check

help:
	@echo "make reproduce [SCALE=ci|full] [DEVICE=cpu|cuda] [ONLY='id ...']  regenerate figures/"
	@echo "make test        lint, unit tests and notebooks under nbval (what CI runs)"
	@echo "make notebooks   rerun the ci scale and store the outputs in notebooks/"
	@echo "make lab         JupyterLab on the notebooks"
	@echo "make clean       remove build outputs and caches (keeps .venv and figures/)"

# torch is pinned in the same pip command as the project, so pip never resolves a bare `torch` to a CUDA build.
$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; set PYTHON=/path/to/python3.11"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)" -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

reproduce: $(STAMP)
	$(PY) -m stabkit.reproduce --scale $(SCALE) --device $(DEVICE) $(if $(ONLY),--only $(ONLY))

lint: $(STAMP)
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)

test: lint
	$(PY) -m pytest $(NBVAL) --durations=15 tests notebooks

notebooks: $(STAMP)
	$(PY) -m stabkit.reproduce --store-outputs

lab: $(STAMP)
	$(PY) -m pip install --quiet -e ".[lab]"
	$(VENV)/bin/jupyter lab notebooks/

# every benchmark and the GPU-timed manifest entries on one CUDA GPU; SMOKE=1: tiny CPU run of the benchmarks
gpu-check: $(STAMP)
	$(PY) benchmarks/gpu_check.py $(if $(SMOKE),--smoke)

clean:
	rm -rf build .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -not -path "./$(VENV)/*" -prune -exec rm -rf {} +
