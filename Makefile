# Dockyard — run `make help` for the targets.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
IMAGE ?= dockyard:dev
KIND_CLUSTER ?= dockyard

.DEFAULT_GOAL := help

help: ## Show this help
	@grep -E '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[test,lint]'
	touch $(STAMP)

venv: $(STAMP) ## Create the virtualenv and install Dockyard with test and lint tools

test: $(STAMP) ## Run every test tier (integration and e2e on a local one-node cluster: needs Go and root)
	@if command -v go >/dev/null || [ "$$CI" = true ]; then hack/cluster.sh build && hack/s3.sh build; \
	  else echo "no Go here: the integration, e2e and S3 tiers will skip (hack/cluster.sh build and hack/s3.sh build need it)"; fi
	$(PY) -m pytest -q -rs tests

lint: $(STAMP) ## ruff, mypy (strict; the package, tests and bench) and the layer contracts (lint-imports)
	$(VENV)/bin/ruff check operator tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy tests bench
	$(VENV)/bin/lint-imports --no-cache

crds: $(STAMP) ## Regenerate crds/ from the API models
	$(VENV)/bin/dockyard crds --out crds
	cp crds/*.yaml manifests/crds/

verify-crds: $(STAMP) ## Fail when the committed CRDs are stale
	@tmp=$$(mktemp -d) && $(VENV)/bin/dockyard crds --out $$tmp && \
	  diff -ru crds $$tmp && echo "crds/ is up to date" || \
	  { echo "crds/ is stale: run 'make crds' and commit the result"; exit 1; }

DOCKYARD_ADDR ?= 127.0.0.1:5000

run: $(STAMP) ## Run the operator against your kubeconfig's cluster, or the registry locally (DOCKYARD_ADDR=HOST:PORT)
	@if kubectl version --request-timeout=5s >/dev/null 2>&1; then \
	  kubectl apply -f crds/ && DOCKYARD_IMAGE=$${DOCKYARD_IMAGE:-$(IMAGE)} $(VENV)/bin/dockyard operator run -A \
	    --liveness http://127.0.0.1:8080/healthz; \
	else \
	  echo "no Kubernetes cluster reachable: serving the embedded registry on http://$(DOCKYARD_ADDR) (storage in ./.dockyard/)"; \
	  $(VENV)/bin/dockyard registry serve --root .dockyard/registry --addr $(DOCKYARD_ADDR); \
	fi

image: ## Build the container image (docker build; with no Docker engine, hack/image.sh builds an OCI archive)
	@if docker info >/dev/null 2>&1; then docker build -t $(IMAGE) .; else hack/image.sh build --tag $(IMAGE); fi

cluster-up: ## Start the local one-node cluster (hack/cluster.sh; root); then: eval "$(hack/cluster.sh env)"
	hack/cluster.sh up

cluster-down: ## Stop the local one-node cluster and remove its state
	hack/cluster.sh down

E2E_TESTS ?= tests/e2e
# Fails when pytest passed only because every test skipped (no cluster, no root): nothing was tested.
E2E_RAN := import sys, xml.etree.ElementTree as ET; \
  root = ET.parse(sys.argv[1]).getroot(); suite = root if root.tag == "testsuite" else root.find("testsuite"); \
  ran = int(suite.get("tests", 0)) - int(suite.get("skipped", 0)); \
  sys.exit(0 if ran else "make e2e: every end-to-end test was skipped (reasons above), so nothing was tested")

e2e: $(STAMP) ## End-to-end tests on the cluster in KUBECONFIG, else kind, else the local cluster; fails if all skip
	@report=$$(mktemp) && trap 'rm -f "$$report"' EXIT && \
	  DOCKYARD_E2E=1 DOCKYARD_IMAGE=$(IMAGE) KIND_CLUSTER=$(KIND_CLUSTER) \
	    $(PY) -m pytest -q -rs --junitxml="$$report" $(E2E_TESTS) && \
	  $(PY) -c '$(E2E_RAN)' "$$report"

bench: $(STAMP) ## Benchmarks against the peer registry, printed as a table
	$(PY) bench/run.py

.PHONY: help venv test lint crds verify-crds run image cluster-up cluster-down e2e bench
