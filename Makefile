# medsilo: `make run` sets everything up and runs the default federation; `make test` runs the tests.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
HOSPITALS ?= 4
RUN_CONFIG ?=

# Flower phones home and, without the last flag, reinstalls the app's dependencies
# (torch included) with `uv sync` on every run. Nothing may be fetched at run time.
export FLWR_TELEMETRY_ENABLED := 0
export FLWR_DISABLE_UPDATE_CHECK := 1
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION := 1
# `flwr run` starts `flower-superlink`, which must be on PATH.
export PATH := $(BIN):$(PATH)

.PHONY: install run test lint stop clean

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -e ".[dev]"
	touch $@

install: $(VENV)/.installed

run: install
	flwr run . --federation-config "num-supernodes=$(HOSPITALS)" --stream \
		--run-config "data-root='$(CURDIR)/data/samples/brain-mri' output-dir='$(CURDIR)/runs' $(RUN_CONFIG)"
	@echo "The local SuperLink keeps running for 'flwr ls' and 'flwr log'; 'make stop' ends it."

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .

stop:
	-pkill -f "flower-superlin[k] .*--port 39091" && echo "local SuperLink stopped"

clean:
	rm -rf runs .pytest_cache .ruff_cache
