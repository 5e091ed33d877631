"""Event time as integer microseconds since the Unix epoch, and back to RFC 3339."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)


def to_us(dt: datetime) -> int:
    """Exact integer microseconds of an aware datetime."""
    return (dt - EPOCH) // _ONE_US


def from_us(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


def rfc3339(us: int) -> str:
    """`2026-03-01T08:15:02.120Z`: milliseconds, or microseconds when they are not zero."""
    dt = EPOCH + timedelta(microseconds=us)
    if dt.microsecond % 1000 == 0:
        return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_rfc3339(text: str) -> int:
    """Parse an RFC 3339 timestamp with an offset; raises ValueError otherwise."""
    dt = datetime.fromisoformat(text.upper())
    if dt.tzinfo is None:
        raise ValueError(f"timestamp {text!r} has no time zone")
    return to_us(dt)
