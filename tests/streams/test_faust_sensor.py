"""streams.faust_sensor without a broker: what each hook records (the real-broker check is in
tests/deploy/test_worker_scrape.py::test_faust_runtime_metrics_count_what_the_worker_did)."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from detectors.settings import Topics
from streams.faust_sensor import (
    LATENCY_SAMPLE,
    FaustMetrics,
    NotifguardSensor,
    _InstrumentedProducer,
    _RecoveryCollector,
)

OUT = ("notifguard.alerts", "notifguard.deadletter")


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


@pytest.fixture()
def reg() -> CollectorRegistry:
    return CollectorRegistry()


def test_label_sets_are_pre_initialised(reg: CollectorRegistry) -> None:
    FaustMetrics(reg, OUT)
    for topic in OUT:
        assert sample(reg, "notifguard_records_produced_total", topic=topic) == 0
        assert sample(reg, "notifguard_produce_errors_total", topic=topic) == 0
    for phase in ("rejoined", "recovered"):
        assert sample(reg, "notifguard_rebalance_seconds_count", phase=phase) == 0
    for result in ("completed", "error"):
        assert sample(reg, "notifguard_partition_assignments_total", result=result) == 0


def test_commit_rebalance_and_assignment_hooks(reg: CollectorRegistry) -> None:
    s = NotifguardSensor(FaustMetrics(reg, OUT))
    state = s.on_commit_initiated(None)
    s.on_commit_completed(None, state)
    assert sample(reg, "notifguard_offset_commits_total") == 1
    assert sample(reg, "notifguard_offset_commit_seconds_count") == 1
    rebalance = s.on_rebalance_start(None)  # type: ignore[arg-type]
    s.on_rebalance_return(None, rebalance)
    s.on_rebalance_end(None, rebalance)
    s.on_rebalance_end(None, {})  # Faust passes no state when it lost track: not counted
    assert sample(reg, "notifguard_rebalance_seconds_count", phase="rejoined") == 1
    assert sample(reg, "notifguard_rebalance_seconds_count", phase="recovered") == 1
    s.on_assignment_completed(None, {})  # type: ignore[arg-type]
    s.on_assignment_error(None, {}, RuntimeError("x"))  # type: ignore[arg-type]
    assert sample(reg, "notifguard_partition_assignments_total", result="completed") == 1
    assert sample(reg, "notifguard_partition_assignments_total", result="error") == 1


def test_produce_outcomes_are_counted_at_the_next_send_or_scrape(
    reg: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    s = NotifguardSensor(FaustMetrics(reg, OUT))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        futs = [loop.create_future() for _ in range(LATENCY_SAMPLE * 2)]
        for f in futs:
            s.produce_sent(OUT[0], f)
        assert sample(reg, "notifguard_records_produced_total", topic=OUT[0]) == 0  # in flight
        failed, cancelled, stuck = loop.create_future(), loop.create_future(), loop.create_future()
        s.produce_sent(OUT[1], failed)
        s.produce_sent("other-topic", cancelled)
        s.produce_sent(OUT[1], stuck)
        for f in futs:
            f.set_result(object())
        failed.set_exception(RuntimeError("broker said no"))
        cancelled.cancel()
        await asyncio.sleep(0)  # the sampled latency callbacks run

    with caplog.at_level(logging.ERROR, logger="notifguard.faust"):
        asyncio.run(main())
        # a scrape sweeps what is done (before the counters are collected), not what is in flight
        assert sample(reg, "notifguard_records_produced_total", topic=OUT[0]) == LATENCY_SAMPLE * 2
    assert sample(reg, "notifguard_produce_seconds_count") == 2  # one in LATENCY_SAMPLE timed
    assert sample(reg, "notifguard_produce_errors_total", topic=OUT[1]) == 1
    assert sample(reg, "notifguard_produce_errors_total", topic="other-topic") == 1
    assert sample(reg, "notifguard_records_produced_total", topic=OUT[1]) == 0  # the stuck one
    assert "broker said no" in caplog.text  # the sensor retrieved the exception, so it logs it
    s.produce_failed(OUT[0])  # send() itself raised
    assert sample(reg, "notifguard_produce_errors_total", topic=OUT[0]) == 1


def test_recovery_remaining_counts_only_what_is_left(reg: CollectorRegistry) -> None:
    recovery = SimpleNamespace(
        active_remaining=lambda: Counter({"a": 5, "b": -3}), standby_remaining=lambda: Counter({"c": 2})
    )
    app: Any = SimpleNamespace(tables=SimpleNamespace(_recovery=recovery))
    reg.register(_RecoveryCollector(app))
    assert sample(reg, "notifguard_table_recovery_remaining_records", role="active") == 5
    assert sample(reg, "notifguard_table_recovery_remaining_records", role="standby") == 2
    app.tables._recovery = None  # not started yet
    assert sample(reg, "notifguard_table_recovery_remaining_records", role="active") == 0


def test_install_gives_the_app_the_sensor_and_the_reporting_producer() -> None:
    from streams.config import load_worker_config
    from streams.worker import create_app

    app = create_app(load_worker_config(None, env={}))
    sensors = [s for s in app.sensors if isinstance(s, NotifguardSensor)]
    assert len(sensors) == 1
    assert isinstance(app.producer, _InstrumentedProducer)
    text = app.notifguard.metrics.exposition().decode()  # type: ignore[attr-defined]
    assert f'notifguard_records_produced_total{{topic="{Topics().alerts}"}} 0.0' in text
    assert 'notifguard_table_recovery_remaining_records{role="active"} 0.0' in text
