# Two commands do everything on a fresh machine: `make repro` and `make test`.
# Both create .venv when it is missing, or reinstall when pyproject.toml is newer than the last install.

VENV := .venv
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.installed-stamp
PYTHON ?= python3

# Stage commands in dvc.yaml call `python`: make sure it is the venv's.
export PATH := $(BIN):$(PATH)

.PHONY: venv repro test bench clean-venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

repro: $(STAMP)
	dvc repro

test: $(STAMP)
	pytest

# Head-training times on synthetic cached features (10k x 512, 30 epochs, CPU) against DESIGN §9's budgets.
bench: $(STAMP)
	python benchmarks/bench_heads.py

clean-venv:
	rm -rf $(VENV)
