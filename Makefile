# llmrelease: every target here is what the README and CI call.  `make help` lists them.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

# constraints.txt pins every transitive version the suite was last green with (regenerate: pip freeze).
$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt "torch==2.13.0+cpu"
	$(BIN)/pip install -q -c constraints.txt -e ".[steps,ml,dev]"
	touch $(STAMP)

setup: $(STAMP) ## create .venv and install the project with every extra

render: setup ## render every pipeline module in workflows/ into argo/
	$(BIN)/llmrelease render

check-render: setup ## fail if argo/ differs from a fresh render
	$(BIN)/llmrelease render --check

LINTED := workflows steps registry tests benchmarks examples

lint: setup ## ruff check + ruff format --check + mypy (incl. tests/) + the layer contract + every rendered manifest
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache
	$(BIN)/llmrelease lint argo/*.yaml

format: setup ## rewrite the code in ruff's format and fix what ruff can fix
	$(BIN)/ruff format $(LINTED)
	$(BIN)/ruff check --fix $(LINTED)

demo-models: setup ## build the small demo models once (examples/models/)
	$(BIN)/python examples/build_demo_models.py --out examples/models

demo: demo-models ## the golden delivery on the local profile, every step an isolated pod (bubblewrap)
	bash .ci/install-system-packages.sh haproxy bubblewrap prometheus prometheus-pushgateway
	$(BIN)/python examples/demo.py

system-packages: ## install the Debian packages the tests use (haproxy, chromium, pushgateway), only where missing
	bash .ci/install-system-packages.sh

test: setup system-packages ## set up and run the test suite (GPU tests skip without a GPU)
	$(BIN)/llmrelease render --check
	$(BIN)/pytest

chaos: setup system-packages ## kill -9 parts of a release mid-canary, assert the end state (tests/chaos, ~8 min on 2 cores)
	$(BIN)/pytest -m chaos tests/chaos -s

bench: setup ## run the benchmarks under benchmarks/
	$(BIN)/python benchmarks/runner_overhead.py

.PHONY: help setup system-packages render check-render lint format demo-models demo test chaos bench
