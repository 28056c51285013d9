# Everything runs from the repository's own virtualenv, .venv/.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=
# Tests run on this many processes (pytest-xdist), each with its own Daytona emulator;
# PYTEST_WORKERS=0 runs them in this one. 3 on 2 cores: the e2e tests spend most of their time
# waiting on the emulator, Codex and the model (one full run: 8.5 min of CPU in 11.6 min on 2 workers).
PYTEST_WORKERS ?= 3
PYTEST := $(BIN)/python -m pytest -n $(PYTEST_WORKERS)

.PHONY: install test test-slow test-fast test-live test-wheel test-pythons dist lint typecheck fmt check bench mutants clean

install: $(BIN)/codex-daytona

$(BIN)/codex-daytona: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

test: install
	$(PYTEST) -m "not slow" $(PYTEST_ARGS)

# The e2e tests of a minute's worth each, that `make test` leaves out: the runtime installed
# without a snapshot (uv, pip) and compiled, the soak, the signal sweep. CI runs them too.
test-slow: install
	$(PYTEST) -m slow $(PYTEST_ARGS)

test-fast: install
	$(PYTEST) -m "not e2e" $(PYTEST_ARGS)

test-live: install
	$(BIN)/python -m pytest -m live tests/live $(PYTEST_ARGS)

# The wheel and the sdist users install (pipx, uv tool, pip), in dist/.
dist: install
	rm -rf dist
	$(BIN)/python -m build --outdir dist .

# The wheel from `make dist`, pip-installed into a fresh virtualenv outside the checkout, runs
# up, ask, preview and down against the emulator (minutes: pip resolves every dependency).
test-wheel: dist
	CODEX_DAYTONA_TEST_WHEEL=1 CODEX_DAYTONA_WHEEL_DIR=$(CURDIR)/dist $(BIN)/python -m pytest -n 0 tests/test_wheel.py $(PYTEST_ARGS)

# Every Python the package claims, each in its own .venv-X.Y: the fast tier on FAST_PYTHONS,
# the e2e tier on E2E_PYTHONS. An interpreter is pyenv's 3.X, else python3.X on PATH (pyenv's
# shims on PATH fail for a version that is not selected).
FAST_PYTHONS ?= 3.10 3.12 3.13
E2E_PYTHONS ?= 3.10 3.13
PYENV_ROOT ?= $(HOME)/.pyenv
python_for = $(or $(lastword $(wildcard $(PYENV_ROOT)/versions/$(1).*/bin/python$(1))),$(shell command -v python$(1) 2>/dev/null),$(error no python$(1) in $(PYENV_ROOT)/versions or on PATH))

.venv-%/bin/codex-daytona: pyproject.toml
	$(call python_for,$*) -m venv .venv-$*
	.venv-$*/bin/python -m pip install --quiet --upgrade pip
	.venv-$*/bin/python -m pip install --quiet -e '.[dev]'
	@touch $@

test-pythons: $(foreach v,$(sort $(FAST_PYTHONS) $(E2E_PYTHONS)),.venv-$(v)/bin/codex-daytona)
	set -e; for v in $(FAST_PYTHONS); do echo "== fast tier on Python $$v"; \
		.venv-$$v/bin/python -m pytest -n $(PYTEST_WORKERS) -m "not e2e" $(PYTEST_ARGS); done
	set -e; for v in $(E2E_PYTHONS); do echo "== e2e tier on Python $$v"; \
		.venv-$$v/bin/python -m pytest -n $(PYTEST_WORKERS) -m e2e $(PYTEST_ARGS); done

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
	rm -rf $(VENV) .venv-3.* dist build .pytest_cache .mypy_cache .ruff_cache
