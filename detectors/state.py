"""Explicit, serialisable state: per number, and the cross-number address index."""

from __future__ import annotations

from bisect import insort
from collections.abc import Iterable
from typing import Any, Final, Protocol, runtime_checkable

import msgspec

from detectors.holdings import Change


class Mark(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """An event counted somewhere: its event time and id."""

    t: int
    event_id: str


class Sent(msgspec.Struct, array_like=True, gc=False):
    """An e-mail notification remembered until its delivery outcome can no longer come."""

    t: int
    message_id: str
    event_id: str
    to_current: bool  # sent to the current address of the holding active then
    template: str
    alerted: bool = False


class Past(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """A notification or a bounce applied to a number, kept for the correction horizon (contract 1.1,
    "Late contract changes"): what re-judging the number's verdicts (Engine._rejudge) needs of it,
    and no clear text: the recipient as its keyed hash and its mask.

    Ordered like the grace buffer releases records: (t, category, event_id).
    """

    t: int
    category: int  # detectors.arrival.NOTIFICATION or DELIVERY (a bounce)
    event_id: str
    message_id: str
    brand: str
    sender: str
    to_ref: bytes  # the recipient's keyed hash: an address's (e-mail), a number's msisdn_ref bytes (sms)
    to_masked: str
    channel: str  # notification: "email" or "sms"; bounce: its bounce_type, "" for none
    text: str | None = None  # notification: template; bounce: smtp_status
    contract_id: str | None = None
    customer_id: str | None = None


class Fired(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """An alert raised for a number and not retracted, kept for the correction horizon: what a
    re-judging compares its verdicts with (kind: an index into detectors.kinds.KINDS)."""

    t: int
    kind: int
    trigger_event_id: str


class NumberState(msgspec.Struct, array_like=True):
    """Everything notifguard keeps about one number (keyed by its msisdn_ref)."""

    changes: list[Change] = msgspec.field(default_factory=list)
    sent: list[Sent] = msgspec.field(default_factory=list)
    bounces: list[Mark] = msgspec.field(default_factory=list)
    bounce_hot: bool = False
    ports: list[Mark] = msgspec.field(default_factory=list)
    port_hot: bool = False
    seen: list[Mark] = msgspec.field(default_factory=list)
    max_t: int = 0  # newest event time seen for the number, for pruning
    # contract 1.1, late records within the correction horizon (Engine._rejudge): the number's
    # notifications and bounces, the alerts raised for it, and its masked number (for their wording)
    past: list[Past] = msgspec.field(default_factory=list)
    fired: list[Fired] = msgspec.field(default_factory=list)
    masked: str = ""
    # address events dropped in order as restating their holding's current address (Engine._change),
    # kept for the correction horizon: a late change before one can make it count again
    restated: list[Change] = msgspec.field(default_factory=list)
    # the event time of the newest entry the budgets cut from past or fired, or a sweep expired
    # from fired (detectors.expiry cap_past, cap_fired, expire), None once more than the horizon
    # behind max_t: re-judging starts after it, as what was raised before it can no longer be
    # compared with its mails judged again
    cut: int | None = None

    def add_change(self, change: Change) -> None:
        insort(self.changes, change, key=Change.sort_key)


class Link(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """An address linked to a customer through one holding on one number."""

    msisdn_ref: str
    customer_id: str
    contract_id: str
    brand: str | None
    since: int  # when the address first became current in the holding
    since_event_id: str
    start: int
    start_event_id: str
    end: int | None
    end_event_id: str | None
    # how the holding ended (detectors.holdings.TYPE_NAMES code: ported_out, contract_ended, ...), None
    # while open, and in links stored before it was kept (they say `end` only): one byte when ended
    end_type: int | None = None

    def identity(self) -> tuple[str, str, str, int]:
        return (self.msisdn_ref, self.contract_id, self.customer_id, self.start)


class LinkTable(Protocol):
    """What AddressIndex needs of its addr -> links mapping: a dict, or the worker's table (TableLinks)."""

    def get(self, addr: bytes, default: Any = ..., /) -> Any: ...
    def setdefault(self, addr: bytes, default: list[Link], /) -> list[Link]: ...
    def __setitem__(self, addr: bytes, links: list[Link], /) -> None: ...
    def __delitem__(self, addr: bytes, /) -> None: ...
    def __len__(self) -> int: ...
    def items(self) -> Iterable[tuple[bytes, list[Link]]]: ...


@runtime_checkable
class PartitionedLinks(LinkTable, Protocol):
    """A LinkTable that keeps each number's links of an address with the input partition of the
    number (the worker's table: one writer per partition, docs/topics.md 2.6a). AddressIndex.replace
    tells it, before it changes the links of an address, whose links they are and of which
    partition; the rest of the address's links stay as they are (they are other numbers')."""

    def own(self, addr: bytes, msisdn_ref: str, partition: int, /) -> None: ...


class AddressIndex:
    """Which customers each address (keyed hash) is linked to, across numbers.

    A plain mapping addr -> links behind a small API, so the Kafka worker can
    hold it in a table instead of one dict (a PartitionedLinks: each number's links kept with
    its input partition). The order of an address's links is no rule's input
    (detectors.verdicts.judge picks among them by a total order), so a table may merge them in
    its own order.
    """

    __slots__ = ("_links", "_own")

    def __init__(self, links: LinkTable | None = None) -> None:
        self._links: LinkTable = links if links is not None else {}
        self._own = links.own if isinstance(links, PartitionedLinks) else None

    def get(self, addr: bytes) -> list[Link]:
        links: list[Link] = self._links.get(addr, _EMPTY)
        return links

    def replace(
        self, msisdn_ref: str, old: list[tuple[bytes, Link]], new: list[tuple[bytes, Link]], partition: int = -1
    ) -> None:
        """Swap one number's links: drop those it no longer has, upsert the rest. `partition`: the
        number's input partition (a PartitionedLinks table is told it; -1: unknown, for a dict).

        Addresses whose links are exactly as before are left alone (upserting them
        again would give the same list), so a change touches only what it changes: only the
        links of `msisdn_ref`, whatever other numbers' links the address has.
        """
        if old == new:
            return
        old_by = _by_address(old)
        new_by = _by_address(new)
        own = self._own
        for addr, links in old_by.items():
            kept = new_by.get(addr)
            if kept == links:
                continue
            if own is not None:
                own(addr, msisdn_ref, partition)
            new_ids = {link.identity() for link in kept} if kept else set()
            for link in links:
                ident = link.identity()
                if ident not in new_ids:
                    self._remove(addr, ident)
        for addr, links in new_by.items():
            if old_by.get(addr) == links:
                continue
            if own is not None:
                own(addr, msisdn_ref, partition)
            for link in links:
                self._upsert(addr, link)

    def _remove(self, addr: bytes, identity: tuple[str, str, str, int]) -> None:
        links = self._links.get(addr)
        if links is None:
            return
        kept = [x for x in links if x.identity() != identity]
        if kept:
            self._links[addr] = kept
        else:
            del self._links[addr]

    def _upsert(self, addr: bytes, link: Link) -> None:
        links = self._links.setdefault(addr, [])
        ident = link.identity()
        for i, x in enumerate(links):
            if x.identity() == ident:
                links[i] = link
                return
        links.append(link)

    def __len__(self) -> int:
        return len(self._links)

    def items(self) -> list[tuple[bytes, list[Link]]]:
        return list(self._links.items())


_EMPTY: Final[list[Link]] = []


def _by_address(pairs: list[tuple[bytes, Link]]) -> dict[bytes, list[Link]]:
    out: dict[bytes, list[Link]] = {}
    for addr, link in pairs:
        links = out.get(addr)
        if links is None:
            out[addr] = [link]
        else:
            links.append(link)
    return out
