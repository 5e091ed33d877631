"""The Faust application: the pure engine on Kafka, with its state in changelog-backed tables.

`create_app(config)` builds everything and starts nothing (no import-time side
effects); `notifguard worker` runs it. The three co-partitioned input topics
are read a fetched batch at a time and fed to the engine, whose arrival stage
(detectors.arrival: min-of-inputs watermarks, grace buffer, release order)
decides when each record is applied, whatever the relative speed of the
topics. Each record's Kafka ack waits until the engine reports it done
(applied, or dropped as a duplicate) and the outputs and state it changed are
delivered: a crash re-reads exactly what was not done, and the engine's
event-id dedup absorbs the rest. Topic-partitions that run ahead are paused
while the grace buffer is full (flow control; it changes no result).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterable
from typing import Any

import faust
import msgspec
from faust.transport.drivers import aiokafka as _aiokafka_driver
from faust.types import TP
from faust.types.tuples import ack_lock
from mode.utils.futures import notify

from detectors.alerts import encode_alert
from detectors.engine import Engine
from detectors.records import BadRecord, decode
from detectors.settings import Settings
from streams.config import WorkerConfig
from streams.kafka_security import faust_settings
from streams.liveness import (
    ACKED,
    COMMITTED,
    CONSUMED,
    DELIVERED,
    Liveness,
    ShutdownWatchdog,
    Status,
    describe_stacks,
    stall_bound,
)
from streams.metrics import Metrics
from streams.sweeper import Sweeper
from streams.tablestore import TableLinks, TableNumbers
from streams.transactions import EXACTLY_ONCE, ExactlyOnce, OffsetTracker, committed_end_offsets
from streams.transactions import TransactionManager as EosTransactionManager

log = logging.getLogger("notifguard.worker")
_json = msgspec.json.Encoder()
_RAW: dict[str, Any] = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}


# notifguard_processing_seconds times one record in 64 (two clock reads and a
# histogram update per record cost more than a fast record's processing).
_TIME_EVERY_MASK = 63
GC_THRESHOLDS = (50_000, 20, 100)  # gc.set_threshold in a running worker (see create_app)


def _now_us() -> int:
    return time.time_ns() // 1000


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class ProduceFailed(RuntimeError):
    """Outputs or state could not be delivered to Kafka: the worker stops rather than ack their inputs."""


class DeliveryTimeout(ProduceFailed):
    """A flush waited longer than delivery_timeout_s for the broker: the worker stops rather than wait forever."""


class TimerFailed(RuntimeError):
    """The timer (Runtime.tick) ended while the worker runs: the worker stops rather than go on without it."""


class Runtime:
    """Everything the agent and the timers share; one per worker process."""

    def __init__(self, app: faust.App, config: WorkerConfig, numbers_table: Any, links_table: Any) -> None:
        from detectors.state import AddressIndex

        self.app = app
        self.config = config
        rules: Settings = config.rules
        self.topics = rules.topics
        self.inputs = (rules.topics.changes, rules.topics.outbound, rules.topics.delivery)
        self._kind_of = {rules.topics.changes: "changes", rules.topics.outbound: "outbound",
                         rules.topics.delivery: "delivery"}  # the topic kinds of detectors.records.decode
        self.numbers = TableNumbers(numbers_table)
        self.links = TableLinks(links_table, config.partitions)
        self.engine = Engine(rules, new_id=lambda: uuid.uuid4().hex, numbers=self.numbers,
                             index=AddressIndex(self.links))
        self.engine.live = True  # now_us is the wall clock: event times are bounded by it too
        self._category = {topic: i for i, topic in enumerate(self.inputs)}  # detectors.arrival's categories
        self.metrics = Metrics(rules.topics)
        self.grace_us = rules.us(rules.grace_s)
        self.numbers_changelog = numbers_table.changelog_topic.get_topic_name()
        self.links_changelog = links_table.changelog_topic.get_topic_name()
        # records to produce at the next flush: (topic, key, value, partition or None)
        self.out: list[tuple[str, bytes, bytes | None, int | None]] = []
        # records done (applied, dead-lettered or duplicates): acked at the next flush
        self.to_ack: list[Any] = []
        self.paused: set[TP] = set()
        self.last_flush = time.monotonic()
        self.echo = False  # print alerts as readable lines (the demo)
        self.started = False
        self.eos: Any = None  # streams.transactions.ExactlyOnce when processing_guarantee=exactly_once
        # at_least_once: which delivered records are done, so that acks go to Faust in unbroken runs
        self.order = OffsetTracker()
        self.sweeper = Sweeper(self.engine, self.numbers)
        self._read: dict[tuple[str, int], int] = {}  # last offset read per input topic-partition
        self._assigned: set[TP] = set()
        self._consumed: dict[str, Any] = {}  # records_consumed counter per input topic
        self._n_processed = 0
        self.consumed_total = 0  # input records read (notifguard_records_consumed_total, summed; /health)
        # delivery futures of everything sent since the last flush: checked before any ack
        self._in_flight: list[Awaitable[Any]] = []
        # (topic, records, send time, delivery future) -> metrics of batches sent past producer.send
        self.count_produced: Any = None
        # A batch (on_messages) and the timer (tick) both process records and
        # flush; one at a time, so a flush never acks a record whose outputs
        # are still waiting in self.out.
        self._lock = asyncio.Lock()
        # Liveness (streams/liveness.py): progress against the input waiting for the worker
        self.liveness = Liveness(stall_bound(config.stall_after_s, rules.idle_flush_s, rules.grace_s,
                                             config.tick_interval_s + config.flush_interval_s + 10.0))
        self._acked_upto: dict[TP, int] = {}  # at_least_once: per input topic-partition, the end of what was acked
        self._committed_seen: dict[TP, int] = {}  # the committed offsets the last liveness check saw
        self._stall_reported = False
        self._stage = ""  # what the flush under way waits for (DeliveryTimeout's message)
        self._crashing: asyncio.Future[Any] | None = None
        # A flush whose sends failed or timed out: no later flush may ack anything (its records'
        # outputs may be among the lost sends), only raise this again until the worker has stopped
        self._undelivered: ProduceFailed | None = None

    # ----------------------------------------------------------------- records

    async def on_messages(self, batch: list[tuple[TP, list[Any]]]) -> None:
        """One fetched batch straight from the consumer (see _Consumer), then a flush when due.

        Between flushes the batch's alerts and dead letters are handed to the
        producer at once (at-least-once mode): their delivery is awaited at
        the next flush, before the state that remembers their records.
        """
        if self._undelivered is not None:  # crashing: read nothing more (see Runtime._flush)
            raise self._undelivered
        async with self._lock:
            consumed = self.consumed_total
            self.on_events(batch)
            if self.consumed_total != consumed:
                self.liveness.progress(CONSUMED)
            if self.flush_due():
                await self._flush()
            elif self.out and self.eos is None:
                async with self._deadline("handing alerts and dead letters to the producer"):
                    await self._send_outputs()

    def on_events(self, batch: list[tuple[TP, list[Any]]]) -> None:
        """Fetched records per input topic-partition, in offset order (aiokafka ConsumerRecords).

        Each record's Kafka ack is ours to give (at the flush, in unbroken runs: OffsetTracker.runs).
        One clock read a batch, not a record: the records of a fetched batch
        arrived together (the engine's wall clock, the arrival clock for
        idleness, and the verdict delay), and the clock moves on every
        _TIME_EVERY_MASK + 1 records (a batch takes a few ms).
        """
        # tracked (OffsetTracker); exactly_once: records done before a restart are not processed again
        batch = self.eos.delivered(batch) if self.eos is not None else self.order.delivered(batch)
        # before the records: which inputs have records waiting (after a recovery that took longer
        # than idle_flush, the first batch must not find the silent-but-waiting ones idle)
        self._mark_behind()
        engine = self.engine
        process, process_decoded, not_after = engine.process, engine.process_decoded, engine.not_after
        kind_of = self._kind_of
        observe = self.metrics.processing.observe
        perf_counter = time.perf_counter
        consumed = self._consumed
        read = self._read
        n = self._n_processed
        arrived = time.monotonic()
        now = _now_us()
        for tp, records in batch:
            if not records:
                continue
            topic, p = tp
            counter = consumed.get(topic)
            if counter is None:
                counter = consumed[topic] = self.metrics.consumed.labels(topic)
            counter.inc(len(records))
            self.consumed_total += len(records)
            read[(topic, p)] = records[-1].offset
            kind = kind_of[topic]
            for rec in records:
                key = rec.key
                n += 1
                timed = not n & _TIME_EVERY_MASK
                token = (rec, arrived)
                try:
                    if timed:
                        now = _now_us()
                        started = perf_counter()
                    # Engine.process, unrolled: decoded here, and what does not decode goes to
                    # Engine.process (which dead-letters it, with the reason)
                    try:
                        record, when = decode(kind, key, rec.value, not_after(rec.timestamp, now))
                    except BadRecord:
                        process(topic, p, rec.offset, key, rec.value, now, rec.timestamp, token)
                    else:
                        process_decoded(kind, p, record, when, now, token)
                    if timed:
                        observe(perf_counter() - started)
                except Exception:
                    # Not bad input (that is dead-lettered by the engine, and a record whose
                    # application raised is reported in engine.failed): a bug before the record
                    # reached the grace buffer. Loud, counted, dead-lettered with the traceback.
                    self._bug(rec, traceback.format_exc(limit=3))
        self._n_processed = n
        self._done()
        self._emit()
        self._pause_overfull()

    def flush_due(self) -> bool:
        return time.monotonic() - self.last_flush >= self.config.flush_interval_s

    def _unread(self, tp: TP) -> int | None:
        """Records of an input topic-partition Kafka holds past what we read (None: not known yet)."""
        highwater = self._highwater(tp)
        if highwater is None:
            return None
        last = self._read.get((tp.topic, tp.partition))
        if last is None:  # nothing read since assignment: we start at the committed offset
            last = (getattr(self.app.consumer, "_committed_offset", {}).get(tp) or 0) - 1
        return int(max(0, highwater - last - 1))

    def _done(self) -> None:
        """Take what the engine finished: acks for the records done, dead letters for those that failed."""
        engine = self.engine
        done = engine.take_done()
        if done:
            ack = self.to_ack.append
            outbound = self.topics.outbound
            arrivals: list[float] = []  # of the notifications: their verdicts were reached now
            for msg, arrived in done:
                ack(msg)
                if msg.topic == outbound:
                    arrivals.append(arrived)
            if arrivals:
                self.metrics.observe_verdict_delays(time.monotonic(), arrivals)
        if engine.failed:
            failed, engine.failed = engine.failed, []
            for (msg, _), exc in failed:
                self._bug(msg, "".join(traceback.format_exception(exc, limit=3)))

    def _bug(self, msg: Any, trace: str) -> None:
        """A record whose processing raised (a bug, not bad input): logged, counted, dead-lettered as
        itself with the traceback's last line (`processing_error`), and acked, so the worker goes on."""
        self.metrics.errors.labels(msg.topic).inc()
        log.error("BUG while processing %s[%s]@%s:\n%s", msg.topic, msg.partition, msg.offset, trace)
        self._bug_letter(msg, trace)
        self.to_ack.append(msg)

    def _emit(self) -> None:
        if self.engine.deliveries:
            self.metrics.observe_deliveries(self.engine.deliveries)
        alerts, dead, verdicts = self.engine.drain()
        out = self.out
        for a in alerts:
            out.append((self.topics.alerts, a.dedup_key.encode(), encode_alert(a), None))
            if self.echo:
                from streams.replay_offline import alert_line

                print(alert_line(a), flush=True)
        for d in dead:
            self.metrics.deadletters.labels(d.source_topic, d.reason_code).inc()
            out.append((self.topics.deadletter, (d.key or "").encode(), _json.encode(d), None))
        if verdicts:
            self.metrics.observe_verdicts(verdicts)

    def _bug_letter(self, msg: Any, trace: str) -> None:
        from detectors.engine import dead_letter
        from detectors.timefmt import rfc3339

        letter = dead_letter(msg.topic, msg.partition, msg.offset, None, msg.key, msg.value,
                             f"internal error (a bug, reported): {trace.splitlines()[-1]}", "processing_error",
                             rfc3339(_now_us()))
        self.out.append((self.topics.deadletter, (letter.key or "").encode(), _json.encode(letter), None))

    # ------------------------------------------------------------ flush & acks

    async def flush(self) -> None:
        """Runtime._flush, once no batch or timer is half-way (see the lock in __init__)."""
        async with self._lock:
            await self._flush()

    async def _send_outputs(self) -> None:
        """Hand the alerts and dead letters to the producer now; the next flush awaits their delivery."""
        out, self.out = self.out, []
        send = self.app.producer.send
        track = self._in_flight.append
        for topic, key, value, maybe_partition in out:
            track(await send(topic, key, value, maybe_partition, None, None))

    async def _flush(self) -> None:
        """Outputs, then state, then the acks of the records they came from.

        The order makes a crash at any point safe. Alerts, dead letters and
        address links are delivered (awaited) before the number states that
        remember their records as done: otherwise a crash in between would
        leave a record marked seen whose alert never left, and its re-read
        would be dropped as a duplicate. A crash after the outputs re-emits
        them on re-read (same dedup_key). Every send is delivered before the
        acks, so a committed offset never runs ahead of the outputs or the state.
        """
        if self._undelivered is not None:
            raise self._undelivered
        if self.eos is not None:  # exactly_once: all of it, offsets too, in one transaction
            transactions = self.eos.transactions
            async with self._deadline("committing the exactly_once transaction of a flush"):
                await self.eos.flush(self)
            if self.eos.transactions != transactions:
                self.liveness.progress(COMMITTED)
            return
        delivered = bool(self.out or self._in_flight)
        async with self._deadline("handing alerts and dead letters to the producer"):
            links = self.links.flush()
            await self._send_outputs()
            self._stage = "handing address links to the producer"
            await self._send_changelog(self.links_changelog, links)
            await self._delivered()
            numbers = self.numbers.flush()
            self._stage = "handing number states to the producer"
            await self._send_changelog(self.numbers_changelog, numbers)
            await self._delivered()
        delivered = delivered or bool(links or numbers)
        acked = bool(self.to_ack)
        self.order.done(self.to_ack)
        self.to_ack.clear()
        consumer: Any = self.app.consumer  # a _Consumer
        for tp, run in self.order.runs(consumer._committed_offset).items():
            consumer.ack_offsets(tp, run)
            self._acked_upto[tp] = max(run.stop, self._acked_upto.get(tp, 0))
        self.last_flush = time.monotonic()
        if acked or delivered:
            self.liveness.progress(ACKED if acked else DELIVERED)

    @contextlib.asynccontextmanager
    async def _deadline(self, stage: str) -> AsyncIterator[None]:
        """Bound a flush's waits on the broker by delivery_timeout_s; past it, crash the worker.

        The crash is started by the timer callback itself, so that it happens even if the
        interrupted code hangs again in its clean-up (an exactly_once producer's stop).
        `self._stage` says what was waited for. Nothing after the deadline is acked: the
        restarted worker reads those records again.
        """
        self._stage = stage
        task = asyncio.current_task()
        fired: list[DeliveryTimeout] = []

        def expire() -> None:
            exc = DeliveryTimeout(
                f"a flush waited {self.config.delivery_timeout_s:g} s (delivery_timeout_s) while {self._stage}: "
                "the broker does not take or acknowledge the worker's sends; stopping without acknowledging "
                "their input records, which are read again on restart")
            fired.append(exc)
            self._undelivered = exc
            log.critical("%s", exc)
            self.crash_soon(exc)
            if task is not None:
                task.cancel()

        handle = asyncio.get_running_loop().call_later(self.config.delivery_timeout_s, expire)
        try:
            yield
        except asyncio.CancelledError:
            if fired:
                raise fired[0] from None
            raise
        finally:
            handle.cancel()
            self._stage = ""

    def crash_soon(self, exc: BaseException) -> None:
        """Crash the worker (Faust stops it; the process exits non-zero) from a callback or a task."""
        if self._crashing is None:
            self._crashing = asyncio.ensure_future(self.app.crash(exc))

    async def _delivered(self) -> None:
        """Wait for every send since the last check; a failed one stops the worker before any ack.

        The producer has retried already. Acking the records behind a lost
        alert or state record would commit their offsets and lose it for good;
        crashing instead leaves them unacknowledged, so the restarted worker
        reads them again (the failures are counted in
        notifguard_produce_errors_total and logged by the sensor).
        """
        futures, self._in_flight = self._in_flight, []
        if not futures:
            return
        self._stage = f"waiting for the broker to acknowledge {len(futures)} sends"
        results = await asyncio.gather(*futures, return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            exc = ProduceFailed(f"{len(failed)} of {len(futures)} producer sends failed (first: {failed[0]!r}); "
                                "stopping without acknowledging their input records, which are read again "
                                "on restart")
            self._undelivered = exc
            log.critical("%s", exc)
            await self.app.crash(exc)
            raise exc

    async def _send_changelog(self, topic: str, records: list[tuple[int, bytes, bytes | None]]) -> None:
        """Changelog records (partition, key, value) as one producer batch per partition.

        Record by record through `producer.send` costs ~30 us each (three
        coroutines, a future and its callbacks per record); a changelog flush
        has hundreds to thousands of them. Delivery is awaited by the next
        `producer.flush()` like any send; counted in notifguard_records_produced_total.
        """
        if not records:
            return
        client = self.app.producer._ensure_producer()  # type: ignore[attr-defined]
        by_partition: dict[int, list[tuple[bytes, bytes | None]]] = {}
        for partition, key, value in records:
            got = by_partition.get(partition)
            if got is None:
                got = by_partition[partition] = []
            got.append((key, value))
        for partition, items in by_partition.items():
            batch, n = client.create_batch(), 0
            for key, value in items:
                if batch.append(key=key, value=value, timestamp=None) is None:  # full
                    await self._send_batch(client, batch, topic, partition, n)
                    batch, n = client.create_batch(), 0
                    if batch.append(key=key, value=value, timestamp=None) is None:
                        raise ValueError(f"a {topic} record of {len(value or b'')} bytes does not fit a batch")
                n += 1
            await self._send_batch(client, batch, topic, partition, n)

    async def _send_batch(self, client: Any, batch: Any, topic: str, partition: int, n: int) -> None:
        started = time.monotonic()
        fut = await client.send_batch(batch, topic, partition=partition)
        self._in_flight.append(fut)
        count = self.count_produced
        if count is not None:
            fut.add_done_callback(lambda f: count(topic, n, started, f))

    async def tick(self) -> None:
        """Wall-clock timer: idle partitions move on, queued partitions retry, gauges refresh."""
        async with self._lock:
            self._mark_behind()
            self.engine.tick(_now_us())
            self._done()
            now = self.engine.sweep_due()
            if now is not None:  # detectors/expiry.py: a slice per tick, see streams/sweeper.py
                self.sweeper.start(now, {tp.partition for tp in self._assigned})
            self.sweeper.step()
            self._emit()
            await self._flush()
            self._pause_overfull()
        now = _now_us()
        m = self.metrics
        m.sync_stats(self.engine.stats)
        m.pending.set(self.engine.pending_count())
        for p, watermark in self.engine.arrival.partition_watermarks().items():
            if watermark is not None:
                m.watermark_lag.labels(str(p)).set(max(0.0, (now - watermark) / 1e6))
        m.tracked.set(len(self.numbers.cache))
        lag: dict[str, int] = dict.fromkeys(self.inputs, 0)
        for tp in self._assigned:
            lag[tp.topic] += self._waiting_on_broker(tp)
        for topic, total in lag.items():
            m.consumer_lag.labels(topic).set(total)
        m.ready.set(1 if self.is_ready() else 0)
        self.liveness.ticked()
        self.liveness_status()

    async def run_tick(self) -> None:
        """The timer's body: `tick`, and if it fails, a crash, never a timer that silently stops.

        Faust runs a timer as a task of the app. An exception escaping it crashes the app,
        but a CancelledError (a cancelled await inside tick while the worker runs) or a
        RuntimeError about a closed event loop only ends the task, with a debug or info line:
        the worker would go on without its timer (no idle flush, no sweeps, no gauges).
        Whatever ends a tick while the worker is not stopping crashes it, loudly.
        """
        try:
            await self.tick()
        except ProduceFailed:
            raise  # crashing already (Runtime._delivered, Runtime._deadline)
        except BaseException as exc:
            if getattr(self.app, "should_stop", False):
                raise  # stopping: Faust cancels its timers
            failed = TimerFailed(f"the timer (Runtime.tick) ended with {exc!r} while the worker runs; stopping it "
                                 "(records not acknowledged are read again on restart)")
            log.critical("%s", failed, exc_info=exc)
            self.crash_soon(failed)
            raise failed from exc

    def _position(self, tp: TP) -> int | None:
        """aiokafka's position of an input topic-partition (the next offset it will fetch), or None
        without aiokafka's state (not assigned yet, no position yet, the tests' fake consumer)."""
        consumer: Any = self.app.consumer  # a _Consumer
        try:
            client = consumer._thread._ensure_consumer()  # Faust's consumer thread's AIOKafkaConsumer
            state = client._subscription.subscription.assignment.state_value(tp)
        except Exception:
            return None
        if state is None or not state.has_valid_position:
            return None
        return int(state.position)

    def _highwater(self, tp: TP) -> int | None:
        """The consumer's highwater of an input topic-partition (exactly_once: the last stable
        offset), or None when it has none (not fetched yet; not assigned any more: a rebalance)."""
        try:
            highwater = self.app.consumer.highwater(tp)
        except Exception:  # aiokafka asserts the partition is assigned
            return None
        return None if highwater is None or highwater < 0 else int(highwater)

    def _waiting_on_broker(self, tp: TP) -> int:
        """Records of an input topic-partition on the broker that the consumer has not fetched yet:
        highwater minus aiokafka's position. Unlike `_unread` (highwater minus the last offset
        read), a transaction marker or compacted offsets at the end of a partition are nothing
        waiting: after a transactional producer's last record, `_unread` stays 1 for good, and
        liveness would restart an idle worker over and over. Without a position, `_unread`."""
        position = self._position(tp)
        highwater = self._highwater(tp)
        if position is not None and highwater is not None:
            return max(0, highwater - position)
        return self._unread(tp) or 0

    def _behind(self, tp: TP) -> bool:
        """Do records of this input topic-partition wait for us? On the broker past aiokafka's
        position, or fetched by aiokafka and not handed to us yet: more than one offset between
        the last we read and its position (one is the commit marker a transactional producer
        leaves after its last record, which is no record). Unknown (no position, no highwater
        yet): yes, until it is known."""
        position = self._position(tp)
        if position is None:
            n = self._unread(tp)
            return n is None or n > 0
        highwater = self._highwater(tp)
        if highwater is None or highwater > position:
            return True
        last = self._read.get((tp.topic, tp.partition))
        if last is None:
            return False  # nothing read since assignment, and nothing past its position
        return position - last - 1 > 1

    def liveness_status(self) -> Status:
        """Stalled or not (streams/liveness.py), from what waits now; sets the liveness gauges and
        logs a stall once, with where every thread and task waits. Called by tick, /health and /metrics,
        so that a stopped timer is seen too."""
        consumer: Any = self.app.consumer
        committed: dict[TP, int | None] = getattr(consumer, "_committed_offset", {})
        unread = uncommitted = 0
        moved = False
        for tp in self._assigned:
            unread += self._waiting_on_broker(tp)
            c = committed.get(tp)
            if c is None:
                continue
            if self._committed_seen.get(tp, c) != c:
                moved = True
            self._committed_seen[tp] = c
            upto = self._acked_upto.get(tp)
            if upto is not None and upto > c:
                uncommitted += upto - c
        if moved:
            self.liveness.progress(COMMITTED)
        status = self.liveness.check(ready=self.is_ready(), unread=unread, pending=self.engine.pending_count(),
                                     uncommitted=uncommitted)
        self.metrics.stalled.set(1 if status.stalled else 0)
        self.metrics.last_progress.set(status.last_progress_unix)
        if status.stalled and not self._stall_reported:
            self._stall_reported = True
            log.error("STALLED: %s; last progress: %s %.0f s ago. Where the worker waits:\n%s", status.reason,
                      status.last_progress or "none since start", status.since_progress_s,
                      describe_stacks(_running_loop()))
        elif not status.stalled and self._stall_reported:
            self._stall_reported = False
            log.warning("no longer stalled: %s", status.last_progress or "ready")
        return status

    def _mark_behind(self) -> None:
        """Tell the arrival stage which input topic-partitions have records waiting for us (`_behind`):
        their silence is ours, so they are not idle. (Kafka's highwater says only that records
        wait, never that no older record is coming: the watermark rule does not rest on it.)"""
        arrival = self.engine.arrival
        for tp in self._assigned:
            arrival.set_behind(self._category[tp.topic], tp.partition, self._behind(tp))

    def _pause_overfull(self) -> None:
        """Flow control: while the grace buffer holds max_pending records, pause the input
        topic-partitions running ahead of the watermark; resume them all below half of it.
        The arrival stage is told, so that a paused topic-partition never counts as idle."""
        arrival = self.engine.arrival
        pending = arrival.pending_count()
        limit = self.config.max_pending
        if pending >= limit:
            want = self.paused | {TP(self.inputs[s.category], s.partition) for s in arrival.ahead()}
        elif pending < limit // 2:
            want = set()
        else:
            return
        consumer = self.app.consumer
        if want - self.paused:
            consumer.pause_partitions(want - self.paused)
            for tp in want - self.paused:
                arrival.set_paused(self._category[tp.topic], tp.partition, True)
        if self.paused - want:
            consumer.resume_partitions(self.paused - want)
            for tp in self.paused - want:
                arrival.set_paused(self._category[tp.topic], tp.partition, False)
        self.paused = want

    # --------------------------------------------------------------- rebalance

    async def on_revoked(self, revoked: set[TP]) -> None:
        partitions = {tp.partition for tp in revoked if tp.topic in self.inputs}
        async with self._lock:
            await self._flush()
            # their buffered records were not acked: the next owner reads them again
            self.engine.arrival.forget(partitions)
            self.paused = {tp for tp in self.paused if tp.partition not in partitions}
            self.numbers.forget_partitions(partitions)
            self.sweeper.forget(partitions)
            self.order.clear()  # Faust seeks the partitions it assigns to their committed offsets
            self._read = {k: v for k, v in self._read.items() if k[1] not in partitions}
            self.to_ack.clear()
            for tp in revoked:  # acks of revoked partitions are not committed (Faust discards them)
                self._acked_upto.pop(tp, None)
                self._committed_seen.pop(tp, None)
        self.metrics.rebalances.inc()

    def on_assigned(self, assigned: set[TP]) -> None:
        self.numbers.absent.clear()  # partitions recovered from their changelogs may hold any number
        self._assigned = {tp for tp in assigned if tp.topic in self.inputs}
        # Every assigned input topic-partition holds the watermark back from now until it
        # delivers or is idle: its first records may be older than anything fetched.
        clock = _now_us()
        for p in sorted({tp.partition for tp in self._assigned}):
            self.engine.arrival.expect(p, clock)
        self._read = {k: v for k, v in self._read.items() if TP(*k) in self._assigned}

    def is_ready(self) -> bool:
        app = self.app
        return bool(self.started and not app.rebalancing and not getattr(app, "in_recovery", False))

    def health(self) -> tuple[int, dict[str, Any]]:
        """/health (readiness): 200 when recovered, not rebalancing and not stalled, else 503."""
        ready = self.is_ready()
        status = self.liveness_status()
        body = {"ready": ready, "rebalancing": bool(self.app.rebalancing), "pending": self.engine.pending_count(),
                "consumed": self.consumed_total, "stalled": status.stalled, "liveness": status.as_dict()}
        return (200 if ready and not status.stalled else 503), body

    def live(self) -> tuple[int, dict[str, Any]]:
        """/live (the Kubernetes liveness probe): 503 when stalled only, not while recovering or
        rebalancing (a restart would only start those again)."""
        status = self.liveness_status()
        return (503 if status.stalled else 200), status.as_dict()


# Faust's aiokafka driver hard-codes fetch_max_wait_ms=1500 and fetch_min_bytes=1;
# the worker's are WorkerConfig.fetch_max_wait_ms and fetch_min_bytes (see there).
class _ConsumerThread(_aiokafka_driver.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        rt = getattr(self.app, "notifguard", None)
        config = rt.config if rt is not None else WorkerConfig(rules=Settings())
        consumer._fetch_max_wait_ms = config.fetch_max_wait_ms  # read by AIOKafkaConsumer.start()
        consumer._fetch_min_bytes = config.fetch_min_bytes
        return consumer

    async def _highwaters(self, partitions: list[TP]) -> Any:
        if self.consumer.in_transaction:  # exactly_once: see streams.transactions.committed_end_offsets
            return await committed_end_offsets(self._ensure_consumer(), partitions)
        return await super()._highwaters(partitions)


class _Consumer(_aiokafka_driver.Consumer):
    """Faust's consumer, delivering the app's `batch_topics` a whole fetch at a time.

    Faust hands each record to its stream through conductor -> channel queue ->
    stream, with two asyncio tasks per record (wait_first): ~10k records/s at
    most.  Records of `app.batch_topics` skip that and go, one fetched batch at a
    time, to `app.batch_handler` as aiokafka fetched them: (TP, [ConsumerRecord])
    per topic-partition, no Faust Message per record; anything else (other
    topics, table changelogs) goes Faust's way.  Offsets, gaps, commits and
    rebalancing stay Faust's: the handler acks records per topic-partition with
    `ack_offsets`, which feeds Faust's acked-offset bookkeeping as
    `Consumer.ack` does for each Message, and Faust commits the unbroken runs.
    """

    def _new_consumer_thread(self) -> Any:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def ack_offsets(self, tp: TP, offsets: Iterable[int]) -> int:
        """Mark these offsets of an input topic-partition done (Consumer.ack, for many at once)."""
        with ack_lock:
            committed = self._committed_offset[tp]
            index = self._acked_index[tp]
            new = set(offsets)
            new -= index
            if committed is not None and new and min(new) < committed:
                new = {o for o in new if o >= committed}
            if new:
                index |= new
                self._acked[tp].extend(new)
                self._n_acked += len(new)
            notify(self._waiting_for_ack)
            return len(new)

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - needs a broker
        handler = getattr(self.app, "batch_handler", None)
        if handler is None:
            return await super()._drain_messages(fetcher)
        topics = self.app.batch_topics  # type: ignore[attr-defined]
        callback = self.callback
        consumer_stopped, fetcher_stopped = self._stopped.is_set, fetcher._stopped.is_set
        read_offset = self._read_offset
        to_message = self._to_message
        monitor = self.app.monitor
        while not (consumer_stopped() or fetcher_stopped()):
            await self.sleep(0)
            if self.should_stop:
                continue
            generation = self.app.consumer_generation_id
            records, active = await self._wait_next_records(1.0)
            if not records or self.should_stop:
                continue
            if not self.flow_active:  # as Faust's getmany: a rebalance began, back to the committed offsets
                try:
                    await self.perform_seek()
                except Exception as exc:
                    self.log.warning(f"exception performing seek when flow not active {exc}")
                continue
            batch: list[tuple[TP, list[Any]]] = []
            for tp, recs in records.items():
                if not recs or not (active is None or tp in active or tp in self._buffered_partitions):
                    continue
                read = read_offset[tp]
                if read is not None and recs[0].offset < read:  # read before (a seek back): skip
                    recs = [r for r in recs if r.offset >= read]
                    if not recs:
                        continue
                # (offsets between records, transaction markers or compacted ones, need no gap
                # of Faust's: Runtime acks unbroken runs of offsets, see OffsetTracker.runs)
                read_offset[tp] = recs[-1].offset
                monitor.track_tp_end_offset(tp, self.highwater(tp))
                if tp.topic in topics:
                    batch.append((tp, recs))
                else:
                    for r in recs:
                        await self.wait_first(callback(to_message(tp, r)), self.suspend_flow.wait())
            # Not across a rebalance: those records are re-read from the committed offsets.
            if batch and self.flow_active and self.app.consumer_generation_id == generation:
                await asyncio.shield(handler(batch))  # a stop must not cut a flush in half
            commit_every = self._commit_every
            if commit_every is not None and self._n_acked >= commit_every:
                self._n_acked = 0
                await self.commit()


class _Transport(_aiokafka_driver.Transport):
    Consumer = _Consumer
    TransactionManager = EosTransactionManager  # started by Faust in exactly_once mode only


class _App(faust.App):
    def _new_transport(self) -> Any:
        return _Transport(self.conf.broker_consumer, self)


class Worker(faust.Worker):
    """faust.Worker whose stop is bounded: `shutdown_timeout_s` after SIGTERM, SIGINT or the end of
    its run (a crash included), streams.liveness.ShutdownWatchdog logs what the process is
    waiting for and exits with status 70, whatever Faust's stop_and_shutdown is doing."""

    def __init__(self, app: faust.App, *, shutdown_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.watchdog = ShutdownWatchdog(shutdown_timeout_s, describe=lambda: describe_stacks(self.loop))

    def _on_sigterm(self) -> None:
        self.watchdog.arm("SIGTERM")
        super()._on_sigterm()

    def _on_sigint(self) -> None:
        self.watchdog.arm("SIGINT")
        super()._on_sigint()

    def on_worker_shutdown(self) -> None:
        reason = self.crash_reason or getattr(self.app, "crash_reason", None)
        self.watchdog.arm(f"a crash ({reason!r})" if reason is not None else "the end of its run")
        super().on_worker_shutdown()


def _batch_counter(sensor: Any) -> Any:
    """Report records sent in batches (Runtime._send_changelog) as the sensor reports each `send`:
    counted per topic, and one record in LATENCY_SAMPLE timed (a batch's records share its latency)."""
    from streams.faust_sensor import LATENCY_SAMPLE

    metrics = getattr(sensor, "metrics", None)
    if metrics is None:
        return None
    sent = 0

    def count(topic: str, n: int, started: float, fut: asyncio.Future[Any]) -> None:
        nonlocal sent
        exc = None if fut.cancelled() else fut.exception()
        if fut.cancelled() or exc is not None:
            metrics.produce_errors.labels(topic).inc(n)
            log.error("producing %d records to %s failed: %r", n, topic, exc)
            return
        metrics.produced.labels(topic).inc(n)
        timed = -(-(sent + n) // LATENCY_SAMPLE) + (-sent // LATENCY_SAMPLE)  # records 0, 8, 16, ... of these
        sent += n
        elapsed = time.monotonic() - started
        for _ in range(timed):
            metrics.produce_seconds.observe(elapsed)

    return count


# The Faust and aiokafka releases whose private internals the worker was written and
# tested against (its consumer and producer subclasses, the offset bookkeeping fed in
# bulk, the commit arithmetic OffsetTracker.runs works around): pinned in pyproject.toml.
FAUST_TESTED = ("0.15.3", "0.14.0")


def check_versions(faust_version: str, aiokafka_version: str) -> None:
    """Refuse to run on a Faust or aiokafka the worker was not tested with: its at-least-once
    and exactly-once guarantees rest on their private internals."""
    if (faust_version, aiokafka_version) != FAUST_TESTED:
        raise RuntimeError(
            f"notifguard's worker needs faust-streaming {FAUST_TESTED[0]} and aiokafka {FAUST_TESTED[1]} "
            f"(found {faust_version} and {aiokafka_version}): it relies on their internals for its "
            "delivery guarantees; see pyproject.toml"
        )


def create_app(config: WorkerConfig) -> faust.App:
    """The notifguard Faust app; nothing connects or starts until it runs."""
    import aiokafka

    check_versions(faust.__version__, aiokafka.__version__)
    app = _App(
        config.app_id,
        broker=f"kafka://{config.bootstrap}",
        store=config.store,
        datadir=config.datadir,
        topic_partitions=config.partitions,
        topic_replication_factor=config.replication_factor,
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
        # Changelog records go out in batches of their own (Runtime._send_changelog): 16 KiB
        # (Faust's default) would cut a flush of state into a hundred produce requests.
        producer_max_batch_size=256 * 1024,
        broker_max_poll_records=config.batch_max,
        **faust_settings(config.kafka),  # TLS and SASL (streams.kafka_security)
    )
    numbers_table = app.Table("numbers", partitions=config.partitions, key_type=bytes, value_type=bytes)
    links_table = app.GlobalTable("address-index", partitions=config.partitions, key_type=bytes,
                                  value_type=bytes)
    rt = Runtime(app, config, numbers_table, links_table)
    app.notifguard = rt  # type: ignore[attr-defined]
    if config.processing_guarantee == EXACTLY_ONCE:
        rt.eos = ExactlyOnce(app, rt.inputs)
    from streams.faust_sensor import install as install_faust_sensor

    sensor = install_faust_sensor(app, rt.metrics.registry, rt.topics)  # Faust's own signals as notifguard_ metrics
    rt.count_produced = _batch_counter(sensor)
    inputs = app.topic(*rt.inputs, **_RAW)

    # Subscribed through the conductor (acks enabled); the records come to
    # rt.on_messages a fetched batch at a time (see _Consumer), not through a stream.
    app.topics.add(inputs)
    app.batch_topics = frozenset(rt.inputs)  # type: ignore[attr-defined]
    app.batch_handler = rt.on_messages  # type: ignore[attr-defined]

    @app.timer(config.tick_interval_s)
    async def tick() -> None:
        await rt.run_tick()

    async def revoked(app: Any, revoked: set[TP], **_: Any) -> None:
        await rt.on_revoked(set(revoked))

    async def assigned(app: Any, assigned: set[TP], **_: Any) -> None:
        rt.on_assigned(set(assigned))

    app.on_partitions_revoked.connect(revoked)  # type: ignore[arg-type]
    app.on_partitions_assigned.connect(assigned)  # type: ignore[arg-type]

    @app.task
    async def mark_started() -> None:
        rt.started = True
        # The cyclic GC's young generation fills every 700 allocations, and a
        # batch allocates a few per record: its collections (and the older
        # generations' passes over everything Faust, aiokafka and the caches
        # hold) cost ~1.5-3 us a record. What was built at start-up is
        # long-lived (frozen: never scanned again); the rest is scanned 70x less often.
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)

    @app.page("/health")
    async def health(web: Any, request: Any) -> Any:
        code, body = rt.health()
        return web.json(body, status=code)

    @app.page("/live")
    async def live(web: Any, request: Any) -> Any:
        code, body = rt.live()
        return web.json(body, status=code)

    @app.page("/metrics")
    async def metrics(web: Any, request: Any) -> Any:
        rt.liveness_status()  # the liveness gauges as of now, even if the timer stopped
        return web.bytes(rt.metrics.exposition(), content_type="text/plain; version=0.0.4")

    return app
