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

import asyncio
import contextlib
import heapq
import logging
import time
import traceback
import uuid
from typing import Any

import faust
import msgspec
from faust.transport.drivers import aiokafka as _aiokafka_driver
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
        self.held: dict[int, list[tuple[int, int, Any, float]]] = {}  # (event time, seq, msg, arrival)
        self.to_ack: list[Any] = []
        self.seq = 0
        self.paused: set[TP] = set()
        self.last_flush = time.monotonic()
        self.echo = False  # print alerts as readable lines (the demo)
        self.started = False
        self._read: dict[tuple[str, int], int] = {}  # last offset read per input topic-partition
        self._assigned: set[TP] = set()
        self._lag_seen: dict[TP, float] = {}  # since when a lagging input has delivered nothing

    # ----------------------------------------------------------------- records

    async def on_messages(self, messages: list[Any]) -> None:
        """One fetched batch straight from the consumer (see _Consumer), then a flush when due."""
        self.on_events(messages)
        if self.flush_due():
            await self.flush()

    def on_events(self, events: list[Any]) -> None:
        """A batch of records (faust Messages, refcount 0): each one's Kafka ack is ours to give."""
        counts: dict[str, int] = {}
        lag_seen = self._lag_seen
        push = self.merger.push
        for msg in events:
            topic = msg.topic
            counts[topic] = counts.get(topic, 0) + 1
            lag_seen.pop(msg.tp, None)
            ts = msg.timestamp if msg.timestamp is not None else 0
            push(topic, msg.partition, int(ts * 1000), msg)
        consumed = self.metrics.consumed
        for topic, n in counts.items():
            consumed.labels(topic).inc(n)
        self._run_merged()
        self._pause_overfull()

    def flush_due(self) -> bool:
        return time.monotonic() - self.last_flush >= self.config.flush_interval_s

    def _lagging(self, topic: str, partition: int) -> bool:
        """May this input topic-partition still deliver records older than what is queued?

        Yes while Kafka holds records past what we read (its highwater), or we
        do not know yet (not fetched). A topic-partition holds the others back
        for at most merge_wait_s from when it was first seen lagging with
        nothing delivered, so a broken or stuck partition cannot stall the rest.
        """
        tp = TP(topic, partition)
        unread = self._unread(tp)
        if unread == 0:
            self._lag_seen.pop(tp, None)
            return False
        now = time.monotonic()
        since = self._lag_seen.setdefault(tp, now)
        return now - since <= self.config.merge_wait_s

    def _unread(self, tp: TP) -> int | None:
        """Records Kafka holds past what we read of an input topic-partition (None: not fetched yet)."""
        try:
            highwater = self.app.consumer.highwater(tp)
        except Exception:
            return None
        if highwater is None or highwater < 0:
            return None
        last = self._read.get((tp.topic, tp.partition))
        if last is None:  # nothing read since assignment: we start at the committed offset
            last = (getattr(self.app.consumer, "_committed_offset", {}).get(tp) or 0) - 1
        return int(max(0, highwater - last - 1))

    def _run_merged(self) -> None:
        for event in self.merger.ready(self._lagging):
            self._process(event)

    def _process(self, event: Any) -> None:
        msg = event
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
            heapq.heappush(self.held.setdefault(p, []), (engine.last_buffered, self.seq, event, time.monotonic()))
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
            _, _, msg, arrived = heapq.heappop(held)
            self.to_ack.append(msg)
            if msg.topic == self.topics.outbound:  # its verdict was reached now
                self.metrics.verdict_delay.observe(time.monotonic() - arrived)

    def _emit(self) -> None:
        if self.engine.deliveries:
            deliveries = self.metrics.deliveries
            for labels in self.engine.deliveries:
                deliveries.labels(*labels).inc()
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
        """Outputs, then state, then the acks of the records they came from.

        The order makes a crash at any point safe. Alerts, dead letters and
        address links are delivered (awaited) before the number states that
        remember their records as done: otherwise a crash in between would
        leave a record marked seen whose alert never left, and its re-read
        would be dropped as a duplicate. A crash after the outputs re-emits
        them on re-read (same dedup_key). Faust flushes the producer before it
        commits offsets, so a committed offset never runs ahead of the state.
        """
        producer = self.app.producer
        send = producer.send
        out, self.out = self.out, []
        links = self.links.flush()
        for topic, key, value, maybe_partition in out:
            await send(topic, key, value, maybe_partition, None, None)
        for partition, key, value in links:
            await send(self.links_changelog, key, value, partition, None, None)
        if out or links:
            await producer.flush()
        for partition, key, value in self.numbers.flush():
            await send(self.numbers_changelog, key, value, partition, None, None)
        consumer = self.app.consumer
        for msg in self.to_ack:
            msg.ack(consumer)  # refcount 0: this is the final ack
        self.to_ack.clear()
        self.last_flush = time.monotonic()

    async def tick(self) -> None:
        """Wall-clock timer: idle partitions move on, queued partitions retry, gauges refresh."""
        self._run_merged()
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
        lag: dict[str, int] = dict.fromkeys(self.inputs, 0)
        for tp in self._assigned:
            unread = self._unread(tp)
            if unread is not None:
                lag[tp.topic] += unread
        for topic, n in lag.items():
            m.consumer_lag.labels(topic).set(n)
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
        self._lag_seen.clear()
        for tp in self._assigned:
            self.merger.expect(tp.topic, tp.partition)
        self._read = {k: v for k, v in self._read.items() if TP(*k) in self._assigned}

    def is_ready(self) -> bool:
        app = self.app
        return bool(self.started and not app.rebalancing and not getattr(app, "in_recovery", False))


# Faust's aiokafka driver hard-codes fetch_max_wait_ms=1500.  aiokafka has at
# most one fetch in flight per broker, and while the last fetch's records are
# still buffered it fetches only the partitions that have nothing buffered:
# often just empty ones (the assignor's leader topic, a GlobalTable changelog,
# an input at its end).  The broker holds that fetch for the full 1.5 s and
# every partition of the broker waits behind it.
FETCH_MAX_WAIT_MS = 10


class _ConsumerThread(_aiokafka_driver.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # read by AIOKafkaConsumer.start()
        return consumer


class _Consumer(_aiokafka_driver.Consumer):
    """Faust's consumer, delivering the app's `batch_topics` a whole fetch at a time.

    Faust hands each record to its stream through conductor -> channel queue ->
    stream, with two asyncio tasks per record (wait_first): ~10k records/s at
    most.  Records of `app.batch_topics` skip that and go, one fetched batch at a
    time, to `app.batch_handler`; anything else (other topics, table changelogs)
    goes Faust's way.  Offsets, gaps, acks, commits and rebalancing stay Faust's:
    each record is tracked as unacked and its offset committed once acked.
    """

    def _new_consumer_thread(self) -> Any:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - needs a broker
        handler = getattr(self.app, "batch_handler", None)
        if handler is None:
            return await super()._drain_messages(fetcher)
        topics = self.app.batch_topics  # type: ignore[attr-defined]
        callback = self.callback
        consumer_stopped, fetcher_stopped = self._stopped.is_set, fetcher._stopped.is_set
        get_read, set_read = self._read_offset.__getitem__, self._read_offset.__setitem__
        acks_enabled_for = self.app.topics.acks_enabled_for
        track = self._unacked_messages.add
        while not (consumer_stopped() or fetcher_stopped()):
            await self.sleep(0)
            if self.should_stop:
                continue
            generation = self.app.consumer_generation_id
            batch = []
            async for tp, message in self.getmany(timeout=1.0):
                offset = message.offset
                read = get_read(tp)
                if read is not None and offset < read:
                    continue
                if read and offset - read > 1 and acks_enabled_for(message.topic):
                    await self._add_gap(tp, read + 1, offset)
                set_read(tp, offset)
                if message.topic in topics:
                    track(message)
                    batch.append(message)
                else:
                    await self.wait_first(callback(message), self.suspend_flow.wait())
            # Not across a rebalance: those records are re-read from the committed offsets.
            if batch and self.flow_active and self.app.consumer_generation_id == generation:
                await asyncio.shield(handler(batch))  # a stop must not cut a flush in half
            commit_every = self._commit_every
            if commit_every is not None and self._n_acked >= commit_every:
                self._n_acked = 0
                await self.commit()


class _Transport(_aiokafka_driver.Transport):
    Consumer = _Consumer


class _App(faust.App):
    def _new_transport(self) -> Any:
        return _Transport(self.conf.broker_consumer, self)


def create_app(config: WorkerConfig) -> faust.App:
    """The notifguard Faust app; nothing connects or starts until it runs."""
    app = _App(
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

    # Subscribed through the conductor (acks enabled); the records come to
    # rt.on_messages a fetched batch at a time (see _Consumer), not through a stream.
    app.topics.add(inputs)
    app.batch_topics = frozenset(rt.inputs)  # type: ignore[attr-defined]
    app.batch_handler = rt.on_messages  # type: ignore[attr-defined]

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
