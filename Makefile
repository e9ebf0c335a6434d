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

# Benchmarks against DESIGN §9's budgets, and the real-data decode+resize throughput. Head training: synthetic cached features (10k x 512, 30 epochs,
# CPU). Image PGD against torchattacks' PGD: torchattacks is not a project dependency, so it is installed
# with --no-deps into $(BENCH_SITE) (never into the venv) and put on PYTHONPATH for that benchmark only.
BENCH_SITE := .bench-site

bench: $(STAMP)
	python benchmarks/bench_heads.py
	python benchmarks/bench_preprocess.py
	test -d $(BENCH_SITE)/torchattacks || $(BIN)/python -m pip install --quiet --disable-pip-version-check \
		--no-deps --target $(BENCH_SITE) torchattacks==3.5.1
	PYTHONPATH=$(abspath $(BENCH_SITE)) python benchmarks/bench_attack.py

clean-venv:
	rm -rf $(VENV)
