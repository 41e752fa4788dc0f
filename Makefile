# One command per job; each does its own setup and is idempotent.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test demo lint clean

setup: $(STAMP)

# Re-install only when the dependency list changes.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: an unpinned torch would pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[cpu,dev,bench]"
	# The PyPI torchvision/torchaudio wheels fail beside torch 2.13.0+cpu; nothing here needs them.
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec || true
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q

demo: setup
	$(PY) -m openrs_pl.demo

lint: setup
	$(VENV)/bin/ruff check openrs_pl tests scripts
	$(VENV)/bin/ruff format --check openrs_pl tests scripts
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) runs
