# Two commands do everything on a fresh machine:
#   make run    create .venv if needed, install the project, run `kedro run`
#   make test   same install, then the whole test suite
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c

PYTHON ?= python3
VENV := .venv
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.install-stamp
# `mlflow models serve --env-manager local` starts uvicorn from the venv.
export PATH := $(BIN):$(PATH)
export KEDRO_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1

.PHONY: install run test lint bench screenshots clean

install: $(STAMP)

# Redone only when pyproject.toml changes. pip takes torch from this machine's disk
# when the range allows it (see README).
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing oct-vae and its dependencies into $(VENV) ..."
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[test]" 2>&1 \
		| { grep -v "is ignored: it is neither a file nor a directory" || true; }
	@touch $(STAMP)

run: install
	$(BIN)/kedro run

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .

bench: install
	$(BIN)/python -m oct_vae.bench --quick

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
