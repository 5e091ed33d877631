"""Dashboards as code: the committed JSON is the generator's output, and lint rules on every panel."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from dashboards.queries import dashboard_files, iter_panels, load_dashboards, panel_queries
from tests.deploy.conftest import METRICS_DOC, ROOT
from tests.deploy.promql import matchers, selectors

DASHBOARDS = {d["uid"]: d for d in load_dashboards()}
EXPECTED = {
    "notifguard-notification-health": "Notification health",
    "notifguard-detector-pipeline": "Detector pipeline",
    "notifguard-incidents": "Incidents",
}
# the jobs each dashboard's $job defaults to: the worker's; for incidents also the separate process's
JOBS = {"notifguard-incidents": ["notifguard", "notifguard-incidents"]}
DS_REF = {"type": "prometheus", "uid": "${datasource}"}
DS_UID = "notifguard-prometheus"
# Prometheus's own series the dashboards may use besides docs/metrics.md.
BUILTIN_METRICS = {"up"}
RANGE_FUNCS = re.compile(r"\b(rate|irate|increase|delta|idelta|deriv|\w+_over_time)\s*\(")


def documented_metrics() -> set[str]:
    """The worker's metrics and the incidents process's (rows marked `(incidents)`)."""
    return set(
        re.findall(r"^\| `(notifguard_\w+)` (?:\(incidents\) )?\|", METRICS_DOC.read_text(encoding="utf-8"), re.M)
    )


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


def test_the_three_dashboards() -> None:
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
    assert job["current"]["value"] == JOBS.get(uid, ["notifguard"])


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
    found = re.findall(r"\b([a-zA-Z_:][\w:]*)\{([^}]*)\}", expr)
    assert found, "no selector"
    for metric, labels in found:
        assert 'job=~"$job"' in labels, metric
    # Every metric exists in docs/metrics.md (histogram series by their base name).
    known = documented_metrics() | BUILTIN_METRICS
    for metric, _ in found:
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


# --------------------------------------------------------------------------
# grafana's dashboard-linter rules, checked here (its module is refused by the
# Go module proxy: no version list, so `go install` fails on its deprecation
# check). One test per rule, named like the linter's rule, on both dashboards;
# rules from github.com/grafana/dashboard-linter lint/rules.go (v0.2.0 and
# main). target-logql-rule and target-logql-auto-rule apply to Loki queries:
# there are none (test_no_loki_targets_for_the_logql_rules).
# --------------------------------------------------------------------------

# lint/rule_panel_units.go validUnits, the part a notifguard panel may use.
VALID_UNITS = {
    "none",
    "string",
    "short",
    "percent",
    "percentunit",
    "bytes",
    "decbytes",
    "bits",
    "Bps",
    "pps",
    "ns",
    "µs",
    "ms",
    "s",
    "m",
    "h",
    "d",
    "dtdurationms",
    "dtdurations",
    "hertz",
    "cps",
    "ops",
    "reqps",
    "rps",
    "wps",
    "iops",
    "cpm",
    "opm",
    "rpm",
    "wpm",
    "mps",
    "mpm",
    "bool",
}
LINTED_PANEL_TYPES = {"stat", "singlestat", "graph", "table", "timeseries", "gauge"}
COUNTER_IN_RANGE_FUNC = re.compile(r"\b(?:rate|irate|increase)\(\s*(\w+_total)(?:\{[^}]*\})?\[[^\]]+\]\s*\)")
COUNTER = re.compile(r"\b(\w+_total)\b(?!\s*\()")


def _variables(d: dict[str, Any]) -> list[dict[str, Any]]:
    return list(d["templating"]["list"])


def _query_variable_problems(d: dict[str, Any], name: str) -> list[str]:
    """lint/rule_template_job.go checkTemplate."""
    found = [v for v in _variables(d) if v["name"] == name]
    if not found:
        return [f"no {name} variable"]
    v = found[0]
    problems = []
    if v.get("datasource", {}).get("uid") not in ("$datasource", "${datasource}"):
        problems.append(f"{name}: data source {v.get('datasource')}, not $datasource")
    if v["type"] != "query":
        problems.append(f"{name}: type {v['type']}, not a query")
    if v.get("label") != name.title():
        problems.append(f"{name}: label {v.get('label')!r}, not {name.title()!r}")
    if not v.get("multi"):
        problems.append(f"{name}: not multi-select")
    if v.get("allValue") != ".+":
        problems.append(f"{name}: allValue {v.get('allValue')!r}, not '.+'")
    return problems


def rule_template_datasource(d: dict[str, Any]) -> list[str]:
    ds = [v for v in _variables(d) if v["type"] == "datasource"]
    if len(ds) != 1:
        return [f"{len(ds)} data source variables"]
    problems = []
    if ds[0]["name"] not in ("datasource", f"{ds[0]['query']}_datasource"):
        problems.append(f"data source variable named {ds[0]['name']!r}")
    if ds[0].get("label") not in ("Data source", f"{ds[0]['query'].title()} data source"):
        problems.append(f"data source variable labelled {ds[0].get('label')!r}")
    return problems


def rule_template_job(d: dict[str, Any]) -> list[str]:
    return _query_variable_problems(d, "job")


def rule_template_instance(d: dict[str, Any]) -> list[str]:
    return _query_variable_problems(d, "instance")


def rule_template_label_promql(d: dict[str, Any]) -> list[str]:
    problems = []
    for v in _variables(d):
        if v["type"] != "query":
            continue
        query = v["query"] if isinstance(v["query"], str) else v["query"].get("query", "")
        m = re.fullmatch(r"([a-z_]+)\((.+)\)", query)
        if not m or m.group(1) not in ("label_names", "label_values", "metrics", "query_result"):
            problems.append(f"{v['name']}: {query!r} is not label_names/label_values/metrics/query_result")
            continue
        # the PromQL argument is parsed by promtool in rule_target_promql
        if m.group(1) == "label_values" and not re.fullmatch(r".+,\s*[A-Za-z_]\w*", m.group(2)):
            problems.append(f"{v['name']}: label_values without a label name: {query!r}")
    return problems


def rule_template_on_time_change_reload(d: dict[str, Any]) -> list[str]:
    return [
        f"{v['name']}: refresh {v.get('refresh')}, not 2 (on time range change)"
        for v in _variables(d)
        if v["type"] == "query" and v.get("refresh") != 2
    ]


def rule_uneditable_dashboard(d: dict[str, Any]) -> list[str]:
    return ["editable: provisioned dashboards are changed in dashboards/generate.py"] if d.get("editable") else []


def _linted_panels(d: dict[str, Any]) -> list[dict[str, Any]]:
    ps = iter_panels(d)
    assert all(p["type"] in LINTED_PANEL_TYPES for p in ps), {p["type"] for p in ps}
    return ps


def rule_panel_datasource(d: dict[str, Any]) -> list[str]:
    names = {f"${v['name']}" for v in _variables(d) if v["type"] == "datasource"}
    names |= {f"${{{n[1:]}}}" for n in names}
    return [
        f"{p['title']}: data source {p.get('datasource')}"
        for p in _linted_panels(d)
        if (p.get("datasource") or {}).get("uid") not in names
    ]


def rule_panel_title_description(d: dict[str, Any]) -> list[str]:
    return [
        f"panel {p['id']}: no title or description"
        for p in _linted_panels(d)
        if not p.get("title", "").strip() or not p.get("description", "").strip()
    ]


def rule_panel_units(d: dict[str, Any]) -> list[str]:
    problems = []
    for p in _linted_panels(d):
        unit = p.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
        for o in p.get("fieldConfig", {}).get("overrides", []):
            unit = next((prop["value"] for prop in o.get("properties", []) if prop["id"] == "unit"), unit)
        if unit not in VALID_UNITS:
            problems.append(f"{p['title']}: unit {unit!r}")
    return problems


def rule_panel_no_targets(d: dict[str, Any]) -> list[str]:
    return [f"{p['title']}: no targets" for p in _linted_panels(d) if not p.get("targets")]


def _targets(d: dict[str, Any]) -> list[tuple[str, str]]:
    return [(f"{p['title']} {t['refId']}", t["expr"]) for p in _linted_panels(d) for t in p["targets"]]


def rule_target_rate_interval(d: dict[str, Any]) -> list[str]:
    # Stricter than the linter (which checks rate/irate only): every range is $__rate_interval.
    return [
        f"{where}: range [{r}]"
        for where, expr in _targets(d)
        for r in re.findall(r"\[([^\]]*)\]", expr)
        if r != "$__rate_interval"
    ]


def _required_matcher(d: dict[str, Any], label: str) -> list[str]:
    problems = []
    for where, expr in _targets(d):
        for sel in selectors(expr):
            if (label, "=~", f"${label}") not in matchers(sel):
                problems.append(f'{where}: {sel} has no {label}=~"${label}"')
    return problems


def rule_target_job(d: dict[str, Any]) -> list[str]:
    return _required_matcher(d, "job")


def rule_target_instance(d: dict[str, Any]) -> list[str]:
    return _required_matcher(d, "instance")


def rule_target_counter_agg(d: dict[str, Any]) -> list[str]:
    problems = []
    for where, expr in _targets(d):
        in_range_funcs = COUNTER_IN_RANGE_FUNC.findall(expr)
        counters = COUNTER.findall(re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr))
        if len(counters) != len(in_range_funcs):
            problems.append(f"{where}: a counter outside rate/irate/increase: {expr}")
    return problems


def rule_target_promql(d: dict[str, Any]) -> list[str]:
    """Every query (and every query variable's PromQL) parses: promtool checks them as recording rules."""
    import subprocess
    import tempfile

    from dashboards.queries import substitute
    from tests.deploy.conftest import tool

    promtool = tool("promtool")
    values = {"job": "notifguard", "instance": ".+", "datasource": DS_UID}
    exprs = [(where, substitute(expr, values)) for where, expr in _targets(d)]
    for v in _variables(d):
        m = re.fullmatch(r"(?:label_values|query_result|metrics)\((.+?)(?:,\s*\w+)?\)", str(v.get("query", "")))
        if v["type"] == "query" and m:
            exprs.append((f"variable {v['name']}", substitute(m.group(1), values)))
    rules = {
        "groups": [{"name": "lint", "rules": [{"record": f"lint:q{i}", "expr": e} for i, (_, e) in enumerate(exprs)]}]
    }
    with tempfile.NamedTemporaryFile("w", suffix=".yml") as f:
        yaml.safe_dump(rules, f)
        f.flush()
        res = subprocess.run(
            [promtool, "check", "rules", f.name], capture_output=True, text=True, timeout=60, check=False
        )
    if res.returncode == 0:
        return []
    return [res.stdout + res.stderr, *(f"lint:q{i} = {where}: {e}" for i, (where, e) in enumerate(exprs))]


LINTER_RULES = {
    "template-datasource-rule": rule_template_datasource,
    "template-job-rule": rule_template_job,
    "template-instance-rule": rule_template_instance,
    "template-label-promql-rule": rule_template_label_promql,
    "template-on-time-change-reload-rule": rule_template_on_time_change_reload,
    "panel-datasource-rule": rule_panel_datasource,
    "panel-title-description-rule": rule_panel_title_description,
    "panel-units-rule": rule_panel_units,
    "panel-no-targets-rule": rule_panel_no_targets,
    "target-promql-rule": rule_target_promql,
    "target-rate-interval-rule": rule_target_rate_interval,
    "target-job-rule": rule_target_job,
    "target-instance-rule": rule_target_instance,
    "target-counter-agg-rule": rule_target_counter_agg,
    "uneditable-dashboard": rule_uneditable_dashboard,
}


@pytest.mark.parametrize("uid", sorted(EXPECTED))
@pytest.mark.parametrize("rule", sorted(LINTER_RULES))
def test_dashboard_linter_rule(rule: str, uid: str) -> None:
    problems = LINTER_RULES[rule](DASHBOARDS[uid])
    assert not problems, "\n".join(problems)


def test_no_loki_targets_for_the_logql_rules() -> None:
    for uid, title, t in targets():
        assert t["datasource"]["type"] == "prometheus", (uid, title)


BAD = {
    "template-instance-rule": lambda d: d["templating"]["list"].pop(),
    "template-job-rule": lambda d: d["templating"]["list"][1].update(allValue=None),
    "uneditable-dashboard": lambda d: d.update(editable=True),
    "panel-units-rule": lambda d: iter_panels(d)[0]["fieldConfig"]["defaults"].update(unit="records"),
    "target-instance-rule": lambda d: iter_panels(d)[0]["targets"][0].update(expr='sum(up{job=~"$job"})'),
    "target-counter-agg-rule": lambda d: iter_panels(d)[0]["targets"][0].update(
        expr='sum(notifguard_alerts_total{job=~"$job", instance=~"$instance"})'
    ),
    "target-promql-rule": lambda d: iter_panels(d)[0]["targets"][0].update(expr="sum(rate(x[$__rate_interval])"),
}


@pytest.mark.parametrize("rule", sorted(BAD))
def test_dashboard_linter_rule_catches(rule: str) -> None:
    import copy

    d = copy.deepcopy(DASHBOARDS["notifguard-detector-pipeline"])
    BAD[rule](d)
    assert LINTER_RULES[rule](d)
