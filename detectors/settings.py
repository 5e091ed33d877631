"""The one frozen settings object: every rule threshold and window, with where its default comes from."""

from __future__ import annotations

from dataclasses import dataclass, field

SECOND_US = 1_000_000
DAY_S = 86_400

# Development key: it makes hashes reproducible in tests and the demo, and is
# useless in production (everybody knows it). The shell warns when it is used.
DEV_PSEUDONYMISATION_KEY = "notifguard-development-key-do-not-use-in-production"


class Secret:
    """A string that never shows itself in repr, str or logs."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))


@dataclass(frozen=True)
class Topics:
    outbound: str = "notifications.outbound"
    changes: str = "contracts.changes"
    delivery: str = "notifications.delivery"
    alerts: str = "notifguard.alerts"
    deadletter: str = "notifguard.deadletter"
    # written by `notifguard incidents run` (docs/incidents.md), not by the worker
    incidents: str = "notifguard.incidents"


@dataclass(frozen=True)
class Settings:
    # Spec default (topics.md, "Event time, grace"): producers' clocks and
    # Kafka batching reorder events by seconds; 30 s covers that with margin.
    grace_s: float = 30.0
    # A quiet partition is flushed after this much wall-clock silence, so no
    # verdict waits forever; equal to grace, the spec's own patience.
    idle_flush_s: float = 30.0
    # An event_time further than this ahead of its record's Kafka timestamp (and,
    # live, of the wall clock) is refused as bad_event_time: one record dated
    # 9999 would otherwise move the watermark on for good. 1 h is Kafka 4's own
    # bound on record timestamps ahead of the broker's clock
    # (message.timestamp.after.max.ms); producers' clocks are seconds apart.
    max_future_skew_s: float = 3600.0
    # The grace buffer's bound (detectors.arrival): beyond it the earliest records are
    # released before their time and counted. ~0.5-1 KiB a buffered record: 1,000,000
    # bound it to ~1 GiB; the worker's flow control (max_pending) pauses far earlier.
    max_buffered: int = 1_000_000
    # Spec: "at least 24 h"; 48 h also catches resends after a day-long outage.
    dedup_retention_s: float = 2 * DAY_S
    # Spec default for re_port: a number recycled within a year still has
    # contact data of its previous holder around (Bundesnetzagentur quarantine
    # for recycled numbers is months, not years).
    re_port_window_s: float = 365 * DAY_S
    # Spec defaults for port_flapping: 3 port events within 30 days.
    port_flapping_threshold: int = 3
    port_flapping_window_s: float = 30 * DAY_S
    # Spec defaults for bounce_burst: 3 bounces within 24 hours.
    bounce_burst_threshold: int = 3
    bounce_burst_window_s: float = 1 * DAY_S
    # How long a sent notification is remembered for its delivery outcome:
    # RFC 5321 4.5.4.1 suggests giving up retries after 4-5 days, so a hard
    # bounce can arrive up to ~5 days after the send; 7 days covers it.
    delivery_correlation_s: float = 7 * DAY_S
    # Holdings that ended longer ago than this are dropped from state (GDPR
    # data minimisation); 3 years covers re_port's 1 year and any
    # late-arriving mail of a long-ended contract many times over.
    history_retention_s: float = 3 * 365 * DAY_S
    # How often (in event time) the worker and the replay sweep every number's
    # state for what has expired (detectors/expiry.py). Weekly, the delivery
    # correlation span: a quiet number then holds its last mails and marks at
    # most two spans, for the price of one visit of each number a week.
    expiry_sweep_interval_s: float = 7 * DAY_S
    # Contract 1.1 ("Late contract changes"; shared spec default): a record later than grace
    # but at most this far (event time) behind the watermark is applied in its event-time place
    # and the verdicts it changes are judged again (late alerts, retractions). 7 days: nightly and
    # weekend batch exports of legacy billing and porting confirmations arrive within days; it is
    # also the delivery correlation span, so the history it keeps per number is about a week's.
    correction_horizon_s: float = 7 * DAY_S
    # Where runbooks live; runbook_url is this + "<kind>.md".
    runbook_base_url: str = "docs/runbooks/"
    topics: Topics = field(default_factory=Topics)
    pseudonymisation_key: Secret = field(default_factory=lambda: Secret(DEV_PSEUDONYMISATION_KEY))

    def __post_init__(self) -> None:
        if self.history_retention_s < self.re_port_window_s:
            # re_port reads the holding that ended up to re_port_window_s before a start:
            # history it needs must not be forgotten first
            raise ValueError(
                f"history_retention_s ({self.history_retention_s:g}) must be at least "
                f"re_port_window_s ({self.re_port_window_s:g})"
            )
        if self.correction_horizon_s < 0:
            raise ValueError("correction_horizon_s must not be negative")
        if self.expiry_sweep_interval_s <= 0:
            raise ValueError("expiry_sweep_interval_s must be positive")

    @property
    def uses_dev_key(self) -> bool:
        return self.pseudonymisation_key.reveal() == DEV_PSEUDONYMISATION_KEY

    def us(self, seconds: float) -> int:
        return int(seconds * SECOND_US)
