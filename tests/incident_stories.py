"""The seed story at scale, for the incident tests: many numbers, one cause (or two).

`blau_to_o2(n)`: the migration bug of scenarios/motivating_re_port_leak.toml on
n numbers. Each number had a Blau contract with an address, was ported away in
January, and came back into o2 for another person between June 1 and June 20;
o2's `crm-mailer` sends the `contract_info` mail to the Blau customer's address
15 minutes after the port. Every 4th number gets that mail a second time a week
later (a re-send: another event, another mail); every 10th number shares its
Blau customer and address with the next number (one person with two numbers).
So, for n numbers: n + n // 4 mails (ids 0, 4, 8, ...), n numbers, and
n - (number of i with i % 10 == 0 and i + 1 < n) recipients.

`o2_recycled(n)`: a second cause: o2 numbers whose contract ended and that o2
gave to a new customer (contract_started, not a port); `billing-mailer` sends
the new customer's first `invoice` to the old customer's address.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from detectors.capture import Envelope
from detectors.timefmt import parse_rfc3339
from tests.factories import Rec, change, mail
from tests.pipelines import kafka_partition, write_capture

DAY = 86_400.0


def _number(block: int, i: int) -> str:
    return f"+49176{block:02d}{i:06d}"


def blau_to_o2(n: int, block: int = 10, start: str = "2026-06-01T08:00:00Z") -> list[Rec]:
    recs: list[Rec] = []
    for i in range(n):
        msisdn = _number(block, i)
        owner = i - 1 if i % 10 == 1 else i  # i % 10 == 0 and the next: one Blau customer, one address
        address = f"blau.customer{block}-{owner}@gmx.de"
        recs += [
            change(
                "contract_started",
                "2024-05-01T10:00:00.000Z",
                id=f"b{block}-{i}-start",
                msisdn=msisdn,
                contract_id=f"K-BLAU-{block}-{i}",
                customer_id=f"C-BLAU-{block}-{owner}",
                brand="blau",
                email=address,
            ),
            change(
                "ported_out",
                1_209_600 + i * 60.0,
                id=f"b{block}-{i}-out",
                msisdn=msisdn,
                contract_id=f"K-BLAU-{block}-{i}",
                operator="vodafone",
            ),
        ]
        port_in = parse_rfc3339(start) / 1e6 - parse_rfc3339("2026-01-01T00:00:00Z") / 1e6 + (i % 20) * DAY + i
        recs += [
            change(
                "ported_in",
                port_in,
                id=f"b{block}-{i}-in",
                msisdn=msisdn,
                contract_id=f"K-O2-{block}-{i}",
                customer_id=f"C-O2-{block}-{i}",
                brand="o2",
                operator="telekom",
                email=f"new{block}-{i}@web.de",
            ),
            mail(
                address.upper() if i % 7 == 0 else address,
                port_in + 900,
                id=f"b{block}-{i}-mail",
                msisdn=msisdn,
                brand="o2",
                template="contract_info",
                sender="crm-mailer",
                contract_id=f"K-O2-{block}-{i}",
                customer_id=f"C-O2-{block}-{i}",
            ),
        ]
        if i % 4 == 0:
            recs.append(
                mail(
                    address,
                    port_in + 7 * DAY,
                    id=f"b{block}-{i}-resend",
                    msisdn=msisdn,
                    brand="o2",
                    template="contract_info",
                    sender="crm-mailer",
                    contract_id=f"K-O2-{block}-{i}",
                    customer_id=f"C-O2-{block}-{i}",
                )
            )
    return recs


def blau_to_o2_counts(n: int) -> dict[str, int]:
    shared = sum(1 for i in range(n) if i % 10 == 0 and i + 1 < n)
    return {"mails": n + (n + 3) // 4, "affected_numbers": n, "affected_recipients": n - shared}


def o2_recycled(n: int, block: int = 20, start: str = "2026-06-05T08:00:00Z") -> list[Rec]:
    recs: list[Rec] = []
    base = parse_rfc3339(start) / 1e6 - parse_rfc3339("2026-01-01T00:00:00Z") / 1e6
    for i in range(n):
        msisdn = _number(block, i)
        old = f"old.o2-{block}-{i}@web.de"
        t = base + (i % 10) * DAY + i
        recs += [
            change(
                "contract_started",
                "2025-02-01T10:00:00.000Z",
                id=f"r{block}-{i}-start",
                msisdn=msisdn,
                contract_id=f"K-O2A-{block}-{i}",
                customer_id=f"C-O2A-{block}-{i}",
                brand="o2",
                email=old,
            ),
            change(
                "contract_ended",
                1_209_600 + i * 60.0,
                id=f"r{block}-{i}-end",
                msisdn=msisdn,
                contract_id=f"K-O2A-{block}-{i}",
            ),
            change(
                "contract_started",
                t,
                id=f"r{block}-{i}-new",
                msisdn=msisdn,
                contract_id=f"K-O2B-{block}-{i}",
                customer_id=f"C-O2B-{block}-{i}",
                brand="o2",
                email=f"fresh{block}-{i}@t-online.de",
            ),
            mail(
                old,
                t + 3 * DAY,
                id=f"r{block}-{i}-invoice",
                msisdn=msisdn,
                brand="o2",
                template="invoice",
                sender="billing-mailer",
                contract_id=f"K-O2B-{block}-{i}",
                customer_id=f"C-O2B-{block}-{i}",
            ),
        ]
    return recs


def in_event_time(recs: Iterable[Rec]) -> list[Rec]:
    """Records in event-time order (the order a pipeline produces them), ties in the given order."""
    return sorted(recs, key=lambda r: parse_rfc3339(r.event["event_time"]))


def envelopes(recs: Iterable[Rec], partitions: int = 3) -> list[Envelope]:
    """The records as Kafka records (partition by key, as the producer's default partitioner)."""
    offsets: dict[tuple[str, int], int] = {}
    out = []
    for r in in_event_time(recs):
        key = r.key or ""
        p = kafka_partition(key.encode(), partitions)
        off = offsets.get((r.topic, p), 0)
        offsets[(r.topic, p)] = off + 1
        value = r.value.decode() if isinstance(r.value, bytes) else r.value
        ts = parse_rfc3339(r.event["event_time"]) // 1000
        out.append(Envelope(r.topic, p, off, value, key, ts, "create", 0))
    return out


def capture(path: str | Path, recs: Iterable[Rec], partitions: int = 3) -> Path:
    return write_capture(path, envelopes(recs, partitions))
