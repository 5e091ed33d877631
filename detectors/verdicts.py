"""The recipient verdict: one notification judged against its number's state as of its event time."""

from __future__ import annotations

from dataclasses import dataclass

from detectors import kinds
from detectors.holdings import Holding
from detectors.state import Link


@dataclass(frozen=True, slots=True)
class Verdict:
    kind: str  # kinds.OK or a recipient kind
    active: Holding | None = None
    # The evidence the recipient belongs elsewhere: a holding on this number
    # (with the AddressSet that linked it) or a link through another number.
    holding: Holding | None = None
    link: Link | None = None
    since_event_id: str | None = None
    since: int | None = None


def judge(
    holdings: list[Holding],
    t: int,
    channel: str,
    addr: bytes | None,
    links: list[Link],
    own_ref: str,
    history_us: int | None = None,
) -> Verdict:
    """Decide one notification; the first matching row of the contract's table wins.

    `history_us` (settings.history_retention_s): holdings and links that ended
    longer than that before `t` are forgotten, so the verdict is the same
    whether or not a sweep (detectors.expiry) has dropped them from state yet.
    """
    oldest = t - history_us if history_us is not None else None
    active = None
    for h in reversed(holdings):  # active_at(holdings, t), inlined: once per notification
        if h.start <= t and (h.end is None or h.end > t):
            active = h
            break
    if active is None:
        return Verdict(kinds.NOTIFICATION_WITHOUT_CONTRACT, holding=_last_ended(holdings, t, oldest))
    if channel != "email" or addr is None:
        return Verdict(kinds.OK, active)
    current = None
    for a in active.addresses:  # active.current_address(t), inlined
        if a.t > t:
            break
        current = a.addr
    if current == addr:
        return Verdict(kinds.OK, active)
    customer = active.customer_id

    # Earlier holdings on this number whose customer is not the active holder.
    for h in reversed(holdings):
        if h is active or h.start > t or h.customer_id == customer or _forgotten(h.end, oldest):
            continue
        hit = h.linked_since(addr, t)
        if hit is not None:
            return Verdict(kinds.RECIPIENT_PREVIOUS_HOLDER, active, h, None, hit.event_id, hit.t)

    # Other numbers: another customer first, then the active holder's own.
    own_link: Link | None = None
    other: Link | None = None
    for link in links:
        if link.since > t or link.msisdn_ref == own_ref or _forgotten(link.end, oldest):
            continue
        if link.customer_id != customer:
            if other is None or link.since > other.since or (link.since == other.since and _after(link, other)):
                other = link
        elif (
            own_link is None or link.since > own_link.since or (link.since == own_link.since and _after(link, own_link))
        ):
            own_link = link
    if other is not None:
        return Verdict(kinds.RECIPIENT_OTHER_CUSTOMER, active, None, other, other.since_event_id, other.since)

    for h in reversed(holdings):
        if h.start > t or h.customer_id != customer or _forgotten(h.end, oldest):
            continue
        hit = h.linked_since(addr, t)
        if hit is not None:
            return Verdict(kinds.RECIPIENT_STALE_CONTRACT, active, h, None, hit.event_id, hit.t)
    if own_link is not None:
        return Verdict(
            kinds.RECIPIENT_STALE_CONTRACT,
            active,
            None,
            own_link,
            own_link.since_event_id,
            own_link.since,
        )
    return Verdict(kinds.RECIPIENT_UNLINKED, active)


def _after(a: Link, b: Link) -> bool:
    """Between two links of an address linked since the same time: the one judge picks, whatever
    their order in the list (a worker merges an address's links from one entry per input
    partition, the offline index keeps them as they came): the later event id, then the greater
    identity (unique among an address's links, AddressIndex)."""
    return (a.since_event_id, a.identity()) > (b.since_event_id, b.identity())


def _forgotten(end: int | None, oldest: int | None) -> bool:
    """Ended before the history retention reaches back (see judge)."""
    return end is not None and oldest is not None and end < oldest


def _last_ended(holdings: list[Holding], t: int, oldest: int | None) -> Holding | None:
    best: Holding | None = None
    for h in holdings:
        if h.end is not None and h.end <= t and (best is None or h.end >= (best.end or 0)):
            best = h
    return None if best is None or _forgotten(best.end, oldest) else best
