"""The lock files: every dependency pinned with hashes, the two locks agree, pyproject's exact pins hold."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEV = ROOT / "requirements" / "dev.lock.txt"
STREAM = ROOT / "requirements" / "stream.lock.txt"
_PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==(\S+?)\s*\\?$")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_lock(path: Path) -> dict[str, tuple[str, int]]:
    """name -> (version, number of hashes); fails on any line pip would not take under --require-hashes."""
    pins: dict[str, tuple[str, int]] = {}
    current = None
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _PIN.match(line)
        if m:
            current = _norm(m.group(1))
            assert current not in pins, f"{path.name}: {current} pinned twice"
            pins[current] = (m.group(2), 0)
        elif line.startswith("--hash=sha256:"):
            assert current is not None
            version, n = pins[current]
            assert re.fullmatch(r"--hash=sha256:[0-9a-f]{64}( \\)?", line), line
            pins[current] = (version, n + 1)
        else:
            pytest.fail(f"{path.name}: unexpected line {raw!r} (only exact pins with hashes)")
    return pins


def test_every_pin_has_hashes() -> None:
    for path in (DEV, STREAM):
        pins = parse_lock(path)
        assert pins, path
        assert all(n >= 1 for _, n in pins.values()), [k for k, (_, n) in pins.items() if n == 0]


def test_runtime_lock_is_a_subset_of_the_dev_lock() -> None:
    dev = {k: v for k, (v, _) in parse_lock(DEV).items()}
    stream = {k: v for k, (v, _) in parse_lock(STREAM).items()}
    assert {k: dev.get(k) for k in stream} == stream


def test_lock_covers_every_declared_dependency() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    dev = {k: v for k, (v, _) in parse_lock(DEV).items()}
    stream = {k: v for k, (v, _) in parse_lock(STREAM).items()}
    declared = {"": project["dependencies"], **project["optional-dependencies"]}
    for extra, reqs in declared.items():
        for req in reqs:
            name = _norm(re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0])
            assert name in dev, f"{req} ({extra or 'base'}) is not in {DEV.name}"
            if extra in ("", "stream"):
                assert name in stream, f"{req} is not in {STREAM.name}"
            exact = re.search(r"==(\S+)$", req)
            if exact:
                assert dev[name] == exact.group(1), f"pyproject pins {req}, the lock has {dev[name]}"
    # The build back end is locked too (installed with --no-build-isolation).
    assert "setuptools" in dev and "setuptools" in stream


def test_installed_versions_are_the_locked_ones() -> None:
    """The environment running this suite was built from the lock (scripts/bootstrap.sh)."""
    from importlib import metadata

    dev = {k: v for k, (v, _) in parse_lock(DEV).items()}
    installed = {_norm(d.metadata["Name"]): d.version for d in metadata.distributions()}
    installed.pop("notifguard", None)
    for tool in ("pip",):  # the venv's own installer is not a dependency
        installed.pop(tool, None)
    assert {k: installed.get(k) for k in dev} == dev
    assert set(installed) <= set(dev), f"installed but not locked: {sorted(set(installed) - set(dev))}"
