"""Alertmanager configuration: amtool checks, routing per severity, inhibition, rendering."""

from __future__ import annotations

import importlib.util
import re
from types import ModuleType

import pytest
import yaml

from dashboards.queries import rule_expressions
from tests.deploy.conftest import AM_CONFIG, AM_DIR, run, tool

ALERT_NAMES = {r.name for r in rule_expressions() if r.kind == "alert"}


def render_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("render_config", AM_DIR / "render_config.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.prometheus
def test_amtool_check_config() -> None:
    r = run([tool("amtool"), "check-config", str(AM_CONFIG)])
    assert r.returncode == 0, r.stdout + r.stderr


ROUTE_CASES = [
    # labels -> receiver
    (["severity=critical", "alertname=NotifguardRecipientBreach", "brand=o2"], "pager"),
    (["severity=critical", "alertname=NotifguardWorkerDown", "job=notifguard"], "pager"),
    (["severity=critical", "alertname=NotifguardIncidentOpen", "incident_id=inc-1"], "pager"),
    (["severity=critical", "alertname=NotifguardIncidentDeadlineNear", "incident_id=inc-1", "deadline=gdpr"], "pager"),
    (["severity=warning", "alertname=NotifguardHardBounceRateHigh", "brand=o2", "sender=crm-mailer"], "ticket"),
    (["severity=warning", "alertname=NotifguardProcessingErrors"], "ticket"),
    (["severity=info", "alertname=NotifguardFrequentRebalances"], "null"),
    # Anything without a known severity still reaches a human.
    (["alertname=SomethingElse"], "ticket"),
    (["severity=page", "alertname=SomethingElse"], "ticket"),
]


@pytest.mark.prometheus
@pytest.mark.parametrize(("labels", "receiver"), ROUTE_CASES, ids=lambda v: v if isinstance(v, str) else v[0])
def test_amtool_routes(labels: list[str], receiver: str) -> None:
    r = run(
        [
            tool("amtool"),
            "config",
            "routes",
            "test",
            f"--config.file={AM_CONFIG}",
            f"--verify.receivers={receiver}",
            *labels,
        ]
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip() == receiver


def test_every_severity_of_the_rules_has_a_route() -> None:
    cfg = yaml.safe_load(AM_CONFIG.read_text(encoding="utf-8"))
    routed = {m for route in cfg["route"]["routes"] for m in route["matchers"]}
    for sev in {r.labels["severity"] for r in rule_expressions() if r.kind == "alert"}:
        assert f'severity="{sev}"' in routed, sev
    assert cfg["route"]["group_by"] == ["alertname", "brand"]
    receivers = {r["name"]: r for r in cfg["receivers"]}
    assert set(receivers) == {"pager", "ticket", "null"}
    assert "webhook_configs" not in receivers["null"]
    for name in ("pager", "ticket"):
        (hook,) = receivers[name]["webhook_configs"]
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/\w+", hook["url"]), hook
        assert hook["send_resolved"] is True


def test_inhibition_names_existing_alerts() -> None:
    cfg = yaml.safe_load(AM_CONFIG.read_text(encoding="utf-8"))
    rules = cfg["inhibit_rules"]
    worker = rules[0]
    names = set()
    for m in worker["source_matchers"] + worker["target_matchers"]:
        names |= set(re.search(r'alertname=~"([^"]+)"', m).group(1).split("|"))  # type: ignore[union-attr]
    assert names <= ALERT_NAMES, names - ALERT_NAMES
    assert {"NotifguardPipelineStalled", "NotifguardConsumerLagGrowing", "NotifguardWatermarkLagHigh"} <= names
    assert worker["equal"] == ["job"]


def test_render_config_replaces_urls_and_rejects_junk() -> None:
    mod = render_module()
    text = mod.render({"NOTIFGUARD_PAGER_URL": "https://pager.internal/hook/1"})
    cfg = yaml.safe_load(text)
    urls = {r["name"]: r["webhook_configs"][0]["url"] for r in cfg["receivers"] if "webhook_configs" in r}
    assert urls == {"pager": "https://pager.internal/hook/1", "ticket": "http://127.0.0.1:9096/ticket"}
    assert mod.render({}) == AM_CONFIG.read_text(encoding="utf-8")
    with pytest.raises(ValueError):
        mod.render({"NOTIFGUARD_TICKET_URL": "http://x\n  evil: 1"})
    with pytest.raises(ValueError):
        mod.render({}, {"no such text": "x"})
