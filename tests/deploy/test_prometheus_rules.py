"""Prometheus rules and configuration: promtool checks and unit tests, plus structural rules."""

from __future__ import annotations

import re
from collections import defaultdict

import pytest
import yaml

from dashboards.queries import rule_expressions
from tests.deploy.conftest import (
    METRICS_DOC,
    PROM_DIR,
    ROOT,
    RULE_TESTS,
    RULES_FILE,
    RUNBOOKS,
    run,
    tool,
)

ALERTS = [r for r in rule_expressions() if r.kind == "alert"]
RECORDS = [r for r in rule_expressions() if r.kind == "record"]
ALERT_NAMES = sorted({r.name for r in ALERTS})
SEVERITIES = {"critical", "warning", "info"}


def documented_metrics() -> set[str]:
    """The worker's metrics and the incidents process's (rows marked `(incidents)`)."""
    return set(
        re.findall(r"^\| `(notifguard_\w+)` (?:\(incidents\) )?\|", METRICS_DOC.read_text(encoding="utf-8"), re.M)
    )


# --- promtool ---------------------------------------------------------------


@pytest.mark.prometheus
def test_promtool_check_rules() -> None:
    r = run([tool("promtool"), "check", "rules", str(RULES_FILE)])
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.prometheus
def test_promtool_unit_tests() -> None:
    assert RULE_TESTS, "no deploy/prometheus/tests/*.test.yml"
    r = run([tool("promtool"), "test", "rules", *map(str, RULE_TESTS)], timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.prometheus
def test_promtool_check_config() -> None:
    r = run([tool("promtool"), "check", "config", str(PROM_DIR / "prometheus.yml")])
    assert r.returncode == 0, r.stdout + r.stderr


def test_prometheus_config_wiring() -> None:
    cfg = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text(encoding="utf-8"))
    assert cfg["rule_files"] == ["rules/notifguard.rules.yml"]
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    sd_files = [f for c in jobs["notifguard"]["file_sd_configs"] for f in c["files"]]
    targets = [t for f in sd_files for g in yaml.safe_load((PROM_DIR / f).read_text()) for t in g["targets"]]
    assert targets == ["127.0.0.1:6066"]
    am = cfg["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert am == ["127.0.0.1:9093"]


# --- structure of the rules -------------------------------------------------


@pytest.mark.parametrize("rule", ALERTS, ids=lambda r: f"{r.name}-{r.labels.get('severity')}")
def test_alert_has_severity_and_annotations(rule) -> None:  # type: ignore[no-untyped-def]
    assert rule.labels.get("severity") in SEVERITIES
    assert set(rule.annotations) >= {"summary", "description", "runbook_url"}
    assert rule.annotations["runbook_url"] == f"docs/runbooks/prometheus/{rule.name}.md"
    assert (ROOT / rule.annotations["runbook_url"]).is_file()
    assert rule.name.startswith("Notifguard")


def test_alerts_with_one_name_differ_in_severity() -> None:
    by_name = defaultdict(list)
    for r in ALERTS:
        by_name[r.name].append(r.labels["severity"])
    for name, sevs in by_name.items():
        assert len(sevs) == len(set(sevs)), name


def test_runbooks_match_alerts() -> None:
    files = {p.stem for p in RUNBOOKS.glob("*.md")} - {"README"}
    assert files == set(ALERT_NAMES)
    index = (RUNBOOKS / "README.md").read_text(encoding="utf-8")
    for name in ALERT_NAMES:
        assert f"[{name}.md]({name}.md)" in index, name


def test_rules_use_no_grafana_variables_and_only_known_metrics() -> None:
    known = documented_metrics()
    assert known, "no metric table found in docs/metrics.md"
    recorded = {r.name for r in RECORDS}
    for r in rule_expressions():
        assert "$__" not in r.expr and "$job" not in r.expr, r.name
        for metric in re.findall(r"(?<![\w:])(notifguard_\w+)(?![\w:])", r.expr):
            base = re.sub(r"_(bucket|sum|count)$", "", metric)
            assert metric in known or base in known, f"{r.name}: {metric} not in docs/metrics.md"
        for name in re.findall(r"\b([a-z_]+:[a-z0-9_:]+)\b", r.expr):
            assert name in recorded, f"{r.name}: recording rule {name} not defined"


def test_recording_rules_come_before_their_users_in_the_same_group() -> None:
    """promtool and Prometheus evaluate a group's rules in order: no stale recorded values."""
    defined_in: dict[str, tuple[str, int]] = {}
    for i, r in enumerate(rule_expressions()):
        for name in re.findall(r"\b([a-z_]+:[a-z0-9_:]+)\b", r.expr):
            group, index = defined_in[name]
            assert group == r.group and index < i, f"{r.name} uses {name} from {group}"
        if r.kind == "record":
            defined_in[r.name] = (r.group, i)


# --- the unit tests cover every alert -------------------------------------


def _alert_cases() -> dict[str, dict[str, list[dict]]]:  # type: ignore[type-arg]
    cases: dict[str, dict[str, list[dict]]] = defaultdict(lambda: {"firing": [], "silent": []})  # type: ignore[type-arg]
    for path in RULE_TESTS:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert doc["rule_files"] == ["../rules/notifguard.rules.yml"], path
        for t in doc["tests"]:
            for case in t.get("alert_rule_test", []):
                key = "firing" if case.get("exp_alerts") else "silent"
                cases[case["alertname"]][key].append(case)
    return cases


def test_every_alert_has_firing_and_silent_unit_tests() -> None:
    cases = _alert_cases()
    assert set(cases) <= set(ALERT_NAMES), "unit test for an unknown alert"
    for name in ALERT_NAMES:
        assert cases[name]["firing"], f"{name}: no firing case"
        assert cases[name]["silent"], f"{name}: no silent case"


def test_unit_tests_pin_labels_and_annotations_exactly() -> None:
    by_name = defaultdict(list)
    for r in ALERTS:
        by_name[r.name].append(r)
    severities_seen = defaultdict(set)
    for name, kinds in _alert_cases().items():
        for case in kinds["firing"]:
            for exp in case["exp_alerts"]:
                assert "severity" in exp["exp_labels"], name
                assert set(exp["exp_annotations"]) == {"summary", "description", "runbook_url"}, name
                severities_seen[name].add(exp["exp_labels"]["severity"])
    for name, rules in by_name.items():
        assert severities_seen[name] == {r.labels["severity"] for r in rules}, f"{name}: a severity is untested"
