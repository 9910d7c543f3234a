# The project's entry points. `make setup` installs everything a fresh machine needs into
# the work tree (.venv and tools/azurite/node_modules, both git-ignored); each step is
# skipped while its stamp in .venv is newer than its inputs, so a second run is instant.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STACK_ROOT ?= .stack

AZURITE_DIR := tools/azurite
AZURITE_BIN := $(AZURITE_DIR)/node_modules/.bin/azurite-blob
PIP_STAMP := $(VENV)/.stamp-pip
AZURITE_STAMP := $(VENV)/.stamp-azurite
PROMETHEUS_STAMP := $(VENV)/.stamp-prometheus

.PHONY: help setup test demo stack-up stack-down stack-status clean distclean FORCE

help:
	@echo "make setup       install Python deps (.venv) and Azurite (tools/azurite)"
	@echo "make test        lint, format check, type check, then all tests (starts its own servers)"
	@echo "make demo        run the demo against the local stack"
	@echo "make stack-up    start the local stack in $(STACK_ROOT)/ (Kafka 9092, S3 8333, Azure 10000)"
	@echo "make stack-down  stop it"
	@echo "make clean       stop the stack, delete $(STACK_ROOT)/ and the tool caches"
	@echo "make distclean   clean, and delete .venv and tools/azurite/node_modules"

setup: $(PIP_STAMP) $(AZURITE_STAMP) $(PROMETHEUS_STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

$(PIP_STAMP): pyproject.toml setup.py replicator/judge/_fastcheck.c | $(PY)
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@

# npm ci installs exactly the lock file; --ignore-scripts: Azurite needs no install script.
# Re-run when the lock changes or the installed binary is gone.
$(AZURITE_STAMP): $(AZURITE_DIR)/package.json $(AZURITE_DIR)/package-lock.json $(if $(wildcard $(AZURITE_BIN)),,FORCE) | $(PY)
	@command -v npm >/dev/null || { echo "make setup: npm (Node.js 20+) is needed to install Azurite" >&2; exit 1; }
	npm ci --prefix $(AZURITE_DIR) --no-audit --no-fund --ignore-scripts
	@touch $@

# prometheus and promtool (Debian's package `prometheus`) for the monitoring tests; apt-get
# runs only when one of them is missing, through sudo unless we are root.
$(PROMETHEUS_STAMP): $(if $(and $(shell command -v promtool),$(shell command -v prometheus)),,FORCE) | $(PY)
	@if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then \
		sudo=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
		$$sudo apt-get update -qq && \
		$$sudo env DEBIAN_FRONTEND=noninteractive \
			apt-get install -y --no-install-recommends prometheus; \
	fi
	@touch $@

FORCE:

# docker-compose (Debian's 1.29): the tests validate docker-compose.yml with it (no Docker
# engine needed). Installed with apt when missing (sudo only when not root).
COMPOSE_STAMP := $(VENV)/.stamp-docker-compose
setup: $(COMPOSE_STAMP)
$(COMPOSE_STAMP): $(if $(shell command -v docker-compose 2>/dev/null),,FORCE) | $(PY)
	@if ! command -v docker-compose >/dev/null 2>&1; then \
		SUDO=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose; \
	fi
	@touch $@

# rclone (Debian's package): tests/integration/ops/test_rclone.py and `replicator rclone-check`
# compare both stores with it. Installed with apt when missing (sudo only when not root).
RCLONE_STAMP := $(VENV)/.stamp-rclone
setup: $(RCLONE_STAMP)
$(RCLONE_STAMP): $(if $(shell command -v rclone 2>/dev/null),,FORCE) | $(PY)
	@if ! command -v rclone >/dev/null 2>&1; then \
		SUDO=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && \
		$$SUDO env DEBIAN_FRONTEND=noninteractive \
			apt-get install -y --no-install-recommends rclone; \
	fi
	@touch $@

# Helm reads no file outside the chart: the chart carries byte-identical copies of the
# monitoring files (tests/unit/test_chart.py fails when they differ). Refresh them with this.
.PHONY: sync-chart-files
sync-chart-files:
	cp monitoring/alerts.rules.yml monitoring/grafana-dashboard.json helm/replicator/files/

# The suite runs in TEST_WORKERS processes (pytest-xdist), each with a local stack of its own
# (tests/conftest.py): most integration tests wait on timers (group joins, flush intervals,
# faults) more than they use a core, so two processes on two cores finish sooner. `worksteal`
# hands a finished worker half of the other's remaining tests. TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2

test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/pytest -q $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist worksteal)

demo: setup
	$(PY) -m replicator demo

stack-up: setup
	$(PY) -m replicator.cli.stack up --root $(STACK_ROOT)

stack-down:
	@if [ -x $(PY) ]; then $(PY) -m replicator.cli.stack down --root $(STACK_ROOT); fi

stack-status:
	$(PY) -m replicator.cli.stack status --root $(STACK_ROOT)

clean: stack-down
	rm -rf $(STACK_ROOT) .mypy_cache .ruff_cache .pytest_cache .hypothesis build dist
	find . -path ./$(VENV) -prune -o -path ./$(AZURITE_DIR)/node_modules -prune \
		-o -type d -name __pycache__ -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) $(AZURITE_DIR)/node_modules *.egg-info
