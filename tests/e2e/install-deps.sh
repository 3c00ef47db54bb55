#!/usr/bin/env bash
# Install what the end-to-end suite and `make demo` need besides the Kubernetes binaries
# (those come from controlplane/build.sh): Prometheus, from the distribution's packages.
#
# Idempotent: does nothing when prometheus and promtool are already on PATH. Installing
# needs root and apt (Debian, Ubuntu); anywhere else it says what to install and fails.
set -euo pipefail

log() { echo "[e2e/install-deps.sh] $*" >&2; }

if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
    log "prometheus already installed: $(prometheus --version 2>&1 | head -n1)"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    log "prometheus (with promtool) is missing and there is no apt-get to install it:"
    log "install Prometheus 2.x from your distribution or https://prometheus.io/download/"
    log "and put the prometheus and promtool binaries on PATH"
    exit 1
fi

if [[ "$(id -u)" -ne 0 ]]; then
    log "prometheus (with promtool) is missing; installing it needs root:"
    log "  sudo apt-get update && sudo apt-get install -y --no-install-recommends prometheus"
    log "(or run this script as root)"
    exit 1
fi

log "installing prometheus with apt-get"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends prometheus

# The package starts a system-wide Prometheus on :9090 where there is an init system; the
# suite runs its own on a free port and needs nothing from that one.
if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
    log "apt-get installed prometheus but prometheus/promtool are not on PATH"
    exit 1
fi
log "installed: $(prometheus --version 2>&1 | head -n1)"
