"""Free text: caps that never change a value within them, and what of it may be shown."""

from __future__ import annotations

import hashlib

from hypothesis import given
from hypothesis import strategies as st

from detectors.text import (
    ID_MAX,
    NAME_MAX,
    cap_id,
    cap_name,
    cap_text,
    is_name,
    shown_id,
    shown_name,
    shown_smtp_status,
)


@given(st.text(max_size=600))
def test_an_id_is_capped_at_its_limit_and_unchanged_within_it(value):
    capped = cap_id(value)
    assert len(capped) <= ID_MAX
    assert (capped == value) == (len(value) <= ID_MAX)
    assert cap_id(capped) == capped


def test_a_long_id_keeps_a_prefix_and_a_hash_of_the_whole():
    value = "E-" + "x" * 500
    capped = cap_id(value)
    digest = hashlib.sha256(value.encode()).hexdigest()[:16]
    assert capped == value[:227] + f"…[truncated:{digest}]" and len(capped) == ID_MAX
    assert cap_id(value + "y") != capped  # same prefix, another id


@given(st.text(max_size=300))
def test_a_name_is_capped_at_its_limit_and_unchanged_within_it(value):
    capped = cap_name(value)
    assert len(capped) <= NAME_MAX
    assert (capped == value) == (len(value) <= NAME_MAX)
    if capped != value:
        assert capped == value[:116] + "…[truncated]"


def test_other_text_is_capped_at_any_limit():
    assert cap_text("abc", 3) == "abc"
    assert cap_text("x" * 2000, 1000) == "x" * 988 + "…[truncated]"


def test_only_names_and_ids_are_shown():
    assert [is_name(v) for v in ("crm-mailer", "O2", "cancellation_confirmation", "5.1.1")] == [True] * 4
    for value in ("mailer anna.schmidt@gmx.de", "anna@gmx.de", "", "-x", "x" * 65, "crm\nmailer", "ｃｒｍ"):
        assert not is_name(value), value
        assert shown_name(value, "sender") == "(unrecognised sender)"
    assert shown_name("crm-mailer", "sender") == "crm-mailer"
    assert shown_name(None, "brand") == "(unrecognised brand)"
    assert [shown_id(v) for v in ("K-29296629", "C-0140516", "urn:contract:7", "K 1", None)] == [
        "K-29296629",
        "C-0140516",
        "urn:contract:7",
        "(unrecognised id)",
        "(unrecognised id)",
    ]
    assert [shown_smtp_status(v) for v in ("5.1.1", "4.2.2", None, "550 5.1.1 <anna@gmx.de>: unknown")] == [
        "5.1.1",
        "4.2.2",
        "no SMTP status",
        "unrecognised SMTP status",
    ]
