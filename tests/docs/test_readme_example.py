"""The README's worked example of contract 1.1 corrections ("Late data corrects itself"), as the engine runs it."""

from __future__ import annotations

from detectors.alerts import Alert, final_set
from tests.factories import FILLER_START, Rec, advance, change, feed, mail, new_engine

DAY, H = 86_400, 3_600
X = "+4917611111111"
ANNA = change("contract_started", 0, id="anna", msisdn=X, contract_id="K-A", customer_id="C-ANNA", brand="o2",
              email="anna@gmx.de")  # fmt: skip
# yesterday = day 1; the nightly batch brings the two changes at 02:00 today
EMAIL = change("email_changed", DAY + 11 * H, id="email-1100", msisdn=X, contract_id="K-A", email="anna@web.de")
PORT_OUT = change("ported_out", DAY + 14 * H, id="out-1400", msisdn=X, contract_id="K-A", operator="telekom")
MAILS = [mail("anna@web.de", DAY + h * H, id=f"mail-{h}00", msisdn=X) for h in (12, 18)]


def final(alerts: list[Alert]) -> dict[str, tuple[str, str]]:
    """The final set (detectors.alerts.final_set): dedup_key -> (kind, trigger)."""
    return {key: (a.kind, a.trigger_event_id) for key, a in final_set(alerts).items()}


def in_order(records: list[Rec]) -> list[Alert]:
    engine = new_engine()
    feed(engine, records)
    engine.flush(0)
    return engine.drain()[0]


def test_the_readme_example() -> None:
    engine = new_engine()
    feed(engine, [FILLER_START, ANNA, *MAILS])
    advance(engine, DAY + 26 * H)  # 02:00 today: everything of yesterday judged
    on_time = engine.drain()[0]
    assert [(a.kind, a.trigger_event_id, a.status) for a in on_time] == [
        ("recipient_unlinked", "mail-1200", "firing"),
        ("recipient_unlinked", "mail-1800", "firing"),
    ]
    feed(engine, [EMAIL, PORT_OUT])  # the nightly batch
    at_two = engine.drain()[0]
    assert sorted((a.kind, a.trigger_event_id, a.status, a.late, a.severity) for a in at_two) == [
        ("notification_without_contract", "mail-1800", "firing", True, "critical"),
        ("recipient_unlinked", "mail-1200", "retracted", True, "warning"),
        ("recipient_unlinked", "mail-1800", "retracted", True, "warning"),
    ]
    got = final(on_time + at_two)
    assert list(got.values()) == [("notification_without_contract", "mail-1800")]
    assert got == final(in_order([FILLER_START, ANNA, EMAIL, MAILS[0], PORT_OUT, MAILS[1]]))
