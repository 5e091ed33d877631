"""`notifguard incidents`: the incidents process (alerts -> incidents topic) and the tools around it.

The process (`incidents run`) reads `notifguard.alerts`, keeps a
detectors.incidents aggregator and publishes each changed incident to the
compacted `notifguard.incidents` topic (key: incident id). It depends on the
worker only through the alerts topic's records.

How it stays exact across restarts (docs/incidents.md, "The incidents process"):
the aggregator's state is a function of the *set* of breach alerts (by
dedup_key) and the operator actions. Each poll does, in order:

1. take the polled alerts and actions into the aggregator;
2. send each new membership (signature + entry, no clear values) to the
   compacted members topic `{app_id}-members` (key: dedup_key);
3. send the changed incident records to the incidents topic;
4. flush the producer (every send acknowledged, or the process stops);
5. commit the alerts' offsets (consumer group `{app_id}`).

A restart reads the members topic and the incidents topic from the beginning
(state, the last record of each id, the actions), publishes whatever differs
from the topic (a crash between 3 and 4), and goes on from the committed
offsets; alerts read again after a crash between 4 and 5 are members already
(same dedup_key: nothing changes). The members topic, not the alerts topic,
is the state because the alerts topic deletes after 30 days and an incident
can last longer. No transaction is needed: every step is idempotent.

One process (it assigns itself every partition of the alerts topic, without a
group rebalance): a second one would compute the same records and publish
them again, not split the counts. The worker runs the same `IncidentsProcess`
on its single-partition feed of breach alerts instead (streams/worker/incidents.py),
which one worker of several owns through its consumer group.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import msgspec

from detectors.alerts import decode_alert
from detectors.incidents import (
    CLOSED,
    OPEN,
    SUPERSEDED,
    Action,
    Incident,
    Incidents,
    IncidentSettings,
    TopicRecord,
    decode_record,
    encode_record,
    latest,
    member_decoder,
)
from detectors.settings import Settings
from detectors.timefmt import parse_rfc3339, rfc3339
from streams.config import load_kafka_security
from streams.incident_report import View, export, find, incident_line, list_lines, show_lines, views
from streams.kafka_security import PLAINTEXT, KafkaSecurity, client_kwargs

log = logging.getLogger("notifguard.incidents")


def _now_us() -> int:
    return time.time_ns() // 1000


def members_topic(app_id: str) -> str:
    return f"{app_id}-members"


def incident_topic_specs(settings: Settings, app_id: str) -> list[Any]:
    from streams.topics import TopicSpec

    compact = {"cleanup.policy": "compact"}
    return [
        # one partition each: incidents are few, and one reader rebuilds from them
        TopicSpec(settings.topics.incidents, "output", 1, dict(compact), False),
        TopicSpec(members_topic(app_id), "internal", 1, dict(compact), False),
    ]


def worker_incident_specs(settings: Settings, app_id: str) -> list[Any]:
    """The topics of the worker's incidents computation (streams/worker/incidents.py): its feed, and
    those of `incident_topic_specs` under its own id (streams.topics.incidents_id)."""
    from streams.topics import DAY_MS, TopicSpec, incident_feed_topic, incidents_id

    # one partition: one worker owns the computation, so that counts are exact across the
    # inputs' partitions; kept as long as the alerts topic keeps the alerts
    feed = TopicSpec(
        incident_feed_topic(app_id),
        "internal",
        1,
        {"cleanup.policy": "delete", "retention.ms": str(30 * DAY_MS)},
        False,
    )
    return [feed, *incident_topic_specs(settings, incidents_id(app_id))]


# ------------------------------------------------------------------ metrics


class IncidentMetrics:
    """Open incidents, their affected numbers and the seconds to each deadline (a registry of its own)."""

    def __init__(self, registry: Any = None) -> None:
        from prometheus_client import CollectorRegistry, Gauge

        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.open = Gauge("notifguard_incidents_open", "Open incidents", ["kind"], registry=r)
        self.numbers = Gauge(
            "notifguard_incident_affected_numbers",
            "Affected numbers of an open incident, or of one closed by quiet period and not reported",
            ["incident_id", "kind", "brand"],
            registry=r,
        )
        self.deadline = Gauge(
            "notifguard_incident_deadline_seconds",
            "Seconds until a deadline of an incident not marked reported (negative: overdue)",
            ["incident_id", "deadline"],
            registry=r,
        )
        self.reported = Gauge(
            "notifguard_incident_reported", "1 when the open incident is marked reported", ["incident_id"], registry=r
        )
        self.last_run = Gauge(
            "notifguard_incidents_last_poll_timestamp_seconds", "When the incidents process last polled", registry=r
        )

    def clear(self) -> None:
        """No incident series (a worker that does not own the incidents computation now)."""
        for g in (self.open, self.numbers, self.deadline, self.reported):
            g.clear()

    def update(self, incidents: Iterable[Incident], now_us: int) -> None:
        self.clear()
        for kind in ("recipient_previous_holder", "recipient_other_customer", "notification_without_contract"):
            self.open.labels(kind).set(0)
        for i in incidents:
            # an incident closed by its quiet period is still a breach to report: its clocks stay
            # until it is marked reported (or closed by an operator, who then answers for it)
            unreported = i.status == CLOSED and i.closed_by == "quiet_period" and i.reported is None
            if i.status != OPEN and not unreported:
                continue
            if i.status == OPEN:
                self.open.labels(i.kind).inc()
            self.numbers.labels(i.incident_id, i.kind, i.signature.brand or "").set(i.affected_numbers)
            self.reported.labels(i.incident_id).set(1 if i.reported else 0)
            if i.deadlines is not None and i.reported is None:
                for name, when in (
                    ("initial_report", i.deadlines.initial_report),
                    ("full_report", i.deadlines.full_report),
                    ("gdpr", i.deadlines.gdpr),
                ):
                    self.deadline.labels(i.incident_id, name).set((parse_rfc3339(when) - now_us) / 1e6)
        self.last_run.set(now_us / 1e6)


# ------------------------------------------------------------------ the process


class IncidentsProcess:
    """One poll at a time (`step`), so tests can drive it; `run` loops until stopped.

    The one code path of the incidents computation, in two places (docs/incidents.md):

    - `notifguard incidents run` (`source` None): it assigns itself every partition of the
      alerts topic (no group rebalance) and rebuilds at `start`;
    - the worker (streams/worker/incidents.py, `source` the worker's single-partition feed of
      breach alerts): it subscribes to the feed in the group `app_id`, so that one worker of
      several owns it; the owner rebuilds when it is assigned the partition, and a worker that
      loses it forgets its state (and its incident metrics) until it is assigned again.
    """

    def __init__(
        self,
        bootstrap: str,
        settings: Settings,
        incident_settings: IncidentSettings,
        app_id: str = "notifguard-incidents",
        wall_clock: bool = True,
        metrics: IncidentMetrics | None = None,
        security: KafkaSecurity = PLAINTEXT,
        source: str | None = None,
        session_timeout_s: float = 10.0,
        expire_every_s: float = 3600.0,
    ) -> None:
        from kafka import KafkaConsumer, KafkaProducer

        self.settings = settings
        self.incident_settings = incident_settings
        self.topics = settings.topics
        self.app_id = app_id
        self.members = members_topic(app_id)
        self.source = source
        self.wall_clock = wall_clock
        self.metrics = metrics
        self.agg = Incidents(incident_settings)
        self.bootstrap = bootstrap
        self.security = security
        self.producer = KafkaProducer(
            bootstrap_servers=bootstrap,
            acks="all",
            linger_ms=5,
            client_id=f"{app_id}-producer",
            max_request_size=4 << 20,
            **client_kwargs(security),
        )
        self.consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=app_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            client_id=f"{app_id}-consumer",
            # with a source: how long the group waits for a dead owner before another worker takes over
            session_timeout_ms=int(session_timeout_s * 1000),
            heartbeat_interval_ms=int(min(3.0, session_timeout_s / 3) * 1000),
            **client_kwargs(security),
        )
        # the incidents topic: read from the beginning at a rebuild, then its new actions (no group)
        self.actions = KafkaConsumer(
            bootstrap_servers=bootstrap,
            enable_auto_commit=False,
            isolation_level="read_committed",
            client_id=f"{app_id}-actions",
            **client_kwargs(security),
        )
        self.skipped = 0
        self.last_published: list[Incident] = []  # the incident records of the last poll (or the rebuild)
        self.owner = False  # holds the input's partitions and the state built from them
        self._rebuild_due = False
        self._alert_tps: list[Any] = []
        # how often (wall clock) members of long-settled incidents are dropped (Incidents.expire)
        self.expire_every_us = int(expire_every_s * 1e6)
        self._expired_at = 0

    def _read_all(self, topic: str) -> Iterator[tuple[bytes | None, bytes | None]]:
        """Every record of `topic` from the beginning to its end offsets now."""
        for r in _consume_all(self.bootstrap, topic, missing_ok=True, security=self.security):
            yield r.key, r.value

    def start(self) -> None:
        """Standalone: rebuild and assign every partition of the alerts topic. In the worker:
        subscribe to the feed; the rebuild comes with the assignment (`step`)."""
        from kafka import TopicPartition

        if self.source is not None:
            self.consumer.subscribe([self.source], listener=_ownership(self))
            return
        deadline = time.monotonic() + 60
        while True:
            parts = self.consumer.partitions_for_topic(self.topics.alerts)
            if parts or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        if not parts:
            raise RuntimeError(f"topic {self.topics.alerts} does not exist")
        self._alert_tps = [TopicPartition(self.topics.alerts, p) for p in sorted(parts)]
        self.consumer.assign(self._alert_tps)
        self._rebuild()

    def _rebuild(self) -> None:
        """Read the members topic and the incidents topic from the beginning; publish what differs.
        The actions consumer goes on from where the rebuild stopped reading (no action is missed)."""
        from kafka import TopicPartition

        self.agg = Incidents(self.incident_settings)
        latest_member: dict[bytes | None, bytes] = {}
        for key, value in self._read_all(self.members):
            if value is None:  # a tombstone: an expired member (Incidents.expire), compacted away later
                latest_member.pop(key, None)
            else:
                latest_member[key] = value
        members = len(latest_member)
        for value in latest_member.values():
            self.agg.apply(member_decoder.decode(value))
        published = 0
        tp = TopicPartition(self.topics.incidents, 0)
        self.actions.assign([tp])
        self.actions.seek_to_beginning(tp)
        end = self.actions.end_offsets([tp])[tp]
        while self.actions.position(tp) < end:
            for records in self.actions.poll(timeout_ms=500, max_records=5000).values():
                for r in records:
                    if r.value is None or r.offset >= end:
                        continue
                    rec = decode_record(r.value)
                    if isinstance(rec, Incident):
                        self.agg.restore_published(rec)
                        published += 1
                    else:
                        self.agg.act(rec)
        self.actions.seek(tp, end)
        log.info("rebuilt from %d membership(s) and %d incident record(s)", members, published)
        self.owner = True
        self._rebuild_due = False
        self._publish()

    def _publish(self) -> int:
        changed = self.last_published = self.agg.changes()
        for inc in changed:
            self.producer.send(self.topics.incidents, key=inc.incident_id.encode(), value=encode_record(inc))
        return len(changed)

    def _take_actions(self) -> None:
        for records in self.actions.poll(timeout_ms=0, max_records=5000).values():
            for r in records:
                if r.value is None:
                    continue
                try:
                    rec = decode_record(r.value)
                except msgspec.DecodeError:
                    continue
                if isinstance(rec, Action):
                    self.agg.act(rec)

    def step(self, timeout_ms: int = 500) -> int:
        """One poll: steps 1-5 of the module text. Returns the number of incident records published."""
        from kafka.errors import CommitFailedError
        from kafka.structs import OffsetAndMetadata

        polled = self.consumer.poll(timeout_ms=timeout_ms, max_records=5000)
        if self._rebuild_due:
            self._rebuild()
        if not self.owner:
            if self.metrics is not None:
                self.metrics.clear()
            return 0
        self._take_actions()
        for records in polled.values():
            for r in records:
                if r.value is None:
                    continue
                try:
                    alert = decode_alert(r.value)
                    member = self.agg.add(alert)
                except (msgspec.DecodeError, ValueError) as err:
                    self.skipped += 1
                    log.warning("skipping %s[%s]@%s: %s", r.topic, r.partition, r.offset, err)
                    continue
                if member is not None:
                    self.producer.send(self.members, key=member.entry.dedup_key.encode(), value=encode_record(member))
        now = _now_us()
        if self.wall_clock:
            self.agg.tick(now)
        n = self._publish()
        if now - self._expired_at >= self.expire_every_us:
            self._expired_at = now
            n += self.expire()
        self.producer.flush(timeout=60)
        if polled:
            offsets = {tp: OffsetAndMetadata(self.consumer.position(tp), "", -1) for tp in self.consumer.assignment()}
            try:
                self.consumer.commit(offsets)
            except CommitFailedError as err:  # the feed went to another worker meanwhile: it reads them again
                log.warning("incidents: the commit failed (%s); the next owner reads these alerts again", err)
        if self.metrics is not None:
            self.metrics.update(self.agg.incidents(), now)
        return n

    def expire(self) -> int:
        """Drop the members of long-settled incidents (Incidents.expire): tombstones on the members
        topic, and the incidents' final records. Returns the number of incident records published."""
        keys = self.agg.expire()
        for k in keys:
            self.producer.send(self.members, key=k.encode(), value=None)
        if keys:
            log.info("expired %d member(s) of settled incidents", len(keys))
        return self._publish()

    def assigned(self) -> None:
        """The input is ours: rebuild in `step`, after the poll that assigned it."""
        self._rebuild_due = True

    def revoked(self) -> None:
        """The input went to another worker: forget the state (the next owner rebuilds it)."""
        self.owner = False
        self._rebuild_due = False
        self.agg = Incidents(self.incident_settings)
        if self.metrics is not None:
            self.metrics.clear()

    def close(self) -> None:
        self.consumer.close()
        self.actions.close()
        self.producer.close()


def _ownership(process: IncidentsProcess) -> Any:
    """kafka-python's rebalance listener for the worker's feed (called inside `poll`)."""
    from kafka import ConsumerRebalanceListener

    class Ownership(ConsumerRebalanceListener):  # type: ignore[misc]
        def on_partitions_revoked(self, revoked: Any) -> None:
            if revoked:
                process.revoked()

        def on_partitions_assigned(self, assigned: Any) -> None:
            if assigned:
                process.assigned()

    return Ownership()


def run_command(args: argparse.Namespace) -> int:
    from streams.acls import incidents_acls, topic_needs
    from streams.config import load_incident_settings, load_settings
    from streams.kafka_access import check_topics
    from streams.topics import ensure_topics, wait_for_broker

    settings = load_settings(args.config)
    isettings = load_incident_settings(args.config)
    security = load_kafka_security(getattr(args, "config", None))
    if not wait_for_broker(args.bootstrap, timeout=30, security=security):
        print(f"notifguard incidents: no Kafka broker answers at {args.bootstrap}", file=sys.stderr)
        return 2
    # a wrong password, an untrusted CA or a missing ACL: named at once (KafkaAccessError, exit 2), not a
    # client retrying; the incidents topic may be missing still (created below), the alerts topic not
    acls = topic_needs(incidents_acls(settings.topics, args.app_id))
    check_topics(args.bootstrap, security, {settings.topics.alerts: acls[settings.topics.alerts]}, groups=[args.app_id])
    check_topics(args.bootstrap, security, {settings.topics.incidents: acls[settings.topics.incidents]}, existing=False)
    members = group_members(args.bootstrap, args.app_id, security)
    if members:
        print(
            f"notifguard incidents run: the consumer group {args.app_id} has {members} active member(s): workers "
            "compute these incidents already ([worker] incidents = true, the default). Never both (every incident "
            "would be published twice): set incidents = false in the workers first, or do not run this.",
            file=sys.stderr,
        )
        return 2
    ensure_topics(
        args.bootstrap,
        settings,
        app_id=args.app_id,
        specs=incident_topic_specs(settings, args.app_id),
        security=security,
    )
    metrics = None
    if args.metrics_port:
        from prometheus_client import start_http_server

        metrics = IncidentMetrics()
        start_http_server(args.metrics_port, registry=metrics.registry)
    stop = threading.Event()

    def _stop(signum: int, _frame: Any) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    proc = IncidentsProcess(
        args.bootstrap,
        settings,
        isettings,
        app_id=args.app_id,
        wall_clock=args.clock == "wall",
        metrics=metrics,
        security=security,
    )
    try:
        proc.start()
        log.info("incidents: %s -> %s", settings.topics.alerts, settings.topics.incidents)
        while not stop.is_set():
            n = proc.step()
            if n:
                log.info("published %d incident record(s)", n)
            if args.print_incidents:
                for inc in proc.last_published:
                    if inc.status != SUPERSEDED:
                        print(incident_line(inc), flush=True)
    finally:
        proc.close()
    return 0


# ------------------------------------------------------------------ the tools


def read_records(args: argparse.Namespace, settings: Settings) -> list[TopicRecord]:
    """The incident records of --file (JSON Lines) or of the incidents topic (--bootstrap)."""
    if args.file:
        with open(args.file, "rb") as f:
            return [decode_record(line) for line in f if line.strip()]
    return [
        decode_record(r.value)
        for r in _consume_all(
            args.bootstrap, settings.topics.incidents, security=load_kafka_security(getattr(args, "config", None))
        )
        if r.value is not None
    ]


def _views(args: argparse.Namespace) -> dict[str, View]:
    from streams.config import load_settings

    incidents, actions = latest(read_records(args, load_settings(args.config)))
    return views(incidents, actions)


def list_command(args: argparse.Namespace) -> int:
    print("\n".join(list_lines(_views(args), _now_us(), include_superseded=args.all)))
    return 0


def show_command(args: argparse.Namespace) -> int:
    print("\n".join(show_lines(find(_views(args), args.id), _now_us())))
    return 0


def export_command(args: argparse.Namespace) -> int:
    text = export(find(_views(args), args.id), args.format, _now_us())
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def new_action(incident: Incident, action: str, note: str, by: str, at_us: int) -> Action:
    if incident.first_event_time is None or incident.last_event_time is None:
        raise ValueError(f"incident {incident.incident_id} is {incident.status}: nothing to mark")
    return Action(
        action_id=f"act-{uuid.uuid4().hex[:20]}",
        incident_id=incident.incident_id,
        action=action,
        by=by,
        at=rfc3339(at_us),
        note=note,
        signature_key=incident.signature.key(),
        first=parse_rfc3339(incident.first_event_time),
        last=parse_rfc3339(incident.last_event_time),
    )


def record_action(args: argparse.Namespace, action: Action) -> None:
    """Append the action to --file, or produce it to the incidents topic (key: action/<incident>/<action id>)."""
    if args.file:
        with open(args.file, "ab") as f:
            f.write(encode_record(action) + b"\n")
        return
    from kafka import KafkaProducer

    from streams.config import load_settings

    p = KafkaProducer(
        bootstrap_servers=args.bootstrap,
        acks="all",
        client_id="notifguard-incidents-tool",
        **client_kwargs(load_kafka_security(getattr(args, "config", None))),
    )
    try:
        p.send(
            load_settings(args.config).topics.incidents,
            key=f"action/{action.incident_id}/{action.action_id}".encode(),
            value=encode_record(action),
        ).get(timeout=30)
    finally:
        p.close()


def mark_command(args: argparse.Namespace) -> int:
    view = find(_views(args), args.id)
    by = args.by or os.environ.get("NOTIFGUARD_OPERATOR") or getpass.getuser()
    action = new_action(view.incident, args.action, args.note, by, _now_us())
    record_action(args, action)
    print(f"{view.incident.incident_id}: {args.action} by {by} at {action.at}")
    return 0


# ------------------------------------------------------------------ re-identification


def _consume_all(
    bootstrap: str, topic: str, missing_ok: bool = False, security: KafkaSecurity = PLAINTEXT
) -> Iterator[Any]:
    """Every record of `topic` up to its end offsets now (read_committed); ValueError if it does not exist."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        isolation_level="read_committed",
        client_id="notifguard-incidents-reader",
        **client_kwargs(security),
    )
    try:
        tps = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or ())]
        if not tps:
            if missing_ok:
                return
            raise ValueError(f"topic {topic} does not exist at {bootstrap}")
        c.assign(tps)
        c.seek_to_beginning(*tps)
        end = c.end_offsets(tps)
        while any(c.position(tp) < end[tp] for tp in tps):
            for records in c.poll(timeout_ms=500, max_records=5000).values():
                for r in records:
                    if r.offset < end[TopicPartition(r.topic, r.partition)]:
                        yield r
    finally:
        c.close()


def group_members(bootstrap: str, group: str, security: KafkaSecurity = PLAINTEXT) -> int:
    """Active members of a consumer group (0 for one that is empty or does not exist). `incidents run`
    reads its input by assignment, with no membership: members are workers computing incidents."""
    from streams.kafka_security import admin_client

    admin = admin_client(bootstrap, security)
    try:
        described = admin.describe_groups([group])
    finally:
        admin.close()
    return sum(len(g.get("members") or ()) for g in described.values() if g.get("group_state") not in ("Empty", "Dead"))


def member_keys(bootstrap: str, app_id: str, incident: Incident, security: KafkaSecurity = PLAINTEXT) -> dict[str, str]:
    """The dedup_keys of the incident's alerts with each one's msisdn_ref, from the process's members topic:
    the signature's members between its first and last event time (an incident is a contiguous run of its
    signature's members). The record lists only the first numbers; the members topic has them all."""
    if incident.first_event_time is None or incident.last_event_time is None:
        raise ValueError(f"incident {incident.incident_id} is {incident.status}: it has no alerts")
    lo, hi = parse_rfc3339(incident.first_event_time), parse_rfc3339(incident.last_event_time)
    sig = incident.signature.key()
    latest_member: dict[str, Any] = {}
    for r in _consume_all(bootstrap, members_topic(app_id), security=security):
        if r.value is not None:
            m = member_decoder.decode(r.value)
            latest_member[m.entry.dedup_key] = m
        elif r.key is not None:  # a tombstone: expired (Incidents.expire)
            latest_member.pop(r.key.decode(), None)
    return {
        k: m.entry.number
        for k, m in latest_member.items()
        if m.status != "retracted" and m.signature.key() == sig and lo <= m.entry.t <= hi
    }


def resolve_command(args: argparse.Namespace) -> int:
    """The clear numbers and addresses of an incident's mails, from the outbound topic, to an owner-only file."""
    import csv
    import json

    from detectors.alerts import dedup_key
    from detectors.privacy import Pseudonymiser
    from streams.config import load_settings

    settings = load_settings(args.config)
    view = find(_views(args), args.id)
    inc = view.incident
    security = load_kafka_security(getattr(args, "config", None))
    keys = member_keys(args.bootstrap, args.app_id, inc, security)
    pseudo = Pseudonymiser(settings.pseudonymisation_key.reveal().encode())
    # owner-only from the start (no window with the umask's mode), and never over an existing file
    fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    rows = 0
    found: set[str] = set()
    with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["msisdn", "recipient", "event_time", "event_id", "message_id", "brand", "template"])
        for r in _consume_all(args.bootstrap, settings.topics.outbound, security=security):
            try:
                v = json.loads(r.value)
                key = dedup_key(inc.kind, v["event_id"])
            except (ValueError, TypeError, KeyError):
                continue
            if key not in keys or key in found or pseudo.msisdn_ref(str(v.get("msisdn"))) != keys[key]:
                continue
            found.add(key)
            w.writerow(
                [
                    v.get("msisdn"),
                    v.get("recipient"),
                    v.get("event_time"),
                    v.get("event_id"),
                    v.get("message_id"),
                    v.get("brand"),
                    v.get("template"),
                ]
            )
            rows += 1
    by = args.by or os.environ.get("NOTIFGUARD_OPERATOR") or getpass.getuser()
    note = (
        f"resolve: {rows} of {len(keys)} mails ({inc.affected_numbers} numbers) written to an owner-only "
        f"file {os.path.basename(args.out)}"
    )
    record_action(args, new_action(inc, "accessed", note, by, _now_us()))
    print(
        f"{inc.incident_id}: {note}"
        + ("" if rows == len(keys) else "; the others are no longer on the input topic (retention)"),
        file=sys.stderr,
    )
    return 0 if rows == len(keys) else 1


def add_parser(sub: Any) -> None:
    """`notifguard incidents ...` (streams/cli.py)."""
    i = sub.add_parser("incidents", help="incidents: one per breach cause, with scope and deadlines")
    isub = i.add_subparsers(dest="incidents_command", required=True)

    def source(p: argparse.ArgumentParser) -> None:
        g = p.add_mutually_exclusive_group(required=True)
        g.add_argument("--bootstrap", metavar="HOST:PORT", help="read the incidents topic")
        g.add_argument("--file", metavar="FILE", help="an incidents file (replay --incidents-out)")
        p.add_argument("--config", metavar="FILE", help="settings file (TOML), for topic names")

    r = isub.add_parser("run", help="consume notifguard.alerts, publish notifguard.incidents")
    r.add_argument("--bootstrap", required=True, metavar="HOST:PORT")
    r.add_argument("--config", metavar="FILE", help="settings file (TOML; [incidents] section)")
    r.add_argument(
        "--app-id",
        default="notifguard-incidents",
        help="consumer group and members topic prefix (default notifguard-incidents)",
    )
    r.add_argument(
        "--clock",
        choices=("wall", "event"),
        default="wall",
        help="what closes quiet incidents: the wall clock (default) or only the alerts' event time "
        "(as the offline replay)",
    )
    r.add_argument("--metrics-port", type=int, default=0, help="serve /metrics on this port (default: off)")
    r.add_argument(
        "--print-incidents", action="store_true", help="print one line per incident record published (the demo)"
    )
    r.set_defaults(func=run_command)

    ls = isub.add_parser("list", help="the incidents, open first")
    source(ls)
    ls.add_argument("--all", action="store_true", help="also superseded ids")
    ls.set_defaults(func=list_command)

    sh = isub.add_parser("show", help="one incident: scope, clocks, actions, numbers per day")
    sh.add_argument("id", help="incident id (or a unique prefix)")
    source(sh)
    sh.set_defaults(func=show_command)

    ex = isub.add_parser("export", help="the register entry / notification draft of an incident")
    ex.add_argument("id")
    ex.add_argument("--format", choices=("md", "json", "csv"), default="md")
    ex.add_argument("--out", metavar="FILE")
    source(ex)
    ex.set_defaults(func=export_command)

    mk = isub.add_parser("mark", help="record an operator action on the incident (who, when, note)")
    mk.add_argument("id")
    mk.add_argument("action", choices=("reported", "closed"))
    mk.add_argument("--note", required=True)
    mk.add_argument("--by", help="who (default: $NOTIFGUARD_OPERATOR or the login name)")
    source(mk)
    mk.set_defaults(func=mark_command)

    rs = isub.add_parser(
        "resolve",
        help="re-identify: the clear numbers and addresses of an incident's mails, to an owner-only file",
        description="Reads the outbound input topic (it needs that topic's access rights) and the incidents "
        "process's members topic; writes CSV to a new file created with mode 0600 and records the "
        "access (who, when, how many) on the incidents topic. Exit 1 when some mails are no longer "
        "on the input topic.",
    )
    rs.add_argument("id")
    rs.add_argument("--bootstrap", required=True, metavar="HOST:PORT")
    rs.add_argument("--out", required=True, metavar="FILE", help="a new file (never overwritten)")
    rs.add_argument("--config", metavar="FILE", help="settings file (TOML): topic names, the pseudonymisation key")
    rs.add_argument("--app-id", default="notifguard-incidents", help="the incidents process's --app-id")
    rs.add_argument("--by", help="who (default: $NOTIFGUARD_OPERATOR or the login name)")
    rs.set_defaults(func=resolve_command, file=None)
