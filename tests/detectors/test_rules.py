"""The rules on their own: a number's state and one event in, a finding (or none) out."""

from __future__ import annotations

import dataclasses

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detectors import kinds
from detectors.holdings import TYPE_CODES, Change, derive
from detectors.records import Delivery, Outbound
from detectors.rules import Rules
from detectors.settings import Settings
from detectors.state import AddressIndex, Link, NumberState, Sent
from detectors.verdicts import judge
from tests.factories import change, delivery, feed, kinds_of, new_engine

HOUR = 3_600_000_000
DAY = 24 * HOUR
ADDRS = [bytes([i]) * 12 for i in range(4)]


def outbound(t: int, channel: str = "email", message_id: str = "m1", event_id: str = "n1") -> Outbound:
    return Outbound(1, event_id, "2026-01-01T00:00:00.000Z", "+4917612345678", message_id, "o2", channel,
                    "x@example.com", "invoice", "crm-mailer")  # fmt: skip


def bounce(t: int, message_id: str = "m1", event_id: str = "b1", bounce_type: str = "hard") -> Delivery:
    return Delivery(1, event_id, "2026-01-01T00:00:00.000Z", "+4917612345678", message_id, "x@example.com",
                    "bounced", "o2", "crm-mailer", bounce_type, "5.1.1")  # fmt: skip


@st.composite
def logs(draw) -> list[Change]:
    """A number's sorted change log over few contracts, customers and addresses."""
    out = []
    for i in range(draw(st.integers(0, 7))):
        kind = draw(st.sampled_from(list(TYPE_CODES)[:7]))
        addr = draw(st.sampled_from([None, *ADDRS]))
        if kind in ("email_changed", "email_verified") and addr is None:
            addr = ADDRS[0]
        contract, customer = draw(st.sampled_from(["K1", "K2"])), draw(st.sampled_from(["C1", "C2", None]))
        out.append(Change(draw(st.integers(0, 10)) * DAY, TYPE_CODES[kind], f"e{i}", contract, customer, "o2", addr))
    return sorted(out, key=Change.sort_key)


@st.composite
def other_links(draw) -> list[Link]:
    return [
        Link(draw(st.sampled_from(["own", "other"])), draw(st.sampled_from(["C1", "C2", "C3"])), "K9", "o2",
             draw(st.integers(0, 10)) * DAY, f"l{i}", 0, f"l{i}", draw(st.sampled_from([None, 5 * DAY])), None)
        for i in range(draw(st.integers(0, 3)))
    ]  # fmt: skip


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(logs(), st.integers(0, 11), st.sampled_from([None, *ADDRS]), other_links())
def test_the_notification_verdict_is_judge_s_with_ok_as_none(log, day, addr, links):
    """The common case decided before judge is judge's answer: OK is None, anything else judge's verdict."""
    rules = Rules(Settings())
    index = AddressIndex()
    if addr is not None:
        index.replace("x", [], [(addr, link) for link in links])
    holdings = derive(log)
    channel = "email" if addr is not None else "sms"
    t = day * DAY
    expected = judge(holdings, t, channel, addr, index.get(addr) if addr is not None else [], "own", rules.history)
    verdict = rules.notification(NumberState(), holdings, t, outbound(t, channel), addr, index, "own")
    assert verdict == (None if expected.kind == kinds.OK else expected)


def test_a_mail_is_remembered_with_whether_it_went_to_the_current_address():
    rules = Rules(Settings())
    state = NumberState(max_t=DAY)
    holdings = derive([Change(0, TYPE_CODES["contract_started"], "s", "K1", "C1", "o2", ADDRS[0])])
    index = AddressIndex()
    assert rules.notification(state, holdings, DAY, outbound(DAY, message_id="a"), ADDRS[0], index, "r") is None
    verdict = rules.notification(state, holdings, DAY, outbound(DAY, message_id="b"), ADDRS[1], AddressIndex(), "r")
    assert verdict is not None and verdict.kind == kinds.RECIPIENT_UNLINKED
    rules.notification(state, holdings, DAY, outbound(DAY, channel="sms", message_id="c"), None, AddressIndex(), "r")
    assert [(s.message_id, s.to_current) for s in state.sent] == [("a", True), ("b", False)]  # an sms is no mail


def test_mails_older_than_the_correlation_span_are_forgotten_when_the_next_one_comes():
    rules = Rules(Settings())
    state = NumberState(sent=[Sent(0, "old", "e0", True, "invoice")], max_t=rules.correlation + 1)
    holdings = derive([Change(0, TYPE_CODES["contract_started"], "s", "K1", "C1", "o2", ADDRS[0])])
    rules.notification(state, holdings, rules.correlation + 1, outbound(0, message_id="new"), ADDRS[0],
                       AddressIndex(), "r")  # fmt: skip
    assert [s.message_id for s in state.sent] == ["new"]


def test_a_hard_bounce_of_a_mail_to_the_current_address_is_found_once_within_the_correlation_span():
    rules = Rules(dataclasses.replace(Settings(), bounce_burst_threshold=99))
    state = NumberState(sent=[Sent(0, "m1", "n1", True, "invoice"), Sent(0, "m2", "n2", False, "invoice")])
    burst, bounced = rules.bounce(state, HOUR, bounce(HOUR, "m1", "b1"))
    assert burst is None and bounced is state.sent[0] and bounced.alerted
    assert rules.bounce(state, HOUR, bounce(HOUR, "m1", "b2")) == (None, None)  # once a mail
    assert rules.bounce(state, HOUR, bounce(HOUR, "m2", "b3")) == (None, None)  # not to the current address
    assert rules.bounce(state, HOUR, bounce(HOUR, "m9", "b4")) == (None, None)  # no such mail
    late = NumberState(sent=[Sent(0, "m1", "n1", True, "invoice")])
    assert rules.bounce(late, rules.correlation + 1, bounce(0, "m1", "b5"))[1] is None
    soft = NumberState(sent=[Sent(0, "m1", "n1", True, "invoice")])
    assert rules.bounce(soft, HOUR, bounce(HOUR, "m1", "b6", "soft"))[1] is None


def test_bursts_and_flapping_fire_once_an_episode_at_their_thresholds():
    rules = Rules(dataclasses.replace(Settings(), bounce_burst_threshold=3, port_flapping_threshold=2))
    state = NumberState()
    fired = [rules.bounce(state, i * HOUR, bounce(i * HOUR, f"m{i}", f"b{i}", "soft"))[0] for i in range(5)]
    assert [w is not None for w in fired] == [False, False, True, False, False]
    assert [m.event_id for m in fired[2] or []] == ["b0", "b1", "b2"]
    ports = [rules.port(state, i * DAY, f"p{i}") for i in range(3)]
    assert [w is not None for w in ports] == [False, True, False]


def test_a_re_port_is_a_start_for_another_customer_within_the_window():
    rules = Rules(Settings())
    log = [Change(0, TYPE_CODES["contract_started"], "s1", "K1", "C1", "o2"),
           Change(DAY, TYPE_CODES["ported_out"], "o1", "K1"),
           Change(2 * DAY, TYPE_CODES["ported_in"], "s2", "K2", "C2", "blau")]  # fmt: skip
    found = rules.re_port(derive(log), "s2")
    assert found is not None and (found[0].start_event_id, found[1].end_event_id) == ("s2", "o1")
    assert rules.re_port(derive(log), "s1") is None
    same = [*log[:2], Change(2 * DAY, TYPE_CODES["ported_in"], "s2", "K2", "C1", "blau")]
    assert rules.re_port(derive(same), "s2") is None
    assert Rules(dataclasses.replace(Settings(), re_port_window_s=3600)).re_port(derive(log), "s2") is None


def test_two_engines_with_other_settings_share_no_rules():
    """Each engine's rules, wording and caches are its own: fed in turn, each keeps its settings."""
    strict = new_engine(dataclasses.replace(Settings(), bounce_burst_threshold=2))
    lax = new_engine(Settings())
    assert strict.rules is not lax.rules and strict.wording is not lax.wording
    assert strict.rules.bounce_threshold == 2 and lax.rules.bounce_threshold == Settings().bounce_burst_threshold
    start = change("contract_started", 0, id="s", email="a@x.de")
    bounces = [delivery(f"m{i}", "bounced", 3600 + i, id=f"b{i}", bounce_type="soft") for i in range(2)]
    for record in [start, *bounces]:
        feed(strict, [record])
        feed(lax, [record])
    strict.flush(0)
    lax.flush(0)
    assert kinds_of(strict.drain()[0]) == [("bounce_burst", "b1")]
    assert kinds_of(lax.drain()[0]) == []
