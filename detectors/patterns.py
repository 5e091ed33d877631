"""Pattern rules over a number's history: trailing event-time windows and re-ports."""

from __future__ import annotations

from bisect import insort

from detectors.holdings import REAL_ENDS, Holding
from detectors.state import Mark


def count_in_window(
    marks: list[Mark], mark: Mark, window_us: int, threshold: int, hot: bool
) -> tuple[bool, bool, list[Mark]]:
    """Add a counted event to a number's window; say whether a pattern fires.

    The trailing window of an event at t holds the counted events with
    event_time in (t - window, t]. It fires when that window holds at least
    `threshold` events, unless the window of the previous counted event did
    too (`hot`): one alert per episode. `marks` is pruned to what later
    events can still need. Returns (fires, new hot, events in the window).
    """
    insort(marks, mark, key=_mark_key)
    t = mark.t
    newest = marks[-1].t
    # keep what the newest event's window needs (and this one's, if it is late)
    horizon = min(t, newest) - window_us
    if marks[0].t <= horizon:
        marks[:] = [m for m in marks if m.t > horizon]
    window = [m for m in marks if t - window_us < m.t <= t]
    full = len(window) >= threshold
    if t < newest:
        # a late event: its verdict is reached out of order; leave the
        # episode state of the newest event alone
        return full and not hot, hot, window
    return full and not hot, full, window


def _mark_key(m: Mark) -> tuple[int, str]:
    return (m.t, m.event_id)


def re_port(holdings: list[Holding], start: Holding, window_us: int) -> Holding | None:
    """The ended holding that makes `start` a re-port, if any.

    The number's last holding to end by ported_out or contract_ended, at or
    before the new start, ended at most `window_us` before it and belonged to
    a different customer.
    """
    t = start.start
    last: Holding | None = None
    for h in holdings:
        if h is start or h.end is None or h.end > t or h.end_type not in REAL_ENDS:
            continue
        if last is None or h.end > (last.end or 0) or (h.end == last.end and h.start > last.start):
            last = h
    if last is None or last.end is None or t - last.end > window_us:
        return None
    return last if last.customer_id != start.customer_id else None
