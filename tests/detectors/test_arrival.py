"""detectors.arrival: min-of-inputs watermarks, idleness, the grace buffer, flow control (contract 1.1)."""

from __future__ import annotations

from dataclasses import dataclass

from detectors.arrival import CHANGE, DELIVERY, DUPLICATE, LATE, NOTIFICATION, ON_TIME, Arrival
from detectors.records import ContractEnded
from tests.factories import FILLER_START, advance, change, delivery, feed, kinds_of, mail, new_engine

S = 1_000_000
GRACE, IDLE = 30 * S, 60 * S


@dataclass(frozen=True)
class Ev:
    event_id: str


def ended(event_id: str) -> ContractEnded:
    return ContractEnded(schema_version=1, event_id=event_id, event_time="", msisdn="+4917612345678", contract_id="K")


def new() -> Arrival:
    return Arrival(GRACE, IDLE, 7 * 86_400 * S)


def test_the_watermark_is_the_minimum_over_the_three_topics():
    a = new()
    assert a.arrive(NOTIFICATION, 0, 1000 * S, Ev("m"), "n", clock=0) == ON_TIME
    assert a.watermark is None  # the other two have delivered nothing yet: they hold it
    a.arrive(DELIVERY, 0, 5000 * S, Ev("d"), "n", clock=0)
    a.arrive(CHANGE, 0, 100 * S, ended("c"), "n", clock=0)
    assert a.watermark == 100 * S  # the contract topic lags: the others wait for it
    assert a.take_ready() == []
    a.arrive(CHANGE, 0, 2000 * S, ended("c2"), "n", clock=0)
    assert a.watermark == 1000 * S  # now the mails' topic is the lowest
    assert [item[3] for item in a.take_ready()] == ["c"]


def test_release_order_does_not_depend_on_arrival_order():
    a, b = new(), new()
    records = [
        (DELIVERY, 10, Ev("d")),
        (NOTIFICATION, 10, Ev("m")),
        (CHANGE, 10, ended("c")),
        (CHANGE, 5, ended("c0")),
        (NOTIFICATION, 7, Ev("m0")),
    ]
    for arrival, order in ((a, records), (b, records[::-1])):
        for category, t, ev in order:
            arrival.arrive(category, 0, t * S, ev, "n", clock=0)
    assert [i[3] for i in a.take_all()] == [i[3] for i in b.take_all()] == ["c0", "m0", "c", "m", "d"]


def test_a_silent_topic_stops_holding_the_watermark_once_idle():
    a = new()
    a.arrive(CHANGE, 0, 0, ended("c"), "n", clock=0)
    a.arrive(NOTIFICATION, 0, 500 * S, Ev("m"), "n", clock=0)
    assert a.watermark is None  # no delivery yet
    a.arrive(NOTIFICATION, 0, 600 * S, Ev("m2"), "n", clock=IDLE - 1)
    assert a.watermark is None
    a.tick(IDLE)  # the delivery topic (and the contract topic) idle: the mails' topic alone
    assert a.watermark == 600 * S
    assert [i[3] for i in a.take_ready()] == ["c", "m"]
    # a source back from idleness holds the minimum again, but never pulls the watermark back
    assert a.arrive(DELIVERY, 0, 100 * S, Ev("d"), "n", clock=IDLE + 1) == LATE
    assert a.watermark == 600 * S
    assert a.arrive(DELIVERY, 0, 590 * S, Ev("d2"), "n", clock=IDLE + 2) == ON_TIME
    a.arrive(NOTIFICATION, 0, 900 * S, Ev("m3"), "n", clock=IDLE + 3)
    assert a.watermark == 600 * S  # held by the deliveries at 590 s


def test_when_every_topic_is_idle_the_watermark_moves_with_the_clock():
    a = new()
    for c, ev in ((CHANGE, ended("c")), (NOTIFICATION, Ev("m")), (DELIVERY, Ev("d"))):
        a.arrive(c, 0, 1000 * S, ev, "n", clock=0)
    assert a.watermark == 1000 * S and a.take_ready() == []
    a.tick(IDLE)
    assert a.watermark == 1000 * S + IDLE  # the newest event time, and the clock since
    assert len(a.take_ready()) == 3


def test_a_paused_topic_is_never_idle():
    a = new()
    a.arrive(CHANGE, 0, 100 * S, ended("c"), "n", clock=0)
    a.arrive(NOTIFICATION, 0, 9000 * S, Ev("m"), "n", clock=0)
    a.arrive(DELIVERY, 0, 9000 * S, Ev("d"), "n", clock=0)
    assert a.watermark == 100 * S
    assert [(s.category, s.partition) for s in a.ahead()] == [(NOTIFICATION, 0), (DELIVERY, 0)]
    a.set_paused(NOTIFICATION, 0, True)
    a.tick(10 * IDLE)  # the contract topic idle; the paused mails' topic still counts
    assert a.watermark == 9000 * S
    a.set_paused(NOTIFICATION, 0, False)
    a.tick(20 * IDLE)
    assert a.watermark > 9000 * S  # all idle now


def test_pending_duplicates_are_dropped_and_counted():
    a = new()
    assert a.arrive(NOTIFICATION, 0, 0, Ev("m"), "n", clock=0) == ON_TIME
    assert a.arrive(NOTIFICATION, 0, 0, Ev("m"), "n", clock=0) == DUPLICATE
    assert a.arrive(NOTIFICATION, 0, 0, Ev("m"), "other", clock=0) == ON_TIME  # another number's id
    assert a.duplicates == [0, 1, 0] and a.arrived == [0, 2, 0]


def test_forget_drops_a_partitions_sources_and_buffered_records():
    a = new()
    a.expect(1, 0)
    a.arrive(NOTIFICATION, 0, 0, Ev("m0"), "n", clock=0, token="t0")
    a.arrive(NOTIFICATION, 1, 0, Ev("m1"), "k", clock=0, token="t1")
    assert a.forget([1]) == ["t1"]
    assert {s.partition for s in a.sources()} == {0} and [i[7] for i in a.take_all()] == ["t0"]


def test_snapshot_and_restore_carry_the_state_over():
    a = new()
    for c, ev in ((CHANGE, ended("c")), (NOTIFICATION, Ev("m")), (DELIVERY, Ev("d"))):
        a.arrive(c, 3, 1000 * S, ev, "n", clock=5)
    a.take_all()
    b = new()
    b.restore(a.snapshot())
    assert b.snapshot() == a.snapshot() and b.watermark == 1000 * S


def test_an_engine_judges_mails_after_the_changes_and_bounces_after_the_mails_of_a_topic_that_ran_ahead():
    """The worker's failure on live pipelines, in the engine: the contract changes of days land
    first (one producer batch), then the deliveries, then the mails."""
    day = 86_400
    changes = [
        change("contract_started", 0, id="s", email="me@x.de"),
        change("email_changed", 2 * day, id="e", email="new@x.de"),
    ]
    mails = [mail("me@x.de", day, id="n1", message_id="m1"), mail("new@x.de", 3 * day, id="n2", message_id="m2")]
    bounces = [
        delivery("m1", "bounced", day + 60, id="b1", bounce_type="hard", recipient="me@x.de"),
        delivery("m2", "bounced", 3 * day + 60, id="b2", bounce_type="hard", recipient="new@x.de"),
    ]
    engine = new_engine()
    feed(engine, [FILLER_START, *changes, *bounces, *mails])
    advance(engine, 4 * day)
    alerts = engine.drain()[0]
    assert kinds_of(alerts) == [("current_address_bouncing", "b1"), ("current_address_bouncing", "b2")]
    assert sum(engine.stats.late.values()) == 0


def test_a_topic_behind_its_broker_is_never_idle():
    """A worker catching up: records of a topic-partition wait on the broker (or in the client),
    so its silence is the reader's. It holds the watermark however long it takes."""
    a = new()
    a.arrive(CHANGE, 0, 100 * S, ended("c"), "n", clock=0)
    a.arrive(NOTIFICATION, 0, 9000 * S, Ev("m"), "n", clock=0)
    a.arrive(DELIVERY, 0, 9000 * S, Ev("d"), "n", clock=0)
    a.set_behind(CHANGE, 0, True)
    a.tick(10 * IDLE)
    assert a.watermark == 100 * S
    a.set_behind(CHANGE, 0, False)  # caught up: silent from now on, idle after idle_flush
    a.tick(11 * IDLE - 1)
    assert a.watermark == 100 * S
    a.tick(11 * IDLE)
    assert a.watermark >= 9000 * S  # (all idle then: on with the clock)


def test_a_partition_first_seen_late_holds_the_watermark_from_then_and_is_not_late():
    a = new()
    for c, ev in ((CHANGE, ended("c")), (NOTIFICATION, Ev("m")), (DELIVERY, Ev("d"))):
        a.arrive(c, 0, 9000 * S, ev, "n", clock=0)
    assert a.watermark == 9000 * S
    assert a.arrive(NOTIFICATION, 1, 10 * S, Ev("m1"), "k", clock=0) == ON_TIME  # months behind
    assert a.watermark is None  # partition 1's other two topics hold it now
    a.arrive(CHANGE, 1, 5 * S, ended("c1"), "k", clock=0)
    a.arrive(DELIVERY, 1, 20 * S, Ev("d1"), "k", clock=0)
    assert a.watermark == 5 * S


def test_partitions_given_up_take_their_sources_and_records_with_them():
    a = new()
    a.expect(0, 0)
    a.expect(1, 0)
    for p in (0, 1):
        for c, ev in ((CHANGE, ended(f"c{p}")), (NOTIFICATION, Ev(f"m{p}")), (DELIVERY, Ev(f"d{p}"))):
            a.arrive(c, p, (1000 + p) * S, ev, "n", clock=0, token=f"{ev.event_id}")
    assert a.watermark == 1000 * S
    assert sorted(a.forget([0])) == ["c0", "d0", "m0"]
    assert a.watermark == 1001 * S
    assert a.forget([1]) and a.pending_count() == 0 and a.sources() == []
    assert a.watermark == 1001 * S  # no source left to move it


def test_a_watermark_that_stops_moving_moves_on_with_the_clock():
    """Issue: 10,000 records of one event_time over 100 s: none released, acks held."""
    a = new()
    for i in range(50):  # all three topics keep delivering, all at one event time, for 50 s
        for c, ev in ((CHANGE, ended(f"c{i}")), (NOTIFICATION, Ev(f"m{i}")), (DELIVERY, Ev(f"d{i}"))):
            a.arrive(c, 0, 500 * S, ev, "n", clock=i * S)
    assert a.take_ready() == [] and a.watermark == 500 * S  # stopped at the first arrival...
    a.arrive(NOTIFICATION, 0, 500 * S, Ev("one-more"), "n", clock=IDLE + GRACE + 1)
    assert a.watermark > 500 * S + GRACE  # ...and moved on with the clock after idle_flush
    assert len(a.take_ready()) == 151


def test_the_buffer_has_a_bound_and_counts_what_it_releases_early():
    a = Arrival(GRACE, IDLE, 7 * 86_400 * S, max_buffered=10)
    for i in range(15):
        a.arrive(NOTIFICATION, 0, i * S, Ev(f"m{i}"), "n", clock=0)
    assert a.due()
    assert [item[3] for item in a.take_ready()] == [f"m{i}" for i in range(5)]  # the earliest
    assert a.released_early == 5 and a.pending_count() == 10 and not a.due()
