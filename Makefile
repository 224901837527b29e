# Two entry points: `make run` (install and run with built-in defaults) and
# `make test` (install and run the whole suite).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# pip says only what failed: its warnings about the machine's own pip
# configuration (an index that lacks a package) would otherwise fill the
# first screen of `make run`; an error still shows and stops make.
PIP_QUIET := --quiet --quiet

.PHONY: run test lint bench install install-test tools clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install $(PIP_QUIET) --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install $(PIP_QUIET) -e .

install-test: $(BIN)/python
	$(BIN)/pip install $(PIP_QUIET) -e '.[test]'

run: install
	$(BIN)/gateway $(ARGS)

tools:
	sh scripts/install-tools

test: tools install-test
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/pytest $(PYTEST_ARGS)

bench: install-test
	sh scripts/install-tools bench
	$(BIN)/python bench/run.py $(ITEMS)

lint: install-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) build dist src/*.egg-info
