"""Dashboards as code: the committed JSON is the generator's output, and lint rules on every panel."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from dashboards.queries import dashboard_files, iter_panels, load_dashboards, panel_queries
from tests.deploy.conftest import METRICS_DOC, ROOT

DASHBOARDS = {d["uid"]: d for d in load_dashboards()}
EXPECTED = {
    "notifguard-notification-health": "Notification health",
    "notifguard-detector-pipeline": "Detector pipeline",
}
DS_REF = {"type": "prometheus", "uid": "${datasource}"}
DS_UID = "notifguard-prometheus"
# Prometheus's own series the dashboards may use besides docs/metrics.md.
BUILTIN_METRICS = {"up"}
RANGE_FUNCS = re.compile(r"\b(rate|irate|increase|delta|idelta|deriv|\w+_over_time)\s*\(")


def documented_metrics() -> set[str]:
    return set(re.findall(r"^\| `(notifguard_\w+)` \|", METRICS_DOC.read_text(encoding="utf-8"), re.M))


def panels() -> list[tuple[str, dict[str, Any]]]:
    return [(uid, p) for uid, d in DASHBOARDS.items() for p in iter_panels(d)]


def targets() -> list[tuple[str, str, dict[str, Any]]]:
    return [(uid, p["title"], t) for uid, p in panels() for t in p["targets"]]


def test_committed_json_is_generator_output() -> None:
    # Needs grafana-foundation-sdk (a dev dependency); a missing package fails here on purpose.
    from dashboards import generate

    produced = generate.generate()
    committed = {p.name: p.read_text(encoding="utf-8") for p in dashboard_files()}
    assert produced.keys() == committed.keys()
    for name, text in produced.items():
        assert committed[name] == text, f"dashboards/{name} is stale: run .venv/bin/python dashboards/generate.py"


def test_the_two_dashboards() -> None:
    assert {uid: d["title"] for uid, d in DASHBOARDS.items()} == EXPECTED
    for d in DASHBOARDS.values():
        assert "notifguard" in d["tags"]


@pytest.mark.parametrize("uid", sorted(EXPECTED))
def test_variables(uid: str) -> None:
    variables = {v["name"]: v for v in DASHBOARDS[uid]["templating"]["list"]}
    ds = variables["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    assert ds["current"]["value"] == DS_UID
    job = variables["job"]
    assert job["type"] == "query"
    assert job["datasource"] == DS_REF
    assert job["current"]["value"] == ["notifguard"]


@pytest.mark.parametrize("uid", sorted(EXPECTED))
def test_panel_ids_unique_and_layout_without_overlap(uid: str) -> None:
    d = DASHBOARDS[uid]
    ids = [p["id"] for p in d["panels"]] + [q["id"] for p in d["panels"] for q in p.get("panels") or []]
    assert len(ids) == len(set(ids)) and all(isinstance(i, int) and i > 0 for i in ids)
    cells = set()
    for p in d["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps"
                cells.add((x, y))


@pytest.mark.parametrize("uid", sorted(EXPECTED))
def test_titles_unique_and_described(uid: str) -> None:
    titles = [p["title"] for p in iter_panels(DASHBOARDS[uid])]
    assert len(titles) == len(set(titles))
    for p in iter_panels(DASHBOARDS[uid]):
        assert p["title"].strip() and p.get("description", "").strip(), p["title"]


@pytest.mark.parametrize(("uid", "panel"), panels(), ids=lambda v: v["title"] if isinstance(v, dict) else v)
def test_panel_has_unit_and_datasource_variable(uid: str, panel: dict[str, Any]) -> None:
    assert panel["fieldConfig"]["defaults"].get("unit"), "no unit"
    assert panel["datasource"] == DS_REF
    assert panel["targets"], "no query"
    for t in panel["targets"]:
        assert t["datasource"] == DS_REF
        assert t["refId"]


def _target_id(v: Any) -> str:
    return str(v.get("refId")) if isinstance(v, dict) else str(v)


@pytest.mark.parametrize(("uid", "title", "target"), targets(), ids=_target_id)
def test_query_lint(uid: str, title: str, target: dict[str, Any]) -> None:
    expr = target["expr"]
    # Every range selector (so every rate()/increase()) uses $__rate_interval.
    ranges = re.findall(r"\[([^\]]*)\]", expr)
    assert all(r == "$__rate_interval" for r in ranges), ranges
    assert len(RANGE_FUNCS.findall(expr)) == len(ranges)
    # Every selector filters on the job variable.
    selectors = re.findall(r"\b([a-zA-Z_:][\w:]*)\{([^}]*)\}", expr)
    assert selectors, "no selector"
    for metric, matchers in selectors:
        assert 'job=~"$job"' in matchers, metric
    # Every metric exists in docs/metrics.md (histogram series by their base name).
    known = documented_metrics() | BUILTIN_METRICS
    for metric, _ in selectors:
        base = re.sub(r"_(bucket|sum|count)$", "", metric)
        assert metric in known or base in known, f"{metric} is not in docs/metrics.md"


def test_panel_queries_substitute_every_variable() -> None:
    qs = panel_queries(job="notifguard", rate_interval="2m")
    assert len(qs) == len(targets())
    for q in qs:
        assert "$" not in q.expr, q.expr
        assert "[2m]" in q.expr or "[" not in q.expr


def test_provisioning_matches_the_dashboards() -> None:
    prov = ROOT / "deploy" / "grafana" / "provisioning"
    ds = yaml.safe_load((prov / "datasources" / "notifguard.yml").read_text(encoding="utf-8"))
    (source,) = ds["datasources"]
    assert source["uid"] == DS_UID and source["type"] == "prometheus"
    dash = yaml.safe_load((prov / "dashboards" / "notifguard.yml").read_text(encoding="utf-8"))
    (provider,) = dash["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]
