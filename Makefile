# Two entry points for a fresh machine (see README.md): `make demo` and `make test`.
# Both create .venv with Python 3.11 if missing. torch/torchvision are pinned to a pair that imports together
# (torch 2.13 CPU with the PyPI torchvision does not); the package itself declares lower bounds only.
# Tests: `make test` runs the fast suite (everything not marked slow, a few minutes on 2 cores),
# `make test-slow` only the slow tests (learning runs, process launches, the demo), `make test-all` both.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_PAIR := torch==2.14.1 torchvision==0.29.1
PYTEST := HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -p no:cacheprovider

.PHONY: setup demo test test-slow test-all lint

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_PAIR)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	HF_HUB_OFFLINE=1 $(BIN)/python examples/demo.py

test: setup
	$(BIN)/python -m ruff check .
	$(PYTEST) -m "not slow" tests

test-slow: setup
	$(PYTEST) -m slow tests

test-all: setup
	$(BIN)/python -m ruff check .
	$(PYTEST) tests

lint: setup
	$(BIN)/python -m ruff check . && $(BIN)/python -m ruff format --check .
