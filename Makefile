# stabkit — set-up, reproduction and tests. The two commands a user needs: `make reproduce` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
# torch: TORCH_SPEC is installed first, alone, from TORCH_INDEX when set (pip's --index-url), then the project.
# On PyPI, Linux `torch==2.13.0` is the CUDA build; on a machine without a GPU use the CPU wheels:
#   make install TORCH_INDEX=https://download.pytorch.org/whl/cpu
# The default (empty TORCH_INDEX) uses pip's configuration, which on the project's machines serves the CPU wheel.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
SCALE ?= ci
DEVICE ?= cpu
ONLY ?=
PROGRESS ?=
LAB_ARGS ?=
PY := $(VENV)/bin/python
# The install stamp names the torch request: changing TORCH_SPEC or TORCH_INDEX reinstalls torch.
TORCH_HASH := $(shell printf '%s|%s' '$(TORCH_SPEC)' '$(TORCH_INDEX)' | sha256sum | cut -c1-12)
STAMP := $(VENV)/.installed-$(TORCH_HASH)
LAB_STAMP := $(VENV)/.lab-installed
NBVAL := --nbval-lax --nbval-current-env --nbval-sanitize-with notebooks/sanitize.cfg
# nbval's executions write here; `make test` then compares them with figures/ci/ (reproduce --check)
NBVAL_FIGURES := $(CURDIR)/build/ci/nbval-figures
LINT_PATHS := stabkit tests benchmarks notebooks docs conftest.py
ALLOW_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root)

.PHONY: help install reproduce check report test lint notebooks lab docs gpu-check clean

help:
	@echo "make install     create $(VENV) and install the project (TORCH_SPEC=$(TORCH_SPEC), TORCH_INDEX=$(TORCH_INDEX))"
	@echo "make reproduce [SCALE=ci|cpu|full] [DEVICE=cpu|cuda] [ONLY='id ...'] [PROGRESS=1]  regenerate figures/<scale>/"
	@echo "make check [SCALE=ci|cpu]  rerun into build/<scale>/check/ and compare with figures/<scale>/ (manifest tolerances)"
	@echo "make report [SCALE=ci] rewrite figures/<scale>/REPORT.md from the stored outputs"
	@echo "make test        lint, unit tests, notebooks under nbval, then the tolerance check (what CI runs)"
	@echo "make lint        ruff check + ruff format --check"
	@echo "make notebooks   rerun the ci scale and store the outputs (with figures) in notebooks/"
	@echo "make lab [LAB_ARGS='--no-browser --port 8888 --ip 0.0.0.0']  JupyterLab, kernel 'stabkit' registered"
	@echo "make docs        the documentation site in build/site (API, notebooks with their stored outputs)"
	@echo "make gpu-check [SMOKE=1]  every benchmark + GPU-timed entries on one CUDA GPU (SMOKE=1: tiny CPU run)"
	@echo "make clean       remove build outputs and caches (keeps $(VENV) and figures/)"
	@echo "variables: PYTHON=$(PYTHON) VENV=$(VENV) TORCH_SPEC TORCH_INDEX SCALE DEVICE ONLY PROGRESS LAB_ARGS"

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; set PYTHON=/path/to/python3.11"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --force-reinstall --no-deps "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install --quiet "$(TORCH_SPEC)" -e ".[test,data,notebooks,docs]"
	rm -f $(VENV)/.installed*
	touch $(STAMP)

install: $(STAMP)

reproduce: $(STAMP)
	$(PY) -m stabkit.reproduce --scale $(SCALE) --device $(DEVICE) $(if $(ONLY),--only $(ONLY)) $(if $(PROGRESS),--progress)

check: $(STAMP)
	$(PY) -m stabkit.reproduce --check --scale $(SCALE) --device $(DEVICE) $(if $(ONLY),--only $(ONLY))

report: $(STAMP)
	$(PY) -m stabkit.reproduce --report --scale $(SCALE)

lint: $(STAMP)
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)

test: lint
	rm -rf $(NBVAL_FIGURES)
	STABKIT_FIGURES_DIR=$(NBVAL_FIGURES) $(PY) -m pytest $(NBVAL) --durations=15 stabkit tests notebooks docs/tutorial.ipynb
	$(PY) -m stabkit.reproduce --check --scale ci --from $(NBVAL_FIGURES)

notebooks: $(STAMP)
	$(PY) -m stabkit.reproduce --store-outputs

$(LAB_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e ".[lab]"
	$(PY) -m ipykernel install --user --name stabkit --display-name "Python (stabkit)"
	touch $(LAB_STAMP)

lab: $(LAB_STAMP)
	$(VENV)/bin/jupyter lab $(ALLOW_ROOT) $(LAB_ARGS) notebooks/

# the site renders the notebooks' stored outputs (never executes them) and fails on any warning
docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict --site-dir build/site

# every benchmark and the GPU-timed manifest entries on one CUDA GPU; SMOKE=1: tiny CPU run of the benchmarks
gpu-check: $(STAMP)
	$(PY) benchmarks/gpu_check.py $(if $(SMOKE),--smoke)

clean:
	rm -rf build .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -not -path "./$(VENV)/*" -prune -exec rm -rf {} +
