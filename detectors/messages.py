"""The engine's records besides input records and alerts: Relinks it emits and consumes, the
Remembered stand-ins it is sent, the verdicts it reports for metrics.

Plain msgspec Structs, apart from detectors/engine.py: that module is compiled (detectors.native),
and a compiled module keeps no class of msgspec's (mypyc passes no class keywords to a metaclass).
"""

from __future__ import annotations

import msgspec


class Relink(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """Contract 1.1, the cross-number part of a correction: a late change (event ids `by`) of
    number `origin` altered the links of address `addr` from event time `t` on, so mails to that
    address on other numbers from `t` on are judged again (recipient_other_customer against
    recipient_unlinked or recipient_stale_contract).

    The engine emits one into `Engine.relinks` for each address whose links a late change
    altered, and consumes it with `Engine.relinked` (its candidates: the mailers index,
    detectors.mailers). Where every number is in one engine (the offline replay; a store that is
    no PartitionedStore) it consumes its own at once. The worker's engine holds only its
    partitions' numbers: its shell takes them (take_relinks) at every flush and broadcasts them
    to every input partition's owner, which consumes each for that partition (docs/topics.md
    2.6a, streams/worker/pipeline.py).

    Such an engine (`relink_on_time`) emits one for an on-time change too: its watermark is the
    minimum over its own partitions only, so a change on time here may be older than mails
    another worker (its watermark far ahead: this worker works through a backlog) judged already,
    without its links. Which those are only the receiver knows (its mailers index: none, mostly);
    re-judging a number whose verdicts already saw the change raises and retracts nothing.
    """

    addr: bytes
    t: int
    by: list[str]
    origin: str  # msisdn_ref of the number whose links changed (its own re-judging covers its mails)


class Remembered(msgspec.Struct, array_like=True, frozen=True, gc=False, tag="remembered", tag_field="type"):
    """A delivery event that is no bounce, for Engine.apply_released: with collect_metrics
    off, all that applying one does is remember its event id (Engine._apply)."""

    msisdn: str
    event_id: str


class VerdictRecord(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """The verdict on one notification, for rate metrics (bounded labels only)."""

    brand: str
    template: str
    sender: str
    channel: str
    verdict: str  # kinds.OK or a recipient kind
    late: bool
    event_time: int
