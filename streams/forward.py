"""`notifguard forward-alerts`: notifguard.alerts (Kafka) -> Alertmanager v2 API.

Each alert record becomes one Alertmanager alert whose identity is its labels
(alertname=<kind>, severity, brand, dedup_key, service=notifguard), so the same
dedup_key twice is one item in the queue. Alertmanager resolves an alert at its
``endsAt`` unless it is re-sent; we set ``endsAt`` to first-seen + resolve_after
and re-post every still-active alert each ``resend_interval`` seconds (so an
Alertmanager restart without persistent storage loses nothing), then forget it.

An alert raised late (``late: true``: by a correction, contract 1.1) carries the annotations
``late`` and ``detected_at``: its startsAt is the mail's time, hours or days before.

A retraction (contract 1.1: a record with ``status: retracted``, the same
dedup_key, sent when late input withdrew the verdict) resolves its alert at
once: the alert's own labels are posted again with ``endsAt`` now and the
annotations ``retracted`` (the retraction's ``reason``) and ``retracted_by``
(the late event ids). Its labels are those posted for the alert, or, when this
process did not post it (a restart), those Alertmanager holds for the
dedup_key; an alert Alertmanager does not have (resolved already) needs nothing.

Offsets are committed only after the POST of the records' alerts succeeded.
The active map is in memory: after a restart already-posted alerts are not
re-sent, but Alertmanager keeps them firing until their endsAt anyway.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import signal
import ssl
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from detectors.alerts import RETRACTED
from detectors.settings import Secret

log = logging.getLogger("notifguard.forward")

SERVICE = "notifguard"
_BACKOFF_MAX_S = 30.0


def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _parse_time(value: Any) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        dt = datetime.fromisoformat(value.strip().upper())
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def to_alertmanager(alert: dict[str, Any], now: float, resolve_after: float) -> dict[str, Any]:
    """One notifguard alert record as an Alertmanager v2 postable alert (``now`` in epoch seconds)."""
    kind = alert.get("kind")
    dedup_key = alert.get("dedup_key")
    if not isinstance(kind, str) or not kind or not isinstance(dedup_key, str) or not dedup_key:
        raise ValueError("alert without kind or dedup_key")
    started = _parse_time(alert.get("event_time"))
    if started is None:
        started = _parse_time(alert.get("detected_at"))
    if started is None or started > now:  # Alertmanager needs startsAt <= now < endsAt
        started = now
    annotations = {
        "summary": str(alert.get("summary") or f"{kind} ({dedup_key})"),
        "runbook_url": str(alert.get("runbook_url") or ""),
        "event_time": str(alert.get("event_time") or ""),
        "trigger_event_id": str(alert.get("trigger_event_id") or ""),
    }
    if alert.get("late") is True:
        # raised by a correction (contract 1.1): startsAt is the mail's time, hours or days ago; the
        # breach clocks run from detection (docs/runbooks/README.md, "An alert was retracted or raised late")
        annotations["late"] = "true"
        annotations["detected_at"] = str(alert.get("detected_at") or "")
    return {
        "labels": {
            "alertname": kind,
            "severity": str(alert.get("severity") or "warning"),
            "brand": str(alert.get("brand") or "unknown"),
            "dedup_key": dedup_key,
            "service": SERVICE,
        },
        "annotations": {k: v for k, v in annotations.items() if v},
        "startsAt": _rfc3339(started),
        "endsAt": _rfc3339(now + resolve_after),
    }


def resolution(
    alert: dict[str, Any], labels: dict[str, str], annotations: dict[str, str], starts_at: str | None, now: float
) -> dict[str, Any]:
    """A retraction record as the Alertmanager alert that resolves the alert of `labels` now (endsAt
    now), its `annotations` kept and the retraction's reason and late event ids added."""
    reason = str(
        alert.get("reason") or alert.get("summary") or "withdrawn by notifguard: late input changed the verdict"
    )
    by = alert.get("retracted_by")
    notes = dict(annotations)
    notes["retracted"] = reason
    if isinstance(by, list) and by:
        notes["retracted_by"] = ", ".join(str(x) for x in by)
    ends = _rfc3339(now)
    starts = starts_at if starts_at is not None and (_parse_time(starts_at) or now) <= now else ends
    return {"labels": dict(labels), "annotations": notes, "startsAt": starts, "endsAt": ends}


@dataclass
class _Active:
    alert: dict[str, Any]
    expires_at: float


class Forwarder:
    """The active-alert map and the HTTP POST; no Kafka, so it is testable on its own."""

    def __init__(
        self,
        alertmanager: str,
        resend_interval: float = 60.0,
        resolve_after: float = 3600.0,
        timeout: float = 10.0,
        tls: ssl.SSLContext | None = None,
        authorization: Secret | None = None,
    ) -> None:
        if resend_interval <= 0 or resolve_after <= 0:
            raise ValueError("resend_interval and resolve_after must be > 0")
        if authorization is not None and not alertmanager.startswith("https://"):
            raise ValueError(f"Alertmanager credentials go over https:// only, not in clear text to {alertmanager}")
        self.url = alertmanager.rstrip("/") + "/api/v2/alerts"
        self.tls = tls
        self.authorization = authorization
        self.resend_interval = resend_interval
        self.resolve_after = resolve_after
        self.timeout = timeout
        self.active: dict[str, _Active] = {}
        self._last_resend: float | None = None

    def handle(self, alert: dict[str, Any], now: float) -> list[dict[str, Any]]:
        """Register an alert record; return what to POST now (empty for a still-active dedup_key).
        A retraction returns the resolution of its alert (see retract)."""
        if alert.get("status") == RETRACTED:
            return self.retract(alert, now)
        am = to_alertmanager(alert, now, self.resolve_after)
        key = am["labels"]["dedup_key"]
        if key in self.active and self.active[key].expires_at > now:
            return []
        self.active[key] = _Active(am, now + self.resolve_after)
        if self._last_resend is None:
            self._last_resend = now
        return [am]

    def retract(self, alert: dict[str, Any], now: float) -> list[dict[str, Any]]:
        """A retraction record: forget its dedup_key's alert (no more re-sends) and return what
        resolves it in Alertmanager now: the labels this process posted for it, else those
        Alertmanager holds for the dedup_key (firing_in_alertmanager); nothing if it has none."""
        key = alert.get("dedup_key")
        if not isinstance(key, str) or not key:
            raise ValueError("retraction without dedup_key")
        active = self.active.pop(key, None)
        if active is not None:
            am = active.alert
            return [resolution(alert, am["labels"], am["annotations"], am["startsAt"], now)]
        return [
            resolution(alert, a["labels"], a.get("annotations") or {}, a.get("startsAt"), now)
            for a in self.firing_in_alertmanager(key)
        ]

    def firing_in_alertmanager(self, dedup_key: str) -> list[dict[str, Any]]:
        """The alerts Alertmanager holds (not resolved) with this dedup_key and service=notifguard;
        raises OSError (URLError/HTTPError) when it does not answer."""
        query = urllib.parse.urlencode([("filter", f'dedup_key="{dedup_key}"'), ("filter", f'service="{SERVICE}"')])
        req = urllib.request.Request(f"{self.url}?{query}", headers=self._auth())
        with urllib.request.urlopen(req, timeout=self.timeout, context=self.tls) as resp:
            found = json.loads(resp.read())
        if not isinstance(found, list):
            return []
        return [a for a in found if isinstance(a, dict) and isinstance(a.get("labels"), dict)]

    def expire(self, now: float) -> None:
        for key in [k for k, a in self.active.items() if a.expires_at <= now]:
            del self.active[key]

    def due_resends(self, now: float) -> list[dict[str, Any]]:
        """Every still-active alert if a resend is due (and mark it done), else nothing."""
        self.expire(now)
        if self._last_resend is not None and now - self._last_resend < self.resend_interval:
            return []
        self._last_resend = now
        return [a.alert for a in self.active.values()]

    def post(self, batch: list[dict[str, Any]]) -> None:
        """POST the batch; raises OSError (URLError/HTTPError) on failure."""
        if not batch:
            return
        req = urllib.request.Request(
            self.url,
            data=json.dumps(batch).encode(),
            method="POST",
            headers={"Content-Type": "application/json", **self._auth()},
        )
        with urllib.request.urlopen(req, timeout=self.timeout, context=self.tls) as resp:
            resp.read()

    def _auth(self) -> dict[str, str]:
        return {} if self.authorization is None else {"Authorization": self.authorization.reveal()}

    def ready(self) -> bool:
        req = urllib.request.Request(self.url.removesuffix("/api/v2/alerts") + "/api/v2/status", headers=self._auth())
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=self.tls) as resp:
                return bool(resp.status == 200)
        except OSError as err:
            log.warning("Alertmanager status at %s: %s", self.url.removesuffix("/api/v2/alerts"), err)
            return False


def alertmanager_authorization(bearer_file: str | None, basic_auth_file: str | None) -> Secret | None:
    """The Authorization header from a bearer-token file or a `user:password` file, or None."""
    if bearer_file and basic_auth_file:
        raise ValueError("give --alertmanager-bearer-file or --alertmanager-basic-auth-file, not both")
    path = bearer_file or basic_auth_file
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read().strip()
    except OSError as err:
        raise ValueError(f"Alertmanager credentials file {path}: cannot read it ({err.strerror})") from None
    if bearer_file:
        return Secret(f"Bearer {text}")
    if ":" not in text:
        raise ValueError(f"Alertmanager basic-auth file {path} must hold user:password")
    return Secret("Basic " + base64.b64encode(text.encode()).decode())


def alertmanager_tls(cafile: str | None, certfile: str | None, keyfile: str | None) -> ssl.SSLContext | None:
    """The TLS context for https:// Alertmanager: its CA (default: system store), an optional client cert."""
    if not (cafile or certfile):
        return None
    ctx = ssl.create_default_context(cafile=cafile or None)
    if certfile:
        ctx.load_cert_chain(certfile, keyfile or None)
    return ctx


class _Consumer(Protocol):
    def poll(self, timeout_ms: int = ..., max_records: int | None = ...) -> dict[Any, list[Any]]: ...
    def commit(self) -> None: ...


def _decode(value: bytes | None) -> dict[str, Any] | None:
    try:
        obj = json.loads(value or b"")
    except (ValueError, UnicodeDecodeError):
        return None
    return obj if isinstance(obj, dict) else None


def run(consumer: _Consumer, forwarder: Forwarder, stop: threading.Event, poll_ms: int = 1000) -> None:
    """Consume, POST, commit, re-send; until ``stop`` is set."""
    from kafka.errors import CommitFailedError

    pending: list[dict[str, Any]] = []
    uncommitted = False
    backoff = 1.0
    while not stop.is_set():
        if not pending:
            polled = consumer.poll(timeout_ms=poll_ms)
            for records in polled.values():
                for record in records:
                    uncommitted = True
                    alert = _decode(record.value)
                    while True:
                        try:
                            if alert is None:
                                raise ValueError("not a JSON object")
                            pending.extend(forwarder.handle(alert, time.time()))
                        except ValueError as err:
                            log.warning(
                                "skipping record %s[%s]@%s: %s", record.topic, record.partition, record.offset, err
                            )
                        except OSError as err:  # a retraction's look-up in Alertmanager: retried
                            log.warning("look-up in %s failed: %s; retrying in %.0fs", forwarder.url, err, backoff)
                            if stop.wait(backoff):
                                return  # nothing committed: the records come again
                            backoff = min(backoff * 2, _BACKOFF_MAX_S)
                            continue
                        break
        if pending:
            try:
                forwarder.post(pending)
            except OSError as err:
                log.warning(
                    "POST of %d alert(s) to %s failed: %s; retrying in %.0fs", len(pending), forwarder.url, err, backoff
                )
                stop.wait(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX_S)
                continue
            log.info("posted %d alert(s)", len(pending))
            pending = []
            backoff = 1.0
        if uncommitted:
            try:
                consumer.commit()
                uncommitted = False
            except CommitFailedError as err:  # rebalanced away while retrying; records come back
                log.warning("commit failed: %s", err)
                uncommitted = False
        resend = forwarder.due_resends(time.time())
        if resend:
            try:
                forwarder.post(resend)
            except OSError as err:
                log.warning("re-send of %d alert(s) failed: %s", len(resend), err)


def forward_command(args: argparse.Namespace) -> int:
    from kafka import KafkaConsumer

    from streams.acls import forwarder_acls, topic_needs
    from streams.config import load_kafka_security, load_settings
    from streams.kafka_access import check_topics
    from streams.kafka_security import client_kwargs
    from streams.topics import wait_for_broker

    settings = load_settings(args.config)
    security = load_kafka_security(args.config)
    forwarder = Forwarder(
        args.alertmanager,
        args.resend_interval,
        args.resolve_after,
        tls=alertmanager_tls(args.alertmanager_ca, args.alertmanager_cert, args.alertmanager_key),
        authorization=alertmanager_authorization(args.alertmanager_bearer_file, args.alertmanager_basic_auth_file),
    )
    if not wait_for_broker(args.bootstrap, timeout=30, security=security):
        print(f"notifguard forward-alerts: no Kafka broker answers at {args.bootstrap}", file=sys.stderr)
        return 2
    check_topics(
        args.bootstrap, security, topic_needs(forwarder_acls(settings.topics, args.group)), groups=[args.group]
    )
    if not forwarder.ready():
        print(f"notifguard forward-alerts: no Alertmanager answers at {args.alertmanager}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def _stop(signum: int, _frame: Any) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    consumer = KafkaConsumer(
        settings.topics.alerts,
        bootstrap_servers=args.bootstrap,
        group_id=args.group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        client_id="notifguard-forwarder",
        isolation_level="read_committed",  # an exactly-once worker's aborted sends are not alerts
        **client_kwargs(security),
    )
    log.info("forwarding %s -> %s", settings.topics.alerts, forwarder.url)
    try:
        run(consumer, forwarder, stop)
    finally:
        consumer.close()
    return 0
