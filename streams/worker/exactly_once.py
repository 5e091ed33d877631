"""processing_guarantee = "exactly_once": one Kafka transaction per flush.

Faust's own exactly-once does not fit this worker: it ties a transaction to
the *output* partition of each send (its TransactionManager.send picks the
transactional id from the destination partition), commits the consumed
offsets in transactions of their own, and the worker sends its alerts, dead
letters and changelog records outside any Faust event anyway. So in this mode
the worker runs its own transactions, and Faust keeps only what it does well:

- One transactional producer per worker. Each flush (Runtime.flush, every
  flush_interval_s, at a revocation and on the timer) is one transaction:
  the alerts and dead letters, the address-index and number-state changelog
  records, and the offsets of the input records it releases
  (send_offsets_to_transaction with the consumer group), committed together.
  Records are never acked to Faust, so Faust's own offset commits have nothing
  to commit; the transaction is the only thing that moves the group's offsets.
- The offsets: each input topic-partition's records are tracked as they are
  delivered; a flush commits, per topic-partition, the offset after the last
  record of an unbroken run of released records (held records in the grace
  buffer stop the run, as their acks do in at-least-once mode).
- Fencing (zombies): the transactional id is ``{app_id}-eos-p{N}``, N the
  lowest input partition assigned to the worker. At every assignment the
  worker first initialises the ids of *all* its input partitions, before
  Faust's table recovery starts (this manager's on_rebalance runs before
  tables.on_rebalance): that aborts any transaction a previous owner of those
  partitions left open and fences that owner (a crashed or partitioned
  worker), whose id was one of them. Then it keeps the one for its lowest.
- Faust is still configured with processing_guarantee="exactly_once" for the
  rest: its consumer reads with isolation_level=read_committed (input and
  table recovery see committed transactions only) and its recovery steps over
  transaction markers. Its highwaters for recovery come from ListOffsets with
  read_committed (see `committed_end_offsets`), not from the fetch position.
- Local table state is rebuilt from the committed changelog at every start:
  a store written ahead of a transaction that was then aborted (a kill between
  the local write and the commit) would otherwise hold state whose records are
  read again. A RocksDB table directory is wiped at start-up in this mode.

What it does not give: consumers of notifguard.alerts and the changelogs must
read with isolation_level=read_committed to see each alert once. aiokafka's
TxnOffsetCommit carries no consumer-group generation (KIP-447), so fencing
relies on the transactional ids above, as Kafka Streams did before 2.5; and
offsets are read back after a rebalance without KIP-447's "require stable"
flag, so a re-assignment within milliseconds of the previous owner's commit
could re-read a flush (duplicates, never losses). Any failure of a
transaction (fenced, broker error) crashes the worker: its in-memory state is
ahead of what was committed, and a restart rebuilds it from the changelog.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from aiokafka.structs import TopicPartition
from faust.transport.consumer import TransactionManager as FaustTransactionManager
from faust.types import TP as FaustTP

from streams import seams
from streams.liveness import COMMITTED
from streams.worker.offsets import TP, Batch, OffsetTracker
from streams.worker.pipeline import FlushBatch, Output

log = logging.getLogger("notifguard.transactions")


class ExactlyOnce:
    """The worker's transactional producer and its per-flush transaction (one per worker process)."""

    def __init__(self, app: Any, inputs: Iterable[str]) -> None:
        self.app = app
        self.inputs = frozenset(inputs)
        self.tracker = OffsetTracker()
        self.producer: Any = None
        self.partitions: list[int] = []
        self.transactions = 0  # committed, for tests and logs
        self.stage = ""
        self.acked_upto: dict[TP, int] = {}  # nothing is acked to Faust in this mode
        self._held: list[Output] = []  # outputs for the next transaction
        self._lock = asyncio.Lock()

    @property
    def group_id(self) -> str:
        return str(self.app.conf.id)

    def transactional_id(self, partition: int) -> str:
        return f"{self.app.conf.id}-eos-p{partition}"

    # ----------------------------------------------------------- records

    def track(self, batch: Batch) -> Batch:
        return self.tracker.delivered(batch)

    async def hand_over(self, outputs: list[Output]) -> None:
        """Outputs wait for the next flush's transaction."""
        self._held += outputs

    def reset(self, revoked: set[TP]) -> None:
        """The tracker starts afresh at the next assignment (on_assigned), after the fencing."""

    async def commit(self, batch: FlushBatch) -> str | None:
        """The flush in this mode: outputs, changelogs and offsets in one transaction."""
        async with self._lock:
            out, self._held = self._held + batch.outputs, []
            links = batch.links.flush()
            numbers = batch.numbers.flush()
            self.tracker.done(batch.done)
            offsets = self.tracker.committable()
            if not (out or links or numbers or offsets):
                return None
            producer = self.producer
            self.stage = "committing the exactly_once transaction of a flush"
            try:
                if producer is None:
                    raise RuntimeError(
                        "exactly_once: records to commit but no transactional producer (no input partition assigned)"
                    )
                await producer.begin_transaction()
                send = producer.send
                futures = [await send(o.topic, o.value, key=o.key, partition=o.partition) for o in out]
                changelog = batch.links.changelog
                futures += [
                    await send(changelog, value, key=key, partition=partition) for partition, key, value in links
                ]
                changelog = batch.numbers.changelog
                futures += [
                    await send(changelog, value, key=key, partition=partition) for partition, key, value in numbers
                ]
                if offsets:
                    await producer.send_offsets_to_transaction(
                        {TopicPartition(tp.topic, tp.partition): om for tp, om in offsets.items()}, self.group_id
                    )
                await asyncio.gather(*futures)
                await producer.commit_transaction()
            except BaseException as exc:
                # The in-memory state (and the local store) is now ahead of what Kafka holds:
                # this worker must not go on. A restart rebuilds it from the committed changelog.
                log.critical("exactly_once: the transaction of a flush failed; the worker stops: %r", exc)
                self.producer = None
                if producer is not None:
                    with contextlib.suppress(Exception):
                        await producer.stop()
                if not isinstance(exc, asyncio.CancelledError):
                    await self.app.crash(exc)
                raise
            finally:
                self.stage = ""
            self.transactions += 1
            for o in out:
                if o.sent is not None:
                    o.sent.inc()
            return COMMITTED

    # ---------------------------------------------------------- rebalance

    async def on_assigned(self, assigned: Iterable[Any]) -> None:
        """Fence every previous owner of these input partitions; keep one producer for the lowest."""
        parts = sorted({tp.partition for tp in assigned if tp.topic in self.inputs})
        async with self._lock:
            self.tracker.clear()
            await self._close()
            if not parts:
                return
            producers = [seams.new_transactional_producer(self.app.producer, self.transactional_id(p)) for p in parts]
            try:
                # InitProducerId for each id: bumps its epoch (the old holder is fenced)
                # and aborts (waits for) a transaction it left open.
                await asyncio.gather(*(p.start() for p in producers))
            except BaseException as exc:
                for p in producers:
                    with contextlib.suppress(Exception):
                        await p.stop()
                log.critical("exactly_once: could not initialise the transactional producers: %r", exc)
                await self.app.crash(exc)
                raise
            self.producer = producers[0]
            self.partitions = parts
            await self._load_committed([tp for tp in assigned if tp.topic in self.inputs])
            for p in producers[1:]:
                await p.stop()
            log.info(
                "exactly_once: transactional id %s (fenced %s)",
                self.transactional_id(parts[0]),
                ", ".join(self.transactional_id(p) for p in parts),
            )

    async def _load_committed(self, tps: list[TP]) -> None:
        """The group's committed offsets and their done-past-the-offset lists (after the fencing)."""
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(**seams.admin_settings(self.app.producer))
        await admin.start()
        try:
            committed = await admin.list_consumer_group_offsets(
                self.group_id, partitions=[TopicPartition(tp.topic, tp.partition) for tp in tps]
            )
        finally:
            await admin.close()
        for tp, meta in committed.items():
            if meta.offset >= 0:
                self.tracker.load(TP(tp.topic, tp.partition), meta.offset, meta.metadata or "")

    async def _close(self) -> None:
        producer, self.producer = self.producer, None
        if producer is None:
            return
        with contextlib.suppress(Exception):
            if seams.in_transaction(producer):
                await producer.abort_transaction()
        with contextlib.suppress(Exception):
            await producer.stop()

    async def stop(self) -> None:
        async with self._lock:
            await self._close()


def wipe_local_tables(app: Any) -> None:
    """Drop the local table stores (RocksDB directories) before anything opens them."""
    for table in app.tables.values():
        store = table.data
        if seams.store_opened(store):
            raise RuntimeError("exactly_once: a table store was opened before it could be reset")
        reset = getattr(store, "reset_state", None)
        if reset is not None:
            reset()


class TransactionManager(FaustTransactionManager):
    """Faust's hook object in exactly_once mode (started by its consumer only in that mode).

    Its on_rebalance runs in Faust's assignment callback before the table
    recovery: the right moment to fence previous owners (ExactlyOnce.on_assigned).
    Faust's offset commits come here and find nothing: records are not acked
    to Faust in this mode. Sends through Faust's topics would need Faust's
    per-partition transactions, which this worker does not use.
    """

    def _eos(self) -> ExactlyOnce | None:
        rt = getattr(self.app, "notifguard", None)
        return getattr(rt, "eos", None)

    async def on_start(self) -> None:
        if self._eos() is None:
            raise RuntimeError("exactly_once needs the notifguard runtime (streams.worker.app.create_app)")
        wipe_local_tables(self.app)

    async def on_stop(self) -> None:
        eos = self._eos()
        if eos is not None:
            await eos.stop()

    async def on_partitions_revoked(self, revoked: set[FaustTP]) -> None:
        """The runtime's revocation flush commits what was done (its own transaction)."""

    async def on_rebalance(self, assigned: set[FaustTP], revoked: set[FaustTP], newly_assigned: set[FaustTP]) -> None:
        eos = self._eos()
        if eos is not None:
            await eos.on_assigned(assigned)

    async def commit(self, offsets: Mapping[FaustTP, int], start_new_transaction: bool = True) -> bool:
        if offsets:
            log.error("exactly_once: Faust tried to commit offsets outside a flush transaction: %s", offsets)
        return False

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
        raise NotImplementedError("exactly_once: this worker produces only inside its flush transactions")
