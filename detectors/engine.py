"""The detection engine: the orchestration of one record's way through detectors.

It is fed raw records (topic, partition, key, value) and an injected wall
clock, and collects alerts, dead letters and verdicts for its caller to drain.
The offline replay and the Kafka worker drive this same class.

A record is decoded (detectors.records; a refused one becomes a dead letter,
detectors.deadletters), goes through arrival (detectors.arrival: watermarks,
grace, release order), and is applied once (the number's seen event ids) to its
number's state (detectors.state; the holdings derived from its change log and
the address index kept here, the sizes capped by detectors.expiry). The rules
(detectors.rules) say what it means; the wording (detectors.wording) makes
their alerts. The stored form of state is detectors.codec's.
"""

from __future__ import annotations

from bisect import insort
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from detectors import kinds
from detectors.alerts import FIRING, Alert
from detectors.arrival import (
    CHANGE,
    DELIVERY,
    DUPLICATE,
    LATE,
    NOTIFICATION,
    TOO_LATE,
    Arrival,
    Item,
    change_code,
)
from detectors.deadletters import DeadLetter, dead_letter
from detectors.expiry import PARTS, Horizons, cap, cap_fired, cap_past, expire, past_entry_bytes
from detectors.holdings import (
    ADDRESS,
    ADDRESS_EVENTS,
    CLOSED,
    PORTED_IN,
    PORTED_OUT,
    PORTS,
    STARTED,
    STARTS,
    UNCHANGED,
    Change,
    Holding,
    derive,
    fold,
)
from detectors.mailers import MailerIndex, MailerStore
from detectors.messages import Relink, Remembered, VerdictRecord
from detectors.privacy import Pseudonymiser, mask_msisdn
from detectors.records import (
    UNKNOWN_TOPIC,
    BadRecord,
    ContractChange,
    ContractStarted,
    Delivery,
    InputRecord,
    Outbound,
    PortedIn,
    PortedOut,
    decode,
    future_bound,
)
from detectors.rules import Rules
from detectors.settings import Settings
from detectors.state import AddressIndex, Fired, Link, Mark, NumberState, Past
from detectors.stores import NumberStore, PartitionedStore
from detectors.timefmt import rfc3339
from detectors.wording import Wording, masked_recipient

__all__ = [
    "CORRECTION_CAUSES",
    "TOPIC_KINDS",
    "DeadLetter",
    "Engine",
    "NumberStore",
    "PartitionedStore",
    "Relink",
    "Remembered",
    "Stats",
    "VerdictRecord",
    "dead_letter",
]

# The input topics by category (detectors.arrival: CHANGE, NOTIFICATION, DELIVERY).
TOPIC_KINDS: Final = ("changes", "outbound", "delivery")
# the causes of a correction (Stats.corrections): a late record of an input topic, or a Relink
CORRECTION_CAUSES: Final = (*TOPIC_KINDS, "relink")
_CATEGORY: Final = {"changes": CHANGE, "outbound": NOTIFICATION, "delivery": DELIVERY}
_HOLDINGS_CACHE_MAX: Final = 100_000
_NO_PAIRS: Final[list[tuple[bytes, Link]]] = []
_NO_ADDRS: Final[frozenset[bytes]] = frozenset()
_KIND_INDEX: Final = {k: i for i, k in enumerate(kinds.KINDS)}
_MASKS_MAX: Final = 100_000
# ref -> [its past, its room] (Engine._remember). An entry stays valid while the number's past is
# that very list (what drops entries cuts it in place: the room only errs low; a new list, e.g. a
# state decoded from the store, is measured again); one of a state the store's cache let go holds
# that list until the memo is cleared at this many entries: at most this many pasts beyond the
# cache (a few hundred bytes each).
_PAST_ROOMS_MAX: Final = 100_000
# At most this many restating address events kept per number (_keep_restated): the bench capture
# drops ~3 a number in a year (6,011 of 11,404 address events over 2,000 numbers); a feed that
# restates an address every few minutes would otherwise keep a week of them.
_RESTATED_MAX: Final = 8
# re_port and port_flapping are judged at these changes (Engine._patterns)
_PATTERN_CHANGES: Final = STARTS | PORTS


@dataclass
class Stats:
    """Plain counters the shell exports; keys are bounded vocabularies."""

    records: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TOPIC_KINDS, 0))
    late: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TOPIC_KINDS, 0))
    duplicates: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TOPIC_KINDS, 0))
    deadletters: dict[str, int] = field(default_factory=dict)
    # alerts raised (on time or late), not their retractions
    alerts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(kinds.KINDS, 0))
    released: int = 0
    released_early: int = 0  # over the grace buffer's bound (detectors.arrival)
    # late records beyond the correction horizon, by topic (applied; nothing re-judged)
    too_late: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TOPIC_KINDS, 0))
    # contract 1.1 corrections: re-judgings of a number, by cause (a late record's topic, or
    # "relink": a late change of another number); alerts raised late by them, retractions, by kind
    corrections: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CORRECTION_CAUSES, 0))
    raised_late: dict[str, int] = field(default_factory=lambda: dict.fromkeys(kinds.KINDS, 0))
    retracted: dict[str, int] = field(default_factory=lambda: dict.fromkeys(kinds.KINDS, 0))
    expired: int = 0  # number states a sweep changed
    # numbers a Relink reached more than the correction horizon behind their newest event, with
    # mails to its address it could not judge again (Engine.relinked: workers far apart)
    relinks_out_of_reach: int = 0
    # entries dropped from number states over their size budgets, by part (detectors.expiry.cap)
    capped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PARTS, 0))


class Engine:
    """Judge a stream of input records; collect outputs in `alerts`, `deadletters`, `verdicts`."""

    # Every attribute in a slot: an instance dict shares its keys (and `self.x` stays a
    # specialised lookup) only up to 30 attributes in CPython 3.11, and the engine has 30;
    # past that each `self.x` on the hot path costs more (measured: +2k instructions a
    # record of the offline replay, ~2 %). `__dict__` is kept for tests that patch methods
    # on an instance; tests/detectors/test_engine.py holds the engine's own attributes in slots.
    __slots__ = (
        "__dict__",
        "_addresses",
        "_applied_dups",
        "_correlation",
        "_dedup",
        "_future_skew",
        "_grace",
        "_holdings",
        "_horizon",
        "_keep_past",
        "_late_dups",
        "_masks",
        "_new_id",
        "_notified",
        "_noting",
        "_now",
        "_partition",
        "_partitioned",
        "_past_rooms",
        "_pseudo",
        "_refs",
        "_replay",
        "_replay_t",
        "_sms_masks",
        "_stats",
        "_topic_kind",
        "alerts",
        "applying",
        "arrival",
        "collect_metrics",
        "deadletters",
        "deliveries",
        "done",
        "failed",
        "index",
        "live",
        "mailers",
        "numbers",
        "relink_on_time",
        "relinks",
        "rules",
        "settings",
        "verdicts",
        "wording",
    )

    def __init__(
        self,
        settings: Settings,
        new_id: Callable[[], str],
        numbers: NumberStore | None = None,
        index: AddressIndex | None = None,
        mailers: MailerStore | None = None,
    ) -> None:
        self.settings = settings
        self._pseudo = Pseudonymiser(settings.pseudonymisation_key.reveal().encode())
        self._new_id = new_id
        self.numbers: NumberStore = numbers if numbers is not None else {}
        self._partitioned = numbers if isinstance(numbers, PartitionedStore) else None
        self.index = index if index is not None else AddressIndex()
        # which numbers mailed each address within the past span, per input partition
        # (detectors.mailers): the candidates of a Relink. One engine holding every number (no
        # PartitionedStore) keeps them under partition -1; the worker's under each input partition.
        self.mailers = MailerIndex(mailers)
        # Whether each e-mail is noted in the mailers index as it is remembered. One engine holding
        # every number in a dict (the offline replay) builds the index from its numbers' pasts at its
        # first Relink instead (build_mailers) and notes from then on: a capture with no late
        # change of links pays nothing for it (~5 % of the replay's bytecodes when noted at each mail).
        self._noting = self._partitioned is not None or not isinstance(self.numbers, dict)
        # the input partition of the numbers being changed: of the record being applied (_apply), of
        # the numbers re-judged (relinked) or swept (sweep); where their mails and links are kept
        self._partition = -1
        self._stats = Stats()
        self.alerts: list[Alert] = []
        self.deadletters: list[DeadLetter] = []
        self.verdicts: list[VerdictRecord] = []
        # (brand, sender, status, bounce_type) of each applied delivery event, for
        # bounce-rate metrics; the shell takes and clears it.
        self.deliveries: list[tuple[str, str, str, str]] = []
        # False: collect neither `verdicts` nor `deliveries` (metrics only; the
        # offline replay has no use for them).
        self.collect_metrics = True
        t = settings.topics
        self._topic_kind = {t.changes: "changes", t.outbound: "outbound", t.delivery: "delivery"}
        us = settings.us
        self._grace = us(settings.grace_s)
        self._dedup = us(settings.dedup_retention_s)
        self.arrival = Arrival(
            self._grace,
            us(settings.idle_flush_s),
            us(settings.expiry_sweep_interval_s),
            settings.max_buffered,
            us(settings.correction_horizon_s),
        )
        # What each record means (detectors.rules) and how its alerts read (detectors.wording).
        self.rules = Rules(settings)
        self.wording = Wording(settings, self._pseudo, new_id)
        self._notified = self.rules.notification  # (bound once: once per notification)
        self._future_skew = us(settings.max_future_skew_s)
        # contract 1.1: late records within the correction horizon re-judge their number (_rejudge)
        # over its past notifications and bounces, kept for the horizon and, before it, for what the
        # verdicts from there on read of earlier ones (a bounce's mail, a bounce_burst window)
        self._horizon = us(settings.correction_horizon_s)
        self._correlation = us(settings.delivery_correlation_s)
        self._keep_past = self._horizon + max(self._correlation, us(settings.bounce_burst_window_s))
        # memos of masked_recipient, by channel: e-mail recipient -> its masked form, sms recipient ->
        # its (a recipient's mask depends on its channel: one text may come as either)
        self._masks: dict[str, str] = {}
        self._sms_masks: dict[str, str] = {}
        self._past_rooms: dict[str, list[Any]] = {}  # see _PAST_ROOMS_MAX: [past, room], changed in place
        self._replay: list[tuple[int, Alert]] | None = None  # while re-judging: where alerts go
        self._replay_t = 0
        # Relink events of late changes (see Relink), for a shell whose engine does not hold every number
        self.relinks: list[Relink] = []
        # True in the worker (a PartitionedStore: other engines hold the other partitions, each at
        # its own watermark): on-time changes that alter an address's links emit Relinks too (see
        # Relink). One engine holding every number has one watermark: nothing it judged is newer.
        self.relink_on_time = False
        # True in the worker: `now_us` is the wall clock, and no event time may lie further
        # than max_future_skew ahead of it either (detectors.records.future_bound); the
        # expiry sweep's event time never passes it.
        self.live = False
        # duplicates found when applying (the number's seen ids), by category; of them, late ones
        self._applied_dups = [0, 0, 0]
        self._late_dups = [0, 0, 0]
        self._holdings: dict[str, _Derived] = {}
        self._now = 0
        self._refs = self._pseudo.numbers_memo()
        self._addresses = self._pseudo.addresses_memo()
        # Tokens (the shell's handles of its records, e.g. Kafka messages) of the
        # records that are done: applied, or dropped as duplicates. The shell
        # takes them (take_done) to acknowledge those records.
        self.done: list[Any] = []
        # (token, exception) of records whose application raised: a bug, not bad
        # input. Only records with a token are caught (the worker dead-letters
        # them as themselves and goes on); without one the exception propagates.
        self.failed: list[tuple[Any, BaseException]] = []
        # told each token before its record is applied (the worker's crash journal), or None
        self.applying: Callable[[Any], None] | None = None

    @property
    def stats(self) -> Stats:
        """The counters, arrival's and the engine's together."""
        s = self._stats
        a = self.arrival
        for c, kind in enumerate(TOPIC_KINDS):
            dups = self._applied_dups[c]
            s.records[kind] = a.arrived[c] - dups
            s.late[kind] = a.late[c] - self._late_dups[c]
            s.duplicates[kind] = a.duplicates[c] + dups
        s.released = a.released
        s.released_early = a.released_early
        for c, kind in enumerate(TOPIC_KINDS):
            s.too_late[kind] = a.too_late[c]
        return s

    @property
    def pseudonymiser(self) -> Pseudonymiser:
        """The engine's keyed hashes, with their memos."""
        return self._pseudo

    def learn(
        self,
        numbers: dict[str, str],
        addresses: dict[str, bytes],
        email_masks: dict[str, str],
        sms_masks: dict[str, str],
    ) -> None:
        """Add to the engine's memos what another process of one run computed with the same key and
        functions (streams.replay_offline's decoding process): keyed hashes (Pseudonymiser.learn)
        and masked recipients (masked_recipient, by channel). Memos only: nothing judged depends
        on whether an entry was learnt or computed here."""
        self._pseudo.learn(numbers, addresses)
        for memo, new in ((self._masks, email_masks), (self._sms_masks, sms_masks)):
            if new:
                if len(memo) + len(new) > _MASKS_MAX:
                    memo.clear()
                memo.update(new)

    # ------------------------------------------------------------------ input

    def process(
        self,
        topic: str,
        partition: int,
        offset: int | None,
        key: bytes | str | None,
        value: bytes | str | None,
        now_us: int,
        timestamp_ms: int | None = None,
        token: Any = None,
        clock_us: int | None = None,
    ) -> None:
        """Take one Kafka record as received; `now_us` is the injected wall clock.

        `clock_us`: the arrival clock for idleness (detectors.arrival), `now_us` when None.
        `token`: the caller's handle of the record, reported in `done` (or `failed`) when it is.
        """
        self._now = now_us
        kind = self._topic_kind.get(topic)
        try:
            if kind is None:
                raise BadRecord(UNKNOWN_TOPIC, f"topic {topic!r} is not an input topic of notifguard")
            record, t = decode(kind, key, value, self.not_after(timestamp_ms, now_us))
        except BadRecord as bad:
            self._dead_letter(topic, partition, offset, timestamp_ms, key, value, bad)
            if token is not None:
                self.done.append(token)
            return
        self.process_decoded(kind, partition, record, t, now_us, token, clock_us)

    def not_after(self, timestamp_ms: int | None, now_us: int) -> int | None:
        """The latest event time a record with this Kafka timestamp may carry now (detectors.records.decode)."""
        return future_bound(timestamp_ms, now_us if self.live else None, self._future_skew)

    def process_decoded(
        self,
        kind: str,
        partition: int,
        record: InputRecord,
        t: int,
        now_us: int,
        token: Any = None,
        clock_us: int | None = None,
    ) -> None:
        """Take one record already decoded by `detectors.records.decode` (topic kind, event time in µs).

        `process` ends here; a caller may decode elsewhere and feed the results.
        """
        self._now = now_us
        msisdn = record.msisdn
        ref = self._refs.get(msisdn)
        if ref is None:
            ref = self._pseudo.msisdn_ref(msisdn)
        category = _CATEGORY[kind]
        arrival = self.arrival
        status = arrival.arrive(category, partition, t, record, ref, now_us if clock_us is None else clock_us, token)
        if status:  # (ON_TIME is 0: most records wait in the grace buffer)
            if status != DUPLICATE:  # LATE or TOO_LATE
                self._apply_one(category, t, record, ref, status, token, partition)
            elif token is not None:
                self.done.append(token)
        ready = arrival.take_ready()  # (what is due: detectors.arrival decides)
        if ready:
            self._release(ready)

    def apply_released(self, items: list[Any], now_us: int) -> None:
        """Apply records that went through arrival elsewhere (the offline replay's decoding
        process runs detectors.arrival for it), in their release order.

        `items` is flat: category (CHANGE, NOTIFICATION or DELIVERY), event time,
        late (False, or detectors.arrival's LATE or TOO_LATE), record, for each record. While
        `collect_metrics` is off, a delivery event that is no bounce may come as a Remembered: applying one only
        remembers its event id.
        """
        self._now = now_us
        refs = self._refs
        msisdn_ref = self._pseudo.msisdn_ref
        apply = self._apply
        if self.collect_metrics:
            for record in items[3::4]:
                if record.__class__ is Remembered:
                    raise ValueError("a Remembered delivery event, while collect_metrics is on")
        it = iter(items)
        for category, t, late, record in zip(it, it, it, it, strict=True):
            msisdn = record.msisdn
            ref = refs.get(msisdn)
            if ref is None:
                ref = msisdn_ref(msisdn)
            apply(category, t, record, ref, late)

    def tick(self, now_us: int, clock_us: int | None = None) -> None:
        """Timer: the arrival clock moved on (idle sources stop holding the watermark back)."""
        self._now = now_us
        arrival = self.arrival
        arrival.tick(now_us if clock_us is None else clock_us)
        ready = arrival.take_ready()  # (what is due: detectors.arrival decides)
        if ready:
            self._release(ready)

    def flush(self, now_us: int) -> None:
        """End of input: release everything pending, in event-time order."""
        self._now = now_us
        self._release(self.arrival.take_all())

    def pending_count(self) -> int:
        return self.arrival.pending_count()

    def take_done(self) -> list[Any]:
        """The tokens of the records done since the last call (see `done`)."""
        done, self.done = self.done, []
        return done

    def take_relinks(self) -> list[Relink]:
        """The Relinks emitted since the last call (see Relink): a shell whose store is a
        PartitionedStore takes them at every flush, so that the list never grows."""
        relinks, self.relinks = self.relinks, []
        return relinks

    def drain(self) -> tuple[list[Alert], list[DeadLetter], list[VerdictRecord]]:
        """Take the outputs collected since the last drain (delivery outcomes are dropped:
        read `deliveries` before draining when they are wanted)."""
        out = (self.alerts, self.deadletters, self.verdicts)
        self.alerts, self.deadletters, self.verdicts = [], [], []
        self.deliveries = []
        return out

    # ---------------------------------------------------------------- expiry

    def sweep_due(self) -> int | None:
        """The event time to sweep at, when one is due (detectors.arrival.Arrival.sweep_due);
        the caller then runs `sweep` over its numbers. Live, never past the wall clock."""
        now = self.arrival.sweep_due()
        if now is not None and self.live and now > self._now:
            now = self._now
        return now

    def sweep(self, numbers: Iterable[tuple[str, NumberState]], now: int, partition: int = -1) -> int:
        """Expire (detectors.expiry) what no record on time after event time `now` can use,
        in each (ref, state); changed states are written back. Returns how many changed.
        `partition`: the input partition of these numbers (a PartitionedStore's caller sweeps one
        at a time), whose links expiry drops."""
        horizons = Horizons.at(now, self.settings)
        self.mailers.expire(horizons.past)
        self._partition = partition
        changed = 0
        for ref, state in numbers:
            old_changes = state.changes
            if not expire(state, horizons):
                continue
            if state.changes is not old_changes:
                self._relink(ref, old_changes, state)  # the holdings dropped take their links along
            self.numbers[ref] = state
            changed += 1
        self._stats.expired += changed
        return changed

    # --------------------------------------------------------------- release

    def _release(self, items: list[Item]) -> None:
        for t, category, _, _, _, ref, record, token, source in items:
            self._apply_one(category, t, record, ref, False, token, source.partition)

    def _apply_one(self, category: int, t: int, record: Any, ref: str, late: int, token: Any, partition: int) -> None:
        if token is None:
            self._apply(category, t, record, ref, late, partition)
            return
        applying = self.applying
        if applying is not None:
            applying(token)
        try:
            self._apply(category, t, record, ref, late, partition)
        except Exception as exc:  # a bug: the shell dead-letters this record as itself
            self.failed.append((token, exc))
        else:
            self.done.append(token)

    def _apply(self, category: int, t: int, record: Any, ref: str, late: int, partition: int = -1) -> None:
        """Apply one record of input partition `partition` (-1: unknown, for a store that is not a
        PartitionedStore: apply_released's records come without).

        `late`: False (on time), LATE (True; within the correction horizon: its number's verdicts
        are judged again, _correct) or TOO_LATE (applied and judged as it is, nothing re-judged)."""
        numbers = self.numbers
        partitioned = self._partitioned
        if partitioned is None:
            state = numbers.get(ref)
        else:
            state = partitioned.get_in(ref, partition)
            self._partition = partition
        if state is None:
            state = NumberState(masked=mask_msisdn(record.msisdn))
        else:
            event_id = record.event_id
            for m in state.seen:  # a duplicate of a record applied before: nothing to do
                if m.event_id == event_id:
                    self._applied_dups[category] += 1
                    if late:
                        self._late_dups[category] += 1
                    return
        # remember the event id (dedup), within the dedup retention of the number's newest event
        if t > state.max_t:
            state.max_t = t
        seen = state.seen
        if seen and seen[0].t < state.max_t - self._dedup:
            horizon = state.max_t - self._dedup
            seen[:] = [m for m in seen if m.t >= horizon]
        seen.append(Mark(t, record.event_id))
        # (state.masked: set with the state, or with its past (_remember) for one of before contract 1.1)
        if category == DELIVERY and (record.__class__ is Remembered or record.status != "bounced"):
            if self.collect_metrics and record.__class__ is not Remembered:
                self.deliveries.append((record.brand, record.sender, record.status, record.bounce_type or "none"))
            self._cap(ref, state)  # (its seen id)
        elif late == LATE:  # (True too)
            if category == DELIVERY and self.collect_metrics:
                self.deliveries.append((record.brand, record.sender, "bounced", record.bounce_type or "none"))
            self._correct(category, t, record, ref, state)
            if category != CHANGE:
                self._cap(ref, state)  # (_change caps the change log and the rest)
        else:  # on time (most records), or TOO_LATE: judged as it is
            alerts = self.alerts
            n = len(alerts)
            self._judge(category, t, record, ref, state, late == TOO_LATE)
            if len(alerts) != n:
                self._fired(state, t, alerts, n)
        if partitioned is None:
            numbers[ref] = state
        else:
            partitioned.put_in(ref, state, partition)

    def _judge(self, category: int, t: int, record: Any, ref: str, state: NumberState, late: bool) -> None:
        """Judge a record as it is (_apply): on time, or late beyond the correction horizon."""
        if category == NOTIFICATION:
            self._notification(t, record, ref, state, late)
            self._cap(ref, state)
        elif category == DELIVERY:
            if self.collect_metrics:
                self.deliveries.append((record.brand, record.sender, "bounced", record.bounce_type or "none"))
            self._delivery(t, record, ref, state, late)
            self._cap(ref, state)
        else:
            relinked = self._change(t, record, ref, state, late, relinking=self.relink_on_time and not late)
            if relinked:  # (on time, in an engine that relinks those: see Relink)
                by = [record.event_id]
                self.relinks.extend(Relink(addr, t, by, ref) for addr in sorted(relinked))

    def index_number(self, ref: str, state: NumberState, partition: int = -1) -> None:
        """Put the links the number's holdings create in the address index (`partition`: its
        input partition): a rebuild of an index from the number states (streams.sweeper.LinksRebuild).
        AddressIndex.replace upserts, so a number indexed again, or indexed already, changes nothing."""
        self.index.replace(ref, [], _links(ref, derive(state.changes)), partition)

    def holdings(self, ref: str, state: NumberState) -> list[Holding]:
        """The number's holdings, derived from its change log (cached per log version).

        The engine's own list: it follows the log's later changes in place.
        """
        return self._derived(ref, state).holdings

    def _derived(self, ref: str, state: NumberState) -> _Derived:
        """The cache entry of the number's log: derived now unless cached for this very log."""
        cached = self._holdings.get(ref)
        changes = state.changes
        if cached is not None and cached.changes is changes and cached.count == len(changes):
            return cached
        entry = _Derived(changes, len(changes), derive(changes))
        if len(self._holdings) >= _HOLDINGS_CACHE_MAX and ref not in self._holdings:
            del self._holdings[next(iter(self._holdings))]
        self._holdings[ref] = entry
        return entry

    def _fold(
        self, ref: str, entry: _Derived, change: Change
    ) -> tuple[list[tuple[bytes, Link]], list[tuple[bytes, Link]]]:
        """Fold `change`, just appended to the entry's log, into the entry (in place: one step of
        derive, detectors.holdings.fold); the links that changed: those replaced, their replacements.

        Only the last holding can change (closed, or given an address) and holdings be added,
        so only their links can: an address new to the holding adds one link (an address it had
        keeps its first one), a close replaces the holding's links by the same ones ended, a
        holding added brings its own. An AddressIndex.replace with just those gives the same index
        as with all the number's links (the others would be upserted unchanged). The work is that
        of what changed: an address change costs the same at the 10,000th address as at the first.
        """
        holdings = entry.holdings
        n = len(holdings)
        last = entry.last_links
        if last is None and n and holdings[-1].end is None:  # (built once per entry, when needed)
            last = entry.last_links = dict(_links(ref, holdings[-1:]))
        did = fold(holdings, (change,))
        entry.count = len(entry.changes)
        if did == UNCHANGED:
            return _NO_PAIRS, _NO_PAIRS
        if did == ADDRESS:
            assert last is not None
            h = holdings[-1]
            a = h.addresses[-1]
            if a.addr in last:
                return _NO_PAIRS, _NO_PAIRS  # linked already, since it first became current
            link = last[a.addr] = _link(ref, h, a.t, a.event_id)
            return _NO_PAIRS, [(a.addr, link)]
        entry.last_links = None
        if did == STARTED:
            return _NO_PAIRS, _links(ref, holdings[n:])
        assert did == CLOSED and last is not None
        return list(last.items()), _links(ref, holdings[n - 1 :])

    def _relink(self, ref: str, old_changes: list[Change], state: NumberState) -> None:
        """The log `old_changes` was replaced by a shorter one (expiry, cap): the index follows."""
        cached = self._holdings.pop(ref, None)
        if cached is not None and cached.changes is old_changes and cached.count == len(old_changes):
            old = cached.holdings
        else:
            old = derive(old_changes)
        entry = self._derived(ref, state)
        new = entry.holdings
        last = _links(ref, new[-1:])
        if new and new[-1].end is None:
            entry.last_links = dict(last)  # (for the next _fold, which would build it)
        self.index.replace(ref, _links(ref, old), _links(ref, new[:-1]) + last, self._partition)

    # --------------------------------------------------------- contract changes

    def _change(
        self,
        t: int,
        rec: ContractChange,
        ref: str,
        state: NumberState,
        late: bool,
        correcting: bool = False,
        relinking: bool = False,
    ) -> frozenset[bytes]:
        """Apply a contract change; judge the patterns it completes (not while `correcting`: the
        caller re-judges the number, _correct). Returns the addresses whose links changed, when
        `correcting` or `relinking` (an on-time change in an engine that relinks those, see
        Relink); else an empty set."""
        relinking = relinking or correcting
        code = change_code(type(rec))
        email = getattr(rec, "email", None)
        addr = self._pseudo.address_ref(email) if email and email.strip() else None
        change = Change(
            t,
            code,
            rec.event_id,
            rec.contract_id,
            getattr(rec, "customer_id", None),
            getattr(rec, "brand", None),
            addr,
        )
        entry = self._derived(ref, state)
        relinked = _NO_ADDRS
        if addr is not None and code in ADDRESS_EVENTS and not late and _restates(entry.holdings, change, state):
            _keep_restated(state, change, self._horizon)
            self._cap(ref, state, changes=True)
            return relinked  # the holding's current address already: nothing to store or link
        changes = state.changes
        last = changes[-1] if changes else None
        restored = late and state.restated and _restore_restated(state, change)
        if not restored and (last is None or (last.t, last.type, last.event_id) <= (t, code, change.event_id)):
            # in order (the common case): state.add_change(change) appends, the
            # holdings take one step of the fold, not the whole log, and the index
            # gets only the links that changed
            changes.append(change)
            replaced, added = self._fold(ref, entry, change)
            if replaced or added:
                self.index.replace(ref, replaced, added, self._partition)
                if relinking:
                    relinked = _altered(replaced, added)
        else:
            old_links = _links(ref, entry.holdings)
            state.add_change(change)
            entry = self._derived(ref, state)
            new_links = _links(ref, entry.holdings)
            self.index.replace(ref, old_links, new_links, self._partition)
            if relinking:
                relinked = _altered(old_links, new_links)
        if not correcting:
            self._patterns(t, code, rec, ref, state, entry.holdings, late)
        self._cap(ref, state, changes=True)
        return relinked

    def _patterns(
        self, t: int, code: int, rec: ContractChange, ref: str, state: NumberState, holdings: list[Holding], late: bool
    ) -> None:
        """The patterns a contract change completes: re_port (a start), port_flapping (a port)."""
        if code in STARTS:
            re_port = self.rules.re_port(holdings, rec.event_id)
            if re_port is not None:
                self._emit(self.wording.re_port(t, self._now, rec, ref, *re_port, late))
        if code in PORTS:
            window = self.rules.port(state, t, rec.event_id)
            if window is not None:
                self._emit(self.wording.port_flapping(t, self._now, rec, ref, window, late))

    def _cap(self, ref: str, state: NumberState, changes: bool = False) -> None:
        """detectors.expiry.cap, after a record changed `state` (`changes`: a contract change, which
        alone makes the change log grow): a cut change log takes its links along."""
        log = state.changes
        cap(state, self._stats.capped, changes)
        if state.changes is not log:
            self._relink(ref, log, state)

    # ----------------------------------------------------------- notifications

    def _notification(
        self, t: int, rec: Outbound, ref: str, state: NumberState, late: bool, past: Past | None = None
    ) -> None:
        """Judge a notification and remember it (state.past); `past`: re-judging (_rejudge) the one
        remembered, `rec` its stand-in."""
        addr: bytes | None = None
        if past is not None:
            if rec.channel == "email":
                addr = past.to_ref
        elif rec.channel == "email":
            recipient = rec.recipient
            addr = self._addresses.get(recipient)
            if addr is None:
                addr = self._pseudo.address_ref(recipient)
        cached = self._holdings.get(ref)
        changes = state.changes
        if cached is not None and cached.changes is changes and cached.count == len(changes):
            holdings = cached.holdings
        else:
            holdings = self._derived(ref, state).holdings
        verdict = self._notified(state, holdings, t, rec, addr, self.index, ref)
        if past is None:
            self._remember(ref, state, self._past_notification(t, rec, addr), rec.msisdn)
            if self.collect_metrics:
                kind = kinds.OK if verdict is None else verdict.kind
                self.verdicts.append(VerdictRecord(rec.brand, rec.template, rec.sender, rec.channel, kind, late, t))
        if verdict is not None:
            to_ref = past.to_ref.hex() if past is not None and addr is None else None
            self._emit(self.wording.recipient(t, self._now, rec, ref, addr, verdict, late, to_ref))

    def _masked(self, recipient: str, channel: str) -> str:
        """masked_recipient(recipient, channel), memoised by channel (bounded: _MASKS_MAX)."""
        masks = self._masks if channel == "email" else self._sms_masks
        masked = masks.get(recipient)
        if masked is None:
            if len(masks) >= _MASKS_MAX:
                masks.clear()
            masked = masks[recipient] = masked_recipient(recipient, channel)
        return masked

    def _past_notification(self, t: int, rec: Outbound, addr: bytes | None) -> Past:
        recipient = rec.recipient
        masked = self._masked(recipient, rec.channel)
        if addr is None:  # an sms: the recipient number's keyed hash
            number = self._refs.get(recipient)
            addr = bytes.fromhex(number if number is not None else self._pseudo.msisdn_ref(recipient))
        return Past(
            t,
            NOTIFICATION,
            rec.event_id,
            rec.message_id,
            rec.brand,
            rec.sender,
            addr,
            masked,
            rec.channel,
            rec.template,
            rec.contract_id,
            rec.customer_id,
        )

    def _past_bounce(self, t: int, rec: Delivery) -> Past:
        recipient = rec.recipient
        addr = self._addresses.get(recipient)
        if addr is None:
            addr = self._pseudo.address_ref(recipient)
        masked = self._masked(recipient, "email")
        return Past(
            t,
            DELIVERY,
            rec.event_id,
            rec.message_id,
            rec.brand,
            rec.sender,
            addr,
            masked,
            rec.bounce_type or "",
            rec.smtp_status,
        )

    def _remember(self, ref: str, state: NumberState, p: Past, msisdn: str) -> None:
        """Keep a notification or bounce in the number's past, for the correction horizon and what
        verdicts within it read before it (see _keep_past); in release order; within its budget
        (detectors.expiry.cap_past, called only once the room kept here is used up: measuring the
        whole past costs ~9 µs at 40 entries)."""
        if self._noting and p.category == NOTIFICATION and p.channel == "email":  # (a Relink's candidates)
            self.mailers.note(p.to_ref, ref, p.t, self._partition)
        past = state.past
        known = self._past_rooms.get(ref)
        if known is not None and known[0] is not past:
            known = None
        if past:
            horizon = state.max_t - self._keep_past
            if past[0].t < horizon:  # (in order: the oldest go, usually one)
                k, n = 1, len(past)
                while k < n and past[k].t < horizon:
                    k += 1
                del past[:k]
            last = past[-1] if past else None
            if last is None or last.t < p.t or (last.t == p.t and _past_key(last) <= _past_key(p)):
                past.append(p)
            else:
                insort(past, p, key=_past_key)
        else:
            past.append(p)
            if not state.masked:  # (a state of before contract 1.1: its first entry)
                state.masked = mask_msisdn(msisdn)
        if known is not None:
            room = known[1] - past_entry_bytes(p)
            if room >= 0:
                known[1] = room
                return
        room = cap_past(state, self._stats.capped)
        if known is not None:
            known[1] = room
            return
        rooms = self._past_rooms
        if len(rooms) >= _PAST_ROOMS_MAX:
            rooms.clear()
        rooms[ref] = [past, room]

    # --------------------------------------------------------------- deliveries

    def _delivery(
        self, t: int, rec: Delivery, ref: str, state: NumberState, late: bool, past: Past | None = None
    ) -> None:
        """Judge a bounce and remember it (state.past); `past`: re-judging the one remembered."""
        if rec.status != "bounced":
            return
        if past is None:
            past = self._past_bounce(t, rec)
            self._remember(ref, state, past, rec.msisdn)
        burst, bounced = self.rules.bounce(state, t, rec)
        if burst is not None:
            self._emit(self.wording.bounce_burst(t, self._now, rec, ref, burst, late))
        if bounced is not None:
            self._emit(self.wording.bouncing(t, self._now, rec, ref, bounced, late, past.to_ref))

    # ---------------------------------------------------------------- outputs

    def _emit(self, alert: Alert) -> None:
        replay = self._replay
        if replay is not None:  # re-judging: _rejudge compares them with what was raised
            replay.append((self._replay_t, alert))
            return
        if alert.status == FIRING:  # a retraction is counted in Stats.retracted
            self._stats.alerts[alert.kind] += 1
        self.alerts.append(alert)

    def _fired(self, state: NumberState, t: int, alerts: list[Alert], n: int) -> None:
        """Remember the alerts raised for a record at `t` of the number (alerts[n:]) for the horizon."""
        fired = state.fired
        if fired and fired[0].t < state.max_t - self._horizon:
            horizon = state.max_t - self._horizon
            fired[:] = [f for f in fired if f.t >= horizon]
        for a in alerts[n:]:
            fired.append(Fired(t, _KIND_INDEX[a.kind], a.trigger_event_id))
        cap_fired(state, self._stats.capped)

    # ------------------------------------------------------------- corrections (contract 1.1)

    def _correct(self, category: int, t: int, record: Any, ref: str, state: NumberState) -> None:
        """A record late within the correction horizon: put it in its event-time place (the change
        log, the number's past) and judge the number's verdicts from its event time again; a change
        that altered address links also re-judges the mails to those addresses on other numbers."""
        stats = self._stats
        stats.corrections[TOPIC_KINDS[category]] += 1
        if not state.masked:  # (a state of before contract 1.1)
            state.masked = mask_msisdn(record.msisdn)
        by = [record.event_id]
        if category == NOTIFICATION:
            addr = None
            if record.channel == "email":
                addr = self._addresses.get(record.recipient) or self._pseudo.address_ref(record.recipient)
            self._remember(ref, state, self._past_notification(t, record, addr), record.msisdn)
            if self.collect_metrics:  # (its verdict counts once, as judged now)
                verdict = self._notified(
                    NumberState(state.changes), self.holdings(ref, state), t, record, addr, self.index, ref
                )
                kind = kinds.OK if verdict is None else verdict.kind
                self.verdicts.append(
                    VerdictRecord(record.brand, record.template, record.sender, record.channel, kind, True, t)
                )
            self._rejudge(ref, state, t, by)
        elif category == DELIVERY:
            self._remember(ref, state, self._past_bounce(t, record), record.msisdn)
            self._rejudge(ref, state, t, by)
        else:
            relinked = self._change(t, record, ref, state, True, correcting=True)
            self._rejudge(ref, state, t, by)
            if relinked:
                events = [Relink(addr, t, by, ref) for addr in sorted(relinked)]
                if self._partitioned is None:
                    for event in events:
                        self.relinked(event)
                else:
                    self.relinks.extend(events)

    def relinked(self, event: Relink, partition: int | None = None) -> int:
        """Consume a Relink: re-judge, from its event time on, every number (other than its origin)
        with a remembered mail to its address at or after that time, among the candidates of the
        mailers index (detectors.mailers). `partition`: the input partition whose numbers to
        re-judge, for an engine with a PartitionedStore (the worker's: each partition's owner
        consumes the Relink); None for one engine holding every number. Returns how many numbers
        were re-judged."""
        partitioned = self._partitioned
        if partitioned is None:
            partitions = (-1,)
            if not self._noting:
                self.build_mailers()
        elif partition is None:
            raise TypeError("relinked needs the input partition of the numbers to re-judge (a PartitionedStore)")
        else:
            partitions = (partition,)
        addr, t = event.addr, event.t
        hits: list[tuple[str, NumberState, int]] = []
        for ref, p, last in self.mailers.candidates(addr, t, partitions):
            if ref == event.origin:
                continue
            state = self.numbers.get(ref) if partitioned is None else partitioned.get_in(ref, p)
            if state is None:
                continue
            reach = state.max_t - self._horizon  # (where _rejudge starts, at the earliest)
            if t < reach and _out_of_reach(state.past, addr, t, reach, last):
                self._stats.relinks_out_of_reach += 1
            for past in reversed(state.past):
                if past.t < t:
                    break
                if past.category == NOTIFICATION and past.to_ref == addr and past.channel == "email":
                    hits.append((ref, state, p))
                    break
        for ref, state, p in hits:
            self._stats.corrections["relink"] += 1
            self._partition = p
            self._rejudge(ref, state, t, event.by)
            if partitioned is None:
                self.numbers[ref] = state
            else:
                partitioned.put_in(ref, state, p)
        return len(hits)

    def build_mailers(self) -> None:
        """Note every remembered e-mail of every number in the mailers index, and each one from now
        on (see _noting): what noting each as it was remembered would hold of the mails still in
        the pasts, which is what relinked reads (and what bench.replay_bench measures of the
        worker's index, which notes every mail)."""
        if self._noting:
            return
        numbers = self.numbers
        assert isinstance(numbers, dict)
        note = self.mailers.note
        for ref, state in numbers.items():
            for p in state.past:
                if p.category == NOTIFICATION and p.channel == "email":
                    note(p.to_ref, ref, p.t, -1)
        self._noting = True

    def _rejudge(self, ref: str, state: NumberState, t0: int, by: list[str]) -> None:
        """Judge the number's verdicts from event time `t0` on again, over its change log and its
        past (the same rules, in the order the grace buffer releases records, into a scratch state),
        and raise what is new (late) and retract what was raised and no longer holds, by kind and
        trigger event; the scratch's pattern state replaces the number's.

        What the verdicts at and after t0 read of earlier events (a bounce's mail within the delivery
        correlation, a bounce_burst window, port marks) is re-derived from the past kept before t0
        and the log, so the scratch reaches t0 in the state the in-order run had there.

        Not before the correction horizon behind the number's newest event, though: its past keeps
        no more than that and what verdicts within it read (_remember), so an alert raised before
        it stays as raised, as its mail is not judged again (a Relink older than that: the origin's
        worker far behind this one; not a late record, within the horizon behind its partition's
        watermark, which the number's released records do not pass).

        Nor at or before the newest entry its budgets cut from the past or the alerts raised
        (state.cut): an alert of a cut mail could not be judged again, and a cut alert would be
        raised a second time; those stand as raised."""
        t0 = max(t0, state.max_t - self._horizon)
        cut = state.cut
        if cut is not None and t0 <= cut:
            t0 = cut + 1
        holdings = self.holdings(ref, state)
        scratch = NumberState(state.changes, masked=state.masked)
        masked = state.masked
        sink: list[tuple[int, Alert]] = []
        outer, outer_t = self._replay, self._replay_t
        self._replay = sink
        try:
            changes = [c for c in state.changes if c.type in _PATTERN_CHANGES]
            past = state.past
            i = j = 0
            while i < len(changes) or j < len(past):
                # contract changes first at one event time, as the grace buffer releases them
                if j >= len(past) or (i < len(changes) and changes[i].t <= past[j].t):
                    c = changes[i]
                    i += 1
                    self._replay_t = t = c.t
                    if t > scratch.max_t:
                        scratch.max_t = t
                    self._patterns(t, c.type, _stand_in_change(c, masked), ref, scratch, holdings, True)
                else:
                    p = past[j]
                    j += 1
                    self._replay_t = t = p.t
                    if t > scratch.max_t:
                        scratch.max_t = t
                    if p.category == NOTIFICATION:
                        self._notification(t, _stand_in_notification(p, masked), ref, scratch, True, p)
                    else:
                        self._delivery(t, _stand_in_bounce(p, masked), ref, scratch, True, p)
        finally:
            self._replay, self._replay_t = outer, outer_t
        new: dict[tuple[str, str], tuple[int, Alert]] = {}
        for t, a in sink:
            if t >= t0:
                new.setdefault((a.kind, a.trigger_event_id), (t, a))
        kept: list[Fired] = []
        old: dict[tuple[str, str], Fired] = {}
        for f in state.fired:
            if f.t >= t0:
                old[(kinds.KINDS[f.kind], f.trigger_event_id)] = f
            else:
                kept.append(f)
        stats = self._stats
        now_kinds = {trigger: kind for kind, trigger in new}
        for key, f in old.items():
            if key not in new:
                kind, trigger = key
                retraction = self.wording.retraction(
                    f.t, self._now, kind, trigger, ref, masked, by, now_kinds.get(trigger)
                )
                stats.retracted[kind] += 1
                self._emit(retraction)
        for key, (_, a) in new.items():
            if key not in old:
                stats.raised_late[a.kind] += 1
                self._emit(a)
        kept.extend(Fired(t, _KIND_INDEX[a.kind], a.trigger_event_id) for t, a in new.values())
        kept.sort(key=_fired_key)
        state.fired = kept
        cap_fired(state, stats.capped)
        state.sent = scratch.sent
        state.bounces, state.bounce_hot = scratch.bounces, scratch.bounce_hot
        state.ports, state.port_hot = scratch.ports, scratch.port_hot

    # ------------------------------------------------------------ dead letters

    def _dead_letter(
        self,
        topic: str,
        partition: int | None,
        offset: int | None,
        timestamp_ms: int | None,
        key: bytes | str | None,
        value: bytes | str | None,
        bad: BadRecord,
    ) -> None:
        self._stats.deadletters[bad.code] = self._stats.deadletters.get(bad.code, 0) + 1
        self.deadletters.append(
            dead_letter(topic, partition, offset, timestamp_ms, key, value, bad.reason, bad.code, rfc3339(self._now))
        )


def _past_key(p: Past) -> tuple[int, int, str]:
    return (p.t, p.category, p.event_id)


def _fired_key(f: Fired) -> tuple[int, int, str]:
    return (f.t, f.kind, f.trigger_event_id)


def _altered(old: list[tuple[bytes, Link]], new: list[tuple[bytes, Link]]) -> frozenset[bytes]:
    """The addresses whose links differ between two lists of a number's links."""
    old_by: dict[bytes, set[Link]] = {}
    new_by: dict[bytes, set[Link]] = {}
    for addr, link in old:
        old_by.setdefault(addr, set()).add(link)
    for addr, link in new:
        new_by.setdefault(addr, set()).add(link)
    return frozenset(addr for addr in old_by.keys() | new_by.keys() if old_by.get(addr) != new_by.get(addr))


def _stand_in_notification(p: Past, masked: str) -> Outbound:
    """The notification of a Past, as its re-judging reads it: masked number and recipient, no clear text."""
    return Outbound(
        schema_version=1,
        event_id=p.event_id,
        event_time="",
        msisdn=masked,
        message_id=p.message_id,
        brand=p.brand,
        channel="sms" if p.channel == "sms" else "email",
        recipient=p.to_masked,
        template=p.text or "",
        sender=p.sender,
        contract_id=p.contract_id,
        customer_id=p.customer_id,
    )


def _stand_in_bounce(p: Past, masked: str) -> Delivery:
    """The bounce of a Past, as its re-judging reads it (see _stand_in_notification)."""
    return Delivery(
        schema_version=1,
        event_id=p.event_id,
        event_time="",
        msisdn=masked,
        message_id=p.message_id,
        recipient=p.to_masked,
        status="bounced",
        brand=p.brand,
        sender=p.sender,
        bounce_type="hard" if p.channel == "hard" else "soft" if p.channel == "soft" else None,
        smtp_status=p.text,
    )


def _stand_in_change(c: Change, masked: str) -> ContractChange:
    """The start or port change of a log entry, as the pattern wording reads it."""
    if c.type == PORTED_OUT:
        return PortedOut(
            schema_version=1, event_id=c.event_id, event_time="", msisdn=masked, contract_id=c.contract_id, operator="?"
        )
    if c.type == PORTED_IN:
        return PortedIn(
            schema_version=1,
            event_id=c.event_id,
            event_time="",
            msisdn=masked,
            contract_id=c.contract_id,
            customer_id=c.customer_id or "",
            brand=c.brand or "",
            operator="?",
        )
    return ContractStarted(
        schema_version=1,
        event_id=c.event_id,
        event_time="",
        msisdn=masked,
        contract_id=c.contract_id,
        customer_id=c.customer_id or "",
        brand=c.brand or "",
    )


def _keep_restated(state: NumberState, change: Change, horizon: int) -> None:
    """Keep a restating address event (not in the log) for the correction horizon behind the
    number's newest event: a late change before it would have made it count in order."""
    restated = state.restated
    floor = state.max_t - horizon
    if restated and (restated[0].t < floor or len(restated) >= _RESTATED_MAX):
        restated[:] = [c for c in restated if c.t >= floor][-(_RESTATED_MAX - 1) :]
    restated.append(change)


def _restore_restated(state: NumberState, change: Change) -> bool:
    """A late change: the address events dropped as restating that come after it in event-time
    order go into the log (in order, each was judged against a log without the late change; with
    it, one may set an address again, e.g. after a holder_changed). True when any did."""
    key = change.sort_key()
    after = [c for c in state.restated if c.sort_key() > key]
    if not after:
        return False
    state.restated = [c for c in state.restated if c.sort_key() <= key]
    for c in after:
        state.add_change(c)
    return True


def _out_of_reach(past: list[Past], addr: bytes, t: int, reach: int, last: int) -> bool:
    """Whether a number mailed `addr` at or after `t` and before `reach` (a Relink's re-judging
    cannot go back there): a mail of its past in that span, or its last mail to the address as the
    mailers index holds it (`last`) in that span and gone from its past. (Earlier mails gone from
    the past, before a last one within reach, are not known: not counted.)"""
    for p in past:
        if p.t >= reach:
            break
        if p.t >= t and p.category == NOTIFICATION and p.to_ref == addr and p.channel == "email":
            return True
    return t <= last < reach and (not past or past[0].t > last)


def _restates(holdings: list[Holding], change: Change, state: NumberState) -> bool:
    """An address event, in order, that sets the address its open holding already has."""
    if not holdings or (state.changes and state.changes[-1].t > change.t):
        return False
    h = holdings[-1]
    return h.end is None and h.contract_id == change.contract_id and h.current_address(change.t) == change.addr


def _links(ref: str, holdings: list[Holding]) -> list[tuple[bytes, Link]]:
    """The address links a number's holdings create: each address from when it first became current."""
    out: list[tuple[bytes, Link]] = []
    for h in holdings:
        firsts: dict[bytes, tuple[int, str]] = {}
        for a in h.addresses:
            firsts.setdefault(a.addr, (a.t, a.event_id))
        for addr, (since, eid) in firsts.items():
            out.append((addr, _link(ref, h, since, eid)))
    return out


def _link(ref: str, h: Holding, since: int, since_event_id: str) -> Link:
    """The link of an address of holding `h`, current in it from `since` on."""
    return Link(
        ref,
        h.customer_id,
        h.contract_id,
        h.brand,
        since,
        since_event_id,
        h.start,
        h.start_event_id,
        h.end,
        h.end_event_id,
        h.end_type,
    )


class _Derived:
    """The engine's cache entry of a number's change log (Engine._derived): the holdings
    derived from `changes` while it is that list and `count` long, and the links of the
    last holding by address (None until needed) for Engine._fold."""

    __slots__ = ("changes", "count", "holdings", "last_links")

    def __init__(self, changes: list[Change], count: int, holdings: list[Holding]) -> None:
        self.changes = changes
        self.count = count
        self.holdings = holdings
        self.last_links: dict[bytes, Link] | None = None
