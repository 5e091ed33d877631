"""The incident aggregator (detectors/incidents.py): grouping, exact counts, ids, clocks, actions, order."""

from __future__ import annotations

import functools
from collections.abc import Iterable

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detectors import kinds
from detectors.alerts import Alert
from detectors.incidents import (
    CLOSE,
    DAY_US,
    HOUR_US,
    LISTED_MAX,
    REPORTED,
    RETRACTED,
    SUPERSEDED,
    Action,
    Incident,
    Incidents,
    IncidentSettings,
    encode_record,
    latest,
    signature_of,
    state_decoder,
    state_encoder,
)
from detectors.timefmt import parse_rfc3339, rfc3339
from tests.factories import Rec, change, feed, mail, new_engine
from tests.incident_stories import blau_to_o2, blau_to_o2_counts, in_event_time, o2_recycled

NOW = parse_rfc3339("2026-12-04T10:00:00Z")


def alerts_of(recs: Iterable[Rec], now_us: int = NOW) -> list[Alert]:
    engine = new_engine()
    feed(engine, in_event_time(recs), now_us)
    engine.flush(now_us)
    return engine.drain()[0]


@functools.cache
def seed_alerts() -> tuple[Alert, ...]:
    return tuple(alerts_of(blau_to_o2(300)))


@functools.cache
def two_causes() -> tuple[Alert, ...]:
    return tuple(alerts_of(blau_to_o2(150) + o2_recycled(100)))


def aggregate(alerts: Iterable[Alert], incident_settings: IncidentSettings | None = None) -> Incidents:
    agg = Incidents(incident_settings)
    for a in alerts:
        agg.add(a)
    return agg


def test_seed_story_at_scale_is_one_incident_with_exact_counts() -> None:
    alerts = seed_alerts()
    breach = [a for a in alerts if a.kind == kinds.RECIPIENT_PREVIOUS_HOLDER]
    assert len(breach) == blau_to_o2_counts(300)["mails"]  # the engine's side of the story
    agg = aggregate(alerts)
    (inc,) = agg.incidents()
    want = blau_to_o2_counts(300)
    assert (inc.mails, inc.affected_numbers, inc.affected_recipients) == (
        want["mails"],
        want["affected_numbers"],
        want["affected_recipients"],
    )
    # the first LISTED_MAX distinct numbers and recipients in event-time order: a sample, counts exact
    in_order = sorted(breach, key=lambda a: (parse_rfc3339(a.event_time), a.dedup_key))
    first_numbers = list(dict.fromkeys(a.subject.msisdn_ref for a in in_order))[:LISTED_MAX]
    first_recipients = list(dict.fromkeys(a.evidence["recipient_ref"] for a in in_order))[:LISTED_MAX]
    assert (inc.numbers, inc.recipients) == (first_numbers, first_recipients)
    assert (inc.numbers_listed, inc.recipients_listed, inc.truncated) == (LISTED_MAX, LISTED_MAX, True)
    sig = inc.signature
    assert (sig.kind, sig.brand, sig.sender, sig.template) == (
        "recipient_previous_holder",
        "o2",
        "crm-mailer",
        "contract_info",
    )
    assert (sig.via, sig.previous_brand, sig.previous_end, sig.active_brand, sig.active_start) == (
        "this_number",
        "blau",
        "ported_out",
        "o2",
        "ported_in",
    )
    assert inc.cause == (
        "recipient_previous_holder: o2 contract_info mails from crm-mailer; "
        "previous holding blau, ended by ported_out; now ported_in at o2"
    )
    assert inc.first_event_time == min(a.event_time for a in breach)
    assert inc.last_event_time == max(a.event_time for a in breach)
    assert inc.first_trigger == min(breach, key=lambda a: (parse_rfc3339(a.event_time), a.dedup_key)).dedup_key
    assert inc.status == "open" and inc.closed_by is None  # the clock is the last alert's event time
    assert sum(d.mails for d in inc.timeline) == want["mails"]
    assert sum(d.new_numbers for d in inc.timeline) == want["affected_numbers"]
    assert [d.date for d in inc.timeline] == sorted({a.event_time[:10] for a in breach})
    # nothing in clear: no number or address of the story appears in the record
    text = msgspec.json.encode(inc).decode()
    assert "+49176" not in text and "@" not in text


def test_two_causes_are_two_incidents() -> None:
    incs = aggregate(two_causes()).incidents()
    by_template = {i.signature.template: i for i in incs}
    assert sorted(by_template) == ["contract_info", "invoice"]
    seed, recycled = by_template["contract_info"], by_template["invoice"]
    want = blau_to_o2_counts(150)
    assert (seed.mails, seed.affected_numbers, seed.affected_recipients) == (
        want["mails"],
        want["affected_numbers"],
        want["affected_recipients"],
    )
    assert (recycled.mails, recycled.affected_numbers, recycled.affected_recipients) == (100, 100, 100)
    sig = recycled.signature
    assert (sig.sender, sig.previous_brand, sig.previous_end, sig.active_start) == (
        "billing-mailer",
        "o2",
        "contract_ended",
        "contract_started",
    )
    assert not set(seed.numbers) & set(recycled.numbers)
    assert (recycled.numbers_listed, recycled.truncated) == (100, False)


def test_ids_are_the_same_every_time_and_depend_on_signature_and_first_trigger() -> None:
    first = [i.incident_id for i in aggregate(two_causes()).incidents()]
    again = [i.incident_id for i in aggregate(reversed(two_causes())).incidents()]
    assert first == again and len(set(first)) == 2
    assert all(i.startswith("inc-") and len(i) == 24 for i in first)


def _alert(t: str, key: str, number: str = "n1", detected: str = "2026-07-01T00:00:00Z", **kw: object) -> Alert:
    """A recipient_previous_holder alert of the seed's signature (a template alert, fields replaced)."""
    base = next(a for a in seed_alerts() if a.kind == kinds.RECIPIENT_PREVIOUS_HOLDER)
    ev = {**base.evidence, "recipient_ref": f"r-{number}"}
    fields: dict[str, object] = {
        "event_time": t,
        "dedup_key": f"recipient_previous_holder:{key:0>20}",
        "detected_at": detected,
        "subject": msgspec.structs.replace(base.subject, msisdn_ref=number),
        "evidence": ev,
        "trigger_event_id": key,
    }
    return msgspec.structs.replace(base, **{**fields, **kw})


def test_deadlines_run_from_the_first_detection() -> None:
    agg = aggregate(
        [
            _alert("2026-06-02T10:00:00Z", "a", detected="2026-06-03T12:00:00Z"),
            _alert("2026-06-01T10:00:00Z", "b", detected="2026-06-03T12:30:00Z"),
        ]
    )
    (inc,) = agg.incidents()
    assert inc.detected_at == "2026-06-03T12:00:00.000Z"  # the earliest detection, not the earliest event
    assert inc.deadlines is not None
    assert inc.deadlines.initial_report == "2026-06-04T12:00:00.000Z"
    assert inc.deadlines.full_report == "2026-06-06T12:00:00.000Z"
    assert inc.deadlines.gdpr == "2026-06-06T12:00:00.000Z"
    # a re-delivery of b detected earlier (a worker that crashed and processed again) moves the clock back
    agg.add(_alert("2026-06-01T10:00:00Z", "b", detected="2026-06-02T09:00:00Z"))
    (inc,) = agg.incidents()
    assert inc.detected_at == "2026-06-02T09:00:00.000Z" and inc.mails == 2
    assert inc.deadlines is not None and inc.deadlines.initial_report == "2026-06-03T09:00:00.000Z"
    # and a later one changes nothing
    assert agg.add(_alert("2026-06-01T10:00:00Z", "b", detected="2026-06-09T00:00:00Z")) is None


def test_deadline_settings() -> None:
    s = IncidentSettings(initial_report_s=3600, full_report_s=7200, gdpr_report_s=10800)
    (inc,) = aggregate([_alert("2026-06-01T10:00:00Z", "a", detected="2026-06-03T12:00:00Z")], s).incidents()
    assert inc.deadlines is not None
    assert (inc.deadlines.initial_report, inc.deadlines.full_report, inc.deadlines.gdpr) == (
        "2026-06-03T13:00:00.000Z",
        "2026-06-03T14:00:00.000Z",
        "2026-06-03T15:00:00.000Z",
    )
    with pytest.raises(ValueError, match="unknown alert kinds"):
        IncidentSettings(breach_kinds=("no_such_kind",))


def test_quiet_period_splits_a_signature_and_closes_incidents() -> None:
    agg = aggregate(
        [
            _alert("2026-06-01T10:00:00Z", "a"),
            _alert("2026-07-05T10:00:00Z", "b"),  # 34 days later: the same incident
            _alert("2026-08-10T10:00:00Z", "c", number="n2"),  # 36 days later: a new one
        ]
    )
    first, second = agg.incidents()
    assert (first.mails, second.mails) == (2, 1)
    assert first.status == "closed" and first.closed_by == "quiet_period"  # the clock is at c
    assert second.status == "open" and second.quiet_until == "2026-09-14T10:00:00.000Z"
    agg.changes()
    agg.tick(parse_rfc3339("2026-09-14T09:59:59Z"))
    assert agg.changes() == []
    agg.tick(parse_rfc3339("2026-09-14T10:00:00Z"))
    (closed,) = agg.changes()
    assert closed.incident_id == second.incident_id and closed.closed_by == "quiet_period"


def _action(inc: Incident, what: str, at: str = "2026-06-05T00:00:00Z", note: str = "") -> Action:
    assert inc.first_event_time is not None and inc.last_event_time is not None
    return Action(
        action_id=f"act-{what}-{at}",
        incident_id=inc.incident_id,
        action=what,
        by="dpo",
        at=at,
        note=note,
        signature_key=inc.signature.key(),
        first=parse_rfc3339(inc.first_event_time),
        last=parse_rfc3339(inc.last_event_time),
    )


def test_reported_and_operator_close() -> None:
    agg = aggregate([_alert("2026-06-01T10:00:00Z", "a"), _alert("2026-06-02T10:00:00Z", "b")])
    (inc,) = agg.changes()
    report = _action(inc, REPORTED, note="BNetzA ref 123")
    assert agg.act(report) and not agg.act(report)  # idempotent by action_id
    (inc,) = agg.changes()
    assert inc.reported == report and inc.actions == [report] and inc.status == "open"
    agg.act(_action(inc, CLOSE, at="2026-06-06T00:00:00Z", note="fixed in CRM"))
    (inc,) = agg.changes()
    assert inc.status == "closed" and inc.closed_by == "operator"
    # after the close, the same signature is a new incident; a late alert before the cut joins the closed one
    agg.add(_alert("2026-06-03T10:00:00Z", "c"))
    agg.add(_alert("2026-06-01T12:00:00Z", "d"))
    changed = {i.incident_id: i for i in agg.changes()}
    assert changed[inc.incident_id].mails == 3 and changed[inc.incident_id].status == "closed"
    (new,) = [i for i in changed.values() if i.incident_id != inc.incident_id]
    assert new.mails == 1 and new.status == "open" and new.reported is None


def test_members_of_settled_incidents_expire_after_the_retention_and_their_record_stays() -> None:
    retention = IncidentSettings(quiet_period_s=10 * 86_400.0, members_retention_s=30 * 86_400.0)
    agg = aggregate([_alert("2026-06-01T10:00:00Z", "a"), _alert("2026-06-02T10:00:00Z", "b", number="n2")], retention)
    (reported,) = agg.changes()
    agg.act(_action(reported, REPORTED, note="ref 1"))
    # a second incident of the signature, after a quiet gap, closed by its quiet period and never reported
    agg.add(_alert("2026-07-01T10:00:00Z", "c"))
    unreported = next(i for i in agg.changes() if i.incident_id != reported.incident_id)
    closes = parse_rfc3339("2026-06-02T10:00:00Z") + 10 * DAY_US  # last mail + quiet period
    agg.tick(closes + 30 * DAY_US - 1)
    assert agg.expire() == [] and len(agg.state.where) == 3  # closed, but not for 30 days yet
    agg.tick(closes + 30 * DAY_US)
    first = [_alert("2026-06-01T10:00:00Z", "a"), _alert("2026-06-02T10:00:00Z", "b", number="n2")]
    assert sorted(agg.expire()) == sorted(a.dedup_key for a in first)
    assert agg.expire() == []
    changed = {i.incident_id: i for i in agg.changes()}
    final = changed[reported.incident_id]
    assert final.members_expired and final.status == "closed" and final.reported is not None
    assert (final.mails, final.affected_numbers, final.incident_id) == (2, 2, reported.incident_id)
    assert all(i.status != SUPERSEDED for i in changed.values())
    # the unreported one keeps its members (it still pages) however old it gets
    agg.tick(parse_rfc3339("2027-12-01T00:00:00Z"))
    assert agg.expire() == [] and list(agg.state.where) == [_alert("2026-07-01T10:00:00Z", "c").dedup_key]
    assert unreported.incident_id in {i.incident_id for i in agg.incidents()}
    # a restarted aggregator: the remaining members and the topic's records; the expired id stays as it is
    again = Incidents(retention)
    again.add(_alert("2026-07-01T10:00:00Z", "c"))
    for rec in [*changed.values(), unreported]:
        again.restore_published(rec)
    assert all(i.status != SUPERSEDED for i in again.changes())
    # a signature whose members all expire: its final record comes out all the same
    alone = aggregate([_alert("2026-06-01T10:00:00Z", "a")], retention)
    (inc,) = alone.changes()
    alone.act(_action(inc, CLOSE))
    alone.changes()
    alone.tick(parse_rfc3339("2027-01-01T00:00:00Z"))
    assert alone.expire() and not alone.state.signatures
    (last,) = alone.changes()
    assert last.incident_id == inc.incident_id and last.members_expired and last.closed_by == "operator"
    # 0 keeps members forever
    forever = aggregate([_alert("2026-06-01T10:00:00Z", "a")], IncidentSettings(members_retention_s=0))
    (inc,) = forever.changes()
    forever.act(_action(inc, CLOSE))
    forever.tick(parse_rfc3339("2036-01-01T00:00:00Z"))
    assert forever.expire() == []


def test_an_earlier_alert_renames_the_incident_and_the_old_id_is_superseded() -> None:
    agg = aggregate([_alert("2026-06-02T10:00:00Z", "b")])
    (old,) = agg.changes()
    agg.add(_alert("2026-06-01T10:00:00Z", "a"))
    new, gone = sorted(agg.changes(), key=lambda i: i.status == SUPERSEDED)
    assert gone.incident_id == old.incident_id and gone.status == SUPERSEDED
    assert gone.superseded_by == new.incident_id and new.mails == 2
    assert latest([old, new, gone])[0][old.incident_id].status == SUPERSEDED


def test_retraction_takes_the_alert_out_and_redelivery_is_counted_once() -> None:
    a, b = _alert("2026-06-01T10:00:00Z", "a"), _alert("2026-06-01T11:00:00Z", "b", number="n2")
    agg = aggregate([a, b, a, b, a])
    (inc,) = agg.changes()
    assert (inc.mails, inc.affected_numbers) == (2, 2)
    agg.add(msgspec.structs.replace(b, status=RETRACTED))
    (inc,) = agg.changes()
    assert (inc.mails, inc.affected_numbers, inc.numbers, inc.numbers_listed, inc.truncated) == (1, 1, ["n1"], 1, False)
    agg.add(msgspec.structs.replace(a, status=RETRACTED))
    (gone,) = agg.changes()
    assert gone.status == SUPERSEDED and gone.superseded_by is None and agg.incidents() == []


def test_a_record_of_5000_numbers_stays_under_64_kib_with_exact_counts() -> None:
    """The 64 KiB rule (docs/topics.md): the record lists LISTED_MAX numbers and recipients, counts all."""
    alerts = [
        _alert(
            rfc3339(parse_rfc3339("2026-06-01T00:00:00Z") + i * 5 * 60 * 1_000_000), f"k{i}", number=f"{i % 5000:024x}"
        )
        for i in range(6000)
    ]
    agg = Incidents()
    biggest = 0
    for lo in range(0, len(alerts), 500):  # in batches, as the process and the replay publish
        for a in alerts[lo : lo + 500]:
            agg.add(a)
        biggest = max([biggest, *(len(encode_record(i)) for i in agg.changes())])
    (inc,) = agg.incidents()
    assert (inc.mails, inc.affected_numbers, inc.affected_recipients) == (6000, 5000, 5000)
    assert (inc.numbers_listed, inc.recipients_listed, inc.truncated) == (LISTED_MAX, LISTED_MAX, True)
    assert inc.numbers == [f"{i:024x}" for i in range(LISTED_MAX)]  # the first affected, in event time
    assert sum(d.mails for d in inc.timeline) == 6000 and sum(d.new_numbers for d in inc.timeline) == 5000
    assert biggest < 64 * 1024 and len(encode_record(inc)) < 16 * 1024
    # appended one batch at a time or derived at once from all members: the same record
    assert Incidents(state=state_decoder.decode(state_encoder.encode(agg.state))).incidents() == [inc]


def test_only_breach_kinds_count_and_they_are_configurable() -> None:
    alerts = seed_alerts()
    assert {a.kind for a in alerts} == {kinds.RE_PORT, kinds.RECIPIENT_PREVIOUS_HOLDER}
    assert aggregate(alerts, IncidentSettings(breach_kinds=(kinds.RECIPIENT_OTHER_CUSTOMER,))).incidents() == []
    (reports,) = aggregate(alerts, IncidentSettings(breach_kinds=(kinds.RE_PORT,))).incidents()
    assert reports.affected_numbers == 300 and reports.severity == "info"


def test_signature_of_the_other_breach_kinds() -> None:
    other = alerts_of(
        [
            change("contract_started", 0, msisdn="+4917611111111", customer_id="C-A", email="a@x.de"),
            change("contract_started", 0, msisdn="+4917622222222", customer_id="C-B", email="b@x.de"),
            mail("a@x.de", 100, msisdn="+4917622222222", template="invoice"),
        ]
    )
    (a,) = [a for a in other if a.kind == kinds.RECIPIENT_OTHER_CUSTOMER]
    sig = signature_of(a)
    assert (sig.via, sig.previous_brand, sig.previous_end, sig.active_start) == (
        "other_number",
        "o2",
        "open",
        "contract_started",
    )
    # another number's holding that ended: how it ended is in the link (Link.end_type) and the signature
    for end in ("ported_out", "contract_ended"):
        ended = alerts_of(
            [
                change("contract_started", 0, msisdn="+4917611111111", customer_id="C-A", email="a@x.de"),
                change(end, 50, msisdn="+4917611111111"),
                change("contract_started", 0, msisdn="+4917622222222", customer_id="C-B", email="b@x.de"),
                mail("a@x.de", 100, msisdn="+4917622222222", template="invoice"),
            ]
        )
        (a,) = [a for a in ended if a.kind == kinds.RECIPIENT_OTHER_CUSTOMER]
        assert a.evidence["linked"]["end_type"] == end
        sig = signature_of(a)
        assert (sig.via, sig.previous_end) == ("other_number", end)
        assert f"holding on another number o2, ended by {end}" in sig.describe()
    # an alert from a link stored before links kept their end type: "ended", as before
    legacy = msgspec.structs.replace(
        a, evidence={**a.evidence, "linked": {k: v for k, v in a.evidence["linked"].items() if k != "end_type"}}
    )
    assert signature_of(legacy).previous_end == "ended"
    orphan = alerts_of(
        [
            change("contract_started", 0, customer_id="C-A", brand="blau", email="a@x.de"),
            change("contract_ended", 50),
            mail("a@x.de", 100),
            mail("z@x.de", 100, msisdn="+4917633333333"),
        ]
    )
    sigs = sorted((signature_of(a) for a in orphan), key=lambda s: s.via or "")
    assert [(s.kind, s.via, s.previous_brand, s.previous_end, s.active_start) for s in sigs] == [
        ("notification_without_contract", None, None, None, None),
        ("notification_without_contract", "this_number", "blau", "contract_ended", None),
    ]


def test_state_is_serialisable_and_a_restored_aggregator_publishes_only_what_changed() -> None:
    agg = aggregate(two_causes())
    published = agg.changes()
    restored = Incidents(state=state_decoder.decode(state_encoder.encode(agg.state)))
    assert restored.incidents() == agg.incidents()
    assert restored.changes() == []
    # a process that restarts from its memberships (streams/incidents.py) and the topic's last records
    fresh = Incidents()
    for a in two_causes():
        fresh.add(a)
    for rec in published:
        fresh.restore_published(rec)
    assert fresh.changes() == []


# ------------------------------------------------------------------ order and re-deliveries


def _sample() -> list[Alert]:
    """Alerts with several episodes and signatures: the two causes, and seed-like alerts in 5 bursts 50 days apart."""
    spread = [
        _alert(
            rfc3339(parse_rfc3339("2026-06-01T00:00:00Z") + ((i // 8) * 50 + i * 37 % 10) * DAY_US + i * HOUR_US),
            f"s{i}",
            number=f"n{i % 13}",
            detected=rfc3339(NOW + (i % 5) * HOUR_US),
        )
        for i in range(40)
    ]
    return list(two_causes()[::7]) + spread


SAMPLE = _sample()


def _final(agg: Incidents, changes: list[Incident]) -> dict[str, Incident]:
    """What a compacted topic of the published records holds, without the superseded ids."""
    return {k: v for k, v in latest(changes)[0].items() if v.status != SUPERSEDED}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    order=st.permutations(range(len(SAMPLE))),
    again=st.lists(st.integers(0, len(SAMPLE) - 1), max_size=30),
    batch=st.integers(1, 40),
)
def test_incidents_do_not_depend_on_alert_order_or_redeliveries(order: list[int], again: list[int], batch: int) -> None:
    reference = aggregate(SAMPLE).incidents()
    agg = Incidents()
    published: list[Incident] = []
    for n, i in enumerate([*order, *again]):
        agg.add(SAMPLE[i])
        if n % batch == 0:
            published += agg.changes()
    published += agg.changes()
    assert agg.incidents() == reference
    # the last record of each id is the incident, and every other id is superseded
    assert _final(agg, published) == {i.incident_id: i for i in reference}


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    order=st.permutations(range(len(SAMPLE))),
    at=st.integers(0, len(SAMPLE)),
    retract=st.sets(st.integers(0, len(SAMPLE) - 1), max_size=10),
)
def test_operator_actions_and_retractions_do_not_depend_on_when_they_come(
    order: list[int], at: int, retract: set[int]
) -> None:
    """A close (cut at the seed's June burst) and retractions, anywhere in the stream: the same incidents."""
    june = next(
        i
        for i in aggregate(SAMPLE).incidents()
        if i.signature.template == "contract_info" and i.first_event_time and i.first_event_time.startswith("2026-06")
    )
    # closed when its alerts had come up to June 10: the later ones are a new incident
    close = msgspec.structs.replace(_action(june, CLOSE, note="fixed"), last=parse_rfc3339("2026-06-10T12:00:00Z"))
    gone = [msgspec.structs.replace(SAMPLE[i], status=RETRACTED) for i in sorted(retract)]
    reference = aggregate([*SAMPLE, *gone])
    reference.act(close)
    agg = Incidents()
    published: list[Incident] = []
    for n, i in enumerate(order):
        if n == at:
            agg.act(close)
        agg.add(SAMPLE[i])
        published += agg.changes()
    if at >= len(order):
        agg.act(close)
    for g in gone:
        agg.add(g)
    published += agg.changes()
    assert agg.incidents() == reference.incidents()
    assert _final(agg, published) == {i.incident_id: i for i in reference.incidents()}
    closed = [i for i in reference.incidents() if i.closed_by == "operator"]
    assert len(closed) <= 1 and all((c.last_event_time or "") < "2026-06-10T12" for c in closed)
    if not retract:  # (retractions may take every alert before the cut away, and the closed incident with them)
        assert len(closed) == 1


IN_EVENT_TIME = sorted(range(len(SAMPLE)), key=lambda i: (parse_rfc3339(SAMPLE[i].event_time), SAMPLE[i].dedup_key))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    swaps=st.lists(st.tuples(st.integers(0, len(SAMPLE) - 1), st.integers(0, len(SAMPLE) - 1)), max_size=4),
    batch=st.integers(1, 20),
    retract=st.sets(st.integers(0, len(SAMPLE) - 1), max_size=3),
    ticks=st.booleans(),
)
def test_appending_in_event_time_gives_what_a_full_derivation_gives(
    swaps: list[tuple[int, int]], batch: int, retract: set[int], ticks: bool
) -> None:
    """The common case (alerts in event-time order, derived incrementally), with a few alerts out of place,
    retractions and a clock ticked per batch: the records of a derivation from all the members."""
    order = list(IN_EVENT_TIME)
    for i, j in swaps:
        order[i], order[j] = order[j], order[i]
    agg = Incidents()
    published: list[Incident] = []
    for n, i in enumerate(order):
        agg.add(SAMPLE[i])
        if n % batch == 0:
            if ticks:
                agg.tick(parse_rfc3339(SAMPLE[i].event_time) + 20 * DAY_US)
            published += agg.changes()
    for i in sorted(retract):
        agg.add(msgspec.structs.replace(SAMPLE[i], status=RETRACTED))
    published += agg.changes()
    full = Incidents(state=state_decoder.decode(state_encoder.encode(agg.state)))  # derives from all members
    assert agg.incidents() == full.incidents()
    assert _final(agg, published) == {i.incident_id: i for i in full.incidents()}
