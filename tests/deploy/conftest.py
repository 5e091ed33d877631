"""Shared helpers for the deploy/ tests: locating the Prometheus tools, free ports, processes."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROM_DIR = ROOT / "deploy" / "prometheus"
RULES_FILE = PROM_DIR / "rules" / "notifguard.rules.yml"
RULE_TESTS = sorted((PROM_DIR / "tests").glob("*.test.yml"))
AM_DIR = ROOT / "deploy" / "alertmanager"
AM_CONFIG = AM_DIR / "alertmanager.yml"
RUNBOOKS = ROOT / "docs" / "runbooks" / "prometheus"
METRICS_DOC = ROOT / "docs" / "metrics.md"

# Debian installs Alertmanager as prometheus-alertmanager.
TOOLS = {
    "prometheus": ("prometheus",),
    "promtool": ("promtool",),
    "alertmanager": ("alertmanager", "prometheus-alertmanager"),
    "amtool": ("amtool",),
}


def required() -> bool:
    return os.environ.get("NOTIFGUARD_PROMETHEUS_REQUIRED") == "1"


def tool(name: str) -> str:
    """Path of a Prometheus tool; skip the test if missing (fail if NOTIFGUARD_PROMETHEUS_REQUIRED=1)."""
    for candidate in TOOLS[name]:
        path = shutil.which(candidate)
        if path:
            return path
    msg = f"{name} not found (run deploy/ensure-prometheus.sh)"
    if required():
        pytest.fail(msg + " and NOTIFGUARD_PROMETHEUS_REQUIRED=1")
    pytest.skip(msg)


def run(args: list[str], timeout: float = 120, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for(predicate, timeout: float, interval: float = 0.2, what: str = "condition"):  # type: ignore[no-untyped-def]
    """Poll ``predicate`` until it returns a truthy value; return it, or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as e:  # a service not up yet
            last_exc = e
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what} (last error: {last_exc!r})")


class Service:
    """A child process with its output in a log file; stopped by its own pid."""

    def __init__(self, name: str, args: list[str], log: Path, cwd: Path | None = None) -> None:
        self.name = name
        self.args = args
        self.log = log
        self._log_fh = log.open("wb")
        self.proc = subprocess.Popen(
            args, stdout=self._log_fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=cwd
        )

    def tail(self, n: int = 40) -> str:
        try:
            lines = self.log.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return ""
        return f"--- {self.name} (exit {self.proc.poll()}) ---\n" + "\n".join(lines[-n:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log_fh.close()


def prometheus_service(config: Path, tmp: Path, port: int) -> Service:
    """A real Prometheus (Debian's) with this config, its TSDB and log in tmp, listening on loopback."""
    return Service(
        "prometheus",
        [
            tool("prometheus"),
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp / 'prom-data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        tmp / "prometheus.log",
    )


@pytest.fixture
def services() -> Iterator[list[Service]]:
    started: list[Service] = []
    yield started
    for s in reversed(started):
        s.stop()
