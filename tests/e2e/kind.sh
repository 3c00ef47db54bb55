#!/usr/bin/env bash
# `make e2e-kind`: the same tests/e2e suite against a kind cluster running vramguard as
# deployed from manifests/overlays/kind (image built and loaded locally). Needs Docker, kind
# and kubectl, so it cannot run where there is no Docker engine.
#
# In that mode the suite starts nothing (VRAMGUARD_E2E_KUBECONFIG): the control-plane smoke,
# advertiser and manifest tests run against the cluster, and the scenarios that need the
# fake GPU exporter, the policy file or process control skip with a reason.
set -euo pipefail
cd "$(dirname "$0")/../.."

cluster=${KIND_CLUSTER:-vramguard-e2e}
version=$(cat tests/e2e/controlplane/VERSION)
python=${PYTHON:-.venv/bin/python}

for tool in docker kind kubectl; do
    command -v "$tool" >/dev/null || { echo "e2e-kind needs $tool on PATH" >&2; exit 1; }
done

if ! kind get clusters | grep -qx "$cluster"; then
    # The node image matches the pinned version: the manifests' kube-scheduler must not be
    # newer than the cluster's kube-apiserver.
    kind create cluster --name "$cluster" --image "kindest/node:$version" --wait 180s
fi
context="kind-$cluster"

docker build -t vramguard:dev .
kind load docker-image vramguard:dev --name "$cluster"

"$python" -m certs --out certs/out --dns vramguard-webhook.vramguard.svc \
    --dns vramguard-webhook.vramguard
kubectl kustomize --load-restrictor=LoadRestrictionsNone manifests/overlays/kind \
    | kubectl --context "$context" apply --server-side -f -
kubectl --context "$context" -n vramguard wait --for=condition=Available deployment --all \
    --timeout=5m

kubeconfig=$(mktemp)
trap 'rm -f "$kubeconfig"' EXIT
kind get kubeconfig --name "$cluster" >"$kubeconfig"
VRAMGUARD_E2E_KUBECONFIG=$kubeconfig "$python" -m pytest -m e2e tests/e2e
