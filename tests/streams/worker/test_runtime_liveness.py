"""The worker's liveness without a broker (the fake consumer and producer of test_runtime):
a stall is reported by /health, /live and the gauges; a tick that fails or a flush that waits
too long for the broker crashes the worker instead of stopping it silently."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP

from detectors.settings import Settings
from streams.config import WorkerConfig
from streams.liveness import Liveness
from streams.worker import DeliveryTimeout, ProduceFailed, Runtime, TimerFailed
from streams.worker.exactly_once import ExactlyOnce
from tests.streams.test_metrics import samples
from tests.streams.worker.test_runtime import ConsumerRecord, FakeConsumer, FakeProducer, _table

KEY = b"+4917612345678"
CHANGES = Settings().topics.changes


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class App(SimpleNamespace):
    """The fake app of test_runtime, with Faust's crash() and should_stop."""

    def __init__(self, producer: Any) -> None:
        super().__init__(
            consumer=FakeConsumer(),
            producer=producer,
            rebalancing=False,
            in_recovery=False,
            should_stop=False,
            crashes=[],
        )

    async def crash(self, exc: BaseException) -> None:
        self.crashes.append(exc)


def worker(producer: Any = None, **config: Any) -> tuple[Runtime, App, Clock]:
    app = App(producer or FakeProducer())
    rt = Runtime(
        app,
        WorkerConfig(rules=Settings(), partitions=1, **{"crash_quarantine_after": 0, **config}),
        _table("numbers"),
        _table("links"),
    )
    rt.on_assigned({TP(t, 0) for t in rt.inputs})
    rt.started = True
    clock = Clock()
    rt.liveness = Liveness(rt.liveness.stall_after, clock=clock)
    return rt, app, clock


def bad_records(n: int, first: int = 0) -> list[ConsumerRecord]:
    """Records that do not decode: each is dead-lettered (an output) and done at once."""
    return [ConsumerRecord(CHANGES, 0, first + i, KEY, b"{not json", 1_700_000_000_000) for i in range(n)]


def gauges(rt: Runtime) -> tuple[float, float]:
    got = samples(rt.metrics.registry)
    return got["notifguard_worker_stalled"], got["notifguard_last_progress_timestamp_seconds"]


def test_records_waiting_on_the_broker_and_none_read_is_a_stall_until_the_worker_reads() -> None:
    rt, app, clock = worker()
    tp = TP(CHANGES, 0)
    app.consumer.landed[tp] = 10  # ten records on the broker, none read
    assert rt.health()[0] == 200
    assert rt.liveness.stall_after == 120
    clock.t += 119
    rt.liveness.ticked()
    assert rt.health()[0] == 200 and gauges(rt)[0] == 0
    clock.t += 1
    rt.liveness.ticked()
    code, body = rt.health()
    assert code == 503 and body["ready"] is True and body["stalled"] is True
    assert body["liveness"]["reason"] == "no progress for 120 s with input waiting (10 records unread on the broker)"
    assert rt.live() == (503, body["liveness"])
    assert gauges(rt)[0] == 1

    asyncio.run(rt.on_messages([(tp, bad_records(10))]))  # it reads them: progress
    code, body = rt.health()
    assert code == 200 and body["liveness"]["last_progress"] == "records consumed"
    assert rt.live()[0] == 200 and gauges(rt)[0] == 0


def test_a_worker_not_ready_is_not_stalled_and_not_restarted() -> None:
    rt, app, clock = worker()
    app.consumer.landed[TP(CHANGES, 0)] = 10
    app.rebalancing = True
    clock.t += 1000
    code, body = rt.health()
    assert code == 503 and body["ready"] is False and body["stalled"] is False
    assert rt.live()[0] == 200  # Kubernetes' liveness probe: a rebalance is no reason to restart


def test_records_acked_but_never_committed_are_a_stall() -> None:
    rt, app, clock = worker()
    tp = TP(CHANGES, 0)
    app.consumer.landed[tp] = 3
    app.consumer._committed_offset[tp] = 0

    async def read_and_flush() -> None:
        await rt.on_messages([(tp, bad_records(3))])
        await rt.flush()

    asyncio.run(read_and_flush())
    assert app.consumer.acked == {tp: {0, 1, 2}}
    assert rt.live()[0] == 200  # a tick's check, say
    clock.t += 120
    rt.liveness.ticked()
    code, body = rt.health()
    assert code == 503
    assert body["liveness"]["waiting"] == "3 records acked but not committed"
    app.consumer._committed_offset[tp] = 3  # Faust committed them
    code, body = rt.health()
    assert code == 200 and body["liveness"]["last_progress"] == "offsets committed"


def test_the_progress_timestamp_is_the_last_progress() -> None:
    rt, _, clock = worker()
    rt.liveness = Liveness(120, clock=clock, wall=lambda: 1_800_000_000 + clock.t)
    clock.t = 50
    asyncio.run(rt.on_messages([(TP(CHANGES, 0), bad_records(1))]))
    clock.t = 70
    rt.live()
    assert gauges(rt) == (0, 1_800_000_050)


# ------------------------------------------------------------------ the timer


@pytest.mark.python_core
def test_an_exception_in_the_tick_crashes_the_worker_loudly(monkeypatch, caplog) -> None:
    rt, app, _ = worker()

    def boom(now: int) -> None:
        raise KeyError("a bug")

    monkeypatch.setattr(rt.engine, "tick", boom)
    with pytest.raises(TimerFailed, match=r"ended with KeyError\('a bug'\) while the worker runs"):
        asyncio.run(rt.run_tick())
    assert [type(e) for e in app.crashes] == [TimerFailed]
    assert any(
        r.levelno == logging.CRITICAL and "the timer (Runtime.tick) ended" in r.getMessage() for r in caplog.records
    )


def test_a_cancelled_tick_crashes_the_worker_unless_it_is_stopping(monkeypatch) -> None:
    rt, app, _ = worker()

    async def cancelled() -> None:
        raise asyncio.CancelledError  # Faust's timer task would just end: no crash, a debug line

    monkeypatch.setattr(rt, "_flush", cancelled)
    with pytest.raises(TimerFailed, match="CancelledError"):
        asyncio.run(rt.run_tick())
    assert [type(e) for e in app.crashes] == [TimerFailed]

    app.crashes.clear()
    app.should_stop = True  # Faust stops its timers by cancelling them: no crash then
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(rt.run_tick())
    assert app.crashes == []


# ------------------------------------------------------------------ flushes waiting for the broker


class NeverAcknowledged(FakeProducer):
    """The broker takes the sends but never answers."""

    async def send(self, topic: str, key: bytes, value: bytes | None, *_: Any) -> asyncio.Future[None]:
        self.sent.append((topic, key, value))
        return asyncio.get_running_loop().create_future()


class NeverTaken(FakeProducer):
    """The producer never takes the send (its buffer full, the metadata never coming)."""

    async def send(self, topic: str, key: bytes, value: bytes | None, *_: Any) -> asyncio.Future[None]:
        await asyncio.get_running_loop().create_future()
        raise AssertionError("unreachable")


@pytest.mark.parametrize(
    ("producer", "stage"),
    [
        # the 2 dead letters, and the changelog batch marking the fresh address index's partitions
        # built (streams.sweeper.LinksRebuild, at the first batch)
        (NeverAcknowledged, "waiting for the broker to acknowledge 3 sends"),
        (NeverTaken, "handing alerts and dead letters to the producer"),
    ],
)
def test_a_flush_waiting_on_the_broker_past_the_delivery_timeout_crashes_without_acking(producer, stage) -> None:
    rt, app, _ = worker(producer(), delivery_timeout_s=0.2, flush_interval_s=3600)
    tp = TP(CHANGES, 0)

    async def go() -> None:
        rt.on_events([(tp, bad_records(2))])
        await rt.flush()

    loop_time = asyncio.new_event_loop()
    started = loop_time.time()
    with pytest.raises(DeliveryTimeout, match=f"a flush waited 0.2 s \\(delivery_timeout_s\\) while {stage}"):
        loop_time.run_until_complete(go())
    assert loop_time.time() - started < 5
    loop_time.close()
    assert [type(e) for e in app.crashes] == [DeliveryTimeout]
    assert app.consumer.acked == {}  # read again on restart


def test_a_batch_handing_its_outputs_to_a_stuck_producer_crashes_too() -> None:
    rt, app, _ = worker(NeverTaken(), delivery_timeout_s=0.2, flush_interval_s=3600)
    with pytest.raises(DeliveryTimeout, match="while handing alerts and dead letters to the producer"):
        asyncio.run(rt.on_messages([(TP(CHANGES, 0), bad_records(1))]))
    assert [type(e) for e in app.crashes] == [DeliveryTimeout]


def test_an_exactly_once_flush_that_hangs_in_its_clean_up_still_crashes_the_worker() -> None:
    """The crash starts from the deadline's callback, not after the interrupted code: a transaction
    whose abort hangs as well (a broker that does not answer) cannot hold the worker."""
    rt, app, _ = worker(delivery_timeout_s=0.2)

    class HangingProducer:
        """A transactional producer whose commit never answers, nor does its stop."""

        async def begin_transaction(self) -> None:
            pass

        async def send(self, *_: Any, **__: Any) -> asyncio.Future[None]:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            fut.set_result(None)
            return fut

        async def send_offsets_to_transaction(self, *_: Any) -> None:
            pass

        async def commit_transaction(self) -> None:
            await asyncio.get_running_loop().create_future()

        async def stop(self) -> None:
            await asyncio.get_running_loop().create_future()

    eos = ExactlyOnce(app, rt.inputs)
    eos.producer = HangingProducer()
    rt.committer = eos
    rt.on_events([(TP(CHANGES, 0), bad_records(1))])  # a dead letter and an offset to commit

    async def go() -> None:
        task = asyncio.create_task(rt.flush())
        for _ in range(100):
            await asyncio.sleep(0.05)
            if app.crashes:
                break
        task.cancel()
        with pytest.raises(DeliveryTimeout):
            await task

    asyncio.run(go())
    assert [type(e) for e in app.crashes] == [DeliveryTimeout]
    assert "committing the exactly_once transaction" in str(app.crashes[0])


class Refused(FakeProducer):
    """The broker refuses every send (after the producer's retries)."""

    async def send(self, topic: str, key: bytes, value: bytes | None, *_: Any) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.set_exception(RuntimeError("refused"))
        return fut


@pytest.mark.parametrize(("producer", "error"), [(NeverAcknowledged, DeliveryTimeout), (Refused, ProduceFailed)])
def test_after_a_flush_lost_its_sends_no_later_flush_acks_anything(producer, error) -> None:
    """Until Faust has stopped the crashed worker, the timer and the batches go on, and the stop
    itself flushes (on_revoked): none of those flushes may ack, or the records whose outputs were
    lost would be committed. Seen on a broker that deleted the alerts topic: the next tick's flush
    delivered the number states and acked their records."""
    rt, app, _ = worker(producer(), delivery_timeout_s=0.2, flush_interval_s=3600)
    tp = TP(CHANGES, 0)

    async def go() -> None:
        rt.on_events([(tp, bad_records(2))])
        with pytest.raises(error):
            await rt.flush()
        app.producer = FakeProducer()  # the broker takes sends again
        rt.on_events([(tp, bad_records(2, first=2))])
        with pytest.raises(error):
            await rt.flush()  # a tick's, a batch's or the stop's
        with pytest.raises(error):
            await rt.on_revoked({tp})
        with pytest.raises(error):
            await rt.on_messages([(tp, bad_records(1, first=4))])  # nor is anything read

    asyncio.run(go())
    assert app.consumer.acked == {}
    assert app.producer.sent == []  # nothing more sent either


def test_a_transaction_marker_at_the_end_of_a_partition_is_nothing_waiting() -> None:
    """A transactional producer's commit marker takes an offset no record has: after its last record
    the highwater stays one past what was read. Liveness counts what the consumer has not fetched
    (highwater minus aiokafka's position), so an idle worker is not stalled (and not restarted)."""
    rt, app, clock = worker()
    tp = TP(CHANGES, 0)
    asyncio.run(rt.on_messages([(tp, bad_records(3))]))  # offsets 0-2; the marker is offset 3
    app.consumer.landed[tp] = 4
    position = SimpleNamespace(has_valid_position=True, position=4)
    assignment = SimpleNamespace(state_value=lambda _: position)
    aiokafka_consumer = SimpleNamespace(
        _subscription=SimpleNamespace(subscription=SimpleNamespace(assignment=assignment))
    )
    app.consumer._thread = SimpleNamespace(_ensure_consumer=lambda: aiokafka_consumer)
    assert rt.broker.unread(tp) == 1  # what the watermark's "behind" flag reads
    rt.live()
    clock.t += 1000
    rt.liveness.ticked()
    code, body = rt.live()
    assert code == 200 and body["waiting"] == "", body
    position.position = 3  # a record really waits: it counts
    assert rt.live()[1]["waiting"] == "1 records unread on the broker"
