# The two set-up commands of the README. Each creates .venv on first use and installs
# squeezefit with everything it needs from the package registry; nothing else is fetched.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-all

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

## The main job: a search on the embedded default data set and baseline.
demo: $(STAMP)
	$(BIN)/squeezefit search studies/default.yaml

## The test suite (fast tests; `make test-all` adds the slow ones).
test: $(STAMP)
	$(BIN)/python -m pytest

test-all: $(STAMP)
	$(BIN)/python -m pytest -m ''
