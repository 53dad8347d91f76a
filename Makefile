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

.PHONY: install run test test-fast lint bench rehearse screenshots clean tracking-server \
	mlflow-ui

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

# The suite runs in two worker processes, a test file each at a time (module fixtures such
# as the team server start once): about 70 % of the time of one process on 2 cores.
# TEST_WORKERS=0 runs it in this process (easier to debug).
TEST_WORKERS ?= 2
test: install
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

# The unit tests only: no Kedro session, server, notebook or subprocess run (tests marked
# slow and tests/e2e/ are left out); about a minute on 2 cores.
test-fast: install
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile -m "not slow" --ignore=tests/e2e

lint: install
	$(BIN)/ruff check .

bench: install
	$(BIN)/python benchmarks/bench_train.py --quick

# Full-scale rehearsal of the real dataset (benchmarks/rehearse.py): an OCT2017-shaped tree
# of 84,484 phantom JPEGs (~4.7 GB, built once in ~/oct2017-rehearsal and reused), then
# `kedro run --env kermany` end to end for both protocols in a scratch copy of the project
# (~/oct2017-rehearsal-project), with 1 epoch at width 8. About an hour on 2 cores.
# REHEARSE_ARGS="--epochs 2 --protocols paper" changes the budget.
REHEARSE_ARGS ?=
rehearse: install
	$(BIN)/python benchmarks/rehearse.py $(REHEARSE_ARGS)

# The MLflow UI over an environment's tracking store (its conf/<env>/mlflow.yml), at
# http://127.0.0.1:$(UI_PORT). kedro-mlflow starts `mlflow` from the PATH, which holds the
# venv's bin here, so this works without activating the venv.
KEDRO_ENV ?= base
UI_PORT ?= 5000
UI_HOST ?= 127.0.0.1
mlflow-ui: install
	$(BIN)/kedro mlflow ui --env "$(KEDRO_ENV)" --port "$(UI_PORT)" --host "$(UI_HOST)"

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

# Pictures of kedro-viz and the MLflow UI (docs/images/, see docs/ui.md) from a fresh tiny
# run, checked in headless Chromium. Not part of `make test`: it needs Debian's chromium
# (installed here when missing and run as root; ~480 MB) and playwright (~165 MB in the venv;
# it drives that Chromium, no browser download). After a real `kedro run`, take the pictures
# of that run instead with `$(BIN)/python scripts/screenshots.py`.
screenshots: install
	@command -v chromium >/dev/null || { test "$$(id -u)" = 0 \
		&& apt-get update -q && apt-get install -y -q chromium; } \
		|| { echo "Chromium is missing: apt-get install -y chromium"; exit 1; }
	@$(BIN)/python -c "import playwright" 2>/dev/null \
		|| $(BIN)/python -m pip install --quiet --disable-pip-version-check playwright
	$(BIN)/python scripts/screenshots.py --tiny

# A team's MLflow tracking server (docs/scale.md): runs and the Model Registry in PostgreSQL,
# artifacts proxied by the server (clients need no storage credentials), stored in
# MLFLOW_ARTIFACTS_DESTINATION (a folder, or s3://... with the server's credentials). Clients:
# `MLFLOW_TRACKING_URI=http://<this machine>:$(MLFLOW_PORT) kedro run --env team`.
# Set MLFLOW_HOST=0.0.0.0 to serve the network, and MLFLOW_ALLOWED_HOSTS to the names clients
# use when it is not an IP or localhost (MLflow refuses other Host headers).
MLFLOW_BACKEND_STORE_URI ?= postgresql+psycopg2://mlflow@localhost:5432/mlflow
MLFLOW_ARTIFACTS_DESTINATION ?= $(HOME)/oct-vae-mlflow-artifacts
MLFLOW_HOST ?= 127.0.0.1
MLFLOW_PORT ?= 5000
MLFLOW_WORKERS ?= 4
MLFLOW_ALLOWED_HOSTS ?=

tracking-server: install
	@test -n "$(MLFLOW_BACKEND_STORE_URI)" -a -n "$(MLFLOW_ARTIFACTS_DESTINATION)" || { echo \
		"MLFLOW_BACKEND_STORE_URI and MLFLOW_ARTIFACTS_DESTINATION must not be empty"; exit 2; }
	$(BIN)/mlflow server --backend-store-uri "$(MLFLOW_BACKEND_STORE_URI)" \
		--artifacts-destination "$(MLFLOW_ARTIFACTS_DESTINATION)" --serve-artifacts \
		--host "$(MLFLOW_HOST)" --port "$(MLFLOW_PORT)" --workers "$(MLFLOW_WORKERS)" \
		$(if $(MLFLOW_ALLOWED_HOSTS),--allowed-hosts "$(MLFLOW_ALLOWED_HOSTS)")
