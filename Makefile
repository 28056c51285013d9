# Everything runs from the repository's own virtualenv, .venv/.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=
# Tests run on this many processes (pytest-xdist), each with its own Daytona emulator;
# PYTEST_WORKERS=0 runs them in this one.
PYTEST_WORKERS ?= 2
PYTEST := $(BIN)/python -m pytest -n $(PYTEST_WORKERS)

.PHONY: install test test-fast test-live lint typecheck fmt check bench mutants clean

install: $(BIN)/codex-daytona

$(BIN)/codex-daytona: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

test: install
	$(PYTEST) $(PYTEST_ARGS)

test-fast: install
	$(PYTEST) -m "not e2e" $(PYTEST_ARGS)

test-live: install
	$(BIN)/python -m pytest -m live tests/live $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

fmt: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

check: lint typecheck test

bench: install
	$(BIN)/python benchmarks/bench.py

# Named one-line breaks of the code, one at a time, each of which the tests named for it must
# catch (tests/mutants.py), MUTANTS_JOBS at once; MUTANTS_ARGS="-k NAME" picks some.
MUTANTS_JOBS ?= 2
MUTANTS_ARGS ?=
mutants: install
	$(BIN)/python -m tests.mutants -j $(MUTANTS_JOBS) $(MUTANTS_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
