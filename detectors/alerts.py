"""Alert records of the contract and their stable dedup keys (their words: detectors.wording)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any, Final

import msgspec

from detectors import kinds

# an alert record's `status` (contract 1.1): an alert, or the withdrawal of its dedup_key's alert
FIRING: Final = "firing"
RETRACTED: Final = "retracted"


class Subject(msgspec.Struct, frozen=True):
    msisdn_masked: str
    msisdn_ref: str


class Alert(msgspec.Struct, frozen=True):
    """One record on notifguard.alerts (docs/schemas/notifguard.alerts.json)."""

    alert_id: str
    dedup_key: str
    kind: str
    severity: str
    event_time: str
    detected_at: str
    trigger_event_id: str
    event_ids: list[str]
    subject: Subject
    brand: str | None
    template: str | None
    sender: str | None
    summary: str
    evidence: dict[str, Any]
    late: bool
    runbook_url: str
    schema_version: int = 1
    # contract 1.1: "firing", or "retracted" for a record withdrawing the alert of this dedup_key
    status: str = FIRING
    # a retraction's (null on a firing alert): the event ids of the late records that changed the
    # verdict, and why, for a person
    retracted_by: list[str] | None = None
    reason: str | None = None


def dedup_key(kind: str, trigger_event_id: str) -> str:
    """Stable across replays and restarts: a function of kind and trigger event only."""
    digest = hashlib.sha256(f"{kind}\n{trigger_event_id}".encode()).hexdigest()
    return f"{kind}:{digest[:20]}"


def unique(ids: list[str | None]) -> list[str]:
    """Event ids in first-seen order, without gaps or repeats."""
    seen: dict[str, None] = {}
    for i in ids:
        if i:
            seen.setdefault(i, None)
    return list(seen)


def severity(kind: str) -> str:
    return kinds.SEVERITY[kind]


alert_encoder = msgspec.json.Encoder()
alert_decoder = msgspec.json.Decoder(Alert)


def encode_alert(alert: Alert) -> bytes:
    return alert_encoder.encode(alert)


def decode_alert(data: bytes | str) -> Alert:
    return alert_decoder.decode(data)


def final_set(alerts: Iterable[Alert]) -> dict[str, Alert]:
    """The final alert set of contract 1.1 (docs/topics.md 2.6a): firing minus retracted, by
    dedup_key, in the order decided: each key's firing record since its last retraction."""
    out: dict[str, Alert] = {}
    for a in alerts:
        if a.status == RETRACTED:
            out.pop(a.dedup_key, None)
        else:
            out.setdefault(a.dedup_key, a)
    return out
