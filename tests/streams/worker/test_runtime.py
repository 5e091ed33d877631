"""The worker's Runtime without a broker: fetched batches in, alerts out, against the in-order engine.

The reproduction of the worker's failure on live pipelines (before contract
1.1): a consumer whose highwater is what has landed so far; the contract
changes of days land in one batch first, then the deliveries, then the mails.
The worker read "nothing more on the broker" as "no older record is coming"
and judged with the newest topic's watermark, so bounces were applied before
their mails and mails before their contract changes.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from faust.types import TP
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detectors.settings import Settings
from detectors.timefmt import parse_rfc3339
from streams.config import WorkerConfig
from streams.worker import Runtime
from streams.worker.pipeline import wall_clock_us
from tests.detectors.test_properties import histories
from tests.factories import Rec, change, comparable, delivery, feed, mail, new_engine

S = 1_000_000
DAY = 86_400


@dataclass(frozen=True)
class ConsumerRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int


class _Batch:
    def append(self, **_: Any) -> object:
        return self


class _Client:
    def create_batch(self) -> _Batch:
        return _Batch()

    async def send_batch(self, batch: _Batch, topic: str, partition: int) -> Any:
        return _done_future()


def _done_future() -> asyncio.Future[None]:
    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    fut.set_result(None)
    return fut


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes | None]] = []

    async def send(self, topic: str, key: bytes, value: bytes | None, *_: Any) -> asyncio.Future[None]:
        self.sent.append((topic, key, value))
        return _done_future()

    def _ensure_producer(self) -> _Client:
        return _Client()


class FakeConsumer:
    """Highwater = what has landed on the 'broker' so far; acks recorded."""

    def __init__(self) -> None:
        self.landed: dict[TP, int] = {}
        self._committed_offset: dict[TP, int | None] = {}
        self.acked: dict[TP, set[int]] = {}
        self.paused: set[TP] = set()

    def highwater(self, tp: TP) -> int:
        return self.landed.get(tp, 0)

    def ack_offsets(self, tp: TP, offsets: Any) -> int:
        self.acked.setdefault(tp, set()).update(offsets)
        return 0

    def pause_partitions(self, tps: Any) -> None:
        self.paused |= set(tps)

    def resume_partitions(self, tps: Any) -> None:
        self.paused -= set(tps)


def _table(name: str) -> Any:
    return SimpleNamespace(
        data=SimpleNamespace(data={}), changelog_topic=SimpleNamespace(get_topic_name=lambda: f"{name}-changelog")
    )


def runtime(partitions: int = 2, wall: list[int] | None = None) -> tuple[Runtime, FakeConsumer, FakeProducer]:
    """A Runtime on the fake consumer and producer; its wall clock reads wall[0] (microseconds)."""
    consumer, producer = FakeConsumer(), FakeProducer()
    app = SimpleNamespace(consumer=consumer, producer=producer, rebalancing=False, in_recovery=False)
    config = WorkerConfig(rules=Settings(), partitions=partitions, crash_quarantine_after=0)  # (no files in the cwd)
    clock = (lambda: wall[0]) if wall is not None else wall_clock_us
    rt = Runtime(app, config, _table("numbers"), _table("links"), clock=clock)
    rt.on_assigned({TP(t, p) for t in rt.inputs for p in range(partitions)})
    return rt, consumer, producer


def alert_keys(producer: FakeProducer) -> dict[str, str]:
    """dedup_key -> kind of the alerts the worker produced."""
    return {
        key.decode(): json.loads(value or b"{}")["kind"]
        for topic, key, value in producer.sent
        if topic == Settings().topics.alerts
    }


def expected_keys(records: list[Rec]) -> dict[str, str]:
    """dedup_key -> kind of the in-order engine's alerts."""
    engine = new_engine()
    feed(engine, sorted(records, key=lambda r: parse_rfc3339(r.event["event_time"])))
    engine.flush(0)
    return {a.dedup_key: a.kind for a in comparable(engine.drain()[0])}


def as_batches(records: list[Rec], partitions: int, order: list[str], batch: int) -> list[list[ConsumerRecord]]:
    """Each topic-partition's records in event-time order with offsets; landing topic by topic in `order`,
    a batch of at most `batch` records of one topic-partition at a time."""
    offsets: dict[tuple[str, int], itertools.count[int]] = {}
    by_tp: dict[tuple[str, int], list[ConsumerRecord]] = {}
    for r in sorted(records, key=lambda r: parse_rfc3339(r.event["event_time"])):
        p = int(r.key[-1]) % partitions if r.key else 0  # type: ignore[index]
        off = offsets.setdefault((r.topic, p), itertools.count())
        ts = parse_rfc3339(r.event["event_time"]) // 1000
        value = r.value.encode() if isinstance(r.value, str) else r.value
        by_tp.setdefault((r.topic, p), []).append(
            ConsumerRecord(r.topic, p, next(off), r.key.encode() if r.key else None, value, ts)
        )
    out = []
    for topic in order:
        for (t, _), recs in sorted(by_tp.items()):
            if t == topic:
                out += [recs[i : i + batch] for i in range(0, len(recs), batch)]
    return out


def run(rt: Runtime, consumer: FakeConsumer, batches: list[list[ConsumerRecord]], wall: list[int]) -> None:
    async def go() -> None:
        for recs in batches:
            tp = TP(recs[0].topic, recs[0].partition)
            consumer.landed[tp] = recs[-1].offset + 1  # highwater: what has landed so far
            wall[0] += 1_000  # a millisecond a batch
            rt.on_events([(tp, list(recs))])
            await rt.tick()
        for _ in range(3):  # then silence: every topic idle after idle_flush
            wall[0] += 40 * S
            await rt.tick()

    asyncio.run(go())


def _clock() -> list[int]:
    return [parse_rfc3339("2027-01-01T00:00:00Z")]


def test_a_topic_that_lands_ahead_makes_nothing_late(monkeypatch):
    wall = _clock()
    records = [
        change("contract_started", 0, id="s", email="me@x.de"),
        change("email_changed", 2 * DAY, id="e", email="new@x.de"),
        mail("me@x.de", DAY, id="n1", message_id="m1"),
        mail("new@x.de", 3 * DAY, id="n2", message_id="m2"),
        mail("old@x.de", 3 * DAY + 5, id="n3", message_id="m3"),
        delivery("m1", "bounced", DAY + 60, id="b1", bounce_type="hard", recipient="me@x.de"),
        delivery("m2", "bounced", 3 * DAY + 60, id="b2", bounce_type="hard", recipient="new@x.de"),
    ]
    rt, consumer, producer = runtime(wall=wall)
    run(
        rt,
        consumer,
        as_batches(records, 2, ["contracts.changes", "notifications.delivery", "notifications.outbound"], batch=500),
        wall,
    )
    expected = expected_keys(records)
    assert sorted(expected.values()) == ["current_address_bouncing", "current_address_bouncing", "recipient_unlinked"]
    assert alert_keys(producer) == expected
    assert sum(rt.engine.stats.late.values()) == 0
    # every record acked, and only after it was done
    assert sum(len(v) for v in consumer.acked.values()) == len(records)
    assert rt.engine.pending_count() == 0


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(
    histories(),
    st.permutations(["contracts.changes", "notifications.outbound", "notifications.delivery"]),
    st.integers(1, 7),
)
def test_any_landing_order_of_the_topics_gives_the_in_order_alerts(monkeypatch, records, order, batch):
    wall = _clock()
    rt, consumer, producer = runtime(wall=wall)
    run(rt, consumer, as_batches(records, 2, list(order), batch), wall)
    assert alert_keys(producer) == expected_keys(records)
    assert sum(rt.engine.stats.late.values()) == 0
    assert rt.engine.pending_count() == 0


def test_event_times_far_ahead_of_the_kafka_timestamp_or_the_wall_clock_are_dead_lettered(monkeypatch):
    wall = _clock()
    rt, _consumer, producer = runtime(wall=wall)
    now_ms = wall[0] // 1000
    poison = change("contract_started", 0, id="poison", msisdn="+4930999999999", event_time="9999-01-01T00:00:00Z")
    ahead = change(
        "contract_started", 0, id="ahead", msisdn="+4930999999998", event_time="2027-01-01T02:00:00Z"
    )  # 2 h after the wall clock
    fine = change("contract_started", 0, id="fine", msisdn="+4930999999997", event_time="2027-01-01T00:30:00Z")
    batch = []
    for i, (r, ts) in enumerate(((poison, now_ms), (ahead, now_ms + 7_200_000), (fine, now_ms))):
        value = r.value.encode() if isinstance(r.value, str) else r.value
        batch.append(ConsumerRecord(r.topic, 0, i, r.key.encode() if r.key else None, value, ts))
    rt.on_events([(TP("contracts.changes", 0), batch)])
    letters = [json.loads(v or b"{}") for t, _, v in producer.sent if t == Settings().topics.deadletter]
    letters += [json.loads(v or b"{}") for t, _, v, *_ in rt.pipeline.out if t == Settings().topics.deadletter]
    assert sorted((d["offset"], d["reason_code"]) for d in letters) == [(0, "bad_event_time"), (1, "bad_event_time")]
    # the refused records moved no watermark: the contract topic's is "fine"'s
    assert max(s.watermark or 0 for s in rt.engine.arrival.sources()) == parse_rfc3339("2027-01-01T00:30:00Z")


def test_a_commit_marker_after_the_last_record_is_nothing_waiting(monkeypatch):
    """A transactional producer leaves a commit marker after its last record: highwater 4, the last
    record read at 2, aiokafka's position 4. That topic-partition has caught up: it goes idle,
    and stops holding the watermark; a record fetched but not handed over yet keeps it behind."""
    wall = _clock()
    rt, consumer, _ = runtime(partitions=1, wall=wall)
    tp = TP("notifications.delivery", 0)
    state = SimpleNamespace(has_valid_position=True, position=4)
    assignment = SimpleNamespace(state_value=lambda t: state if t == tp else None)
    client = SimpleNamespace(_subscription=SimpleNamespace(subscription=SimpleNamespace(assignment=assignment)))
    consumer._thread = SimpleNamespace(_ensure_consumer=lambda: client)  # type: ignore[attr-defined]
    consumer.landed[tp] = 4
    rt.pipeline.read[(tp.topic, tp.partition)] = 2
    assert rt.broker.behind(tp) is False and rt.broker.waiting(tp) == 0
    rt.pipeline.read[(tp.topic, tp.partition)] = 1  # two offsets fetched and not handed over: records wait
    assert rt.broker.behind(tp) is True
    state.position = 3  # the broker holds one past the position
    rt.pipeline.read[(tp.topic, tp.partition)] = 2
    assert rt.broker.behind(tp) is True and rt.broker.waiting(tp) == 1


def test_a_partition_revoked_under_the_timer_raises_nothing(monkeypatch):
    """aiokafka asserts a partition is assigned when asked its highwater: during a rebalance the
    timer asked for a revoked one, and the tick (and so the worker) crashed."""
    wall = _clock()
    rt, consumer, _ = runtime(partitions=1, wall=wall)

    def revoked(tp: TP) -> int:
        raise AssertionError("Partition is not assigned")

    monkeypatch.setattr(consumer, "highwater", revoked)
    tp = TP("notifications.outbound", 0)
    assert rt.broker.waiting(tp) == 0 and rt.broker.behind(tp) is True and rt.broker.unread(tp) is None
    asyncio.run(rt.tick())
