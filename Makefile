# alignbook — `make book` executes the book in the toy preset and renders the site into _book/; `make test` runs the tests;
# `make outputs` writes the toy run's outputs back into nbs/*.ipynb.
SHELL := /bin/bash
VENV  ?= .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.alignbook-installed
PRESET ?= toy
# notebooks executed at once by `make book`; each kernel gets cores/JOBS BLAS threads, so they never oversubscribe
JOBS ?= 2

.PHONY: install book outputs test lab clean export gpu-smoke
.DEFAULT_GOAL := book

$(PY):
	python3 -m venv $(VENV)

# (re)install when the packaging files change; idempotent otherwise
$(STAMP): $(PY) setup.py settings.ini .ci/install-torch
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	bash .ci/install-torch $(PY)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The toy preset and the tests never download anything: tell the Hugging Face libraries not to try
# (on a machine without internet each attempt otherwise waits for a network time-out).
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1

book: install
	$(if $(filter toy,$(PRESET)),$(OFFLINE)) $(VENV)/bin/alignbook book --preset $(PRESET) --jobs $(JOBS)

# refresh the outputs committed in the notebooks (toy preset; the alignbook version goes into their metadata)
outputs: install
	$(OFFLINE) $(VENV)/bin/alignbook book --preset toy --jobs $(JOBS) --write-back --no-site
	$(VENV)/bin/nbdev_clean

# two notebooks run at once on two cores: one BLAS thread each (oversubscribed threads spin-wait)
test: install
	$(VENV)/bin/ruff check alignbook tests
	$(OFFLINE) $(PY) -m pytest -q tests
	$(OFFLINE) OMP_NUM_THREADS=1 $(VENV)/bin/nbdev_test --n_workers 2

# on a machine with an NVIDIA GPU (no internet needed): every objective a few steps in bf16 on small models
# built from the gpu presets' configs; prints JSON (tokens/s, peak memory, MFU). Dry path: --device cpu --tiny
gpu-smoke: install
	$(OFFLINE) $(PY) -m alignbook.bench.gpu_smoke

lab: install
	$(VENV)/bin/jupyter lab nbs $(if $(filter 0,$(shell id -u)),--allow-root)

export: install
	$(VENV)/bin/nbdev_export && $(VENV)/bin/nbdev_clean

clean:
	rm -rf _book _docs _proc runs build dist *.egg-info .pytest_cache
	find . -name __pycache__ -type d -prune -not -path './$(VENV)/*' -exec rm -rf {} +
