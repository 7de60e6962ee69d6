# One-step install into .venv. torch is pinned first: a CPU wheel of exactly this version is what
# the project is tested with (an unpinned torch pulls GBs of CUDA wheels).
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
TORCH  ?= torch==2.13.0
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export DO_NOT_TRACK ?= 1
# Prefect's temporary server gets 20 s to start by default; a fresh database on a busy 2-core
# machine has been seen to need more (CI failure: "Timed out while attempting to connect").
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 120

.PHONY: install services demo test test-fast lint clean

$(BIN)/loopml: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[loop,mlflow,wandb,s3,feast,torchserve,prometheus,grafana,postgres,dask,dev]"
	touch $(BIN)/loopml

install: $(BIN)/loopml

## The whole loop on embedded defaults: train, serve, drift, retrain, promote.
demo: install
	$(BIN)/loopml demo

## Servers the integration tests start themselves (Debian packages; Java comes with the machine).
## Installing Debian's prometheus package may start a system service; the tests run their own.
services:
	@{ command -v redis-server >/dev/null && command -v prometheus >/dev/null && \
	    command -v prometheus-alertmanager >/dev/null && command -v prometheus-pushgateway >/dev/null; } || \
	  { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server prometheus prometheus-alertmanager prometheus-pushgateway >/dev/null; } || \
	  echo "redis-server or prometheus is missing and could not be installed: run 'apt-get install redis-server prometheus prometheus-alertmanager prometheus-pushgateway'"

## Every test, slow integration tests included (what CI runs).
test: install services
	$(BIN)/python -m pytest

## Unit tests only.
test-fast: install
	$(BIN)/python -m pytest -m "not slow"

lint: install
	$(BIN)/ruff check src plugins flows tests examples benchmarks

clean:
	rm -rf $(VENV) loopml-demo .pytest_cache
