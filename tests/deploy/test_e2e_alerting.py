"""End to end: a fake worker's /metrics -> real Prometheus (our rules) -> real Alertmanager (our routing) -> webhook.

Everything runs on 127.0.0.1 on free ports with temporary data directories;
the configurations are the committed ones with test overrides (1 s scrape and
evaluation, 1 s group_wait, loopback targets and webhook URLs).
"""

from __future__ import annotations

import importlib.util
import json
import queue
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from dashboards.queries import all_expressions, rule_expressions
from tests.deploy.conftest import (
    AM_DIR,
    PROM_DIR,
    RULES_FILE,
    Service,
    free_port,
    prometheus_service,
    tool,
    wait_for,
)

pytestmark = [pytest.mark.prometheus, pytest.mark.slow]

WEBHOOK_TIMEOUT = 60.0

BREACH_LABELS = 'brand="o2",template="contract_info",sender="crm-mailer",channel="email"'


class FakeWorker:
    """Serves a notifguard-like /metrics whose breach counter grows on every scrape."""

    def __init__(self) -> None:
        self.scrapes = 0
        self.lock = threading.Lock()

    def exposition(self) -> bytes:
        with self.lock:
            self.scrapes += 1
            n = self.scrapes
        lines = [
            "# HELP notifguard_verdicts_total One per judged notification",
            "# TYPE notifguard_verdicts_total counter",
            f'notifguard_verdicts_total{{{BREACH_LABELS},verdict="ok"}} {n * 20}',
            f'notifguard_verdicts_total{{{BREACH_LABELS},verdict="recipient_previous_holder"}} {n}',
            f'notifguard_verdicts_total{{{BREACH_LABELS},verdict="recipient_other_customer"}} 0',
            "# HELP notifguard_records_consumed_total Input records read",
            "# TYPE notifguard_records_consumed_total counter",
            f'notifguard_records_consumed_total{{topic="notifications.outbound"}} {n * 21}',
            "# HELP notifguard_worker_ready 1 when recovered and not rebalancing",
            "# TYPE notifguard_worker_ready gauge",
            "notifguard_worker_ready 1",
            "",
        ]
        return "\n".join(lines).encode()


def _serve(handler_cls: type[BaseHTTPRequestHandler]) -> tuple[ThreadingHTTPServer, threading.Thread]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler_cls)
    thread = threading.Thread(target=server.serve_forever, name=handler_cls.__name__, daemon=True)
    thread.start()
    return server, thread


@dataclass
class Stack:
    prometheus_url: str
    alertmanager_url: str
    webhooks: queue.Queue[tuple[str, dict[str, Any]]]
    services: list[Service]
    started_at: float

    def logs(self) -> str:
        return "\n".join(s.tail() for s in self.services)


def _prometheus_config(worker_port: int, am_port: int, prom_port: int) -> dict[str, Any]:
    cfg = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text(encoding="utf-8"))
    cfg["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    cfg["rule_files"] = [str(RULES_FILE)]
    cfg["alerting"]["alertmanagers"][0]["static_configs"] = [{"targets": [f"127.0.0.1:{am_port}"]}]
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    notifguard = jobs["notifguard"]
    del notifguard["file_sd_configs"]
    notifguard["static_configs"] = [{"targets": [f"127.0.0.1:{worker_port}"]}]
    jobs["prometheus"]["static_configs"] = [{"targets": [f"127.0.0.1:{prom_port}"]}]
    jobs["alertmanager"]["static_configs"] = [{"targets": [f"127.0.0.1:{am_port}"]}]
    return cfg


def _alertmanager_config(hook_port: int) -> str:
    spec = importlib.util.spec_from_file_location("render_config", AM_DIR / "render_config.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return str(
        mod.render(
            {
                "NOTIFGUARD_PAGER_URL": f"http://127.0.0.1:{hook_port}/pager",
                "NOTIFGUARD_TICKET_URL": f"http://127.0.0.1:{hook_port}/ticket",
            },
            {
                "group_wait: 30s": "group_wait: 1s",
                "group_wait: 10s": "group_wait: 1s",
                "group_interval: 5m": "group_interval: 2s",
            },
        )
    )


def _get_json(url: str, data: dict[str, str] | None = None, timeout: float = 10) -> Any:
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    with urllib.request.urlopen(url, data=body, timeout=timeout) as resp:
        return json.loads(resp.read())


def _post_json(url: str, payload: Any) -> int:
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        status: int = resp.status
        return status


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tool("prometheus")  # skip (or fail) before anything starts
    alertmanager = tool("alertmanager")
    tmp: Path = tmp_path_factory.mktemp("prom-e2e")

    worker = FakeWorker()

    class MetricsHandler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = worker.exposition() if self.path.startswith("/metrics") else b"ok\n"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    webhooks: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()

    class HookHandler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            webhooks.put((self.path, json.loads(self.rfile.read(length))))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    servers = [_serve(MetricsHandler), _serve(HookHandler)]
    worker_port = servers[0][0].server_address[1]
    hook_port = servers[1][0].server_address[1]
    prom_port, am_port = free_port(), free_port()

    (tmp / "prometheus.yml").write_text(yaml.safe_dump(_prometheus_config(worker_port, am_port, prom_port)))
    (tmp / "alertmanager.yml").write_text(_alertmanager_config(hook_port))

    services: list[Service] = []
    try:
        services.append(
            Service(
                "alertmanager",
                [
                    alertmanager,
                    f"--config.file={tmp / 'alertmanager.yml'}",
                    f"--storage.path={tmp / 'am-data'}",
                    f"--web.listen-address=127.0.0.1:{am_port}",
                    "--cluster.listen-address=",
                ],
                tmp / "alertmanager.log",
            )
        )
        services.append(prometheus_service(tmp / "prometheus.yml", tmp, prom_port))
        st = Stack(f"http://127.0.0.1:{prom_port}", f"http://127.0.0.1:{am_port}", webhooks, services, 0.0)
        try:
            wait_for(lambda: _get_json(f"{st.alertmanager_url}/api/v2/status"), 30, what="alertmanager")
            wait_for(lambda: _get_json(f"{st.prometheus_url}/api/v1/status/config"), 30, what="prometheus")
        except TimeoutError as e:
            pytest.fail(f"{e}\n{st.logs()}")
        st.started_at = time.monotonic()
        yield st
    finally:
        for s in reversed(services):
            s.stop()
        for server, thread in servers:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)


def _find_breach(stack: Stack) -> tuple[str, dict[str, Any]]:
    deadline = time.monotonic() + WEBHOOK_TIMEOUT
    seen = []
    while time.monotonic() < deadline:
        try:
            path, payload = stack.webhooks.get(timeout=0.5)
        except queue.Empty:
            continue
        seen.append((path, payload.get("groupLabels")))
        if payload.get("groupLabels", {}).get("alertname") == "NotifguardRecipientBreach":
            return path, payload
    pytest.fail(f"no NotifguardRecipientBreach webhook within {WEBHOOK_TIMEOUT}s; got {seen}\n{stack.logs()}")


def test_breach_pages_through_alertmanager(stack: Stack) -> None:
    path, payload = _find_breach(stack)
    elapsed = time.monotonic() - stack.started_at
    print(f"breach webhook after {elapsed:.1f}s")
    assert path == "/pager"
    assert payload["receiver"] == "pager"
    assert payload["status"] == "firing"
    assert payload["groupLabels"] == {"alertname": "NotifguardRecipientBreach", "brand": "o2"}
    (alert,) = payload["alerts"]
    assert alert["labels"] == {
        "alertname": "NotifguardRecipientBreach",
        "brand": "o2",
        "severity": "critical",
        "service": "notifguard",  # external label of deploy/prometheus/prometheus.yml
    }
    ann = alert["annotations"]
    assert ann["runbook_url"] == "docs/runbooks/prometheus/NotifguardRecipientBreach.md"
    assert ann["summary"] == "Brand o2: notification mailed to another person than the number's holder"
    assert ann["description"].startswith(tuple(f"{n} notification(s) of brand o2" for n in range(1, 1000)))


def test_every_rule_evaluates_without_error(stack: Stack) -> None:
    def evaluated() -> list[dict[str, Any]] | None:
        groups = _get_json(f"{stack.prometheus_url}/api/v1/rules")["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        return rules if rules and all(r.get("health") in ("ok", "err") for r in rules) else None

    rules = wait_for(evaluated, 30, what="rules evaluated")
    bad = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert not bad, bad
    assert len(rules) == len(rule_expressions())


def test_every_panel_query_and_rule_is_valid_promql(stack: Stack) -> None:
    errors = []
    for where, expr in all_expressions(job="notifguard", rate_interval="1m"):
        try:
            res = _get_json(f"{stack.prometheus_url}/api/v1/query", {"query": expr})
            if res.get("status") != "success":
                errors.append((where, res))
        except urllib.error.HTTPError as e:
            errors.append((where, e.read().decode(errors="replace")))
    assert not errors, errors
    # The per-brand mismatch share panel sees the fake worker's data.
    res = _get_json(
        f"{stack.prometheus_url}/api/v1/query",
        {"query": 'sum by (brand) (rate(notifguard_verdicts_total{job=~"notifguard"}[1m]))'},
    )
    assert [r["metric"] for r in res["data"]["result"]] == [{"brand": "o2"}]


def test_worker_down_inhibits_its_symptoms(stack: Stack) -> None:
    """Posted straight to Alertmanager's API: the inhibition rules of the committed config."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    base = {"job": "notifguard", "instance": "w9:6066"}
    alerts = [
        {"labels": {**base, "alertname": "NotifguardWorkerDown", "severity": "critical"}, "startsAt": now},
        {"labels": {**base, "alertname": "NotifguardPipelineStalled", "severity": "critical"}, "startsAt": now},
        {
            "labels": {
                "job": "notifguard",
                "topic": "t",
                "alertname": "NotifguardConsumerLagGrowing",
                "severity": "warning",
            },
            "startsAt": now,
        },
        # Another job's symptom is not muted.
        {
            "labels": {
                "job": "other",
                "instance": "x",
                "alertname": "NotifguardPipelineStalled",
                "severity": "critical",
            },
            "startsAt": now,
        },
    ]
    assert _post_json(f"{stack.alertmanager_url}/api/v2/alerts", alerts) == 200

    def states() -> dict[tuple[str, str], str] | None:
        got = _get_json(f"{stack.alertmanager_url}/api/v2/alerts")
        out = {
            (a["labels"]["alertname"], a["labels"]["job"]): a["status"]["state"]
            for a in got
            if a["labels"].get("instance") in ("w9:6066", "x") or a["labels"].get("topic") == "t"
        }
        return out if len(out) == 4 and "unprocessed" not in out.values() else None

    got = wait_for(states, 20, what="alertmanager to process the posted alerts")
    assert got == {
        ("NotifguardWorkerDown", "notifguard"): "active",
        ("NotifguardPipelineStalled", "notifguard"): "suppressed",
        ("NotifguardConsumerLagGrowing", "notifguard"): "suppressed",
        ("NotifguardPipelineStalled", "other"): "active",
    }
