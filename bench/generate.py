"""Deterministic generator of realistic topic captures for benchmarks and soak tests.

Writes JSON Lines in the ``kcat -C -J`` envelope (one Kafka record per line) for the
three input topics of the wire contract (docs: /work/shared/spec/topics.md):
``contracts.changes``, ``notifications.outbound`` and ``notifications.delivery``.

    python -m bench.generate --records 150000 --numbers 2000 --days 365 \
        --partitions 6 --seed 1 --out bench/data/capture.jsonl

How it works (all randomness comes from one ``random.Random(seed)``; no clock is read):

1. Lives.  Every number gets a contract life over the time window: a first holding
   (``contract_started`` or ``ported_in``), then a budget of changes drawn from e-mail
   changes/verifications, same-customer brand switches (``contract_ended`` +
   ``contract_started``), ``holder_changed``, ``ported_out`` / ``contract_ended``
   optionally followed months later by a *different* customer (re-port / recycled
   number).  A few numbers get a port-flapping episode.  Every address is unique to
   one customer, so normal traffic never links an address to two customers by chance.
2. Notifications.  Normal notifications only go to the current address of the active
   holding (or by SMS to the number), so the baseline raises no recipient alert.  Then
   anomalies are injected, each of one intended kind, at least two days apart on a
   number and at least ten minutes away from any contract change of that number.
3. Deliveries.  Each notification gets delivery events seconds to minutes later.
   Normal traffic has no hard bounces, and a normal soft bounce is turned into a
   delivery when another bounce of the number lies within 24 h, so neither
   ``current_address_bouncing`` nor ``bounce_burst`` fires by chance.
4. Arrival.  Every record gets an arrival delay in ``[0, jitter]`` and the stream is
   sorted by arrival, so a record never arrives more than ``jitter`` after a record
   with a later event time.  Duplicates (same payload, new offset) arrive after their
   original within the same bound; bad records are inserted at random positions.
   Offsets are assigned per (topic, partition) in arrival order.

The manifest (``<out>.manifest.json``) counts what was injected.  A detector's alert
counts legitimately differ: ``re_port`` fires on normal re-ports (the manifest gives the
expected number), a flapping number that is re-ported also raises ``re_port``, and an
injected anomaly that hard-bounces also counts towards ``bounce_burst`` windows.
"""

from __future__ import annotations

import argparse
import bisect
import calendar
import json
import random
import sys
import time
import zlib
from collections.abc import Iterator, Sequence
from datetime import UTC, date, datetime
from operator import itemgetter
from pathlib import Path
from typing import Any

TOPIC_CHANGES = "contracts.changes"
TOPIC_OUTBOUND = "notifications.outbound"
TOPIC_DELIVERY = "notifications.delivery"
TOPICS = (TOPIC_CHANGES, TOPIC_OUTBOUND, TOPIC_DELIVERY)
_RANK = {TOPIC_CHANGES: 0, TOPIC_OUTBOUND: 1, TOPIC_DELIVERY: 2}

GRACE_S = 30.0  # the detector's default grace; arrival jitter must stay below it

SEC = 1000
MIN = 60 * SEC
HOUR = 60 * MIN
DAY = 24 * HOUR

ANOMALY_KINDS: tuple[tuple[str, float], ...] = (
    ("recipient_previous_holder", 0.20),
    ("recipient_other_customer", 0.12),
    ("recipient_stale_contract", 0.16),
    ("recipient_unlinked", 0.14),
    ("notification_without_contract", 0.14),
    ("port_flapping", 0.06),
    ("bounce_burst", 0.08),
    ("current_address_bouncing", 0.10),
)

BAD_REASONS = (
    "not_json",
    "json_array",
    "missing_field",
    "wrong_type",
    "unknown_type",
    "unknown_channel",
    "unknown_status",
    "non_e164_msisdn",
    "key_msisdn_mismatch",
    "bad_event_time",
)

_PREFIXES = ("+49176", "+49176", "+49176", "+49179", "+49159", "+49177", "+49178", "+49157")
_BRANDS = ("o2", "blau", "eplus")
_BRAND_W = (0.5, 0.3, 0.2)
_OPERATORS = ("telekom", "vodafone", "1und1", "freenet", "lycamobile")
_DOMAINS = ("gmx.de", "web.de", "gmail.com", "t-online.de", "outlook.de", "yahoo.de")
_DOMAIN_W = (0.30, 0.28, 0.20, 0.14, 0.05, 0.03)
_TYPO_DOMAINS = ("gmx.net", "web.com", "gmail.de", "t-online.com", "gmial.com", "wbe.de")
_FIRST = (
    "anna",
    "lena",
    "laura",
    "julia",
    "sarah",
    "lisa",
    "marie",
    "sophie",
    "hannah",
    "lea",
    "katharina",
    "johanna",
    "clara",
    "emma",
    "mia",
    "nina",
    "sabine",
    "petra",
    "monika",
    "claudia",
    "andrea",
    "ursula",
    "lukas",
    "leon",
    "jonas",
    "felix",
    "paul",
    "max",
    "tim",
    "jan",
    "niklas",
    "david",
    "thomas",
    "michael",
    "andreas",
    "stefan",
    "markus",
    "peter",
    "juergen",
    "klaus",
    "frank",
    "tobias",
    "florian",
    "sebastian",
    "christian",
    "ali",
    "mehmet",
    "elif",
    "fatma",
    "olga",
    "igor",
    "marco",
    "giulia",
    "pawel",
    "agnieszka",
)
_LAST = (
    "mueller",
    "schmidt",
    "schneider",
    "fischer",
    "weber",
    "meyer",
    "wagner",
    "becker",
    "schulz",
    "hoffmann",
    "schaefer",
    "koch",
    "bauer",
    "richter",
    "klein",
    "wolf",
    "schroeder",
    "neumann",
    "schwarz",
    "zimmermann",
    "braun",
    "krueger",
    "hofmann",
    "hartmann",
    "lange",
    "schmitt",
    "werner",
    "schmitz",
    "krause",
    "meier",
    "lehmann",
    "schmid",
    "schulze",
    "maier",
    "koehler",
    "herrmann",
    "koenig",
    "walter",
    "mayer",
    "huber",
    "kaiser",
    "fuchs",
    "peters",
    "lang",
    "scholz",
    "moeller",
    "weiss",
    "jung",
    "hahn",
    "yilmaz",
    "kaya",
    "demir",
    "nowak",
    "kowalski",
    "rossi",
    "ivanov",
)
_TEMPLATES_POSTPAID = (("invoice", 0.45), ("contract_info", 0.45), ("topup_reminder", 0.10))
_TEMPLATES_PREPAID = (("topup_reminder", 0.50), ("contract_info", 0.40), ("invoice", 0.10))
_EMAIL_SENDERS = (("crm-mailer", 0.75), ("sendgrid-eu", 0.15), ("mailjet", 0.10))
_SMS_SENDERS = (("sms-gateway", 0.7), ("tyntec", 0.3))

# delivery events per outbound record, used to size the number of notifications
_DELIVERIES_PER_OUTBOUND = 0.89


_B36 = "0123456789abcdefghijklmnopqrstuvwxyz"
_B36_PAIRS = [a + b for a in _B36 for b in _B36]


def _b36(n: int) -> str:
    """Lower-case base 36 (compact ids)."""
    if n < 36:
        return _B36[n]
    out = []
    while n >= 1296:
        n, r = divmod(n, 1296)
        out.append(_B36_PAIRS[r])
    out.append(_B36_PAIRS[n] if n >= 36 else _B36[n])
    return "".join(reversed(out))


_ENCODE = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode


def partition_for(key: str, partitions: int) -> int:
    """Stable partition of a key (crc32 stand-in for Kafka's murmur2; co-partitioned)."""
    return zlib.crc32(key.encode("utf-8")) % partitions


class _Clock:
    """Formats epoch milliseconds as RFC 3339 UTC with milliseconds, caching dates."""

    def __init__(self) -> None:
        self._days: dict[int, str] = {}

    def fmt(self, ms: int) -> str:
        day, rem = divmod(ms, DAY)
        d = self._days.get(day)
        if d is None:
            d = datetime.fromtimestamp(day * 86400, tz=UTC).strftime("%Y-%m-%d")
            self._days[day] = d
        h, rem = divmod(rem, HOUR)
        m, rem = divmod(rem, MIN)
        s, r = divmod(rem, SEC)
        return f"{d}T{h:02d}:{m:02d}:{s:02d}.{r:03d}Z"


class _Customer:
    __slots__ = ("addrs", "first", "id", "last", "primary")

    def __init__(self, cid: str, first: str, last: str) -> None:
        self.id = cid
        self.first = first
        self.last = last
        self.primary: str | None = None
        self.addrs: dict[str, int] = {}  # normalised address -> first time it was linked


class _Holding:
    __slots__ = ("addrs", "brand", "contract", "cust", "end", "end_kind", "start", "start_kind")

    def __init__(self, start: int, kind: str, cust: _Customer, contract: str, brand: str) -> None:
        self.start = start
        self.start_kind = kind
        self.cust = cust
        self.contract = contract
        self.brand = brand
        self.end: int | None = None
        self.end_kind: str | None = None
        self.addrs: list[tuple[int, str]] = []  # (time it became current, address)


class _Number:
    __slots__ = (
        "anom_t",
        "change_t",
        "deliveries",
        "holdings",
        "last_hard_end",
        "msisdn",
        "part",
    )

    def __init__(self, msisdn: str, part: int) -> None:
        self.msisdn = msisdn
        self.part = part
        self.holdings: list[_Holding] = []
        self.change_t: list[int] = []
        self.anom_t: list[int] = []
        self.deliveries: list[list[Any]] = []
        self.last_hard_end: tuple[int, _Customer] | None = None


def _wchoice(rng: random.Random, items: Sequence[tuple[str, float]]) -> str:
    x = rng.random() * sum(w for _, w in items)
    for name, w in items:
        x -= w
        if x < 0:
            return name
    return items[-1][0]


def _allocate(total: int, weights: Sequence[tuple[str, float]]) -> dict[str, int]:
    """Split ``total`` over the kinds by weight (largest remainder, deterministic)."""
    wsum = sum(w for _, w in weights)
    raw = [(k, total * w / wsum) for k, w in weights]
    out = {k: int(v) for k, v in raw}
    rest = total - sum(out.values())
    for k, _ in sorted(raw, key=lambda kv: (-(kv[1] - int(kv[1])), kv[0]))[:rest]:
        out[k] += 1
    return out


class _Generator:
    def __init__(
        self,
        records: int,
        numbers: int,
        days: float,
        partitions: int,
        seed: int,
        anomaly_rate: float,
        dup_rate: float,
        bad_rate: float,
        jitter_s: float,
        start: str,
    ) -> None:
        if records < 1 or numbers < 1 or days <= 0 or partitions < 1:
            raise ValueError("records, numbers, days and partitions must be positive")
        if not 0 <= jitter_s < GRACE_S:
            raise ValueError(f"jitter_s must be in [0, {GRACE_S:g}) (below the detector's grace)")
        for name, v in (("anomaly_rate", anomaly_rate), ("dup_rate", dup_rate), ("bad_rate", bad_rate)):
            if not 0 <= v < 0.5:
                raise ValueError(f"{name} must be in [0, 0.5)")
        self.params = {
            "records": records,
            "numbers": numbers,
            "days": days,
            "partitions": partitions,
            "seed": seed,
            "anomaly_rate": anomaly_rate,
            "dup_rate": dup_rate,
            "bad_rate": bad_rate,
            "jitter_s": jitter_s,
            "start": start,
        }
        self.rng = random.Random(seed)
        self.records = records
        self.n_numbers = numbers
        self.partitions = partitions
        self.anomaly_rate = anomaly_rate
        self.dup_rate = dup_rate
        self.bad_rate = bad_rate
        self.jitter_ms = int(jitter_s * 1000)
        d = date.fromisoformat(start)
        self.w0 = calendar.timegm(d.timetuple()) * 1000
        self.w1 = self.w0 + int(days * DAY)
        self.clock = _Clock()

        self.used_msisdns: set[str] = set()
        self.used_addrs: set[str] = set()
        self.addr_owner: dict[str, _Customer] = {}
        self.customers: list[_Customer] = []
        self.numbers: list[_Number] = []
        self.unknown_numbers: list[_Number] = []
        self.cust_seq = self.rng.randrange(1000, 400000)
        self.contract_seq = self.rng.randrange(10_000_000, 40_000_000)
        self.msg_seq = self.rng.randrange(36**5, 36**6)
        self.seq = 0
        # raw events: (event_ms, rank, seq, topic, msisdn, fields)
        self.raw: list[tuple[int, int, int, str, str, dict[str, Any]]] = []
        self.planned: list[tuple[_Number, int, str]] = []
        self.stats: dict[str, Any] = {
            "lifecycle": {
                "re_ports_expected": 0,
                "brand_switches": 0,
                "holder_changes": 0,
                "recycled_or_reported_numbers": 0,
                "multi_number_customers": 0,
            },
            "anomalies": {k: 0 for k, _ in ANOMALY_KINDS},
            "anomaly_attempts_failed": {},
            "recipient_variants": 0,
            "extra_fields": 0,
        }

    # ------------------------------------------------------------------ helpers
    def _new_msisdn(self) -> str:
        rng = self.rng
        while True:
            m = rng.choice(_PREFIXES) + f"{rng.randrange(10**8):08d}"
            if m not in self.used_msisdns:
                self.used_msisdns.add(m)
                return m

    def _new_number(self) -> _Number:
        m = self._new_msisdn()
        return _Number(m, partition_for(m, self.partitions))

    def _new_contract(self) -> str:
        self.contract_seq += self.rng.randint(1, 97)
        return f"K-{self.contract_seq:08d}"

    def _new_message_id(self) -> str:
        self.msg_seq += self.rng.randint(1, 1295)
        return "m" + _b36(self.msg_seq)

    def _new_customer(self) -> _Customer:
        rng = self.rng
        self.cust_seq += rng.randint(1, 37)
        c = _Customer(f"C-{self.cust_seq:07d}", rng.choice(_FIRST), rng.choice(_LAST))
        c.primary = self._new_address(c)
        self.customers.append(c)
        return c

    def _new_address(self, c: _Customer) -> str:
        rng = self.rng
        f, l_ = c.first, c.last
        while True:
            p = rng.random()
            if p < 0.45:
                local = f"{f}.{l_}"
            elif p < 0.6:
                local = f"{f}{l_}"
            elif p < 0.72:
                local = f"{f[0]}.{l_}"
            elif p < 0.86:
                local = f"{f}.{l_}{rng.randint(1, 99)}"
            else:
                local = f"{f}{l_}{rng.randint(1950, 2006)}"
            if rng.random() < 0.5:  # most short forms are taken
                local += str(rng.randint(1, 999))
            addr = f"{local}@{_DOMAINS[self._widx(_DOMAIN_W)]}"
            if addr not in self.used_addrs:
                self.used_addrs.add(addr)
                return addr

    def _widx(self, weights: Sequence[float]) -> int:
        x = self.rng.random() * sum(weights)
        for i, w in enumerate(weights):
            x -= w
            if x < 0:
                return i
        return len(weights) - 1

    def _fresh_unlinked_address(self, base: str | None) -> str:
        """An address nobody is linked to: a typo of ``base`` or a generic mailbox."""
        rng = self.rng
        while True:
            if base and rng.random() < 0.7:
                local, _, domain = base.partition("@")
                r = rng.random()
                if r < 0.4 and len(local) > 3:
                    i = rng.randrange(1, len(local) - 1)
                    local = local[:i] + local[i + 1 :]
                elif r < 0.7:
                    domain = rng.choice(_TYPO_DOMAINS)
                else:
                    local = local + rng.choice(("x", "1", "_", "de"))
                addr = f"{local}@{domain}"
            else:
                addr = (
                    f"{rng.choice(('info', 'kontakt', 'mail', 'noreply', 'test'))}"
                    f"{rng.randint(1, 9999)}@{rng.choice(_DOMAINS)}"
                )
            if addr not in self.used_addrs:
                self.used_addrs.add(addr)
                return addr

    def _variant(self, addr: str) -> str:
        """Same address after normalisation (trim + lower-case), spelled differently."""
        r = self.rng.random()
        local, _, domain = addr.partition("@")
        if r < 0.4:
            return ".".join(p.capitalize() for p in local.split(".")) + "@" + domain
        if r < 0.7:
            return addr.upper() if self.rng.random() < 0.3 else local + "@" + domain.upper()
        return " " + addr + " " if self.rng.random() < 0.5 else addr + " "

    def _emit(self, t: int, topic: str, num: _Number, fields: dict[str, Any]) -> None:
        self.seq += 1
        self.raw.append((t, _RANK[topic], self.seq, topic, num.msisdn, fields))

    def _change(self, num: _Number, t: int, fields: dict[str, Any]) -> None:
        num.change_t.append(t)
        self._emit(t, TOPIC_CHANGES, num, fields)

    def _link(self, h: _Holding, t: int, addr: str) -> None:
        h.addrs.append((t, addr))
        c = h.cust
        prev = c.addrs.get(addr)
        if prev is None or t < prev:
            c.addrs[addr] = t
        self.addr_owner[addr] = c

    def _email_field(self, addr: str | None) -> str | None:
        if addr is not None and self.rng.random() < 0.03:
            self.stats["recipient_variants"] += 1
            return self._variant(addr).strip()
        return addr

    # ------------------------------------------------------------------ phase 1: lives
    def _start(
        self,
        num: _Number,
        t: int,
        kind: str,
        cust: _Customer,
        brand: str,
        email: str | None,
        operator: str | None = None,
        contract: str | None = None,
    ) -> _Holding:
        h = _Holding(t, kind, cust, contract or self._new_contract(), brand)
        # re_port expectation: last holding ended by ported_out/contract_ended, other customer
        lhe = num.last_hard_end
        if lhe is not None and t - lhe[0] <= 365 * DAY and lhe[1] is not cust:
            self.stats["lifecycle"]["re_ports_expected"] += 1
        num.holdings.append(h)
        fields: dict[str, Any] = {
            "type": kind,
            "contract_id": h.contract,
            "customer_id": cust.id,
            "brand": brand,
        }
        if operator is not None:
            fields["operator"] = operator
        fields["email"] = self._email_field(email)
        self._change(num, t, fields)
        if email is not None:
            self._link(h, t, email)
            if self.rng.random() < 0.7:  # welcome mail, sometimes in the very same ms
                dt = 0 if self.rng.random() < 0.05 else self.rng.randint(SEC, 20 * SEC)
                self.planned.append((num, t + dt, "contract_info"))
        return h

    def _end(self, num: _Number, h: _Holding, t: int, kind: str) -> None:
        h.end = t
        h.end_kind = kind
        if kind in ("ported_out", "contract_ended"):
            num.last_hard_end = (t, h.cust)

    def _current(self, h: _Holding) -> str | None:
        return h.addrs[-1][1] if h.addrs else None

    def _email_change(self, num: _Number, h: _Holding, t: int, addr: str) -> int:
        """email_changed (+ usually email_verified); returns the time of the last event."""
        rng = self.rng
        h.cust.primary = addr
        self._change(num, t, {"type": "email_changed", "contract_id": h.contract, "email": self._email_field(addr)})
        self._link(h, t, addr)
        if rng.random() < 0.5:
            self.planned.append((num, t + rng.randint(3 * SEC, 60 * SEC), "contract_info"))
        if rng.random() < 0.75:
            tv = t + rng.randint(MIN, 2 * DAY)
            if tv < self.w1:
                self._change(
                    num, tv, {"type": "email_verified", "contract_id": h.contract, "email": self._email_field(addr)}
                )
                self._link(h, tv, addr)
                return tv
        return t

    def _cancel_notice(self, num: _Number, h: _Holding, t_end: int) -> None:
        if self.rng.random() < 0.6:
            tc = t_end - self.rng.randint(HOUR, 10 * DAY)
            if tc > h.start + HOUR:
                self.planned.append((num, tc, "cancellation_confirmation"))

    def _restart(self, num: _Number, t: int, after: str) -> tuple[_Holding | None, int]:
        """After a port-out or contract end: maybe a new (different) customer months later."""
        rng = self.rng
        if rng.random() >= 0.65:
            return None, t
        tr = t + rng.randint(40 * DAY, 250 * DAY)
        if tr >= self.w1 - DAY:
            return None, t
        cust = self._new_customer()
        by_port = rng.random() < (0.8 if after == "ported_out" else 0.2)
        email = None if rng.random() < 0.06 else cust.primary
        self.stats["lifecycle"]["recycled_or_reported_numbers"] += 1
        if by_port:
            h = self._start(
                num, tr, "ported_in", cust, _BRANDS[self._widx(_BRAND_W)], email, operator=rng.choice(_OPERATORS)
            )
        else:
            h = self._start(num, tr, "contract_started", cust, _BRANDS[self._widx(_BRAND_W)], email)
        return h, tr

    def _flap(self, num: _Number, h: _Holding, t: int) -> tuple[_Holding | None, int, int]:
        """Port flapping: out, back in (same customer), out, maybe in again, within ~3 weeks."""
        rng = self.rng
        cust, brand = h.cust, h.brand
        op1, op2 = rng.sample(_OPERATORS, 2)
        addr = self._current(h)
        self._change(num, t, {"type": "ported_out", "contract_id": h.contract, "operator": op1})
        self._end(num, h, t, "ported_out")
        t2 = t + rng.randint(DAY, 6 * DAY)
        h2 = self._start(num, t2, "ported_in", cust, brand, addr, operator=op1)
        t3 = t2 + rng.randint(2 * DAY, 8 * DAY)
        self._change(num, t3, {"type": "ported_out", "contract_id": h2.contract, "operator": op2})
        self._end(num, h2, t3, "ported_out")
        n = 4
        if rng.random() < 0.5:
            t4 = t3 + rng.randint(DAY, 6 * DAY)
            h4 = self._start(num, t4, "ported_in", cust, brand, addr, operator=op2)
            return h4, t4, n + 1
        return None, t3, n

    def _life(self, num: _Number, budget: int, flap_at: int | None) -> None:
        rng = self.rng
        w0, w1 = self.w0, self.w1
        span = w1 - w0
        if rng.random() < 0.8:
            t = w0 + rng.randrange(max(1, int(0.12 * span)))
        else:
            t = w0 + rng.randrange(max(1, int(0.7 * span)))
        if self.customers and rng.random() < 0.03:
            cust = rng.choice(self.customers)  # a customer with a second number
            self.stats["lifecycle"]["multi_number_customers"] += 1
        else:
            cust = self._new_customer()
        kind = "ported_in" if rng.random() < 0.15 else "contract_started"
        email = None if rng.random() < 0.06 else cust.primary
        h: _Holding | None = self._start(
            num,
            t,
            kind,
            cust,
            _BRANDS[self._widx(_BRAND_W)],
            email,
            operator=rng.choice(_OPERATORS) if kind == "ported_in" else None,
        )
        used = 1
        last_port = t if kind == "ported_in" else -(10**15)
        assert h is not None
        if email is None:
            te = t + rng.randint(HOUR, 3 * DAY)
            if te < w1 - HOUR:
                t = self._email_change(num, h, te, cust.primary or "")
                used += 2
        elif rng.random() < 0.7:
            tv = t + rng.randint(2 * MIN, 2 * DAY)
            self._change(
                num, tv, {"type": "email_verified", "contract_id": h.contract, "email": self._email_field(email)}
            )
            self._link(h, tv, email)
            t = tv
            used += 1
        flap_pending = flap_at is not None
        while True:
            if h is None:
                break
            if used >= budget and not flap_pending:
                break
            remaining = max(1, budget - used)
            mean = max(HOUR, (w1 - t) / (remaining + 1))
            t_next = t + 10 * MIN + int(rng.expovariate(1.0 / mean))
            if flap_pending and flap_at is not None and (t_next >= flap_at or used >= budget or t_next >= w1 - HOUR):
                tf = max(t + DAY, flap_at, last_port + 31 * DAY)
                flap_pending = False
                if tf + 30 * DAY < w1:
                    h, t, n = self._flap(num, h, tf)
                    last_port = t
                    used += n
                    self.stats["anomalies"]["port_flapping"] += 1
                    if h is None:
                        h, t = self._restart(num, t + 31 * DAY, "ported_out")
                        if h is not None:
                            last_port = t
                        used += 1
                continue
            if t_next >= w1 - HOUR:
                break
            t = t_next
            ops = [("email_change", 42.0), ("reverify", 6.0), ("brand_switch", 12.0), ("holder_change", 10.0)]
            if not flap_pending:
                ops += [("port_out", 12.0), ("end", 10.0)]
            op = _wchoice(rng, ops)
            if op == "port_out" and t - last_port < 31 * DAY:
                op = "email_change"
            if op == "reverify" and not h.addrs:
                op = "email_change"
            if op == "email_change":
                t = self._email_change(num, h, t, self._new_address(h.cust))
                used += 2
            elif op == "reverify":
                addr = self._current(h) or ""
                self._change(
                    num, t, {"type": "email_verified", "contract_id": h.contract, "email": self._email_field(addr)}
                )
                self._link(h, t, addr)
                used += 1
            elif op == "brand_switch":
                old = h
                self._cancel_notice(num, old, t)
                self._change(num, t, {"type": "contract_ended", "contract_id": old.contract})
                self._end(num, old, t, "contract_ended")
                t += rng.randint(MIN, 5 * MIN)
                brand = rng.choice([b for b in _BRANDS if b != old.brand])
                cur = self._current(old)
                if cur is None or rng.random() < 0.25:
                    cur = self._new_address(old.cust)
                    old.cust.primary = cur
                h = self._start(num, t, "contract_started", old.cust, brand, cur)
                self.stats["lifecycle"]["brand_switches"] += 1
                used += 2
            elif op == "holder_change":
                old = h
                new = self._new_customer()
                self._change(num, t, {"type": "holder_changed", "contract_id": old.contract, "customer_id": new.id})
                self._end(num, old, t, "holder_changed")
                h = _Holding(t, "holder_changed", new, old.contract, old.brand)
                num.holdings.append(h)
                self.stats["lifecycle"]["holder_changes"] += 1
                used += 1
                te = t + rng.randint(10 * MIN, 3 * DAY)
                if te < w1:
                    t = self._email_change(num, h, te, new.primary or "")
                    used += 2
            elif op == "port_out":
                self._cancel_notice(num, h, t)
                self._change(
                    num, t, {"type": "ported_out", "contract_id": h.contract, "operator": rng.choice(_OPERATORS)}
                )
                self._end(num, h, t, "ported_out")
                last_port = t
                used += 1
                h, t2 = self._restart(num, t, "ported_out")
                if h is not None:
                    if h.start_kind == "ported_in":
                        last_port = t2
                    t = t2
                    used += 1
            else:  # end
                self._cancel_notice(num, h, t)
                self._change(num, t, {"type": "contract_ended", "contract_id": h.contract})
                self._end(num, h, t, "contract_ended")
                used += 1
                h, t2 = self._restart(num, t, "contract_ended")
                if h is not None:
                    if h.start_kind == "ported_in":
                        last_port = t2
                    t = t2
                    used += 1

    # ------------------------------------------------------------------ state lookups
    @staticmethod
    def _state_at(num: _Number, t: int) -> tuple[_Holding | None, str | None]:
        for h in reversed(num.holdings):
            if h.start <= t:
                if h.end is not None and h.end <= t:
                    return None, None
                addr = None
                for at, a in h.addrs:
                    if at <= t:
                        addr = a
                    else:
                        break
                return h, addr
        return None, None

    def _free(self, num: _Number, times: Sequence[int]) -> bool:
        for t in times:
            if t <= self.w0 or t >= self.w1:
                return False
            for a in num.anom_t:
                if abs(t - a) < 2 * DAY:
                    return False
            for c in num.change_t:
                if abs(t - c) < 10 * MIN:
                    return False
        return True

    def _active_intervals(self, num: _Number) -> list[tuple[int, int, _Holding]]:
        out = []
        for h in num.holdings:
            end = self.w1 if h.end is None else min(h.end, self.w1)
            if end - h.start > 2 * SEC:
                out.append((h.start, end, h))
        return out

    def _dead_intervals(self, num: _Number) -> list[tuple[int, int]]:
        out = []
        t = self.w0
        for h in num.holdings:
            if h.start - t > 3 * HOUR:
                out.append((t + HOUR, h.start - HOUR))
            t = self.w1 if h.end is None else h.end
        if self.w1 - t > 3 * HOUR:
            out.append((t + HOUR, self.w1 - HOUR))
        return out

    def _daytime(self, t: int, lo: int, hi: int) -> int:
        """Bias a uniform time towards 06:00-22:00 UTC (redraw night times once or twice)."""
        rng = self.rng
        for _ in range(2):
            if 6 <= (t % DAY) // HOUR < 22 or rng.random() < 0.15:
                return t
            t = rng.randrange(lo, hi)
        return t

    # ------------------------------------------------------------------ phase 2: notifications
    def _template(self, brand: str) -> str:
        return _wchoice(self.rng, _TEMPLATES_PREPAID if brand == "blau" else _TEMPLATES_POSTPAID)

    def _notify(
        self,
        num: _Number,
        t: int,
        channel: str,
        recipient: str,
        brand: str,
        template: str,
        h: _Holding | None,
        delivery: str,
    ) -> None:
        rng = self.rng
        sender = _wchoice(rng, _EMAIL_SENDERS if channel == "email" else _SMS_SENDERS)
        mid = self._new_message_id()
        if h is not None and rng.random() > 0.03:
            contract_id: str | None = h.contract
            customer_id: str | None = h.cust.id
        else:
            contract_id = customer_id = None
        fields = {
            "message_id": mid,
            "brand": brand,
            "channel": channel,
            "recipient": recipient,
            "template": template,
            "contract_id": contract_id,
            "customer_id": customer_id,
            "sender": sender,
        }
        self._emit(t, TOPIC_OUTBOUND, num, fields)
        self._plan_delivery(num, t, mid, recipient.strip().lower(), brand, sender, channel, delivery)

    def _plan_delivery(
        self, num: _Number, t: int, mid: str, rcpt: str, brand: str, sender: str, channel: str, mode: str
    ) -> None:
        rng = self.rng
        dl = num.deliveries
        d = t + int(SEC * min(240.0, 1.5 + rng.expovariate(1 / 25.0)))
        # entry: [time, message_id, recipient, status, bounce_type, smtp, brand, sender, mutable]
        if channel == "sms":
            r = rng.random()
            ds = t + rng.randint(SEC, 20 * SEC)
            if r < 0.05:
                dl.append([ds, mid, rcpt, "deferred", None, None, brand, sender, False])
                dl.append([ds + rng.randint(MIN, 30 * MIN), mid, rcpt, "delivered", None, None, brand, sender, False])
            elif r < 0.58:
                dl.append([ds, mid, rcpt, "delivered", None, None, brand, sender, False])
            return
        if mode == "normal":
            r = rng.random()
            if r < 0.815:
                dl.append([d, mid, rcpt, "delivered", None, "2.0.0", brand, sender, False])
            elif r < 0.855:
                dl.append([d, mid, rcpt, "deferred", None, rng.choice(("4.4.1", "4.7.0")), brand, sender, False])
                dl.append(
                    [d + rng.randint(5 * MIN, 60 * MIN), mid, rcpt, "delivered", None, "2.0.0", brand, sender, False]
                )
            elif r < 0.88:
                dl.append([d, mid, rcpt, "bounced", "soft", rng.choice(("4.2.2", "4.4.7")), brand, sender, True])
            elif r < 0.885:
                dl.append([d, mid, rcpt, "delivered", None, "2.0.0", brand, sender, False])
                dl.append([d + rng.randint(HOUR, 48 * HOUR), mid, rcpt, "complained", None, None, brand, sender, False])
            # else: the provider reports nothing
        elif mode == "delivered":
            dl.append([d, mid, rcpt, "delivered", None, "2.0.0", brand, sender, False])
        elif mode == "hard":
            dl.append([d, mid, rcpt, "bounced", "hard", rng.choice(("5.1.1", "5.1.1", "5.2.1")), brand, sender, False])
        elif mode == "soft":
            dl.append([d, mid, rcpt, "bounced", "soft", "4.2.2", brand, sender, False])

    def _normal_notification(self, num: _Number, t: int, template: str | None) -> bool:
        h, addr = self._state_at(num, t)
        if h is None:
            return False
        rng = self.rng
        if addr is None or rng.random() < 0.15:
            channel, recipient = "sms", num.msisdn
        else:
            channel, recipient = "email", addr
            if rng.random() < 0.02:
                recipient = self._variant(addr)
                self.stats["recipient_variants"] += 1
        self._notify(num, t, channel, recipient, h.brand, template or self._template(h.brand), h, "normal")
        return True

    def _pick_time(self, lo: int, hi: int) -> int | None:
        if hi - lo < 2 * SEC:
            return None
        t = self.rng.randrange(lo, hi)
        return self._daytime(t, lo, hi)

    def _inject(self, kind: str) -> int:
        """Try to inject one anomaly of ``kind``; returns notifications emitted (0 = failed)."""
        rng = self.rng
        for _ in range(60):
            if kind == "notification_without_contract" and rng.random() < 0.25:
                num = self._new_number()
                self.unknown_numbers.append(num)
                t = rng.randrange(self.w0 + HOUR, self.w1 - HOUR)
                t = self._daytime(t, self.w0 + HOUR, self.w1 - HOUR)
                brand = _BRANDS[self._widx(_BRAND_W)]
                if rng.random() < 0.5:
                    self._notify(num, t, "sms", num.msisdn, brand, self._template(brand), None, "normal")
                else:
                    addr = self._fresh_unlinked_address(None)
                    self._notify(
                        num,
                        t,
                        "email",
                        addr,
                        brand,
                        self._template(brand),
                        None,
                        "delivered" if rng.random() < 0.7 else "hard",
                    )
                num.anom_t.append(t)
                return 1
            num = rng.choice(self.numbers)
            if kind == "notification_without_contract":
                dead = self._dead_intervals(num)
                if not dead:
                    continue
                lo, hi = rng.choice(dead)
                t2 = self._pick_time(lo, hi)
                if t2 is None or not self._free(num, (t2,)):
                    continue
                prev = [h for h in num.holdings if h.start <= t2]
                last = prev[-1] if prev else None
                brand = last.brand if last else _BRANDS[self._widx(_BRAND_W)]
                last_addr = self._current(last) if last else None
                if last_addr is not None and rng.random() < 0.6:
                    self._notify(
                        num,
                        t2,
                        "email",
                        last_addr,
                        brand,
                        self._template(brand),
                        last,
                        "delivered" if rng.random() < 0.8 else "hard",
                    )
                else:
                    self._notify(num, t2, "sms", num.msisdn, brand, self._template(brand), last, "normal")
                num.anom_t.append(t2)
                return 1
            act = self._active_intervals(num)
            if not act:
                continue
            if kind == "recipient_previous_holder":
                cands = []
                for j, h in enumerate(num.holdings):
                    for p in reversed(num.holdings[:j]):
                        if p.cust is not h.cust and p.addrs:
                            cands.append((h, p))
                            break
                if not cands:
                    continue
                h, p = rng.choice(cands)
                end = self.w1 if h.end is None else min(h.end, self.w1)
                t3 = self._pick_time(h.start + 10 * MIN, end - 10 * MIN)
                if t3 is None or not self._free(num, (t3,)):
                    continue
                hh, cur = self._state_at(num, t3)
                addr = p.addrs[-1][1] if rng.random() < 0.7 else rng.choice(p.addrs)[1]
                if hh is not h or addr == cur or self.addr_owner[addr] is h.cust:
                    continue
                believed = p if rng.random() < 0.5 else h
                self._notify(
                    num,
                    t3,
                    "email",
                    addr,
                    h.brand,
                    self._template(h.brand),
                    believed,
                    "delivered" if rng.random() < 0.9 else "hard",
                )
                num.anom_t.append(t3)
                return 1
            lo, hi, h = rng.choice(act)
            span_needed = 8 * HOUR if kind == "bounce_burst" else 0
            t_pick = self._pick_time(lo + 10 * MIN, hi - 10 * MIN - span_needed)
            if t_pick is None:
                continue
            t = t_pick
            hh, cur = self._state_at(num, t)
            if hh is not h:
                continue
            if kind == "recipient_other_customer":
                holders = {id(x.cust) for x in num.holdings}
                other: str | None = None
                for _ in range(20):
                    c = rng.choice(self.customers)
                    if id(c) in holders or not c.addrs:
                        continue
                    a, at = rng.choice(list(c.addrs.items()))
                    if at <= t - DAY:
                        other = a
                        break
                if other is None or not self._free(num, (t,)):
                    continue
                self._notify(
                    num,
                    t,
                    "email",
                    other,
                    h.brand,
                    self._template(h.brand),
                    h,
                    "delivered" if rng.random() < 0.95 else "hard",
                )
            elif kind == "recipient_stale_contract":
                stale = [a for a, at in h.cust.addrs.items() if a != cur and at <= t - MIN]
                if not stale or not self._free(num, (t,)):
                    continue
                r = rng.random()
                self._notify(
                    num,
                    t,
                    "email",
                    rng.choice(stale),
                    h.brand,
                    self._template(h.brand),
                    h,
                    "delivered" if r < 0.7 else "hard",
                )
            elif kind == "recipient_unlinked":
                if not self._free(num, (t,)):
                    continue
                addr = self._fresh_unlinked_address(cur or h.cust.primary)
                self._notify(
                    num,
                    t,
                    "email",
                    addr,
                    h.brand,
                    self._template(h.brand),
                    h,
                    "hard" if rng.random() < 0.55 else "delivered",
                )
            elif kind == "current_address_bouncing":
                if cur is None or not self._free(num, (t,)):
                    continue
                self._notify(num, t, "email", cur, h.brand, self._template(h.brand), h, "hard")
            elif kind == "bounce_burst":
                if cur is None:
                    continue
                n = 3 if rng.random() < 0.6 else 4
                times = [t]
                for _ in range(n - 1):
                    times.append(times[-1] + rng.randint(20 * MIN, 150 * MIN))
                if times[-1] > t + span_needed or not self._free(num, times):
                    continue
                if self._state_at(num, times[-1]) != (h, cur):
                    continue
                for ti in times:
                    self._notify(num, ti, "email", cur, h.brand, self._template(h.brand), h, "soft")
                num.anom_t.extend((times[0], times[-1]))
                return n
            else:
                raise ValueError(kind)
            num.anom_t.append(t)
            return 1
        return 0

    def _filter_bounces(self, num: _Number) -> None:
        """Turn a normal soft bounce into a delivery when another bounce is within 24 h."""
        dl = num.deliveries
        fixed = sorted(e[0] for e in dl if e[3] == "bounced" and not e[8])
        kept: list[int] = []
        for e in sorted((e for e in dl if e[3] == "bounced" and e[8]), key=lambda e: e[0]):
            t = e[0]
            i = bisect.bisect_left(fixed, t - DAY)
            clash = i < len(fixed) and fixed[i] <= t + DAY
            if not clash and kept and t - kept[-1] <= DAY:
                clash = True
            if clash:
                e[3], e[4], e[5] = "delivered", None, "2.0.0"
            else:
                kept.append(t)

    # ------------------------------------------------------------------ bad records
    def _bad_record(self, num: _Number, t: int, reason: str) -> tuple[str, str, str]:
        """Returns (topic, key, payload text) of an invalid record with a fresh event id."""
        rng = self.rng
        key = num.msisdn
        if reason == "unknown_type":
            topic = TOPIC_CHANGES
        elif reason == "unknown_channel":
            topic = TOPIC_OUTBOUND
        elif reason == "unknown_status":
            topic = TOPIC_DELIVERY
        else:
            topic = rng.choice(TOPICS)
        self.eid += 1
        v: dict[str, Any] = {
            "schema_version": 1,
            "event_id": "e" + _b36(self.eid),
            "event_time": self.clock.fmt(t),
            "msisdn": num.msisdn,
        }
        addr = self._fresh_unlinked_address(None)
        if topic == TOPIC_CHANGES:
            v.update({"type": "email_changed", "contract_id": self._new_contract(), "email": addr})
            required = ["event_id", "event_time", "msisdn", "type", "contract_id", "email", "schema_version"]
        elif topic == TOPIC_OUTBOUND:
            v.update(
                {
                    "message_id": self._new_message_id(),
                    "brand": "o2",
                    "channel": "email",
                    "recipient": addr,
                    "template": "invoice",
                    "contract_id": None,
                    "customer_id": None,
                    "sender": "crm-mailer",
                }
            )
            required = [
                "event_id",
                "event_time",
                "msisdn",
                "message_id",
                "channel",
                "recipient",
                "brand",
                "template",
                "sender",
            ]
        else:
            v.update(
                {
                    "message_id": self._new_message_id(),
                    "recipient": addr,
                    "status": "delivered",
                    "bounce_type": None,
                    "smtp_status": "2.0.0",
                    "brand": "o2",
                    "sender": "crm-mailer",
                }
            )
            required = ["event_id", "event_time", "msisdn", "message_id", "recipient", "status", "brand", "sender"]
        if reason == "not_json":
            text = json.dumps(v, separators=(",", ":"))
            r = rng.random()
            if r < 0.6:
                return topic, key, text[: rng.randrange(1, len(text) - 1)]
            if r < 0.8:
                return topic, key, str(v)  # Python repr: single quotes, None
            return topic, key, "event " + v["event_id"] + " could not be serialised"
        if reason == "json_array":
            return topic, key, json.dumps([v], separators=(",", ":"))
        if reason == "missing_field":
            del v[rng.choice(required)]
        elif reason == "wrong_type":
            f = rng.choice(
                (
                    "event_id",
                    "msisdn",
                    "schema_version",
                    "event_time",
                    "contract_id" if topic == TOPIC_CHANGES else "message_id",
                )
            )
            if f == "msisdn":
                v[f] = int(num.msisdn[1:])
            elif f == "schema_version":
                v[f] = "1"
            elif f == "event_time":
                v[f] = t
            else:
                v[f] = rng.randint(1, 10**9)
        elif reason == "unknown_type":
            v["type"] = rng.choice(("contract_paused", "sim_swapped", "EMAIL_CHANGED"))
        elif reason == "unknown_channel":
            v["channel"] = rng.choice(("push", "fax", "letter", "EMAIL"))
        elif reason == "unknown_status":
            v["status"] = rng.choice(("opened", "clicked", "dropped", "DELIVERED"))
        elif reason == "non_e164_msisdn":
            national = "0" + num.msisdn[3:]
            bad = rng.choice((national, num.msisdn[1:], num.msisdn[:6] + " " + num.msisdn[6:], "+0" + num.msisdn[3:]))
            v["msisdn"] = bad
            key = bad
        elif reason == "key_msisdn_mismatch":
            other = rng.choice(self.numbers)
            if other is num:
                other = self._new_number()
            key = other.msisdn
        elif reason == "bad_event_time":
            v["event_time"] = rng.choice(
                (
                    "2026-02-30T10:00:00.000Z",
                    self.clock.fmt(t)[:-1],
                    self.clock.fmt(t).replace("T", " "),
                    "2026-03-01T24:00:00.000Z",
                    "yesterday",
                    "",
                )
            )
        return topic, key, json.dumps(v, separators=(",", ":"))

    # ------------------------------------------------------------------ main
    def build(self) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        rng = self.rng
        unique_target = self.records / (1.0 + self.dup_rate + self.bad_rate)
        per_number = unique_target / self.n_numbers
        change_budget = 0.15 * per_number * 1.3  # lives end early: over-ask
        outbound_target = 0.45 * unique_target
        n_anom = round(self.anomaly_rate * outbound_target)
        alloc = _allocate(n_anom, ANOMALY_KINDS)

        # phase 1: lives
        self.numbers = [self._new_number() for _ in range(self.n_numbers)]
        flappers = set(rng.sample(range(self.n_numbers), min(self.n_numbers, alloc["port_flapping"])))
        span = self.w1 - self.w0
        for i, num in enumerate(self.numbers):
            budget = max(1, int(change_budget * rng.uniform(0.3, 1.7) + 0.5))
            flap_at = (self.w0 + int(span * rng.uniform(0.25, 0.85))) if i in flappers else None
            self._life(num, budget, flap_at)
        for num in self.numbers:
            num.change_t.sort()
        n_changes = len(self.raw)

        # phase 2a: anomalies (first, so that their spacing rules see each other)
        n_anom_notifications = 0
        failed: dict[str, int] = {}
        for kind, count in alloc.items():
            if kind == "port_flapping":
                if count > self.stats["anomalies"][kind]:
                    failed[kind] = count - self.stats["anomalies"][kind]
                continue
            for _ in range(count):
                n = self._inject(kind)
                if n:
                    self.stats["anomalies"][kind] += 1
                    n_anom_notifications += n
                else:
                    failed[kind] = failed.get(kind, 0) + 1
        self.stats["anomaly_attempts_failed"] = failed

        # phase 2b: planned notifications (welcome, confirmations, cancellations)
        n_planned = 0
        for num, t, template in self.planned:
            if t < self.w1 and self._normal_notification(num, t, template):
                n_planned += 1

        # phase 2c: normal notifications, spread over active time
        remaining = unique_target - n_changes
        outbound_total = max(0.0, remaining / (1.0 + _DELIVERIES_PER_OUTBOUND))
        n_normal = max(0.0, outbound_total - n_anom_notifications - n_planned)
        acts = [self._active_intervals(num) for num in self.numbers]
        weights = [sum(b - a for a, b, _ in act) for act in acts]
        total_w = sum(weights) or 1
        for num, act, w in zip(self.numbers, acts, weights, strict=True):
            lam = n_normal * w / total_w
            k = int(lam) + (1 if rng.random() < lam - int(lam) else 0)
            if not act:
                continue
            for _ in range(k):
                x = rng.randrange(int(w))
                for a, b, _h in act:
                    if x < b - a:
                        lo, hi = a + SEC, b - SEC
                        t = min(max(a + x, lo), hi)
                        t = self._daytime(t, lo, hi)
                        break
                    x -= b - a
                self._normal_notification(num, t, None)

        # phase 3: deliveries
        for num in self.numbers + self.unknown_numbers:
            self._filter_bounces(num)
            for e in num.deliveries:
                t, mid, rcpt, status, btype, smtp, brand, sender, _m = e
                self.seq += 1
                self.raw.append(
                    (
                        t,
                        2,
                        self.seq,
                        TOPIC_DELIVERY,
                        num.msisdn,
                        {
                            "message_id": mid,
                            "recipient": rcpt,
                            "status": status,
                            "bounce_type": btype,
                            "smtp_status": smtp,
                            "brand": brand,
                            "sender": sender,
                        },
                    )
                )
        return self._finish()

    def _finish(self) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        rng = self.rng
        fmt = self.clock.fmt
        enc = _ENCODE
        self.raw.sort(key=itemgetter(0, 1, 2))
        parts = {n.msisdn: n.part for n in self.numbers + self.unknown_numbers}
        by_msisdn = {n.msisdn: n for n in self.numbers}
        jit = self.jitter_ms
        small = min(jit, 200)
        self.eid = 0
        # entries: (arrival, event_ms, rank, seq, kind, topic, key, payload, partition)
        entries: list[tuple[int, int, int, int, int, str, str, str, int]] = []
        statuses: dict[str, int] = {}
        for t, rank, seq, topic, m, fields in self.raw:
            self.eid += 1
            v: dict[str, Any] = {
                "schema_version": 1,
                "event_id": "e" + _b36(self.eid),
                "event_time": fmt(t),
                "msisdn": m,
            }
            v.update(fields)
            if rng.random() < 0.01:
                v["trace_id"] = f"{rng.getrandbits(64):016x}"  # unknown field: ignored
                self.stats["extra_fields"] += 1
            if rank == 2:
                statuses[fields["status"]] = statuses.get(fields["status"], 0) + 1
            r = rng.random()
            delay = int((r / 0.3) * (jit + 1)) if r < 0.3 else int(r * (small + 1))
            entries.append((t + delay, t, rank, seq, 0, topic, m, enc(v), parts[m]))
        n_good = len(entries)
        n_dups = round(n_good * self.dup_rate)
        for i in sorted(rng.sample(range(n_good), n_dups)):
            e = entries[i]
            arr = e[1] + rng.randint(e[0] - e[1], max(e[0] - e[1], jit))
            entries.append((arr, e[1], e[2], e[3], 1, *e[5:]))
        n_bad = round(self.records * self.bad_rate)
        bad_counts: dict[str, int] = {}
        bad_seq = self.seq
        for _ in range(n_bad):
            base = entries[rng.randrange(n_good)]
            reason = rng.choice(BAD_REASONS)
            bad_counts[reason] = bad_counts.get(reason, 0) + 1
            num = by_msisdn.get(base[6]) or rng.choice(self.numbers)
            topic, key, payload = self._bad_record(num, base[1], reason)
            bad_seq += 1
            entries.append((base[0], base[1], 3, bad_seq, 2, topic, key, payload, partition_for(key, self.partitions)))
        entries.sort(key=itemgetter(0, 1, 2, 3, 4))

        offsets: dict[tuple[str, int], int] = {}
        out: list[dict[str, Any]] = []
        by_topic = {tp: 0 for tp in TOPICS}
        for _arr, t, _rank, _seq, _kind, topic, key, payload, part in entries:
            off = offsets.get((topic, part), 0)
            offsets[(topic, part)] = off + 1
            by_topic[topic] += 1
            out.append(
                {
                    "topic": topic,
                    "partition": part,
                    "offset": off,
                    "tstype": "create",
                    "ts": t,
                    "broker": 1,
                    "key": key,
                    "payload": payload,
                }
            )

        lc = self.stats["lifecycle"]
        change_types: dict[str, int] = {}
        unique_by_topic = {tp: 0 for tp in TOPICS}
        for _t, _r, _s, topic, _m, fields in self.raw:
            unique_by_topic[topic] += 1
            if topic == TOPIC_CHANGES:
                change_types[fields["type"]] = change_types.get(fields["type"], 0) + 1
        total = len(out)
        manifest: dict[str, Any] = {
            "generator": "bench.generate",
            "params": self.params,
            "records": total,
            "by_topic": by_topic,
            "mix": {tp: round(c / total, 3) for tp, c in by_topic.items()} if total else {},
            "unique_events": n_good,
            "unique_events_by_topic": unique_by_topic,
            "numbers": len(self.numbers),
            "unknown_numbers": len(self.unknown_numbers),
            "customers": len(self.customers),
            "partitions": self.partitions,
            "first_event_time": fmt(self.raw[0][0]) if self.raw else None,
            "last_event_time": fmt(self.raw[-1][0]) if self.raw else None,
            "change_types": dict(sorted(change_types.items())),
            "delivery_status": dict(sorted(statuses.items())),
            "anomalies": self.stats["anomalies"],
            "anomalies_total": sum(self.stats["anomalies"].values()),
            "anomalies_not_placed": self.stats["anomaly_attempts_failed"],
            "lifecycle": lc,
            "duplicates": n_dups,
            "bad_records": n_bad,
            "bad_records_by_reason": dict(sorted(bad_counts.items())),
            "recipient_spelling_variants": self.stats["recipient_variants"],
            "records_with_unknown_fields": self.stats["extra_fields"],
            "max_arrival_lateness_ms": jit,
            "notes": (
                "anomalies counts injected cases per intended kind; a detector's alert counts "
                "can differ: re_port (info) also fires on normal re-ports/recycled numbers "
                "(lifecycle.re_ports_expected), a flapping number that is later re-ported "
                "also raises re_port, and bad records / duplicates raise nothing."
            ),
        }
        return out, manifest


def generate(
    records: int,
    numbers: int,
    days: float,
    partitions: int,
    seed: int,
    *,
    anomaly_rate: float = 0.03,
    dup_rate: float = 0.005,
    bad_rate: float = 0.002,
    jitter_s: float = 10.0,
    start: str = "2025-06-01",
    manifest: dict[str, Any] | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield capture envelopes (``kcat -C -J`` dicts) in arrival order.

    Everything is computed up front (the stream must be sorted by arrival); if
    ``manifest`` is given it is filled in before the first envelope is yielded.
    """
    gen = _Generator(records, numbers, days, partitions, seed, anomaly_rate, dup_rate, bad_rate, jitter_s, start)
    envelopes, man = gen.build()
    if manifest is not None:
        manifest.update(man)
    yield from envelopes


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.generate",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--records", type=int, default=150_000, help="about this many lines")
    p.add_argument("--numbers", type=int, default=2000, help="MSISDNs with a contract life")
    p.add_argument("--days", type=float, default=365, help="length of the time window")
    p.add_argument("--partitions", type=int, default=6)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", required=True, help="capture file (JSON Lines); '-' for stdout")
    p.add_argument("--anomaly-rate", type=float, default=0.03, help="injected anomalies per outbound notification")
    p.add_argument("--dup-rate", type=float, default=0.005, help="fraction of records resent")
    p.add_argument("--bad-rate", type=float, default=0.002, help="fraction of invalid records")
    p.add_argument(
        "--jitter-s",
        type=float,
        default=10.0,
        help=f"max arrival lateness in seconds (< {GRACE_S:g}, the detector's grace)",
    )
    p.add_argument("--start", default="2025-06-01", help="first day of the window (UTC)")
    a = p.parse_args(argv)
    if not 0 <= a.jitter_s < GRACE_S:
        p.error(f"--jitter-s must be >= 0 and below the detector's grace ({GRACE_S:g} s)")
    t0 = time.perf_counter()
    manifest: dict[str, Any] = {}
    try:
        it = generate(
            a.records,
            a.numbers,
            a.days,
            a.partitions,
            a.seed,
            anomaly_rate=a.anomaly_rate,
            dup_rate=a.dup_rate,
            bad_rate=a.bad_rate,
            jitter_s=a.jitter_s,
            start=a.start,
            manifest=manifest,
        )
        lines = [_ENCODE(env) for env in it]
    except ValueError as e:
        p.error(str(e))
    text = "\n".join(lines) + ("\n" if lines else "")
    if a.out == "-":
        sys.stdout.write(text)
    else:
        out = Path(a.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8", newline="\n")
        mpath = out.with_name(out.name + ".manifest.json")
        mpath.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8", newline="\n")
        print(
            f"wrote {len(lines)} records to {out} and {mpath.name} in {time.perf_counter() - t0:.2f} s", file=sys.stderr
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
