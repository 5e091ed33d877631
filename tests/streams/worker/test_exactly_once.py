"""processing_guarantee=exactly_once on a real broker: a SIGKILL mid-capture leaves no duplicate.

At least once, a killed worker's alerts and dead letters since its last
offset commit are produced again by the restarted worker (same dedup_key).
Exactly once, each flush is one Kafka transaction (streams/worker/exactly_once.py):
the killed worker's open transaction is aborted when the restarted worker
fences its transactional id, and a read_committed consumer sees every alert
and every dead letter once.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from detectors.capture import encode_line
from detectors.settings import Settings
from streams.replay_offline import replay
from streams.worker.offsets import OffsetTracker, decode_done, encode_done
from tests.streams.kafka_harness import KafkaRun, committed_offsets, keys, require_broker
from tests.streams.live_harness import final, repeated_firings
from tests.streams.worker.test_kafka import REREAD_RETENTION_S, consumed, generated, wait_consumed


def read_committed(run: KafkaRun, topic: str, until: Any, timeout: float) -> list[dict[str, Any]]:
    return run.read(topic, until, timeout, isolation_level="read_committed")


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


def killable_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, guarantee: str) -> KafkaRun:
    # session_timeout_s: a killed worker's group membership expires after 10 s
    # instead of 60, so its partitions move on sooner (failure detection only).
    monkeypatch.setenv("NOTIFGUARD_WORKER_SESSION_TIMEOUT_S", "10")
    return KafkaRun(
        require_broker(), tmp_path, dedup_retention_s=REREAD_RETENTION_S, worker_processing_guarantee=guarantee
    )


def capture_and_offline(tmp_path: Path, seed: int) -> tuple[list[Any], list[Any], Counter[str]]:
    """A generated 12k-record capture, and the offline replay's alerts and dead letters by reason."""
    envs = generated(12_000, seed=seed)
    path = tmp_path / "capture.jsonl"
    path.write_bytes(b"".join(encode_line(e) for e in envs))
    summary, alerts = replay([path], Settings(dedup_retention_s=REREAD_RETENTION_S))
    return envs, alerts, Counter(summary.deadletters)


@pytest.fixture()
def eos_run(tmp_path, monkeypatch):
    r = killable_run(tmp_path, monkeypatch, "exactly_once")
    yield r
    r.close()


@pytest.mark.kafka
@pytest.mark.slow
def test_exactly_once_sigkill_then_restart_gives_each_alert_and_dead_letter_once(eos_run, tmp_path: Path):
    run = eos_run
    envs, alerts, expected_dead = capture_and_offline(tmp_path, seed=21)
    expected = keys(alerts)
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


@pytest.fixture(params=["at_least_once", "exactly_once"])
def handover_run(request, tmp_path, monkeypatch):
    r = killable_run(tmp_path, monkeypatch, request.param)
    yield r
    r.close()


# What a notification to an address other than the number's current one is called,
# past RECIPIENT_PREVIOUS_HOLDER, depends on the address links of other numbers, and
# two workers see each other's links a flush (~1 s) late: weeks of event time in a
# capture read in seconds, nothing live. Whether it alerts at all, and every other
# kind, depends on the number's own state only.
VIA_LINKS = {"recipient_other_customer", "recipient_stale_contract", "recipient_unlinked"}


def own_state_keys(alerts: Any) -> set[tuple[str, str, str]]:
    return {("recipient_via_links" if kind in VIA_LINKS else kind, trigger, ref) for kind, trigger, ref in keys(alerts)}


def split_at_gap(envs: list[Any]) -> int:
    """An index near the middle where the capture's event times jump forward the most."""
    n = len(envs)
    ts = [e.ts or 0 for e in envs]
    head_max, tail_min = [0] * n, [0] * (n + 1)
    m = 0
    for i, t in enumerate(ts):
        head_max[i] = m = max(m, t)
    tail_min[n] = m = max(ts) + 1
    for i in range(n - 1, -1, -1):
        tail_min[i] = m = min(m, ts[i])
    return max(range(2 * n // 5, 3 * n // 5), key=lambda i: tail_min[i] - head_max[i - 1])


@pytest.mark.kafka
@pytest.mark.slow
def test_two_workers_one_killed_the_other_takes_over_and_no_alert_is_lost(handover_run, tmp_path: Path):
    """The handover case: the survivor claims the dead worker's partitions (exactly once:
    and their transactional ids, which aborts the dead worker's open transaction) and
    re-reads from the offsets the dead worker committed.

    The workers are in the group first, so that each has partitions. The capture comes
    in two parts, each produced while the workers are stopped (SIGSTOP), so that each is
    a backlog to them: produced while they read, 120 days of event time would come
    squeezed into producer batches of milliseconds, a topic's batch hours of event time
    behind another's, and the merge could not order them (see test_kafka).
    """
    run = handover_run
    exactly_once = run.rules["worker_processing_guarantee"] == "exactly_once"
    envs, alerts, expected_dead = capture_and_offline(tmp_path, seed=22)
    expected = own_state_keys(alerts)
    p1 = run.start_worker(name="w1")
    p2 = run.start_worker(name="w2")
    deadline = time.monotonic() + 60
    while not all(run.health(p).get("ready") for p in (p1, p2)):
        assert time.monotonic() < deadline, "the two workers did not settle"
        time.sleep(0.5)
    procs = [proc for proc, _, _ in run.workers]

    def produce_stopped(part: list[Any]) -> None:
        live = [proc for proc in procs if proc.poll() is None]
        for proc in live:
            proc.send_signal(signal.SIGSTOP)
        time.sleep(1)  # a fetch they had in flight comes back empty
        run.produce(part)
        for proc in live:
            proc.send_signal(signal.SIGCONT)

    # split where event time jumps: the workers' idle ticks in between move no record past grace
    half = split_at_gap(envs)
    produce_stopped(envs[:half])
    wait_consumed(run, [p1, p2], half)
    assert consumed(run, p1) > 0 and consumed(run, p2) > 0, "both workers should have had partitions"
    deadline = time.monotonic() + 60  # both have flushed state and committed offsets
    while committed_offsets(run) < half * 0.9:
        assert time.monotonic() < deadline, f"{committed_offsets(run)} of {half} offsets committed"
        time.sleep(0.5)
    produce_stopped(envs[half:])
    wait_consumed(run, [p1, p2], half + 1)
    run.kill(index=-1)  # SIGKILL w2 reading the second part: a flush (transaction) of its may be open

    # the final set (firing minus retracted: on-time Relinks between the workers may retract and raise)
    got = read_committed(run, run.topics.alerts, lambda a: own_state_keys(final(a).values()) >= expected, timeout=180)
    got = read_committed(run, run.topics.alerts, lambda a: False, timeout=3)
    standing = own_state_keys(final(got).values())
    missing = expected - standing
    assert not missing, f"{len(missing)} alerts missing, e.g. {sorted(missing)[:5]}"
    extra = standing - expected
    assert not extra, f"{len(extra)} unexpected alerts, e.g. {sorted(extra)[:5]}"

    def sources(dead: list[dict[str, Any]]) -> set[tuple[str, int, int]]:
        return {(d["source_topic"], d["partition"], d["offset"]) for d in dead}

    dead = read_committed(run, run.topics.deadletter, lambda d: len(sources(d)) >= expected_dead.total(), timeout=60)
    if exactly_once:
        twice = sorted(repeated_firings(got))
        assert not twice, f"{len(twice)} alerts fired more than once on the alerts topic, e.g. {twice[:5]}"
        assert len(sources(dead)) == len(dead), "a dead letter more than once"
    else:  # the killed worker's outputs since its last commit come again (same source record)
        dead = list({(d["source_topic"], d["partition"], d["offset"]): d for d in dead}.values())
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


def test_done_records_past_a_first_record_still_held_are_committed_before_any_offset_is():
    """A fresh group: nothing committed, the partition's first record held in a grace buffer and a
    record past it dead-lettered in this transaction. The commit lists it past the first offset
    (before, nothing was committed, and a worker killed then had its successor dead-letter it
    again: test_exactly_once_sigkill_then_restart..., 1 run in 8)."""
    from faust.types import TP

    tp = TP("t", 0)
    t = OffsetTracker()
    t.delivered([(tp, [Rec(o) for o in range(0, 5)])])
    t.done([Rec(2), Rec(3)])
    assert t.committable() == {tp: (0, encode_done(0, [2, 3]))}
    t.done([Rec(0)])
    assert t.committable() == {tp: (1, encode_done(1, [2, 3]))}


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


# ---------------------------------------------------------------- at least once: acks in unbroken runs


def test_faust_commits_past_one_missing_offset_after_the_committed_one():
    """Why the worker acks in runs: Faust 0.15.3's commit arithmetic, on its own bookkeeping.

    With the group's committed offset at 10 (the next record to read) and 11-13
    acked while 10 is still held in a grace buffer, it commits 14: a crash then
    loses record 10. Two missing offsets stop it. (If a Faust upgrade fixes
    this, the test says so; the runs stay correct either way.)
    """
    from collections import defaultdict
    from types import SimpleNamespace

    from faust.transport.consumer import Consumer
    from faust.types import TP

    tp = TP("t", 0)

    def new_offset(acked: list[int]) -> int | None:
        fake = SimpleNamespace(
            _acked={tp: list(acked)}, _gap=defaultdict(list), _committed_offset={tp: 10}, _acked_index={tp: set(acked)}
        )
        return Consumer._new_offset(fake, tp)  # type: ignore[arg-type]

    assert new_offset([11, 12, 13]) == 14  # record 10 skipped
    assert new_offset([12, 13]) is None


def test_at_least_once_acks_go_in_unbroken_runs_from_the_committed_offset():
    from faust.types import TP

    tp = TP("t", 0)
    t = OffsetTracker()
    # 10 and 11 are transaction markers (no records); 12 is held in a grace buffer
    t.delivered([(tp, [Rec(o) for o in (12, 13, 14, 16)])])
    t.done([Rec(13), Rec(14)])
    assert t.runs({tp: 10}) == {}  # nothing may be acked past a held record
    t.done([Rec(12)])
    assert t.runs({tp: 10}) == {tp: range(10, 15)}  # the markers before the first record too
    t.done([Rec(16)])
    assert t.runs({tp: 10}) == {tp: range(15, 17)}  # and the compacted 15 between records
    assert t.runs({tp: 10}) == {}
    t.clear()  # a rebalance: re-read from the committed offset
    t.delivered([(tp, [Rec(17)])])
    t.done([Rec(17)])
    assert t.runs({tp: None}) == {tp: range(17, 18)}  # no commit known: from the first record
