# snowtrap: the two commands that matter are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# pip's machine config may add a local CPU-only torch wheel through find-links; torchvision's
# compiled ops need the PyPI build of torch, so installs ignore that config.
PIP := env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null $(BIN)/pip
# The development and CI environment holds every extra: train (torch...), serve (Kafka,
# Faust), test, bench. A deployed worker installs `.[serve]` only (see the Dockerfile).
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-16)

.PHONY: install test test-fast lint format demo bench bench-tools clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -e ".[train,serve,test,bench]"
	bash tools/install_system_tools.sh
	rm -f $(VENV)/.installed-*
	touch $@

# The CI entry point: installs everything, then runs lint and the whole test suite against a
# real Kafka broker (started by the tests themselves unless KAFKA_BOOTSTRAP_SERVERS is set).
test: install
	bash tools/install_system_tools.sh  # idempotent; brings back helm after `make clean`
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -p no:cacheprovider

test-fast: install
	$(BIN)/python -m pytest -m "not slow and not kafka"

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix . && $(BIN)/ruff format .

demo: install
	$(BIN)/snowtrap demo

bench: install
	$(BIN)/python bench/stream_throughput.py

# Load generators the benches use where found (never the tests): vegeta, open loop, from the
# Go module proxy into build/bin.
VEGETA := github.com/tsenart/vegeta/v12@v12.13.0
bench-tools:
	GOBIN=$(CURDIR)/build/bin go install $(VEGETA)

clean:
	rm -rf .cache runs out
