# `make demo` and `make test` each set up the virtual environment in .venv first (once), with
# only what they need: the demo the package and its dedup extra, the tests the test extra.
# torch is pinned before the package install so pip does not pick another build
# (this machine's /etc/xdg/pip caps torch at 2.14.1).

PYTHON ?= python3
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test test-slow test-all lint clean-venv

$(VENV)/.base:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install $(TORCH_SPEC)
	touch $@

$(VENV)/.demo: $(VENV)/.base pyproject.toml
	$(BIN)/python -m pip install -e ".[dedup]"
	touch $@

$(VENV)/.test: $(VENV)/.base pyproject.toml
	$(BIN)/python -m pip install -e ".[test]"
	touch $@

demo: $(VENV)/.demo
	$(BIN)/dask-clip demo --random-weights

test: $(VENV)/.test
	$(BIN)/python -m pytest tests -q

# The full tier: the default tier first (fails fast), then the tests that need a process
# boundary (subprocesses, signals, their own clusters, the notebook, fuzz, the browser).
test-slow: $(VENV)/.test
	$(BIN)/python -m pytest tests -q --runslow -m slow

test-all: test test-slow

lint: $(VENV)/.test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean-venv:
	rm -rf $(VENV)
