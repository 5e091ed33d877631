#!/usr/bin/env bash
# Installs kubeconform (github.com/yannh/kubeconform, a Go module, through the
# Go module proxy) into ~/.cache/notifguard/kubeconform-<version>/ when Go is on
# the machine and it is not there yet. Idempotent: a second run needs no network.
# Without Go it only says so (exit 0): tests/deploy/test_kubeconform.py then
# skips. Prints the binary's path on stdout (nothing without Go).
# Usage: deploy/k8s/ensure-kubeconform.sh
set -euo pipefail

VERSION=v0.7.0
dir="${NOTIFGUARD_CACHE:-$HOME/.cache/notifguard}/kubeconform-$VERSION"
bin="$dir/kubeconform"

if [[ -x "$bin" ]]; then
    echo "$bin"
    exit 0
fi
if ! command -v go >/dev/null 2>&1; then
    echo "ensure-kubeconform: no Go toolchain: kubeconform not installed (its test skips)" >&2
    exit 0
fi
mkdir -p "$dir"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! GOBIN="$dir" go install "github.com/yannh/kubeconform/cmd/kubeconform@$VERSION" >"$log" 2>&1; then
    cat "$log" >&2
    echo "ensure-kubeconform: go install github.com/yannh/kubeconform/cmd/kubeconform@$VERSION failed" >&2
    exit 1
fi
echo "$bin"
