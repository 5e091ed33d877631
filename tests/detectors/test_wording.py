"""Alert wording: what a summary may show of the input, and whose settings it speaks of."""

from __future__ import annotations

import dataclasses
import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from detectors import kinds
from detectors.holdings import CONTRACT_STARTED, PORTED_IN, PORTED_OUT, Holding
from detectors.privacy import Pseudonymiser
from detectors.records import Delivery, Outbound, PortedIn
from detectors.settings import Settings
from detectors.state import Link, Mark, Sent
from detectors.verdicts import Verdict
from detectors.wording import Wording, contract_words, masked_recipient

DAY = 86_400_000_000
NUMBER = "+4917612345678"
# Free text that must never reach a summary: addresses, numbers, sentences, markup, long values.
HOSTILE = st.sampled_from(
    ["anna.schmidt@gmx.de", "call +4917699887766", "Mr Anna Schmidt", "<b>x</b>", "a\nb", "x" * 70, "ｏ２"]
)


def wording(settings: Settings | None = None) -> Wording:
    counter = itertools.count()
    return Wording(settings or Settings(), Pseudonymiser(b"k"), lambda: f"a{next(counter)}")


def holding(customer: str, contract: str, brand: str, end: int | None = None) -> Holding:
    return Holding(contract, customer, brand, 0, CONTRACT_STARTED, "s", end, None if end is None else PORTED_OUT,
                   None if end is None else "o")  # fmt: skip


def summaries(text: str) -> list[str]:
    """Every kind's summary, with `text` in every free-text field of the input it quotes."""
    w = wording()
    mail = Outbound(1, "n1", "2026-01-01T00:00:00.000Z", NUMBER, text, text, "email", "secret.local@example.com",
                    text, text, text, text)  # fmt: skip
    theirs = holding(text, text, text, DAY)
    mine = holding(text, text, text)
    link = Link("ref", text, text, text, 0, "l", 0, "l", None, None)
    verdicts = [
        Verdict(kinds.NOTIFICATION_WITHOUT_CONTRACT, holding=theirs),
        Verdict(kinds.NOTIFICATION_WITHOUT_CONTRACT),
        Verdict(kinds.RECIPIENT_PREVIOUS_HOLDER, mine, theirs, None, "s", 0),
        Verdict(kinds.RECIPIENT_OTHER_CUSTOMER, mine, None, link, "l", 0),
        Verdict(kinds.RECIPIENT_STALE_CONTRACT, mine, theirs, None, "s", 0),
        Verdict(kinds.RECIPIENT_UNLINKED, mine),
    ]
    alerts = [w.recipient(2 * DAY, 3 * DAY, mail, "ref", b"a" * 12, v, False) for v in verdicts]
    port = PortedIn(1, "p1", "2026-01-01T00:00:00.000Z", NUMBER, text, text, text, text, "x@example.com")
    started = Holding(text, text, text, 2 * DAY, PORTED_IN, "p1")
    alerts.append(w.re_port(2 * DAY, 3 * DAY, port, "ref", started, theirs, False))
    alerts.append(w.port_flapping(2 * DAY, 3 * DAY, port, "ref", [Mark(DAY, "o"), Mark(2 * DAY, "p1")], False))
    bounced = Delivery(1, "b1", "2026-01-01T00:00:00.000Z", NUMBER, text, "secret.local@example.com", "bounced",
                       text, text, "hard", text)  # fmt: skip
    alerts.append(w.bounce_burst(2 * DAY, 3 * DAY, bounced, "ref", [Mark(2 * DAY, "b1")], False))
    alerts.append(w.bouncing(2 * DAY, 3 * DAY, bounced, "ref", Sent(DAY, text, "n1", True, text), False))
    assert sorted({a.kind for a in alerts}) == sorted(kinds.KINDS)
    return [a.summary for a in alerts]


@settings(max_examples=20, deadline=None)
@given(HOSTILE)
def test_a_summary_never_shows_free_text_of_the_input(text):
    """Brands, templates, senders, ids and SMTP statuses that are not names or ids of the contract's
    form are fixed words in a summary; a number or an address's local part is masked."""
    for summary in summaries(text):
        assert text not in summary, summary
        assert "secret" not in summary and "12345" not in summary, summary


def test_names_and_ids_of_the_contract_s_form_are_shown():
    summary = summaries("K-1")[2]
    assert summary == (
        "K-1 K-1 email for +49176******78 went to s***@example.com, an address of the number's previous holder: "
        "customer K-1's K-1 contract K-1 (ended 1970-01-02); the number is now customer K-1's K-1 contract K-1"
    )


def test_masks_and_contract_words():
    assert masked_recipient("Anna.Schmidt@GMX.de", "email") == "a***@gmx.de"
    assert masked_recipient(NUMBER, "sms") == "+49176******78"
    assert contract_words("C-1", "o2", "K-1") == "customer C-1's o2 contract K-1"
    assert contract_words("C 1", None, "anna@x.de") == (
        "customer (unrecognised id)'s (unrecognised brand) contract (unrecognised id)"
    )


def test_each_wording_speaks_of_its_own_settings():
    short = dataclasses.replace(Settings(), runbook_base_url="https://runbooks/", bounce_burst_window_s=7200,
                                port_flapping_window_s=2 * 86_400)  # fmt: skip
    bounced = Delivery(1, "b1", "2026-01-01T00:00:00.000Z", NUMBER, "m", "x@example.com", "bounced", "o2", "crm")
    port = PortedIn(1, "p1", "2026-01-01T00:00:00.000Z", NUMBER, "K-1", "C-1", "o2", "op")
    window = [Mark(0, "b0"), Mark(1, "b1")]
    a, b = wording(short), wording()
    assert a.bounce_burst(1, 1, bounced, "r", window, False).summary.startswith("2 bounces within 2 h ")
    assert b.bounce_burst(1, 1, bounced, "r", window, False).summary.startswith("2 bounces within 24 h ")
    assert a.port_flapping(1, 1, port, "r", window, False).summary.startswith("2 port events within 2 days ")
    assert a.bounce_burst(1, 1, bounced, "r", window, False).runbook_url == "https://runbooks/bounce_burst.md"
    assert b.bounce_burst(1, 1, bounced, "r", window, False).runbook_url == "docs/runbooks/bounce_burst.md"
    assert [a.bounce_burst(1, 1, bounced, "r", window, False).alert_id for _ in range(2)] == ["a3", "a4"]
