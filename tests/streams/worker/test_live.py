"""A capture produced to Kafka WHILE the worker reads gives the offline replay's alerts (issue 11, item 5).

The other worker tests produce a backlog first and then start the worker; this
file produces while it reads, the way live traffic and `notifguard replay
--bootstrap` do, with pipelines from tests/pipelines.py (not bench/generate.py).
The contract (topics.md 1.1, "Determinism"): a capture replayed into Kafka while
the detector reads it raises the same alerts as the offline replay of that
capture, whatever the relative speed of the three topics.

Which records the expectation is computed from: `notifguard replay
--rebase-time` rewrites every event_time (and record timestamp) by one offset,
and partitions by key with the producer's murmur2. The expectation is the
offline replay of what the worker read: after producing, the three input topics
are captured back (`notifguard capture`) and that file is replayed offline
(`notifguard replay --offline`). The generated capture is replayed offline too
and must give the same dedup_keys (they are functions of kind and trigger
event id, and a constant shift of event time changes no verdict): if not, the
tools changed the records, and the test says so before it blames the worker.
`notifguard replay` has no option to write the rebased capture; reading it back
from the topics is what an operator can do as well.

A capture split over several `notifguard replay` processes (backlog then live,
a lagging topic) gives each process an explicit --rebase-time: the tool anchors
each file's own last record (first, when paced), so `now` would shift the parts
by different offsets; one offset for all parts keeps the records what they were.

Modes, one test each: live (as fast as possible, `--rebase-time now`), paced
(`--speed`), backlog then live, one topic lagging, SIGKILL and restart in
at_least_once and exactly_once, and two workers sharing the partitions; and,
marked slow, a year of 2,000 numbers (>= 150k records) live, also with a
SIGKILL in exactly_once.

Rules in these runs: grace 10 s and idle_flush 15 s (the defaults are 30 s
each, which would only lengthen the wait for the last verdicts); the lagging
topic's run keeps idle_flush at its default, see there.

Run (a broker of your own: deploy/kafka/start.sh):
    NOTIFGUARD_BOOTSTRAP=127.0.0.1:19092 .venv/bin/pytest tests/streams/worker/test_live.py -m "kafka and not slow"
    NOTIFGUARD_BOOTSTRAP=... .venv/bin/pytest tests/streams/worker/test_live.py -k at_scale  # the slow ones
    NOTIFGUARD_LIVE_SEED=7 ...  # the slow tests' pipeline seed (default: a fresh one, printed)
Where several pytest sessions share a machine, give each its own --basetemp: pytest
removes all but the newest three numbered temp directories of a user, and with them
a running worker's data directory and captures.

Run times on the shared 2-core machine (2026-12-04, the worker failing every mode
but the control): 27-62 s a test, ~6 min for the file without the slow ones; the
slow ones 200-230 s each (producing 160k records takes 70-120 s there).
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings

from detectors.settings import Topics
from tests.pipelines import (
    CHANGES,
    DAY,
    Pipeline,
    Shape,
    add_cross_partition_links,
    build_pipeline,
    large_shape,
    pipelines,
)
from tests.streams.kafka_harness import require_broker, sample
from tests.streams.live_harness import (
    LiveRun,
    Offline,
    Part,
    Result,
    assert_equivalent,
    dedup_key,
    offline,
    own_state_key,
    rebase_target,
    settle,
    write_part,
)

pytestmark = pytest.mark.kafka

RULES: dict[str, Any] = {"grace_s": 10, "idle_flush_s": 15}
HOUR_US = 3_600_000_000


def now_us() -> int:
    return time.time_ns() // 1000 // 1000 * 1000  # whole ms: rebased event times stay in milliseconds


class Live:
    """One test's run: its LiveRun, the generated capture and its offline replay, timings."""

    def __init__(self, tmp: Path, pipeline: Pipeline, **rules: Any) -> None:
        self.tmp = tmp
        self.pipeline = pipeline
        self.run = LiveRun(require_broker(), tmp, partitions=pipeline.shape.partitions, **{**RULES, **rules})
        self.envelopes = pipeline.envelopes()
        self.capture = write_part(tmp / "capture.jsonl", self.envelopes)
        self.seconds: dict[str, float] = {}
        started = time.monotonic()
        self.original: Offline = offline(self.capture.path, self.run.rules_env(Topics()), tmp, "generated")
        self.seconds["offline replay"] = time.monotonic() - started
        print(f"pipeline {pipeline.shape}: {pipeline.summary()}")

    def part(self, name: str, envelopes: list[Any]) -> Part:
        return write_part(self.tmp / f"{name}.jsonl", envelopes)

    def delta_to(self, target_us: int, anchor: str = "last") -> int:
        """The one offset of every part: the capture's last (or first) record at target_us."""
        return target_us - (self.capture.last_us if anchor == "last" else self.capture.first_us)

    def paced_speed(self, seconds: float) -> float:
        return (self.capture.last_us - self.capture.first_us) / 1e6 / seconds

    def finish(self, produced_at: float, done_timeout: float = 180, key: Any = dedup_key) -> Result:
        """The last producer has ended: capture back, replay offline, wait for the workers, read the outputs."""
        self.seconds["produce"] = time.monotonic() - produced_at + self.seconds.get("produce", 0.0)
        back = self.run.capture_back(self.tmp / "captured.jsonl")
        expected = offline(back, self.run.rules_env(self.run.topics), self.tmp, "captured")
        return settle(self.run, expected, self.original, time.monotonic(), self.seconds, done_timeout, key)

    def close(self) -> None:
        self.run.close()


@pytest.fixture()
def live_run(request, tmp_path):
    """Live(tmp_path, pipeline, **rules) for the test; closed after it."""
    made: list[Live] = []

    def make(pipeline: Pipeline, **rules: Any) -> Live:
        made.append(Live(tmp_path, pipeline, **rules))
        return made[-1]

    yield make
    for live in made:
        live.close()


def small(seed: int, **kw: Any) -> Pipeline:
    return build_pipeline(Shape(seed=seed, **kw))


# ------------------------------------------------------------------ live, as fast as possible

# Each example is a worker run through Kafka (~1 min): few examples, no shrinking
# (a failing example prints its Shape; build_pipeline(Shape(...)) gives its records again).
LIVE_EXAMPLES = settings(
    max_examples=2,
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@LIVE_EXAMPLES
@given(pipeline=pipelines())
def test_live_as_fast_as_possible_gives_the_offline_alerts(bootstrap, tmp_path_factory, pipeline):
    """`notifguard replay --bootstrap --rebase-time now` (speed 0) while the worker reads."""
    tmp = tmp_path_factory.mktemp("live")
    live = Live(tmp, pipeline)
    try:
        live.run.start_worker()
        started = time.monotonic()
        live.run.produce(live.capture, rebase="now").wait()
        assert_equivalent(live.finish(started), tmp)
    finally:
        live.close()


# ------------------------------------------------------------------ paced


def test_paced_replay_gives_the_offline_alerts(live_run):
    """`--speed` so that ~120 days take ~25 s: records at ~0.4 days of event time a second."""
    live = live_run(small(seed=101, numbers=220, days=120.0))
    live.run.start_worker()
    speed = live.paced_speed(25)
    # the whole capture in the past: brokers refuse timestamps more than an hour ahead
    delta = live.delta_to(now_us() - HOUR_US)
    started = time.monotonic()
    live.run.produce(live.capture, rebase=rebase_target(live.capture, delta, speed), speed=speed).wait()
    assert_equivalent(live.finish(started), live.tmp)


# ------------------------------------------------------------------ the control: a backlog


def test_a_backlog_gives_the_offline_alerts(live_run):
    """The whole capture before the worker starts (what the older tests do): the harness's control.

    A worker that reads a backlog in event-time order passes; if this fails, suspect the harness.
    """
    live = live_run(small(seed=100, numbers=220))
    started = time.monotonic()
    live.run.produce(live.capture, rebase="now", wait=True)
    live.seconds["produce"] = time.monotonic() - started
    started = time.monotonic()
    live.run.start_worker()
    assert_equivalent(live.finish(started), live.tmp)


# ------------------------------------------------------------------ backlog, then live


def test_half_a_backlog_then_the_rest_live_gives_the_offline_alerts(live_run):
    live = live_run(small(seed=102, numbers=220))
    half = len(live.envelopes) // 2
    first, second = live.part("first", live.envelopes[:half]), live.part("second", live.envelopes[half:])
    delta = live.delta_to(now_us())
    started = time.monotonic()
    live.run.produce(first, rebase=rebase_target(first, delta, 0), wait=True)  # a backlog: no worker yet
    live.run.start_worker()
    live.seconds["produce"] = time.monotonic() - started
    started = time.monotonic()
    live.run.produce(second, rebase=rebase_target(second, delta, 0)).wait()
    assert_equivalent(live.finish(started), live.tmp)


# ------------------------------------------------------------------ one topic lagging

LAG_S = 8.0


def test_contract_changes_produced_seconds_after_the_rest_give_the_offline_alerts(live_run):
    """contracts.changes starts LAG_S of wall time after the other two topics (a slower upstream).

    idle_flush stays at its default (30 s), well above the lag plus the few seconds
    between the worker's start and the first record: a topic-partition silent for
    idle_flush is idle (topics.md 1.1) and stops holding its partition's watermark
    back, so a lag past it would make the changes late by right, beyond the
    correction horizon at this speed. The last verdicts wait ~30 s for it.
    """
    live = live_run(small(seed=103, numbers=220), idle_flush_s=30)
    changes = live.part("changes", [e for e in live.envelopes if e.topic == CHANGES])
    others = live.part("others", [e for e in live.envelopes if e.topic != CHANGES])
    delta = live.delta_to(now_us())
    live.run.start_worker()
    started = time.monotonic()
    fast = live.run.produce(others, rebase=rebase_target(others, delta, 0))
    time.sleep(LAG_S)
    late = live.run.produce(changes, rebase=rebase_target(changes, delta, 0))
    fast.wait()
    late.wait()
    assert_equivalent(live.finish(started, done_timeout=240), live.tmp)


# ------------------------------------------------------------------ SIGKILL and restart

# After a SIGKILL the restarted worker re-reads from the last committed offsets;
# the engine drops what it applied already by event id, within dedup_retention_s
# of event time. Produced at ~5 days of event time a second, the re-read spans
# weeks, so the retention covers the whole capture (as in test_kafka).
RESTART_RULES: dict[str, Any] = {"dedup_retention_s": 200 * 86_400}


@pytest.fixture()
def killable(monkeypatch):
    # session_timeout_s: a killed worker's group membership expires after 10 s
    # instead of 60 (failure detection only).
    monkeypatch.setenv("NOTIFGUARD_WORKER_SESSION_TIMEOUT_S", "10")


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_sigkill_mid_stream_then_restart_gives_the_offline_alerts(live_run, killable, guarantee):
    live = live_run(small(seed=104, numbers=250), worker_processing_guarantee=guarantee, **RESTART_RULES)
    exactly_once = guarantee == "exactly_once"
    live.run.start_worker(name="w1")
    speed = live.paced_speed(24)
    delta = live.delta_to(now_us() - HOUR_US)
    started = time.monotonic()
    producer = live.run.produce(live.capture, rebase=rebase_target(live.capture, delta, speed), speed=speed)
    time.sleep(10)
    assert producer.proc.poll() is None, "the capture was produced before the kill: not mid-stream"
    consumed = live.run.health(live.run.workers[-1][1]).get("consumed", 0)
    live.run.kill()  # SIGKILL: no flush, no commit; exactly once: its open transaction is aborted
    # at least once: a fresh RocksDB directory, state from the changelogs alone;
    # exactly once: the same directory, rebuilt from the committed changelog
    live.run.start_worker(name="w1" if exactly_once else "w1b")
    producer.wait()
    result = live.finish(started, done_timeout=240)
    print(f"killed after {consumed} records consumed")
    assert_equivalent(result, live.tmp, exactly_once=exactly_once)


@LIVE_EXAMPLES  # (the first example is the simplest pipeline, the second a random one)
@given(pipeline=pipelines())
def test_contract_changes_lagging_and_a_sigkill_mid_stream_give_the_offline_alerts(
    bootstrap, tmp_path_factory, pipeline
):
    """A generated pipeline produced paced while the worker reads, contracts.changes starting LAG_S
    after the other two topics (within idle_flush: it holds the watermark back), and the worker
    SIGKILLed mid-stream and restarted with a fresh RocksDB directory (its state from the
    changelogs alone, the records since the last commit read again, the lagging topic's too)."""
    tmp = tmp_path_factory.mktemp("lag-kill")
    with pytest.MonkeyPatch.context() as env:  # (as `killable`: a function-scoped fixture)
        env.setenv("NOTIFGUARD_WORKER_SESSION_TIMEOUT_S", "10")
        live = Live(tmp, pipeline, idle_flush_s=30, **RESTART_RULES)
        try:
            changes = live.part("changes", [e for e in live.envelopes if e.topic == CHANGES])
            others = live.part("others", [e for e in live.envelopes if e.topic != CHANGES])
            speed = live.paced_speed(30)
            delta = live.delta_to(now_us() - HOUR_US)
            live.run.start_worker(name="w1")
            started = time.monotonic()
            fast = live.run.produce(others, rebase=rebase_target(others, delta, speed), speed=speed)
            time.sleep(LAG_S)
            late = live.run.produce(changes, rebase=rebase_target(changes, delta, speed), speed=speed)
            time.sleep(6)
            assert fast.proc.poll() is None and late.proc.poll() is None, "produced before the kill: not mid-stream"
            live.run.kill()  # SIGKILL: no flush, no commit
            live.run.start_worker(name="w1b")
            fast.wait()
            late.wait()
            assert_equivalent(live.finish(started, done_timeout=240), tmp)
        finally:
            live.close()


# ------------------------------------------------------------------ two workers


def _ready_workers(live: Any, n: int) -> list[int]:
    """Start workers w1..wn and wait (up to 60 s) until each says it is ready; their web ports."""
    ports = [live.run.start_worker(name=f"w{i + 1}") for i in range(n)]
    deadline = time.monotonic() + 60
    while not all(live.run.health(p).get("ready") for p in ports):
        assert time.monotonic() < deadline, "the workers did not settle"
        time.sleep(0.5)
    return ports


def test_two_workers_sharing_the_partitions_give_the_offline_alerts(live_run):
    """Link-dependent kinds compared as one (own_state_key): a worker sees the other's links a flush late."""
    live = live_run(small(seed=105, numbers=250), **RESTART_RULES)  # a rebalance re-reads too
    p1, p2 = _ready_workers(live, 2)
    started = time.monotonic()
    live.run.produce(live.capture, rebase="now").wait()
    result = live.finish(started, key=own_state_key)
    shares = [live.run.health(p).get("consumed", 0) for p in (p1, p2)]
    print(f"records consumed by the two workers: {shares}")
    assert all(shares), f"both workers should have had partitions: {shares}"
    assert_equivalent(result, live.tmp)


# ------------------------------------------------------------------ at scale (slow)


def fresh_seed() -> int:
    return int(os.environ.get("NOTIFGUARD_LIVE_SEED") or random.SystemRandom().randrange(2**31))


@pytest.mark.slow
@pytest.mark.parametrize("kill", [False, True], ids=["live", "sigkill-exactly-once"])
def test_at_scale_a_year_of_2000_numbers_live_gives_the_offline_dedup_keys(live_run, killable, kill):
    """Issue 11's "done when": >= 2,000 numbers, >= 150k records, produced live with
    `--rebase-time now`; also with a SIGKILL mid-replay in exactly_once."""
    shape = large_shape(seed=fresh_seed())
    pipeline = build_pipeline(shape)
    assert shape.numbers >= 2000 and len(pipeline) >= 150_000, pipeline.summary()
    rules = {"worker_processing_guarantee": "exactly_once", **RESTART_RULES} if kill else {}
    if kill:
        rules["dedup_retention_s"] = int(shape.days * DAY / 1e6) + 30 * 86_400
    live = live_run(pipeline, **rules)
    live.run.start_worker(name="w1")
    started = time.monotonic()
    producer = live.run.produce(live.capture, rebase="now")
    if kill:
        port = live.run.workers[-1][1]
        deadline = time.monotonic() + 300
        while live.run.health(port).get("consumed", 0) < len(pipeline) // 3:
            assert time.monotonic() < deadline, "the worker did not get a third of the way"
            time.sleep(0.2)
        consumed = live.run.health(port).get("consumed", 0)
        live.run.kill()
        print(
            f"killed after {consumed} records consumed, "
            f"producer {'running' if producer.proc.poll() is None else 'done'}"
        )
        live.run.start_worker(name="w1")
    producer.wait()
    result = live.finish(started, done_timeout=600)
    assert_equivalent(result, live.tmp, exactly_once=kill)


# ------------------------------------------------------------------ contract changes late beyond grace (1.1)


@pytest.mark.parametrize("workers", [1, 2], ids=["one-worker", "two-workers"])
def test_contract_changes_produced_days_of_event_time_behind_give_the_in_order_final_alerts(live_run, workers):
    """contracts.changes produced only after the other two topics were read and committed: every
    change arrives later than grace (its topic idle meanwhile), days of event time behind the
    watermark but within correction_horizon (7 days): the worker's final set (firing minus
    retracted, by dedup_key) is the in-order offline replay's (contract 1.1, docs/topics.md 2.6a).

    With family numbers (a new holder who has another number already), two partitions and the
    stories of tests.pipelines.add_cross_partition_links: a late change of one number that links
    an address a number of the other partition mailed is a Relink broadcast through
    `<app_id>-relinks` and applied by that partition's owner (without it those mails keep a
    recipient_unlinked verdict); with two workers, each partition's owner is another process.
    """
    pipeline = small(seed=104, numbers=240, days=3.0, partitions=2, p_family=0.5)
    add_cross_partition_links(pipeline)
    live = live_run(pipeline)
    changes = live.part("changes", [e for e in live.envelopes if e.topic == CHANGES])
    others = live.part("others", [e for e in live.envelopes if e.topic != CHANGES])
    delta = live.delta_to(now_us())
    ports = _ready_workers(live, workers)
    started = time.monotonic()
    live.run.produce(others, rebase=rebase_target(others, delta, 0)).wait()
    assert live.run.wait_done(240) == 0  # judged without the contract changes, committed
    live.run.produce(changes, rebase=rebase_target(changes, delta, 0)).wait()
    result = live.finish(started, done_timeout=240)
    got = result.alerts
    assert any(a.get("status") == "retracted" for a in got) and any(a.get("late") for a in got), (
        "no corrections: the changes were not late"
    )
    expositions = [live.run.metrics(p) for p in ports]
    for exposition in expositions:
        print("\n".join(line for line in exposition.splitlines() if "relink" in line and not line.startswith("#")))
    if workers == 2:
        assert all(live.run.health(p).get("consumed", 0) for p in ports), "both workers should have had partitions"
    assert sum(sample(m, "notifguard_relinks_sent_total") for m in expositions) > 0
    relinked = sum(sample(m, 'notifguard_corrections_total{cause="relink"}') for m in expositions)
    assert relinked > 0, "no other number was re-judged"
    assert_equivalent(result, live.tmp)


def test_a_worker_a_backlog_behind_the_other_gives_the_in_order_final_alerts(live_run):
    """Issue 12, watermarks apart: two workers, one partition each. Partition 0's records (all three
    topics) are produced, judged and committed first; partition 1's come after, a backlog its
    worker reads on time against its own watermark, which is hours of event time behind the other
    worker's. In the stories of tests.pipelines.add_cross_partition_links, a number of partition
    1 links an address three hours before the end, which a number of partition 0 mailed an hour
    later, already judged (recipient_unlinked) by the worker ahead: that change is on time where
    it is applied and older than that verdict. Its Relink (an on-time change's: docs/topics.md
    2.6a) is applied by the worker ahead, and the final set (firing minus retracted, by
    dedup_key) is the in-order offline replay's.
    """
    pipeline = small(seed=104, numbers=240, days=3.0, partitions=2, p_family=0.5)
    add_cross_partition_links(pipeline)
    live = live_run(pipeline)
    ahead = live.part("ahead", [e for e in live.envelopes if e.partition == 0])
    behind = live.part("behind", [e for e in live.envelopes if e.partition == 1])
    delta = live.delta_to(now_us())
    ports = _ready_workers(live, 2)
    started = time.monotonic()
    live.run.produce(ahead, rebase=rebase_target(ahead, delta, 0)).wait()
    assert live.run.wait_done(240) == 0  # partition 0 judged without partition 1's links, committed
    live.run.produce(behind, rebase=rebase_target(behind, delta, 0)).wait()
    result = live.finish(started, done_timeout=240)
    expositions = [live.run.metrics(p) for p in ports]
    for exposition in expositions:
        print(
            "\n".join(
                line
                for line in exposition.splitlines()
                if ("relink" in line or "late_records" in line) and not line.startswith("#")
            )
        )
    assert all(live.run.health(p).get("consumed", 0) for p in ports), "both workers should have had partitions"
    relinked = sum(sample(m, 'notifguard_corrections_total{cause="relink"}') for m in expositions)
    assert relinked > 0, "no number of the worker ahead was re-judged"
    assert any(a.get("status") == "retracted" for a in result.alerts)
    assert_equivalent(result, live.tmp)
