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
import time
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

from aiokafka.structs import TopicPartition
from faust.transport.consumer import TransactionManager as _FaustTransactionManager
from faust.types import TP

log = logging.getLogger("notifguard.transactions")

EXACTLY_ONCE = "exactly_once"
Batch = list[tuple[TP, list[Any]]]  # fetched records per input topic-partition, in offset order
GUARANTEES = ("at_least_once", EXACTLY_ONCE)


class OffsetTracker:
    """Per input topic-partition: which delivered records are done, and what to commit.

    A topic-partition's committed offset stops at its first record not done
    (held in a grace buffer); records after it may be done already, their
    outputs in the same transaction. The commit's metadata lists those
    (`encode_done`), and after a restart or a handover they are skipped on
    re-read: otherwise a record the engine keeps no state for (one that was
    dead-lettered) would be dead-lettered again.
    """

    def __init__(self) -> None:
        self._pending: dict[TP, deque[int]] = {}  # delivered offsets, in order, up to the first not done
        self._done: dict[TP, set[int]] = {}  # done offsets still in _pending (or skipped, not yet read)
        self._skip: dict[TP, set[int]] = {}  # done before (commit metadata): not to be processed again
        self._next: dict[TP, int] = {}
        self._last: dict[TP, int] = {}  # last offset delivered
        self._dirty: set[TP] = set()

    def load(self, tp: TP, offset: int, metadata: str) -> None:
        """The group's committed offset and metadata of an assigned topic-partition."""
        skip = {o for o in decode_done(offset, metadata) if o >= offset}
        if skip:
            self._skip[tp] = skip
            self._done[tp] = set(skip)
        self._next[tp] = offset

    def delivered(self, batch: Batch) -> Batch:
        """Track a fetched batch; returns it without the records done before (see `load`)."""
        pending, last, skip = self._pending, self._last, self._skip
        out: Batch = []
        for tp, records in batch:
            seen = last.get(tp, -1)
            if records and records[0].offset <= seen:
                # Read again after a seek back (Faust seeks to the committed offset
                # when it resumes the inputs): the first delivery is the one tracked.
                records = [r for r in records if r.offset > seen]
                if not records:
                    continue
            last[tp] = records[-1].offset
            q = pending.get(tp)
            if q is None:
                q = pending[tp] = deque()
            q.extend(r.offset for r in records)
            s = skip.get(tp)
            if s:
                kept = [r for r in records if r.offset not in s]
                s.difference_update(r.offset for r in records)
                if not kept:
                    continue
                records = kept
            out.append((tp, records))
        return out

    def done(self, messages: Iterable[Any]) -> None:
        done, nxt, dirty = self._done, self._next, self._dirty
        for msg in messages:
            tp = TP(msg.topic, msg.partition)
            if msg.offset < nxt.get(tp, -1):
                continue  # a second delivery's ack (see delivered)
            s = done.get(tp)
            if s is None:
                s = done[tp] = set()
            s.add(msg.offset)
            dirty.add(tp)

    def committable(self) -> dict[TP, tuple[int, str]]:
        """(offset, metadata) of the topic-partitions that moved since the last call."""
        out: dict[TP, tuple[int, str]] = {}
        for tp in self._dirty:
            _, end = self._pop_done(tp)
            if end is not None:
                self._next[tp] = end
            nxt = self._next.get(tp)
            if nxt is not None:
                out[tp] = (nxt, encode_done(nxt, self._done[tp]))
        self._dirty.clear()
        return out

    def runs(self, committed: Mapping[TP, int | None]) -> dict[TP, range]:
        """At least once: per topic-partition that moved, the offsets now done without a break.

        A run goes from where the last one ended (the first: from the group's
        `committed` offset, if known and not past the first record) to the first
        record not done, so it includes the offsets between records that are no
        records (transaction markers, compacted ones). Acked as runs, Faust's
        acked offsets never have a hole: its Consumer._new_offset (0.15.3) lets a
        commit skip one missing offset right after the committed one, which here
        would be a record still held in a grace buffer (lost by a crash then).
        """
        out: dict[TP, range] = {}
        for tp in self._dirty:
            first, end = self._pop_done(tp)
            if first is None or end is None:
                continue
            start = self._next.get(tp)
            if start is None:
                c = committed.get(tp)
                start = c if c is not None and 0 <= c <= first else first
            self._next[tp] = end
            out[tp] = range(start, end)
        self._dirty.clear()
        return out

    def _pop_done(self, tp: TP) -> tuple[int | None, int | None]:
        """Take the done offsets off the head of tp's delivered ones: (the first taken, the offset
        after the last taken), or (None, None) when the head is not done."""
        q = self._pending.get(tp)
        done = self._done[tp]
        if not q or q[0] not in done:
            return None, None
        first = q[0]
        while q and q[0] in done:
            offset = q.popleft()
            done.discard(offset)
        return first, offset + 1

    def clear(self) -> None:
        """After a rebalance Faust seeks every assigned partition to its committed offset: start afresh."""
        for d in (self._pending, self._done, self._skip, self._next, self._last):
            d.clear()
        self._dirty.clear()


# Kafka keeps at most offset.metadata.max.bytes (4096 by default) of metadata per offset.
METADATA_MAX = 4000


def encode_done(base: int, done: Iterable[int]) -> str:
    """Done offsets above `base` as ranges relative to it: "eos1:3-7,9" (at most METADATA_MAX)."""
    runs: list[list[int]] = []
    for o in sorted(done):
        if runs and o == runs[-1][1] + 1:
            runs[-1][1] = o
        else:
            runs.append([o, o])
    text = "eos1:"
    for a, b in runs:
        part = f"{a - base}" if a == b else f"{a - base}-{b - base}"
        if len(text) + len(part) + 1 > METADATA_MAX:
            log.warning("exactly_once: too many done records past a held one to record; "
                        "the rest may be processed again after a restart")
            break
        text += part + ","
    return text.rstrip(",")


def decode_done(base: int, metadata: str) -> list[int]:
    if not metadata.startswith("eos1:") or metadata == "eos1:":
        return []
    out: list[int] = []
    for part in metadata[5:].split(","):
        a, _, b = part.partition("-")
        out.extend(range(base + int(a), base + int(b or a) + 1))
    return out


class ExactlyOnce:
    """The worker's transactional producer and its per-flush transaction (one per worker process)."""

    def __init__(self, app: Any, inputs: Iterable[str]) -> None:
        self.app = app
        self.inputs = frozenset(inputs)
        self.tracker = OffsetTracker()
        self.producer: Any = None
        self.partitions: list[int] = []
        self.transactions = 0  # committed, for tests and logs
        self._lock = asyncio.Lock()

    @property
    def group_id(self) -> str:
        return str(self.app.conf.id)

    def transactional_id(self, partition: int) -> str:
        return f"{self.app.conf.id}-eos-p{partition}"

    # ----------------------------------------------------------- records

    def delivered(self, batch: Batch) -> Batch:
        return self.tracker.delivered(batch)

    async def flush(self, rt: Any) -> None:
        """Runtime.flush in this mode: outputs, changelogs and offsets in one transaction."""
        async with self._lock:
            out, rt.out = rt.out, []
            links = rt.links.flush()
            numbers = rt.numbers.flush()
            self.tracker.done(rt.to_ack)
            rt.to_ack.clear()
            offsets = self.tracker.committable()
            rt.last_flush = time.monotonic()
            if not (out or links or numbers or offsets):
                return
            producer = self.producer
            try:
                if producer is None:
                    raise RuntimeError("exactly_once: records to commit but no transactional producer "
                                       "(no input partition assigned)")
                await producer.begin_transaction()
                send = producer.send
                futures = [await send(topic, value, key=key, partition=partition)
                           for topic, key, value, partition in out]
                changelog = rt.links_changelog
                futures += [await send(changelog, value, key=key, partition=partition)
                            for partition, key, value in links]
                changelog = rt.numbers_changelog
                futures += [await send(changelog, value, key=key, partition=partition)
                            for partition, key, value in numbers]
                if offsets:
                    await producer.send_offsets_to_transaction(
                        {TopicPartition(tp.topic, tp.partition): om for tp, om in offsets.items()}, self.group_id)
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
            self.transactions += 1

    # ---------------------------------------------------------- rebalance

    async def on_assigned(self, assigned: Iterable[TP]) -> None:
        """Fence every previous owner of these input partitions; keep one producer for the lowest."""
        parts = sorted({tp.partition for tp in assigned if tp.topic in self.inputs})
        async with self._lock:
            self.tracker.clear()
            await self._close()
            if not parts:
                return
            new = self.app.producer._new_producer
            producers = [new(transactional_id=self.transactional_id(p)) for p in parts]
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
            log.info("exactly_once: transactional id %s (fenced %s)", self.transactional_id(parts[0]),
                     ", ".join(self.transactional_id(p) for p in parts))

    async def _load_committed(self, tps: list[TP]) -> None:
        """The group's committed offsets and their done-past-the-offset lists (after the fencing)."""
        from aiokafka.admin import AIOKafkaAdminClient

        settings = self.app.producer._settings_default()
        admin = AIOKafkaAdminClient(bootstrap_servers=settings["bootstrap_servers"],
                                    **self.app.producer._settings_auth())
        await admin.start()
        try:
            committed = await admin.list_consumer_group_offsets(
                self.group_id, partitions=[TopicPartition(tp.topic, tp.partition) for tp in tps])
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
            if producer._txn_manager is not None and producer._txn_manager.is_in_transaction():
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
        if getattr(store, "_dbs", None):
            raise RuntimeError("exactly_once: a table store was opened before it could be reset")
        reset = getattr(store, "reset_state", None)
        if reset is not None:
            reset()


async def committed_end_offsets(consumer: Any, partitions: list[Any]) -> Mapping[Any, int]:
    """End offsets as a read_committed consumer sees them (the last stable offset).

    Faust's exactly-once recovery reads `last_stable_offset` from the fetch
    state, which aiokafka knows only after a fetch of that partition, so a
    fresh worker would see nothing to recover. ListOffsets from a
    read_committed consumer gives the last stable offset at once.
    """
    return await consumer.end_offsets(partitions)  # type: ignore[no-any-return]


class TransactionManager(_FaustTransactionManager):
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
            raise RuntimeError("exactly_once needs the notifguard runtime (streams.worker.create_app)")
        wipe_local_tables(self.app)

    async def on_stop(self) -> None:
        eos = self._eos()
        if eos is not None:
            await eos.stop()

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        """The runtime's revocation flush commits what was done (its own transaction)."""

    async def on_rebalance(self, assigned: set[TP], revoked: set[TP], newly_assigned: set[TP]) -> None:
        eos = self._eos()
        if eos is not None:
            await eos.on_assigned(assigned)

    async def commit(self, offsets: Mapping[TP, int], start_new_transaction: bool = True) -> bool:
        if offsets:
            log.error("exactly_once: Faust tried to commit offsets outside a flush transaction: %s", offsets)
        return False

    async def send(self, topic: str, key: bytes | None, value: bytes | None, partition: int | None,
                   timestamp: float | None, headers: Any, *, transactional_id: str | None = None) -> Any:
        raise NotImplementedError("exactly_once: this worker produces only inside its flush transactions")
