# The two set-up commands of the README. Each creates .venv on first use and installs
# squeezefit with everything it needs from the package registry; nothing else is fetched.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow test-all lint

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

## The main job: a search on the embedded default data set and baseline.
demo: $(STAMP)
	$(BIN)/squeezefit search studies/default.yaml

## The test suite: the fast tests of every layer plus the end-to-end smoke search.
test: $(STAMP)
	$(BIN)/python -m pytest --durations=10

## The minutes-long end-to-end checks left out of `make test` (CI runs them after it).
test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow --durations=10

## Everything at once.
test-all: $(STAMP)
	$(BIN)/python -m pytest -m ''

## Formatting, lint and the layer contract (spaces -> evaluators -> search).
lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/lint-imports
