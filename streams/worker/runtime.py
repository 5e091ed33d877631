"""The worker's runtime on Faust: batches and timer ticks through the pipeline, flushes through a committer.

`Runtime` is what the Faust app's batch handler, timer, rebalance callbacks and
web pages call (wired in streams.worker.app). It owns the lock that keeps a
batch and a tick from interleaving, the delivery deadline, the crash policy,
what Kafka says about the inputs (`BrokerView`) and liveness; the record path
itself is the Faust-free `Pipeline`, and making a flush durable is the
`Committer`'s (at least once, or exactly once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from streams import seams
from streams.config import EXACTLY_ONCE, WorkerConfig
from streams.liveness import COMMITTED, CONSUMED, INDEXED, Liveness, Status, describe_stacks, stall_bound
from streams.metrics import Metrics
from streams.tablestore import TableLinks, TableNumbers
from streams.worker.committer import AtLeastOnce, Committer, ProduceFailed
from streams.worker.exactly_once import ExactlyOnce
from streams.worker.offsets import TP
from streams.worker.pipeline import ChangelogRecord, Pipeline, input_topics, wall_clock_us
from streams.worker.quarantine import CrashJournal

log = logging.getLogger("notifguard.worker")


class DeliveryTimeout(ProduceFailed):
    """A flush waited longer than delivery_timeout_s for the broker: the worker stops rather than wait forever."""


class TimerFailed(RuntimeError):
    """The timer (Runtime.tick) ended while the worker runs: the worker stops rather than go on without it."""


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class FaustSender:
    """The Sender of streams.worker.committer on Faust's producer."""

    def __init__(self, app: Any) -> None:
        self.app = app
        # (topic, records, send time, delivery future) -> metrics of batches sent past producer.send
        self.count_produced: Callable[[str, int, float, asyncio.Future[Any]], None] | None = None

    async def send(self, topic: str, key: bytes, value: bytes | None, partition: int | None) -> Awaitable[Any]:
        fut: Awaitable[Any] = await self.app.producer.send(topic, key, value, partition, None, None)
        return fut

    async def send_changelog(self, topic: str, records: list[ChangelogRecord]) -> list[Awaitable[Any]]:
        """Changelog records (partition, key, value) as one producer batch per partition.

        Record by record through `producer.send` costs ~30 us each (three
        coroutines, a future and its callbacks per record); a changelog flush
        has hundreds to thousands of them. Counted in notifguard_records_produced_total.
        """
        if not records:
            return []
        client = seams.aiokafka_producer(self.app.producer)
        by_partition: dict[int, list[tuple[bytes, bytes | None]]] = {}
        for partition, key, value in records:
            got = by_partition.get(partition)
            if got is None:
                got = by_partition[partition] = []
            got.append((key, value))
        futures: list[Awaitable[Any]] = []
        for partition, items in by_partition.items():
            batch, n = client.create_batch(), 0
            for key, value in items:
                if batch.append(key=key, value=value, timestamp=None) is None:  # full
                    futures.append(await self._send_batch(client, batch, topic, partition, n))
                    batch, n = client.create_batch(), 0
                    if batch.append(key=key, value=value, timestamp=None) is None:
                        raise ValueError(f"a {topic} record of {len(value or b'')} bytes does not fit a batch")
                n += 1
            futures.append(await self._send_batch(client, batch, topic, partition, n))
        return futures

    async def _send_batch(self, client: Any, batch: Any, topic: str, partition: int, n: int) -> Any:
        started = time.monotonic()
        fut = await client.send_batch(batch, topic, partition=partition)
        count = self.count_produced
        if count is not None:
            fut.add_done_callback(lambda f: count(topic, n, started, f))
        return fut


class FaustAcker:
    """The Acker of streams.worker.committer on Faust's consumer (streams.seams.BatchConsumer)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def ack(self, tp: Any, offsets: range) -> None:
        self.app.consumer.ack_offsets(tp, offsets)

    def committed(self) -> Mapping[Any, int | None]:
        return seams.committed_offsets(self.app.consumer)


class BrokerView:
    """What Kafka says about the input topic-partitions: records waiting for the worker or not."""

    def __init__(self, app: Any, read: Callable[[], dict[tuple[str, int], int]]) -> None:
        self.app = app
        self._read = read  # the pipeline's last offset read per input topic-partition

    def position(self, tp: TP) -> int | None:
        """aiokafka's position (the next offset it will fetch), or None without one."""
        return seams.fetch_position(self.app.consumer, tp)

    def highwater(self, tp: TP) -> int | None:
        """The consumer's highwater (exactly_once: the last stable offset), or None when it has
        none (not fetched yet; not assigned any more: a rebalance)."""
        try:
            highwater = self.app.consumer.highwater(tp)
        except Exception:  # aiokafka asserts the partition is assigned
            return None
        return None if highwater is None or highwater < 0 else int(highwater)

    def unread(self, tp: TP) -> int | None:
        """Records Kafka holds past what we read (None: not known yet)."""
        highwater = self.highwater(tp)
        if highwater is None:
            return None
        last = self._read().get((tp.topic, tp.partition))
        if last is None:  # nothing read since assignment: we start at the committed offset
            last = (seams.committed_offsets(self.app.consumer).get(tp) or 0) - 1
        return int(max(0, highwater - last - 1))

    def waiting(self, tp: TP) -> int:
        """Records on the broker the consumer has not fetched yet: highwater minus aiokafka's
        position. Unlike `unread` (highwater minus the last offset read), a transaction marker or
        compacted offsets at the end of a partition are nothing waiting: after a transactional
        producer's last record, `unread` stays 1 for good, and liveness would restart an idle
        worker over and over. Without a position, `unread`."""
        position = self.position(tp)
        highwater = self.highwater(tp)
        if position is not None and highwater is not None:
            return max(0, highwater - position)
        return self.unread(tp) or 0

    def behind(self, tp: TP) -> bool:
        """Do records of this input topic-partition wait for us? On the broker past aiokafka's
        position, or fetched by aiokafka and not handed to us yet: more than one offset between
        the last we read and its position (one is the commit marker a transactional producer
        leaves after its last record, which is no record). Unknown (no position, no highwater
        yet): yes, until it is known."""
        position = self.position(tp)
        if position is None:
            n = self.unread(tp)
            return n is None or n > 0
        highwater = self.highwater(tp)
        if highwater is None or highwater > position:
            return True
        last = self._read().get((tp.topic, tp.partition))
        if last is None:
            return False  # nothing read since assignment, and nothing past its position
        return position - last - 1 > 1


class Runtime:
    """Everything the batch handler, the timer and the rebalance callbacks share; one per worker process."""

    def __init__(
        self,
        app: Any,
        config: WorkerConfig,
        numbers_table: Any,
        links_table: Any,
        *,
        clock: Callable[[], int] = wall_clock_us,
    ) -> None:
        self.app = app
        self.config = config
        rules = config.rules
        self.topics = rules.topics
        self.metrics = Metrics(rules.topics)
        self.numbers = TableNumbers(numbers_table)
        self.links = TableLinks(links_table, config.partitions)
        self.pipeline = Pipeline(
            config,
            self.numbers,
            self.links,
            self.metrics,
            clock=clock,
            numbers_changelog=numbers_table.changelog_topic.get_topic_name(),
            links_changelog=links_table.changelog_topic.get_topic_name(),
        )
        self.engine = self.pipeline.engine
        self.inputs = self.pipeline.inputs
        self.clock = clock
        self.broker = BrokerView(app, lambda: self.pipeline.read)
        self.sender = FaustSender(app)
        self.committer: Committer
        if config.processing_guarantee == EXACTLY_ONCE:
            # (the relinks topic's offsets are committed in the transactions as the inputs' are)
            self.committer = ExactlyOnce(app, (*self.inputs, self.pipeline.relinks))
        else:
            self.committer = AtLeastOnce(self.sender, FaustAcker(app))
        self.last_flush = time.monotonic()
        self.started = False
        # A batch (on_messages) and the timer (tick) both process records and
        # flush; one at a time, so a flush never acks a record whose outputs
        # are still waiting in the pipeline's output queue.
        self._lock = asyncio.Lock()
        # Liveness (streams/liveness.py): progress against the input waiting for the worker
        self.liveness = Liveness(
            stall_bound(
                config.stall_after_s,
                rules.idle_flush_s,
                rules.grace_s,
                config.tick_interval_s + config.flush_interval_s + 10.0,
            )
        )
        self._committed_seen: dict[TP, int] = {}  # the committed offsets the last liveness check saw
        self._stall_reported = False
        self._crashing: asyncio.Future[Any] | None = None
        # A flush whose sends failed or timed out: no later flush may ack anything (its records'
        # outputs may be among the lost sends), only raise this again until the worker has stopped
        self._undelivered: ProduceFailed | None = None

    @property
    def eos(self) -> ExactlyOnce | None:
        """The exactly-once committer (Faust's TransactionManager hook calls it), None at least once."""
        return self.committer if isinstance(self.committer, ExactlyOnce) else None

    @property
    def consumed_total(self) -> int:
        return self.pipeline.consumed_total

    # ----------------------------------------------------------------- records

    async def on_messages(self, batch: list[tuple[TP, list[Any]]]) -> None:
        """One fetched batch straight from the consumer (streams.seams.BatchConsumer), then a flush
        when due; between flushes the batch's alerts and dead letters go to the committer at once
        (at least once: to the producer, their delivery awaited at the next flush)."""
        if self._undelivered is not None:  # crashing: read nothing more (see Runtime._flush)
            raise self._undelivered
        async with self._lock:
            consumed = self.pipeline.consumed_total
            self.on_events(batch)
            if self.pipeline.consumed_total != consumed:
                self.liveness.progress(CONSUMED)
            if self.flush_due():
                await self._flush()
            elif self.pipeline.out:
                async with self._deadline():
                    await self.committer.hand_over(self.pipeline.take_outputs())

    def on_events(self, batch: list[tuple[TP, list[Any]]]) -> None:
        """A fetched batch through the pipeline (without a flush): records done before a restart
        are dropped by the committer's tracker; which inputs have records waiting is known first
        (after a recovery longer than idle_flush, the first batch must not find the
        silent-but-waiting ones idle); then flow control."""
        batch = self.committer.track(batch)
        self.pipeline.mark_behind(self.broker.behind)
        self.pipeline.on_events(batch)
        self._flow_control()

    def flush_due(self) -> bool:
        return time.monotonic() - self.last_flush >= self.config.flush_interval_s

    def _flow_control(self) -> None:
        pause, resume = self.pipeline.flow_control()
        if pause:
            self.app.consumer.pause_partitions(pause)
        if resume:
            self.app.consumer.resume_partitions(resume)

    # ------------------------------------------------------------ flush & acks

    async def flush(self) -> None:
        """Runtime._flush, once no batch or timer is half-way (see the lock in __init__)."""
        async with self._lock:
            await self._flush()

    async def _flush(self) -> None:
        """The pipeline's flush batch through the committer (see streams.worker.committer for the
        order that makes a crash at any point safe); a failed delivery stops the worker."""
        if self._undelivered is not None:
            raise self._undelivered
        batch = self.pipeline.take_flush()
        try:
            async with self._deadline():
                progress = await self.committer.commit(batch)
        except ProduceFailed as exc:
            if self._undelivered is None:
                self._undelivered = exc
                log.critical("%s", exc)
                await self.app.crash(exc)
            raise
        self.last_flush = time.monotonic()
        if progress is not None:
            self.liveness.progress(progress)

    @contextlib.asynccontextmanager
    async def _deadline(self) -> AsyncIterator[None]:
        """Bound a flush's waits on the broker by delivery_timeout_s; past it, crash the worker.

        The crash is started by the timer callback itself, so that it happens even if the
        interrupted code hangs again in its clean-up (an exactly_once producer's stop).
        The committer's `stage` says what was waited for. Nothing after the deadline is
        acked: the restarted worker reads those records again.
        """
        task = asyncio.current_task()
        fired: list[DeliveryTimeout] = []

        def expire() -> None:
            exc = DeliveryTimeout(
                f"a flush waited {self.config.delivery_timeout_s:g} s (delivery_timeout_s) while "
                f"{self.committer.stage or 'flushing'}: the broker does not take or acknowledge the worker's "
                "sends; stopping without acknowledging their input records, which are read again on restart"
            )
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

    def crash_soon(self, exc: BaseException) -> None:
        """Crash the worker (Faust stops it; the process exits non-zero) from a callback or a task."""
        if self._crashing is None:
            self._crashing = asyncio.ensure_future(self.app.crash(exc))

    # ------------------------------------------------------------------- timer

    async def tick(self) -> None:
        """Wall-clock timer: idle partitions move on, queued partitions retry, gauges refresh."""
        async with self._lock:
            # other workers' address links into this worker's view, at least once a tick (see
            # seams.apply_table_buffers); before the pipeline's tick, which retries held relinks
            seams.apply_table_buffers(self.app)
            self.pipeline.mark_behind(self.broker.behind)
            app = self.app
            indexed = self.pipeline.rebuild.indexed
            self.pipeline.tick(recovered=not app.rebalancing and not getattr(app, "in_recovery", False))
            if self.pipeline.rebuild.indexed != indexed:  # (records wait for the fill: see Pipeline.on_events)
                self.liveness.progress(INDEXED)
            await self._flush()
            self._flow_control()
        self.pipeline.refresh_gauges(self.broker.waiting)
        self.metrics.ready.set(1 if self.is_ready() else 0)
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
            raise  # crashing already (Runtime._flush, Runtime._deadline)
        except BaseException as exc:
            if getattr(self.app, "should_stop", False):
                raise  # stopping: Faust cancels its timers
            failed = TimerFailed(
                f"the timer (Runtime.tick) ended with {exc!r} while the worker runs; stopping it "
                "(records not acknowledged are read again on restart)"
            )
            log.critical("%s", failed, exc_info=exc)
            self.crash_soon(failed)
            raise failed from exc

    # ---------------------------------------------------------------- liveness

    def liveness_status(self) -> Status:
        """Stalled or not (streams/liveness.py), from what waits now; sets the liveness gauges and
        logs a stall once, with where every thread and task waits. Called by tick, /health and /metrics,
        so that a stopped timer is seen too."""
        committed = seams.committed_offsets(self.app.consumer)
        acked_upto = self.committer.acked_upto
        unread = uncommitted = 0
        moved = False
        for tp in self.pipeline.assigned:
            unread += self.broker.waiting(tp)
            c = committed.get(tp)
            if c is None:
                continue
            if self._committed_seen.get(tp, c) != c:
                moved = True
            self._committed_seen[tp] = c
            upto = acked_upto.get(tp)
            if upto is not None and upto > c:
                uncommitted += upto - c
        if moved:
            self.liveness.progress(COMMITTED)
        status = self.liveness.check(
            ready=self.is_ready(), unread=unread, pending=self.engine.pending_count(), uncommitted=uncommitted
        )
        self.metrics.stalled.set(1 if status.stalled else 0)
        self.metrics.last_progress.set(status.last_progress_unix)
        if status.stalled and not self._stall_reported:
            self._stall_reported = True
            log.error(
                "STALLED: %s; last progress: %s %.0f s ago. Where the worker waits:\n%s",
                status.reason,
                status.last_progress or "none since start",
                status.since_progress_s,
                describe_stacks(_running_loop()),
            )
        elif not status.stalled and self._stall_reported:
            self._stall_reported = False
            log.warning("no longer stalled: %s", status.last_progress or "ready")
        return status

    def is_ready(self) -> bool:
        app = self.app
        return bool(self.started and not app.rebalancing and not getattr(app, "in_recovery", False))

    def health(self) -> tuple[int, dict[str, Any]]:
        """/health (readiness): 200 when recovered, not rebalancing and not stalled, else 503."""
        ready = self.is_ready()
        status = self.liveness_status()
        body = {
            "ready": ready,
            "rebalancing": bool(self.app.rebalancing),
            "pending": self.engine.pending_count(),
            "consumed": self.consumed_total,
            "stalled": status.stalled,
            "liveness": status.as_dict(),
        }
        return (200 if ready and not status.stalled else 503), body

    def live(self) -> tuple[int, dict[str, Any]]:
        """/live (the Kubernetes liveness probe): 503 when stalled only, not while recovering or
        rebalancing (a restart would only start those again)."""
        status = self.liveness_status()
        return (503 if status.stalled else 200), status.as_dict()

    # --------------------------------------------------------------- rebalance

    async def on_revoked(self, revoked: set[TP]) -> None:
        partitions = {tp.partition for tp in revoked if tp.topic in self.inputs}
        async with self._lock:
            await self._flush()
            self.pipeline.revoke(partitions)
            self.committer.reset(revoked)  # Faust seeks the partitions it assigns to their committed offsets
            for tp in revoked:
                self._committed_seen.pop(tp, None)
        self.metrics.rebalances.inc()

    def on_assigned(self, assigned: set[TP]) -> None:
        if self.pipeline.journal is None and self.config.crash_quarantine_after > 0:
            # opened at the first assignment, before any record is read (not when the app is built:
            # that starts nothing and writes nothing); a death found in flight is charged now
            journal = CrashJournal(
                Path(self.config.datadir) / f"{self.config.app_id}-quarantine",
                (*input_topics(self.topics), self.pipeline.relinks),
                self.config.crash_quarantine_after,
            )
            self.pipeline.use_journal(journal)
        self.pipeline.assign(assigned)
