# `make demo` and `make test` each set up their own virtual environment in .venv first.
# torch is pinned before the package install so pip does not pick another build
# (this machine's /etc/xdg/pip caps torch at 2.14.1).

PYTHON ?= python3
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.dask-clip-installed

.PHONY: demo test clean-venv

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install $(TORCH_SPEC)
	$(BIN)/python -m pip install -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/dask-clip demo --random-weights

test: $(STAMP)
	$(BIN)/python -m pytest tests -q

clean-venv:
	rm -rf $(VENV)
