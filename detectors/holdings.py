"""A number's contract history: the change log kept in state, and the holdings derived from it.

State keeps only the sorted log of contract changes (small, order-independent
to build); holdings with their time ranges and address histories are derived
from it, so a change that arrives out of order just lands in its place.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable
from operator import attrgetter
from typing import Final

import msgspec

# Change types, in their tie order at one event_time: ends, then starts, then
# address events (documented in docs/topics.md), so that an end and the next
# start at the same instant, or a holder change and the new holder's address,
# give one result whatever their arrival order.
CONTRACT_ENDED: Final = 0
PORTED_OUT: Final = 1
HOLDER_CHANGED: Final = 2
CONTRACT_STARTED: Final = 3
PORTED_IN: Final = 4
EMAIL_CHANGED: Final = 5
EMAIL_VERIFIED: Final = 6
SUPERSEDED: Final = 7  # an end only: a new start closed a holding left open

TYPE_NAMES: Final = (
    "contract_ended",
    "ported_out",
    "holder_changed",
    "contract_started",
    "ported_in",
    "email_changed",
    "email_verified",
    "superseded",
)
TYPE_CODES: Final = {name: code for code, name in enumerate(TYPE_NAMES)}
STARTS: Final = frozenset({CONTRACT_STARTED, PORTED_IN})
PORTS: Final = frozenset({PORTED_IN, PORTED_OUT})
REAL_ENDS: Final = frozenset({CONTRACT_ENDED, PORTED_OUT})
ADDRESS_EVENTS: Final = frozenset({EMAIL_CHANGED, EMAIL_VERIFIED})


class Change(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """One contract change of a number, as kept in state (no clear-text address)."""

    t: int
    type: int
    event_id: str
    contract_id: str
    customer_id: str | None = None
    brand: str | None = None
    addr: bytes | None = None  # keyed hash of the normalised address

    def sort_key(self) -> tuple[int, int, str]:
        return (self.t, self.type, self.event_id)


class AddressSet(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """An address became the holding's current one at `t` through `event_id`."""

    t: int
    addr: bytes
    event_id: str


_T: Final = attrgetter("t")


class Holding(msgspec.Struct):
    """One customer holding one contract on the number over [start, end)."""

    contract_id: str
    customer_id: str
    brand: str | None
    start: int
    start_type: int
    start_event_id: str
    end: int | None = None
    end_type: int | None = None
    end_event_id: str | None = None
    addresses: list[AddressSet] = msgspec.field(default_factory=list)

    def active_at(self, t: int) -> bool:
        return self.start <= t and (self.end is None or self.end > t)

    def current_address(self, t: int) -> bytes | None:
        """The address current at t: the last one set at or before t (addresses are in event-time order)."""
        addresses = self.addresses
        if not addresses:
            return None
        if addresses[-1].t <= t:  # the latest one (the common case: t is not before it)
            return addresses[-1].addr
        i = bisect_right(addresses, t, key=_T)
        return addresses[i - 1].addr if i else None

    def linked_since(self, addr: bytes, t: int) -> AddressSet | None:
        """The first time `addr` became current in this holding, if at or before t."""
        for a in self.addresses:
            if a.t > t:
                return None
            if a.addr == addr:
                return a
        return None

    def describe(self) -> dict[str, object]:
        from detectors.timefmt import rfc3339

        return {
            "contract_id": self.contract_id,
            "customer_id": self.customer_id,
            "brand": self.brand,
            "start": rfc3339(self.start),
            "start_type": TYPE_NAMES[self.start_type],
            "start_event_id": self.start_event_id,
            "end": None if self.end is None else rfc3339(self.end),
            "end_type": None if self.end_type is None else TYPE_NAMES[self.end_type],
            "end_event_id": self.end_event_id,
        }


# What a step of the fold (`fold`) did to the holdings.
UNCHANGED: Final = 0  # the change applied to nothing
ADDRESS: Final = 1  # the open last holding got an address: its addresses[-1]
CLOSED: Final = 2  # the open last holding was closed (then maybe a holding appended)
STARTED: Final = 3  # a holding appended; the last one before it (if any) unchanged (it had ended)


def fold(holdings: list[Holding], changes: Iterable[Change]) -> int:
    """derive's fold, in place: `holdings` = derive(log) becomes derive(log + changes),
    for changes that sort after the log, in order. Returns what the last step did.

    A step touches only the last holding (closed, or one address appended) and
    the end of the list, whatever the number's history: folding one more change
    costs the same at the 10,000th change as at the first.
    """
    did = UNCHANGED
    current = holdings[-1] if holdings else None
    if current is not None and current.end is not None:
        current = None  # the last holding has ended: none is open
    for ch in changes:
        kind = ch.type
        if kind in STARTS:
            did = STARTED
            if current is not None:
                _close(current, ch.t, SUPERSEDED, ch.event_id)
                did = CLOSED
            current = Holding(ch.contract_id, ch.customer_id or "", ch.brand, ch.t, kind, ch.event_id)
            if ch.addr is not None:
                current.addresses.append(AddressSet(ch.t, ch.addr, ch.event_id))
            holdings.append(current)
        elif current is None or current.contract_id != ch.contract_id:
            did = UNCHANGED  # a change for a contract not on the number then: nothing to apply
        elif kind in (CONTRACT_ENDED, PORTED_OUT):
            _close(current, ch.t, kind, ch.event_id)
            current = None
            did = CLOSED
        elif kind == HOLDER_CHANGED:
            _close(current, ch.t, kind, ch.event_id)
            current = Holding(ch.contract_id, ch.customer_id or "", current.brand, ch.t, kind, ch.event_id)
            holdings.append(current)
            did = CLOSED
        elif ch.addr is not None:  # EMAIL_CHANGED, EMAIL_VERIFIED
            current.addresses.append(AddressSet(ch.t, ch.addr, ch.event_id))
            did = ADDRESS
        else:
            did = UNCHANGED
    return did


def derive(changes: list[Change]) -> list[Holding]:
    """Fold the sorted change log into holdings, oldest first."""
    holdings: list[Holding] = []
    fold(holdings, changes)
    return holdings


def derive_next(holdings: list[Holding], ch: Change) -> list[Holding]:
    """derive(changes + [ch]) from holdings = derive(changes), for a change that sorts last.

    `fold`, copy-on-write: `holdings` and its holdings are left as they are; the
    result shares the holdings it does not change (and is `holdings` itself when
    the change applies to nothing). It copies the open last holding's addresses:
    a caller that owns its holdings folds in place instead (the engine does).
    """
    out = holdings[:]
    last = holdings[-1] if holdings else None
    if last is not None and last.end is None:
        out[-1] = _copy(last)  # the one holding fold may change
    if fold(out, (ch,)) == UNCHANGED:
        return holdings
    return out


def _copy(h: Holding) -> Holding:
    return Holding(
        h.contract_id,
        h.customer_id,
        h.brand,
        h.start,
        h.start_type,
        h.start_event_id,
        h.end,
        h.end_type,
        h.end_event_id,
        list(h.addresses),
    )


def _close(h: Holding, t: int, kind: int, event_id: str) -> None:
    h.end, h.end_type, h.end_event_id = t, kind, event_id


def active_at(holdings: list[Holding], t: int) -> Holding | None:
    for h in reversed(holdings):
        if h.active_at(t):
            return h
    return None
