"""Prometheus metrics of the worker, named and labelled as docs/metrics.md says."""

from __future__ import annotations

import platform
from collections import Counter as _Tally
from collections.abc import Iterable
from operator import attrgetter
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest

from detectors import kinds
from detectors.alerts import RETRACTED, Alert
from detectors.engine import CORRECTION_CAUSES, Stats, VerdictRecord
from detectors.expiry import PARTS
from detectors.records import REASON_CODES, WORKER_REASON_CODES
from detectors.settings import Topics
from detectors.text import OTHER, is_name
from streams.seams import observe_n

VERSION = "0.1.0"
_LATENCY_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5)
_verdict_labels = attrgetter("brand", "template", "sender", "channel", "verdict")
_DELAY_BUCKETS = (1, 5, 10, 20, 30, 31, 32, 35, 40, 60, 120, 300, 900)
# Distinct values a label taken from input records (brand, template, sender) may
# have per process; later ones are counted under `other`. The contract names three
# brands and a handful of templates and senders; 50 leaves room for new ones and
# is about what a dashboard legend can show. Past it, each new value would be a new
# series in the worker and in Prometheus (an unbounded label is a memory leak).
LABEL_VALUES_MAX = 50
_LABEL_MEMO_MAX = 10_000  # values remembered with their label value (then forgotten, and checked again)


class LabelValues:
    """The label value of a free-text field (docs/metrics.md, "Labels from input records"):
    the value itself if it is a name (detectors.text.NAME_PATTERN) and one of the first
    `limit` names seen, else `other`."""

    __slots__ = ("_admitted", "_memo", "limit")

    def __init__(self, limit: int = LABEL_VALUES_MAX) -> None:
        self.limit = limit
        self._admitted: set[str] = set()
        self._memo: dict[str, str] = {}

    def __call__(self, value: str) -> str:
        label = self._memo.get(value)
        if label is None:
            label = OTHER
            if is_name(value) and (value in self._admitted or len(self._admitted) < self.limit):
                self._admitted.add(value)
                label = value
            if len(self._memo) >= _LABEL_MEMO_MAX:
                self._memo.clear()
            self._memo[value] = label
        return label


class Counted(Protocol):
    def inc(self, amount: float = 1) -> None: ...


class _Both:
    """Two counters moved on together (an alert raised late counts as an alert and as late)."""

    __slots__ = ("first", "second")

    def __init__(self, first: Counted, second: Counted) -> None:
        self.first, self.second = first, second

    def inc(self, amount: float = 1) -> None:
        self.first.inc(amount)
        self.second.inc(amount)


class Metrics:
    """The worker's registry; `*_created` series are off (they double every counter for nothing)."""

    def __init__(self, topics: Topics, registry: CollectorRegistry | None = None) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.topics = {"changes": topics.changes, "outbound": topics.outbound, "delivery": topics.delivery}
        self.build_info = Gauge(
            "notifguard_build_info", "Build information", ["version", "python", "faust"], registry=r
        )
        self.consumed = Counter("notifguard_records_consumed", "Input records read", ["topic"], registry=r)
        self.verdicts = Counter(
            "notifguard_verdicts",
            "Verdicts on notifications",
            ["brand", "template", "sender", "channel", "verdict"],
            registry=r,
        )
        self.deliveries = Counter(
            "notifguard_deliveries",
            "Delivery events by outcome",
            ["brand", "sender", "status", "bounce_type"],
            registry=r,
        )
        self.alerts = Counter(
            "notifguard_alerts",
            "Alerts delivered to the alerts topic, on time or late (retractions are not counted here)",
            ["kind", "severity"],
            registry=r,
        )
        self.deadletters = Counter("notifguard_deadletters", "Records dead-lettered", ["topic", "reason"], registry=r)
        self.duplicates = Counter("notifguard_duplicates", "Repeated event ids ignored", ["topic"], registry=r)
        self.late = Counter("notifguard_late_records", "Records later than grace", ["topic"], registry=r)
        self.too_late = Counter(
            "notifguard_too_late_records",
            "Records later than the correction horizon: applied, nothing judged again (docs/topics.md 2.6a)",
            ["topic"],
            registry=r,
        )
        self.corrections = Counter(
            "notifguard_corrections",
            "Numbers judged again (contract 1.1): for a late record of an input topic, or a relink",
            ["cause"],
            registry=r,
        )
        self.raised_late = Counter(
            "notifguard_alerts_raised_late",
            "Alerts with late: true (by a correction, or a record beyond the horizon) delivered; also in alerts_total",
            ["kind", "severity"],
            registry=r,
        )
        self.retracted = Counter(
            "notifguard_alerts_retracted",
            "Retractions (status: retracted) delivered to the alerts topic, by the withdrawn alert's kind",
            ["kind", "severity"],
            registry=r,
        )
        self.relinks_sent = Counter(
            "notifguard_relinks_sent",
            "Relinks (a change, late or on time, that altered an address's links) broadcast to every "
            "partition of the relinks topic (docs/topics.md 2.6a)",
            registry=r,
        )
        self.relink_records_sent = Counter(
            "notifguard_relink_records_sent",
            "Records produced to the relinks topic: one per partition per flush with Relinks (docs/topics.md 2.6a)",
            registry=r,
        )
        self.relinks_applied = Counter(
            "notifguard_relinks_applied",
            "Relinks applied to a partition's numbers, by the address-index view they were applied "
            "with: current (it held the Relink's links) or waited_out (after relink_wait_s)",
            ["view"],
            registry=r,
        )
        for view in ("current", "waited_out"):
            self.relinks_applied.labels(view)
        self.relinks_out_of_reach = Counter(
            "notifguard_relinks_out_of_reach",
            "Numbers a Relink reached more than the correction horizon behind their newest event, with mails "
            "to its address from before that it could not judge again (docs/topics.md 2.6a: workers far apart)",
            registry=r,
        )
        self.relinks_held = Gauge(
            "notifguard_relinks_held",
            "Relinks read and held until this worker's address-index view holds their links (at most relink_wait_s)",
            registry=r,
        )
        self.pending = Gauge("notifguard_pending_events", "Events waiting in grace buffers", registry=r)
        self.released_early = Counter(
            "notifguard_released_early",
            "Records released before their time: the grace buffer was at its bound (max_buffered)",
            registry=r,
        )
        self.watermark_lag = Gauge(
            "notifguard_watermark_lag_seconds", "Wall clock minus watermark", ["partition"], registry=r
        )
        self.processing = Histogram(
            "notifguard_processing_seconds",
            "Engine time per input record (1 in 64 timed)",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.verdict_delay = Histogram(
            "notifguard_verdict_delay_seconds",
            "Arrival to verdict of a notification",
            buckets=_DELAY_BUCKETS,
            registry=r,
        )
        self.tracked = Gauge("notifguard_tracked_numbers", "Numbers with state on this worker", registry=r)
        self.consumer_lag = Gauge("notifguard_consumer_lag_records", "Highwater minus position", ["topic"], registry=r)
        self.rebalances = Counter("notifguard_rebalances", "Consumer group rebalances", registry=r)
        self.expired = Counter(
            "notifguard_states_expired", "Number states an expiry sweep shrank (detectors/expiry.py)", registry=r
        )
        self.capped = Counter(
            "notifguard_state_capped",
            "Entries dropped from number states over their size budgets (detectors/expiry.py)",
            ["part"],
            registry=r,
        )
        self.ready = Gauge("notifguard_worker_ready", "1 when recovered and not rebalancing", registry=r)
        self.stalled = Gauge(
            "notifguard_worker_stalled",
            "1 when input waits and nothing was read, acked, delivered or committed for "
            "stall_after_s, or the timer stopped (streams/liveness.py)",
            registry=r,
        )
        self.last_progress = Gauge(
            "notifguard_last_progress_timestamp_seconds",
            "Unix time of the last progress: records read, acked, delivered or committed (of the start before any)",
            registry=r,
        )
        self.quarantined = Counter(
            "notifguard_quarantined_records",
            "Input records set aside after the worker died on them crash_quarantine_after "
            "times (dead-lettered as quarantined)",
            ["topic"],
            registry=r,
        )
        self.errors = Counter(
            "notifguard_processing_errors", "Bugs: exceptions other than bad input", ["topic"], registry=r
        )
        try:
            from importlib.metadata import version

            faust_version = version("faust-streaming")
        except Exception:  # pragma: no cover - metadata missing
            faust_version = "unknown"
        self.build_info.labels(VERSION, platform.python_version(), faust_version).set(1)
        for kind in kinds.KINDS:
            self.alerts.labels(kind, kinds.SEVERITY[kind])
            self.raised_late.labels(kind, kinds.SEVERITY[kind])
            self.retracted.labels(kind, kinds.SEVERITY[kind])
        for cause in CORRECTION_CAUSES:
            self.corrections.labels(cause)
        for topic in self.topics.values():
            self.consumed.labels(topic)
            self.duplicates.labels(topic)
            self.late.labels(topic)
            self.too_late.labels(topic)
            self.errors.labels(topic)
            self.quarantined.labels(topic)
            self.consumer_lag.labels(topic)
            for reason in (*REASON_CODES, *WORKER_REASON_CODES):
                self.deadletters.labels(topic, reason)
        for part in PARTS:
            self.capped.labels(part)
        self._last = Stats()
        self._known_verdict_labels: set[tuple[str, ...]] = set()
        self._verdict_children: dict[tuple[str, ...], Any] = {}  # labels -> counter child (labels() is slow)
        self._delivery_children: dict[tuple[str, ...], Any] = {}
        self._alert_children: dict[tuple[str, str, bool], Counted] = {}
        # one guard per label name, shared by the metrics that have the label
        self.brand, self.template, self.sender = LabelValues(), LabelValues(), LabelValues()

    def alert_counter(self, alert: Alert) -> Counted:
        """What counts an alert record once the broker has it (the committers): a firing alert in
        notifguard_alerts_total, one raised late (`late: true`) in notifguard_alerts_raised_late_total
        too; a retraction only in notifguard_alerts_retracted_total (it withdraws an alert counted
        before: docs/metrics.md, "Corrections")."""
        key = (alert.kind, alert.status, alert.late)
        child = self._alert_children.get(key)
        if child is None:
            kind, severity = alert.kind, kinds.SEVERITY[alert.kind]
            if alert.status == RETRACTED:
                child = self.retracted.labels(kind, severity)
            elif alert.late:
                child = _Both(self.alerts.labels(kind, severity), self.raised_late.labels(kind, severity))
            else:
                child = self.alerts.labels(kind, severity)
            self._alert_children[key] = child
        return child

    def observe_verdicts(self, verdicts: Iterable[VerdictRecord]) -> None:
        """Count verdicts: one counter update per label set (each takes a lock), not per verdict."""
        children = self._verdict_children
        brand, template, sender = self.brand, self.template, self.sender
        tally: _Tally[tuple[str, ...]] = _Tally()
        for (b, t, s, channel, verdict), n in _Tally(map(_verdict_labels, verdicts)).items():
            tally[(brand(b), template(t), sender(s), channel, verdict)] += n
        for labels, n in tally.items():
            child = children.get(labels)
            if child is None:
                if labels[:4] not in self._known_verdict_labels:
                    self._known_verdict_labels.add(labels[:4])
                    for verdict in (kinds.OK, *kinds.RECIPIENT_KINDS):
                        self.verdicts.labels(*labels[:4], verdict)
                child = children[labels] = self.verdicts.labels(*labels)
            child.inc(n)

    def observe_deliveries(self, deliveries: Iterable[tuple[str, str, str, str]]) -> None:
        """Count delivery events by (brand, sender, status, bounce_type) (Engine.deliveries), a
        counter update per label set; brand and sender as observe_verdicts labels them."""
        children = self._delivery_children
        brand, sender = self.brand, self.sender
        tally: _Tally[tuple[str, ...]] = _Tally()
        for (b, s, status, bounce_type), n in _Tally(deliveries).items():
            tally[(brand(b), sender(s), status, bounce_type)] += n
        for labels, n in tally.items():
            child = children.get(labels)
            if child is None:  # labels() is slow: one lookup per label set
                child = children[labels] = self.deliveries.labels(*labels)
            child.inc(n)

    def observe_verdict_delays(self, now: float, arrivals: Iterable[float]) -> None:
        """notifguard_verdict_delay_seconds of notifications that arrived at `arrivals` (monotonic
        clock) and got their verdicts at `now`; those of one fetched batch share their arrival time."""
        for arrived, n in _Tally(arrivals).items():
            observe_n(self.verdict_delay, now - arrived, n)

    def sync_stats(self, stats: Stats) -> None:
        """Move counters on by what the engine counted since the last sync."""
        last = self._last
        for kind, topic in self.topics.items():
            self.late.labels(topic).inc(stats.late[kind] - last.late[kind])
            self.duplicates.labels(topic).inc(stats.duplicates[kind] - last.duplicates[kind])
            self.too_late.labels(topic).inc(stats.too_late[kind] - last.too_late[kind])
        for cause, n in stats.corrections.items():
            self.corrections.labels(cause).inc(n - last.corrections.get(cause, 0))
        self.expired.inc(stats.expired - last.expired)
        self.relinks_out_of_reach.inc(stats.relinks_out_of_reach - last.relinks_out_of_reach)
        self.released_early.inc(stats.released_early - last.released_early)
        for part, n in stats.capped.items():
            self.capped.labels(part).inc(n - last.capped.get(part, 0))
        self._last = Stats(
            records=dict(stats.records),
            late=dict(stats.late),
            duplicates=dict(stats.duplicates),
            deadletters=dict(stats.deadletters),
            alerts=dict(stats.alerts),
            released=stats.released,
            released_early=stats.released_early,
            expired=stats.expired,
            relinks_out_of_reach=stats.relinks_out_of_reach,
            capped=dict(stats.capped),
            too_late=dict(stats.too_late),
            corrections=dict(stats.corrections),
            raised_late=dict(stats.raised_late),
            retracted=dict(stats.retracted),
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
