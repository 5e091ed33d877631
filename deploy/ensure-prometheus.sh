#!/usr/bin/env bash
# Installs Prometheus and Alertmanager (Debian packages prometheus and
# prometheus-alertmanager: prometheus, promtool, prometheus-alertmanager, amtool)
# when a binary is missing. Idempotent; needs root (or sudo) only to install.
# The packages' services are not started here (tests and deploy/ start their own).
# Usage: deploy/ensure-prometheus.sh
set -euo pipefail

missing=()
for bin in prometheus promtool; do
    command -v "$bin" >/dev/null 2>&1 || missing+=(prometheus)
done
for bin in amtool; do
    command -v "$bin" >/dev/null 2>&1 || missing+=(prometheus-alertmanager)
done
if ! command -v alertmanager >/dev/null 2>&1 && ! command -v prometheus-alertmanager >/dev/null 2>&1; then
    missing+=(prometheus-alertmanager)
fi

if [[ ${#missing[@]} -eq 0 ]]; then
    echo "prometheus: $(command -v prometheus), alertmanager: $(command -v alertmanager || command -v prometheus-alertmanager) (already installed)"
    exit 0
fi
mapfile -t packages < <(printf '%s\n' "${missing[@]}" | sort -u)

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null 2>&1 || { echo "ensure-prometheus: ${packages[*]} missing and not root (no sudo)" >&2; exit 1; }
    SUDO=(sudo)
fi

export DEBIAN_FRONTEND=noninteractive
log=$(mktemp)
policy=/usr/sbin/policy-rc.d
created_policy=0
cleanup() {
    rm -f "$log"
    if [[ $created_policy -eq 1 ]]; then "${SUDO[@]}" rm -f "$policy"; fi
}
trap cleanup EXIT
# policy-rc.d stops the packages' init scripts from starting daemons during the
# install (on machines without systemd they would otherwise try to).
if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$policy" >/dev/null
    "${SUDO[@]}" chmod 755 "$policy"
    created_policy=1
fi
status=0
{ "${SUDO[@]}" apt-get update -qq && "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${packages[@]}"; } >"$log" 2>&1 || status=$?
if [[ $status -ne 0 ]]; then
    cat "$log" >&2
    echo "ensure-prometheus: apt-get install ${packages[*]} failed" >&2
    exit 1
fi
for bin in prometheus promtool amtool; do
    command -v "$bin" >/dev/null 2>&1 || { echo "ensure-prometheus: $bin still missing after install" >&2; exit 1; }
done
echo "prometheus: $(command -v prometheus), alertmanager: $(command -v alertmanager || command -v prometheus-alertmanager) (installed ${packages[*]})"
