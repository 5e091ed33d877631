#!/usr/bin/env bash
# Create or refresh .venv with notifguard and its dependencies (idempotent:
# nothing is installed again while pyproject.toml is unchanged).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
py="${PYTHON:-}"
if [ -z "$py" ]; then
  for c in python3.11 python3.12 python3.13 python3; do
    if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
      py="$c"; break
    fi
  done
fi
[ -n "$py" ] || { echo "bootstrap: Python >= 3.11 is needed" >&2; exit 1; }
stamp=".venv/.notifguard-installed"
want="$(sha256sum pyproject.toml | cut -c1-16)"
if [ -x .venv/bin/python ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "bootstrap: installing notifguard into .venv ($("$py" --version))" >&2
[ -x .venv/bin/python ] || "$py" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q -e '.[stream,dev]'
echo "$want" > "$stamp"
