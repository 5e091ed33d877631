"""Incidents: breach-class alerts grouped by the cause a person would fix (issue 13).

A pure aggregator, like the engine: it takes alert records (as published on
`notifguard.alerts`), operator actions and a clock as data, keeps explicit,
serialisable state (msgspec structs) and returns incident records. No Kafka,
no clock reads, no metrics.

The grouping is a function of the *set* of alerts, not of their order:

- an alert is a member of its **signature** (kind, brand, sender, template and
  the shape of the number's history behind it: `Signature`,
  docs/incidents.md says why each part is there); members are kept by
  `dedup_key`, so an alert delivered twice is one member;
- a signature's members, sorted by (event time, dedup_key), split into
  **episodes** wherever two neighbours are more than the quiet period apart in
  event time, or where an operator closed an incident (its cut); each episode
  is one incident;
- an incident's id is a hash of its signature and its first member (the first
  trigger): the same alerts give the same ids, whatever order they come in.

Since the result is derived from the set, an alert that arrives out of order
lands in its place, as a contract change does in the engine. The price: an
alert earlier than an incident's first trigger, or one that fills the gap
between two episodes, changes which alert is first, so the incident gets a
new id; the old id is then published once more with status `superseded` and
`superseded_by` (the incident its first trigger now belongs to).

Time is data: `detected_at` comes from the alerts (the earliest of the
members), and an incident is closed by quiet period once the aggregator's
clock (the latest member event time, or what `tick` was given) is a quiet
period past its last event.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from detectors import kinds
from detectors.alerts import FIRING, RETRACTED, Alert
from detectors.timefmt import parse_rfc3339, rfc3339

SECOND_US: Final = 1_000_000
HOUR_US: Final = 3600 * SECOND_US
DAY_US: Final = 24 * HOUR_US

# How many affected numbers (and recipients) an incident record lists: 100 keyed hashes of
# ~27 bytes each, so a record stays a few KiB whatever the incident's size (64 KiB rule,
# docs/topics.md); the counts are exact, and the members topic has every member.
LISTED_MAX: Final = 100

DEFAULT_BREACH_KINDS: Final = (
    kinds.RECIPIENT_PREVIOUS_HOLDER,
    kinds.RECIPIENT_OTHER_CUSTOMER,
    kinds.NOTIFICATION_WITHOUT_CONTRACT,
)

OPEN: Final = "open"
CLOSED: Final = "closed"
SUPERSEDED: Final = "superseded"

REPORTED: Final = "reported"
CLOSE: Final = "closed"
ACCESSED: Final = "accessed"
ACTIONS: Final = (REPORTED, CLOSE, ACCESSED)


@dataclass(frozen=True)
class IncidentSettings:
    """What makes an alert part of an incident, when an incident is over, and the legal clocks."""

    # The kinds that are a personal-data breach by themselves (a mail that went to
    # somebody else, or to a number nobody holds): docs/runbooks of the three critical
    # recipient kinds. The others are data quality (stale, unlinked) or patterns.
    breach_kinds: tuple[str, ...] = DEFAULT_BREACH_KINDS
    # An incident with no new alert for this much event time is over, and a later
    # alert of the same signature is a new incident. 35 days: contract mails of a
    # number come at least monthly (invoices), so one cause keeps one incident
    # over a billing cycle with a few days' slack.
    quiet_period_s: float = 35 * 86_400.0
    # EU Reg. 611/2013 Art. 2(2): notify the authority within 24 h of detection
    # where feasible; Art. 2(3): the full notification within 3 days of the initial one.
    initial_report_s: float = 24 * 3600.0
    full_report_s: float = 3 * 86_400.0
    # GDPR Art. 33(1): 72 h after having become aware of it.
    gdpr_report_s: float = 72 * 3600.0
    # The members (one per alert: keyed hashes, what `incidents resolve` re-identifies from) of
    # an incident that is settled (closed, and reported or closed by an operator) are dropped
    # this long after it closed (its last mail + quiet_period_s), and tombstoned on the members
    # topic; the incident record stays, with its exact counts, flagged `members_expired`. One
    # year: the people affected are to be told "without undue delay" (GDPR Art. 34(1)) and the
    # authorities' follow-up questions on a notification come within months, while the clear
    # values resolve reads are on the input topics for days; a year is long past both, and
    # bounds the state to a year of breaches. 0 keeps them forever. An incident closed by its
    # quiet period but never reported keeps them (it still pages: it must be reported).
    members_retention_s: float = 365 * 86_400.0

    def __post_init__(self) -> None:
        unknown = set(self.breach_kinds) - set(kinds.KINDS)
        if unknown:
            raise ValueError(f"breach_kinds: unknown alert kinds {sorted(unknown)}")
        if self.quiet_period_s <= 0:
            raise ValueError("quiet_period_s must be positive")
        if self.members_retention_s < 0:
            raise ValueError("members_retention_s must be >= 0 (0: keep members forever)")

    def joins(self, kind: str) -> bool:
        """Does an alert of this kind join incidents? (The aggregator's filter, and the worker's feed.)"""
        return kind in self.breach_kinds

    @property
    def quiet_us(self) -> int:
        return int(self.quiet_period_s * SECOND_US)


class Signature(msgspec.Struct, frozen=True):
    """The cause a person would fix: what sent the mail, and what the number's history looked like."""

    kind: str
    brand: str | None
    sender: str | None
    template: str | None
    # where the recipient's address came from: "this_number" (an earlier holding of
    # the same number), "other_number" (a holding on another number), or None
    via: str | None
    previous_brand: str | None
    # how that holding ended: an end type (ported_out, contract_ended, holder_changed,
    # superseded), "open" (another number's holding, still active), "ended" (another number's
    # holding whose link was stored before links kept their end type), or None
    previous_end: str | None
    active_brand: str | None
    # how the holding active at the mail started (ported_in, contract_started, holder_changed), or None
    active_start: str | None

    def key(self) -> str:
        """Stable text of the signature (the part of the incident id that names the cause)."""
        return "\x1f".join("" if v is None else v for v in msgspec.structs.astuple(self))

    def describe(self) -> str:
        """`recipient_previous_holder: o2 contract_info mails from crm-mailer; previous holding blau,
        ended by ported_out; now ported_in at o2`."""
        what = f"{self.kind}: {self.brand or '?'} {self.template or '?'} mails from {self.sender or '?'}"
        if self.via is None:
            history = "no earlier holding known" if self.kind == kinds.NOTIFICATION_WITHOUT_CONTRACT else "no link"
        else:
            where = "previous holding" if self.via == "this_number" else "holding on another number"
            end = {"open": "still active", "ended": "ended"}.get(self.previous_end or "")
            end = end or (f"ended by {self.previous_end}" if self.previous_end else "not ended")
            history = f"{where} {self.previous_brand or '?'}, {end}"
        now = f"now {self.active_start} at {self.active_brand or '?'}" if self.active_start else "no active contract"
        return f"{what}; {history}; {now}"


class Entry(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """One member alert, as much of it as an incident needs (no clear values: keyed hashes)."""

    t: int  # event time (us)
    dedup_key: str
    number: str  # msisdn_ref of the subject
    recipient: str | None  # recipient_ref (keyed hash of the address, or of the number for sms)
    detected: int  # detected_at (us), the earliest delivery's


class Member(msgspec.Struct, frozen=True):
    """An alert's membership as kept outside the aggregator (the incidents process's entries topic)."""

    signature: Signature
    entry: Entry
    status: str = FIRING


class Action(msgspec.Struct, frozen=True, tag="action", tag_field="type"):
    """An operator's action on an incident: who, when, what, and where in event time it applies."""

    action_id: str
    incident_id: str
    action: str  # reported | closed | accessed
    by: str
    at: str  # wall clock, RFC 3339
    note: str
    signature_key: str
    # the incident's first and last event time when the action was taken: the action applies
    # to the incident of the signature that holds `first` (ids can change: see the module text),
    # and `closed` cuts the signature's alerts after `last` off into a new incident
    first: int
    last: int
    schema_version: int = 1


class Deadlines(msgspec.Struct, frozen=True):
    initial_report: str  # Reg. 611/2013: 24 h after detection
    full_report: str  # Reg. 611/2013: 3 days after detection
    gdpr: str  # GDPR Art. 33(1): 72 h after detection


class Day(msgspec.Struct, array_like=True, frozen=True):
    date: str  # YYYY-MM-DD (UTC, event time)
    mails: int
    numbers: int  # distinct affected numbers that day
    new_numbers: int  # of which affected for the first time in this incident


class Incident(msgspec.Struct, frozen=True, tag="incident", tag_field="type"):
    """One record on notifguard.incidents (key: incident_id), one per change."""

    incident_id: str
    status: str  # open | closed | superseded
    closed_by: str | None  # quiet_period | operator | None
    kind: str
    severity: str
    signature: Signature
    cause: str  # signature.describe()
    first_trigger: str | None  # dedup_key of the first member (event time, then dedup_key)
    first_event_time: str | None
    last_event_time: str | None
    detected_at: str | None  # earliest detected_at of the members
    quiet_until: str | None  # closes by quiet period then, unless another alert comes
    deadlines: Deadlines | None
    mails: int
    affected_numbers: int
    affected_recipients: int
    # the first LISTED_MAX distinct msisdn_refs / recipient_refs in event-time order (of the
    # members sorted by event time, then dedup_key): a sample, so the record stays under 64 KiB
    # (docs/topics.md); the counts above are exact, and `incidents resolve` reads every member
    numbers: list[str]
    recipients: list[str]
    timeline: list[Day]
    reported: Action | None
    actions: list[Action]
    superseded_by: str | None = None
    numbers_listed: int = 0  # len(numbers): affected_numbers unless truncated
    recipients_listed: int = 0  # len(recipients)
    truncated: bool = False  # numbers or recipients lists only the first LISTED_MAX
    # its members were dropped (IncidentSettings.members_retention_s): this record is final
    members_expired: bool = False
    schema_version: int = 2  # 2: numbers and recipients are the first LISTED_MAX, not all


TopicRecord = Incident | Action


class SignatureState(msgspec.Struct):
    signature: Signature
    entries: dict[str, Entry] = msgspec.field(default_factory=dict)


class Published(msgspec.Struct, array_like=True, frozen=True):
    """What was last published for an incident id: its signature, first trigger and content digest."""

    signature_key: str
    first_trigger: str | None
    digest: str
    superseded: bool = False
    expired: bool = False  # its members were dropped: the record is final, nothing derives it again


class IncidentsState(msgspec.Struct):
    """Everything the aggregator keeps (serialisable: msgpack or JSON)."""

    signatures: dict[str, SignatureState] = msgspec.field(default_factory=dict)
    where: dict[str, str] = msgspec.field(default_factory=dict)  # dedup_key -> signature key
    actions: dict[str, Action] = msgspec.field(default_factory=dict)  # by action_id
    clock: int = 0  # event time the aggregator has seen (latest member, or tick)
    published: dict[str, Published] = msgspec.field(default_factory=dict)


def _str(obj: Any, name: str) -> str | None:
    value = obj.get(name) if isinstance(obj, dict) else None
    return value if isinstance(value, str) else None


def signature_of(alert: Alert) -> Signature:
    """The signature of a breach-class alert, from its fields and evidence (docs/incidents.md).

    The evidence is read defensively (it is a JSON object on the wire): what an
    alert does not carry is None in the signature.
    """
    ev = alert.evidence
    active = ev.get("active")
    if alert.kind == kinds.NOTIFICATION_WITHOUT_CONTRACT:
        linked = ev.get("previous_contract")
        via = "this_number" if isinstance(linked, dict) else None
    else:
        linked = ev.get("linked")
        via = _str(linked, "via")
    previous_end = _str(linked, "end_type")
    if previous_end is None and isinstance(linked, dict):
        # a link to a holding on another number stored before links kept their end type
        # (detectors.state.Link.end_type) says whether it ended, not how
        previous_end = "ended" if linked.get("end") else "open"
    return Signature(
        kind=alert.kind,
        brand=alert.brand,
        sender=alert.sender,
        template=alert.template,
        via=via,
        previous_brand=_str(linked, "brand"),
        previous_end=previous_end,
        active_brand=_str(active, "brand"),
        active_start=_str(active, "start_type"),
    )


def member_of(alert: Alert) -> Member:
    recipient = alert.evidence.get("recipient_ref")
    entry = Entry(
        t=parse_rfc3339(alert.event_time),
        dedup_key=alert.dedup_key,
        number=alert.subject.msisdn_ref,
        recipient=recipient if isinstance(recipient, str) else None,
        detected=parse_rfc3339(alert.detected_at),
    )
    return Member(signature_of(alert), entry, alert.status)


def incident_id(signature_key: str, first_trigger: str) -> str:
    digest = hashlib.sha256(f"{signature_key}\n{first_trigger}".encode()).hexdigest()
    return f"inc-{digest[:20]}"


_encoder = msgspec.json.Encoder()
topic_decoder = msgspec.json.Decoder(TopicRecord)
state_encoder = msgspec.msgpack.Encoder()
state_decoder = msgspec.msgpack.Decoder(IncidentsState)
member_decoder = msgspec.json.Decoder(Member)


def encode_record(record: TopicRecord | Member) -> bytes:
    return _encoder.encode(record)


def decode_record(data: bytes | str) -> TopicRecord:
    return topic_decoder.decode(data)


def _digest(incident: Incident) -> str:
    return hashlib.sha256(_encoder.encode(incident)).hexdigest()[:32]


class _Episode:
    """The running summary of one episode (one incident) of a signature: what its record needs, built by
    `add`ing the members in (event time, dedup_key) order, so appending a later member costs O(1) and
    the summary is the same whether it was built at once or one alert at a time."""

    __slots__ = (
        "day_numbers",
        "days",
        "detected",
        "first",
        "last",
        "listed_numbers",
        "listed_recipients",
        "mails",
        "numbers",
        "recipients",
    )

    def __init__(self, first: Entry) -> None:
        self.first = first
        self.last = first
        self.mails = 0
        self.detected = first.detected
        self.numbers: set[str] = set()
        self.recipients: set[str] = set()
        self.listed_numbers: list[str] = []
        self.listed_recipients: list[str] = []
        self.days: list[list[int]] = []  # [day, mails, numbers, new_numbers]
        self.day_numbers: set[str] = set()  # the numbers of the last day
        self.add(first)

    def add(self, e: Entry) -> None:
        self.last = e
        self.mails += 1
        if e.detected < self.detected:
            self.detected = e.detected
        new = e.number not in self.numbers
        if new:
            self.numbers.add(e.number)
            if len(self.listed_numbers) < LISTED_MAX:
                self.listed_numbers.append(e.number)
        r = e.recipient
        if r is not None and r not in self.recipients:
            self.recipients.add(r)
            if len(self.listed_recipients) < LISTED_MAX:
                self.listed_recipients.append(r)
        day = e.t // DAY_US
        if not self.days or self.days[-1][0] != day:
            self.days.append([day, 0, 0, 0])
            self.day_numbers = set()
        d = self.days[-1]
        d[1] += 1
        if e.number not in self.day_numbers:
            self.day_numbers.add(e.number)
            d[2] += 1
        if new:
            d[3] += 1


class _Derived:
    """A signature's episodes and incidents as of its last derivation (memory only, not state)."""

    __slots__ = ("cuts", "episodes", "incidents")

    def __init__(self, cuts: list[int], episodes: list[_Episode]) -> None:
        self.cuts = cuts  # event times where operators closed an incident, sorted
        self.episodes = episodes
        self.incidents: list[Incident] = []


_NEVER: Final = 1 << 62


class Incidents:
    """The aggregator. `add` alerts, `act` on operator actions, `tick` the clock; `changes()` gives
    the incident records that changed since the last call (one per incident).

    Derivation is incremental in the common case: an alert of an already derived signature that
    comes after the last member of that signature (in event time, then dedup_key) is appended to
    the last episode's running summary (or starts a new episode after a quiet gap or a cut). An
    alert landing before that end, a retraction, an earlier re-delivery, a signature change or an
    operator action makes the signature derive again from all its members (sorted): the same
    summaries, since both build them with `_Episode.add` in sorted order.
    """

    def __init__(self, settings: IncidentSettings | None = None, state: IncidentsState | None = None) -> None:
        self.settings = settings or IncidentSettings()
        self.state = state or IncidentsState()
        self._derived: dict[str, _Derived] = {}
        # signatures to derive from all their members (everything after a restore)
        self._rederive: set[str] = set(self.state.signatures)
        # signatures whose incident records to build again from their episodes (appends, the clock)
        self._rebuild: set[str] = set()
        # signatures whose incidents changes() compares with what was published
        self._dirty: set[str] = set(self.state.signatures)
        self._closes_at: dict[str, int] = {}  # signature -> earliest quiet_until of its open incidents
        self._earliest_close = _NEVER
        self._expired_records: list[Incident] = []  # for changes(): the last record of each expired incident

    # ------------------------------------------------------------------ input

    def add(self, alert: Alert) -> Member | None:
        """Take one alert record; returns the membership it changed (to persist), or None.

        Alerts of kinds outside breach_kinds are ignored. A re-delivered alert
        (same dedup_key) changes nothing, except that the earliest detected_at is kept.
        """
        if not self.settings.joins(alert.kind):
            return None
        member = member_of(alert)
        return member if self.apply(member) else None

    def _touch(self, sig_key: str) -> None:
        self._rederive.add(sig_key)
        self._dirty.add(sig_key)

    def apply(self, member: Member) -> bool:
        """Take a membership (from `add`, or persisted); True when it changed the state."""
        entry = member.entry
        key = entry.dedup_key
        if member.status == RETRACTED:
            sig_key = self.state.where.pop(key, None)
            if sig_key is None:
                return False
            del self.state.signatures[sig_key].entries[key]
            self._touch(sig_key)
            return True
        sig_key = member.signature.key()
        old_sig = self.state.where.get(key)
        if old_sig is not None and old_sig != sig_key:  # the same dedup_key with another signature:
            del self.state.signatures[old_sig].entries[key]  # the newest record of a key wins
            self._touch(old_sig)
        sig = self.state.signatures.get(sig_key)
        if sig is None:
            sig = self.state.signatures[sig_key] = SignatureState(member.signature)
        old = sig.entries.get(key)
        if old is not None:
            if old.detected <= entry.detected:
                return False
            entry = msgspec.structs.replace(entry, detected=min(old.detected, entry.detected))
        sig.entries[key] = entry
        self.state.where[key] = sig_key
        if old is not None or not self._append(sig_key, entry):  # an earlier detection: derive again
            self._touch(sig_key)
        if entry.t > self.state.clock:
            self._advance(entry.t)
        return True

    def _append(self, sig_key: str, e: Entry) -> bool:
        """Add a new member to the derived episodes if it comes after the signature's last one."""
        d = self._derived.get(sig_key)
        if d is None or sig_key in self._rederive:
            return False
        self._dirty.add(sig_key)
        if not d.episodes:
            d.episodes.append(_Episode(e))
            self._rebuild.add(sig_key)
            return True
        tail = d.episodes[-1]
        last = tail.last
        if (e.t, e.dedup_key) <= (last.t, last.dedup_key):
            return False
        i = bisect_left(d.cuts, last.t)
        if e.t - last.t > self.settings.quiet_us or (i < len(d.cuts) and d.cuts[i] < e.t):
            d.episodes.append(_Episode(e))
        else:
            tail.add(e)
        self._rebuild.add(sig_key)
        return True

    def act(self, action: Action) -> bool:
        """Take an operator action (idempotent by action_id)."""
        if action.action not in ACTIONS:
            raise ValueError(f"unknown action {action.action!r}")
        if action.action_id in self.state.actions:
            return False
        self.state.actions[action.action_id] = action
        if action.signature_key in self.state.signatures:
            self._touch(action.signature_key)
        return True

    def tick(self, now_us: int) -> None:
        """Advance the clock (the latest event time seen, or a wall clock the caller chooses)."""
        if now_us > self.state.clock:
            self._advance(now_us)

    def _advance(self, t: int) -> None:
        self.state.clock = t
        if t < self._earliest_close:
            return
        for sig_key, at in list(self._closes_at.items()):
            if at <= t:
                self._rebuild.add(sig_key)
                self._dirty.add(sig_key)
                del self._closes_at[sig_key]  # set again when its incidents are built
        self._earliest_close = min(self._closes_at.values(), default=_NEVER)

    def restore_published(self, incident: Incident) -> None:
        """Tell the aggregator what the topic already holds for an id (after a restart)."""
        self.state.published[incident.incident_id] = Published(
            incident.signature.key(),
            incident.first_trigger,
            _digest(incident),
            incident.status == SUPERSEDED,
            incident.members_expired,
        )

    def expire(self) -> list[str]:
        """Drop the members of settled incidents closed longer than members_retention_s (by the
        clock); returns their dedup_keys (to tombstone on the members topic). Each such incident is
        published once more, `members_expired`, and nothing supersedes it later: a restarted
        process that finds it so on the topic leaves it alone. Costs a pass over every signature
        (call it now and then, not per alert)."""
        retention = int(self.settings.members_retention_s * SECOND_US)
        if retention <= 0:
            return []
        horizon = self.state.clock - retention - self.settings.quiet_us
        dropped: list[str] = []
        for sig_key in sorted(self.state.signatures):
            current = self._current(sig_key)
            episodes = self._derived[sig_key].episodes
            old = [
                (inc, ep)
                for inc, ep in zip(current, episodes, strict=True)
                if ep.last.t <= horizon
                and inc.status == CLOSED
                and (inc.reported is not None or inc.closed_by == "operator")
            ]
            if not old:
                continue
            sig = self.state.signatures[sig_key]
            for inc, ep in old:
                lo, hi = (ep.first.t, ep.first.dedup_key), (ep.last.t, ep.last.dedup_key)
                keys = [k for k, e in sig.entries.items() if lo <= (e.t, k) <= hi]
                for k in keys:
                    del sig.entries[k]
                    self.state.where.pop(k, None)
                dropped += keys
                final = msgspec.structs.replace(inc, members_expired=True)
                self.state.published[inc.incident_id] = Published(
                    sig_key, inc.first_trigger, _digest(final), False, True
                )
                self._expired_records.append(final)
            if sig.entries:
                self._touch(sig_key)
            else:
                del self.state.signatures[sig_key]
                self._derived.pop(sig_key, None)
                self._closes_at.pop(sig_key, None)
                self._rederive.discard(sig_key)
                self._rebuild.discard(sig_key)
                self._dirty.discard(sig_key)
        return dropped

    # ------------------------------------------------------------------ output

    def incidents(self) -> list[Incident]:
        """Every current (not superseded) incident, by first event time."""
        out: list[Incident] = []
        for sig_key in sorted(self.state.signatures):
            out += self._current(sig_key)
        out.sort(key=lambda i: (i.first_event_time or "", i.incident_id))
        return out

    def changes(self) -> list[Incident]:
        """The records to publish: each incident whose content changed since it was last published,
        and a `superseded` record for each published id that no longer names an incident."""
        out, self._expired_records = self._expired_records, []
        published = self.state.published
        if not self._dirty:
            return out
        by_sig: dict[str, list[str]] = {}
        for iid, p in published.items():
            if not p.superseded and not p.expired and p.signature_key in self._dirty:
                by_sig.setdefault(p.signature_key, []).append(iid)
        for sig_key in sorted(self._dirty):
            current = self._current(sig_key)
            ids = {i.incident_id for i in current}
            for inc in current:
                digest = _digest(inc)
                prev = published.get(inc.incident_id)
                if prev is None or prev.digest != digest:
                    published[inc.incident_id] = Published(sig_key, inc.first_trigger, digest)
                    out.append(inc)
            for old_id in sorted(i for i in by_sig.get(sig_key, ()) if i not in ids):
                prev = published[old_id]
                successor = self._successor(sig_key, prev.first_trigger, current)
                rec = self._superseded(old_id, sig_key, successor)
                published[old_id] = Published(sig_key, prev.first_trigger, _digest(rec), True)
                out.append(rec)
        self._dirty.clear()
        return out

    # ------------------------------------------------------------------ derivation

    def _current(self, sig_key: str) -> list[Incident]:
        """The signature's incidents, derived or built again first if anything changed them."""
        if sig_key in self._rederive or sig_key not in self._derived:
            self._derived[sig_key] = self._derive(sig_key)
            self._rederive.discard(sig_key)
            self._rebuild.add(sig_key)
        d = self._derived[sig_key]
        if sig_key in self._rebuild:
            d.incidents = self._build(sig_key, d)
            self._rebuild.discard(sig_key)
        return d.incidents

    def _successor(self, sig_key: str, first_trigger: str | None, current: list[Incident]) -> str | None:
        if first_trigger is None or self.state.where.get(first_trigger) != sig_key:
            return None
        entry = self.state.signatures[sig_key].entries[first_trigger]
        at = rfc3339(entry.t)
        for inc in current:
            if (inc.first_event_time or "") <= at <= (inc.last_event_time or ""):
                return inc.incident_id
        return None

    def _superseded(self, old_id: str, sig_key: str, successor: str | None) -> Incident:
        sig = self.state.signatures[sig_key].signature
        return Incident(
            incident_id=old_id,
            status=SUPERSEDED,
            closed_by=None,
            kind=sig.kind,
            severity=kinds.SEVERITY[sig.kind],
            signature=sig,
            cause=sig.describe(),
            first_trigger=None,
            first_event_time=None,
            last_event_time=None,
            detected_at=None,
            quiet_until=None,
            deadlines=None,
            mails=0,
            affected_numbers=0,
            affected_recipients=0,
            numbers=[],
            recipients=[],
            timeline=[],
            reported=None,
            actions=[],
            superseded_by=successor,
        )

    def _derive(self, sig_key: str) -> _Derived:
        """All the signature's members, sorted, split into episodes (quiet gaps and operator cuts)."""
        entries = sorted(self.state.signatures[sig_key].entries.values(), key=lambda e: (e.t, e.dedup_key))
        cuts = sorted(a.last for a in self.state.actions.values() if a.signature_key == sig_key and a.action == CLOSE)
        quiet = self.settings.quiet_us
        episodes: list[_Episode] = []
        prev: Entry | None = None
        ci = 0
        for e in entries:
            new = prev is None or e.t - prev.t > quiet
            if prev is not None:
                while ci < len(cuts) and cuts[ci] < prev.t:
                    ci += 1
                new = new or (ci < len(cuts) and cuts[ci] < e.t)  # a cut in [prev.t, e.t)
            if new:
                episodes.append(_Episode(e))
            else:
                episodes[-1].add(e)
            prev = e
        return _Derived(cuts, episodes)

    def _build(self, sig_key: str, d: _Derived) -> list[Incident]:
        sig = self.state.signatures[sig_key].signature
        actions = sorted(
            (a for a in self.state.actions.values() if a.signature_key == sig_key), key=lambda a: (a.at, a.action_id)
        )
        out: list[Incident] = []
        closes_at: int | None = None
        for ep in d.episodes:
            inc = self._incident(sig_key, sig, ep, actions)
            out.append(inc)
            if inc.status == OPEN:
                until = ep.last.t + self.settings.quiet_us
                closes_at = until if closes_at is None else min(closes_at, until)
        if closes_at is None:
            self._closes_at.pop(sig_key, None)
        else:
            self._closes_at[sig_key] = closes_at
            self._earliest_close = min(self._earliest_close, closes_at)
        return out

    def _incident(self, sig_key: str, sig: Signature, ep: _Episode, actions: list[Action]) -> Incident:
        first, last = ep.first, ep.last
        mine = [a for a in actions if first.t <= a.first <= last.t]
        detected = ep.detected
        quiet_until = last.t + self.settings.quiet_us
        operator_closed = any(a.action == CLOSE for a in mine)
        if operator_closed:
            status, closed_by = CLOSED, "operator"
        elif self.state.clock >= quiet_until:
            status, closed_by = CLOSED, "quiet_period"
        else:
            status, closed_by = OPEN, None
        reported = [a for a in mine if a.action == REPORTED]
        s = self.settings
        return Incident(
            incident_id=incident_id(sig_key, first.dedup_key),
            status=status,
            closed_by=closed_by,
            kind=sig.kind,
            severity=kinds.SEVERITY[sig.kind],
            signature=sig,
            cause=sig.describe(),
            first_trigger=first.dedup_key,
            first_event_time=rfc3339(first.t),
            last_event_time=rfc3339(last.t),
            detected_at=rfc3339(detected),
            quiet_until=rfc3339(quiet_until),
            deadlines=Deadlines(
                initial_report=rfc3339(detected + int(s.initial_report_s * SECOND_US)),
                full_report=rfc3339(detected + int(s.full_report_s * SECOND_US)),
                gdpr=rfc3339(detected + int(s.gdpr_report_s * SECOND_US)),
            ),
            mails=ep.mails,
            affected_numbers=len(ep.numbers),
            affected_recipients=len(ep.recipients),
            numbers=list(ep.listed_numbers),
            recipients=list(ep.listed_recipients),
            timeline=[Day(rfc3339(day * DAY_US)[:10], m, n, new) for day, m, n, new in ep.days],
            reported=reported[0] if reported else None,
            actions=mine,
            numbers_listed=len(ep.listed_numbers),
            recipients_listed=len(ep.listed_recipients),
            truncated=len(ep.listed_numbers) < len(ep.numbers) or len(ep.listed_recipients) < len(ep.recipients),
        )


def timeline(members: Iterable[Entry]) -> list[Day]:
    """Mails and affected numbers per day of event time (UTC), members in event-time order."""
    members = list(members)
    if not members:
        return []
    ep = _Episode(members[0])
    for e in members[1:]:
        ep.add(e)
    return [Day(rfc3339(day * DAY_US)[:10], m, n, new) for day, m, n, new in ep.days]


def latest(records: Iterable[TopicRecord]) -> tuple[dict[str, Incident], list[Action]]:
    """What a compacted incidents topic (or a file of its records) says: the last record per
    incident id, and every action (in order)."""
    incidents: dict[str, Incident] = {}
    actions: dict[str, Action] = {}
    for r in records:
        if isinstance(r, Incident):
            incidents[r.incident_id] = r
        else:
            actions.setdefault(r.action_id, r)
    return incidents, list(actions.values())
