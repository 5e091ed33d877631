#!/usr/bin/env bash
# Create or refresh .venv with exactly the locked dependencies
# (requirements/dev.lock.txt: every extra, every transitive dependency, with
# hashes) and notifguard itself as an editable install. Idempotent: nothing is
# installed while the lock, pyproject.toml and the interpreter are unchanged;
# when one of them changes, .venv is rebuilt from scratch, so an old .venv can
# never hide what a fresh machine gets. Ranges live in pyproject.toml, the
# tested versions in the lock; scripts/upgrade-deps refreshes the lock. Then
# the compiled core (mypyc, from the lock's mypy) for the sources as they are.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
lock="requirements/dev.lock.txt"
py="${PYTHON:-}"
if [ -z "$py" ]; then
  for c in python3.11 python3; do
    if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      py="$c"; break
    fi
  done
fi
[ -n "$py" ] || { echo "bootstrap: Python 3.11 is needed (the lock is resolved for 3.11)" >&2; exit 1; }
stamp=".venv/.notifguard-lock"
want="$(cat "$lock" pyproject.toml | sha256sum | cut -c1-16) $("$py" -c 'import sys; print(sys.version.split()[0])')"
build_native() {
  # The compiled core (detectors/native.py): built once for each version of its sources. It needs a
  # C compiler: Debian's gcc is installed when there is none (as root, or with sudo). Without a
  # build the core runs as Python (slower), and scripts/test, which requires the build, fails.
  if ! command -v cc >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    local sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    { "${sudo[@]}" apt-get update -qq \
      && DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends gcc libc6-dev; } >&2 \
      || echo "bootstrap: no C compiler, and gcc could not be installed" >&2
  fi
  if ! NOTIFGUARD_NATIVE=0 .venv/bin/python -m detectors.build_native; then
    echo "bootstrap: WARNING: the compiled core was not built (it needs a C compiler and Python's headers);" \
      "the core runs as Python, slower, and scripts/test, which requires it, fails" >&2
  fi
}
if [ -x .venv/bin/python ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  build_native
  exit 0
fi
echo "bootstrap: building .venv from $lock ($("$py" --version))" >&2
rm -rf .venv
"$py" -m venv .venv
export PIP_DISABLE_PIP_VERSION_CHECK=1
# --require-hashes: every package must be in the lock with a matching hash;
# --no-deps: nothing outside the lock is resolved.
.venv/bin/python -m pip install -q --require-hashes --no-deps -r "$lock"
.venv/bin/python -m pip install -q --no-deps --no-build-isolation -e .
.venv/bin/python -m pip check >&2
echo "$want" > "$stamp"
build_native
