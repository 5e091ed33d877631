"""streams.liveness: when a worker with input waiting is stalled, and the bounded stop."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from streams.liveness import (
    ACKED,
    CONSUMED,
    EXIT_STOP_TIMEOUT,
    Liveness,
    ShutdownWatchdog,
    describe_stacks,
    stall_bound,
)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def tracker(stall_after: float = 120.0) -> tuple[Liveness, Clock]:
    clock = Clock()
    return Liveness(stall_after, clock=clock, wall=lambda: 1.7e9 + clock.t), clock


def test_input_waiting_without_progress_for_the_bound_is_a_stall() -> None:
    live, clock = tracker()
    assert not live.check(ready=True, unread=5).stalled
    clock.t += 119
    live.ticked()
    assert not live.check(ready=True, unread=5).stalled
    clock.t += 1
    live.ticked()
    status = live.check(ready=True, unread=5)
    assert status.stalled
    assert status.reason == "no progress for 120 s with input waiting (5 records unread on the broker)"
    assert status.last_progress == "" and status.since_progress_s == 120


@pytest.mark.parametrize("kind", [CONSUMED, ACKED])
def test_progress_restarts_the_clock(kind: str) -> None:
    live, clock = tracker()
    live.check(ready=True, unread=5)
    clock.t += 100
    live.progress(kind)
    clock.t += 100
    live.ticked()
    status = live.check(ready=True, unread=5)
    assert not status.stalled and status.since_progress_s == 100 and status.last_progress == kind
    assert status.last_progress_unix == 1.7e9 + 1100
    clock.t += 20
    live.ticked()
    assert live.check(ready=True, unread=5).stalled


def test_no_input_waiting_is_never_a_stall_and_waiting_counts_from_when_it_began() -> None:
    live, clock = tracker()
    for _ in range(10):  # an idle worker: no input, no progress, for long
        clock.t += 60
        live.ticked()
        assert not live.check(ready=True).stalled
    # input arrives after 10 quiet minutes: the clock starts now, not at the last progress
    status = live.check(ready=True, unread=1)
    assert not status.stalled and status.since_progress_s == 600
    clock.t += 119
    live.ticked()
    assert not live.check(ready=True, unread=1).stalled
    clock.t += 1
    live.ticked()
    assert live.check(ready=True, unread=1).stalled
    # nothing waits any more (read, say, by a rebalance's new owner): not stalled
    assert not live.check(ready=True).stalled


def test_records_in_the_grace_buffer_and_uncommitted_acks_are_input_waiting_too() -> None:
    live, clock = tracker()
    live.check(ready=True, pending=3, uncommitted=7)
    clock.t += 120
    live.ticked()
    status = live.check(ready=True, pending=3, uncommitted=7)
    assert status.stalled
    assert status.waiting == "3 records in the grace buffer, 7 records acked but not committed"


def test_time_not_ready_does_not_count() -> None:
    live, clock = tracker()
    live.check(ready=True, unread=5)
    clock.t += 100
    assert not live.check(ready=False, unread=5).stalled  # recovering, rebalancing
    clock.t += 600
    assert not live.check(ready=False, unread=5).stalled  # a long recovery, timer included
    assert not live.check(ready=True, unread=5).stalled  # ready again: the clock starts again
    clock.t += 120
    live.ticked()
    assert live.check(ready=True, unread=5).stalled


def test_a_timer_that_stops_is_a_stall_even_without_input() -> None:
    live, clock = tracker()
    live.check(ready=True)
    clock.t += 60
    live.ticked()
    clock.t += 119
    assert not live.check(ready=True).stalled
    clock.t += 1
    status = live.check(ready=True)
    assert status.stalled and status.reason == "the timer has not completed a run for 120 s"
    live.ticked()
    assert not live.check(ready=True).stalled


def test_the_bound_covers_what_the_grace_buffer_may_legitimately_hold() -> None:
    assert stall_bound(120, idle_flush_s=30, grace_s=30, slack_s=11.25) == 120
    assert stall_bound(120, idle_flush_s=600, grace_s=30, slack_s=11.25) == 641.25
    with pytest.raises(ValueError, match="stall_after_s"):
        Liveness(0)


def test_status_as_dict_is_what_health_shows() -> None:
    live, clock = tracker(10)
    live.check(ready=True, unread=2)
    clock.t += 12.34
    live.ticked()
    assert live.check(ready=True, unread=2).as_dict() == {
        "stalled": True, "reason": "no progress for 12 s with input waiting (2 records unread on the broker)",
        "waiting": "2 records unread on the broker", "seconds_since_progress": 12.3, "last_progress": "",
        "stall_after_s": 10,
    }  # fmt: skip


# ------------------------------------------------------------------ stacks and the watchdog


def test_describe_stacks_says_where_each_task_waits() -> None:
    async def deep_inside(fut: asyncio.Future[None]) -> None:
        await fut

    async def stuck_on(fut: asyncio.Future[None]) -> None:
        await deep_inside(fut)

    async def go() -> str:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(stuck_on(fut), name="the-stuck-one")
        await asyncio.sleep(0)
        text = describe_stacks(asyncio.get_running_loop())
        task.cancel()
        return text

    text = asyncio.run(go())
    assert "task the-stuck-one (test_describe_stacks_says_where_each_task_waits.<locals>.stuck_on):" in text
    # the whole await chain, down to the innermost coroutine (Task.get_stack stops at the outermost)
    assert "in stuck_on" in text and "in deep_inside" in text and "awaiting <Future pending" in text


def test_the_watchdog_exits_past_its_bound_with_what_it_waited_for(caplog: pytest.LogCaptureFixture) -> None:
    exited: list[int] = []
    dog = ShutdownWatchdog(0.2, describe=lambda: "task x: waiting for the broker", exit=exited.append)
    started = time.monotonic()
    dog.arm("SIGTERM")
    dog.arm("a crash")  # the first deadline holds
    assert dog.fired.wait(5)
    deadline = time.monotonic() + 5
    while not exited and time.monotonic() < deadline:
        time.sleep(0.01)
    assert exited == [EXIT_STOP_TIMEOUT]
    assert 0.2 <= time.monotonic() - started < 5
    (record,) = [r for r in caplog.records if r.name == "notifguard.liveness"]
    assert record.levelname == "CRITICAL"
    assert "did not stop within 0 s of SIGTERM" in record.getMessage()
    assert "task x: waiting for the broker" in record.getMessage()


def test_the_watchdog_fires_while_the_event_loop_is_blocked() -> None:
    """A thread, not a task: a stop blocked in a synchronous call (a thread join) cannot hold it."""
    exited: list[int] = []
    dog = ShutdownWatchdog(0.2, describe=lambda: "", exit=exited.append)

    async def blocked() -> None:
        dog.arm("SIGTERM")
        time.sleep(1)  # the loop does nothing meanwhile

    asyncio.run(blocked())
    assert exited == [EXIT_STOP_TIMEOUT]


def test_a_stop_in_time_never_fires_the_watchdog() -> None:
    exited: list[int] = []
    dog = ShutdownWatchdog(0.2, describe=lambda: "", exit=exited.append)
    dog.arm("SIGTERM")
    dog.disarm()
    time.sleep(0.4)
    assert not dog.fired.is_set() and exited == []
    assert not [t for t in threading.enumerate() if t.name == "notifguard-shutdown-watchdog"]
    with pytest.raises(ValueError):
        ShutdownWatchdog(0)
