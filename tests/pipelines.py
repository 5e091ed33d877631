"""Realistic notification pipelines for property tests, as Kafka records (a kcat -J capture).

A second generator, written apart from bench/generate.py on purpose: that one
keeps anomalies days apart and ten minutes away from contract changes, so that
each alert it raises is the one it injected; this one does not care which alert
a record raises (the offline replay is the oracle) and lets the interesting
timings happen: welcome mails seconds after a contract starts, bounces minutes
to hours after their mail and after the next contract change, mails to a number
between two holders, ports back and forth within days.

What a pipeline holds, per number (MSISDN):

- a lifecycle: holdings started by `contract_started` or `ported_in` (with an
  e-mail address, or none), `email_changed`, `email_verified` (sometimes in
  another letter case), `holder_changed` (the contract passes to another
  customer, who sets an address days later, or never), `contract_ended` or
  `ported_out`; then, after a gap, the number recycled to another customer or
  re-ported into another brand by another customer; some numbers flap (ported in
  and out a few times within days); some are never known (mails only);
- mails (email and sms) at a Poisson rate, fewer while the number has no
  contract: to the current address (also in other case and with spaces), to a
  previous holder's address, to a superseded address of the holder, to another
  customer's address (an address current on another number), to unknown
  addresses; welcome mails seconds after a start, cancellation confirmations
  before an end; bursts of mails to a dead mailbox;
- delivery events: delivered, deferred then delivered or bounced, hard and soft
  bounces minutes to hours after the mail, complaints;
- duplicates (the same record resent, seconds to two minutes later) and a few bad
  records (not JSON, not an object, a missing field, an unknown channel, a key
  that is not the record's MSISDN).

Records are Kafka records: topic (the contract's names), key (the MSISDN),
value (JSON), timestamp = event time (ms), partition = Kafka's default
partitioner (murmur2 of the key, as kafka-python and the Java client compute
it), offsets per topic-partition in arrival order. Arrival is event time, plus
up to 1.5 s for some delivery events and up to 2 min for duplicates; so a
record never arrives more than that after a record with a later event time
(far less than the grace period).

One thing is kept apart on purpose: a mail to another customer's address only
uses an address that has been linked to that customer on its number for at
least `cross_link_margin_days` of event time. Whether such an address counts
as linked depends on another number's records, usually on another partition,
and the contract orders a partition's three topics (min-of-inputs watermarks),
not two partitions: a capture produced at months of event time a second may
have one partition days ahead of another. The margin keeps these verdicts
independent of that skew. Measured on 2026-12-04 (a consumer reading all 18
input topic-partitions while `notifguard replay --rebase-time now` produced,
on the shared 2-core machine): the partitions' min-of-topics watermarks were
at most 3.7 days apart for a year of 2,000 numbers (160k records in 70 s; the
large shape's margin is 60 days) and 8.9 days for 90 days of 220 numbers (4.5k
records in 4 s; the default margin is 30 days); one topic ran at most 4.5 and
13.8 days ahead of another in a partition.

Two ways in: `build_pipeline(Shape(...))`, a plain seeded builder (the same
Shape always gives the same records; large runs), and `shapes()` /
`pipelines()`, Hypothesis strategies over the shape (size, span, rates of each
behaviour, seed). A Shape's repr is the whole example: a failing Hypothesis
example prints it, and `build_pipeline` of it gives the same records again.
"""

from __future__ import annotations

import bisect
import itertools
import json
import random
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from detectors.capture import Envelope
from detectors.timefmt import parse_rfc3339, rfc3339

CHANGES = "contracts.changes"
OUTBOUND = "notifications.outbound"
DELIVERY = "notifications.delivery"
TOPICS = (CHANGES, OUTBOUND, DELIVERY)

SECOND = 1_000_000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR

BRANDS = ("o2", "blau", "eplus", "fonic", "ayyildiz", "nettokom")
OPERATORS = ("telekom", "vodafone", "1und1", "freenet")
TEMPLATES = ("contract_info", "topup_reminder", "invoice", "tariff_change", "payment_failed")
SENDERS = ("crm-mailer", "billing-mailer", "sp-notify")
DOMAINS = ("mail.example", "post.example", "web.example", "inbox.example")


def kafka_partition(key: bytes, partitions: int) -> int:
    """Kafka's default partition of a keyed record (murmur2, as the Java client and kafka-python)."""
    from kafka.partitioner.default import murmur2

    return int(murmur2(key) & 0x7FFFFFFF) % partitions


@dataclass(frozen=True)
class Shape:
    """Everything a pipeline is built from; the same Shape gives the same records."""

    numbers: int = 200
    days: float = 90.0
    seed: int = 0
    start: str = "2025-06-02T00:00:00Z"
    partitions: int = 6
    mails_per_day: float = 0.12  # per number, while it has a contract
    idle_mail_factor: float = 0.2  # the rate while it has none, relative
    p_never_known: float = 0.02  # numbers with mails and no contract at all
    p_port_in: float = 0.3  # a holding starts by ported_in rather than contract_started
    p_no_email: float = 0.12  # a start without an address
    email_changes: float = 0.6  # mean email_changed per holding
    p_verify: float = 0.5  # an address is verified after it is set
    p_holder_change: float = 0.08
    holding_days: float = 150.0  # mean length of a contract
    p_recycle: float = 0.6  # after an end, the number gets another holder
    gap_days: float = 40.0  # mean time from an end to the next holder
    p_port_flap: float = 0.04
    p_family: float = 0.12  # a new holder is a customer who already has another number
    p_burst: float = 0.05  # a dead-mailbox episode: 3-5 mails within hours, all bounced
    p_welcome: float = 0.5
    p_dup: float = 0.01
    p_bad: float = 0.0005  # of records, at least 5 bad ones
    cross_link_margin_days: float = 30.0

    @property
    def start_us(self) -> int:
        return parse_rfc3339(self.start)


@dataclass
class Record:
    arrival: int  # µs; the capture's order
    seq: int
    topic: str
    key: str
    value: str
    event_time: int  # µs; the Kafka timestamp (ms) is this


@dataclass
class Pipeline:
    shape: Shape
    records: list[Record]
    stats: Counter[str]

    def envelopes(self, topics: dict[str, str] | None = None) -> list[Envelope]:
        """In arrival order, partitioned by key, offsets per topic-partition; `topics` renames."""
        offsets: Counter[tuple[str, int]] = Counter()
        parts: dict[str, int] = {}
        out = []
        for r in self.records:
            p = parts.get(r.key)
            if p is None:
                p = parts[r.key] = kafka_partition(r.key.encode(), self.shape.partitions)
            o = offsets[(r.topic, p)]
            offsets[(r.topic, p)] += 1
            topic = topics.get(r.topic, r.topic) if topics else r.topic
            out.append(Envelope(topic, p, o, r.value, r.key, r.event_time // 1000, "create", -1))
        return out

    def write(self, path: str | Path, topics: dict[str, str] | None = None) -> Path:
        """The capture file, byte for byte as `kcat -C -J` would print these records."""
        return write_capture(path, self.envelopes(topics))

    def __len__(self) -> int:
        return len(self.records)

    def summary(self) -> str:
        by_topic = Counter(r.topic for r in self.records)
        parts = ", ".join(f"{t} {n}" for t, n in sorted(by_topic.items()))
        features = ", ".join(f"{k} {v}" for k, v in sorted(self.stats.items()))
        return f"{len(self.records)} records ({parts}); {features}"


def write_capture(path: str | Path, envelopes: Iterable[Envelope]) -> Path:
    from streams.staging import envelope_line

    path = Path(path)
    with open(path, "wb") as f:
        for env in envelopes:
            f.write(envelope_line(env))
    return path


# ---------------------------------------------------------------- the model


@dataclass
class _Segment:
    """A holding: one customer on one contract of the number."""

    start: int
    start_type: str  # contract_started | ported_in | holder_changed
    customer: str
    brand: str
    contract: str
    addresses: list[tuple[int, str]] = field(default_factory=list)  # (since, address), in time order
    end: int | None = None
    end_type: str | None = None  # contract_ended | ported_out | holder_changed

    def active(self, t: int) -> bool:
        return self.start <= t and (self.end is None or self.end > t)

    def current(self, t: int) -> str | None:
        cur = None
        for since, addr in self.addresses:
            if since > t:
                break
            cur = addr
        return cur


class _Builder:
    def __init__(self, shape: Shape) -> None:
        self.shape = shape
        self.rng = random.Random(shape.seed)
        self.start = shape.start_us
        self.span = int(shape.days * DAY)
        self.end = self.start + self.span
        self.records: list[Record] = []
        self.stats: Counter[str] = Counter()
        self._ids: Counter[str] = Counter()
        self.customers: list[str] = []
        self.addresses: dict[str, list[str]] = {}
        # every (since, address, customer) an address became current in a holding
        self.registry: list[tuple[int, str, str]] = []

    # ---------------------------------------------------------- helpers

    def _id(self, prefix: str) -> str:
        self._ids[prefix] += 1
        return f"{prefix}-{self.shape.seed:x}-{self._ids[prefix]:06d}"

    @staticmethod
    def _ms(t: int) -> int:
        return t - t % 1000

    def _uniform(self, lo: float, hi: float) -> int:
        return self._ms(int(self.rng.uniform(lo, hi)))

    def _emit(self, topic: str, msisdn: str, t: int, doc: dict[str, Any], arrival: int | None = None) -> Record:
        value = {
            "schema_version": 1,
            "event_id": doc.pop("event_id"),
            "event_time": rfc3339(t),
            "msisdn": msisdn,
            **doc,
        }
        rec = Record(t if arrival is None else arrival, 0, topic, msisdn, json.dumps(value, separators=(",", ":")), t)
        self.records.append(rec)
        return rec

    def _customer(self, exclude: set[str]) -> str:
        rng = self.rng
        if self.customers and rng.random() < self.shape.p_family:
            for _ in range(5):
                c = rng.choice(self.customers)
                if c not in exclude:
                    self.stats["holders with another number"] += 1
                    return c
        c = self._id("C")
        self.customers.append(c)
        self.addresses[c] = []
        return c

    def _address(self, customer: str, avoid: str | None = None) -> str:
        """One of the customer's addresses: often one it already uses, else a new one (unique to it)."""
        rng = self.rng
        known = [a for a in self.addresses[customer] if a != avoid]
        if known and rng.random() < 0.4:
            return rng.choice(known)
        addr = f"{customer.lower()}.{len(self.addresses[customer]) + 1}@{rng.choice(DOMAINS)}"
        self.addresses[customer].append(addr)
        return addr

    def _variant(self, addr: str) -> str:
        """The same address as another system writes it: case and spaces (equal after normalisation)."""
        local, _, domain = addr.partition("@")
        v = self.rng.choice([f"{local.capitalize()}@{domain.upper()}", f" {addr} ", addr.upper()])
        return v

    # ---------------------------------------------------------- lifecycles

    def lifecycle(self, msisdn: str) -> list[_Segment]:
        shape, rng = self.shape, self.rng
        segs: list[_Segment] = []
        if rng.random() < shape.p_never_known:
            self.stats["numbers never known"] += 1
            return segs
        flap = rng.random() < shape.p_port_flap
        if flap:
            self.stats["flapping numbers"] += 1
        t = self.start + self._uniform(0, 0.35 * self.span)
        previous: _Segment | None = None
        flaps = 0
        while t < self.end:
            flapping = flap and flaps < 3 and previous is not None
            ported = flapping or rng.random() < shape.p_port_in
            if flapping and previous is not None and rng.random() < 0.5:
                customer = previous.customer  # the same customer porting back and forth
            else:
                customer = self._customer({previous.customer} if previous else set())
            brands = [b for b in BRANDS if previous is None or b != previous.brand]
            seg = _Segment(
                t, "ported_in" if ported else "contract_started", customer, rng.choice(brands), self._id("K")
            )
            if previous is not None and customer != previous.customer:
                self.stats["re-ports" if ported else "recycled numbers"] += 1
            if rng.random() >= shape.p_no_email:
                seg.addresses.append((t, self._address(customer)))
            if flap and flaps < 3:
                length = self._uniform(2 * DAY, 9 * DAY)
            else:
                length = self._ms(int(rng.expovariate(1 / (shape.holding_days * DAY))) + HOUR)
            contract_end = t + length
            segs.append(seg)
            # the contract may pass to another customer on the way
            if length > 20 * DAY and rng.random() < shape.p_holder_change:
                at = t + self._uniform(0.2 * length, 0.8 * length)
                if at < self.end:
                    seg.end, seg.end_type = at, "holder_changed"
                    new = self._customer({customer})
                    seg = _Segment(at, "holder_changed", new, seg.brand, seg.contract)
                    if rng.random() < 0.8:
                        seg.addresses.append((at + self._uniform(MINUTE, 14 * DAY), self._address(new)))
                    segs.append(seg)
                    self.stats["holder changes"] += 1
            if contract_end < self.end:
                seg.end = contract_end
                seg.end_type = "ported_out" if (flap and flaps < 3) or rng.random() < 0.45 else "contract_ended"
            previous = seg
            if flap and flaps < 3:
                flaps += 1
                t = contract_end + self._uniform(DAY, 8 * DAY)
                continue
            if seg.end is None or rng.random() >= shape.p_recycle:
                break
            t = contract_end + self._ms(int(rng.expovariate(1 / (shape.gap_days * DAY))) + HOUR)
        for s in segs:
            self._address_changes(s)
        return segs

    def _address_changes(self, seg: _Segment) -> None:
        rng, shape = self.rng, self.shape
        until = min(seg.end if seg.end is not None else self.end, self.end)
        n = 0
        while rng.random() < shape.email_changes / (1 + shape.email_changes):
            n += 1
        # an address set after the holding ended (a holder who never set one) is no address of it
        seg.addresses = [(since, addr) for since, addr in seg.addresses if since < until]
        times = sorted(self._uniform(seg.start + MINUTE, until) for _ in range(n) if until > seg.start + MINUTE)
        for at in times:
            cur = seg.current(at)
            seg.addresses.append((at, self._address(seg.customer, avoid=cur)))
        seg.addresses.sort()
        for since, addr in seg.addresses:
            self.registry.append((since, addr, seg.customer))

    def emit_changes(self, msisdn: str, segs: list[_Segment]) -> None:
        rng = self.rng
        for s in segs:
            first_addr = s.addresses[0][1] if s.addresses and s.addresses[0][0] == s.start else None
            if s.start_type == "holder_changed":
                self._emit(
                    CHANGES,
                    msisdn,
                    s.start,
                    {
                        "event_id": self._id("ch"),
                        "type": "holder_changed",
                        "contract_id": s.contract,
                        "customer_id": s.customer,
                    },
                )
            else:
                doc: dict[str, Any] = {
                    "event_id": self._id("ch"),
                    "type": s.start_type,
                    "contract_id": s.contract,
                    "customer_id": s.customer,
                    "brand": s.brand,
                    "email": first_addr,
                }
                if s.start_type == "ported_in":
                    doc["operator"] = rng.choice(OPERATORS)
                self._emit(CHANGES, msisdn, s.start, doc)
            for j, (since, addr) in enumerate(s.addresses):
                if since != s.start or first_addr is None:
                    self._emit(
                        CHANGES,
                        msisdn,
                        since,
                        {"event_id": self._id("ch"), "type": "email_changed", "contract_id": s.contract, "email": addr},
                    )
                if rng.random() < self.shape.p_verify:
                    nxt = s.addresses[j + 1][0] if j + 1 < len(s.addresses) else s.end
                    at = since + self._uniform(MINUTE, 3 * DAY)
                    if (nxt is None or at < nxt) and at < self.end:
                        shown = self._variant(addr) if rng.random() < 0.2 else addr
                        self._emit(
                            CHANGES,
                            msisdn,
                            at,
                            {
                                "event_id": self._id("ch"),
                                "type": "email_verified",
                                "contract_id": s.contract,
                                "email": shown,
                            },
                        )
            if s.end is not None and s.end_type != "holder_changed":
                doc = {"event_id": self._id("ch"), "type": s.end_type, "contract_id": s.contract}
                if s.end_type == "ported_out":
                    doc["operator"] = rng.choice(OPERATORS)
                self._emit(CHANGES, msisdn, s.end, doc)
                self.stats[str(s.end_type)] += 1

    # ---------------------------------------------------------- mails

    def _other_customer_address(self, t: int, customer: str | None) -> str | None:
        limit = t - int(self.shape.cross_link_margin_days * DAY)
        hi = bisect.bisect_right(self.registry, (limit, "\uffff", "\uffff"))
        for _ in range(5):
            if hi == 0:
                return None
            _, addr, owner = self.registry[self.rng.randrange(hi)]
            if owner != customer:
                return addr
        return None

    def _recipient(self, msisdn: str, segs: list[_Segment], t: int) -> tuple[str, str]:
        """(recipient, what it is) of an e-mail on this number at t."""
        rng = self.rng
        active = next((s for s in segs if s.active(t)), None)
        seen = [(since, addr, s.customer) for s in segs if s.start <= t for since, addr in s.addresses if since <= t]
        if active is None:
            if seen and rng.random() < 0.6:
                return seen[-1][1], "no contract, last address"
            return self._unknown(), "no contract, unknown"
        cur = active.current(t)
        prev_holder = [a for _, a, c in seen if c != active.customer]
        stale = [a for _, a, c in seen if c == active.customer and a != cur]
        options: list[tuple[float, str]] = []
        if cur is not None:
            options += [(0.8, "current"), (0.04, "current, other spelling")]
        if prev_holder:
            options.append((0.04 if cur is not None else 0.4, "previous holder"))
        if stale:
            options.append((0.04, "superseded"))
        options += [(0.03, "other customer"), (0.03 if cur is not None else 0.3, "unknown")]
        what = rng.choices([what for _, what in options], [w for w, _ in options])[0]
        if what == "current":
            return cur or "", what
        if what == "current, other spelling":
            return self._variant(cur or ""), what
        if what == "previous holder":
            return rng.choice(prev_holder), what
        if what == "superseded":
            return rng.choice(stale), what
        if what == "other customer":
            addr = self._other_customer_address(t, active.customer)
            if addr is not None:
                return addr, what
        return self._unknown(), "unknown"

    def _unknown(self) -> str:
        return f"{self._id('u').lower()}@{self.rng.choice(DOMAINS)}"

    def _mail(
        self,
        msisdn: str,
        segs: list[_Segment],
        t: int,
        *,
        template: str | None = None,
        to: tuple[str, str] | None = None,
        bounce: str | None = None,
    ) -> None:
        rng = self.rng
        active = next((s for s in segs if s.active(t)), None)
        last = active or next((s for s in reversed(segs) if s.start <= t), None)
        sms = to is None and rng.random() < 0.06
        if sms:
            recipient, what = msisdn, "sms"
        else:
            recipient, what = to if to is not None else self._recipient(msisdn, segs, t)
        self.stats[f"mails: {what}"] += 1
        brand = last.brand if last is not None else rng.choice(BRANDS)
        sender = rng.choice(SENDERS)
        message_id = self._id("msg")
        self._emit(
            OUTBOUND,
            msisdn,
            t,
            {
                "event_id": self._id("nt"),
                "message_id": message_id,
                "brand": brand,
                "channel": "sms" if sms else "email",
                "recipient": recipient,
                "template": template or rng.choice(TEMPLATES),
                "contract_id": last.contract if last is not None else None,
                "customer_id": last.customer if last is not None else None,
                "sender": sender,
            },
        )
        self._deliveries(msisdn, t, message_id, recipient, brand, sender, sms, what, bounce)

    def _deliveries(
        self,
        msisdn: str,
        t: int,
        message_id: str,
        recipient: str,
        brand: str,
        sender: str,
        sms: bool,
        what: str,
        bounce: str | None,
    ) -> None:
        rng = self.rng

        def event(at: int, status: str, bounce_type: str | None = None, smtp: str | None = None) -> None:
            # senders report in batches: some events arrive up to 1.5 s after later ones
            arrival = at + self._uniform(0, 1.5 * SECOND) if rng.random() < 0.3 else at
            self._emit(
                DELIVERY,
                msisdn,
                at,
                {
                    "event_id": self._id("dl"),
                    "message_id": message_id,
                    "recipient": recipient,
                    "status": status,
                    "bounce_type": bounce_type,
                    "smtp_status": smtp,
                    "brand": brand,
                    "sender": sender,
                },
                arrival,
            )
            self.stats[f"deliveries: {status}{' ' + bounce_type if bounce_type else ''}"] += 1

        if bounce is not None:
            event(t + self._uniform(MINUTE, 2 * HOUR), "bounced", bounce, "5.1.1" if bounce == "hard" else "4.2.2")
            return
        r = rng.random()
        if sms:
            if r < 0.95:
                event(t + self._uniform(SECOND, 2 * MINUTE), "delivered")
            return
        hard = 0.02 if what.startswith("current") else 0.25 if what == "unknown" else 0.06
        if r < hard:
            event(t + self._uniform(MINUTE, 6 * HOUR), "bounced", "hard", "5.1.1")
        elif r < hard + 0.03:
            event(t + self._uniform(5 * MINUTE, 12 * HOUR), "bounced", "soft", "4.2.2")
        elif r < hard + 0.07:
            at = t + self._uniform(MINUTE, HOUR)
            event(at, "deferred", None, "4.4.1")
            if rng.random() < 0.8:
                event(at + self._uniform(HOUR, 2 * DAY), "delivered")
            else:
                event(at + self._uniform(HOUR, 2 * DAY), "bounced", "soft", "4.4.7")
        elif r < hard + 0.085:
            pass  # the sender never reports
        else:
            at = t + self._uniform(SECOND, 10 * MINUTE)
            event(at, "delivered")
            if rng.random() < 0.005:
                event(at + self._uniform(HOUR, 5 * DAY), "complained")

    def mails(self, msisdn: str, segs: list[_Segment]) -> None:
        shape, rng = self.shape, self.rng
        rate = shape.mails_per_day / DAY
        t = self.start + self._ms(int(rng.expovariate(rate)))
        while t < self.end:
            active = any(s.active(t) for s in segs)
            if active or rng.random() < shape.idle_mail_factor:
                self._mail(msisdn, segs, t)
            t += self._ms(int(rng.expovariate(rate))) + 1000
        for s in segs:
            first = s.addresses[0] if s.addresses else None
            if s.start_type != "holder_changed" and first is not None and rng.random() < shape.p_welcome:
                at = max(first[0], s.start) + self._uniform(2 * SECOND, 10 * MINUTE)
                if at < self.end:
                    self._mail(msisdn, segs, at, template="contract_info", to=(first[1], "welcome"))
            if s.end is not None and s.end_type == "contract_ended" and rng.random() < 0.5:
                at = s.end - self._uniform(HOUR, 20 * DAY)
                if at > s.start:
                    self._mail(msisdn, segs, at, template="cancellation_confirmation")
        if segs and rng.random() < shape.p_burst:
            s = rng.choice(segs)
            until = min(s.end or self.end, self.end)
            if until - s.start > 2 * DAY:
                at = s.start + self._uniform(DAY, until - s.start - DAY)
                cur = s.current(at)
                if cur is not None:
                    self.stats["dead mailbox bursts"] += 1
                    for _ in range(rng.randint(3, 5)):
                        self._mail(
                            msisdn,
                            segs,
                            at,
                            to=(cur, "current (dead mailbox)"),
                            bounce="hard" if rng.random() < 0.7 else "soft",
                        )
                        at += self._uniform(10 * MINUTE, 5 * HOUR)

    # ---------------------------------------------------------- the rest

    def duplicates(self) -> None:
        rng = self.rng
        dups = []
        for r in self.records:
            if rng.random() < self.shape.p_dup:
                # resent by its producer: the same record (key, value, timestamp), seconds later
                dups.append(
                    Record(r.arrival + self._uniform(200_000, 2 * MINUTE), 0, r.topic, r.key, r.value, r.event_time)
                )
        self.records += dups
        self.stats["duplicates"] = len(dups)

    def bad_records(self, numbers: list[str]) -> None:
        rng = self.rng
        n = max(5, round(len(self.records) * self.shape.p_bad))
        for i in range(n):
            t = self.start + self._uniform(0, self.span)
            msisdn = rng.choice(numbers)
            good = {
                "schema_version": 1,
                "event_id": self._id("bad"),
                "event_time": rfc3339(t),
                "msisdn": msisdn,
                "message_id": self._id("msg"),
                "brand": "o2",
                "channel": "email",
                "recipient": "someone@mail.example",
                "template": "invoice",
                "sender": "crm-mailer",
            }
            kind = i % 5
            topic, key = OUTBOUND, msisdn
            if kind == 0:
                value = json.dumps(good, separators=(",", ":"))[:70]  # cut off: not JSON
            elif kind == 1:
                value = json.dumps([good["event_id"], good["event_time"]])  # not an object
            elif kind == 2:
                del good["recipient"]
                value = json.dumps(good)
            elif kind == 3:
                good["channel"] = "fax"
                value = json.dumps(good)
            else:  # a delivery event keyed by another number
                topic = DELIVERY
                key = rng.choice([m for m in numbers if m != msisdn] or ["+4915100000000"])
                value = json.dumps(
                    {
                        **{
                            k: good[k]
                            for k in (
                                "schema_version",
                                "event_id",
                                "event_time",
                                "msisdn",
                                "message_id",
                                "brand",
                                "sender",
                            )
                        },
                        "recipient": "someone@mail.example",
                        "status": "delivered",
                    }
                )
            self.records.append(Record(t, 0, topic, key, value, t))
        self.stats["bad records"] = n

    def build(self) -> Pipeline:
        shape = self.shape
        numbers = [f"+49176{shape.seed % 100:02d}{i:07d}" for i in range(shape.numbers)]
        lifecycles = [self.lifecycle(m) for m in numbers]
        self.registry.sort()
        for msisdn, segs in zip(numbers, lifecycles, strict=True):
            self.emit_changes(msisdn, segs)
            self.mails(msisdn, segs)
        self.duplicates()
        self.bad_records(numbers)
        for i, r in enumerate(self.records):
            r.seq = i
        self.records.sort(key=lambda r: (r.arrival, r.seq))
        return Pipeline(shape, self.records, self.stats)


def build_pipeline(shape: Shape) -> Pipeline:
    """The plain seeded builder: a pipeline of `shape.numbers` numbers over `shape.days` days."""
    if shape.numbers > 9_999_999 or shape.numbers < 1:
        raise ValueError("numbers must be 1..9,999,999")
    return _Builder(shape).build()


def large_shape(numbers: int = 2000, days: float = 365.0, seed: int = 1) -> Shape:
    """A year of a couple of thousand numbers: ~78 records a number (>= 150k for 2,000)."""
    return Shape(numbers=numbers, days=days, seed=seed, mails_per_day=0.16, cross_link_margin_days=60.0)


# ---------------------------------------------------------------- Hypothesis


def _prob(lo: float, hi: float) -> st.SearchStrategy[float]:
    return st.floats(lo, hi, allow_nan=False).map(lambda x: round(x, 3))


@st.composite
def shapes(
    draw: st.DrawFn,
    numbers: st.SearchStrategy[int] | None = None,
    days: st.SearchStrategy[float] | None = None,
    partitions: int = 6,
) -> Shape:
    """Shapes of pipelines: how many numbers over how long, how often each behaviour, and the seed.

    Defaults: a few hundred numbers over two to four months (a few thousand records).
    """
    return Shape(
        numbers=draw(numbers if numbers is not None else st.integers(150, 300)),
        days=draw(days if days is not None else st.sampled_from([60.0, 90.0, 120.0])),
        seed=draw(st.integers(0, 2**31 - 1)),
        partitions=partitions,
        # every range keeps each behaviour present at its low end: Hypothesis tries the
        # simplest shape first, and with two or three examples that one must count too
        mails_per_day=draw(_prob(0.06, 0.16)),
        idle_mail_factor=draw(_prob(0.05, 0.4)),
        p_never_known=draw(_prob(0.01, 0.05)),
        p_port_in=draw(_prob(0.1, 0.6)),
        p_no_email=draw(_prob(0.05, 0.3)),
        email_changes=draw(_prob(0.2, 1.5)),
        p_verify=draw(_prob(0.2, 0.9)),
        p_holder_change=draw(_prob(0.05, 0.25)),
        holding_days=draw(st.sampled_from([150.0, 60.0, 400.0, 30.0])),
        p_recycle=draw(_prob(0.3, 0.9)),
        gap_days=draw(st.sampled_from([40.0, 3.0, 20.0])),
        p_port_flap=draw(_prob(0.02, 0.1)),
        p_family=draw(_prob(0.05, 0.3)),
        p_burst=draw(_prob(0.03, 0.1)),
        p_welcome=draw(_prob(0.2, 1.0)),
        p_dup=draw(_prob(0.005, 0.03)),
    )


def pipelines(**kwargs: Any) -> st.SearchStrategy[Pipeline]:
    """Pipelines built from `shapes(**kwargs)`."""
    return shapes(**kwargs).map(build_pipeline)


def iter_values(records: Iterable[Record]) -> Iterator[dict[str, Any]]:
    """The JSON values of the records that are JSON objects."""
    for r in records:
        try:
            doc = json.loads(r.value)
        except ValueError:
            continue
        if isinstance(doc, dict):
            yield doc


def add_cross_partition_links(pipeline: Pipeline) -> None:
    """Add two stories (one each way between the two partitions) that only a routed Relink gets
    right when the contract changes come late: number A starts a contract early; number B of the
    other partition sets an address late in the run; A mails that address an hour after. In
    order, A's mail goes to another customer's address (recipient_other_customer). With the
    changes late, A's own re-judging (its start) may run before B's change is applied in the other
    partition (whichever the worker happens to apply first: hence a story each way), and then only
    B's Relink, consumed by A's partition's owner, turns A's recipient_unlinked into it."""
    start, end = pipeline.records[0].event_time, max(r.event_time for r in pipeline.records)
    by_partition: dict[int, list[str]] = {0: [], 1: []}
    for i in itertools.count():
        msisdn = f"+4915550{i:06d}"
        bucket = by_partition[kafka_partition(msisdn.encode(), 2)]
        if len(bucket) < 2:
            bucket.append(msisdn)
        if all(len(b) == 2 for b in by_partition.values()):
            break
    added: list[Record] = []

    def record(topic: str, t: int, msisdn: str, **fields: Any) -> None:
        value = {"schema_version": 1, "event_id": f"x-{len(added)}-{msisdn[-4:]}", "event_time": rfc3339(t),
                 "msisdn": msisdn, **fields}  # fmt: skip
        added.append(Record(t, 0, topic, msisdn, json.dumps(value, separators=(",", ":")), t))

    for n, (a, b) in enumerate(((by_partition[0][0], by_partition[1][0]), (by_partition[1][1], by_partition[0][1]))):
        shared = f"shared-{n}@cross.example"
        record(CHANGES, start + _HOUR_US, a, type="contract_started", contract_id=f"KA{n}", customer_id=f"CA{n}",
               brand="o2", email=f"a{n}@cross.example")  # fmt: skip
        record(CHANGES, start + _HOUR_US, b, type="contract_started", contract_id=f"KB{n}", customer_id=f"CB{n}",
               brand="o2", email=f"b{n}@cross.example")  # fmt: skip
        record(CHANGES, end - 3 * _HOUR_US, b, type="email_changed", contract_id=f"KB{n}", email=shared)
        record(OUTBOUND, end - 2 * _HOUR_US, a, message_id=f"xm{n}", brand="o2", channel="email",
               recipient=shared, template="contract_info", sender="crm-mailer")  # fmt: skip
    pipeline.records = sorted(pipeline.records + added, key=lambda r: r.arrival)


_HOUR_US = 3_600_000_000
