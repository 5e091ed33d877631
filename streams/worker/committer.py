"""Delivering a flush batch and acknowledging its input records: the `Committer` protocol, at least once.

A committer takes the typed flush batch of the pipeline (streams.worker.pipeline.FlushBatch)
and makes it durable in the one order that makes a crash at any point safe:

1. the alerts and dead letters (handed to the producer ahead, between flushes, in this mode);
2. the address links: written to the local store, sent to their changelog;
3. every send so far is delivered (a failed or lost one stops the worker: `ProduceFailed`);
4. the number states, which remember their records as done: local store, changelog, delivered;
5. the acks of the batch's input records, in unbroken runs of offsets (OffsetTracker.runs),
   which Faust commits.

A crash before 5 re-reads the records and re-emits their outputs (same dedup_key);
a crash after 3 and before 4 finds their states without them (they are applied again).
The exactly-once committer (streams.worker.exactly_once) does 1-5 in one Kafka transaction.
Nothing here knows Faust: the producer and the consumer come in as the ports below.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping
from typing import Any, Protocol

from streams.liveness import ACKED, DELIVERED
from streams.worker.offsets import TP, Batch, OffsetTracker
from streams.worker.pipeline import ChangelogRecord, FlushBatch, Output


class ProduceFailed(RuntimeError):
    """Outputs or state could not be delivered to Kafka: the worker stops rather than ack their inputs."""


class Sender(Protocol):
    """The producer side: sends whose delivery is awaited later."""

    async def send(self, topic: str, key: bytes, value: bytes | None, partition: int | None) -> Awaitable[Any]:
        """Hand one record to the producer; returns its delivery future."""
        ...

    async def send_changelog(self, topic: str, records: list[ChangelogRecord]) -> list[Awaitable[Any]]:
        """Hand changelog records (partition, key, value) to the producer in whole batches."""
        ...


class Acker(Protocol):
    """The consumer side of at-least-once: Faust's acked-offset bookkeeping, which it commits."""

    def ack(self, tp: TP, offsets: range) -> None: ...

    def committed(self) -> Mapping[TP, int | None]: ...


class Committer(Protocol):
    """Makes a flush batch durable and acknowledges its input records (at least once, exactly once)."""

    stage: str  # what a commit under way waits for (the delivery-timeout message)
    acked_upto: dict[TP, int]  # per input topic-partition, the end of what was acked (liveness)

    def track(self, batch: Batch) -> Batch:
        """Fetched records, before the pipeline sees them: returns those not done before."""
        ...

    async def hand_over(self, outputs: list[Output]) -> None:
        """Outputs produced between flushes: sent now, or held for the next commit."""
        ...

    async def commit(self, batch: FlushBatch) -> str | None:
        """Deliver and acknowledge; returns the progress made (streams.liveness), None for none."""
        ...

    def reset(self, revoked: set[TP]) -> None:
        """After a rebalance: Faust seeks every assigned partition to its committed offset."""
        ...


class AtLeastOnce:
    """processing_guarantee = "at_least_once": outputs ahead, acks after delivery, Faust commits."""

    def __init__(self, sender: Sender, acker: Acker) -> None:
        self.sender = sender
        self.acker = acker
        self.tracker = OffsetTracker()
        self.stage = ""
        self.acked_upto: dict[TP, int] = {}
        self._in_flight: list[Awaitable[Any]] = []  # delivery futures of the sends since the last check
        self._unconfirmed: list[Output] = []  # outputs handed over, counted once delivered

    def track(self, batch: Batch) -> Batch:
        return self.tracker.delivered(batch)

    async def hand_over(self, outputs: list[Output]) -> None:
        """Steps 1: the broker gets the alerts and dead letters now; their delivery is awaited at the commit."""
        if not outputs:
            return
        self.stage = "handing alerts and dead letters to the producer"
        send, track = self.sender.send, self._in_flight.append
        for o in outputs:
            track(await send(o.topic, o.key, o.value, o.partition))
        self._unconfirmed += outputs

    async def commit(self, batch: FlushBatch) -> str | None:
        delivered = bool(batch.outputs or self._in_flight)
        await self.hand_over(batch.outputs)  # 1
        links = batch.links.flush()  # 2
        self.stage = "handing address links to the producer"
        self._in_flight += await self.sender.send_changelog(batch.links.changelog, links)
        await self._delivered()  # 3
        numbers = batch.numbers.flush()  # 4
        self.stage = "handing number states to the producer"
        self._in_flight += await self.sender.send_changelog(batch.numbers.changelog, numbers)
        await self._delivered()
        self.stage = ""
        for o in self._unconfirmed:
            if o.sent is not None:
                o.sent.inc()
        self._unconfirmed.clear()
        self.tracker.done(batch.done)  # 5
        for tp, run in self.tracker.runs(self.acker.committed()).items():
            self.acker.ack(tp, run)
            self.acked_upto[tp] = max(run.stop, self.acked_upto.get(tp, 0))
        if batch.done:
            return ACKED
        return DELIVERED if delivered or links or numbers else None

    async def _delivered(self) -> None:
        """Wait for every send since the last check; a failed one stops the worker before any ack.

        The producer has retried already. Acking the records behind a lost
        alert or state record would commit their offsets and lose it for good;
        stopping instead leaves them unacknowledged, so the restarted worker
        reads them again (the failures are counted in
        notifguard_produce_errors_total and logged by the sensor).
        """
        futures, self._in_flight = self._in_flight, []
        if not futures:
            return
        self.stage = f"waiting for the broker to acknowledge {len(futures)} sends"
        results = await asyncio.gather(*futures, return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            raise ProduceFailed(
                f"{len(failed)} of {len(futures)} producer sends failed (first: {failed[0]!r}); "
                "stopping without acknowledging their input records, which are read again "
                "on restart"
            )

    def reset(self, revoked: set[TP]) -> None:
        self.tracker.clear()
        for tp in revoked:  # acks of revoked partitions are not committed (Faust discards them)
            self.acked_upto.pop(tp, None)
