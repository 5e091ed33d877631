"""Expiry: what a number's state may forget once event time has moved past every use of it.

A number's state is otherwise pruned only when the number itself has a new
record, so a number that goes quiet would keep its last sent mails, seen event
ids and pattern marks for ever, and every number would keep its whole contract
history. A sweep, driven by the watermark, drops:

- seen event ids older than `dedup_retention_s`;
- sent mails older than `delivery_correlation_s` (a bounce matches a mail only
  within that span, see Engine._delivery, so the sweep changes no verdict);
- bounce and port marks that no later window can hold;
- the oldest holdings of the change log, once they and everything before them
  ended longer than `history_retention_s` ago (data minimisation).

`now` is an event time no later record on time can precede: the lowest
partition watermark less grace. Every horizon is relative to it, so whenever a
sweep runs, it drops only what no record on time could still use; a late record
(after grace) is judged against the state as it is, as it always is.
"""

from __future__ import annotations

from dataclasses import dataclass

from detectors.holdings import HOLDER_CHANGED, STARTS, Change
from detectors.settings import Settings
from detectors.state import NumberState


@dataclass(frozen=True, slots=True)
class Horizons:
    """Event times (µs) before which each part of a number's state is of no further use."""

    seen: int
    sent: int
    bounces: int  # marks at or before this are outside every later window
    ports: int
    history: int

    @classmethod
    def at(cls, now: int, settings: Settings) -> Horizons:
        us = settings.us
        return cls(
            seen=now - us(settings.dedup_retention_s),
            sent=now - us(settings.delivery_correlation_s),
            bounces=now - us(settings.bounce_burst_window_s),
            ports=now - us(settings.port_flapping_window_s),
            history=now - us(settings.history_retention_s),
        )


def history_cut(changes: list[Change], horizon: int) -> int:
    """How many of the oldest changes to drop: those of holdings all ended before `horizon`.

    The log is cut only where no holding is open (after a contract_ended or
    ported_out, before the next start), so the rest derives exactly the same
    later holdings as the whole log did. Changes that applied to nothing then
    (for a contract not on the number) go with the cut.
    """
    cut = 0
    contract: str | None = None  # the contract of the open holding, None when there is none
    for i, ch in enumerate(changes):
        if ch.t >= horizon:
            break
        kind = ch.type
        if kind in STARTS:
            contract = ch.contract_id
        elif contract is None or ch.contract_id != contract or kind == HOLDER_CHANGED:
            continue
        elif kind < HOLDER_CHANGED:  # CONTRACT_ENDED, PORTED_OUT: the open holding ends
            contract = None
            cut = i + 1
    return cut


def expire(state: NumberState, h: Horizons) -> bool:
    """Drop from `state` (in place) what is of no further use; True when anything was dropped."""
    changed = False
    seen = state.seen
    if seen and seen[0].t < h.seen:
        state.seen = [m for m in seen if m.t >= h.seen]
        changed = True
    sent = state.sent
    if sent and sent[0].t < h.sent:
        state.sent = [s for s in sent if s.t >= h.sent]
        changed = True
    bounces = state.bounces
    if bounces and bounces[0].t <= h.bounces:
        state.bounces = [m for m in bounces if m.t > h.bounces]
        changed = True
    ports = state.ports
    if ports and ports[0].t <= h.ports:
        state.ports = [m for m in ports if m.t > h.ports]
        changed = True
    changes = state.changes
    if changes and changes[0].t < h.history:
        cut = history_cut(changes, h.history)
        if cut:
            state.changes = changes[cut:]  # a new list: caches keyed on the old one see the change
            changed = True
    return changed
