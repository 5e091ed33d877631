"""Contract 1.1, late records within the correction horizon: late alerts, retractions, and the guarantee
that the final alert set does not depend on when the records came."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detectors import expiry
from detectors.alerts import Alert, final_set
from detectors.engine import Engine, Relink
from detectors.settings import Settings
from tests.detectors.test_properties import _t, histories
from tests.factories import FILLER_START, Rec, advance, change, delivery, feed, mail, new_engine

DAY = 86_400
HORIZON = 2_000.0  # seconds: the generated histories span 2,000 s
GRACE = 30.0


def final(alerts: list[Alert]) -> dict[str, str]:
    """The final set (detectors.alerts.final_set): dedup_key -> kind."""
    return {key: a.kind for key, a in final_set(alerts).items()}


def assert_raised_once(alerts: list[Alert]) -> None:
    """Nothing raised twice, nothing retracted that was not raised."""
    live: set[str] = set()
    for a in alerts:
        if a.status == "retracted":
            assert a.dedup_key in live
            live.discard(a.dedup_key)
        else:
            assert a.dedup_key not in live
            live.add(a.dedup_key)


def _run(records: list[Rec], s: Settings) -> tuple[list[Alert], Engine]:
    engine = new_engine(s)
    feed(engine, records)
    engine.flush(0)
    return engine.drain()[0], engine


def _arrivals(records: list[Rec], data: st.DataObject, max_delay: float) -> list[Rec]:
    delays = [data.draw(st.floats(min_value=0, max_value=max_delay)) for _ in records]
    arrival = [_t(r) + d for r, d in zip(records, delays, strict=True)]
    tiebreak = data.draw(st.permutations(range(len(records))))
    return [r for _, _, r in sorted(zip(arrival, tiebreak, records, strict=True))]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories(), st.data())
def test_any_arrival_order_within_the_horizon_gives_the_in_order_final_alerts(records, data):
    s = Settings(correction_horizon_s=HORIZON)
    expected, _ = _run(sorted(records, key=_t), s)
    assert all(a.status == "firing" for a in expected)
    # delays up to the horizon: many records arrive later than grace
    got, engine = _run(_arrivals(records, data, HORIZON - GRACE), s)
    assert final(got) == final(expected)
    assert sum(engine.stats.too_late.values()) == 0
    assert_raised_once(got)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories(), st.data())
def test_beyond_the_horizon_nothing_is_re_judged(records, data):
    """With a horizon of 0 every late record is too late: applied and judged against the state as
    it is, as before contract 1.1 (no retraction, no re-judging, each alert once)."""
    s = Settings(correction_horizon_s=0)
    got, engine = _run(_arrivals(records, data, 1_000.0), s)
    assert all(a.status == "firing" for a in got)
    assert sum(engine.stats.corrections.values()) == 0
    assert engine.stats.too_late == engine.stats.late
    assert len({a.dedup_key for a in got}) == len(got)


# ------------------------------------------------------------------ scenarios

BLAU = "+4917611111111"
OTHER = "+4917622222222"


def test_a_nightly_batch_brings_a_ported_out_late_and_the_final_alerts_are_the_in_order_ones():
    anna = change("contract_started", 0, id="anna", msisdn=BLAU, contract_id="K-B", customer_id="C-ANNA",
                  brand="blau", email="anna@gmx.de")  # fmt: skip
    # ported out at 18:00, into o2 for Ben at 20:00; o2's port-in comes on time, the donor's
    # ported_out only with the nightly batch; o2 mails go to Anna's address
    ben = change("ported_in", DAY + 20 * 3600, id="ben", msisdn=BLAU, contract_id="K-O2", customer_id="C-BEN",
                 brand="o2", email="ben@o2.de")  # fmt: skip
    mails = [mail("anna@gmx.de", DAY + h * 3600, id=f"mail-{h}", msisdn=BLAU) for h in (21, 22)]
    out = change("ported_out", DAY + 18 * 3600, id="late-out", msisdn=BLAU, contract_id="K-B")
    engine = new_engine()
    feed(engine, [FILLER_START, anna, ben, *mails])
    advance(engine, 2 * DAY)
    feed(engine, [out])
    engine.flush(0)
    got = engine.drain()[0]
    expected, _ = _run([FILLER_START, anna, out, ben, *mails], Settings())
    assert final(got) == final(expected)
    # the late port-out makes Ben's start a re-port, raised late; the mails stay critical previous-holder alerts
    late = {(a.kind, a.trigger_event_id) for a in got if a.late and a.status == "firing"}
    assert ("re_port", "ben") in late
    assert {k for k in final(got).values()} >= {"recipient_previous_holder", "re_port"}


def test_a_late_ported_out_turns_mails_after_it_into_late_critical_alerts():
    """Yesterday's mails after the port-out, to the previous holder's address: with no holding then
    they are notification_without_contract (critical), raised late once the ported_out comes."""
    engine = new_engine()
    feed(
        engine,
        [
            FILLER_START,
            change("contract_started", 0, id="anna", msisdn=BLAU, contract_id="K-B", customer_id="C-ANNA",
                   brand="blau", email="anna@gmx.de"),
            mail("anna@gmx.de", DAY + 19 * 3600, id="mail-1", msisdn=BLAU),
            mail("anna@gmx.de", DAY + 23 * 3600, id="mail-2", msisdn=BLAU),
        ],
    )  # fmt: skip
    advance(engine, 2 * DAY)
    assert engine.drain()[0] == []  # to Anna's current address, as far as anyone knew
    feed(engine, [change("ported_out", DAY + 18 * 3600, id="late-out", msisdn=BLAU, contract_id="K-B")])
    alerts = engine.drain()[0]
    assert sorted((a.kind, a.trigger_event_id, a.severity, a.late, a.status) for a in alerts) == [
        ("notification_without_contract", "mail-1", "critical", True, "firing"),
        ("notification_without_contract", "mail-2", "critical", True, "firing"),
    ]
    assert engine.stats.raised_late["notification_without_contract"] == 2


def test_a_late_email_changed_retracts_an_unlinked_alert():
    engine = new_engine()
    feed(engine, [FILLER_START, change("contract_started", 0, id="s", email="old@x.de"), mail("new@x.de", DAY, id="n")])
    advance(engine, DAY + 3600)
    (alert,) = engine.drain()[0]
    assert alert.kind == "recipient_unlinked"
    feed(engine, [change("email_changed", DAY - 60, id="late", email="new@x.de")])
    (retraction,) = engine.drain()[0]
    assert (retraction.status, retraction.dedup_key, retraction.kind, retraction.trigger_event_id) == (
        "retracted",
        alert.dedup_key,
        "recipient_unlinked",
        "n",
    )
    assert retraction.retracted_by == ["late"] and "withdrawn" in (retraction.reason or "")
    assert "new@x.de" not in retraction.summary


def test_a_late_change_of_another_number_turns_an_unlinked_alert_into_recipient_other_customer():
    engine = new_engine()
    feed(
        engine,
        [
            FILLER_START,
            change("contract_started", 0, id="s", email="me@x.de"),
            change("contract_started", 0, id="o", msisdn=OTHER, contract_id="K-O", customer_id="C-OTHER",
                   email="other-old@x.de"),
            mail("shared@x.de", DAY, id="n"),
        ],
    )  # fmt: skip
    advance(engine, DAY + 3600)
    (alert,) = engine.drain()[0]
    assert alert.kind == "recipient_unlinked"
    # the other number's customer set that address before the mail; the change comes late
    feed(engine, [change("email_changed", DAY - 600, id="late", msisdn=OTHER, contract_id="K-O", email="shared@x.de")])
    alerts = engine.drain()[0]
    assert sorted((a.kind, a.trigger_event_id, a.status) for a in alerts) == [
        ("recipient_other_customer", "n", "firing"),
        ("recipient_unlinked", "n", "retracted"),
    ]
    assert engine.stats.corrections["relink"] == 1
    other = next(a for a in alerts if a.status == "firing")
    assert other.late and other.severity == "critical"


def test_a_late_holder_changed_makes_an_address_event_dropped_as_a_restatement_count():
    """In order, the email_changed after a holder_changed sets the new holder's address; read
    before the (late) holder_changed it restates the holding's current address and is dropped
    (Engine._change: nothing to store or link). Kept for the correction horizon, it goes into the
    log once the holder_changed comes, as in order: the bounce of the mail to that address is the
    current address bouncing, not a mail to a previous holder's address (found by Hypothesis)."""
    start = change("contract_started", 0, id="s", contract_id="K-2", customer_id="C-1", email="a@x.de")
    holder = change("holder_changed", 505, id="h", contract_id="K-2", customer_id="C-1")
    restating = change("email_changed", 505, id="ec", contract_id="K-2", email="a@x.de")
    mailed = [mail("a@x.de", 540, id="n", message_id="m0"), delivery("m0", "bounced", 540, id="b", bounce_type="hard")]

    def final_of(first: list[Rec], after: list[Rec]) -> tuple[dict[str, str], Engine]:
        engine = new_engine()
        feed(engine, [FILLER_START, *first])
        advance(engine, 600)  # released: judged, and the restating email_changed dropped or not
        feed(engine, after)
        advance(engine, 700)
        return final(engine.drain()[0]), engine

    in_order, _ = final_of([start, holder, restating, *mailed], [])
    assert sorted(in_order.values()) == ["current_address_bouncing"]
    got, engine = final_of([start, restating, *mailed], [holder])
    assert engine.stats.late  # the holder_changed came later than grace
    assert got == in_order


# ------------------------------------------------------------------ budgets (docs/topics.md 2.3a)


def test_an_alert_whose_mail_the_past_s_budget_cut_is_not_retracted_by_a_later_correction():
    """A flooded number's past is cut at its budget (detectors.expiry.PAST_BYTES), oldest first:
    the mail of an alert raised early goes. A late record before that alert re-judges the number:
    the alert, whose mail can no longer be judged again, stays as raised (the in-order result)."""
    flood = [mail("me@x.de", DAY + 10 + i, id=f"ok-{i}") for i in range(400)]
    early = [FILLER_START, change("contract_started", 0, id="s", email="me@x.de"), mail("stranger@y.de", DAY, id="n")]
    late = mail("me@x.de", DAY - 60, id="late")
    engine = new_engine()
    feed(engine, early)
    advance(engine, DAY + 5)
    feed(engine, flood)
    advance(engine, DAY + 3600)
    assert engine.stats.capped.get("past", 0) > 0  # the stranger's mail is gone from the past
    feed(engine, [late])
    advance(engine, DAY + 3700)
    assert engine.stats.late
    got = engine.drain()[0]
    expected, _ = _run([*early, late, *flood], Settings())
    assert final(got) == final(expected)
    assert [a.kind for a in got] == ["recipient_unlinked"]  # raised once, never retracted


def test_alerts_the_fired_budget_cut_are_not_raised_again_by_a_later_correction():
    """More alerts than the number's fired list holds (detectors.expiry.FIRED_BYTES): the oldest
    are cut from it. A late record before them re-judges their mails, still in the past: they hold
    as before and must not be raised a second time."""
    strangers = [mail(f"stranger-{i}@y.de", DAY + i, id=f"n-{i}") for i in range(80)]
    early = [FILLER_START, change("contract_started", 0, id="s", email="me@x.de")]
    late = mail("me@x.de", DAY - 60, id="late")
    engine = new_engine()
    feed(engine, [*early, *strangers])
    advance(engine, DAY + 3600)
    assert engine.stats.capped.get("fired", 0) > 0
    feed(engine, [late])
    advance(engine, DAY + 3700)
    assert engine.stats.late
    got = engine.drain()[0]
    keys = [a.dedup_key for a in got]
    assert len(keys) == len(set(keys)) == 80  # each raised once, none retracted
    assert all(a.status == "firing" for a in got)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories(), st.data(), st.sampled_from([(300, 40), (700, 60), (2_000, 100)]))
@pytest.mark.python_core
def test_with_budgets_that_cut_nothing_is_raised_twice_or_retracted_unraised(records, data, budgets):
    """Budgets small enough to cut the past and the alerts raised (docs/topics.md 2.3a): the final
    set may then differ from the in-order one, but a correction never raises an alert a second
    time, nor retracts one that was not raised."""
    past_bytes, fired_bytes = budgets
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(expiry, "PAST_BYTES", past_bytes)
        mp.setattr(expiry, "FIRED_BYTES", fired_bytes)
        got, _ = _run(_arrivals(records, data, HORIZON - GRACE), Settings(correction_horizon_s=HORIZON))
    assert_raised_once(got)


def test_a_relink_does_not_raise_again_an_alert_whose_fired_entry_a_sweep_expired():
    """A sweep expires the alerts raised (fired) at its own event time less the horizon, which
    may be past the number's newest event less the horizon (a number quiet since: re-judging may
    still start there) while its past, kept longer, still holds the mail. A Relink from before
    that mail (a worker far behind this one) re-judges it: the alert stands as raised, it is not
    raised a second time (found by the at-scale SIGKILL exactly-once broker run with on-time
    Relinks: 27-36 alerts repeated)."""
    s = Settings()
    engine = new_engine(s)
    feed(
        engine,
        [FILLER_START, change("contract_started", 0, id="s", email="me@x.de"), mail("stranger@y.de", DAY, id="n")],
    )
    advance(engine, DAY + 3600)
    (alert,) = engine.drain()[0]
    assert alert.kind == "recipient_unlinked"
    # ten days on: the alert's fired entry is behind the sweep's horizon, the mail is still in the past
    numbers = engine.numbers
    assert isinstance(numbers, dict)
    (state,) = [st for st in numbers.values() if st.fired]
    mailed = state.fired[0].t
    engine.sweep(list(numbers.items()), mailed + 10 * DAY * 1_000_000)
    assert not state.fired and any(p.event_id == "n" for p in state.past)
    relink = Relink(engine.pseudonymiser.address_ref("stranger@y.de"), mailed - 600 * 1_000_000, ["far-behind"], "o")
    engine.relinked(relink)
    assert engine.drain()[0] == []
