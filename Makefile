# One command runner for people and CI. `make demo` and `make test` work on a fresh machine
# with Python 3.11+ and make: the first run creates .venv and installs pinned dependencies.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install browser demo test chaos bench lint typecheck format clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade "pip>=24"
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

demo: install
	$(BIN)/tokenspool demo

# Debian's Chromium for tests/test_browser.py (playwright drives it; it downloads no browser)
browser:
	@test -x /usr/bin/chromium || (apt-get update && apt-get install -y --no-install-recommends chromium)

test: install browser
	$(BIN)/pytest

chaos: install
	$(BIN)/pytest -m chaos --timeout 600 -p no:cacheprovider -o addopts=""

BENCH_STAMP := $(VENV)/.installed-bench

$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev,bench]"
	touch $(BENCH_STAMP)

# every benchmark in one run (~6 min); writes docs/benchmarks.md and docs/benchmarks.png.
# `$(BIN)/python -m bench --quick` is a ~2 min smoke check, `--only NAME` runs one group
bench: $(BENCH_STAMP)
	$(BIN)/python -m bench

lint: install
	$(BIN)/ruff check tokenspool api worker bench tests
	$(BIN)/ruff format --check tokenspool api worker bench tests

typecheck: install
	$(BIN)/mypy

format: install
	$(BIN)/ruff format tokenspool api worker bench tests
	$(BIN)/ruff check --fix tokenspool api worker bench tests

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
