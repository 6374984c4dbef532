# The two commands of the README's quick start are `make provision` and `make test`; each installs
# what it needs (the virtualenv, and on Debian as root the packages and a running Docker engine).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CIDEMO := $(BIN)/cidemo
SITE ?= infra/sites/local.yaml
PYTEST_ARGS ?=

.PHONY: help venv host terraform-tools cloud-lab cloud-lab-down provision demo destroy smoke render plan status recover images base-image \
        test test-full test-unit test-integration test-ghost test-builds test-lab chaos lint wheel-check bench clean browser \
        env-up env-down env-list env-promote env-gc env-refresh-staging env-backups env-snapshot

help:
	@echo "make provision | demo | destroy | smoke | render | plan | status | recover | images | base-image"
	@echo "make test | test-ghost | test-builds | test-lab | chaos | lint | wheel-check | bench | terraform-tools | browser (SITE=$(SITE))"
	@echo "make cloud-lab | cloud-lab-down    (the test OpenStack whose servers boot as lab nodes)"
	@echo "make env-up PR=<n>|ENV=staging|ENV=production REF=<sha> [IMAGE=<image>] [FORK=1]"
	@echo "make env-down PR=<n> | env-list | env-promote | env-gc | env-refresh-staging [FROM=<backup>] | env-backups | env-snapshot"

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

venv: $(BIN)/.installed

host:
	@bash scripts/ensure-host.sh

# The OpenStack provider from its Go module in a filesystem mirror, terraform/tofu where missing, and
# the CLI configuration for them; stdout is only `TF_BINARY=...` and `TF_CLI_CONFIG_FILE=...`.
terraform-tools:
	@bash scripts/terraform-tools.sh

# Debian's chromium for the browser test of examples/ghost (the test runs this itself when needed).
browser:
	@bash scripts/ensure-chromium.sh

# The OpenStack path on this machine: the test OpenStack, and lab nodes that boot its servers'
# user-data; then `make provision SITE=$(LAB_SITE)`. cloud-lab-down removes it all.
LAB_SITE := infra/sites/cloud-lab.yaml
LAB_OPENSTACK ?= /tmp/cidemo-openstack
ifeq ($(SITE),$(LAB_SITE))
export OS_CLIENT_CONFIG_FILE ?= $(LAB_OPENSTACK)/clouds.yaml
endif

cloud-lab: venv host
	CIDEMO_LAB_OPENSTACK=$(LAB_OPENSTACK) bash tests/cloud/lab/lab-up $(LAB_SITE)

cloud-lab-down: venv
	CIDEMO_LAB_OPENSTACK=$(LAB_OPENSTACK) bash tests/cloud/lab/lab-down

# For an openstack SITE: a terraform binary (built if missing) and the mirror where it is built
# (TF_MIRROR=1 builds it); nothing for a local site. Operators who reach the registry use it as before.
site_tf = tf_env=$$(bash scripts/terraform-tools.sh --site $(SITE)) && env $$tf_env

provision: venv host
	$(site_tf) $(CIDEMO) provision --site $(SITE)

destroy: venv host
	$(site_tf) $(CIDEMO) destroy --site $(SITE)

# After `make provision`: staging and the preview of PR 1 of the site's app, their URLs and a curl
# showing each on its own database (the site needs environments.build, as local.yaml has).
demo: venv host
	bash scripts/demo.sh $(CIDEMO) $(SITE)

smoke: venv host
	$(CIDEMO) smoke --site $(SITE)

render: venv
	$(CIDEMO) render --site $(SITE)

plan: venv host
	$(site_tf) $(CIDEMO) plan --site $(SITE)

status: venv host
	$(CIDEMO) status --site $(SITE)

recover: venv host
	$(CIDEMO) recover --site $(SITE)

base-image: venv host
	$(CIDEMO) images --base-only --site $(SITE)

images: venv host
	$(CIDEMO) images --site $(SITE)

# `cidemo env` wrappers. Which environment: PR=<n> (a preview), or ENV=staging / ENV=production.
# CIDEMO_YES=1 answers the questions of down, gc and refresh-staging.
env_which = $(strip $(if $(PR),--pr $(PR),$(if $(filter staging,$(ENV)),--staging,\
  $(if $(filter production,$(ENV)),--production,\
  $(error name the environment: PR=<n>, ENV=staging or ENV=production)))))
need = $(if $($(1)),$($(1)),$(error $(1) is required: $(2)))

env-up: venv host
	$(CIDEMO) env up --site $(SITE) $(env_which) --ref $(call need,REF,make env-up PR=<n> REF=<sha>) \
	  $(if $(IMAGE),--image $(IMAGE)) $(if $(FORK),--fork)

env-down: venv host
	$(CIDEMO) env down --site $(SITE) $(env_which)

env-list: venv host
	$(CIDEMO) env list --site $(SITE)

env-promote: venv host
	$(CIDEMO) env promote --site $(SITE)

env-gc: venv host
	$(CIDEMO) env gc --site $(SITE)

env-refresh-staging: venv host
	$(CIDEMO) env refresh-staging --site $(SITE) $(if $(FROM),--from $(FROM))

env-backups: venv host
	$(CIDEMO) env backups --site $(SITE)

env-snapshot: venv host
	$(CIDEMO) env snapshot --site $(SITE)

with_tf = tf_env=$$(bash scripts/terraform-tools.sh) && env $$tf_env

test: venv host terraform-tools
	$(with_tf) $(BIN)/python -m pytest $(PYTEST_ARGS)

# Everything make test runs, and the tests marked full_only (minutes each, their path covered by
# another test of make test): about 6 minutes more; CI runs make test.
test-full: venv host terraform-tools
	$(with_tf) CIDEMO_TEST_FULL=1 $(BIN)/python -m pytest $(PYTEST_ARGS)

test-unit: venv terraform-tools
	$(with_tf) $(BIN)/python -m pytest -m unit $(PYTEST_ARGS)

# Ghost built from npm, deployed as staging and a preview, the preview in headless Chromium: about
# 8 minutes on a cold machine, so `make test` (and CI) leave it out.
test-ghost: venv host
	CIDEMO_GHOST=1 $(BIN)/python -m pytest -p no:cacheprovider tests/integration/test_ghost.py $(PYTEST_ARGS)

# The lab's full set (previews on the nodes' Swarm, a lost Deis node) on the test OpenStack named
# by OS_CLOUD/OS_CLIENT_CONFIG_FILE (tests/cloud/openstack/openstack-up); make test runs a part.
test-lab: venv host terraform-tools
	$(with_tf) CIDEMO_LAB_FULL=1 $(BIN)/python -m pytest -p no:cacheprovider tests/cloud/test_lab.py $(PYTEST_ARGS)

# Builds from source, every case (make test runs all but the layer-cache and newest-wins ones).
test-builds: venv host
	CIDEMO_BUILDS_FULL=1 $(BIN)/python -m pytest -p no:cacheprovider tests/integration/test_builds.py $(PYTEST_ARGS)

test-integration: venv host terraform-tools
	$(with_tf) $(BIN)/python -m pytest -m integration $(PYTEST_ARGS)

# Every chaos scenario on a throwaway local site (make test runs a representative subset); the
# last lines are the table, one row per scenario, columns separated by `|`.
CHAOS_TABLE ?= .cidemo/chaos-table.txt
chaos: venv host
	@mkdir -p $(dir $(CHAOS_TABLE)); rm -f $(CHAOS_TABLE)
	CIDEMO_CHAOS_FULL=1 CIDEMO_CHAOS_TABLE=$(CHAOS_TABLE) $(BIN)/python -m pytest -p no:cacheprovider \
	  tests/integration/chaos $(PYTEST_ARGS); rc=$$?; echo; cat $(CHAOS_TABLE) 2>/dev/null; exit $$rc

lint: venv
	$(BIN)/ruff check cidemo_infra tests
	$(BIN)/ruff format --check cidemo_infra tests
	$(BIN)/mypy
	tf_env=$$(bash scripts/terraform-tools.sh --binary) && env $$tf_env \
	  sh -c '"$${TF_BINARY:-terraform}" fmt -check -recursive cidemo_infra/data/terraform/'

# The wheel installed in a fresh virtualenv outside the checkout: schema, render and plan of the
# example sites from an empty directory, compared with the checkout's (about a minute).
wheel-check: venv host
	bash scripts/wheel-check.sh

bench: venv host
	$(BIN)/python -m cidemo_infra.bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
