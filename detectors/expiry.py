"""Expiry: what a number's state may forget once event time has moved past every use of it.

A number's state is otherwise pruned only when the number itself has a new
record, so a number that goes quiet would keep its last sent mails, seen event
ids and pattern marks for ever, and every number would keep its whole contract
history. A sweep, driven by the watermark, drops:

- seen event ids older than `dedup_retention_s`;
- sent mails older than `delivery_correlation_s` (a bounce matches a mail only
  within that span, see Rules.bounce in detectors.rules, so the sweep changes no verdict);
- bounce and port marks that no later window can hold;
- the oldest holdings of the change log, once they and everything before them
  ended longer than `history_retention_s` ago (data minimisation).

`now` is an event time no later record on time can precede: the lowest
partition watermark less grace. Every horizon is relative to it, so whenever a
sweep runs, it drops only what no record on time could still use; a late record
(after grace) is judged against the state as it is, as it always is.

Those horizons bound a state in event time, not in size; `cap` (below) bounds
its size, for a number that gets a flood of records within them.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass
from operator import attrgetter
from typing import Final

import msgspec

from detectors.holdings import HOLDER_CHANGED, STARTS, Change, derive
from detectors.settings import Settings
from detectors.state import Mark, NumberState, Past, Sent
from detectors.text import ID_MAX, NAME_MAX


@dataclass(frozen=True, slots=True)
class Horizons:
    """Event times (µs) before which each part of a number's state is of no further use."""

    seen: int
    sent: int
    bounces: int  # marks at or before this are outside every later window
    ports: int
    history: int
    past: int  # notifications and bounces kept for re-judging (contract 1.1)
    fired: int  # alerts raised, kept to compare a re-judging with
    horizon: int  # the correction horizon (µs): no re-judging reaches further behind a number's newest event

    @classmethod
    def at(cls, now: int, settings: Settings) -> Horizons:
        us = settings.us
        return cls(
            seen=now - us(settings.dedup_retention_s),
            sent=now - us(settings.delivery_correlation_s),
            bounces=now - us(settings.bounce_burst_window_s),
            ports=now - us(settings.port_flapping_window_s),
            history=now - us(settings.history_retention_s),
            past=now - past_span(settings),
            fired=now - us(settings.correction_horizon_s),
            horizon=us(settings.correction_horizon_s),
        )


def past_span(settings: Settings) -> int:
    """How long (µs) a number's notifications and bounces are kept behind its newest event (or a
    sweep's event time): the correction horizon, and before it what verdicts within it read of
    earlier events (a bounce's mail, the delivery correlation; a bounce_burst window)."""
    us = settings.us
    return us(settings.correction_horizon_s) + max(
        us(settings.delivery_correlation_s), us(settings.bounce_burst_window_s)
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
    past = state.past
    if past and past[0].t < h.past:  # (in event-time order; cut in place: see Engine._remember's room)
        del past[: bisect_left(past, h.past, key=_T)]
        changed = True
    fired = state.fired
    if fired and fired[0].t < h.fired:
        kept = [f for f in fired if f.t >= h.fired]
        # The sweep's event time may be ahead of the number's newest event: a re-judging may still
        # start before h.fired (Engine._rejudge: its newest event less the horizon), so what was
        # raised and dropped here must not look new to it (cut, as for a budget's cut)
        _note_cut(state, max(f.t for f in fired if f.t < h.fired))
        state.fired = kept
        changed = True
    restated = state.restated
    if restated and restated[0].t < h.fired:
        state.restated = [c for c in restated if c.t >= h.fired]
        changed = True
    if state.cut is not None and state.cut < state.max_t - h.horizon:  # (no re-judging reaches back to it)
        state.cut = None
        changed = True
    changes = state.changes
    if changes and changes[0].t < h.history:
        cut = history_cut(changes, h.history)
        if cut:
            state.changes = changes[cut:]  # a new list: caches keyed on the old one see the change
            changed = True
    return changed


# ------------------------------------------------------------------ size caps
#
# Every rule reads a number's state within a span of event time (the horizons
# above), and nothing bounds how many records a number gets in that span: 22,000
# mails to one number in a day were 22,000 seen ids and sent mails, 1.09 MB of
# encoded state, over the Kafka producer's 1 MB request size: the worker stopped,
# restarted and read the same records again, for ever. So each list of a state
# also has a budget of encoded bytes; past it, its oldest entries are dropped and
# counted (Engine.stats.capped, by part; notifguard_state_capped_total).
#
# The budgets and the per-entry overheads below add up to less than
# STATE_MAX_BYTES, the 64 KiB that every output record and stored value of
# notifguard is held to (1/16 of the producer's 1 MB request size: far from it,
# with the record's key, headers and batch around it). At the contract's id sizes (~40 characters) they hold
# ~300 seen ids (a number's records of 48 h), ~150 sent mails (its mails of 7
# days), ~100 marks per pattern and ~200 contract changes: far more than a real
# number has, so only a flood reaches them. Then the verdicts stay those of the
# rules for the newest records: a pattern's list keeps at least its 4 newest
# marks even at the longest ids (default thresholds: 3), and the change log keeps
# what makes the number's last holding (see _trim_changes).
STATE_MAX_BYTES: Final = 64 * 1024
SEEN_BYTES: Final = 9 * 1024
SENT_BYTES: Final = 10 * 1024
MARKS_BYTES: Final = 6 * 1024  # bounces, and ports, each
CHANGES_BYTES: Final = 18 * 1024
# contract 1.1 (the correction horizon): a number's past notifications and bounces, the alerts raised
PAST_BYTES: Final = 13 * 1024
FIRED_BYTES: Final = 1024
# Encoded bytes of an entry, less its strings' UTF-8 (at most): msgpack array and
# integer headers (Mark, Sent, as detectors.codec's msgpack writes them), and the change
# log's header, time, string headers and address hash (detectors.codec, v3).
_MARK_FIXED: Final = 13
_SENT_FIXED: Final = 21
_CHANGE_FIXED: Final = 48
_FIRED_FIXED: Final = 16
# An entry at its largest (every string at its cap, 4 bytes a character): a list
# no longer than budget // this needs no measuring.
_UTF8_MAX: Final = 4
_MARK_LARGEST: Final = _MARK_FIXED + _UTF8_MAX * ID_MAX
_SENT_LARGEST: Final = _SENT_FIXED + _UTF8_MAX * (2 * ID_MAX + NAME_MAX)
_CHANGE_LARGEST: Final = _CHANGE_FIXED + _UTF8_MAX * (3 * ID_MAX + NAME_MAX)
# (a past entry is measured as written, by msgspec's encoder: past_entry_bytes, cap_past)
_encode: Final = msgspec.msgpack.Encoder().encode
PARTS: Final = ("seen", "sent", "bounces", "ports", "changes", "past", "fired")
# A list over its budget is cut to 3/4 of it: a flooded number's lists are then
# cut once every few dozen records, not at every one (each cut measures every entry).
_REFILL: Final = 3


def _text_bytes(s: str | None) -> int:
    if s is None:
        return 0
    return len(s) if s.isascii() else len(s.encode())


def _texts_bytes(texts: list[str]) -> int:
    """UTF-8 bytes of all of `texts` (in C: this runs at every record of a flooded number)."""
    return _text_bytes("".join(texts))


def _mark_bytes(m: Mark) -> int:
    return _MARK_FIXED + _text_bytes(m.event_id)


def _sent_bytes(s: Sent) -> int:
    return _SENT_FIXED + _text_bytes(s.message_id) + _text_bytes(s.event_id) + _text_bytes(s.template)


def _change_bytes(c: Change) -> int:
    return (
        _CHANGE_FIXED
        + _text_bytes(c.event_id)
        + _text_bytes(c.contract_id)
        + _text_bytes(c.customer_id)
        + _text_bytes(c.brand)
    )


def _marks_over(marks: list[Mark], budget: int) -> bool:
    return len(marks) * _MARK_FIXED + _texts_bytes(list(map(_EVENT_ID, marks))) > budget


def _sent_over(sent: list[Sent], budget: int) -> bool:
    texts = [*map(_MESSAGE_ID, sent), *map(_EVENT_ID, sent), *map(_TEMPLATE, sent)]
    return len(sent) * _SENT_FIXED + _texts_bytes(texts) > budget


def _changes_bytes(changes: list[Change]) -> int:
    """sum(map(_change_bytes, changes)), in C: cap measures a number's whole log at every
    record once the log is longer than its budget holds at the largest changes (a few)."""
    texts = [
        *map(_EVENT_ID, changes),
        *map(_CONTRACT_ID, changes),
        *filter(None, map(_CUSTOMER_ID, changes)),
        *filter(None, map(_BRAND, changes)),
    ]
    return len(changes) * _CHANGE_FIXED + _texts_bytes(texts)


_T: Final = attrgetter("t")
_EVENT_ID: Final = attrgetter("event_id")
_MESSAGE_ID: Final = attrgetter("message_id")
_TEMPLATE: Final = attrgetter("template")
_CONTRACT_ID: Final = attrgetter("contract_id")
_CUSTOMER_ID: Final = attrgetter("customer_id")
_BRAND: Final = attrgetter("brand")


def _drop_oldest(sizes: list[int], budget: int) -> int:
    """How many entries to drop from the front for the rest to fit `budget`."""
    total = sum(sizes)
    k = 0
    while total > budget:
        total -= sizes[k]
        k += 1
    return k


def cap(state: NumberState, capped: dict[str, int], changes: bool = True) -> None:
    """Bring each list of `state` within its budget (in place; a cut change log is a
    new list, so caches keyed on the old one see it); adds what was dropped to `capped`.
    `changes`: the change log too (only a contract change makes it grow).

    Cheap while no list is longer than its budget holds at the largest entries.
    """
    seen, sent, bounces, ports = state.seen, state.sent, state.bounces, state.ports
    if len(seen) * _MARK_LARGEST > SEEN_BYTES and _marks_over(seen, SEEN_BYTES):
        _cap_list(seen, list(map(_mark_bytes, seen)), SEEN_BYTES, "seen", capped)
    if len(sent) * _SENT_LARGEST > SENT_BYTES and _sent_over(sent, SENT_BYTES):
        _cap_list(sent, list(map(_sent_bytes, sent)), SENT_BYTES, "sent", capped)
    if len(bounces) * _MARK_LARGEST > MARKS_BYTES and _marks_over(bounces, MARKS_BYTES):
        _cap_list(bounces, list(map(_mark_bytes, bounces)), MARKS_BYTES, "bounces", capped)
    if len(ports) * _MARK_LARGEST > MARKS_BYTES and _marks_over(ports, MARKS_BYTES):
        _cap_list(ports, list(map(_mark_bytes, ports)), MARKS_BYTES, "ports", capped)
    log = state.changes
    if changes and len(log) * _CHANGE_LARGEST > CHANGES_BYTES:
        kept = _trim_changes(log, CHANGES_BYTES)
        if kept is not None:
            capped["changes"] = capped.get("changes", 0) + len(log) - len(kept)
            state.changes = kept


def past_entry_bytes(p: Past) -> int:
    """The bytes of one entry of a number's past (its notifications and bounces kept for the
    correction horizon), as detectors.codec writes it (msgspec's encoder)."""
    return len(_encode(p))


def past_room(past: list[Past]) -> int:
    """How many more bytes of entries (past_entry_bytes) the past takes within PAST_BYTES; below
    0, it is over. The past grows one entry at a time (Engine._remember): its caller keeps the
    room by subtracting each entry's past_entry_bytes as it adds it (what it drops is not added
    back: the room only errs low) and calls cap_past, which measures the whole list (~9 µs for 40
    entries), only once the room is used up, rather than at every record."""
    return PAST_BYTES - _ARRAY_HEAD_MAX - (len(_encode(past)) - _array_head(len(past)))


def cap_past(state: NumberState, capped: dict[str, int]) -> int:
    """Bring a number's past within PAST_BYTES (in place, its oldest entries dropped; counted in
    `capped`, and the newest dropped one's time in state.cut), and return its past_room."""
    past = state.past
    room = past_room(past)
    if room >= 0:
        return room
    k = _drop_oldest([past_entry_bytes(p) for p in past], PAST_BYTES * _REFILL // 4 - _ARRAY_HEAD_MAX)
    _note_cut(state, past[k - 1].t)
    del past[:k]
    capped["past"] = capped.get("past", 0) + k
    return past_room(past)


def _note_cut(state: NumberState, t: int) -> None:
    if state.cut is None or t > state.cut:
        state.cut = t


# msgpack's header of an array (fixarray, array 16, array 32): a past within PAST_BYTES has
# fewer than 2**16 entries, so at most 3 bytes
_ARRAY_HEAD_MAX: Final = 3


def _array_head(n: int) -> int:
    return 1 if n < 16 else 3 if n < 1 << 16 else 5


def cap_fired(state: NumberState, capped: dict[str, int]) -> None:
    """Bring the alerts raised for a number within FIRED_BYTES (after it grew: an alert is rare);
    the newest dropped one's time goes in state.cut, so a re-judging does not raise them again."""
    fired = state.fired
    sizes = [_FIRED_FIXED + _text_bytes(f.trigger_event_id) for f in fired]
    if sum(sizes) > FIRED_BYTES:
        k = _drop_oldest(sizes, FIRED_BYTES * _REFILL // 4)
        _note_cut(state, fired[k - 1].t)
        del fired[:k]
        capped["fired"] = capped.get("fired", 0) + k


def _cap_list(
    entries: list[Mark] | list[Sent], sizes: list[int], budget: int, part: str, capped: dict[str, int]
) -> None:
    k = _drop_oldest(sizes, budget * _REFILL // 4)
    if k:
        del entries[:k]
        capped[part] = capped.get(part, 0) + k


def _kept_event_ids(changes: list[Change]) -> set[str]:
    """The changes a cut keeps: those that derive the last holding as the whole log does."""
    holdings = derive(changes)
    needed: set[str] = set()
    if holdings:
        last = holdings[-1]
        needed.add(last.start_event_id)
        if last.end_event_id is not None:
            needed.add(last.end_event_id)
        if last.addresses:
            needed.add(last.addresses[-1].event_id)
        j = len(holdings) - 1
        while holdings[j].start_type == HOLDER_CHANGED and j > 0:  # back to the start of its contract
            j -= 1
        needed.add(holdings[j].start_event_id)
    return needed


def _trim_changes(changes: list[Change], budget: int) -> list[Change] | None:
    """The change log within `budget`, or None if it fits: its oldest changes dropped
    first, except those that make the number's last holding what it is.

    Kept whatever their age: the last holding's start (for a holding started by
    holder_changed, also the start of its contract on the number), its current
    address's event and its end. Those derive the last holding as the whole log
    does (contract, customer, brand, start, current address, end), so what is
    judged against it is judged the same; what goes is older holdings, older
    addresses (and their links) and changes that applied to nothing.
    """
    total = _changes_bytes(changes)
    if total <= budget:
        return None
    needed = _kept_event_ids(changes)
    drop: set[int] = set()
    for i, c in enumerate(changes):
        if total <= budget:
            break
        if c.event_id not in needed:
            drop.add(i)
            total -= _change_bytes(c)
    return [c for i, c in enumerate(changes) if i not in drop]
