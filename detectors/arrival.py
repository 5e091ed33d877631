"""Arrival: when a record may be applied (contract 1.1, "Event time, grace and determinism").

The one place that decides it, for the engine, the offline replay's decoding
process and the worker alike:

- Each input topic-partition (a *source*) has a watermark: the largest
  `event_time` accepted on it.
- The watermark that releases records is the **minimum** over the sources. It
  never goes back, but when the set of sources changes (a partition assigned
  or first seen, partitions given up), it is what the new set allows. A source that has received nothing for
  `idle_flush` of the arrival clock is idle and does not hold it back until it
  receives again; a source that has never received anything holds it back
  from when its partition was first seen until it is idle. When every source
  is idle the watermark advances with the clock, from the largest event time
  accepted. So a topic that runs ahead (a batch, a replay, a faster producer)
  waits in the buffer; it does not make the others late.
- The minimum is taken over every source this component is fed, not only over
  one partition's three: it is never above any partition's watermark (nothing
  the contract judges on time is judged late), and it applies the records of
  different numbers in event-time order too, which the address links across
  numbers (`recipient_other_customer`) need.
- A record is late when its event time is below the watermark less grace on
  arrival: the caller applies it at once. Late within the correction horizon
  (event time at least the watermark less `horizon`: LATE) its number's verdicts
  are judged again (detectors.engine, contract 1.1); beyond it (TOO_LATE) not. Otherwise it waits in the grace
  buffer and is released, in (event time, topic order, change type, event id)
  order, once the watermark less grace has passed it. That order does not
  depend on the arrival order.
- A record whose (number, event id) is already in the buffer is a duplicate.
  Duplicates of records already applied are the number state's to find (its
  seen ids), when the record is applied.
- **A watermark that stops moving.** When the watermark has not moved for
  `idle_flush` of the clock while the source holding it is not known to have
  records waiting (its records keep coming with one event time, say), it
  advances with the clock from there, so what waits is released.
- **The buffer's bound.** It holds at most `max_buffered` records; beyond
  that the earliest are released before their time (counted in
  `released_early`): a record released early can be judged before a change
  that is still on its way within grace. Flow control (the worker pauses what
  runs ahead) keeps a healthy pipeline far below the bound.
- A source known to have records waiting is never idle: one the consumer
  paused (flow control: it runs ahead; pausing changes no result), and one
  *behind* (the broker holds records of it not delivered yet, so its silence
  is the reader's, not the producer's: a worker catching up on a backlog).

The arrival clock is injected: the wall clock in the worker, the capture's
record timestamps (`ts`) offline. Nothing here reads a clock.
"""

from __future__ import annotations

from collections.abc import Iterable
from heapq import heapify, heappop, heappush
from typing import Any, Final

from detectors.holdings import TYPE_CODES
from detectors.records import CHANGE_CLASSES

# Tie order at one event_time (spec): contract changes, notifications, deliveries.
CHANGE: Final = 0
NOTIFICATION: Final = 1
DELIVERY: Final = 2
CATEGORIES: Final = (CHANGE, NOTIFICATION, DELIVERY)

# What arrive() says of a record.
ON_TIME: Final = 0  # in the grace buffer: take_ready() releases it
LATE: Final = 1  # apply it now
DUPLICATE: Final = 2  # the same (number, event id) waits in the buffer: drop it
TOO_LATE: Final = 3  # late beyond the correction horizon: apply it now, re-judge nothing (contract 1.1)

NEVER: Final = -(1 << 62)  # before any clock or event time
_FOREVER: Final = 1 << 62

_CODE: dict[type, int] = {cls: TYPE_CODES[str(cls.__struct_config__.tag)] for cls in CHANGE_CLASSES}


def change_code(cls: type) -> int:
    """The change type code of a contract-change class, or of a subclass of one (a fast or a transfer form)."""
    code = _CODE.get(cls)
    if code is not None:
        return code
    for base in cls.__mro__:
        if base in CHANGE_CLASSES:
            code = _CODE[cls] = _CODE[base]
            return code
    raise TypeError(f"{cls.__name__} is not a contract change")


class Source:
    """One input topic-partition: its watermark, when it last received, what of it waits."""

    __slots__ = ("active", "behind", "category", "last_arrival", "partition", "paused", "pending", "watermark")

    def __init__(self, category: int, partition: int, clock: int) -> None:
        self.category = category
        self.partition = partition
        self.watermark: int | None = None
        self.last_arrival = clock
        self.pending = 0  # records of it in the grace buffer
        self.paused = False  # flow control stopped fetching it
        self.behind = False  # records of it are known to wait upstream
        self.active = True  # not idle

    def __repr__(self) -> str:
        return f"Source({self.category}, {self.partition}, wm={self.watermark}, pending={self.pending})"


# A buffered record: (event time, category, change code, event id, sequence, number ref, record, token, source).
# The first five order the release; the sequence is unique, so nothing after it is compared.
Item = tuple[int, int, int, str, int, str, Any, Any, Source]
_EMPTY: Final[list[Item]] = []


class Arrival:
    """Watermarks, idleness, the grace buffer and its release order, pending dedup, sweep points."""

    def __init__(
        self,
        grace_us: int,
        idle_us: int,
        sweep_interval_us: int,
        max_buffered: int = 1 << 62,
        horizon_us: int = _FOREVER,
    ) -> None:
        self.grace = grace_us
        self.horizon = horizon_us  # the correction horizon: later than this behind the watermark is TOO_LATE
        self.idle = idle_us
        self.sweep_interval = sweep_interval_us
        self.max_buffered = max_buffered
        self.watermark: int | None = None  # the minimum over the sources, monotone
        self.limit = NEVER  # watermark - grace: records before it are released (or late)
        self.clock = NEVER  # the arrival clock, monotone
        self.pending: list[Item] = []  # heap
        self.pending_ids: set[tuple[str, str]] = set()
        self.seq = 0
        self.swept_at: int | None = None
        # counters by category (CHANGE, NOTIFICATION, DELIVERY)
        self.arrived = [0, 0, 0]
        self.late = [0, 0, 0]
        self.too_late = [0, 0, 0]  # of the late, those beyond the correction horizon
        self.duplicates = [0, 0, 0]
        self.released = 0
        self.released_early = 0  # of them, released over the buffer's bound
        self._sources: tuple[dict[int, Source], ...] = ({}, {}, {})
        self._active: dict[Source, None] = {}  # the sources not idle, an ordered set
        self._min: Source | None = None  # the source that holds the watermark (None: all idle)
        self._deadline = _FOREVER  # clock at which the minimum must be looked at again
        self._max_t: int | None = None  # the largest event time accepted
        self._latest = NEVER  # clock of the latest arrival
        self._moved_at = NEVER  # clock when the records last moved the watermark on
        self._moved_wm = 0  # and where to

    # ------------------------------------------------------------------ input

    def arrive(
        self, category: int, partition: int, t: int, record: Any, ref: str, clock: int, token: Any = None
    ) -> int:
        """Take one decoded record (event time `t`, µs) of a source at arrival clock `clock`.

        Returns ON_TIME (buffered), LATE or TOO_LATE (the caller applies it now) or DUPLICATE.
        After any call, take_ready() has what the watermark released.
        """
        if clock > self.clock:
            self.clock = clock
        else:
            clock = self.clock
        src = self._sources[category].get(partition)
        if src is None:
            src = self._register(category, partition, clock)
        event_id = record.event_id
        key = (ref, event_id)
        if key in self.pending_ids:
            self.duplicates[category] += 1
            return DUPLICATE
        self.arrived[category] += 1
        src.last_arrival = self._latest = clock
        wm = src.watermark
        moved = wm is None or t > wm
        if moved:
            src.watermark = t
            if self._max_t is None or t > self._max_t:
                self._max_t = t
        if t < self.limit:
            self.late[category] += 1
            status = LATE
            if t < self.limit + self.grace - self.horizon:  # watermark - horizon
                self.too_late[category] += 1
                status = TOO_LATE
        else:
            self.seq = seq = self.seq + 1
            sub = 0
            if category == CHANGE:
                sub = _CODE.get(record.__class__, -1)
                if sub < 0:
                    sub = change_code(record.__class__)
            heappush(self.pending, (t, category, sub, event_id, seq, ref, record, token, src))
            self.pending_ids.add(key)
            src.pending += 1
            status = ON_TIME
        if not src.active:  # back from idleness: it holds the minimum again
            src.active = True
            self._active[src] = None
            self._recompute(clock)
        elif (moved and src is self._min) or clock >= self._deadline:
            self._recompute(clock)
        return status

    def take_ready(self) -> list[Item]:
        """Pop the buffered records the watermark has released (and those over the buffer's
        bound, earliest first), in release order."""
        pending = self.pending
        limit = self.limit
        over = len(pending) - self.max_buffered
        if not pending or (pending[0][0] >= limit and over <= 0):
            return _EMPTY
        out: list[Item] = []
        discard = self.pending_ids.discard
        while pending and pending[0][0] < limit:
            item = heappop(pending)
            discard((item[5], item[3]))
            item[8].pending -= 1
            out.append(item)
        over = len(pending) - self.max_buffered
        if over > 0:
            for _ in range(over):
                item = heappop(pending)
                discard((item[5], item[3]))
                item[8].pending -= 1
                out.append(item)
            self.released_early += over
        self.released += len(out)
        return out

    def due(self) -> bool:
        """Has take_ready() anything to give?"""
        pending = self.pending
        return bool(pending) and (pending[0][0] < self.limit or len(pending) > self.max_buffered)

    def take_all(self) -> list[Item]:
        """End of input: everything buffered, in release order."""
        pending = self.pending
        out = [heappop(pending) for _ in range(len(pending))]
        for item in out:
            item[8].pending -= 1
        self.pending_ids.clear()
        self.released += len(out)
        return out

    def tick(self, clock: int) -> None:
        """The arrival clock moved on without a record (a timer): idle sources stop holding the watermark."""
        if clock > self.clock:
            self.clock = clock
        if self.clock >= self._deadline:
            self._recompute(self.clock)

    def expect(self, partition: int, clock: int) -> None:
        """A partition's three sources, silent from `clock` (a worker's assigned partition,
        or one seen for the first time): each holds the watermark until it receives or is idle."""
        if clock > self.clock:
            self.clock = clock
        added = False
        for c in CATEGORIES:
            if partition not in self._sources[c]:
                s = self._sources[c][partition] = Source(c, partition, self.clock)
                self._active[s] = None
                added = True
        if added:  # the new sources hold it from now: the watermark goes back to what they allow
            self._recompute(self.clock, reset=True)

    # ------------------------------------------------------------ flow control

    def set_paused(self, category: int, partition: int, paused: bool) -> None:
        """The consumer paused (or resumed) this source: a paused source is never idle."""
        src = self._sources[category].get(partition)
        if src is not None and src.paused != paused:
            src.paused = paused
            self._held_changed(src)

    def set_behind(self, category: int, partition: int, behind: bool) -> None:
        """Records of this source wait upstream (or no longer do): a source behind is never idle."""
        src = self._sources[category].get(partition)
        if src is not None and src.behind != behind:
            src.behind = behind
            self._held_changed(src)

    def _held_changed(self, src: Source) -> None:
        if not (src.paused or src.behind):
            src.last_arrival = self.clock  # its silence while held was the reader's
            if self._moved_at < self.clock:  # and so was the watermark's standstill
                self._moved_at = self.clock
        elif not src.active:
            src.active = True
            self._active[src] = None
        self._recompute(self.clock)

    def ahead(self) -> list[Source]:
        """Sources with records waiting and a watermark past the combined one: those flow control may pause."""
        wm = self.watermark
        return [
            s
            for by_partition in self._sources
            for s in by_partition.values()
            if s.pending and s.watermark is not None and (wm is None or s.watermark > wm)
        ]

    def forget(self, partitions: Iterable[int]) -> list[Any]:
        """Drop the sources of these partitions and their buffered records; returns their tokens."""
        gone = set(partitions)
        if not gone:
            return []
        for by_partition in self._sources:
            for p in gone:
                src = by_partition.pop(p, None)
                if src is not None:
                    self._active.pop(src, None)
        kept: list[Item] = []
        dropped: list[Any] = []
        for item in self.pending:
            if item[8].partition in gone:
                self.pending_ids.discard((item[5], item[3]))
                dropped.append(item[7])
            else:
                kept.append(item)
        heapify(kept)
        self.pending = kept
        self._min = None
        self._recompute(self.clock, reset=True)
        return dropped

    # ------------------------------------------------------------------ views

    def pending_count(self) -> int:
        return len(self.pending)

    def sources(self) -> list[Source]:
        return [s for by_partition in self._sources for s in by_partition.values()]

    def partition_watermarks(self) -> dict[int, int | None]:
        """Each partition's own watermark (contract 1.1): the minimum over its sources not idle."""
        out: dict[int, int | None] = {}
        for by_partition in self._sources:
            for p, s in by_partition.items():
                if p not in out:
                    out[p] = None
                if s.active and s.watermark is not None:
                    cur = out[p]
                    out[p] = s.watermark if cur is None else min(cur, s.watermark)
        return out

    def sweep_due(self) -> int | None:
        """The event time to sweep at, when `sweep_interval` has passed since the last sweep.

        It is the watermark less grace: no record on time can precede it.
        None when no sweep is due, or before the first watermark.
        """
        if self.watermark is None:
            return None
        now = self.limit
        if self.swept_at is None:
            self.swept_at = now  # the first watermark starts the clock
            return None
        if now - self.swept_at < self.sweep_interval:
            return None
        self.swept_at = now
        return now

    # ------------------------------------------------------------- state copy

    def snapshot(self) -> tuple[Any, ...]:
        """Everything but the buffer, as plain values (the offline replay's decoding process hands it over)."""
        sources = [
            (s.category, s.partition, s.watermark, s.last_arrival, s.active)
            for by_partition in self._sources
            for s in by_partition.values()
        ]
        return (
            self.watermark, self.clock, self.seq, self.swept_at, self._max_t, self._latest,
            list(self.arrived), list(self.late), list(self.duplicates), self.released, sources,
            self.released_early, self._moved_at, self._moved_wm, list(self.too_late),
        )  # fmt: skip

    def restore(self, snap: Iterable[Any]) -> None:
        """Become the Arrival of the snapshot (its buffer was empty), counters included."""
        if self.pending:
            raise ValueError("restore() needs an empty grace buffer")
        (wm, clock, seq, swept_at, max_t, latest, arrived, late, duplicates, released, sources,
         self.released_early, self._moved_at, self._moved_wm, too_late) = snap  # fmt: skip
        self.too_late = list(too_late)
        self.watermark = wm
        self.limit = NEVER if wm is None else wm - self.grace
        self.clock, self.seq, self.swept_at, self._max_t, self._latest = clock, seq, swept_at, max_t, latest
        self.arrived, self.late, self.duplicates = list(arrived), list(late), list(duplicates)
        self.released = released
        self._active.clear()
        for by_partition in self._sources:
            by_partition.clear()
        for category, partition, watermark, last_arrival, active in sources:
            src = Source(category, partition, last_arrival)
            src.watermark, src.active = watermark, active
            self._sources[category][partition] = src
            if active:
                self._active[src] = None
        self._min = None
        self._deadline = _FOREVER
        self._recompute(self.clock)

    # --------------------------------------------------------------- internal

    def _register(self, category: int, partition: int, clock: int) -> Source:
        self.expect(partition, clock)
        return self._sources[category][partition]

    def _recompute(self, clock: int, reset: bool = False) -> None:
        """The minimum over the sources not idle at `clock`, and when to look again.

        The watermark never goes back, except with `reset` (the set of sources changed:
        a partition assigned or first seen, or partitions given up).
        """
        idle = self.idle
        active = self._active
        best: Source | None = None
        blocked: Source | None = None  # an active source that never received anything
        deadline = _FOREVER
        gone: list[Source] = []
        for s in active:
            if not (s.paused or s.behind):
                due = s.last_arrival + idle
                if clock >= due:
                    gone.append(s)
                    continue
                if due < deadline:
                    deadline = due
            wm = s.watermark
            if wm is None:
                blocked = s
            elif best is None or wm < best.watermark:  # type: ignore[operator]
                best = s
        for s in gone:
            s.active = False
            del active[s]
        candidate: int | None
        if not active and not any(self._sources):  # no source at all: nothing moves it
            self._min = None
            candidate = self.watermark
        elif not active:  # all idle: the watermark advances with the clock
            self._min = None
            candidate = None if self._max_t is None else self._max_t + max(0, clock - self._latest)
            deadline = clock + 1
        elif blocked is not None:
            self._min = blocked
            candidate = None
        else:
            self._min = best
            candidate = best.watermark if best is not None else None
            wm = self.watermark
            if (
                candidate is not None and wm is not None and candidate <= wm
                and best is not None and not (best.paused or best.behind)
            ):  # fmt: skip
                # the records do not move it: after idle_flush, on with the clock from where it stopped
                if clock - self._moved_at >= idle:
                    self._recompute_on(clock)
                    return
                if self._moved_at + idle < deadline:
                    deadline = self._moved_at + idle
        self._deadline = deadline
        if reset:
            self.watermark = candidate
            self.limit = NEVER if candidate is None else candidate - self.grace
            self._moved_at, self._moved_wm = clock, candidate or 0
        elif candidate is not None and (self.watermark is None or candidate > self.watermark):
            self.watermark = candidate
            self.limit = candidate - self.grace
            self._moved_at, self._moved_wm = clock, candidate

    def _recompute_on(self, clock: int) -> None:
        """The watermark stopped moving for idle_flush: it advances with the clock (looked at again
        at the next arrival or tick)."""
        self._deadline = clock + 1
        candidate = self._moved_wm + (clock - self._moved_at)
        if self.watermark is None or candidate > self.watermark:
            self.watermark = candidate
            self.limit = candidate - self.grace
