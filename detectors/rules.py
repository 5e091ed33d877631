"""The rules: what each event means for its number, given the number's state (no wording, no output).

The engine applies a record to its number's state and asks these rules what it found; an
alert's words are detectors.wording's. The rules are the contract's, with the engine's
settings: the recipient verdict (detectors.verdicts.judge, and its common case, OK, decided
here first), the pattern windows (detectors.patterns: bounce_burst, port_flapping, re_port)
and current_address_bouncing. They keep what they need in the number's state (the mails a
bounce may still match, the pattern marks and their episode flags) and nothing of their own.
"""

from __future__ import annotations

from typing import Final

from detectors import kinds
from detectors.holdings import Holding
from detectors.patterns import count_in_window, re_port
from detectors.records import Delivery, Outbound
from detectors.settings import Settings
from detectors.state import AddressIndex, Link, Mark, NumberState, Sent
from detectors.verdicts import Verdict, judge

_NO_LINKS: Final[list[Link]] = []


class Rules:
    """The rules with one engine's settings (windows in µs, thresholds)."""

    __slots__ = (
        "bounce_threshold",
        "bounce_window",
        "correlation",
        "history",
        "port_threshold",
        "port_window",
        "re_port_window",
    )

    def __init__(self, settings: Settings) -> None:
        us = settings.us
        self.re_port_window = us(settings.re_port_window_s)
        self.port_window = us(settings.port_flapping_window_s)
        self.port_threshold = settings.port_flapping_threshold
        self.bounce_window = us(settings.bounce_burst_window_s)
        self.bounce_threshold = settings.bounce_burst_threshold
        self.correlation = us(settings.delivery_correlation_s)
        self.history = us(settings.history_retention_s)

    def notification(
        self,
        state: NumberState,
        holdings: list[Holding],
        t: int,
        rec: Outbound,
        addr: bytes | None,
        index: AddressIndex,
        ref: str,
    ) -> Verdict | None:
        """The verdict on a notification at `t` to `addr` (the keyed hash of its e-mail recipient,
        None for an sms): None when it is OK, else a recipient kind. A mail is remembered in
        `state.sent` (for `bounce`) within the delivery correlation span of the number's newest event.

        `holdings`: the number's, derived from `state.changes`; `index`: the address links across numbers.
        """
        # The common verdict, OK, decided here (judge's first rows, inlined); anything else goes through judge.
        ok = False
        h = holdings[-1] if holdings else None
        if h is not None and h.end is None and h.start <= t:
            # the last holding, open and started: the one active at t (the common case)
            if addr is None:
                ok = True
            else:
                addresses = h.addresses  # its latest address is current (the common case), else h.current_address
                ok = (addresses[-1].addr if addresses and addresses[-1].t <= t else h.current_address(t)) == addr
        else:
            for h in reversed(holdings):  # the holding active at t
                if h.start <= t and (h.end is None or h.end > t):
                    ok = addr is None or h.current_address(t) == addr
                    break
        verdict: Verdict | None = None
        if not ok:
            links = index.get(addr) if addr is not None else _NO_LINKS
            verdict = judge(holdings, t, rec.channel, addr, links, ref, self.history)
            if verdict.kind == kinds.OK:
                ok, verdict = True, None
        if addr is not None:
            sent = state.sent
            if sent and sent[0].t < state.max_t - self.correlation:
                horizon = state.max_t - self.correlation
                sent[:] = [s for s in sent if s.t >= horizon]
            sent.append(Sent(t, rec.message_id, rec.event_id, ok, rec.template))
        return verdict

    def bounce(self, state: NumberState, t: int, rec: Delivery) -> tuple[list[Mark] | None, Sent | None]:
        """A bounce at `t`: the bounces in its window when a bounce_burst fires, and the mail it
        hard-bounced when that mail went to the current address (current_address_bouncing, once
        a mail, within the correlation span only, whether or not a sweep has dropped the older
        mails yet: detectors.expiry)."""
        fires, state.bounce_hot, window = count_in_window(
            state.bounces, Mark(t, rec.event_id), self.bounce_window, self.bounce_threshold, state.bounce_hot
        )
        bounced: Sent | None = None
        if rec.bounce_type == "hard":
            for sent in state.sent:
                if sent.message_id == rec.message_id:
                    if sent.to_current and not sent.alerted and t - sent.t <= self.correlation:
                        sent.alerted = True
                        bounced = sent
                    break
        return (window if fires else None), bounced

    def re_port(self, holdings: list[Holding], event_id: str) -> tuple[Holding, Holding] | None:
        """For a start (`event_id`) just applied: the holding it started and the ended one that makes it a re-port."""
        started = next((h for h in holdings if h.start_event_id == event_id), None)
        if started is None:
            return None
        prev = re_port(holdings, started, self.re_port_window)
        return None if prev is None else (started, prev)

    def port(self, state: NumberState, t: int, event_id: str) -> list[Mark] | None:
        """A port event at `t`: the port events in its window when port_flapping fires."""
        fires, state.port_hot, window = count_in_window(
            state.ports, Mark(t, event_id), self.port_window, self.port_threshold, state.port_hot
        )
        return window if fires else None
