"""`notifguard forward-alerts`: mapping, dedup, re-sending; a real Alertmanager; a real broker."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from streams.cli import build_parser
from streams.forward import Forwarder, run, to_alertmanager
from tests.deploy.conftest import Service, free_port, services, tool, wait_for  # noqa: F401

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC).timestamp()


def alert(dedup_key: str = "recipient_previous_holder:0123456789abcdef0123", **over: Any) -> dict[str, Any]:
    kind = dedup_key.split(":")[0]
    rec: dict[str, Any] = {
        "schema_version": 1,
        "alert_id": uuid.uuid4().hex,
        "dedup_key": dedup_key,
        "kind": kind,
        "severity": "critical",
        "event_time": "2024-05-01T11:59:30.250Z",
        "detected_at": "2024-05-01T11:59:31Z",
        "trigger_event_id": "ev-1",
        "event_ids": ["ev-0", "ev-1"],
        "subject": {"msisdn_masked": "+49176******78", "msisdn_ref": "0" * 24},
        "brand": "o2",
        "template": "contract_info",
        "sender": "crm-mailer",
        "summary": f"{kind}: contract info sent to previous holder",
        "evidence": {},
        "late": False,
        "runbook_url": f"https://runbooks.invalid/{kind}",
    }
    rec.update(over)
    return rec


# --- pure -------------------------------------------------------------------------------------


def test_mapping() -> None:
    am = to_alertmanager(alert(), NOW, 3600)
    assert am["labels"] == {
        "alertname": "recipient_previous_holder",
        "severity": "critical",
        "brand": "o2",
        "dedup_key": "recipient_previous_holder:0123456789abcdef0123",
        "service": "notifguard",
    }
    assert am["annotations"] == {
        "summary": "recipient_previous_holder: contract info sent to previous holder",
        "runbook_url": "https://runbooks.invalid/recipient_previous_holder",
        "event_time": "2024-05-01T11:59:30.250Z",
        "trigger_event_id": "ev-1",
    }
    assert am["startsAt"] == "2024-05-01T11:59:30.250Z"
    assert am["endsAt"] == "2024-05-01T13:00:00.000Z"
    assert all(isinstance(v, str) for v in am["labels"].values())


def test_an_alert_raised_late_says_so_and_when_it_was_detected() -> None:
    """Its startsAt is the mail's event time, hours before: the annotations say it came late, and
    detected_at, from which the breach clocks run (docs/runbooks/README.md)."""
    am = to_alertmanager(alert(late=True, detected_at="2024-05-01T11:59:31.000Z"), NOW, 3600)
    assert am["annotations"]["late"] == "true"
    assert am["annotations"]["detected_at"] == "2024-05-01T11:59:31.000Z"
    assert am["startsAt"] == "2024-05-01T11:59:30.250Z"
    assert "late" not in to_alertmanager(alert(), NOW, 3600)["annotations"]


def test_mapping_null_brand_bad_or_future_times() -> None:
    am = to_alertmanager(alert(brand=None, event_time="nonsense"), NOW, 60)
    assert am["labels"]["brand"] == "unknown"
    assert am["startsAt"] == "2024-05-01T11:59:31.000Z"  # detected_at
    am = to_alertmanager(alert(event_time="2024-05-01t14:00:00+02:00"), NOW, 60)
    assert am["startsAt"] == "2024-05-01T12:00:00.000Z"
    am = to_alertmanager(alert(event_time="2024-05-02T00:00:00Z"), NOW, 60)  # future: clamp to now
    assert am["startsAt"] == "2024-05-01T12:00:00.000Z"
    with pytest.raises(ValueError):
        to_alertmanager({"kind": "re_port"}, NOW, 60)


def test_dedup_resend_and_expiry() -> None:
    fw = Forwarder("http://127.0.0.1:1/", resend_interval=60, resolve_after=300)
    assert fw.url == "http://127.0.0.1:1/api/v2/alerts"
    first = fw.handle(alert(), NOW)
    assert len(first) == 1
    assert fw.handle(alert(), NOW + 5) == []  # same dedup_key, another alert_id: one alert
    assert len(fw.handle(alert("re_port:ffffffffffffffffffff"), NOW + 10)) == 1
    assert fw.due_resends(NOW + 30) == []
    resent = fw.due_resends(NOW + 60)
    assert [a["labels"]["dedup_key"] for a in resent] == [
        "recipient_previous_holder:0123456789abcdef0123",
        "re_port:ffffffffffffffffffff",
    ]
    assert resent[0] == first[0]  # same endsAt: the alert resolves resolve_after after first seen
    assert fw.due_resends(NOW + 61) == []
    assert len(fw.due_resends(NOW + 305)) == 1  # the first expired
    assert fw.due_resends(NOW + 400) == []
    assert fw.active == {}
    assert len(fw.handle(alert(), NOW + 500)) == 1  # after resolution a new occurrence fires again


def retraction(dedup_key: str = "recipient_previous_holder:0123456789abcdef0123", **over: Any) -> dict[str, Any]:
    kind = dedup_key.split(":")[0]
    reason = f"{kind} on +49176******78 withdrawn: input that arrived late (1 event(s)) changed the verdict"
    rec = alert(
        dedup_key,
        status="retracted",
        brand=None,
        template=None,
        sender=None,
        summary=reason,
        reason=reason,
        retracted_by=["late-1"],
        late=True,
        detected_at="2024-05-01T12:00:05Z",
    )
    rec.update(over)
    return rec


def test_a_retraction_resolves_its_alert_at_once_and_says_why() -> None:
    fw = Forwarder("http://127.0.0.1:1/", resend_interval=60, resolve_after=300)
    (firing,) = fw.handle(alert(), NOW)
    (resolved,) = fw.handle(retraction(), NOW + 10)
    assert resolved["labels"] == firing["labels"]  # brand "o2" as posted, though the retraction has none
    assert resolved["startsAt"] == firing["startsAt"]
    assert resolved["endsAt"] == "2024-05-01T12:00:10.000Z"  # now: resolved at once
    assert resolved["annotations"]["retracted"].startswith("recipient_previous_holder on +49176******78 withdrawn")
    assert resolved["annotations"]["retracted_by"] == "late-1"
    assert resolved["annotations"]["trigger_event_id"] == "ev-1"
    assert fw.active == {} and fw.due_resends(NOW + 60) == []  # not re-sent (re-opened) any more
    assert len(fw.handle(alert(), NOW + 20)) == 1  # raised again later: fires again


def test_a_retraction_of_an_alert_posted_before_a_restart_takes_its_labels_from_alertmanager() -> None:
    fw = Forwarder("http://127.0.0.1:1/", resend_interval=60, resolve_after=300)
    held = to_alertmanager(alert(), NOW - 100, 300)
    asked: list[str] = []
    fw.firing_in_alertmanager = lambda key: asked.append(key) or [held]  # type: ignore[method-assign]
    (resolved,) = fw.handle(retraction(), NOW)
    assert asked == ["recipient_previous_holder:0123456789abcdef0123"]
    assert resolved["labels"] == held["labels"] and resolved["endsAt"] == "2024-05-01T12:00:00.000Z"
    fw.firing_in_alertmanager = lambda key: []  # type: ignore[method-assign]
    assert fw.handle(retraction(), NOW) == []  # Alertmanager has none (resolved already): nothing to do


def test_cli_parses_forward_alerts() -> None:
    a = build_parser().parse_args(["forward-alerts", "--bootstrap", "127.0.0.1:1"])
    assert (a.alertmanager, a.group, a.resend_interval, a.resolve_after, a.config) == (
        "http://127.0.0.1:9093",
        "notifguard-forwarder",
        60.0,
        3600.0,
        None,
    )


def test_cli_exits_2_without_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    import streams.topics
    from streams.cli import main

    seen: list[str] = []
    monkeypatch.setattr(streams.topics, "wait_for_broker", lambda b, timeout=30, **_: seen.append(b) and False)
    assert main(["forward-alerts", "--bootstrap", "127.0.0.1:1"]) == 2
    assert seen == ["127.0.0.1:1"]


# --- a real Alertmanager ----------------------------------------------------------------------


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


@pytest.fixture()
def alertmanager(tmp_path: Path, services: list[Service]) -> str:  # noqa: F811
    binary = tool("alertmanager")
    port = free_port()
    (tmp_path / "am.yml").write_text("route:\n  receiver: 'null'\nreceivers:\n  - name: 'null'\n")
    svc = Service(
        "alertmanager",
        [
            binary,
            f"--config.file={tmp_path / 'am.yml'}",
            f"--storage.path={tmp_path / 'am-data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        tmp_path / "alertmanager.log",
    )
    services.append(svc)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _get_json(f"{url}/api/v2/status"), 30, what="alertmanager")
    except TimeoutError:
        pytest.fail(svc.tail())
    return url


@pytest.mark.prometheus
def test_forwarder_against_real_alertmanager(alertmanager: str) -> None:
    fw = Forwarder(alertmanager, resend_interval=1, resolve_after=600)
    assert fw.ready()
    now = time.time()
    fw.post(fw.handle(alert(), now))
    fw.post(fw.handle(alert(), now + 0.1))
    fw.post(fw.handle(alert("re_port:ffffffffffffffffffff", severity="warning", brand=None), now + 0.2))
    # What Alertmanager already has, re-sent: still the same two alerts.
    fw.post(fw.due_resends(now + 2))
    # The raw records twice in one POST: Alertmanager itself merges equal label sets too.
    fw.post([to_alertmanager(alert(), now, 600)] * 2)

    got = wait_for(
        lambda: (lambda a: a if len(a) >= 2 else None)(_get_json(f"{alertmanager}/api/v2/alerts")),
        10,
        what="alerts in alertmanager",
    )
    time.sleep(0.5)
    got = _get_json(f"{alertmanager}/api/v2/alerts")
    assert len(got) == 2, got
    by_key = {a["labels"]["dedup_key"]: a for a in got}
    prev = by_key["recipient_previous_holder:0123456789abcdef0123"]
    assert prev["labels"] == {
        "alertname": "recipient_previous_holder",
        "severity": "critical",
        "brand": "o2",
        "dedup_key": "recipient_previous_holder:0123456789abcdef0123",
        "service": "notifguard",
    }
    assert prev["annotations"]["summary"] == "recipient_previous_holder: contract info sent to previous holder"
    assert prev["annotations"]["runbook_url"] == "https://runbooks.invalid/recipient_previous_holder"
    assert prev["annotations"]["trigger_event_id"] == "ev-1"
    assert prev["status"]["state"] == "active"
    assert prev["startsAt"].startswith("2024-05-01T11:59:30.25")
    rp = by_key["re_port:ffffffffffffffffffff"]
    assert rp["labels"]["alertname"] == "re_port"
    assert rp["labels"]["severity"] == "warning"
    assert rp["labels"]["brand"] == "unknown"


@pytest.mark.prometheus
def test_a_retraction_resolves_the_alert_in_a_real_alertmanager(alertmanager: str) -> None:
    fw = Forwarder(alertmanager, resend_interval=1, resolve_after=600)
    now = time.time()
    other = "re_port:ffffffffffffffffffff"
    fw.post(fw.handle(alert(), now) + fw.handle(alert(other, severity="info"), now))
    wait_for(lambda: len(_get_json(f"{alertmanager}/api/v2/alerts")) == 2 or None, 10, what="two alerts")
    posted = fw.handle(retraction(), time.time())
    assert posted[0]["annotations"]["retracted"].endswith("changed the verdict")
    fw.post(posted)
    # a restarted forwarder: the retraction's alert is found in Alertmanager by its dedup_key
    fresh = Forwarder(alertmanager, resend_interval=1, resolve_after=600)
    fresh.post(fresh.handle(retraction(other), time.time()))

    def gone() -> bool | None:
        return _get_json(f"{alertmanager}/api/v2/alerts") == [] or None

    wait_for(gone, 10, what="both alerts resolved")
    assert fresh.firing_in_alertmanager(other) == []


@pytest.mark.prometheus
def test_post_failure_raises_oserror() -> None:
    fw = Forwarder(f"http://127.0.0.1:{free_port()}", timeout=2)
    assert not fw.ready()
    with pytest.raises(OSError):
        fw.post([to_alertmanager(alert(), NOW, 60)])


# --- a real broker ----------------------------------------------------------------------------


@pytest.mark.kafka
@pytest.mark.slow
def test_forward_loop_consumes_posts_and_commits(tmp_path: Path) -> None:
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    from tests.streams.kafka_harness import KafkaRun, require_broker

    krun = KafkaRun(require_broker(), tmp_path, partitions=1)
    posted: list[list[dict[str, Any]]] = []
    failures = [1]  # the first POST fails: nothing may be committed before the retry succeeds

    class Recording(Forwarder):
        def post(self, batch: list[dict[str, Any]]) -> None:
            if failures[0]:
                failures[0] -= 1
                raise ConnectionRefusedError("alertmanager down")
            posted.append(batch)

    group = f"{krun.app_id}-forwarder"
    consumer = KafkaConsumer(
        krun.topics.alerts,
        bootstrap_servers=krun.bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    stop = threading.Event()
    thread = threading.Thread(target=run, args=(consumer, Recording("http://unused", 3600, 600), stop, 200))
    try:
        producer = KafkaProducer(bootstrap_servers=krun.bootstrap, acks="all")
        for rec in [alert(), alert(), alert("re_port:ffffffffffffffffffff")]:
            producer.send(krun.topics.alerts, key=rec["dedup_key"].encode(), value=json.dumps(rec).encode())
        producer.send(krun.topics.alerts, key=b"garbage", value=b"not json")  # compacted: needs a key
        producer.flush()
        producer.close()
        thread.start()

        def done() -> bool:
            keys = [a["labels"]["dedup_key"] for batch in posted for a in batch]
            return sorted(keys) == ["re_port:ffffffffffffffffffff", "recipient_previous_holder:0123456789abcdef0123"]

        wait_for(done, 60, what="both alerts posted once")
        # Another (unsubscribed) client of the group reads what the forwarder committed.
        probe = KafkaConsumer(bootstrap_servers=krun.bootstrap, group_id=group, enable_auto_commit=False)
        try:
            tp = TopicPartition(krun.topics.alerts, 0)
            wait_for(lambda: probe.committed(tp) == 4, 20, what="offsets committed")
        finally:
            probe.close()
    finally:
        stop.set()
        thread.join(timeout=10)
        consumer.close()
        krun.close()
    assert not thread.is_alive()
