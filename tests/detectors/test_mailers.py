"""The mailers index (detectors.mailers) and Engine.relinked over it, one engine and partitioned."""

from __future__ import annotations

import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detectors.capture import Envelope
from detectors.engine import Engine
from detectors.mailers import REFRESH_US, MailerDict, MailerIndex
from detectors.settings import Settings
from detectors.state import AddressIndex
from detectors.stores import PartitionedDict
from tests.detectors.test_corrections import GRACE, HORIZON, _arrivals, final
from tests.detectors.test_properties import NUMBERS, histories
from tests.factories import Rec

H = REFRESH_US  # the unit of these tests: a refresh span (detectors.mailers)
A, B = b"a" * 12, b"b" * 12


def test_a_known_number_is_written_once_per_refresh_span():
    writes: list[tuple[bytes, int, dict[str, int]]] = []

    class Counting(MailerDict):
        def put_in(self, addr: bytes, partition: int, entry: dict[str, int]) -> None:
            writes.append((addr, partition, dict(entry)))
            super().put_in(addr, partition, entry)

    index = MailerIndex(Counting())
    step = REFRESH_US // 12
    for k in range(24):  # two refresh spans of mails to one address
        index.note(A, "r1", k * step, 0)
    assert [w[2] for w in writes] == [{"r1": 0}, {"r1": 13 * step}]
    index.note(A, "r1", 10, 0)  # a late mail, older than the time known: nothing to write
    index.note(A, "r2", 10, 0)  # a new number: written
    index.note(A, "r3", 10, 1)  # another partition: an entry of its own
    assert len(writes) == 4
    assert index.candidates(A, 0, [0]) == [("r1", 0, 13 * step), ("r2", 0, 10)]
    assert index.candidates(A, 0, [0, 1]) == [("r1", 0, 13 * step), ("r2", 0, 10), ("r3", 1, 10)]
    assert index.candidates(B, 0, [0, 1]) == []


def test_a_candidate_s_time_may_be_a_refresh_span_older_than_its_last_mail():
    index = MailerIndex()
    index.note(A, "r1", 0, 0)
    index.note(A, "r1", REFRESH_US, 0)  # not written: within the refresh span of the time known
    assert index.candidates(A, REFRESH_US, [0]) == [("r1", 0, 0)]  # (the time known: the first mail's)
    assert index.candidates(A, REFRESH_US + 1, [0]) == []


def test_a_rewrite_drops_the_numbers_before_the_floor_and_a_sweep_expires_offline():
    store = MailerDict()
    index = MailerIndex(store)
    index.note(A, "old", 0, 0)
    index.note(B, "old", 0, 0)
    index.note(A, "kept", 50 * H, 0)
    index.expire(10 * H)  # offline: the dict is expired whole
    assert store.entries == {(A, 0): {"kept": 50 * H}}
    index.note(A, "old", 0, 0)
    store.entries[(A, 0)]["gone"] = 0  # (as if written before the floor moved)
    index.floor = 60 * H
    index.note(A, "new", 60 * H, 0)  # rewritten: drops what is before the floor
    assert store.entries[(A, 0)] == {"new": 60 * H}


MAILS = st.lists(
    st.tuples(
        st.sampled_from(["r1", "r2", "r3"]),
        st.sampled_from([A, B]),
        st.integers(0, 40).map(lambda h: h * H // 4),
        st.sampled_from([0, 1]),
        st.one_of(st.none(), st.integers(0, 40).map(lambda h: h * H // 4)),  # a sweep's floor, sometimes
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(MAILS, st.integers(0, 40).map(lambda h: h * H // 4))
def test_the_index_never_misses_a_number_that_mailed_the_address_at_or_after_t(mails, t):
    """For every t at or after the floor (no Relink reaches back before a sweep's past horizon),
    each number with a mail to the address at or after t is a candidate; in any mail order."""
    index = MailerIndex()
    mailed: list[tuple[str, bytes, int, int]] = []
    for ref, addr, when, partition, floor in mails:
        if floor is not None and floor > index.floor:
            index.expire(floor)
            mailed = [m for m in mailed if m[2] >= floor]  # what a sweep at that horizon drops
        index.note(addr, ref, when, partition)
        mailed.append((ref, addr, when, partition))
    if t < index.floor:
        return
    for addr in (A, B):
        want = {(ref, p) for ref, a, when, p in mailed if a == addr and when >= t}
        assert want <= {(ref, p) for ref, p, _ in index.candidates(addr, t, [0, 1])}


# ------------------------------------------------------------- partitioned engines


Partitioned = PartitionedDict  # (one engine's partitions: a worker's numbers table)


def _engine(s: Settings, store: Partitioned | None = None, links: dict | None = None) -> Engine:
    counter = itertools.count()
    return Engine(
        s,
        new_id=lambda: f"alert-{next(counter)}",
        numbers=store,
        index=AddressIndex(links) if links is not None else None,
    )


class _Scan(MailerIndex):
    """Every number of the partitions is a candidate (the oracle)."""

    __slots__ = ("numbers",)

    def __init__(self, numbers: Partitioned) -> None:
        super().__init__()
        self.numbers = numbers

    def candidates(self, addr: bytes, t: int, partitions) -> list[tuple[str, int, int]]:  # type: ignore[no-untyped-def]
        """(the time of the last mail: as the index noted it; where it noted none, a time before any)"""
        entries = {p: self.store.get_in(addr, p) or {} for p in partitions}
        never = -(1 << 62)
        return sorted((ref, p, entries[p].get(ref, never)) for p in partitions for ref in self.numbers.parts.get(p, {}))


def _feed_workers(
    records: list[Rec], s: Settings, scan: bool = False, on_time: bool = True, engines_out: list | None = None
) -> tuple[list, int]:
    """Each number's records in partition NUMBERS.index(msisdn), each partition in an engine of its
    own (two workers), the address links shared (the global table), every Relink broadcast to
    every partition's engine after each record (the worker's relinks topic). `scan`: the
    candidates of a Relink are every number of the partition (the scan of every number's past
    that relinked did before the index: the oracle). `on_time`: the engines relink on-time
    changes too, as the worker's do (Engine.relink_on_time)."""
    links: dict = {}
    engines = [_engine(s, Partitioned(), links) for _ in NUMBERS]
    if engines_out is not None:  # (the caller reads their stats)
        engines_out.extend(engines)
    for e in engines:
        e.relink_on_time = on_time
    if scan:
        for e in engines:
            assert isinstance(e.numbers, Partitioned)
            e.mailers = _Scan(e.numbers)
    alerts: list = []
    relinked = 0

    def route() -> None:
        nonlocal relinked
        for e in engines:
            for event in e.take_relinks():
                for p, target in enumerate(engines):
                    relinked += target.relinked(event, p)
        for e in engines:
            alerts.extend(e.drain()[0])

    for i, r in enumerate(records):
        p = NUMBERS.index(r.event["msisdn"])
        engines[p].process(r.topic, p, i, r.key, r.value, 0)
        route()
    for e in engines:
        e.flush(0)
    route()
    return alerts, relinked


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories(), st.data())
def test_relinks_broadcast_between_partitioned_engines_re_judge_what_a_scan_of_every_number_does(records, data):
    """The index in place of the scan changes nothing: the same numbers re-judged, the same alerts
    (test_two_workers_watermarks_apart_give_the_in_order_final_set: and that is the in-order set)."""
    s = Settings(correction_horizon_s=HORIZON)
    arrivals = _arrivals(records, data, HORIZON - GRACE)
    got, relinked = _feed_workers(arrivals, s)
    want, scanned = _feed_workers(arrivals, s, scan=True)
    assert (final(got), relinked) == (final(want), scanned)
    assert [(a.kind, a.trigger_event_id, a.status) for a in got] == [
        (a.kind, a.trigger_event_id, a.status) for a in want
    ]


def _moving(msisdn: str, t: float, k: int, email: str, contract: str) -> list[Rec]:
    """Records of all three input topics of the number's partition: its watermark moves to t."""
    from tests.factories import change, delivery, mail

    return [
        change("email_verified", t, id=f"v{msisdn[-1]}{k}", msisdn=msisdn, contract_id=contract, email=email),
        mail(email, t, id=f"m{msisdn[-1]}{k}", msisdn=msisdn, message_id=f"mid{msisdn[-1]}{k}"),
        delivery(f"mid{msisdn[-1]}{k}", "delivered", t, id=f"d{msisdn[-1]}{k}", msisdn=msisdn),
    ]


def test_relinked_re_judges_only_the_numbers_of_its_partition():
    from tests.factories import change, mail

    day = 86_400
    a, b = NUMBERS

    records = [
        change("contract_started", 0, id="sa", msisdn=a, email="a@x.de"),
        change("contract_started", 0, id="sb", msisdn=b, contract_id="K-2", customer_id="C-2", email="b@x.de"),
        mail("shared@x.de", day, id="n", msisdn=a),
        *(r for k in (1, 2) for r in _moving(a, day + 3600 * k, k, "a@x.de", "K-1")),
        *(r for k in (1, 2) for r in _moving(b, day + 3600 * k, k, "b@x.de", "K-2")),
        change("email_changed", day - 600, id="late", msisdn=b, contract_id="K-2", email="shared@x.de"),
    ]  # fmt: skip
    got, relinked = _feed_workers(records, Settings())
    assert relinked == 1  # number a's mail, in partition 0; partition 1 has no other number
    assert [(x.kind, x.trigger_event_id, x.status, x.late) for x in got if x.trigger_event_id == "n"] == [
        ("recipient_unlinked", "n", "firing", False),
        ("recipient_unlinked", "n", "retracted", True),
        ("recipient_other_customer", "n", "firing", True),
    ]


def _in_order(records: list[Rec], s: Settings) -> dict[str, str]:
    """One engine's final set of the records in event-time order (what workers must give)."""
    one = _engine(s)
    for i, r in enumerate(sorted(records, key=_t)):
        one.process(r.topic, 0, i, r.key, r.value, 0)
    one.flush(0)
    return final(one.drain()[0])


def _cross_partition_stories() -> tuple[list[Envelope], Settings, dict[str, str]]:
    """The stories of tests.pipelines.add_cross_partition_links on two partitions: their envelopes,
    the settings they are judged with, and one engine's final set in order."""
    from tests.pipelines import Shape, add_cross_partition_links, build_pipeline

    pipeline = build_pipeline(Shape(seed=104, numbers=240, days=3.0, partitions=2, p_family=0.5))
    add_cross_partition_links(pipeline)
    envelopes = pipeline.envelopes()
    s = Settings(grace_s=10, idle_flush_s=15)
    one = _engine(s)
    for e in envelopes:
        one.process(e.topic, e.partition, e.offset, e.key, e.payload, 0)
    one.flush(0)
    return envelopes, s, final(one.drain()[0])


def test_the_live_test_s_cross_partition_stories_need_the_relinks_routed():
    """The premise of test_live's contracts-days-behind run, without a broker: two partitioned
    engines, the contract changes after everything else (their topic idle meanwhile), in either
    partition's order: with the Relinks broadcast the final set is the in-order one; dropped, the
    stories' mails keep recipient_unlinked."""
    from detectors.engine import Engine as _Engine
    from tests.pipelines import CHANGES

    envelopes, s, in_order = _cross_partition_stories()
    assert sorted(in_order.values()).count("recipient_other_customer") >= 2

    def run(order: list, route: bool) -> dict[str, str]:
        links: dict = {}
        engines: list[_Engine] = [_engine(s, Partitioned(), links) for _ in range(2)]
        alerts: list = []
        clock = 0
        for env in order:
            if env.topic == CHANGES and clock == 0:
                clock = 60_000_000  # its topic was silent past idle_flush: every change is late
                for e in engines:
                    e.tick(0, clock)
            engines[env.partition].process(
                env.topic, env.partition, env.offset, env.key, env.payload, 0, None, None, clock
            )
            for e in engines:
                for event in e.take_relinks():
                    for p, other in enumerate(engines):
                        if route:
                            other.relinked(event, p)
        for e in engines:
            e.flush(0)
            alerts.extend(e.drain()[0])
        return final(alerts)

    others = [e for e in envelopes if e.topic != CHANGES]
    changes = [e for e in envelopes if e.topic == CHANGES]
    for first in (0, 1):
        order = others + sorted(changes, key=lambda e: e.partition != first)
        assert run(order, route=True) == in_order
        dropped = run(order, route=False)
        assert dropped != in_order
        assert {k: v for k, v in dropped.items() if k not in in_order} and all(
            v == "recipient_unlinked" for k, v in dropped.items() if k not in in_order
        )


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories(), st.data())
def test_two_workers_watermarks_apart_give_the_in_order_final_set(records, data):
    """Two partitioned engines, each with its own watermark (one partition each: a record of one
    moves only its own), in any arrival order within the horizon: with on-time changes relinked
    too, the final set is that of one engine in event-time order. Without, a change on time in its
    own engine but behind a mail the other judged already leaves that mail's verdict as it was:
    Hypothesis finds such an order (test_a_change_on_time_in_a_lagging_worker_re_judges...)."""
    s = Settings(correction_horizon_s=HORIZON)
    in_order = _in_order(records, s)
    engines: list[Engine] = []
    got, _ = _feed_workers(_arrivals(records, data, HORIZON - GRACE), s, engines_out=engines)
    assert final(got) == in_order
    assert [e.stats.relinks_out_of_reach for e in engines] == [0, 0]  # (every Relink within reach)
    # nothing raised twice, nothing retracted that was not raised
    live: set[str] = set()
    for a in got:
        assert (a.dedup_key in live) == (a.status == "retracted")
        (live.discard if a.status == "retracted" else live.add)(a.dedup_key)


def _lagging_story() -> list[Rec]:
    """Number a (partition 0, the leading worker) mails shared@x.de on day 1 and runs on to day 2;
    number b (partition 1, the lagging worker: its backlog comes after) linked that address on day
    1 less ten minutes: on time in b's worker, older than a's mail, which a's worker judged
    already (recipient_unlinked; in event-time order it is recipient_other_customer)."""
    from tests.factories import change, mail

    day = 86_400
    a, b = NUMBERS
    return [
        change("contract_started", 0, id="sa", msisdn=a, email="a@x.de"),
        mail("shared@x.de", day, id="n", msisdn=a),
        change("email_verified", 2 * day, id="va", msisdn=a, contract_id="K-1", email="a@x.de"),
        mail("a@x.de", 2 * day, id="na", msisdn=a, message_id="mid-na"),
        # b's backlog, read afterwards by its own worker (its watermark: these records' times)
        change("contract_started", 0, id="sb", msisdn=b, contract_id="K-2", customer_id="C-2", email="b@x.de"),
        change("email_changed", day - 600, id="link", msisdn=b, contract_id="K-2", email="shared@x.de"),
        mail("shared@x.de", day + 3600, id="nb", msisdn=b, message_id="mid-nb"),
    ]


def _t(rec: Rec) -> float:
    from detectors.timefmt import parse_rfc3339

    return parse_rfc3339(rec.event["event_time"]) / 1e6


def test_a_change_on_time_in_a_lagging_worker_re_judges_the_leading_worker_s_mails():
    records = _lagging_story()
    in_order = _in_order(records, Settings())
    assert sorted(in_order.values()) == ["recipient_other_customer"]
    got, relinked = _feed_workers(records, Settings())
    assert final(got) == in_order
    assert relinked == 1  # a's mail; b's own mail is its own worker's (the origin is excluded)
    assert [(x.kind, x.trigger_event_id, x.status, x.late, x.retracted_by) for x in got] == [
        ("recipient_unlinked", "n", "firing", False, None),
        ("recipient_unlinked", "n", "retracted", True, ["link"]),
        ("recipient_other_customer", "n", "firing", True, None),
    ]
    # without on-time Relinks (before): the leading worker's verdict stands
    before, _ = _feed_workers(records, Settings(), on_time=False)
    assert sorted(final(before).values()) == ["recipient_unlinked"]


def test_an_on_time_relink_whose_change_the_receiver_saw_already_changes_nothing():
    """The receiving worker judged its mails after the change (in the index then): re-judging them
    raises and retracts nothing, and the number's fired entries stay as they were."""
    from tests.factories import change, mail

    day = 86_400
    a, b = NUMBERS
    links: dict = {}
    lead, lag = (_engine(Settings(), Partitioned(), links) for _ in NUMBERS)
    for e in (lead, lag):
        e.relink_on_time = True
    for i, r in enumerate(
        [
            change("contract_started", 0, id="sb", msisdn=b, contract_id="K-2", customer_id="C-2", email="b@x.de"),
            change("email_changed", day - 600, id="link", msisdn=b, contract_id="K-2", email="shared@x.de"),
        ]
    ):
        lag.process(r.topic, 1, i, r.key, r.value, 0)
    lag.flush(0)
    events = lag.take_relinks()
    assert [e.by for e in events] == [["sb"], ["link"]]  # on time, each change that links an address
    for i, r in enumerate(
        [
            change("contract_started", 0, id="sa", msisdn=a, email="a@x.de"),
            mail("shared@x.de", day, id="n", msisdn=a),
            change("email_verified", 2 * day, id="va", msisdn=a, contract_id="K-1", email="a@x.de"),
        ]
    ):
        lead.process(r.topic, 0, i, r.key, r.value, 0)
    lead.flush(0)  # (judged after the change: the view, shared here, holds its link)
    raised = lead.drain()[0]
    assert [(x.kind, x.trigger_event_id) for x in raised] == [("recipient_other_customer", "n")]
    assert isinstance(lead.numbers, Partitioned)
    (state,) = lead.numbers.parts[0].values()  # number a's
    fired = list(state.fired)
    assert sum(lead.relinked(e, 0) for e in events) == 1  # a's mail is a candidate, re-judged
    assert lead.drain()[0] == []  # and nothing changes
    assert list(state.fired) == fired


def test_the_cross_partition_stories_with_one_worker_a_backlog_behind_give_the_in_order_set():
    """The premise of test_live's worker-behind run, without a broker: two partitioned engines, one
    reads all of its partition after the other read all of its own (a worker restarted on a
    backlog), so every record is on time in its own engine. With on-time changes relinked, the
    final set is the in-order one whichever is behind; without, the stories' mails in the partition
    ahead keep recipient_unlinked."""
    envelopes, s, in_order = _cross_partition_stories()

    def run(ahead: int, on_time: bool) -> tuple[dict[str, str], int]:
        links: dict = {}
        engines = [_engine(s, Partitioned(), links) for _ in range(2)]
        alerts: list = []
        for e in engines:
            e.relink_on_time = on_time
        order = sorted(envelopes, key=lambda env: env.partition != ahead)
        for env in order:
            engines[env.partition].process(env.topic, env.partition, env.offset, env.key, env.payload, 0)
            for e in engines:
                for event in e.take_relinks():
                    for p, other in enumerate(engines):
                        other.relinked(event, p)
        for e in engines:
            e.flush(0)
            for event in e.take_relinks():
                for p, other in enumerate(engines):
                    other.relinked(event, p)
        for e in engines:
            alerts.extend(e.drain()[0])
        assert sum(sum(e.stats.late.values()) for e in engines) == 0  # on time, each in its own engine
        return final(alerts), sum(e.stats.corrections["relink"] for e in engines)

    for ahead in (0, 1):
        got, relinked = run(ahead, on_time=True)
        assert got == in_order and relinked >= 1
        before, _ = run(ahead, on_time=False)
        assert before != in_order
        assert all(v == "recipient_unlinked" for k, v in before.items() if k not in in_order)


def test_a_relink_older_than_the_receiver_s_horizon_leaves_its_alerts_before_the_horizon_as_raised():
    """The receiving number is more than the correction horizon ahead of the Relink (its worker far
    ahead of a backlog): its past before the horizon is gone (Engine._remember keeps the horizon
    and what verdicts within it read), its alerts raised then are not judged again, and stay: a
    re-judging does not retract an alert whose mail it no longer has (found by the two-worker
    handover broker run: a correct recipient_previous_holder retracted by an on-time Relink)."""
    from tests.factories import change, mail

    day = 86_400
    a, b = NUMBERS
    records = [
        change("contract_started", 0, id="sa", msisdn=a, email="a@x.de"),
        mail("stray@x.de", day, id="n", msisdn=a),  # recipient_unlinked, in any order
        *(mail("a@x.de", k * day, id=f"na{k}", msisdn=a, message_id=f"mid-na{k}") for k in range(2, 21, 2)),
        # b's backlog, on time in its own worker: it links a's address on day 1/2, older than all of a's mails
        change("contract_started", 0, id="sb", msisdn=b, contract_id="K-2", customer_id="C-2", email="b@x.de"),
        change("email_changed", day // 2, id="link", msisdn=b, contract_id="K-2", email="a@x.de"),
    ]
    in_order = _in_order(records, Settings())
    assert sorted(in_order.values()) == ["recipient_unlinked"]
    engines: list[Engine] = []
    got, relinked = _feed_workers(records, Settings(), engines_out=engines)
    assert relinked == 1  # a mailed a@x.de after the link: a candidate, re-judged within its horizon
    # a's mails to a@x.de from day 2 to 12 are before its horizon (day 20 less 7): counted, once
    assert [e.stats.relinks_out_of_reach for e in engines] == [1, 0]
    assert final(got) == in_order
    assert [(x.kind, x.trigger_event_id, x.status) for x in got] == [("recipient_unlinked", "n", "firing")]


def test_a_late_relink_older_than_the_receiver_s_horizon_leaves_its_alerts_before_the_horizon_as_raised():
    """The receiving number is more than the correction horizon ahead of a Relink (its worker far
    ahead of the origin's, whose change is late only in its own partition): the receiver's past
    before its horizon is gone (Engine._remember keeps the horizon and what verdicts within it
    read), so its alerts raised then are not judged again, and stay. Before, the re-judging started
    at the Relink's time and retracted an alert whose mail it no longer had (a correct
    recipient_previous_holder, in a two-worker broker run)."""
    from tests.factories import change, mail

    day = 86_400
    a, b = NUMBERS

    records = [
        change("contract_started", 0, id="sa", msisdn=a, email="a@x.de"),
        mail("stray@x.de", day, id="n", msisdn=a),  # recipient_unlinked, in any order
        *(r for k in range(2, 21, 2) for r in _moving(a, k * day, k, "a@x.de", "K-1")),  # a: 20 days on
        change("contract_started", 0, id="sb", msisdn=b, contract_id="K-2", customer_id="C-2", email="b@x.de"),
        *_moving(b, day, 1, "b@x.de", "K-2"),
        # late in b's partition (half a day behind its watermark), within the horizon: a Relink of
        # a's own address, older than everything of a's past
        change("email_changed", day // 2, id="link", msisdn=b, contract_id="K-2", email="a@x.de"),
    ]  # fmt: skip
    assert sorted(_in_order(records, Settings()).values()) == ["recipient_unlinked"]
    got, relinked = _feed_workers(records, Settings())
    assert relinked == 1  # a mailed a@x.de after the link: a candidate, re-judged within its horizon
    assert [(x.kind, x.trigger_event_id, x.status) for x in got] == [("recipient_unlinked", "n", "firing")]
