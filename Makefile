# `make demo` and `make test` each set up the virtual environment in .venv first (once), with
# only what they need: the demo the package and its dedup extra, the tests the test extra.
# uv installs them (about 1 minute for the test extra and torch's CUDA build, against about 6 with
# pip: it downloads and unpacks in parallel). uv does not read pip's configuration, so a site's
# pip indexes and constraints (`pip config list`: here, local indexes and a cap of torch at
# 2.14.1) are passed on and both resolve alike. torch is named in every install, so no extra can
# move it to another build. --compile-bytecode, as pip does: without it every fresh process of
# the first test run compiled torch's modules again (the default tier took 237 s in CI, 191 s
# with the .pyc files written).

PYTHON ?= python3
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
UV_SPEC ?= uv==0.13.9
VENV := .venv
BIN := $(VENV)/bin
pip_config = $(shell $(PYTHON) -m pip config list 2>/dev/null | sed -n "s/^global\.$(1)='\(.*\)'$$/\1/p")
PIP_INDEX = $(call pip_config,index-url)
PIP_EXTRA_INDEXES = $(call pip_config,extra-index-url)
PIP_CONSTRAINT = $(call pip_config,constraint)
UV_INSTALL = $(BIN)/uv pip install --python $(BIN)/python --index-strategy unsafe-best-match --compile-bytecode \
	$(if $(PIP_INDEX),--index-url $(PIP_INDEX)) $(foreach url,$(PIP_EXTRA_INDEXES),--extra-index-url $(url)) \
	$(if $(PIP_CONSTRAINT),--constraint $(PIP_CONSTRAINT))

.PHONY: demo test test-slow test-all lint clean-venv

$(VENV)/.base:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(UV_SPEC)
	$(UV_INSTALL) $(TORCH_SPEC)
	touch $@

$(VENV)/.demo: $(VENV)/.base pyproject.toml
	$(UV_INSTALL) $(TORCH_SPEC) -e ".[dedup]"
	touch $@

# embedding-reader and autofaiss read the LAION layout back in tests/test_output_formats.py. Their
# releases pin pandas < 3 and numpy < 2, yet run on the current ones: installed without their
# pins (their other dependencies are in the test extra).
LAION_TOOLS := embedding-reader==1.8.1 autofaiss==2.18.0

$(VENV)/.test: $(VENV)/.base pyproject.toml
	$(UV_INSTALL) $(TORCH_SPEC) -e ".[test]"
	$(UV_INSTALL) --no-deps $(LAION_TOOLS)
	touch $@

demo: $(VENV)/.demo
	$(BIN)/dask-clip demo --random-weights

# Two pytest-xdist workers, each with its own session cluster, on a quiet 2-core machine: the
# default tier 218 s -> 174 s, the full tier 516 s -> 364 s (CONTRIBUTING, "Where the time goes";
# most tests wait on a cluster or a subprocess part of the time, so one pytest process keeps
# about 1.1-1.3 cores busy). `make test XDIST=` runs them in one process; plain `pytest` does.
XDIST ?= -n 2

test: $(VENV)/.test
	$(BIN)/python -m pytest tests -q $(XDIST)

# The full tier alone: the tests that need a process boundary (subprocesses, signals, their own
# clusters, the notebook, fuzz, the browser).
test-slow: $(VENV)/.test
	$(BIN)/python -m pytest tests -q $(XDIST) --runslow -m slow

# Both tiers in one session: the default tier first, then the full tier (each xdist worker skips
# its full-tier tests once one of its default-tier tests failed).
test-all: $(VENV)/.test
	$(BIN)/python -m pytest tests -q $(XDIST) --runslow

lint: $(VENV)/.test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean-venv:
	rm -rf $(VENV)
