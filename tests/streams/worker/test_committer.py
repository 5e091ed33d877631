"""At-least-once delivery and acks of a flush batch (streams.worker.committer), step by step, with fakes."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import Any

import pytest

from streams.liveness import ACKED, DELIVERED
from streams.worker.committer import AtLeastOnce, ProduceFailed
from streams.worker.offsets import TP
from streams.worker.pipeline import ChangelogRecord, FlushBatch, Output

IN = TP("contracts.changes", 0)


@dataclass(frozen=True)
class Msg:
    topic: str
    partition: int
    offset: int


class Counter:
    def __init__(self) -> None:
        self.n = 0.0

    def inc(self, amount: float = 1) -> None:
        self.n += amount


class World:
    """Records every step in `log`; sends are delivered when the test says so (or fail)."""

    def __init__(self, fail: bool = False) -> None:
        self.log: list[str] = []
        self.fail = fail
        self.acked: dict[TP, list[int]] = {}

    def _future(self, what: str) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.add_done_callback(lambda _: self.log.append(f"delivered {what}"))
        if self.fail:
            fut.set_exception(RuntimeError("refused"))
        else:
            fut.set_result(None)
        return fut

    # Sender
    async def send(self, topic: str, key: bytes, value: bytes | None, partition: int | None) -> Awaitable[Any]:
        self.log.append(f"send {topic}")
        return self._future(topic)

    async def send_changelog(self, topic: str, records: list[ChangelogRecord]) -> list[Awaitable[Any]]:
        if not records:
            return []
        self.log.append(f"send {topic}")
        return [self._future(topic)]

    # Acker
    def ack(self, tp: TP, offsets: range) -> None:
        self.log.append(f"ack {list(offsets)}")
        self.acked.setdefault(tp, []).extend(offsets)

    def committed(self) -> Mapping[TP, int | None]:
        return {IN: 0}


class Store:
    def __init__(self, world: World, changelog: str) -> None:
        self.world, self.changelog = world, changelog

    def flush(self) -> list[ChangelogRecord]:
        self.world.log.append(f"write {self.changelog}")
        return [(0, b"k", b"v")]


def batch(world: World, outputs: list[Output], done: list[int]) -> FlushBatch:
    return FlushBatch(
        outputs,
        Store(world, "links-changelog"),
        Store(world, "numbers-changelog"),
        [Msg(IN.topic, IN.partition, o) for o in done],
    )


def test_a_commit_delivers_outputs_then_links_then_states_then_acks():
    """The order that makes a crash at any point safe (see the module docstring)."""
    world = World()
    alerts = Counter()
    committer = AtLeastOnce(world, world)

    async def go() -> str | None:
        committer.tracker.delivered([(IN, [Msg(IN.topic, 0, o) for o in range(3)])])
        return await committer.commit(batch(world, [Output("alerts", b"k", b"{}", alerts)], [0, 1, 2]))

    assert asyncio.run(go()) == ACKED
    log = [line for line in world.log if not line.startswith("delivered")]
    assert log == [
        "send alerts",
        "write links-changelog",
        "send links-changelog",
        "write numbers-changelog",
        "send numbers-changelog",
        "ack [0, 1, 2]",
    ]
    # everything before the number states was delivered before they were written
    assert world.log.index("delivered links-changelog") < world.log.index("write numbers-changelog")
    assert world.log.index("delivered alerts") < world.log.index("write numbers-changelog")
    assert alerts.n == 1


def test_a_lost_send_stops_before_the_states_and_the_acks_and_counts_nothing():
    world = World(fail=True)
    alerts = Counter()
    committer = AtLeastOnce(world, world)

    async def go() -> None:
        committer.tracker.delivered([(IN, [Msg(IN.topic, 0, 0)])])
        await committer.commit(batch(world, [Output("alerts", b"k", b"{}", alerts)], [0]))

    with pytest.raises(ProduceFailed, match=r"[12] of 2 producer sends failed"):
        asyncio.run(go())
    assert "write numbers-changelog" not in world.log
    assert world.acked == {} and alerts.n == 0


def test_outputs_handed_over_between_flushes_are_counted_when_the_commit_confirms_them():
    world = World()
    alerts = Counter()
    committer = AtLeastOnce(world, world)

    async def go() -> None:
        await committer.hand_over([Output("alerts", b"k", b"{}", alerts), Output("alerts", b"j", b"{}", alerts)])
        assert alerts.n == 0  # sent, not confirmed
        assert await committer.commit(batch(world, [], [])) == DELIVERED

    asyncio.run(go())
    assert alerts.n == 2


def test_a_record_still_held_stops_the_acked_run():
    """Offsets 0, 1 and 3 are done, 2 waits in the grace buffer: only 0-1 are acked (a commit past 2
    would lose it in a crash); when 2 is done, 2-3 follow."""
    world = World()
    committer = AtLeastOnce(world, world)

    async def go() -> None:
        committer.tracker.delivered([(IN, [Msg(IN.topic, 0, o) for o in range(4)])])
        await committer.commit(batch(world, [], [0, 1, 3]))
        assert world.acked == {IN: [0, 1]} and committer.acked_upto == {IN: 2}
        await committer.commit(batch(world, [], [2]))

    asyncio.run(go())
    assert world.acked == {IN: [0, 1, 2, 3]} and committer.acked_upto == {IN: 4}
