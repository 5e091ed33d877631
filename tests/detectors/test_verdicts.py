"""The recipient rules, one row per case: a history, a mail, the verdict it must get."""

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from detectors.alerts import dedup_key
from detectors.holdings import AddressSet, Holding
from detectors.state import Link
from detectors.verdicts import judge
from tests.factories import change, delivery, feed, kinds_of, mail, new_engine, run

DAY = 86_400
OTHER = "+4917600000002"


def verdict_of(history, notification):
    engine = new_engine()
    feed(engine, [*history, notification])
    engine.flush(0)
    alerts, _, verdicts = engine.drain()
    assert len(verdicts) >= 1
    return verdicts[-1].verdict, alerts


started = change("contract_started", 0, id="s", email="holder@x.de")
CASES = [
    ("current address", [started], mail("holder@x.de", DAY), "ok"),
    ("current address, other case and spaces", [started], mail(" HOLDER@X.DE ", DAY), "ok"),
    ("sms to an active number", [started], mail("+4917612345678", DAY, channel="sms"), "ok"),
    ("no contract ever", [], mail("holder@x.de", DAY), "notification_without_contract"),
    (
        "before the contract started",
        [change("contract_started", 2 * DAY, email="h@x.de")],
        mail("h@x.de", DAY),
        "notification_without_contract",
    ),
    (
        "at the instant the contract ended",
        [started, change("contract_ended", DAY)],
        mail("holder@x.de", DAY),
        "notification_without_contract",
    ),
    (
        "sms after port-out",
        [started, change("ported_out", DAY)],
        mail("+4917612345678", 2 * DAY, channel="sms"),
        "notification_without_contract",
    ),
    (
        "previous holder's address after a recycle",
        [
            started,
            change("contract_ended", DAY),
            change("contract_started", 2 * DAY, contract_id="K-2", customer_id="C-2", email="new@x.de"),
        ],
        mail("holder@x.de", 3 * DAY),
        "recipient_previous_holder",
    ),
    (
        "old holder's address after a holder change",
        [started, change("holder_changed", DAY, customer_id="C-2")],
        mail("holder@x.de", 2 * DAY),
        "recipient_previous_holder",
    ),
    (
        "new holder's own address set later is current",
        [started, change("holder_changed", DAY, customer_id="C-2"), change("email_changed", DAY + 1, email="new@x.de")],
        mail("new@x.de", 2 * DAY),
        "ok",
    ),
    (
        "another customer's address on another number",
        [started, change("contract_started", 0, msisdn=OTHER, customer_id="C-9", email="nine@x.de")],
        mail("nine@x.de", DAY),
        "recipient_other_customer",
    ),
    (
        "another customer's address linked only after the mail",
        [started, change("contract_started", 2 * DAY, msisdn=OTHER, customer_id="C-9", email="nine@x.de")],
        mail("nine@x.de", DAY),
        "recipient_unlinked",
    ),
    (
        "superseded address of the holder",
        [started, change("email_changed", DAY, email="new@x.de")],
        mail("holder@x.de", 2 * DAY),
        "recipient_stale_contract",
    ),
    (
        "mail before the change went to the then-current address (as-of)",
        [started, change("email_changed", 2 * DAY, email="new@x.de")],
        mail("holder@x.de", DAY),
        "ok",
    ),
    (
        "holder's address from her ended contract (brand switch)",
        [
            started,
            change("contract_ended", DAY),
            change("contract_started", DAY, contract_id="K-2", email="second@x.de"),
        ],
        mail("holder@x.de", 2 * DAY),
        "recipient_stale_contract",
    ),
    (
        "holder's address on her other number",
        [started, change("contract_started", 0, msisdn=OTHER, contract_id="K-7", email="work@x.de")],
        mail("work@x.de", DAY),
        "recipient_stale_contract",
    ),
    ("address nobody has", [started], mail("stranger@x.de", DAY), "recipient_unlinked"),
    (
        "an address of the same number's previous holder beats another customer's link",
        [
            started,
            change("contract_started", 0, msisdn=OTHER, customer_id="C-9", email="holder@x.de"),
            change("contract_ended", DAY),
            change("contract_started", DAY, contract_id="K-2", customer_id="C-2", email="new@x.de"),
        ],
        mail("holder@x.de", 2 * DAY),
        "recipient_previous_holder",
    ),
    (
        "another customer beats the holder's own stale link",
        [
            started,
            change("email_changed", DAY, email="new@x.de"),
            change("contract_started", 0, msisdn=OTHER, customer_id="C-9", email="holder@x.de"),
        ],
        mail("holder@x.de", 2 * DAY),
        "recipient_other_customer",
    ),
    (
        "the current address wins even if a previous holder also had it",
        [
            started,
            change("contract_ended", DAY),
            change("contract_started", DAY, contract_id="K-2", customer_id="C-2", email="holder@x.de"),
        ],
        mail("holder@x.de", 2 * DAY),
        "ok",
    ),
]


@pytest.mark.parametrize(("history", "notification", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_recipient_rules(history, notification, expected):
    verdict, alerts = verdict_of(history, notification)
    assert verdict == expected
    recipient_alerts = [a for a in alerts if a.kind.startswith(("recipient", "notification"))]
    if expected == "ok":
        assert recipient_alerts == []
    else:
        assert [a.kind for a in recipient_alerts] == [expected]
        assert recipient_alerts[0].trigger_event_id == notification.event["event_id"]


def test_breach_alert_carries_masked_evidence_and_no_clear_text():
    history = [
        started,
        change("contract_ended", DAY, id="e"),
        change("contract_started", 2 * DAY, id="s2", contract_id="K-2", customer_id="C-2", email="n@x.de"),
    ]
    _, alerts = verdict_of(history, mail("holder@x.de", 3 * DAY, id="n"))
    (alert,) = [a for a in alerts if a.kind == "recipient_previous_holder"]
    assert alert.severity == "critical"
    assert alert.event_ids == ["n", "s2", "s", "e"]
    assert alert.evidence["active"]["contract_id"] == "K-2"
    assert alert.evidence["linked"]["customer_id"] == "C-1"
    assert alert.evidence["linked"]["end"] == "2026-01-02T00:00:00.000Z"
    assert alert.evidence["recipient_masked"] == "h***@x.de"
    text = repr(alert)
    assert "holder@x.de" not in text and "+4917612345678" not in text
    assert alert.subject.msisdn_masked == "+49176******78"
    assert alert.runbook_url == "docs/runbooks/recipient_previous_holder.md"


ADDRESS = "anna.schmidt@gmx.de"


def test_summaries_show_free_text_only_when_it_is_a_name_or_an_id():
    history = [
        change("contract_started", 0, id="s", email="holder@x.de", customer_id=f"C {ADDRESS}"),
        change("contract_ended", DAY, id="e"),
        change("contract_started", 2 * DAY, id="s2", contract_id="K-2", customer_id="C-2", brand=ADDRESS),
    ]
    _, alerts = verdict_of(
        history,
        mail("holder@x.de", 3 * DAY, id="n", sender=f"mailer {ADDRESS}", template=f"Vertrag für {ADDRESS}", brand="o2"),
    )
    (alert,) = [a for a in alerts if a.kind == "recipient_previous_holder"]
    assert ADDRESS not in alert.summary and "anna" not in alert.summary
    assert alert.summary.startswith("o2 (unrecognised template) email for +49176******78 went to h***@x.de")
    assert "customer (unrecognised id)'s o2 contract K-1" in alert.summary
    assert "customer C-2's (unrecognised brand) contract K-2" in alert.summary
    # the structured fields carry the values (capped: detectors.text)
    assert (alert.sender, alert.template) == (f"mailer {ADDRESS}", f"Vertrag für {ADDRESS}")
    assert alert.evidence["active"]["brand"] == ADDRESS


def test_pattern_summaries_show_no_free_text_either():
    records = [
        change("contract_started", 0, id="s", email="holder@x.de"),
        mail("holder@x.de", 10, id="n", message_id="m", template=f"t {ADDRESS}"),
        *(
            delivery(
                "m",
                "bounced",
                20 + i,
                id=f"b{i}",
                bounce_type="hard",
                sender=f"mailer {ADDRESS}",
                smtp_status=f"550 5.1.1 <{ADDRESS}>: no such user",
            )
            for i in range(3)
        ),
    ]
    alerts = {a.kind: a for a in run(records)}
    assert set(alerts) == {"current_address_bouncing", "bounce_burst"}
    for a in alerts.values():
        assert "anna" not in a.summary and a.sender == f"mailer {ADDRESS}"
    assert "(o2, (unrecognised sender))" in alerts["bounce_burst"].summary
    assert "o2 (unrecognised template) mail" in alerts["current_address_bouncing"].summary
    assert "(unrecognised SMTP status)" in alerts["current_address_bouncing"].summary


def test_long_ids_are_capped_in_alerts_and_keep_their_dedup_keys_apart():
    prefix = "n-" + "x" * 400
    _, a1 = verdict_of([started], mail("stranger@x.de", DAY, id=prefix + "1"))
    _, a2 = verdict_of([started], mail("stranger@x.de", DAY, id=prefix + "2"))
    _, a3 = verdict_of([started], mail("stranger@x.de", DAY, id="n-" + "x" * 254))  # 256: not cut
    (first,), (second,), (whole,) = a1, a2, a3
    assert len(first.trigger_event_id) == len(second.trigger_event_id) == 256
    assert first.trigger_event_id.startswith(prefix[:227] + "…[truncated:")
    assert first.dedup_key != second.dedup_key
    assert first.dedup_key == dedup_key("recipient_unlinked", first.trigger_event_id)
    assert whole.trigger_event_id == "n-" + "x" * 254
    digest = hashlib.sha256(("recipient_unlinked\n" + whole.trigger_event_id).encode()).hexdigest()
    assert whole.dedup_key == "recipient_unlinked:" + digest[:20]  # docs/topics.md 2.7, as before


def test_kinds_helper_lists_trigger_pairs():
    _, alerts = verdict_of([], mail("a@b.de", 0, id="n0"))
    assert kinds_of(alerts) == [("notification_without_contract", "n0")]


@pytest.mark.parametrize(
    ("linked", "sent"), [("anna@gmüx.de", "anna@xn--gmx-ioa.de"), ("Anna@XN--GMX-IOA.de", "anna@GMÜX.de")]
)
def test_a_previous_holders_address_in_the_other_idna_spelling_is_still_hers(linked, sent):
    history = [
        change("contract_started", 0, id="s", email=linked),
        change("ported_out", DAY),
        change("ported_in", 2 * DAY, contract_id="K-2", customer_id="C-2", email="ben@x.de"),
    ]
    verdict, alerts = verdict_of(history, mail(sent, 3 * DAY))
    assert verdict == "recipient_previous_holder"
    assert "gmüx" not in str(alerts) and "xn--gmx-ioa" in alerts[-1].evidence["recipient_masked"]


# The links of an address, in any order: a worker merges them from one entry per input partition
# (streams.tablestore.TableLinks), the offline index keeps them in the order they came.
_SAME_SINCE = 5_000_000


@st.composite
def _address_links(draw: st.DrawFn) -> list[Link]:
    n = draw(st.integers(min_value=2, max_value=6))
    links = []
    for i in range(n):
        links.append(
            Link(
                msisdn_ref=f"{i:024x}",
                customer_id=draw(st.sampled_from(["C-holder", "C-other", "C-third"])),
                contract_id=f"K-{i}",
                brand=None,
                # ties on purpose: most links since the same time, some with the same event id
                since=draw(st.sampled_from([_SAME_SINCE, _SAME_SINCE, _SAME_SINCE - 1])),
                since_event_id=draw(st.sampled_from(["e-1", "e-2"])),
                start=1_000_000,
                start_event_id=f"s-{i}",
                end=None,
                end_event_id=None,
            )
        )
    return links


@given(links=_address_links(), data=st.data())
def test_the_verdict_on_an_address_does_not_depend_on_the_order_of_its_links(links, data):
    addr = b"\x01" * 12
    holding = Holding("K-own", "C-holder", None, 0, 0, "start", addresses=[AddressSet(0, b"\x02" * 12, "a")])
    shuffled = data.draw(st.permutations(links))
    first = judge([holding], _SAME_SINCE + 1, "email", addr, links, "own")
    assert judge([holding], _SAME_SINCE + 1, "email", addr, shuffled, "own") == first
    assert first.link is not None  # (a link through another number decided it)
