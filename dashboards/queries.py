"""Every PromQL expression notifguard ships: dashboard panel queries and Prometheus rules.

For tests that run the expressions against a real Prometheus (scraping a real
worker or a fake exporter):

    from dashboards.queries import panel_queries, rule_expressions
    for q in panel_queries(job="notifguard", rate_interval="1m"):
        ...  # q.expr is plain PromQL, Grafana variables substituted
    for r in rule_expressions():
        ...  # r.expr as in deploy/prometheus/rules/notifguard.rules.yml

Panel queries are read from the committed JSON (dashboards/*.json), rules from
the rules file (needs PyYAML).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS_DIR = ROOT / "dashboards"
RULES_FILE = ROOT / "deploy" / "prometheus" / "rules" / "notifguard.rules.yml"

# Grafana's built-in variables that may appear in a query, with a default.
BUILTIN_DEFAULTS = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "1h",
}
_VAR = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")


@dataclass(frozen=True)
class PanelQuery:
    dashboard_uid: str
    dashboard_title: str
    panel_id: int
    panel_title: str
    ref_id: str
    raw_expr: str  # as in the dashboard, with Grafana variables
    expr: str  # variables substituted: plain PromQL


@dataclass(frozen=True)
class RuleExpr:
    group: str
    kind: str  # "record" or "alert"
    name: str
    expr: str
    for_: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)


def substitute(expr: str, variables: dict[str, str]) -> str:
    """Replace ``$var`` / ``${var}`` / ``${var:fmt}``; unknown variables raise KeyError."""

    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name in variables:
            return variables[name]
        if name in BUILTIN_DEFAULTS:
            return BUILTIN_DEFAULTS[name]
        raise KeyError(f"no value for Grafana variable ${name} in {expr!r}")

    return _VAR.sub(repl, expr)


def dashboard_files(directory: Path = DASHBOARDS_DIR) -> list[Path]:
    return sorted(directory.glob("*.json"))


def load_dashboards(directory: Path = DASHBOARDS_DIR) -> list[dict[str, Any]]:
    return [json.loads(p.read_text(encoding="utf-8")) for p in dashboard_files(directory)]


def iter_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """All panels, including those nested in collapsed rows, rows themselves excluded."""
    out: list[dict[str, Any]] = []
    for p in dashboard.get("panels", []):
        if p.get("type") == "row":
            out.extend(p.get("panels") or [])
        else:
            out.append(p)
    return out


def panel_queries(
    job: str = "notifguard",
    rate_interval: str = "1m",
    instance: str = ".+",
    extra_variables: dict[str, str] | None = None,
    directory: Path = DASHBOARDS_DIR,
) -> list[PanelQuery]:
    """Every target of every panel of every committed dashboard, ready to run.

    ``$job`` becomes ``job`` (the dashboards match it with ``=~``, so a regex
    such as ``notifguard|notifguard-canary`` works too); ``$__rate_interval``
    becomes ``rate_interval`` (choose at least 4 x the scrape interval);
    ``$instance`` becomes ``instance`` (default: every instance, the variable's "All").
    """
    variables = {"job": job, "instance": instance, "__rate_interval": rate_interval, **(extra_variables or {})}
    out = []
    for d in load_dashboards(directory):
        for p in iter_panels(d):
            for t in p.get("targets", []):
                raw = t["expr"]
                out.append(
                    PanelQuery(
                        dashboard_uid=d["uid"],
                        dashboard_title=d["title"],
                        panel_id=p["id"],
                        panel_title=p["title"],
                        ref_id=t.get("refId", ""),
                        raw_expr=raw,
                        expr=substitute(raw, variables),
                    )
                )
    return out


def rule_expressions(path: Path = RULES_FILE) -> list[RuleExpr]:
    """Every recording and alerting rule of the rules file, in file order."""
    try:
        import yaml
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("dashboards.queries.rule_expressions needs PyYAML (pip install pyyaml)") from e
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    out = []
    for g in doc["groups"]:
        for r in g["rules"]:
            kind = "record" if "record" in r else "alert"
            out.append(
                RuleExpr(
                    group=g["name"],
                    kind=kind,
                    name=r[kind],
                    expr=str(r["expr"]),
                    for_=r.get("for"),
                    labels=dict(r.get("labels") or {}),
                    annotations=dict(r.get("annotations") or {}),
                )
            )
    return out


def all_expressions(job: str = "notifguard", rate_interval: str = "1m") -> list[tuple[str, str]]:
    """(where, PromQL) for every panel query and every rule: a flat list to feed a query loop."""
    out = [
        (f"dashboard {q.dashboard_uid} panel {q.panel_id} ({q.panel_title}) {q.ref_id}", q.expr)
        for q in panel_queries(job=job, rate_interval=rate_interval)
    ]
    out += [(f"rule {r.group}/{r.name}", r.expr) for r in rule_expressions()]
    return out
