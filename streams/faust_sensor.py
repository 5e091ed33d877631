"""Faust's own runtime signals as `notifguard_` metrics (docs/metrics.md, "Faust runtime").

Faust's Prometheus sensor names its metrics after the app, in milliseconds,
with unbounded labels and counters without `_total`; this sensor keeps the
part an SRE needs under our conventions, in the worker's registry:

- offset commits: how often and how long (a commit waits for the producer,
  so a slow broker shows here first);
- records produced per output topic, produce errors, and the time from
  handing a record to the producer to the broker's ack;
- rebalances: how long until the consumer rejoined and until it was
  recovered and processing again; partition-assignment failures;
- changelog records still to be read by table recovery.

The worker produces with `app.producer.send` and drains its inputs in
batches (streams.seams.BatchConsumer), so Faust's send, message and stream
hooks never fire for it; `install` therefore gives the transport a producer
that reports every send itself (`_InstrumentedProducer`), and the per-event
hooks are not exported at all (they would always read 0).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

import faust
from faust.sensors import Sensor
from faust.transport.drivers import aiokafka as _aiokafka_driver
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from detectors.settings import Topics
from streams import seams

log = logging.getLogger("notifguard.faust")

_COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_PRODUCE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_REBALANCE_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
# Phases of a rebalance (label `phase`): the consumer has rejoined the group
# and got its partitions; the tables are recovered and records flow again.
PHASES = ("rejoined", "recovered")
ASSIGNMENT_RESULTS = ("completed", "error")
RECOVERY_ROLES = ("active", "standby")
LATENCY_SAMPLE = 8  # one send in 8 is timed (notifguard_produce_seconds); all are counted


class FaustMetrics:
    """The metric objects, registered in the worker's registry (streams.metrics.Metrics.registry)."""

    def __init__(self, registry: CollectorRegistry, output_topics: Iterable[str]) -> None:
        r = registry
        self.sweeper = _Sweeper()
        r.register(self.sweeper)
        self.commits = Counter("notifguard_offset_commits", "Offset commit rounds of the consumer", registry=r)
        self.commit_seconds = Histogram(
            "notifguard_offset_commit_seconds",
            "Duration of an offset commit round (producer flush included)",
            buckets=_COMMIT_BUCKETS,
            registry=r,
        )
        self.produced = Counter(
            "notifguard_records_produced", "Records acknowledged by the broker", ["topic"], registry=r
        )
        self.produce_errors = Counter(
            "notifguard_produce_errors", "Records the producer failed to deliver", ["topic"], registry=r
        )
        self.produce_seconds = Histogram(
            "notifguard_produce_seconds",
            f"Handing a record to the producer to the broker's ack (1 in {LATENCY_SAMPLE} records)",
            buckets=_PRODUCE_BUCKETS,
            registry=r,
        )
        self.rebalance_seconds = Histogram(
            "notifguard_rebalance_seconds",
            "Rebalance start to the consumer rejoined / to recovered",
            ["phase"],
            buckets=_REBALANCE_BUCKETS,
            registry=r,
        )
        self.assignments = Counter(
            "notifguard_partition_assignments",
            "Partition assignments computed by this worker as group leader",
            ["result"],
            registry=r,
        )
        for topic in output_topics:
            self.produced.labels(topic)
            self.produce_errors.labels(topic)
        for phase in PHASES:
            self.rebalance_seconds.labels(phase)
        for result in ASSIGNMENT_RESULTS:
            self.assignments.labels(result)


class _RecoveryCollector(Collector):
    """Changelog records table recovery still has to read, computed at scrape time."""

    def __init__(self, app: faust.App) -> None:
        self.app = app

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "notifguard_table_recovery_remaining_records",
            "Changelog records table recovery has still to read",
            labels=["role"],
        )
        remaining = {role: 0 for role in RECOVERY_ROLES}
        recovery = seams.table_recovery(self.app)
        if recovery is not None:
            # per partition: highwater at recovery start minus the offset read, negative once past it
            remaining["active"] = sum(max(0, int(n)) for n in recovery.active_remaining().values())
            remaining["standby"] = sum(max(0, int(n)) for n in recovery.standby_remaining().values())
        for role in RECOVERY_ROLES:
            family.add_metric([role], remaining[role])
        yield family


class NotifguardSensor(Sensor):
    """The Faust hooks that fire in this worker, recorded as FaustMetrics."""

    def __init__(self, metrics: FaustMetrics, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.metrics = metrics
        self._per_topic: dict[str, tuple[Any, Any]] = {}  # topic -> (produced, errors) children
        self._pending: deque[tuple[str, asyncio.Future[Any]]] = deque()  # sends in flight, oldest first
        self._sends = 0
        metrics.sweeper.sensor = self

    def on_commit_initiated(self, consumer: Any) -> Any:
        return time.monotonic()

    def on_commit_completed(self, consumer: Any, state: Any) -> None:
        self.metrics.commits.inc()
        if isinstance(state, float):
            self.metrics.commit_seconds.observe(time.monotonic() - state)

    def on_rebalance_return(self, app: Any, state: dict[str, Any]) -> None:
        self._rebalance_phase("rejoined", state)

    def on_rebalance_end(self, app: Any, state: dict[str, Any]) -> None:
        self._rebalance_phase("recovered", state)

    def _rebalance_phase(self, phase: str, state: dict[str, Any]) -> None:
        started = state.get("time_start") if state else None
        if isinstance(started, float):
            self.metrics.rebalance_seconds.labels(phase).observe(time.monotonic() - started)

    def on_assignment_completed(self, assignor: Any, state: dict[str, Any]) -> None:
        self.metrics.assignments.labels("completed").inc()

    def on_assignment_error(self, assignor: Any, state: dict[str, Any], exc: BaseException) -> None:
        self.metrics.assignments.labels("error").inc()

    # Not Faust hooks: called by _InstrumentedProducer for every record, whichever way it was sent.
    # A done-callback on every send's future costs ~5 us of CPU per record (the event loop's
    # scheduling, mostly), so outcomes are collected by sweeping the futures that are done,
    # oldest first, on each send and at each scrape; only one send in LATENCY_SAMPLE gets a
    # callback, for the latency histogram.

    def _topic_metrics(self, topic: str) -> tuple[Any, Any]:
        children = self._per_topic.get(topic)
        if children is None:
            m = self.metrics
            children = self._per_topic[topic] = (m.produced.labels(topic), m.produce_errors.labels(topic))
        return children

    def produce_sent(self, topic: str, fut: asyncio.Future[Any]) -> None:
        pending = self._pending
        pending.append((topic, fut))
        if pending[0][1].done():
            self.sweep()
        self._sends += 1
        if self._sends % LATENCY_SAMPLE == 0:
            started = time.monotonic()
            fut.add_done_callback(lambda f: self._latency(started, f))

    def sweep(self) -> None:
        """Count the sends whose outcome is known, oldest first, up to the first still in flight."""
        pending = self._pending
        while pending and pending[0][1].done():
            topic, fut = pending.popleft()
            produced, errors = self._topic_metrics(topic)
            if fut.cancelled():
                errors.inc()
                continue
            exc = fut.exception()  # retrieved here, so logged here: nothing else looks at it
            if exc is not None:
                errors.inc()
                log.error("producing to %s failed: %r", topic, exc)
            else:
                produced.inc()

    def _latency(self, started: float, fut: asyncio.Future[Any]) -> None:
        if not fut.cancelled() and fut.exception() is None:
            self.metrics.produce_seconds.observe(time.monotonic() - started)

    def produce_failed(self, topic: str) -> None:
        self._topic_metrics(topic)[1].inc()


class _Sweeper(Collector):
    """Registered before the produce counters, so that a scrape sees every send done by then."""

    def __init__(self) -> None:
        self.sensor: NotifguardSensor | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        if self.sensor is not None:
            self.sensor.sweep()
        return iter(())


class _InstrumentedProducer(_aiokafka_driver.Producer):
    """Faust's aiokafka producer, reporting each send to the app's NotifguardSensor."""

    _sensor: NotifguardSensor | None = None

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None,
        timestamp: float | None,
        headers: Any,
        *,
        transactional_id: str | None = None,
    ) -> Any:
        sensor = self._sensor
        if sensor is None:
            found = [s for s in self.app.sensors if isinstance(s, NotifguardSensor)]
            sensor = self._sensor = found[0] if found else None
            if sensor is None:  # pragma: no cover - install() adds both
                return await super().send(
                    topic, key, value, partition, timestamp, headers, transactional_id=transactional_id
                )
        try:
            fut = await super().send(
                topic, key, value, partition, timestamp, headers, transactional_id=transactional_id
            )
        except BaseException:
            sensor.produce_failed(topic)
            raise
        sensor.produce_sent(topic, fut)  # type: ignore[arg-type]
        return fut


def install(app: faust.App, registry: CollectorRegistry, topics: Topics) -> NotifguardSensor:
    """Register the sensor, its metrics in `registry`, and the reporting producer; before the app starts."""
    outputs = [topics.alerts, topics.deadletter]
    outputs += [table.changelog_topic.get_topic_name() for table in app.tables.values()]
    sensor = NotifguardSensor(FaustMetrics(registry, outputs))
    app.sensors.add(sensor)
    registry.register(_RecoveryCollector(app))
    transport: Any = app.transport
    if seams.producer_created(app):  # the producer must not exist yet
        raise RuntimeError("install() must run before app.producer is created")
    if not issubclass(_InstrumentedProducer, transport.Producer):
        raise RuntimeError(f"unexpected producer class {transport.Producer!r}")
    transport.Producer = _InstrumentedProducer
    return sensor
