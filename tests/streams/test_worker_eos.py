"""processing_guarantee=exactly_once on a real broker: a SIGKILL mid-capture leaves no duplicate.

At least once, a killed worker's alerts and dead letters since its last
offset commit are produced again by the restarted worker (same dedup_key).
Exactly once, each flush is one Kafka transaction (streams/transactions.py):
the killed worker's open transaction is aborted when the restarted worker
fences its transactional id, and a read_committed consumer sees every alert
and every dead letter once.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from detectors.capture import encode_line
from detectors.settings import Settings
from streams.replay_offline import replay
from streams.transactions import OffsetTracker, decode_done, encode_done
from tests.streams.kafka_harness import KafkaRun, keys, require_broker
from tests.streams.test_worker_kafka import REREAD_RETENTION_S, consumed, generated, wait_consumed


def read_committed(run: KafkaRun, topic: str, until: Any, timeout: float) -> list[dict[str, Any]]:
    return run.read(topic, until, timeout, isolation_level="read_committed")


def committed_offsets(run: KafkaRun) -> int:
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=run.bootstrap)
    try:
        offsets = admin.list_group_offsets({run.app_id: None})[run.app_id]
    finally:
        admin.close()
    inputs = {run.topics.outbound, run.topics.changes, run.topics.delivery}
    return sum(meta.offset for tp, meta in offsets.items() if tp.topic in inputs)


def end_offsets(run: KafkaRun, topic: str) -> int:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=run.bootstrap)
    try:
        ends = consumer.end_offsets([TopicPartition(topic, p) for p in range(run.partitions)])
    finally:
        consumer.close()
    return sum(ends.values())


def pending(run: KafkaRun, port: int) -> float:
    """The worker's records not yet released (grace buffers and merge queues)."""
    for line in run.metrics(port).splitlines():
        if line.startswith("notifguard_pending_events "):
            return float(line.split()[-1])
    raise AssertionError("no notifguard_pending_events gauge")


@pytest.fixture()
def eos_run(tmp_path, monkeypatch):
    # Faust reads its settings from the environment too: the killed worker's
    # group membership expires after 10 s instead of 60, so the restarted
    # worker gets its partitions sooner (failure detection only, no semantics).
    monkeypatch.setenv("BROKER_SESSION_TIMEOUT", "10")
    r = KafkaRun(require_broker(), tmp_path, dedup_retention_s=REREAD_RETENTION_S,
                 worker_processing_guarantee="exactly_once")
    yield r
    r.close()


@pytest.mark.kafka
@pytest.mark.slow
def test_exactly_once_sigkill_then_restart_gives_each_alert_and_dead_letter_once(eos_run, tmp_path: Path):
    run = eos_run
    envs = generated(12_000, seed=21)
    path = tmp_path / "capture.jsonl"
    path.write_bytes(b"".join(encode_line(e) for e in envs))
    summary, alerts = replay([path], Settings(dedup_retention_s=REREAD_RETENTION_S))
    expected = keys(alerts)
    expected_dead = Counter(summary.deadletters)
    assert len(expected) > 100 and sum(expected_dead.values()) > 10
    run.produce(envs)
    port = run.start_worker(name="w1")
    wait_consumed(run, [port], len(envs) / 2)
    run.kill()  # SIGKILL mid-capture: a flush transaction may be open
    # The same RocksDB directory: exactly_once rebuilds it from the committed changelog.
    port = run.start_worker(name="w1")

    got = read_committed(run, run.topics.alerts, lambda a: keys(a) >= expected, timeout=120)
    missing = expected - keys(got)
    assert not missing, f"{len(missing)} alerts missing, e.g. {sorted(missing)[:5]}"
    # Only the flush transactions commit offsets in this mode: every record
    # released, i.e. all but the few still held in a grace buffer at the end.
    deadline = time.monotonic() + 30
    while len(envs) - committed_offsets(run) > pending(run, port) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert 0 <= len(envs) - committed_offsets(run) <= pending(run, port)

    got = read_committed(run, run.topics.alerts, lambda a: False, timeout=3)
    assert keys(got) == expected
    dedup = Counter(a["dedup_key"] for a in got)
    twice = [k for k, n in dedup.items() if n > 1]
    assert not twice, f"{len(twice)} alerts more than once on the alerts topic, e.g. {twice[:5]}"
    assert len(got) == len(expected)

    dead = read_committed(run, run.topics.deadletter, lambda d: False, timeout=3)
    sources = Counter((d["source_topic"], d["partition"], d["offset"]) for d in dead)
    assert not [s for s, n in sources.items() if n > 1], "a dead letter more than once"
    assert Counter(d["reason_code"] for d in dead) == expected_dead

    # The alerts were written in transactions: their commit markers take offsets too.
    assert end_offsets(run, run.topics.alerts) > len(got)


@pytest.mark.kafka
@pytest.mark.slow
def test_exactly_once_two_workers_one_killed_the_other_takes_over_and_each_alert_appears_once(
    eos_run, tmp_path: Path
):
    """The handover case: the survivor claims the dead worker's partitions and their
    transactional ids, which aborts the dead worker's open transaction; it re-reads
    from the offsets the dead worker committed in its last committed transaction."""
    run = eos_run
    envs = generated(12_000, seed=22)
    path = tmp_path / "capture.jsonl"
    path.write_bytes(b"".join(encode_line(e) for e in envs))
    summary, alerts = replay([path], Settings(dedup_retention_s=REREAD_RETENTION_S))
    expected = keys(alerts)
    expected_dead = Counter(summary.deadletters)
    # both workers in the group first, so that each has partitions when the records come
    p1 = run.start_worker(name="w1")
    p2 = run.start_worker(name="w2")
    deadline = time.monotonic() + 60
    while not all(run.health(p).get("ready") for p in (p1, p2)):
        assert time.monotonic() < deadline, "the two workers did not settle"
        time.sleep(0.5)
    run.produce(envs)
    wait_consumed(run, [p1, p2], len(envs) / 2)
    assert consumed(run, p1) > 0 and consumed(run, p2) > 0, "both workers should have had partitions"
    run.kill(index=-1)  # SIGKILL w2 mid-stream: a flush transaction of its may be open

    got = read_committed(run, run.topics.alerts, lambda a: keys(a) >= expected, timeout=180)
    missing = expected - keys(got)
    assert not missing, f"{len(missing)} alerts missing, e.g. {sorted(missing)[:5]}"
    got = read_committed(run, run.topics.alerts, lambda a: False, timeout=3)
    assert keys(got) == expected
    twice = [k for k, n in Counter(a["dedup_key"] for a in got).items() if n > 1]
    assert not twice, f"{len(twice)} alerts more than once on the alerts topic, e.g. {twice[:5]}"
    dead = read_committed(run, run.topics.deadletter, lambda d: False, timeout=3)
    sources = Counter((d["source_topic"], d["partition"], d["offset"]) for d in dead)
    assert not [s for s, n in sources.items() if n > 1], "a dead letter more than once"
    assert Counter(d["reason_code"] for d in dead) == expected_dead


class Rec:
    def __init__(self, offset: int, topic: str = "t", partition: int = 0) -> None:
        self.topic, self.partition, self.offset = topic, partition, offset


def test_offsets_stop_at_the_first_record_not_done_and_list_the_done_ones_past_it():
    from faust.types import TP

    tp = TP("t", 0)
    t = OffsetTracker()
    t.delivered([(tp, [Rec(o) for o in range(10, 16)])])
    t.done([Rec(10), Rec(12), Rec(13)])  # 11 is held in a grace buffer
    assert t.committable() == {tp: (11, "eos1:1-2")}
    assert t.committable() == {}  # nothing moved
    t.done([Rec(11)])
    assert t.committable() == {tp: (14, "eos1:")}


def test_records_done_before_a_restart_are_skipped_and_stay_recorded_until_passed():
    from faust.types import TP

    tp = TP("t", 0)
    t = OffsetTracker()
    t.load(tp, 10, encode_done(10, [12, 13]))  # the group's commit: 12 and 13 done past 10
    kept = t.delivered([(tp, [Rec(o) for o in range(10, 15)])])
    assert [r.offset for r in kept[0][1]] == [10, 11, 14]
    t.done([Rec(10)])
    assert t.committable() == {tp: (11, "eos1:1-2")}
    # read again after a seek back: the first delivery is the one tracked
    assert t.delivered([(tp, [Rec(o) for o in range(11, 15)])]) == []
    t.done([Rec(11), Rec(14)])
    assert t.committable() == {tp: (15, "eos1:")}


def test_done_lists_round_trip_as_ranges():
    assert encode_done(100, [101, 102, 103, 105, 110, 111]) == "eos1:1-3,5,10-11"
    assert decode_done(100, "eos1:1-3,5,10-11") == [101, 102, 103, 105, 110, 111]
    assert decode_done(7, "") == [] and decode_done(7, "eos1:") == []


def test_an_unknown_processing_guarantee_fails_at_start_up():
    from streams.config import WorkerConfig

    with pytest.raises(ValueError, match="exactly_once"):
        WorkerConfig(rules=Settings(), processing_guarantee="exactly-once")
