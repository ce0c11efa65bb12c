# Two commands set everything up: `make run` starts the suite, `make test` runs the tests.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install run test lint bench protos lint-protos clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/tailor up

# Browser tests (tests/e2e/test_web_*.py) drive Debian's chromium through its chromium-driver, installed with apt
# when missing (as root, else with sudo).
CHROMEDRIVER := /usr/bin/chromedriver
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

$(CHROMEDRIVER):
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium chromium-driver

# ruff (lint) and mypy (types) first: either finding anything fails `make test`, and so CI.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

test: lint $(CHROMEDRIVER)
	$(BIN)/python -m pytest

BENCH_STAMP := $(VENV)/.bench-stamp

$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $(BENCH_STAMP)

# Every script under tests/bench/ prints a table and ends with one summary line of key=value figures.
bench: $(BENCH_STAMP)
	@set -e; for script in tests/bench/[a-z]*.py; do echo "== $$script"; $(BIN)/python $$script; done

protos: $(STAMP)
	$(BIN)/python -m shared.protogen protos

lint-protos: $(STAMP)
	$(BIN)/buf lint

clean:
	rm -rf $(VENV) .tailor
