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
	# torch first, pinned, with pip (it finds the CPU wheel of 2.13.0 where uv does not look): an unpinned torch
	# would pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0 uv
	# uv resolves the same versions as pip, keeps the installed torch, and installs in ~60 s instead of ~150 s.
	# --compile-bytecode, as pip does: where PYTHONDONTWRITEBYTECODE is set (this project's machines), a venv without
	# .pyc files recompiles lightning/transformers/vllm in every process (12.4 s of CPU to start the CLI, not 7.6 s).
	$(VENV)/bin/uv pip install -q --compile-bytecode --python $(PY) -e ".[cpu,dev,bench]"
	# The PyPI torchvision/torchaudio wheels fail beside torch 2.13.0+cpu; nothing here needs them.
	$(VENV)/bin/uv pip uninstall -q --python $(PY) torchvision torchaudio torchcodec || true
	touch $(STAMP)

# Test processes at once (pytest-xdist; a test module stays on one worker, so its module fixtures run once). Each
# gets one torch thread: two workers of two threads each on two cores were slower (~950 s against 781 s).
TEST_WORKERS ?= 2

test: setup
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadscope

demo: setup
	$(PY) -m openrs_pl.demo

lint: setup
	$(VENV)/bin/ruff check openrs_pl tests scripts
	$(VENV)/bin/ruff format --check openrs_pl tests scripts
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) runs
