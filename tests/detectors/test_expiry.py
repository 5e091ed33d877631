"""Expiry: sweeps drop only what no record on time can use; history retention is a rule, not a race."""

from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detectors import kinds
from detectors.arrival import DELIVERY, NOTIFICATION, Arrival
from detectors.codec import encode_number
from detectors.engine import Engine, _links
from detectors.expiry import (
    CHANGES_BYTES,
    PARTS,
    PAST_BYTES,
    SEEN_BYTES,
    SENT_BYTES,
    STATE_MAX_BYTES,
    Horizons,
    _trim_changes,
    cap,
    expire,
    history_cut,
)
from detectors.holdings import TYPE_CODES, Change, derive
from detectors.settings import Settings
from detectors.state import Fired, Mark, NumberState, Past, Sent
from detectors.timefmt import parse_rfc3339, rfc3339
from tests.detectors.test_properties import histories
from tests.factories import T0, Rec, change, comparable, delivery, feed, kinds_of, mail, new_engine

DAY = 86_400.0
US = 1_000_000


def _c(t: int, kind: str, contract: str = "K-1", customer: str | None = None) -> Change:
    return Change(t, TYPE_CODES[kind], f"e{t}{kind}", contract, customer, None, None)


@pytest.mark.parametrize(
    ("log", "horizon", "cut"),
    [
        pytest.param([_c(1, "contract_started", customer="C-1"), _c(5, "contract_ended")], 6, 2, id="ended: all"),
        pytest.param([_c(1, "contract_started", customer="C-1"), _c(5, "contract_ended")], 5, 0, id="ended at horizon"),
        pytest.param([_c(1, "contract_started", customer="C-1")], 99, 0, id="open: nothing"),
        pytest.param(
            [_c(1, "contract_started", customer="C-1"), _c(3, "holder_changed", customer="C-2"), _c(5, "ported_out")],
            9,
            3,
            id="holder change then port out",
        ),
        pytest.param(
            [_c(1, "contract_started", customer="C-1"), _c(3, "holder_changed", customer="C-2")],
            9,
            0,
            id="holder change keeps it open",
        ),
        pytest.param(
            [
                _c(1, "contract_started", customer="C-1"),
                _c(5, "contract_ended"),
                _c(7, "contract_started", "K-2", "C-2"),
                _c(8, "email_changed", "K-2"),
            ],
            9,
            2,
            id="up to the gap before an open one",
        ),
        pytest.param(
            [_c(1, "contract_started", customer="C-1"), _c(4, "contract_ended", "K-9"), _c(5, "ported_out")],
            9,
            3,
            id="an end for another contract does not cut",
        ),
        pytest.param(
            [
                _c(1, "contract_started", customer="C-1"),
                _c(2, "contract_started", "K-2", "C-2"),
                _c(6, "contract_ended", "K-2"),
            ],
            9,
            3,
            id="superseded, then ended",
        ),
    ],
)
def test_history_cut_only_at_a_gap_of_holdings_ended_before_the_horizon(log, horizon, cut):
    assert history_cut(log, horizon) == cut


_KINDS = ["contract_started", "ported_in", "contract_ended", "ported_out", "holder_changed", "email_changed"]


@st.composite
def change_logs(draw) -> list[Change]:
    n = draw(st.integers(0, 14))
    log = [
        Change(
            draw(st.integers(0, 60)),
            TYPE_CODES[draw(st.sampled_from(_KINDS))],
            f"e{i}",
            draw(st.sampled_from(["K-1", "K-2"])),
            draw(st.sampled_from(["C-1", "C-2"])),
            None,
            draw(st.sampled_from([b"a", b"b", None])),
        )
        for i in range(n)
    ]
    return sorted(log, key=Change.sort_key)


@settings(max_examples=300, deadline=None)
@given(change_logs(), st.integers(0, 70))
def test_the_rest_of_a_cut_log_derives_the_same_later_holdings(log, horizon):
    cut = history_cut(log, horizon)
    whole, rest = derive(log), derive(log[cut:])
    dropped = whole[: len(whole) - len(rest)]
    assert whole[len(dropped) :] == rest
    assert all(h.end is not None and h.end < horizon for h in dropped)


def test_expire_drops_each_part_at_its_own_horizon():
    h = Horizons(seen=100, sent=50, bounces=80, ports=20, history=0, past=40, fired=60, horizon=40)
    state = NumberState(
        past=[
            Past(39, 1, "e0", "m0", "o2", "s", b"a", "a***", "email"),
            Past(40, 1, "e1", "m1", "o2", "s", b"a", "a***", "email"),
        ],
        fired=[Fired(59, 4, "e0"), Fired(60, 4, "e1")],
        sent=[Sent(49, "m1", "e1", True, "x"), Sent(50, "m2", "e2", True, "x")],
        bounces=[Mark(80, "b1"), Mark(81, "b2")],
        bounce_hot=True,
        ports=[Mark(21, "p1")],
        seen=[Mark(99, "e1"), Mark(100, "e2")],
    )
    assert expire(state, h)
    assert [s.message_id for s in state.sent] == ["m2"]
    assert [m.event_id for m in state.bounces] == ["b2"]  # a window (t - w, t] never holds t - w
    assert [m.event_id for m in state.ports] == ["p1"]
    assert [m.event_id for m in state.seen] == ["e2"]
    assert [p.event_id for p in state.past] == ["e1"] and [f.trigger_event_id for f in state.fired] == ["e1"]
    assert state.bounce_hot  # the episode flag belongs to the newest event, not to the marks
    assert not expire(state, h)


def _short(**changes: float) -> Settings:
    """Windows of seconds, so that a history of minutes crosses all of them."""
    base = dict(
        grace_s=30.0,
        dedup_retention_s=60.0,
        delivery_correlation_s=120.0,
        bounce_burst_window_s=90.0,
        port_flapping_window_s=200.0,
        re_port_window_s=300.0,
        history_retention_s=400.0,
    )
    return Settings(**(base | changes))  # type: ignore[arg-type]


def _run_sweeping(records: list[Rec], s: Settings) -> tuple[list, Engine]:
    engine = new_engine(s)
    for i, r in enumerate(records):
        # the arrival clock as offline: the record's timestamp (= event time), so silent topics go idle
        engine.process(r.topic, r.partition, i, r.key, r.value, 0, clock_us=parse_rfc3339(r.event["event_time"]))
        now = engine.sweep_due()
        if now is not None:
            engine.sweep(list(engine.numbers.items()), now)
    engine.flush(0)
    assert sum(engine.stats.late.values()) == 0
    return comparable(engine.drain()[0]), engine


def _spread(records: list[Rec]) -> list[Rec]:
    """The generated history (event times within ~2,000 s) stretched over ~10,000 s, in event-time order."""
    t0 = parse_rfc3339(T0)

    def stretch(r: Rec) -> Rec:
        value = r.event
        value["event_time"] = rfc3339(t0 + 5 * (parse_rfc3339(value["event_time"]) - t0))
        return dataclasses.replace(r, value=json.dumps(value))

    out = [stretch(r) for r in records]
    return sorted(out, key=lambda r: r.event["event_time"])


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories())
def test_sweeping_often_or_never_gives_the_same_alerts(records):
    records = _spread(records)
    # each record resent right away: the dedup memory is exercised across sweeps too
    records = [r for rec in records for r in (rec, rec)]
    often, swept = _run_sweeping(records, _short(expiry_sweep_interval_s=1.0))
    never, kept = _run_sweeping(records, _short(expiry_sweep_interval_s=1e9))
    assert often == never
    for ref, state in swept.numbers.items():  # a swept state is never bigger than an unswept one
        assert len(state.seen) <= len(kept.numbers[ref].seen)


def test_an_address_linked_through_a_holding_ended_before_the_retention_is_forgotten():
    other = "+4917620000002"
    records = [
        change("contract_started", 0, id="a1", customer_id="C-FRANK", email="frank@web.de"),
        change("contract_ended", 10 * DAY, id="a2"),
        change(
            "contract_started",
            5 * DAY,
            id="b1",
            msisdn=other,
            contract_id="K-B",
            customer_id="C-GRETA",
            email="greta@gmx.de",
        ),
        mail("frank@web.de", 100 * DAY, id="n1", msisdn=other),  # linked 90 days ago: another customer's
        mail("frank@web.de", 1200 * DAY, id="n2", msisdn=other),  # ended 3.3 years ago: forgotten
    ]
    records.sort(key=lambda r: r.event["event_time"])
    for interval in (DAY, 1e9):  # swept daily, or never: the same verdicts
        alerts, engine = _run_sweeping(records, Settings(expiry_sweep_interval_s=interval))
        assert kinds_of(alerts) == [
            (kinds.RECIPIENT_OTHER_CUSTOMER, "n1"),
            (kinds.RECIPIENT_UNLINKED, "n2"),
        ]
    # swept daily: the ended contract's history and its address link are gone from state
    alerts, engine = _run_sweeping(records, Settings(expiry_sweep_interval_s=DAY))
    ref = engine.pseudonymiser.msisdn_ref("+4917612345678")
    assert engine.numbers[ref].changes == []
    assert engine.index.get(engine.pseudonymiser.address_ref("frank@web.de")) == []


def test_a_bounce_after_the_correlation_span_is_not_matched_to_its_mail():
    records = [
        change("contract_started", 0, id="c1", email="me@x.de"),
        mail("me@x.de", DAY, id="n1", message_id="m1"),
        delivery("m1", "bounced", 8 * DAY + 1, id="d1", bounce_type="hard"),  # 7 days and 1 s after
        mail("me@x.de", 9 * DAY, id="n2", message_id="m2"),
        delivery("m2", "bounced", 10 * DAY, id="d2", bounce_type="hard"),
    ]
    alerts, _ = _run_sweeping(records, Settings(expiry_sweep_interval_s=1e9))
    assert kinds_of(alerts) == [(kinds.CURRENT_ADDRESS_BOUNCING, "d2")]


def test_settings_refuse_a_history_retention_shorter_than_the_re_port_window():
    with pytest.raises(ValueError, match="history_retention_s"):
        Settings(history_retention_s=100 * DAY)
    with pytest.raises(ValueError, match="expiry_sweep_interval_s"):
        Settings(expiry_sweep_interval_s=0)
    assert Settings().history_retention_s >= Settings().re_port_window_s


class _Ev:
    def __init__(self, event_id: str) -> None:
        self.event_id = event_id


def test_a_sweep_is_due_once_per_interval_of_the_watermark():
    a = Arrival(grace_us=10 * US, idle_us=1_000 * US, sweep_interval_us=100 * US)
    assert a.sweep_due() is None  # no watermark yet
    t0 = 1_000 * US
    a.arrive(NOTIFICATION, 0, t0 + 500 * US, _Ev("m1"), "n", clock=0)
    a.arrive(DELIVERY, 0, t0, _Ev("d1"), "n", clock=0)
    assert a.sweep_due() is None  # a source that never received holds the watermark: none yet
    a.arrive(0, 0, t0, _change("c1"), "n", clock=0)
    assert a.watermark == t0  # the lowest of the three
    assert a.sweep_due() is None  # the first watermark starts the clock
    a.arrive(DELIVERY, 0, t0 + 99 * US, _Ev("d2"), "n", clock=0)
    a.arrive(0, 0, t0 + 99 * US, _change("c2"), "n", clock=0)
    assert a.sweep_due() is None
    a.arrive(DELIVERY, 0, t0 + 100 * US, _Ev("d3"), "n", clock=0)
    a.arrive(0, 0, t0 + 100 * US, _change("c3"), "n", clock=0)
    assert a.sweep_due() == t0 + 90 * US  # the watermark less grace
    assert a.sweep_due() is None


def _change(event_id: str) -> object:
    from detectors.records import ContractEnded

    return ContractEnded(schema_version=1, event_id=event_id, event_time="x", msisdn="+4917612345678", contract_id="K")


# ------------------------------------------------------------------ size caps


def test_a_flood_of_mails_to_one_number_keeps_its_state_within_budget_and_judges_the_newest():
    engine = new_engine()
    flood = [mail("a@x.de", 60 + i, id=f"mail-{i:05d}", message_id=f"m-{i:05d}") for i in range(3000)]
    feed(engine, [change("contract_started", 0, id="s", email="a@x.de"), *flood])
    engine.flush(0)
    (state,) = engine.numbers.values()
    assert len(encode_number(state)) <= SEEN_BYTES + SENT_BYTES + PAST_BYTES + 1024
    capped = engine.stats.capped
    assert capped["seen"] > 2000 and capped["sent"] > 2000 and capped["changes"] == 0
    assert state.seen[-1].event_id == "mail-02999" and state.sent[-1].message_id == "m-02999"
    feed(
        engine,
        [
            flood[-1],  # a duplicate of a recent mail: still dropped
            delivery("m-02990", "bounced", 4000, id="b", bounce_type="hard", recipient="a@x.de"),
            mail("stranger@x.de", 4001, id="last"),
        ],
    )
    engine.flush(0)
    assert engine.stats.duplicates["outbound"] == 1
    assert kinds_of(engine.drain()[0]) == [("current_address_bouncing", "b"), ("recipient_unlinked", "last")]


def test_within_budget_nothing_is_capped():
    records = [
        change("contract_started", 0, id="s", email="a@x.de"),
        *(mail("a@x.de", 60 + i, id=f"m{i}") for i in range(60)),
        *(delivery(f"m-m{i}", "bounced", 200 + i, bounce_type="soft") for i in range(40)),
    ]
    engine = new_engine()
    feed(engine, records)
    engine.flush(0)
    assert engine.stats.capped == dict.fromkeys(PARTS, 0)


@st.composite
def long_change_logs(draw) -> list[Change]:
    n = draw(st.integers(1, 40))
    big = st.sampled_from(["", "x" * 200, "é" * 250])
    log = [
        Change(
            draw(st.integers(0, 60)),
            TYPE_CODES[draw(st.sampled_from([*_KINDS, "email_verified", "contract_ended"]))],
            f"e{i}" + draw(big),
            draw(st.sampled_from(["K-1", "K-2"])) + draw(big),
            draw(st.sampled_from(["C-1", "C-2"])) + draw(big),
            draw(st.sampled_from([None, "o2"])),
            draw(st.sampled_from([b"a", b"b", None])),
        )
        for i in range(n)
    ]
    return sorted(log, key=Change.sort_key)


def _last(log: list[Change]):
    holdings = derive(log)
    if not holdings:
        return None
    h = holdings[-1]
    return (
        h.contract_id,
        h.customer_id,
        h.brand,
        h.start,
        h.start_type,
        h.end,
        h.end_type,
        h.addresses[-1].addr if h.addresses else None,
    )


@settings(max_examples=300, deadline=None)
@given(long_change_logs(), st.sampled_from([1024, 4096, CHANGES_BYTES]))
def test_a_capped_change_log_derives_the_same_last_holding(log, budget):
    state = NumberState(changes=list(log))
    kept = _trim_changes(log, budget)
    if kept is None:
        return
    assert _last(kept) == _last(log)
    assert kept == [c for c in log if c in kept]  # a subsequence, in order
    if budget == CHANGES_BYTES:
        capped: dict[str, int] = {}
        cap(state, capped)
        assert len(encode_number(state)) <= CHANGES_BYTES + 64 and capped["changes"] == len(log) - len(kept)


def test_a_flood_of_changes_keeps_the_log_and_the_index_within_budget():
    engine = new_engine()
    long = "x" * 200
    flips = [
        change("email_changed", 10 + i, id=f"c{i}-{long}", contract_id="K-1", email=f"a{i % 2}@x.de")
        for i in range(400)
    ]
    ports = [
        change(
            "ported_in" if i % 2 == 0 else "ported_out",
            1000 + i,
            id=f"p{i}-{long}",
            contract_id=f"K-{i // 2}-{long}",
            customer_id=f"C-{long}",
            email=f"p{i}@x.de",
        )
        for i in range(401)
    ]
    feed(
        engine,
        [
            change("contract_started", 0, id="s", contract_id="K-1", email="a@x.de"),
            *flips,
            *ports,
            mail("p400@x.de", 2000, id="ok"),
            mail("a1@x.de", 2001, id="old"),
        ],
    )
    engine.flush(0)
    (ref, state) = next(iter(engine.numbers.items()))
    assert len(encode_number(state)) <= STATE_MAX_BYTES
    assert engine.stats.capped["changes"] > 0 and engine.stats.capped["ports"] > 0
    # the index holds exactly the links of what is left of the log
    indexed = sorted((addr, link) for addr, links in engine.index.items() for link in links)
    assert indexed == sorted(_links(ref, derive(state.changes)))
    alerts = engine.drain()[0]
    assert [a.trigger_event_id[:3] for a in alerts if a.kind == "port_flapping"] == ["p2-"]
    # the open holding is whole; the first one's address was dropped with its changes: no longer linked
    assert [(a.kind, a.trigger_event_id) for a in alerts if a.kind.startswith("recipient")] == [
        ("recipient_unlinked", "old")
    ]


def test_a_flood_of_deliveries_that_are_no_bounces_keeps_the_state_within_budget():
    engine = new_engine()
    feed(
        engine,
        [
            change("contract_started", 0, id="s", email="a@x.de"),
            *(delivery("m-1", "deferred", 60 + i, id=f"d{i}-{'x' * 200}") for i in range(1000)),
        ],
    )
    engine.flush(0)
    (state,) = engine.numbers.values()
    assert len(encode_number(state)) <= STATE_MAX_BYTES
