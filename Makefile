# The two commands of the README's quick start are `make provision` and `make test`; each installs
# what it needs (the virtualenv, and on Debian as root the packages and a running Docker engine).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CIDEMO := $(BIN)/cidemo
SITE ?= infra/sites/local.yaml
PYTEST_ARGS ?=

.PHONY: help venv host provision destroy smoke render plan status recover images base-image \
        test test-unit test-integration lint bench clean

help:
	@echo "make provision | destroy | smoke | render | plan | status | recover | images | base-image"
	@echo "make test | lint | bench          (SITE=$(SITE))"

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

venv: $(BIN)/.installed

host:
	@bash scripts/ensure-host.sh

provision: venv host
	$(CIDEMO) provision --site $(SITE)

destroy: venv host
	$(CIDEMO) destroy --site $(SITE)

smoke: venv host
	$(CIDEMO) smoke --site $(SITE)

render: venv
	$(CIDEMO) render --site $(SITE)

plan: venv host
	$(CIDEMO) plan --site $(SITE)

status: venv host
	$(CIDEMO) status --site $(SITE)

recover: venv host
	$(CIDEMO) recover --site $(SITE)

base-image: venv host
	$(CIDEMO) images --base-only --site $(SITE)

images: venv host
	$(CIDEMO) images --site $(SITE)

test: venv host
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-unit: venv
	$(BIN)/python -m pytest -m unit $(PYTEST_ARGS)

test-integration: venv host
	$(BIN)/python -m pytest -m integration $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check cidemo_infra tests
	$(BIN)/ruff format --check cidemo_infra tests
	$(BIN)/mypy
	terraform fmt -check -recursive terraform/

bench: venv host
	$(BIN)/python -m cidemo_infra.bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
