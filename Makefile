# Two entry points for a fresh machine (see README.md): `make demo` and `make test`.
# Both create .venv with Python 3.11 if missing. torch/torchvision are pinned to the pair that installs
# from this machine's local wheel cache (REFERENCE.md 5); the package itself declares lower bounds only.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_PAIR := torch==2.14.1 torchvision==0.29.1

.PHONY: setup demo test lint bench

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
	HF_HUB_OFFLINE=1 $(BIN)/python -m ruff check .
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -p no:cacheprovider tests

lint: setup
	$(BIN)/python -m ruff check . && $(BIN)/python -m ruff format --check .
