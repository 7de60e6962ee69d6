# One-step install into .venv. torch is pinned first: a CPU wheel of exactly this version is what
# the project is tested with (an unpinned torch pulls GBs of CUDA wheels).
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
TORCH  ?= torch==2.13.0
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export DO_NOT_TRACK ?= 1

.PHONY: install demo test test-fast lint clean

$(BIN)/loopml: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[loop,mlflow,wandb,s3,feast,torchserve,dev]"
	touch $(BIN)/loopml

install: $(BIN)/loopml

## The whole loop on embedded defaults: train, serve, drift, retrain, promote.
demo: install
	$(BIN)/loopml demo

## Every test, slow integration tests included (what CI runs).
test: install
	$(BIN)/python -m pytest

## Unit tests only.
test-fast: install
	$(BIN)/python -m pytest -m "not slow"

lint: install
	$(BIN)/ruff check src plugins flows tests examples benchmarks

clean:
	rm -rf $(VENV) loopml-demo .pytest_cache
