"""Builders of input records and a small harness around the engine, shared by the tests."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import msgspec

from detectors.alerts import Alert
from detectors.engine import Engine
from detectors.settings import Settings
from detectors.timefmt import parse_rfc3339

MSISDN = "+4917612345678"
T0 = "2026-01-01T00:00:00Z"
TOPIC = {"changes": "contracts.changes", "outbound": "notifications.outbound", "delivery": "notifications.delivery"}


@dataclass(frozen=True)
class Rec:
    topic: str
    key: str | None
    value: str | bytes | None
    partition: int = 0

    @property
    def event(self) -> dict[str, Any]:
        return json.loads(self.value or "null")


def at(seconds: float, base: str = T0) -> str:
    """An RFC 3339 time `seconds` after base, with milliseconds."""
    from detectors.timefmt import rfc3339

    return rfc3339(parse_rfc3339(base) + int(seconds * 1_000_000))


_ids = itertools.count()


def _rec(kind: str, t: float | str, event_id: str | None, msisdn: str, fields: dict[str, Any]) -> Rec:
    value = {
        "schema_version": 1,
        "event_id": event_id or f"ev{next(_ids)}",
        "event_time": at(t) if not isinstance(t, str) else t,
        "msisdn": msisdn,
        **fields,
    }
    return Rec(TOPIC[kind], msisdn, json.dumps(value))


def change(type: str, t: float | str = 0, *, id: str | None = None, msisdn: str = MSISDN, **fields: Any) -> Rec:
    defaults: dict[str, Any] = {"contract_id": "K-1"}
    if type in ("contract_started", "ported_in"):
        defaults |= {"customer_id": "C-1", "brand": "o2"}
    if type == "ported_in" or type == "ported_out":
        defaults |= {"operator": "telekom"}
    if type == "holder_changed":
        defaults |= {"customer_id": "C-2"}
    return _rec("changes", t, id, msisdn, {"type": type, **defaults, **fields})


def mail(recipient: str, t: float | str = 0, *, id: str | None = None, msisdn: str = MSISDN, **fields: Any) -> Rec:
    base = {
        "message_id": fields.pop("message_id", f"m-{id or next(_ids)}"),
        "brand": "o2",
        "channel": "email",
        "recipient": recipient,
        "template": "contract_info",
        "sender": "crm-mailer",
    }
    return _rec("outbound", t, id, msisdn, {**base, **fields})


def delivery(
    message_id: str,
    status: str = "delivered",
    t: float | str = 0,
    *,
    id: str | None = None,
    msisdn: str = MSISDN,
    **fields: Any,
) -> Rec:
    base = {
        "message_id": message_id,
        "recipient": "x@example.com",
        "status": status,
        "brand": "o2",
        "sender": "crm-mailer",
    }
    return _rec("delivery", t, id, msisdn, {**base, **fields})


def new_engine(settings: Settings | None = None) -> Engine:
    counter = itertools.count()
    return Engine(settings or Settings(), new_id=lambda: f"alert-{next(counter)}")


def feed(engine: Engine, records: Iterable[Rec], now_us: int = 0) -> None:
    for i, r in enumerate(records):
        engine.process(r.topic, r.partition, i, r.key, r.value, now_us)


# A number that only moves the watermark on (contract 1.1: the minimum over the three
# input topics): its mails go to its own current address, its deliveries succeed.
FILLER = "+4917699999999"
FILLER_START = _rec(
    "changes", 0, "filler-start", FILLER,
    {"type": "contract_started", "contract_id": "K-F", "customer_id": "C-F", "brand": "o2",
     "email": "filler@example.com"},
)  # fmt: skip
_fill = itertools.count()


def advance(engine: Engine, t: float, partition: int = 0, now_us: int = 0) -> None:
    """Records of FILLER (fed FILLER_START first) on all three input topics at `t`: the watermark moves to `t`."""
    n = next(_fill)
    for r in (
        _rec("changes", t, f"fill-c{n}", FILLER,
             {"type": "email_verified", "contract_id": "K-F", "email": "filler@example.com"}),
        mail("filler@example.com", t, id=f"fill-m{n}", msisdn=FILLER),
        delivery(f"m-fill-m{n}", "delivered", t, id=f"fill-d{n}", msisdn=FILLER),
    ):  # fmt: skip
        engine.process(r.topic, partition, None, r.key, r.value, now_us)


def run(records: Iterable[Rec], settings: Settings | None = None, flush: bool = True) -> list[Alert]:
    engine = new_engine(settings)
    feed(engine, records)
    if flush:
        engine.flush(0)
    return engine.drain()[0]


def kinds_of(alerts: Iterable[Alert]) -> list[tuple[str, str]]:
    return sorted((a.kind, a.trigger_event_id) for a in alerts)


def comparable(alerts: Iterable[Alert]) -> list[Alert]:
    """Alerts without the fields that legitimately differ between runs."""
    stripped = (msgspec.structs.replace(a, alert_id="", detected_at="") for a in alerts)
    return sorted(stripped, key=lambda a: a.dedup_key)
