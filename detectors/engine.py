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

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, runtime_checkable

import msgspec

from detectors import kinds
from detectors.alerts import Alert
from detectors.arrival import CHANGE, DELIVERY, DUPLICATE, LATE, NOTIFICATION, Arrival, Item, change_code
from detectors.deadletters import DeadLetter, dead_letter
from detectors.expiry import PARTS, Horizons, cap, expire
from detectors.holdings import (
    ADDRESS,
    ADDRESS_EVENTS,
    CLOSED,
    PORTS,
    STARTED,
    STARTS,
    UNCHANGED,
    Change,
    Holding,
    derive,
    fold,
)
from detectors.privacy import Pseudonymiser
from detectors.records import (
    UNKNOWN_TOPIC,
    BadRecord,
    ContractChange,
    Delivery,
    InputRecord,
    Outbound,
    decode,
    future_bound,
)
from detectors.rules import Rules
from detectors.settings import Settings
from detectors.state import AddressIndex, Link, Mark, NumberState
from detectors.timefmt import rfc3339
from detectors.wording import Wording

__all__ = [
    "TOPIC_KINDS",
    "DeadLetter",
    "Engine",
    "NumberStore",
    "PartitionedStore",
    "Remembered",
    "Stats",
    "VerdictRecord",
    "dead_letter",
]

# The input topics by category (detectors.arrival: CHANGE, NOTIFICATION, DELIVERY).
TOPIC_KINDS: Final = ("changes", "outbound", "delivery")
_CATEGORY: Final = {"changes": CHANGE, "outbound": NOTIFICATION, "delivery": DELIVERY}
_HOLDINGS_CACHE_MAX: Final = 100_000
_NO_PAIRS: Final[list[tuple[bytes, Link]]] = []


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


class NumberStore(Protocol):
    """Where per-number state lives: a dict offline, a table in the worker."""

    def get(self, ref: str) -> NumberState | None: ...
    def __setitem__(self, ref: str, state: NumberState) -> None: ...


@runtime_checkable
class PartitionedStore(NumberStore, Protocol):
    """A NumberStore that keeps each number's state in the input partition of its records (the
    worker's table: the input topics are co-partitioned, docs/topics.md 1.1). The engine reads
    and writes a number for a record through these, with that record's partition, so the store
    needs no map of its own from numbers to partitions (the worker's kept every number it saw).
    Sweeps (Engine.sweep) write through __setitem__: their caller knows the partition swept.
    """

    def get_in(self, ref: str, partition: int) -> NumberState | None: ...
    def put_in(self, ref: str, state: NumberState, partition: int) -> None: ...


@dataclass
class Stats:
    """Plain counters the shell exports; keys are bounded vocabularies."""

    records: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TOPIC_KINDS, 0))
    late: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TOPIC_KINDS, 0))
    duplicates: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TOPIC_KINDS, 0))
    deadletters: dict[str, int] = field(default_factory=dict)
    alerts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(kinds.KINDS, 0))
    released: int = 0
    released_early: int = 0  # over the grace buffer's bound (detectors.arrival)
    expired: int = 0  # number states a sweep changed
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
        "_dedup",
        "_future_skew",
        "_grace",
        "_holdings",
        "_late_dups",
        "_new_id",
        "_notified",
        "_now",
        "_partitioned",
        "_pseudo",
        "_refs",
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
        "numbers",
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
    ) -> None:
        self.settings = settings
        self._pseudo = Pseudonymiser(settings.pseudonymisation_key.reveal().encode())
        self._new_id = new_id
        self.numbers: NumberStore = numbers if numbers is not None else {}
        self._partitioned = numbers if isinstance(numbers, PartitionedStore) else None
        self.index = index if index is not None else AddressIndex()
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
            self._grace, us(settings.idle_flush_s), us(settings.expiry_sweep_interval_s), settings.max_buffered
        )
        # What each record means (detectors.rules) and how its alerts read (detectors.wording).
        self.rules = Rules(settings)
        self.wording = Wording(settings, self._pseudo, new_id)
        self._notified = self.rules.notification  # (bound once: once per notification)
        self._future_skew = us(settings.max_future_skew_s)
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
        return s

    @property
    def pseudonymiser(self) -> Pseudonymiser:
        """The engine's keyed hashes, with their memos."""
        return self._pseudo

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
        if status == LATE:
            self._apply_one(category, t, record, ref, True, token, partition)
        elif status == DUPLICATE and token is not None:
            self.done.append(token)
        ready = arrival.take_ready()  # (what is due: detectors.arrival decides)
        if ready:
            self._release(ready)

    def apply_released(self, items: list[Any], now_us: int) -> None:
        """Apply records that went through arrival elsewhere (the offline replay's decoding
        process runs detectors.arrival for it), in their release order.

        `items` is flat: category (CHANGE, NOTIFICATION or DELIVERY), event time,
        late, record, for each record. While `collect_metrics` is off, a delivery
        event that is no bounce may come as a Remembered: applying one only
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

    def sweep(self, numbers: Iterable[tuple[str, NumberState]], now: int) -> int:
        """Expire (detectors.expiry) what no record on time after event time `now` can use,
        in each (ref, state); changed states are written back. Returns how many changed."""
        horizons = Horizons.at(now, self.settings)
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

    def _apply_one(self, category: int, t: int, record: Any, ref: str, late: bool, token: Any, partition: int) -> None:
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

    def _apply(self, category: int, t: int, record: Any, ref: str, late: bool, partition: int = -1) -> None:
        """Apply one record of input partition `partition` (-1: unknown, for a store that is not a
        PartitionedStore: apply_released's records come without)."""
        numbers = self.numbers
        partitioned = self._partitioned
        state = numbers.get(ref) if partitioned is None else partitioned.get_in(ref, partition)
        if state is None:
            state = NumberState()
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
        if category == NOTIFICATION:
            self._notification(t, record, ref, state, late)
        elif category == DELIVERY:
            if record.__class__ is Remembered or record.status != "bounced":
                if self.collect_metrics and record.__class__ is not Remembered:
                    self.deliveries.append((record.brand, record.sender, record.status, record.bounce_type or "none"))
                self._cap(ref, state)  # (its seen id; _delivery caps what a bounce adds)
            else:
                if self.collect_metrics:
                    self.deliveries.append((record.brand, record.sender, "bounced", record.bounce_type or "none"))
                self._delivery(t, record, ref, state, late)
        else:
            self._change(t, record, ref, state, late)
        if partitioned is None:
            numbers[ref] = state
        else:
            partitioned.put_in(ref, state, partition)

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
        self.index.replace(ref, _links(ref, old), _links(ref, new[:-1]) + last)

    # --------------------------------------------------------- contract changes

    def _change(self, t: int, rec: ContractChange, ref: str, state: NumberState, late: bool) -> None:
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
        if addr is not None and code in ADDRESS_EVENTS and not late and _restates(entry.holdings, change, state):
            self._cap(ref, state, changes=True)
            return  # the holding's current address already: nothing to store or link
        changes = state.changes
        last = changes[-1] if changes else None
        if last is None or (last.t, last.type, last.event_id) <= (t, code, change.event_id):
            # in order (the common case): state.add_change(change) appends, the
            # holdings take one step of the fold, not the whole log, and the index
            # gets only the links that changed
            changes.append(change)
            replaced, added = self._fold(ref, entry, change)
            if replaced or added:
                self.index.replace(ref, replaced, added)
        else:
            old_links = _links(ref, entry.holdings)
            state.add_change(change)
            entry = self._derived(ref, state)
            self.index.replace(ref, old_links, _links(ref, entry.holdings))
        after_holdings = entry.holdings

        if code in STARTS:
            re_port = self.rules.re_port(after_holdings, rec.event_id)
            if re_port is not None:
                self._emit(self.wording.re_port(t, self._now, rec, ref, *re_port, late))
        if code in PORTS:
            window = self.rules.port(state, t, rec.event_id)
            if window is not None:
                self._emit(self.wording.port_flapping(t, self._now, rec, ref, window, late))
        self._cap(ref, state, changes=True)

    def _cap(self, ref: str, state: NumberState, changes: bool = False) -> None:
        """detectors.expiry.cap, after a record changed `state` (`changes`: a contract change, which
        alone makes the change log grow): a cut change log takes its links along."""
        log = state.changes
        cap(state, self._stats.capped, changes)
        if state.changes is not log:
            self._relink(ref, log, state)

    # ----------------------------------------------------------- notifications

    def _notification(self, t: int, rec: Outbound, ref: str, state: NumberState, late: bool) -> None:
        addr: bytes | None = None
        if rec.channel == "email":
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
        if self.collect_metrics:
            kind = kinds.OK if verdict is None else verdict.kind
            self.verdicts.append(VerdictRecord(rec.brand, rec.template, rec.sender, rec.channel, kind, late, t))
        if verdict is not None:
            self._emit(self.wording.recipient(t, self._now, rec, ref, addr, verdict, late))
        self._cap(ref, state)

    # --------------------------------------------------------------- deliveries

    def _delivery(self, t: int, rec: Delivery, ref: str, state: NumberState, late: bool) -> None:
        if rec.status != "bounced":
            return
        burst, bounced = self.rules.bounce(state, t, rec)
        if burst is not None:
            self._emit(self.wording.bounce_burst(t, self._now, rec, ref, burst, late))
        if bounced is not None:
            self._emit(self.wording.bouncing(t, self._now, rec, ref, bounced, late))
        self._cap(ref, state)

    # ---------------------------------------------------------------- outputs

    def _emit(self, alert: Alert) -> None:
        self._stats.alerts[alert.kind] += 1
        self.alerts.append(alert)

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
