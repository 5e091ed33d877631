"""Event time as integer microseconds since the Unix epoch, and back to RFC 3339."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Final

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)
_DAY_US: Final = 86_400_000_000
_CACHE_MAX: Final = 50_000


def to_us(dt: datetime) -> int:
    """Exact integer microseconds of an aware datetime."""
    return (dt - EPOCH) // _ONE_US


def from_us(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


# The instants RFC 3339 can write (four-digit years, in UTC) and Python's datetime
# can hold: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999Z. An offset can put
# a text that looks in range outside them (`0001-01-01T00:00:00+00:01`).
MIN_US: Final = to_us(datetime(1, 1, 1, tzinfo=UTC))
MAX_US: Final = to_us(datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC))


# Day prefixes `2026-03-01T` by day number since the epoch (the costly part of formatting).
_DAYS: dict[int, str] = {}


def rfc3339(us: int) -> str:
    """`2026-03-01T08:15:02.120Z`: milliseconds, or microseconds when they are not zero."""
    day, rest = divmod(us, _DAY_US)
    prefix = _DAYS.get(day)
    if prefix is None:
        if len(_DAYS) >= _CACHE_MAX:
            _DAYS.clear()
        date = EPOCH + timedelta(days=day)  # (strftime's %Y has no leading zeros before 1000)
        prefix = _DAYS[day] = f"{date.year:04d}-{date.month:02d}-{date.day:02d}T"
    seconds, micro = divmod(rest, 1_000_000)
    minutes, second = divmod(seconds, 60)
    hour, minute = divmod(minutes, 60)
    if micro % 1000 == 0:
        return f"{prefix}{hour:02d}:{minute:02d}:{second:02d}.{micro // 1000:03d}Z"
    return f"{prefix}{hour:02d}:{minute:02d}:{second:02d}.{micro:06d}Z"


def parse_rfc3339(text: str) -> int:
    """Parse an RFC 3339 timestamp with an offset; raises ValueError otherwise.

    Also for an instant outside years 0001-9999 in UTC (MIN_US, MAX_US), which rfc3339 could not write.
    """
    dt = datetime.fromisoformat(text.upper())
    if dt.tzinfo is None:
        raise ValueError(f"timestamp {text!r} has no time zone")
    us = to_us(dt)
    if us < MIN_US or us > MAX_US:
        raise ValueError(f"timestamp {text!r} is outside years 0001-9999 in UTC")
    return us


# Parts of the common form, each checked once and cached with its value in µs:
# `2026-03-01T08` (a real hour), `:15:02` (minutes and seconds), `.120Z`.
_HOURS: dict[str, int] = {}
_MINSEC: dict[str, int] = {}
_FRACTIONS: dict[str, int] = {}
_DIGITS: Final = frozenset("0123456789")


def parse_common(text: str) -> int | None:
    """The common form `YYYY-MM-DDTHH:MM:SS.fffZ`, checked and parsed quickly; None for any other text.

    A result is exactly what parse_rfc3339 gives, and the text then matches
    detectors.records.EVENT_TIME_PATTERN; anything else (other forms, offsets,
    invalid text) is None and left to the strict path.
    """
    if len(text) != 24:
        return None
    hour = _HOURS.get(text[:13])
    if hour is None:
        hour = _hour(text[:13])
        if hour is None:
            return None
    minsec = _MINSEC.get(text[13:19])
    if minsec is None:
        minsec = _minsec(text[13:19])
        if minsec is None:
            return None
    fraction = _FRACTIONS.get(text[19:])
    if fraction is None:
        fraction = _fraction(text[19:])
        if fraction is None:
            return None
    return hour + minsec + fraction


def _digits(text: str, *positions: int) -> bool:
    return all(text[i] in _DIGITS for i in positions)


def _hour(prefix: str) -> int | None:
    """`YYYY-MM-DDTHH` (T or t) as µs, cached; None when it is not that or not a real hour."""
    if not (
        prefix[4] == "-" and prefix[7] == "-" and prefix[10] in "Tt" and _digits(prefix, 0, 1, 2, 3, 5, 6, 8, 9, 11, 12)
    ):
        return None
    try:
        us = parse_rfc3339(prefix + ":00:00Z")
    except (ValueError, OverflowError):
        return None
    if len(_HOURS) >= _CACHE_MAX:
        _HOURS.clear()
    _HOURS[prefix] = us
    return us


def _minsec(part: str) -> int | None:
    """`:MM:SS` as µs (at most 3,600 of them), cached; None when it is not that."""
    if not (part[0] == ":" and part[3] == ":" and _digits(part, 1, 2, 4, 5) and part[1] < "6" and part[4] < "6"):
        return None
    us = _MINSEC[part] = (int(part[1:3]) * 60 + int(part[4:6])) * 1_000_000
    return us


def _fraction(part: str) -> int | None:
    """`.fffZ` (Z or z) as µs (at most 2,000 of them), cached; None when it is not that."""
    if not (part[0] == "." and part[4] in "Zz" and _digits(part, 1, 2, 3)):
        return None
    us = _FRACTIONS[part] = int(part[1:4]) * 1000
    return us
