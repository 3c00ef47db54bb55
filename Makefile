# vramguard — `make demo` shows it working, `make test` proves it.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PACKAGES := gpumem kube webhook extender ops certs
CERTS_OUT ?= certs/out
# Built and downloaded tools live outside the repository, keyed by version.
CACHE ?= $(or $(VRAMGUARD_CACHE),$(or $(XDG_CACHE_HOME),$(HOME)/.cache)/vramguard)
KUSTOMIZE_VERSION := v5.8.1
KUSTOMIZE := $(CACHE)/tools/kustomize-$(KUSTOMIZE_VERSION)/kustomize
HELM_VERSION := v3.22.0
HELM := $(CACHE)/tools/helm-$(HELM_VERSION)/helm
# The chart is also linted and rendered with Helm 4 (tests/unit/manifests/test_helm_chart.py).
HELM4_VERSION := v4.3.1
HELM4 := $(CACHE)/tools/helm-$(HELM4_VERSION)/helm
ACTIONLINT_VERSION := v1.7.12
ACTIONLINT := $(CACHE)/tools/actionlint-$(ACTIONLINT_VERSION)/actionlint
WEBHOOK_DNS ?= vramguard-webhook.vramguard.svc

.PHONY: help
help: ## list the targets
	@grep -E '^[a-z][a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

.PHONY: venv
venv: $(STAMP) ## create .venv with the project and its dev tools

.PHONY: lint
lint: $(STAMP) ## ruff, mypy and the import contracts
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

# One folder per version: a version bump installs next to the old binary instead of being
# skipped because a file of that name already exists.
$(KUSTOMIZE):
	@echo "installing kustomize $(KUSTOMIZE_VERSION) into $(@D)"
	GOBIN=$(@D) go install sigs.k8s.io/kustomize/kustomize/v5@$(KUSTOMIZE_VERSION)

$(HELM):
	@echo "installing helm $(HELM_VERSION) into $(@D)"
	GOBIN=$(@D) go install helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)

$(HELM4):
	@echo "installing helm $(HELM4_VERSION) into $(@D)"
	GOBIN=$(@D) go install helm.sh/helm/v4/cmd/helm@$(HELM4_VERSION)

$(ACTIONLINT):
	@echo "installing actionlint $(ACTIONLINT_VERSION) into $(@D)"
	GOBIN=$(@D) go install github.com/rhysd/actionlint/cmd/actionlint@$(ACTIONLINT_VERSION)

.PHONY: tools
tools: $(STAMP) $(KUSTOMIZE) $(HELM) $(HELM4) $(ACTIONLINT) ## Prometheus/promtool (apt), kustomize, helm 3 and 4, actionlint, and the Kubernetes binaries
	tests/e2e/install-deps.sh
	tests/e2e/controlplane/build.sh

.PHONY: test
test: lint tools ## lint, then every test: unit, HTTP, manifests, fuzz and end-to-end
	VRAMGUARD_REQUIRE_TOOLS=1 $(PY) -m pytest -m ''

.PHONY: test-fast
test-fast: $(STAMP) ## unit and HTTP tests only (no fuzz, no control plane)
	$(PY) -m pytest -m 'not slow and not e2e'

.PHONY: e2e
e2e: tools ## the end-to-end suite alone
	$(PY) -m pytest -m e2e

.PHONY: demo
demo: $(STAMP) ## the whole story on a local control plane: budgets, live VRAM, reasons
	$(PY) -m tests.demo.demo

.PHONY: bench
bench: tools ## the benchmark suite: a table of ratios into build/bench/latest.md (never pass/fail)
	$(PY) -m tests.bench.run --out build/bench/latest.md

.PHONY: bench-quick
bench-quick: tools ## the benchmark suite at small sizes: a smoke run of a few minutes
	$(PY) -m tests.bench.run --quick --out build/bench/quick.md

.PHONY: certs
certs: $(STAMP) ## issue a CA and the webhook's serving cert into certs/out
	$(PY) -m certs --out $(CERTS_OUT) --dns $(WEBHOOK_DNS) --dns vramguard-webhook.vramguard

.PHONY: schema
schema: $(STAMP) ## regenerate the policy JSON Schema
	$(PY) -m gpumem schema > gpumem/policy.schema.json

.PHONY: chart
chart: $(STAMP) $(HELM) ## regenerate the Helm chart's values.schema.json and files/, then lint it
	$(PY) -m tests.unit.manifests.helm_schema
	$(HELM) lint --strict manifests/helm/vramguard --namespace vramguard \
		--kube-version "$$(cat tests/e2e/controlplane/VERSION)"

.PHONY: match-conditions
match-conditions: $(STAMP) ## render the webhook's matchConditions and the ephemeral-container policy's CEL from the base policy
	$(PY) -m gpumem match-conditions --policy manifests/base/policy.yaml \
		--write manifests/base/mutatingwebhook.yaml manifests/base/ephemeral-containers-policy.yaml

.PHONY: clean
clean: ## remove the virtualenv and caches (built Kubernetes binaries live in ~/.cache/vramguard)
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis $(CERTS_OUT)

.PHONY: demo-webhook
demo-webhook: $(STAMP) ## the webhook alone: sample pods and what it does to each
	$(PY) -m tests.demo.webhook_demo

.PHONY: e2e-kind
e2e-kind: $(STAMP) ## the e2e suite against kind with vramguard deployed (needs Docker, kind, kubectl)
	tests/e2e/kind.sh
