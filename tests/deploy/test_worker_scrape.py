"""A real worker scraped by a real Prometheus: every panel query and every rule has data to work on.

The worker (``notifguard worker`` on a real Kafka broker, memory store) judges
every scenario of ``streams/scenarios`` (alerts of every kind), and the
incidents process (``notifguard incidents run``) groups its breach alerts;
Prometheus (the Debian binary, 1 s scrape and evaluation, jobs ``notifguard``
and ``notifguard-incidents``, the committed rules file) scrapes both. Once the
alerts have been scraped a few times, every dashboard panel query and every rule expression is run
through Prometheus's HTTP API: each must parse and return at least one
series, except the allow-listed ones that legitimately stay empty in a short
test (they fire on anomalies only, or need a day of history); for those,
every metric selector they use must return series instead, so a renamed or
missing metric is still caught. ``promtool check metrics`` lints the
exposition, and every metric of docs/metrics.md must be exported.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from dashboards.queries import panel_queries, rule_expressions
from streams.faust_sensor import LATENCY_SAMPLE
from streams.topics import address_index_topic
from tests.deploy.conftest import (
    METRICS_DOC,
    ROOT,
    RULES_FILE,
    Service,
    free_port,
    prometheus_service,
    tool,
    wait_for,
)
from tests.deploy.promql import selectors
from tests.streams.kafka_harness import KafkaRun, require_broker
from tests.streams.worker.test_kafka import offline, scenario_stream

pytestmark = [pytest.mark.kafka, pytest.mark.prometheus, pytest.mark.slow]

JOB = "notifguard"
INCIDENTS_JOB = "notifguard-incidents"
# the job each dashboard's panels are run with (its $job's default): the worker's, or the incidents process's
DASHBOARD_JOBS = {"notifguard-incidents": INCIDENTS_JOB}
# Wider than the whole test: every sample scraped so far is in every range.
RATE_INTERVAL = "2m"
# Records are produced one by one this far apart, so that counters grow over
# several 1 s scrapes (a series born with its final value has a rate of 0).
PACE_S = 0.2
SCRAPES_AFTER_ALERTS = 3

# Expressions that may return no series in this test, with the reason. Keys are
# rule names (alerting or recording) or "<dashboard uid>/<panel id>/<refId>".
# Their metric selectors must still return series.
MAY_BE_EMPTY: dict[str, str] = {
    # --- need a day of history (avg_over_time(...[1d] offset 1h)) ------------
    "brand_template_sender:notifguard_recipient_mismatch:ratio_rate5m:avg1d": "1-day baseline ending 1 h ago",
    "kind:notifguard_alerts:rate1h:avg1d": "1-day baseline ending 1 h ago",
    "job_topic:notifguard_late_records:ratio_rate15m:avg1d": "1-day baseline ending 1 h ago",
    # --- volume thresholds far above a 60-record scenario replay --------------
    "NotifguardSystemicRecipientMismatch": ">= 100 verdicts and >= 3 mismatches per 5 min per brand/template/sender",
    "NotifguardHardBounceRateHigh": ">= 100 final delivery outcomes per hour per brand/sender",
    "NotifguardCurrentAddressBouncingRising": ">= 10 current_address_bouncing alerts per hour",
    "NotifguardDeadLettersHigh": ">= 10 dead letters in 15 min (the scenarios are well-formed)",
    "NotifguardLateRecordsHigh": ">= 10 late records in 15 min",
    "NotifguardLateContractChanges": ">= 10 late contract changes in 15 min, for 1 h",
    # --- contract 1.1: the scenarios' records come on time ------------------
    "NotifguardRecordsBeyondCorrectionHorizon": "records 7 days behind the watermark: none",
    "NotifguardRelinksWaitedOut": "relink records waiting out relink_wait_s, for 30 min: the view keeps up",
    "NotifguardRelinksOutOfReach": "relinks more than the horizon behind a number: one worker, one watermark",
    "NotifguardConsumerLagGrowing": "> 1000 records of lag, growing for 15 min",
    # --- fire on failures of the worker itself, which is healthy here --------
    "NotifguardWorkerDown": "up == 0: the worker is up",
    "NotifguardWorkerAbsent": "absent(up): the target exists",
    "NotifguardWorkerNotReady": "ready == 0: the worker is ready",
    "NotifguardWorkerStalled": "stalled == 1: the worker makes progress",
    "NotifguardPipelineStalled": "consumes but judges nothing: it judges",
    "NotifguardProcessingErrors": "exceptions other than bad input: there are none",
    "NotifguardRecordQuarantined": "records the worker died on three times: it does not die",
    "NotifguardProduceErrors": "failed sends after the producer's retries: the broker is up",
    "NotifguardFrequentRebalances": "> 3 rebalances in 15 min: one worker, one assignment",
    # --- the incidents were detected seconds ago: the first deadline is 24 h away -----
    "NotifguardIncidentDeadlineNear": "< 6 h to a deadline: the nearest is ~24 h away",
    "NotifguardIncidentsStalled": "last poll over 5 min ago: the incidents process polls every second",
}


@dataclass
class Scrape:
    prometheus_url: str
    worker_port: int
    kafka: KafkaRun
    services: list[Service]
    expected_alerts: Counter[str]

    def logs(self) -> str:
        worker_logs = "\n".join(
            f"--- worker {log.name} ---\n" + "\n".join(log.read_text(errors="replace").splitlines()[-30:])
            for _, _, log in self.kafka.workers
        )
        return "\n".join(s.tail() for s in self.services) + "\n" + worker_logs

    def query(self, expr: str) -> dict[str, Any]:
        """The whole API answer of an instant query (an HTTP 4xx answer is returned too: it has the error)."""
        body = urllib.parse.urlencode({"query": expr}).encode()
        try:
            with urllib.request.urlopen(f"{self.prometheus_url}/api/v1/query", data=body, timeout=10) as resp:
                return json.loads(resp.read())  # type: ignore[no-any-return]
        except urllib.error.HTTPError as e:
            return json.loads(e.read())  # type: ignore[no-any-return]

    def series(self, expr: str) -> list[dict[str, Any]]:
        res = self.query(expr)
        assert res.get("status") == "success", (expr, res)
        return res["data"]["result"]  # type: ignore[no-any-return]


def _prometheus_config(worker_port: int, incidents_port: int) -> dict[str, Any]:
    return {
        "global": {
            "scrape_interval": "1s",
            "scrape_timeout": "1s",
            "evaluation_interval": "1s",
            "external_labels": {"service": "notifguard"},
        },
        "rule_files": [str(RULES_FILE)],
        "scrape_configs": [
            {
                "job_name": JOB,
                "metrics_path": "/metrics",
                "static_configs": [{"targets": [f"127.0.0.1:{worker_port}"]}],
                # KafkaRun's topics are "<tag>.notifications.outbound" etc.: back to the
                # production names that the rules match on (topic="notifications.outbound").
                "metric_relabel_configs": [
                    {
                        "source_labels": ["topic"],
                        "regex": r"[0-9a-f]{8}\.(.+)",
                        "target_label": "topic",
                        "replacement": "$1",
                    }
                ],
            },
            {
                "job_name": INCIDENTS_JOB,
                "metrics_path": "/metrics",
                "static_configs": [{"targets": [f"127.0.0.1:{incidents_port}"]}],
            },
        ],
    }


def _last_scrape(sc: Scrape) -> float:
    """Time (Prometheus clock) of the newest sample of the worker's `up`."""
    res = sc.series(f'timestamp(up{{job="{JOB}"}})')
    return float(res[0]["value"][1]) if res else 0.0


@pytest.fixture(scope="module")
def scrape(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scrape]:
    tool("prometheus")  # skip (or fail) before the broker and worker start
    tool("promtool")
    bootstrap = require_broker()
    tmp: Path = tmp_path_factory.mktemp("worker-scrape")

    envs = scenario_stream()
    expected = Counter(a.kind for a in offline(envs, tmp))

    kafka = KafkaRun(bootstrap, tmp)
    services: list[Service] = []
    try:
        # the separate incidents process (job notifguard-incidents) computes them here: never both
        worker_port = kafka.start_worker(store="memory://", env={"NOTIFGUARD_WORKER_INCIDENTS": "false"})
        incidents_port = free_port()
        topics = {**vars(kafka.topics), "incidents": f"{kafka.app_id}.notifguard.incidents"}
        (tmp / "incidents.toml").write_text("[topics]\n" + "".join(f'{k} = "{v}"\n' for k, v in topics.items()))
        services.append(
            Service(
                "incidents",
                [
                    sys.executable,
                    "-m",
                    "streams.cli",
                    "--log-level",
                    "INFO",
                    "incidents",
                    "run",
                    "--bootstrap",
                    bootstrap,
                    "--config",
                    str(tmp / "incidents.toml"),
                    "--app-id",
                    f"{kafka.app_id}-incidents",
                    "--clock",
                    "event",
                    "--metrics-port",
                    str(incidents_port),
                ],
                tmp / "incidents.log",
                cwd=ROOT,
            )
        )
        prom_port = free_port()
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(_prometheus_config(worker_port, incidents_port)))
        services.append(prometheus_service(tmp / "prometheus.yml", tmp, prom_port))
        sc = Scrape(f"http://127.0.0.1:{prom_port}", worker_port, kafka, services, expected)
        try:
            wait_for(lambda: _last_scrape(sc), 30, what="prometheus to scrape the worker")
        except TimeoutError as e:
            pytest.fail(f"{e}\n{sc.logs()}")

        for env in envs:
            kafka.produce([env])
            time.sleep(PACE_S)

        def alerts_scraped() -> float | None:
            got = {
                r["metric"]["kind"]: round(float(r["value"][1]))
                for r in sc.series(f'sum by (kind) (notifguard_alerts_total{{job="{JOB}"}}) > 0')
            }
            return _last_scrape(sc) if got == dict(expected) else None

        try:
            seen_at = wait_for(alerts_scraped, 60, interval=0.5, what=f"the alerts {dict(expected)} in Prometheus")
            wait_for(
                lambda: sc.series(f'notifguard_incident_affected_numbers{{job="{INCIDENTS_JOB}"}}'),
                30,
                interval=0.5,
                what="the incidents process's incidents in Prometheus",
            )
            seen_at = _last_scrape(sc)
            wait_for(lambda: _last_scrape(sc) >= seen_at + SCRAPES_AFTER_ALERTS, 15, what="more scrapes")
            time.sleep(1.5)  # one more evaluation of every rule group on the newest scrape
        except TimeoutError as e:
            pytest.fail(f"{e}\n{sc.logs()}")
        yield sc
    finally:
        for s in reversed(services):
            s.stop()
        kafka.close()


# --------------------------------------------------------------------- selectors


def test_selectors_are_found() -> None:
    expr = (
        'sum by (job, topic) (rate(notifguard_x_total{job="notifguard", a=~"b|c"}[15m] offset 1h))\n'
        '/ on (job) group_left (z) (y:rec:rate5m > 0.001) unless absent(up{job="notifguard"})'
        ' or 3 * {__name__="w"} + max without (a) (v)'
    )
    assert selectors(expr) == [
        'notifguard_x_total{job="notifguard", a=~"b|c"}',
        "y:rec:rate5m",
        'up{job="notifguard"}',
        '{__name__="w"}',
        "v",
    ]


# ------------------------------------------------------------------------ tests


def documented_metrics() -> list[tuple[str, str]]:
    """(name, type) of every metric in the table of docs/metrics.md."""
    rows = re.findall(r"^\| `(notifguard_\w+)` \| (\w+)", METRICS_DOC.read_text(encoding="utf-8"), re.M)
    assert len(rows) >= 15, rows
    return rows


def test_every_documented_metric_is_exported_and_scraped(scrape: Scrape) -> None:
    text = scrape.kafka.metrics(scrape.worker_port)
    exported = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}
    scraped = {
        r["metric"]["__name__"]
        for r in scrape.series(f'count by (__name__) ({{job="{JOB}", __name__=~"notifguard_.*"}})')
    }
    missing = []
    for name, typ in documented_metrics():
        sample = f"{name}_bucket" if typ == "histogram" else name
        if sample not in exported:
            missing.append(f"{name} not in the worker's /metrics")
        elif sample not in scraped:
            missing.append(f"{name} not in Prometheus")
    assert not missing, missing


def test_promtool_accepts_the_worker_exposition(scrape: Scrape) -> None:
    text = scrape.kafka.metrics(scrape.worker_port)
    res = subprocess.run(
        [tool("promtool"), "check", "metrics"], input=text, capture_output=True, text=True, timeout=60, check=False
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_every_rule_is_loaded_and_evaluates_cleanly(scrape: Scrape) -> None:
    with urllib.request.urlopen(f"{scrape.prometheus_url}/api/v1/rules", timeout=10) as resp:
        groups = json.loads(resp.read())["data"]["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert len(rules) == len(rule_expressions())
    bad = [(r["name"], r.get("health"), r.get("lastError")) for r in rules if r.get("health") != "ok"]
    assert not bad, bad


def _expressions() -> list[tuple[str, str, str]]:
    """(allow-list key, description, PromQL) of every panel query and every rule."""
    out = [
        (
            f"{q.dashboard_uid}/{q.panel_id}/{q.ref_id}",
            f"panel {q.dashboard_uid}/{q.panel_id} {q.panel_title!r} {q.ref_id}",
            q.expr,
        )
        for job in {JOB, *DASHBOARD_JOBS.values()}
        for q in panel_queries(job=job, rate_interval=RATE_INTERVAL)
        if DASHBOARD_JOBS.get(q.dashboard_uid, JOB) == job
    ]
    out += [(r.name, f"{r.kind} {r.group}/{r.name}", r.expr) for r in rule_expressions()]
    return out


def test_every_panel_query_and_rule_returns_data(scrape: Scrape) -> None:
    recorded = {r.name for r in rule_expressions() if r.kind == "record"}
    exprs = _expressions()
    assert len(exprs) > 40
    problems: list[str] = []
    empty_as_allowed: list[str] = []
    report: list[str] = []
    for key, where, expr in exprs:
        res = scrape.query(expr)
        if res.get("status") != "success":
            problems.append(f"{where}: {res.get('errorType')}: {res.get('error')}\n    {expr}")
            continue
        result = res["data"]["result"]
        if result:
            values = [r["value"][1] for r in result]
            report.append(f"{where}: {len(result)} series, values {sorted(set(values))[:4]}")
            continue
        if key not in MAY_BE_EMPTY:
            problems.append(f"{where}: no series\n    {expr}")
            continue
        empty_as_allowed.append(f"{where}: {MAY_BE_EMPTY[key]}")
        # Empty is fine, but what it reads must exist (a recorded series that
        # may itself be empty is checked as its own rule).
        for sel in selectors(expr):
            name = sel.split("{")[0]
            if name in recorded and name in MAY_BE_EMPTY:
                continue
            if not scrape.series(sel):
                problems.append(f"{where}: selector {sel} returns no series")
    print("\nwith data:\n  " + "\n  ".join(report))
    print("\nallowed to be empty and empty:\n  " + "\n  ".join(empty_as_allowed))
    assert not problems, "\n".join(problems) + "\n" + scrape.logs()
    # Every allowance names an expression that exists (renamed rules must not leave stale entries).
    keys = {k for k, _, _ in exprs}
    assert set(MAY_BE_EMPTY) <= keys, set(MAY_BE_EMPTY) - keys


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_faust_runtime_metrics_count_what_the_worker_did(scrape: Scrape) -> None:
    """streams.faust_sensor: the hooks that fire in this worker moved its metrics, the right ones exactly."""
    got = _samples(scrape.kafka.metrics(scrape.worker_port))

    def value(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        assert key in got, f"{name}{labels} not exported"
        return got[key]

    topics, app_id = scrape.kafka.topics, scrape.kafka.app_id
    changelogs = [f"{app_id}-numbers-changelog", address_index_topic(app_id)]
    # Faust commits every second, and the worker ran for many seconds.
    assert value("notifguard_offset_commits_total") >= 3
    assert value("notifguard_offset_commit_seconds_count") == value("notifguard_offset_commits_total")
    # Every alert the engine emitted reached the broker once, and so did the table state.
    alerts = sum(v for (name, _), v in got.items() if name == "notifguard_alerts_total")
    assert alerts == sum(scrape.expected_alerts.values())
    assert value("notifguard_records_produced_total", topic=topics.alerts) == alerts
    deadletters = sum(v for (name, _), v in got.items() if name == "notifguard_deadletters_total")
    assert value("notifguard_records_produced_total", topic=topics.deadletter) == deadletters
    for changelog in changelogs:
        assert value("notifguard_records_produced_total", topic=changelog) > 0, changelog
    produced = sum(v for (name, _), v in got.items() if name == "notifguard_records_produced_total")
    # one send in LATENCY_SAMPLE is timed
    assert produced // LATENCY_SAMPLE <= value("notifguard_produce_seconds_count") <= produced
    for topic in (topics.alerts, topics.deadletter, *changelogs):
        assert value("notifguard_produce_errors_total", topic=topic) == 0, topic
    # One worker joined once: it was the group leader, rejoined and recovered.
    assert value("notifguard_rebalance_seconds_count", phase="rejoined") >= 1
    assert value("notifguard_rebalance_seconds_count", phase="recovered") >= 1
    assert value("notifguard_partition_assignments_total", result="completed") >= 1
    assert value("notifguard_partition_assignments_total", result="error") == 0
    # Recovered: nothing left to read.
    assert value("notifguard_table_recovery_remaining_records", role="active") == 0
    assert value("notifguard_table_recovery_remaining_records", role="standby") == 0
