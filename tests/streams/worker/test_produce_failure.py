"""A send the broker refuses stops the worker before it acks the records behind it (real broker).

The alerts topic is made to refuse every alert (max.message.bytes below an
alert's size): the worker must crash instead of committing the offsets of the
records whose alerts were lost; once the topic accepts them again, a restarted
worker re-reads those records and delivers exactly the offline alerts.
"""

from __future__ import annotations

import time

import pytest

from streams.scenarios import load
from tests.streams.kafka_harness import ROOT, KafkaRun, keys, require_broker
from tests.streams.worker.test_kafka import offline, shifted

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
DAY_US = 86_400_000_000


def _set_max_message_bytes(bootstrap: str, topic: str, value: int) -> None:
    from kafka.admin import ConfigResource, ConfigResourceType

    from streams.topics import _admin

    admin = _admin(bootstrap)
    try:
        admin.alter_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic, configs={"max.message.bytes": str(value)})]
        )
    finally:
        admin.close()


def test_a_refused_alert_stops_the_worker_and_is_delivered_after_restart(tmp_path):
    run = KafkaRun(require_broker(), tmp_path)
    try:
        scenario = load(ROOT / "scenarios" / "motivating_re_port_leak.toml")
        envs = list(scenario.envelopes())
        # into the recent past, as the other broker tests (brokers refuse far-future timestamps)
        newest = max(e.ts for e in envs if e.ts is not None) * 1000
        envs = [shifted(e, time.time_ns() // 1000 - 30 * DAY_US - newest) for e in envs]
        expected = keys(offline(envs, tmp_path))
        assert expected, "the scenario raises alerts"

        _set_max_message_bytes(run.bootstrap, run.topics.alerts, 64)  # an alert is ~1 KB
        run.produce(envs)
        port = run.start_worker(wait=False)
        proc, _, log = run.workers[-1]
        deadline = time.monotonic() + 90
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        text = log.read_text()
        assert proc.poll() is not None, f"the worker kept running after a failed send:\n{text[-3000:]}"
        assert "producer sends failed" in text, text[-3000:]
        assert run.alerts(lambda a: False, timeout=2) == []  # nothing got through

        _set_max_message_bytes(run.bootstrap, run.topics.alerts, 1_048_588)  # Kafka's default
        port = run.start_worker()
        got = run.alerts(lambda a: keys(a) >= expected, timeout=90)
        assert keys(got) == expected
        assert run.health(port).get("ready")
    finally:
        run.close()
