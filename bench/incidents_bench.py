"""The incident aggregator (detectors/incidents.py) on one growing incident: CPU per batch, record size.

    .venv/bin/python -m bench.incidents_bench [--mails 100000] [--numbers 30000] [--batch 2048]

One signature; `--mails` alerts on `--numbers` numbers, appended in event-time
order (as the worker releases them) in batches of `--batch` (the offline
replay's batch), `changes()` after each batch as the replay and the process
call it. Prints the time of all batches, of the last one (the incident at its
full size), the time of one late alert (before the end of the run: a full
re-derivation), and the size of the largest record published.
"""

from __future__ import annotations

import argparse
import json
import time

from detectors import kinds
from detectors.alerts import Alert, Subject, dedup_key
from detectors.incidents import Incidents, encode_record
from detectors.timefmt import parse_rfc3339, rfc3339

START = parse_rfc3339("2026-06-01T00:00:00Z")


def alert(i: int, numbers: int, t_us: int) -> Alert:
    n = i % numbers
    return Alert(
        alert_id=f"a{i}",
        dedup_key=dedup_key(kinds.RECIPIENT_PREVIOUS_HOLDER, f"e{i}"),
        kind=kinds.RECIPIENT_PREVIOUS_HOLDER,
        severity="critical",
        event_time=rfc3339(t_us),
        detected_at=rfc3339(t_us + 60_000_000),
        trigger_event_id=f"e{i}",
        event_ids=[f"e{i}"],
        subject=Subject(msisdn_ref=f"{n:024x}", msisdn_masked="+49176******78"),
        brand="o2",
        template="contract_info",
        sender="crm-mailer",
        summary="",
        evidence={
            "recipient_ref": f"r{n:023x}",
            "linked": {"via": "this_number", "brand": "blau", "end_type": "ported_out"},
            "active": {"brand": "o2", "start_type": "ported_in"},
        },
        late=False,
        runbook_url="",
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mails", type=int, default=100_000)
    p.add_argument("--numbers", type=int, default=30_000)
    p.add_argument("--batch", type=int, default=2048)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    a = p.parse_args(argv)
    step = 20 * 1_000_000  # a mail every 20 s of event time: 100k mails in ~23 days, one incident
    alerts = [alert(i, a.numbers, START + i * step) for i in range(a.mails)]
    agg = Incidents()
    biggest = 0
    last_batch = 0.0
    started = time.perf_counter()
    for lo in range(0, len(alerts), a.batch):
        t0 = time.perf_counter()
        for x in alerts[lo : lo + a.batch]:
            agg.add(x)
        for inc in agg.changes():
            biggest = max(biggest, len(encode_record(inc)))
        last_batch = time.perf_counter() - t0
    total = time.perf_counter() - started
    t0 = time.perf_counter()
    agg.add(alert(a.mails, a.numbers, START + a.mails // 2 * step + 1))  # late: lands mid-run
    agg.changes()
    late = time.perf_counter() - t0
    (inc,) = agg.incidents()
    out = {
        "mails": a.mails,
        "numbers": a.numbers,
        "batch": a.batch,
        "batches": -(-a.mails // a.batch),
        "total_s": round(total, 3),
        "last_batch_ms": round(last_batch * 1e3, 2),
        "late_alert_ms": round(late * 1e3, 2),
        "largest_record_bytes": biggest,
        "counts": [inc.mails, inc.affected_numbers, inc.affected_recipients],
    }
    print(json.dumps(out) if a.json else "\n".join(f"{k:>22}: {v}" for k, v in out.items()))


if __name__ == "__main__":
    main()
