"""The one module that touches private names of Faust, aiokafka, rocksdict and prometheus_client.

The worker's delivery guarantees and speed rest on a few internals of the
libraries it runs on: Faust's acked-offset bookkeeping fed in bulk, its
consumer loop handing whole fetched batches over, aiokafka's fetch position
and batch API, the RocksDB store's per-partition databases, and
prometheus_client's histogram fields. Every such name is used here and
nowhere else (ruff's SLF001 is on for the rest of the project), and each is
listed in `PRIVATE_NAMES` with the contract test that checks it against the
installed release (tests/streams/test_seams.py), so an upgrade that moves one
fails loudly in the suite, not silently in production.
"""

from __future__ import annotations

import asyncio
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import faust


# (owner, private name): what notifguard uses it for. Each has a contract test.
PRIVATE_NAMES: dict[tuple[str, str], str] = {
    ("faust Consumer", "_committed_offset"): "the group's committed offset per topic-partition (acks, liveness)",
    ("faust Consumer", "_acked"): "acked offsets fed in bulk (BatchConsumer.ack_offsets)",
    ("faust Consumer", "_acked_index"): "acked offsets fed in bulk (BatchConsumer.ack_offsets)",
    ("faust Consumer", "_n_acked"): "acked offsets fed in bulk; the commit_every trigger",
    ("faust Consumer", "_waiting_for_ack"): "woken after a bulk ack, as Consumer.ack does",
    ("faust Consumer", "_new_consumer_thread"): "overridden: the consumer thread with the worker's fetch settings",
    ("faust Consumer", "_drain_messages"): "overridden: whole fetched batches to the worker (BatchConsumer)",
    ("faust Consumer", "_wait_next_records"): "the fetch loop of _drain_messages",
    ("faust Consumer", "_read_offset"): "the fetch loop of _drain_messages",
    ("faust Consumer", "_to_message"): "records of other topics (changelogs) go Faust's way",
    ("faust Consumer", "_buffered_partitions"): "the fetch loop of _drain_messages",
    ("faust Consumer", "_stopped"): "the fetch loop of _drain_messages",
    ("faust Consumer", "_commit_every"): "the fetch loop of _drain_messages",
    ("faust Fetcher", "_stopped"): "the fetch loop of _drain_messages",
    ("faust ConsumerThread", "_create_worker_consumer"): "overridden: fetch_max_wait_ms, fetch_min_bytes",
    ("faust ConsumerThread", "_highwaters"): "overridden: read_committed end offsets in exactly_once",
    ("faust ConsumerThread", "_ensure_consumer"): "the AIOKafkaConsumer of Faust's consumer thread",
    ("faust Consumer", "_thread"): "the consumer thread (its AIOKafkaConsumer: the fetch position)",
    ("faust App", "_new_transport"): "overridden: the transport with the batch consumer",
    ("faust App", "_producer"): "the producer must not exist before the sensor installs its class",
    ("faust TableManager", "_recovery"): "table recovery progress, without creating it",
    ("faust Producer", "_ensure_producer"): "the AIOKafkaProducer: changelog records in whole batches",
    ("faust Producer", "_new_producer"): "exactly_once: one transactional producer per worker",
    ("faust Producer", "_settings_default"): "exactly_once: the admin client's bootstrap servers",
    ("faust Producer", "_settings_auth"): "exactly_once: the admin client's credentials",
    ("aiokafka AIOKafkaConsumer", "_fetch_max_wait_ms"): "WorkerConfig.fetch_max_wait_ms",
    ("aiokafka AIOKafkaConsumer", "_fetch_min_bytes"): "WorkerConfig.fetch_min_bytes",
    ("aiokafka AIOKafkaConsumer", "_subscription"): "the fetch position of an assigned partition",
    ("aiokafka AIOKafkaProducer", "_txn_manager"): "exactly_once: abort an open transaction on close",
    ("faust RocksDB Store", "_db_for_partition"): "one database per partition: writes and scans by partition",
    ("faust RocksDB Store", "_key_index"): "the store's key -> partition index, kept right on direct writes",
    ("faust RocksDB Store", "_dbs"): "exactly_once: no store opened before it is reset",
    ("prometheus_client Histogram", "_upper_bounds"): "observe_n: one bucket update for n observations",
    ("prometheus_client Histogram", "_buckets"): "observe_n",
    ("prometheus_client Histogram", "_sum"): "observe_n",
}


# ------------------------------------------------------------------ consumer


def committed_offsets(consumer: Any) -> Mapping[Any, int | None]:
    """The group's committed offset per assigned topic-partition, as Faust's consumer knows it."""
    committed: Mapping[Any, int | None] = getattr(consumer, "_committed_offset", {})
    return committed


def fetch_position(consumer: Any, tp: Any) -> int | None:
    """aiokafka's position of an assigned topic-partition (the next offset it will fetch), or None
    without it (not assigned yet, no position yet, a consumer that is not Faust's)."""
    try:
        client = consumer._thread._ensure_consumer()  # Faust's consumer thread's AIOKafkaConsumer
        state = client._subscription.subscription.assignment.state_value(tp)
    except Exception:
        return None
    if state is None or not state.has_valid_position:
        return None
    return int(state.position)


def make_app_class(transaction_manager: type) -> type[faust.App]:
    """A faust.App whose transport has the batch consumer (BatchConsumer, BatchConsumerThread) and this
    exactly_once TransactionManager. Faust is imported here, not with this module: the worker's
    Faust-free parts (its pipeline, the table stores, the metrics) use the helpers below."""
    import faust
    from faust.transport.drivers import aiokafka as aiokafka_driver
    from faust.types.tuples import ack_lock
    from mode.utils.futures import notify

    class BatchConsumerThread(aiokafka_driver.AIOKafkaConsumerThread):
        """Faust's consumer thread with the app's fetch settings (Faust hard-codes fetch_max_wait_ms=1500
        and fetch_min_bytes=1) and read_committed end offsets in exactly_once mode."""

        def _create_worker_consumer(self, transport: Any) -> Any:
            consumer = super()._create_worker_consumer(transport)
            fetch = getattr(self.app, "fetch_settings", None)
            if fetch is not None:
                consumer._fetch_max_wait_ms, consumer._fetch_min_bytes = fetch  # read by AIOKafkaConsumer.start()
            return consumer

        async def _highwaters(self, partitions: list[Any]) -> Any:
            if self.consumer.in_transaction:  # exactly_once: ListOffsets read_committed (last stable offsets)
                return await self._ensure_consumer().end_offsets(partitions)
            return await super()._highwaters(partitions)

    class BatchConsumer(aiokafka_driver.Consumer):
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
            return BatchConsumerThread(self, loop=self.loop, beacon=self.beacon)

        def ack_offsets(self, tp: Any, offsets: Iterable[int]) -> int:
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
            # Set once Faust has sought the inputs to the committed offsets after the first table
            # recovery (Recovery.on_recovery_completed resumes the input partitions and only then
            # awaits perform_seek; a fetch in between starts wherever aiokafka stood). Before it,
            # input records are not handed over and not marked read (`dropped`: the lowest offset
            # dropped per input partition). Once it is set, and before anything of theirs is
            # handed over, those partitions are sought back to the lower of that and the
            # committed offset: a fetch that returned after Faust's seek but before `completed`
            # was set was dropped too. So each input partition's first record handed over is the
            # committed one. (Later assignments stop the flow at revocation and resume it only
            # after their seek.)
            tables: Any = self.app.tables
            sought = tables.recovery.completed.is_set
            dropped: dict[Any, int] = {}

            async def reseek() -> set[Any]:
                """Before anything of theirs is handed over (and whether more records come or not)."""
                assigned = self.assignment()
                for tp, offset in dropped.items():
                    if tp in assigned:  # (one revoked since: its next owner starts at the committed offset)
                        committed = self._committed_offset.get(tp)
                        await self.seek(tp, offset if committed is None else min(committed, offset))
                out = set(dropped)
                dropped.clear()
                return out

            while not (consumer_stopped() or fetcher_stopped()):
                await self.sleep(0)
                if self.should_stop:
                    continue
                if dropped and sought():
                    await reseek()
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
                resought = await reseek() if dropped and sought() else ()  # (this fetch's records of them come again)
                batch: list[tuple[Any, list[Any]]] = []
                for tp, recs in records.items():
                    if not recs or not (active is None or tp in active or tp in self._buffered_partitions):
                        continue
                    if tp.topic in topics and not sought():
                        dropped[tp] = min(dropped.get(tp, recs[0].offset), recs[0].offset)
                        continue
                    if tp in resought:
                        continue
                    read = read_offset[tp]
                    if read is not None and recs[0].offset < read:  # read before (a seek back): skip
                        recs = [r for r in recs if r.offset >= read]
                        if not recs:
                            continue
                    # (offsets between records, transaction markers or compacted ones, need no gap
                    # of Faust's: the worker acks unbroken runs of offsets, see OffsetTracker.runs)
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

    class Transport(aiokafka_driver.Transport):
        Consumer = BatchConsumer
        TransactionManager = transaction_manager  # started by Faust in exactly_once mode only

    class App(faust.App):
        batch_consumer = BatchConsumer  # (for tests that inject faults)

        def _new_transport(self) -> Any:
            return Transport(self.conf.broker_consumer, self)

    return App


def table_recovery(app: Any) -> Any:
    """Faust's table recovery if it exists (not `app.tables.recovery`: that would create it)."""
    return getattr(app.tables, "_recovery", None)


def apply_table_buffers(app: Any) -> None:
    """Apply the changelog records Faust's table recovery holds in its buffers, once recovery is
    over. A GlobalTable's changelog partitions are all assigned to every worker as actives (to be
    recovered at start) and as standbys (to be followed after it); Faust's recovery loop takes
    the active branch for them, and so buffers what it reads after recovery up to
    recovery_buffer_size (1,000) records before it applies them: another worker's address links
    would reach this worker's view a thousand address changes later, at a quiet time never.
    Recovery.flush_buffers is what Faust itself calls at the end of a recovery."""
    tables = getattr(app, "tables", None)  # (none: an app without tables, the runtime's tests' fakes)
    recovery = None if tables is None else getattr(tables, "_recovery", None)
    if recovery is not None and not recovery.in_recovery and any(recovery.buffers.values()):
        recovery.flush_buffers()


def producer_created(app: Any) -> bool:
    return app._producer is not None


# ------------------------------------------------------------------ producer


def aiokafka_producer(producer: Any) -> Any:
    """The AIOKafkaProducer under Faust's producer (its batch API: create_batch, send_batch)."""
    return producer._ensure_producer()


def new_transactional_producer(producer: Any, transactional_id: str) -> Any:
    """A new AIOKafkaProducer with Faust's producer settings and this transactional id."""
    return producer._new_producer(transactional_id=transactional_id)


def admin_settings(producer: Any) -> dict[str, Any]:
    """Keyword arguments for an AIOKafkaAdminClient reaching the producer's cluster as the producer does."""
    return {"bootstrap_servers": producer._settings_default()["bootstrap_servers"], **producer._settings_auth()}


def in_transaction(client: Any) -> bool:
    """Does this AIOKafkaProducer have a transaction open?"""
    manager = client._txn_manager
    return manager is not None and bool(manager.is_in_transaction())


# --------------------------------------------------------------- table stores


def partition_db(store: Any, partition: int) -> Any:
    """The RocksDB database of one partition of a Faust table store, or None for the memory store."""
    db_for_partition = getattr(store, "_db_for_partition", None)
    return None if db_for_partition is None else db_for_partition(partition)


def partition_dbs(store: Any) -> Callable[[int], Any] | None:
    """partition_db for one store, looked up once (the address index reads an address in every
    partition's database: TableLinks), or None for the memory store."""
    db_for_partition: Callable[[int], Any] | None = getattr(store, "_db_for_partition", None)
    return db_for_partition


def has_partition_dbs(store: Any) -> bool:
    """Is this a store with one database per partition (RocksDB), not one dict (memory)?"""
    return getattr(store, "_db_for_partition", None) is not None


def key_index(store: Any) -> MutableMapping[bytes, int]:
    """The RocksDB store's key -> partition index (kept right when the worker writes directly)."""
    index: MutableMapping[bytes, int] = store._key_index
    return index


def store_opened(store: Any) -> bool:
    """Has the RocksDB store opened a database yet?"""
    return bool(getattr(store, "_dbs", None))


# ---------------------------------------------------------------- prometheus


def observe_n(histogram: Any, value: float, n: int) -> None:
    """histogram.observe(value), n times: the bucket and the sum are updated once (through the
    prometheus_client internals Histogram.observe uses; if they are not there, observe n times)."""
    try:
        bounds: list[float] = histogram._upper_bounds
        buckets: list[Any] = histogram._buckets
        total: Any = histogram._sum
    except AttributeError:  # pragma: no cover - another prometheus_client (the contract test fails first)
        for _ in range(n):
            histogram.observe(value)
        return
    total.inc(value * n)
    buckets[bisect_left(bounds, value)].inc(n)
