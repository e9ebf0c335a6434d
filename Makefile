# Two commands do everything on a fresh machine: `make repro` and `make test`.
# Both create .venv when it is missing, or reinstall when pyproject.toml is newer than the last install.

VENV := .venv
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.installed-stamp
PYTHON ?= python3

# Stage commands in dvc.yaml call `python`: make sure it is the venv's.
export PATH := $(BIN):$(PATH)

.PHONY: venv repro test clean-venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

repro: $(STAMP)
	dvc repro

test: $(STAMP)
	pytest

clean-venv:
	rm -rf $(VENV)
