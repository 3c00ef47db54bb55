#!/usr/bin/env bash
# Install what the end-to-end suite and `make demo` need besides the Kubernetes binaries
# (those, the kubelet and the sandbox's pause binary come from controlplane/build.sh), from
# the distribution's packages:
#
#   prometheus (with promtool)     Prometheus, and the alert rules' unit tests
#   containerd, runc               the real node's container runtime
#   containernetworking-plugins    its pods' network (bridge, host-local, loopback)
#   busybox-static                 the one binary of its locally built workload image
#   iproute2                       the bridge the node's address lives on
#
# Idempotent: installs only what is missing. Installing needs root and apt (Debian,
# Ubuntu); anywhere else it says what to install and fails.
set -euo pipefail

log() { echo "[e2e/install-deps.sh] $*" >&2; }

# package -> a file it installs that the suite uses
declare -A wants=(
    [prometheus]=/usr/bin/prometheus
    [containerd]=/usr/bin/containerd
    [runc]=/usr/sbin/runc
    [containernetworking-plugins]=/usr/lib/cni/bridge
    [busybox-static]=/bin/busybox
    [iproute2]=/usr/sbin/ip
)
have() {
    case "$1" in
        prometheus) command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 ;;
        containerd) command -v containerd >/dev/null 2>&1 && command -v ctr >/dev/null 2>&1 ;;
        runc) command -v runc >/dev/null 2>&1 ;;
        iproute2) command -v ip >/dev/null 2>&1 ;;
        *) [[ -x "${wants[$1]}" ]] ;;
    esac
}

missing=()
for package in prometheus containerd runc containernetworking-plugins busybox-static iproute2; do
    have "$package" || missing+=("$package")
done
if [[ ${#missing[@]} -eq 0 ]]; then
    log "already installed: $(prometheus --version 2>&1 | head -n1); $(containerd --version)"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    log "missing: ${missing[*]}, and there is no apt-get to install them:"
    log "install Prometheus 2.x, containerd 1.6+, runc, the CNI plugins and a static busybox"
    log "from your distribution, with prometheus, promtool, containerd, ctr and runc on PATH"
    exit 1
fi

if [[ "$(id -u)" -ne 0 ]]; then
    log "missing: ${missing[*]}; installing needs root:"
    log "  sudo apt-get update && sudo apt-get install -y --no-install-recommends ${missing[*]}"
    log "(or run this script as root)"
    exit 1
fi

log "installing with apt-get: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
# The packages start system-wide services (Prometheus on :9090, containerd on its default
# socket) where there is an init system; the suite runs its own, on ports and sockets of its
# own, and needs nothing from those.
apt-get install -y -q --no-install-recommends "${missing[@]}"

for package in "${missing[@]}"; do
    if ! have "$package"; then
        log "apt-get installed $package but ${wants[$package]} is not there"
        exit 1
    fi
done
log "installed: ${missing[*]}"
