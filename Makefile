# Two commands do everything on a fresh machine: `make repro` and `make test`.
# Both create .venv when it is missing, or reinstall when pyproject.toml is newer than the last install.

VENV := .venv
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.installed-stamp
PYTHON ?= python3

# `dvc plots show/diff` page with vega/vega-lite/vega-embed inlined, so it renders offline (.dvc/config
# plots.html_template points here, relative to .dvc/). Generated, not committed: it is ~0.9 MB of minified JS
# derived from the installed vl-convert-python, so it is rebuilt with every install and leaves with the venv.
PLOTS_TEMPLATE := $(VENV)/share/medvlm/offline-plots.html

# Stage commands in dvc.yaml call `python`: make sure it is the venv's.
export PATH := $(BIN):$(PATH)

.PHONY: venv repro test test-fast bench clean-venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	$(BIN)/python -m medvlm.offline_plots --out $(PLOTS_TEMPLATE) >/dev/null
	touch $(STAMP)

repro: $(STAMP)
	dvc repro

test: $(STAMP)
	pytest

# The unit tests only (no end-to-end `dvc repro` / `dvc exp run`): under 2 minutes on 2 cores.
test-fast: $(STAMP)
	pytest -m "not e2e"

# Benchmarks against the references and budgets in docs/benchmarks.md, one table at the end (benchmarks/summary.py):
# pre-training vs open_clip's own trainer (open_clip_train), image PGD vs torchattacks, head training times,
# the real-data decode+resize throughput (printed only, no reference),
# end-to-end `dvc repro` (wall time, peak memory, one exp run, a queued sweep with -j 1 and -j 2; in a
# temporary copy with a fresh cache) and, on a GPU,
# the MFU of a ViT-B/16 step. torchattacks and what open_clip_train imports (braceexpand, webdataset) are
# not project dependencies: they are installed with --no-deps into $(BENCH_SITE) (never into the venv) and
# put on PYTHONPATH for the benchmarks only. Timings are only meaningful on an otherwise idle machine.
BENCH_SITE := .bench-site
BENCH_STAMP := $(BENCH_SITE)/.installed-stamp
# make bench BENCH_BEFORE=<git rev>: bench_repro also measures that revision, for a before/after table
BENCH_BEFORE ?=
BENCH_OUT := .bench-results
BENCH_ENV := PYTHONPATH=$(abspath $(BENCH_SITE))

$(BENCH_STAMP):
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --target $(BENCH_SITE) \
		torchattacks==3.5.1 braceexpand==0.1.7 webdataset==1.0.2
	touch $(BENCH_STAMP)

bench: $(STAMP) $(BENCH_STAMP)
	rm -rf $(BENCH_OUT)
	$(BENCH_ENV) python benchmarks/bench_pretrain.py --json $(BENCH_OUT)/pretrain.json
	$(BENCH_ENV) python benchmarks/bench_attack.py --json $(BENCH_OUT)/attack.json
	python benchmarks/bench_heads.py --json $(BENCH_OUT)/heads.json
	python benchmarks/bench_preprocess.py
	python benchmarks/bench_repro.py --json $(BENCH_OUT)/repro.json $(if $(BENCH_BEFORE),--before $(BENCH_BEFORE))
	python benchmarks/bench_mfu.py --json $(BENCH_OUT)/mfu.json
	python benchmarks/summary.py $(BENCH_OUT)

clean-venv:
	rm -rf $(VENV)
