"""OffsetTracker: every delivered offset is handed to the pipeline once, and acks never pass one not done."""

from __future__ import annotations

from typing import NamedTuple

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.worker.offsets import TP, OffsetTracker

T = TP("in", 0)


class Rec(NamedTuple):
    topic: str
    partition: int
    offset: int


def recs(a: int, b: int) -> list[Rec]:
    return [Rec(T.topic, T.partition, o) for o in range(a, b)]


def offsets(batch: list[tuple[TP, list[Rec]]]) -> list[int]:
    return [r.offset for _, rs in batch for r in rs]


def test_a_fetch_before_the_seek_that_started_above_the_committed_offset_loses_nothing() -> None:
    """Faust resumes the inputs, then seeks them to the committed offsets: records fetched in between
    may start above it. The seek's re-delivery below them is new, not a duplicate."""
    tracker = OffsetTracker()
    assert offsets(tracker.delivered([(T, recs(5, 8))])) == [5, 6, 7]  # before the seek
    tracker.done(recs(5, 8))
    assert tracker.runs({}) == {T: range(5, 8)}  # committed offset not known yet
    handed = offsets(tracker.delivered([(T, recs(2, 10))]))  # the seek back to the committed offset 2
    assert handed == [2, 3, 4, 8, 9]
    tracker.done(recs(8, 10))
    assert tracker.runs({T: 2}) == {}  # 2..4 not done yet: nothing past them is acked
    tracker.done(recs(2, 5))
    assert tracker.runs({T: 2}) == {T: range(2, 10)}


def test_exactly_once_records_below_the_loaded_committed_offset_stay_done() -> None:
    tracker = OffsetTracker()
    tracker.load(T, 5, "")
    assert offsets(tracker.delivered([(T, recs(7, 9))])) == [7, 8]
    assert offsets(tracker.delivered([(T, recs(3, 10))])) == [5, 6, 9]  # 3, 4 were committed


@st.composite
def deliveries(draw: st.DrawFn) -> tuple[int, list[tuple[int, int]]]:
    """A committed offset and fetches: each goes on from where the last ended, jumps ahead (a fetch
    before the seek), or goes back to the committed offset (the seek)."""
    committed = draw(st.integers(0, 20))
    position = committed + draw(st.integers(0, 15))
    out = []
    for _ in range(draw(st.integers(1, 8))):
        if draw(st.booleans()):
            position = committed
        n = draw(st.integers(1, 10))
        out.append((position, position + n))
        position += n
    return committed, out


@settings(max_examples=300, deadline=None)
@given(deliveries(), st.randoms(use_true_random=False))
def test_every_offset_is_handed_over_once_and_acked_runs_are_unbroken(case, rnd) -> None:
    committed, fetches = case
    tracker = OffsetTracker()
    handed: list[int] = []
    waiting: list[Rec] = []
    acked: set[int] = set()
    for a, b in fetches:
        got = [r for _, rs in tracker.delivered([(T, recs(a, b))]) for r in rs]
        handed += [r.offset for r in got]
        waiting += got
        rnd.shuffle(waiting)
        k = rnd.randrange(len(waiting) + 1)
        tracker.done(waiting[:k])
        waiting = waiting[k:]
        for run in tracker.runs({T: committed}).values():
            acked.update(run)
            lowest_waiting = min((r.offset for r in waiting), default=None)
            assert lowest_waiting is None or run.stop <= lowest_waiting, "acked past a record not done"
    assert len(handed) == len(set(handed)), "an offset handed over twice"
    seen = {o for a, b in fetches for o in range(a, b)}
    assert set(handed) == seen, "a delivered offset never handed over"
    tracker.done(waiting)
    for run in tracker.runs({T: committed}).values():
        acked.update(run)
    assert acked == set(range(min(acked), max(acked) + 1)) if acked else True
    assert acked >= seen
