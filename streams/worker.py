"""The Faust application: the pure engine on Kafka, with its state in changelog-backed tables.

`create_app(config)` builds everything and starts nothing (no import-time side
effects); `notifguard worker` runs it. One agent reads the three co-partitioned
input topics (concurrency 1), merges each partition's topics in event-time
order while catching up (streams.merge), feeds the engine, and holds each
record's Kafka ack until the engine has released it from its grace buffer and
the state it changed is flushed to the changelog: a crash re-reads exactly
what was not done, and the engine's event-id dedup absorbs the rest.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import time
import traceback
import uuid
from typing import Any

import faust
import msgspec
from faust.types import TP

from detectors.alerts import encode_alert
from detectors.engine import Engine
from detectors.privacy import Pseudonymiser
from detectors.settings import Settings
from streams.config import WorkerConfig
from streams.merge import Merger
from streams.metrics import Metrics
from streams.replay_offline import alert_line
from streams.tablestore import TableLinks, TableNumbers

log = logging.getLogger("notifguard.worker")
_json = msgspec.json.Encoder()
_RAW: dict[str, Any] = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}


def _now_us() -> int:
    return time.time_ns() // 1000


class Runtime:
    """Everything the agent and the timers share; one per worker process."""

    def __init__(self, app: faust.App, config: WorkerConfig, numbers_table: Any, links_table: Any) -> None:
        from detectors.state import AddressIndex

        self.app = app
        self.config = config
        rules: Settings = config.rules
        self.topics = rules.topics
        self.inputs = (rules.topics.changes, rules.topics.outbound, rules.topics.delivery)
        self.numbers = TableNumbers(numbers_table)
        self.links = TableLinks(links_table, config.partitions)
        self.engine = Engine(rules, new_id=lambda: uuid.uuid4().hex, numbers=self.numbers,
                             index=AddressIndex(self.links))  # type: ignore[arg-type]
        self.pseudo = Pseudonymiser(rules.pseudonymisation_key.reveal().encode())
        self.merger = Merger(self.inputs)
        self.metrics = Metrics(rules.topics)
        self.grace_us = rules.us(rules.grace_s)
        self.numbers_changelog = numbers_table.changelog_topic.get_topic_name()
        self.links_changelog = links_table.changelog_topic.get_topic_name()
        # records to produce at the next flush: (topic, key, value, partition or None)
        self.out: list[tuple[str, bytes, bytes | None, int | None]] = []
        # acks held until the engine releases the record: per partition (event time, seq, event)
        self.held: dict[int, list[tuple[int, int, Any]]] = {}
        self.to_ack: list[Any] = []
        self.seq = 0
        self.paused: set[TP] = set()
        self.last_flush = time.monotonic()
        self.echo = False  # print alerts as readable lines (the demo)
        self.started = False
        self._read: dict[tuple[str, int], int] = {}  # last offset read per input topic-partition
        self._assigned: set[TP] = set()
        self._assigned_at = time.monotonic()
        self._last_seen: dict[TP, float] = {}

    # ----------------------------------------------------------------- records

    def on_events(self, events: list[Any]) -> None:
        """A batch from the stream: each record's Kafka ack is ours to give (incref)."""
        partitions = set()
        consumed = self.metrics.consumed
        for event in events:
            msg = event.message
            msg.incref()  # held until processed, released and flushed (see flush)
            consumed.labels(msg.topic).inc()
            self._last_seen[msg.tp] = time.monotonic()
            ts = msg.timestamp if msg.timestamp is not None else 0
            self.merger.push(msg.topic, msg.partition, int(ts * 1000), event)
            partitions.add(msg.partition)
        for p in partitions:
            self._run_partition(p)
        self._pause_overfull()

    def flush_due(self) -> bool:
        return time.monotonic() - self.last_flush >= self.config.flush_interval_s

    def _lagging(self, topic: str, partition: int) -> bool:
        """May this input topic-partition still deliver records older than what is queued?

        Yes while Kafka holds records past what we read (highwater), or we do
        not know yet (not fetched) - but for at most merge_wait_s since it
        last delivered anything, so a topic with nothing to say blocks nobody.
        """
        tp = TP(topic, partition)
        now = time.monotonic()
        if now - self._last_seen.get(tp, self._assigned_at) > self.config.merge_wait_s:
            return False
        try:
            highwater = self.app.consumer.highwater(tp)
        except Exception:
            highwater = None
        if highwater is None or highwater < 0:
            return True
        last = self._read.get((topic, partition))
        if last is None:
            committed = getattr(self.app.consumer, "_committed_offset", {}).get(tp)
            return bool(highwater > (committed or 0))
        return bool(highwater > last + 1)

    def _run_partition(self, partition: int) -> None:
        for event in self.merger.ready(partition, self._lagging):
            self._process(event)

    def _process(self, event: Any) -> None:
        msg = event.message
        p = msg.partition
        self._read[(msg.topic, p)] = msg.offset
        key = msg.key
        if isinstance(key, bytes):
            with contextlib.suppress(UnicodeDecodeError):
                self.numbers.partition_of[self.pseudo.msisdn_ref(key.decode())] = p
        engine = self.engine
        started = time.perf_counter()
        try:
            engine.process(msg.topic, p, msg.offset, key, msg.value, _now_us(),
                           int(msg.timestamp * 1000) if msg.timestamp is not None else None)
        except Exception:
            # Not bad input (that is dead-lettered by the engine): a bug. Loud, counted,
            # and the record is not acknowledged as processed silently: it is dead-lettered
            # with the traceback so nothing is lost, and the worker goes on.
            self.metrics.errors.labels(msg.topic).inc()
            log.exception("BUG while processing %s[%s]@%s", msg.topic, p, msg.offset)
            self._bug_letter(msg, traceback.format_exc(limit=3))
            self.to_ack.append(event)
            return
        self.metrics.processing.observe(time.perf_counter() - started)
        if engine.last_buffered is not None:
            self.seq += 1
            heapq.heappush(self.held.setdefault(p, []), (engine.last_buffered, self.seq, event))
        else:
            self.to_ack.append(event)
        self._release_held(p)
        self._emit()

    def _release_held(self, partition: int) -> None:
        held = self.held.get(partition)
        ps = self.engine.partitions.get(partition)
        if not held or ps is None or ps.watermark is None:
            return
        limit = ps.watermark - self.grace_us
        while held and held[0][0] < limit:
            self.to_ack.append(heapq.heappop(held)[2])

    def _emit(self) -> None:
        alerts, dead, verdicts = self.engine.drain()
        out = self.out
        for a in alerts:
            out.append((self.topics.alerts, a.dedup_key.encode(), encode_alert(a), None))
            if self.echo:
                print(alert_line(a), flush=True)
        for d in dead:
            self.metrics.deadletters.labels(d.source_topic, d.reason_code).inc()
            out.append((self.topics.deadletter, (d.key or "").encode(), _json.encode(d), None))
        if verdicts:
            self.metrics.observe_verdicts(verdicts)
            now = time.time()
            for v in verdicts:
                if not v.late:
                    self.metrics.verdict_delay.observe(max(0.0, now - v.event_time / 1e6))

    def _bug_letter(self, msg: Any, trace: str) -> None:
        from detectors.engine import DeadLetter, _encode_bytes
        from detectors.timefmt import rfc3339

        k, k_enc = _encode_bytes(msg.key)
        v, v_enc = _encode_bytes(msg.value)
        letter = DeadLetter(msg.topic, msg.partition, msg.offset, None, k, k_enc, v, v_enc,
                            f"internal error (a bug, reported): {trace.splitlines()[-1]}", "processing_error",
                            rfc3339(_now_us()))
        self.out.append((self.topics.deadletter, (k or "").encode(), _json.encode(letter), None))

    # ------------------------------------------------------------ flush & acks

    async def flush(self) -> None:
        """State and outputs to the producer first, then the acks of the records they came from.

        Faust flushes the producer before it commits offsets, so a committed
        offset never runs ahead of the changelog and alerts it caused.
        """
        send = self.app.producer.send
        for partition, key, value in self.numbers.flush():
            await send(self.numbers_changelog, key, value, partition, None, None)
        for partition, key, value in self.links.flush():
            await send(self.links_changelog, key, value, partition, None, None)
        out, self.out = self.out, []
        for topic, key, value, maybe_partition in out:
            await send(topic, key, value, maybe_partition, None, None)
        consumer = self.app.consumer
        for event in self.to_ack:
            event.message.ack(consumer)
        self.to_ack.clear()
        self.last_flush = time.monotonic()

    async def tick(self) -> None:
        """Wall-clock timer: idle partitions move on, queued partitions retry, gauges refresh."""
        for p in list(self.merger.partitions()):
            self._run_partition(p)
        self.engine.tick(_now_us())
        for p in list(self.held):
            self._release_held(p)
        self._emit()
        await self.flush()
        self._pause_overfull()
        now = _now_us()
        m = self.metrics
        m.sync_stats(self.engine.stats)
        m.pending.set(self.engine.pending_count() + self.merger.queued)
        for p, ps in self.engine.partitions.items():
            if ps.watermark is not None:
                m.watermark_lag.labels(str(p)).set(max(0.0, (now - ps.watermark) / 1e6))
        m.tracked.set(len(self.numbers.cache))
        m.ready.set(1 if self.is_ready() else 0)

    def _pause_overfull(self) -> None:
        over = {TP(t, p) for t, p in self.merger.over_limit()}
        consumer = self.app.consumer
        if over - self.paused:
            consumer.pause_partitions(over - self.paused)
        if self.paused - over:
            consumer.resume_partitions(self.paused - over)
        self.paused = over

    # --------------------------------------------------------------- rebalance

    async def on_revoked(self, revoked: set[TP]) -> None:
        partitions = {tp.partition for tp in revoked if tp.topic in self.inputs}
        await self.flush()
        for p in partitions:
            self.merger.forget(p)
            self.held.pop(p, None)
            self.engine.partitions.pop(p, None)
        self.numbers.forget_partitions(partitions)
        self.to_ack.clear()
        self.metrics.rebalances.inc()

    def on_assigned(self, assigned: set[TP]) -> None:
        self._assigned = {tp for tp in assigned if tp.topic in self.inputs}
        self._assigned_at = time.monotonic()
        self._last_seen.clear()
        self._read = {k: v for k, v in self._read.items() if TP(*k) in self._assigned}

    def is_ready(self) -> bool:
        app = self.app
        return bool(self.started and not app.rebalancing and not getattr(app, "in_recovery", False))


def create_app(config: WorkerConfig) -> faust.App:
    """The notifguard Faust app; nothing connects or starts until it runs."""
    app = faust.App(
        config.app_id,
        broker=f"kafka://{config.bootstrap}",
        store=config.store,
        datadir=config.datadir,
        topic_partitions=config.partitions,
        topic_replication_factor=1,
        processing_guarantee=config.processing_guarantee,
        table_standby_replicas=config.standby_replicas,
        consumer_auto_offset_reset="earliest",
        stream_wait_empty=False,
        autodiscover=False,
        web_enabled=True,
        web_host=config.web_host,
        web_bind=config.web_host,
        web_port=config.web_port,
        web_tables_enabled=False,
        web_router_enabled=False,
        web_graph_enabled=False,
        web_stats_enabled=False,
        broker_commit_interval=1.0,
    )
    numbers_table = app.Table("numbers", partitions=config.partitions, key_type=bytes, value_type=bytes)
    links_table = app.GlobalTable("address-index", partitions=config.partitions, key_type=bytes,
                                  value_type=bytes)
    rt = Runtime(app, config, numbers_table, links_table)
    app.notifguard = rt  # type: ignore[attr-defined]
    inputs = app.topic(*rt.inputs, **_RAW)

    @app.agent(inputs, concurrency=1)
    async def detect(stream: Any) -> None:
        async for events in stream.take_events(config.batch_max, within=config.batch_within_s):
            rt.on_events(events)
            if rt.flush_due():
                await rt.flush()

    @app.timer(config.tick_interval_s)
    async def tick() -> None:
        await rt.tick()

    async def revoked(app: Any, revoked: set[TP], **_: Any) -> None:
        await rt.on_revoked(set(revoked))

    async def assigned(app: Any, assigned: set[TP], **_: Any) -> None:
        rt.on_assigned(set(assigned))

    app.on_partitions_revoked.connect(revoked)  # type: ignore[arg-type]
    app.on_partitions_assigned.connect(assigned)  # type: ignore[arg-type]

    @app.task
    async def mark_started() -> None:
        rt.started = True

    @app.page("/health")
    async def health(web: Any, request: Any) -> Any:
        ready = rt.is_ready()
        body = {"ready": ready, "rebalancing": bool(app.rebalancing), "pending": rt.engine.pending_count()}
        return web.json(body, status=200 if ready else 503)

    @app.page("/metrics")
    async def metrics(web: Any, request: Any) -> Any:
        return web.bytes(rt.metrics.exposition(), content_type="text/plain; version=0.0.4")

    return app
