"""Offset bookkeeping of the input topic-partitions: which delivered records are done, what to commit.

Faust-free. Both committers use it: at-least-once acks the unbroken runs of
done offsets to Faust (`OffsetTracker.runs`), exactly-once commits the offset
of each unbroken run with the done records past it in the commit's metadata
(`OffsetTracker.committable`, `encode_done`).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

log = logging.getLogger("notifguard.offsets")


class TP(NamedTuple):
    """A topic-partition; equal to (and hashed as) Faust's and aiokafka's TopicPartition tuples."""

    topic: str
    partition: int


Batch = list[tuple[TP, list[Any]]]  # fetched records per input topic-partition, in offset order


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
        self._seen: dict[TP, list[list[int]]] = {}  # offset spans delivered since the last clear, in order
        self._floor: dict[TP, int] = {}  # the committed offset loaded (exactly once): nothing below is new
        self._dirty: set[TP] = set()

    def load(self, tp: TP, offset: int, metadata: str) -> None:
        """The group's committed offset and metadata of an assigned topic-partition."""
        skip = {o for o in decode_done(offset, metadata) if o >= offset}
        if skip:
            self._skip[tp] = skip
            self._done[tp] = set(skip)
        self._next[tp] = offset
        self._floor[tp] = offset

    def delivered(self, batch: Batch) -> Batch:
        """Track a fetched batch; returns it without the records done before (see `load`) or
        delivered before (a seek back re-delivers what was read since the committed offset)."""
        pending, seen, skip = self._pending, self._seen, self._skip
        out: Batch = []
        for tp, records in batch:
            if not records:
                continue
            q = pending.get(tp)
            if q is None:
                q = pending[tp] = deque()
            spans = seen.get(tp)
            if spans is None:
                seen[tp] = [[records[0].offset, records[-1].offset]]
                q.extend(r.offset for r in records)
            elif records[0].offset > spans[-1][1]:  # goes on past everything seen (a fetch skips no record)
                spans[-1][1] = records[-1].offset
                q.extend(r.offset for r in records)
            else:
                records = self._not_seen(tp, records, spans, q)
                if not records:
                    continue
            s = skip.get(tp)
            if s:
                kept = [r for r in records if r.offset not in s]
                s.difference_update(r.offset for r in records)
                if not kept:
                    continue
                records = kept
            out.append((tp, records))
        return out

    def _not_seen(self, tp: TP, records: list[Any], spans: list[list[int]], q: deque[int]) -> list[Any]:
        """Records read again after a seek back: only those never delivered are new.

        Usually none below the first delivery: Faust seeks to the committed offsets before the
        inputs' records are handed over (streams.seams.BatchConsumer). Should a delivery ever have
        started above the committed offset, the seek's records below it are new (never processed;
        acking past them would lose them), unless below the committed offset loaded (exactly once:
        done before). They are processed then, out of offset order, and said so.
        """
        floor = self._floor.get(tp, -1)
        new = [r for r in records if r.offset >= floor and not _within(spans, r.offset)]
        if not new:
            return new
        top = spans[-1][1]
        hole = [r.offset for r in new if r.offset < top]
        for r in new:
            _add(spans, r.offset)
        if hole:
            log.warning(
                "%s: %d records at offsets %d-%d, below records delivered before them, arrived after "
                "a seek back: processed now, out of offset order",
                tp,
                len(hole),
                hole[0],
                hole[-1],
            )
            merged = sorted(set(q).union(r.offset for r in new))
            q.clear()
            q.extend(merged)
        else:
            q.extend(r.offset for r in new)
        return new

    def done(self, messages: Iterable[Any]) -> None:
        done, pending, dirty = self._done, self._pending, self._dirty
        for msg in messages:
            tp = TP(msg.topic, msg.partition)
            q = pending.get(tp)
            if not q or msg.offset < q[0]:
                continue  # not waiting for its ack (see delivered)
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
            if nxt is None and self._done[tp]:
                # Nothing committed yet and the first record delivered still held, but records past
                # it done (a dead letter: its output in this transaction): commit that first
                # offset, where a successor starts anyway, with them listed, or it would do them again.
                q = self._pending.get(tp)
                nxt = q[0] if q else None
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
            elif first < start:  # records below an acked run, delivered after it (see _not_seen)
                start = first
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
        for d in (self._pending, self._done, self._skip, self._next, self._seen, self._floor):
            d.clear()
        self._dirty.clear()


def _within(spans: list[list[int]], offset: int) -> bool:
    return any(a <= offset <= b for a, b in spans)


def _add(spans: list[list[int]], offset: int) -> None:
    """Put one offset into sorted, disjoint spans, merging neighbours."""
    i = 0
    while i < len(spans) and spans[i][1] < offset - 1:
        i += 1
    if i < len(spans) and spans[i][0] <= offset + 1:
        spans[i][0] = min(spans[i][0], offset)
        spans[i][1] = max(spans[i][1], offset)
        if i + 1 < len(spans) and spans[i + 1][0] <= spans[i][1] + 1:
            spans[i][1] = max(spans[i][1], spans.pop(i + 1)[1])
    else:
        spans.insert(i, [offset, offset])


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
            log.warning(
                "exactly_once: too many done records past a held one to record; "
                "the rest may be processed again after a restart"
            )
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
