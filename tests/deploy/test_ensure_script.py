"""deploy/ensure-prometheus.sh: valid bash, and a no-op when the tools are there."""

from __future__ import annotations

import pytest

from tests.deploy.conftest import ROOT, run, tool

SCRIPT = ROOT / "deploy" / "ensure-prometheus.sh"


def test_script_parses() -> None:
    r = run(["bash", "-n", str(SCRIPT)])
    assert r.returncode == 0, r.stderr


@pytest.mark.prometheus
def test_script_is_a_no_op_when_installed() -> None:
    for name in ("prometheus", "promtool", "alertmanager", "amtool"):
        tool(name)
    r = run(["bash", str(SCRIPT)], timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "already installed" in r.stdout
