"""Invariants over generated input (hypothesis)."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detectors.codec import decode_number, encode_number
from tests.factories import Rec, change, comparable, delivery, feed, mail, new_engine

GRACE = 30.0
NUMBERS = ["+4917600000001", "+4917600000002"]
CUSTOMERS = ["C-1", "C-2", "C-3"]
ADDRESSES = ["a@x.de", "b@x.de", "c@x.de", " A@X.de "]
TIMES = st.integers(min_value=0, max_value=400).map(lambda s: s * 5.0)  # coarse: many ties


@st.composite
def event(draw, i: int) -> Rec:
    t = draw(TIMES)
    msisdn = draw(st.sampled_from(NUMBERS))
    eid = f"e{i}"
    kind = draw(
        st.sampled_from(
            [
                "contract_started",
                "ported_in",
                "contract_ended",
                "ported_out",
                "holder_changed",
                "email_changed",
                "email_verified",
                "mail",
                "mail",
                "mail",
                "sms",
                "delivery",
                "bounce",
            ]
        )
    )
    contract = draw(st.sampled_from(["K-1", "K-2", "K-3"]))
    if kind == "mail":
        return mail(
            draw(st.sampled_from(ADDRESSES)), t, id=eid, msisdn=msisdn, message_id=f"m{draw(st.integers(0, 5))}"
        )
    if kind == "sms":
        return mail(msisdn, t, id=eid, msisdn=msisdn, channel="sms")
    if kind == "delivery":
        return delivery(f"m{draw(st.integers(0, 5))}", "delivered", t, id=eid, msisdn=msisdn)
    if kind == "bounce":
        return delivery(
            f"m{draw(st.integers(0, 5))}",
            "bounced",
            t,
            id=eid,
            msisdn=msisdn,
            bounce_type=draw(st.sampled_from(["hard", "soft"])),
        )
    fields: dict = {"contract_id": contract}
    if kind in ("contract_started", "ported_in", "holder_changed"):
        fields["customer_id"] = draw(st.sampled_from(CUSTOMERS))
    if kind in ("contract_started", "ported_in", "email_changed", "email_verified"):
        fields["email"] = draw(st.sampled_from(ADDRESSES))
    return change(kind, t, id=eid, msisdn=msisdn, **fields)


@st.composite
def histories(draw) -> list[Rec]:
    n = draw(st.integers(min_value=1, max_value=25))
    return [draw(event(i)) for i in range(n)]


def _t(rec: Rec) -> float:
    from detectors.timefmt import parse_rfc3339

    return parse_rfc3339(rec.event["event_time"]) / 1e6


def _alerts(records: list[Rec], partitions: tuple[int, ...] = ()):
    engine = new_engine()
    for p in partitions:  # known from the start, as a worker's assigned partitions are
        engine.arrival.expect(p, 0)
    feed(engine, records)
    engine.flush(0)
    assert sum(engine.stats.late.values()) == 0
    return comparable(engine.drain()[0]), engine


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories(), st.data())
def test_any_arrival_order_within_grace_gives_the_same_alerts(records, data):
    in_order = sorted(records, key=_t)
    expected, _ = _alerts(in_order)
    # arrival = event time + a delay in [0, grace]: nothing arrives later than grace after the watermark
    delays = [data.draw(st.floats(min_value=0, max_value=GRACE)) for _ in records]
    arrival = [_t(r) + d for r, d in zip(records, delays, strict=True)]
    tiebreak = data.draw(st.permutations(range(len(records))))
    shuffled = [r for _, _, r in sorted(zip(arrival, tiebreak, records, strict=True))]
    got, _ = _alerts(shuffled)
    assert got == expected


@settings(max_examples=60, deadline=None)
@given(histories())
def test_replaying_the_same_records_twice_gives_the_same_alerts(records):
    records = sorted(records, key=_t)
    assert _alerts(records)[0] == _alerts(records)[0]


@settings(max_examples=80, deadline=None)
@given(histories())
def test_state_survives_serialisation_unchanged(records):
    _, engine = _alerts(sorted(records, key=_t))
    for state in engine.numbers.values():
        assert decode_number(encode_number(state)) == state


@settings(max_examples=60, deadline=None)
@given(histories())
def test_resending_every_record_changes_nothing(records):
    records = sorted(records, key=_t)
    doubled = [r for rec in records for r in (rec, rec)]
    assert _alerts(doubled)[0] == _alerts(records)[0]


TOPICS = ["notifications.outbound", "contracts.changes", "notifications.delivery"]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(TOPICS), st.one_of(st.none(), st.binary(max_size=40)), st.binary(max_size=200))
def test_arbitrary_bytes_never_crash_and_always_dead_letter(topic, key, value):
    engine = new_engine()
    engine.process(topic, 0, 0, key, value, 0)
    alerts, dead, _ = engine.drain()
    assert alerts == [] and len(dead) == 1 and dead[0].reason
    assert engine.numbers == {} and engine.arrival.sources() == [] and engine.pending_count() == 0


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
FIELDS = [
    "schema_version",
    "event_id",
    "event_time",
    "msisdn",
    "type",
    "contract_id",
    "customer_id",
    "brand",
    "email",
    "message_id",
    "channel",
    "recipient",
    "template",
    "sender",
    "status",
]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(TOPICS), st.one_of(json_values, st.dictionaries(st.sampled_from(FIELDS), json_values)))
def test_arbitrary_json_never_crashes_and_dead_letters(topic, value):
    engine = new_engine()
    engine.process(topic, 0, 0, "+4917600000001", json.dumps(value), 0)
    alerts, dead, _ = engine.drain()
    assert alerts == [] and len(dead) == 1
    assert engine.numbers == {} and engine.arrival.sources() == [] and engine.pending_count() == 0


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories(), st.booleans(), st.data())
def test_topics_that_run_ahead_make_nothing_late(records, partitioned, data):
    """Contract 1.1: each input topic-partition in event-time order, the topic-partitions at any
    relative speed (one months ahead of another, one silent until the end): the in-order alerts,
    nothing late. The watermark is the minimum over them, not the maximum."""
    in_order = sorted(records, key=_t)
    expected, _ = _alerts(in_order)
    streams: dict[tuple[str, int], list[Rec]] = {}
    for r in in_order:
        p = NUMBERS.index(r.key) if partitioned else 0
        streams.setdefault((r.topic, p), []).append(Rec(r.topic, r.key, r.value, partition=p))
    queues = list(streams.values())
    arrival: list[Rec] = []
    while any(queues):
        q = data.draw(st.sampled_from([q for q in queues if q]))
        n = data.draw(st.integers(1, len(q)))  # a fetched batch of that topic-partition
        arrival += q[:n]
        del q[:n]
    got, _ = _alerts(arrival, partitions=(0, 1) if partitioned else (0,))
    assert got == expected
