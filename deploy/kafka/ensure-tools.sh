#!/usr/bin/env bash
# Installs kcat (Debian package) when it is not on PATH. Needs root (or sudo).
# Usage: deploy/kafka/ensure-tools.sh
set -euo pipefail

if command -v kcat >/dev/null 2>&1; then
    echo "kcat: $(command -v kcat) (already installed)"
    exit 0
fi

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null 2>&1 || { echo "ensure-tools: kcat missing and not root (no sudo)" >&2; exit 1; }
    SUDO=(sudo)
fi

export DEBIAN_FRONTEND=noninteractive
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! { "${SUDO[@]}" apt-get update -qq && "${SUDO[@]}" apt-get install -y -qq --no-install-recommends kcat; } >"$log" 2>&1; then
    cat "$log" >&2
    echo "ensure-tools: apt-get install kcat failed" >&2
    exit 1
fi
echo "kcat: $(command -v kcat) (installed)"
