"""Event-time formatting and parsing: the fast paths agree with the datetime-based reference."""

import re
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detectors.records import EVENT_TIME_PATTERN
from detectors.timefmt import parse_common, parse_rfc3339, rfc3339

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# years 1000-9999: where strftime's %Y has four digits
LO, HI = -30610224000 * 10**6, 253402300799 * 10**6
# years 0001-0999
FIRST, LAST = -62135596800 * 10**6, -30610224000 * 10**6 - 1


def reference(us: int) -> str:
    dt = EPOCH + timedelta(microseconds=us)
    if dt.microsecond % 1000 == 0:
        return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@settings(max_examples=500, deadline=None)
@given(st.integers(LO, HI), st.booleans())
def test_rfc3339_matches_strftime_and_parses_back(us, whole_ms):
    if whole_ms:
        us -= us % 1000
    text = rfc3339(us)
    assert text == reference(us)
    assert parse_rfc3339(text) == us
    if whole_ms:
        assert parse_common(text) == us
        assert parse_common(text.lower()) == us


@settings(max_examples=1000, deadline=None)
@given(
    st.integers(0, 4102444800 * 10**6),
    st.lists(st.tuples(st.integers(0, 23), st.sampled_from("0123456789-:.TtZz+ x\u0663\u00b2")), max_size=3),
)
def test_parse_common_is_exact_or_declines(us, edits):
    chars = list(rfc3339(us - us % 1000))
    for i, c in edits:
        chars[i] = c
    text = "".join(chars)
    fast = parse_common(text)
    if fast is not None:  # only for text the contract's pattern accepts, and then exactly
        assert re.search(EVENT_TIME_PATTERN, text)
        assert fast == parse_rfc3339(text)


def test_parse_common_declines_other_forms():
    for text in [
        "2026-03-01T08:15:02Z",
        "2026-03-01T08:15:02.120+00:00",
        "2026-03-01T08:15:02.120456Z",
        "2026-02-29T08:15:02.120Z",
        "2026-03-01T24:15:02.120Z",
        "2026-03-01T08:60:02.120Z",
        "2026-03-01T08:15:60.120Z",
        "2026-03-01 08:15:02.120Z",
        "",
    ]:
        assert parse_common(text) is None, text


def test_instants_outside_years_0001_to_9999_in_utc_are_refused():
    # accepted by the contract's pattern, but the UTC instant has no four-digit year
    for text in ["0001-01-01T00:00:00.000+00:01", "9999-12-31T23:59:59.000-00:01", "0001-01-01T00:59:59+01:00"]:
        with pytest.raises(ValueError, match="0001-9999"):
            parse_rfc3339(text)
    # the edges themselves are instants, and format back
    for text, formatted in [
        ("0001-01-01T00:00:00Z", "0001-01-01T00:00:00.000Z"),
        ("0001-01-01T00:01:00+00:01", "0001-01-01T00:00:00.000Z"),
        ("9999-12-31T23:59:59.999999Z", "9999-12-31T23:59:59.999999Z"),
        ("9999-12-31T23:58:59.999-00:01", "9999-12-31T23:59:59.999Z"),
    ]:
        assert rfc3339(parse_rfc3339(text)) == formatted
    assert parse_common("0001-01-01T00:00:00.000Z") == parse_rfc3339("0001-01-01T00:00:00Z")
    assert parse_common("9999-12-31T23:59:59.999Z") == parse_rfc3339("9999-12-31T23:59:59.999Z")


@settings(max_examples=300, deadline=None)
@given(st.integers(FIRST, LAST), st.booleans())
def test_years_below_1000_have_four_digits(us, whole_ms):
    if whole_ms:
        us -= us % 1000
    text = rfc3339(us)
    assert re.fullmatch(EVENT_TIME_PATTERN, text)
    assert parse_rfc3339(text) == us
