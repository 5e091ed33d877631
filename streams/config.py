"""Build the one frozen Settings object at start-up, from a TOML file and NOTIFGUARD_* env vars."""

from __future__ import annotations

import dataclasses
import logging
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from detectors.incidents import IncidentSettings
from detectors.settings import DEV_PSEUDONYMISATION_KEY, Secret, Settings, Topics
from streams.kafka_security import KafkaSecurity, parse_boolean, security_from

log = logging.getLogger("notifguard.config")

_ENV_PREFIX = "NOTIFGUARD_"

# The worker's pseudonymisation key must be a secret: HMAC-SHA256 keys shorter
# than the hash's output, 32 bytes, are "strongly discouraged" (RFC 2104,
# section 3); the development key is public; REPLACE-ME... is the placeholder
# of deploy/k8s/secret.yaml. deploy/k8s/statefulset.yaml checks the same.
KEY_MIN_BYTES = 32
AT_LEAST_ONCE, EXACTLY_ONCE = "at_least_once", "exactly_once"
GUARANTEES = (AT_LEAST_ONCE, EXACTLY_ONCE)
PLACEHOLDER_KEY_PREFIX = "REPLACE-ME"


def read_settings_file(path: str | Path | None, env: Mapping[str, str]) -> dict[str, Any] | None:
    """The settings file (`path`, else NOTIFGUARD_CONFIG) as a dict, or None without one."""
    if path is None:
        path = env.get(_ENV_PREFIX + "CONFIG") or None
    if path is None:
        return None
    with open(path, "rb") as fh:
        return tomllib.load(fh)


def load_kafka_security(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> KafkaSecurity:
    """The `[kafka]` section of the settings file (or NOTIFGUARD_CONFIG), then NOTIFGUARD_KAFKA_*."""
    env = os.environ if env is None else env
    return security_from(dict((read_settings_file(path, env) or {}).get("kafka", {}) or {}), env)


def load_settings(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """File first, then environment; unknown keys are an error (a typo must not pass silently)."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    doc = read_settings_file(path, env)
    if doc is not None:
        values.update(doc)
        values.pop("worker", None)  # the worker's own section: see load_worker_config
        values.pop("kafka", None)  # the connection: streams.kafka_security
    return _settings_from(values, env)


def load_incident_settings(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> IncidentSettings:
    """The `[incidents]` section of the settings file, then NOTIFGUARD_INCIDENTS_* (breach_kinds: comma-separated)."""
    env = os.environ if env is None else env
    return _incident_settings_from((read_settings_file(path, env) or {}).get("incidents"), env)


def _incident_settings_from(section: Any, env: Mapping[str, str]) -> IncidentSettings:
    values: dict[str, Any] = dict(section or {})
    fields = {f.name: f for f in dataclasses.fields(IncidentSettings)}
    for name in fields:
        raw = env.get(f"{_ENV_PREFIX}INCIDENTS_{name.upper()}")
        if raw is not None:
            values[name] = raw
    unknown = set(values) - set(fields)
    if unknown:
        raise ValueError(f"unknown [incidents] settings: {', '.join(sorted(unknown))}")
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        if name == "breach_kinds":
            items = value.split(",") if isinstance(value, str) else list(value)
            kwargs[name] = tuple(str(k).strip() for k in items if str(k).strip())
        else:
            kwargs[name] = float(value)
    return IncidentSettings(**kwargs)


def _settings_from(values: dict[str, Any], env: Mapping[str, str]) -> Settings:
    values = dict(values)
    values.pop("worker", None)
    values.pop("incidents", None)  # the incidents' own section: see load_incident_settings
    values.pop("kafka", None)
    fields = {f.name for f in dataclasses.fields(Settings)}
    for name in fields:
        raw = env.get(_ENV_PREFIX + name.upper())
        if raw is not None and name not in ("topics",):
            values[name] = raw
    topics = dict(values.pop("topics", {}) or {})
    for tf in dataclasses.fields(Topics):
        raw = env.get(f"{_ENV_PREFIX}TOPIC_{tf.name.upper()}")
        if raw is not None:
            topics[tf.name] = raw
    unknown = set(values) - set(fields)
    if unknown:
        raise ValueError(f"unknown settings: {', '.join(sorted(unknown))}")
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        default = getattr(Settings(), name)
        if name == "pseudonymisation_key":
            kwargs[name] = Secret(str(value))
        elif isinstance(default, bool):
            kwargs[name] = str(value).lower() in ("1", "true", "yes", "on")
        elif isinstance(default, int):
            kwargs[name] = int(value)
        elif isinstance(default, float):
            kwargs[name] = float(value)
        else:
            kwargs[name] = str(value)
    settings = Settings(topics=Topics(**topics), **kwargs)
    if settings.grace_s < 0 or settings.idle_flush_s <= 0:
        raise ValueError("grace_s must be >= 0 and idle_flush_s > 0")
    return settings


def key_problem(settings: Settings) -> str | None:
    """What makes the pseudonymisation key unfit for a worker (never the key itself), or None."""
    key = settings.pseudonymisation_key.reveal()
    if key == DEV_PSEUDONYMISATION_KEY:
        return "is the public development key"
    if key.startswith(PLACEHOLDER_KEY_PREFIX):
        return f"is the placeholder {PLACEHOLDER_KEY_PREFIX}... of deploy/k8s/secret.yaml"
    size = len(key.encode())
    if size < KEY_MIN_BYTES:
        return f"is shorter than {KEY_MIN_BYTES} bytes ({size})"
    return None


def warn_if_dev_key(settings: Settings) -> None:
    if settings.uses_dev_key:
        log.warning(
            "USING THE DEVELOPMENT PSEUDONYMISATION KEY: hashes in alerts and state are not secret. "
            "Set NOTIFGUARD_PSEUDONYMISATION_KEY (or pseudonymisation_key in the config file) in production."
        )


@dataclasses.dataclass(frozen=True)
class WorkerConfig:
    """Settings of the Kafka worker: the rules plus where and how it runs."""

    rules: Settings
    # The worker refuses to start with a pseudonymisation key anybody can know (the
    # development key, one shorter than KEY_MIN_BYTES, the placeholder): hashes made
    # with it protect nobody. Tests, benchmarks and the demo set this to start anyway.
    allow_development_key: bool = False
    bootstrap: str = "127.0.0.1:19092"
    app_id: str = "notifguard"
    # RocksDB (through rocksdict) in production; memory for tests. Either way
    # the tables are rebuilt from their changelog topics after a restart.
    store: str = "rocksdb://"
    datadir: str = ".notifguard-data"
    partitions: int = 6
    # "at_least_once" (default) or "exactly_once": one Kafka transaction per flush
    # holds its alerts, dead letters, changelog records and input offsets
    # (streams/worker/exactly_once.py); consumers of the alerts must read_committed.
    processing_guarantee: str = "at_least_once"
    # One host: no standby replicas; raise with more workers to speed up fail-over.
    standby_replicas: int = 0
    # Replication of the topics Faust creates itself (its assignor topic, and the
    # changelogs where `ensure_topics` has not made them with the broker's default):
    # 1 for the single local broker; 3 in production (a changelog lost is state lost).
    replication_factor: int = 1
    # The web server serves /health and /metrics only, on loopback unless configured.
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    # State writes are coalesced and flushed (with the acks of their records) this often.
    # Alerts and dead letters do not wait for it (at-least-once: they are handed to
    # the producer after each batch); exactly_once commits its transaction this often.
    # Each flush encodes and produces every state changed since the last, holding the
    # worker's lock meanwhile (~100-250 ms at 10,000 records/s with 1 s), which
    # is what the latency's p99 waits for. bench.worker_bench at 10,000 records/s:
    # p99 added latency 280-340 ms with 1 s, 158 ms with 0.25 s, for 0.66 instead of
    # 0.63 of a core; backlog throughput unchanged. (At 0.2 s, before state encoding
    # was memoised and written in batches, flushing took a third of the CPU.)
    flush_interval_s: float = 0.25
    # Wall-clock timer for idle partitions (the engine's idle_flush applies).
    tick_interval_s: float = 1.0
    # At most this many records per fetched batch (the consumer's max_poll_records):
    # a batch runs without yielding the event loop, so this bounds how long the
    # alerts of a batch, /health and the timer wait (~1000 records: ~30 ms).
    batch_max: int = 1000
    # Flow control (contract 1.1: it changes no result): while the grace buffer
    # holds this many records, the input topic-partitions running ahead of the
    # watermark are paused, and resumed below half of it. A buffered record
    # costs ~0.5-1 KiB (its Kafka record, decoded form and buffer entry), so
    # 200,000 bound the buffer to ~100-200 MiB while a topic runs far ahead.
    max_pending: int = 200_000
    # Crash-loop quarantine (streams/worker/quarantine.py): a record the worker
    # process died on this many times (its restarts re-read it: its offset was
    # never acknowledged) is dead-lettered as `quarantined` instead of crashing it
    # again. 3: one crash can be the machine's, two in a row on one record rarely
    # are, and the third restart is still quick (Kubernetes' back-off is 10-40 s).
    # 0 turns it off. The counts live in the data directory.
    crash_quarantine_after: int = 3
    # How long the group waits for a worker that stopped heartbeating (a crash, a
    # SIGKILL, a partitioned node) before its partitions go to the others: 60 s is
    # Faust's default (Kafka allows 6 s to 30 min, group.min/max.session.timeout.ms).
    # Shorter moves work sooner after a crash and rebalances on a long GC pause.
    # The heartbeat is a third of it, at most 3 s (Faust's).
    session_timeout_s: float = 60.0
    # A fetch returns once the broker has fetch_min_bytes for it, or after
    # fetch_max_wait_ms. The wait bounds what a record can add to the latency;
    # it is short because aiokafka has at most one fetch in flight per broker and,
    # while the last fetch's records are still buffered, fetches only the
    # partitions that have nothing buffered: often just empty ones (the
    # assignor's leader topic, a GlobalTable changelog, an input at its end),
    # and every partition of the broker waits behind that fetch.
    fetch_max_wait_ms: int = 25
    # Without a minimum a live stream's fetch returns as soon as one record is
    # there: ~100 fetches a second, each a Python-encoded request and response
    # for every assigned partition and a batch with its fixed costs (merge,
    # releases, sends), which cost more CPU than the records (bench: 168 -> 98
    # us of worker CPU per record at 4,000 records/s with 16 KiB, ~60 records).
    # 64 KiB cut the live CPU further (~77 -> ~67 us a record at 6,000/s) but
    # raised the median added latency by ~45 ms at 5,000-6,000/s (bench.worker_bench).
    fetch_min_bytes: int = 16 * 1024
    # Liveness (streams/liveness.py): the worker is *stalled* when input waits for it
    # (records unread on the broker, in the grace buffer, or acked but not committed)
    # and for this long nothing was read, acked, delivered or committed, or the timer
    # has not completed a run. /health answers 503 then, /live too (the Kubernetes
    # liveness probe: a restart re-reads from the committed offsets, which is safe),
    # and notifguard_worker_stalled is 1. A healthy worker reads a waiting record within
    # a fetch (ms) and acks it within a flush (0.25 s); 120 s is far above a slow
    # broker's hiccup or a leader election (seconds), and short enough that a stall is
    # restarted within minutes. The worker raises it to idle_flush_s + grace_s plus a
    # few seconds if that is longer: records may legitimately wait in the grace buffer
    # that long with nothing read (a silent topic holds the watermark until idle_flush).
    stall_after_s: float = 120.0
    # The longest a flush may wait for the broker to take its sends (alerts, dead
    # letters, changelogs) and acknowledge them, or an exactly_once transaction to
    # commit; past it the worker crashes with a message saying so instead of waiting
    # forever (Faust's producer allows a send 1,200 s): its records are not acked,
    # so the restarted worker reads them again. A flush normally takes well under a
    # second and a partition leader election a few seconds; half the stall bound
    # makes the flush's own message come before the stall report.
    delivery_timeout_s: float = 60.0
    # After SIGTERM (or a crash) the worker stops within this bound: Faust commits
    # and closes, and if that hangs (a commit waiting for a broker that does not
    # answer), a watchdog logs what it was waiting for and exits with status 70.
    # Records not acked are read again on restart. Below the StatefulSet's
    # terminationGracePeriodSeconds (60), so that the log line is written before
    # Kubernetes' SIGKILL.
    shutdown_timeout_s: float = 30.0
    # How the worker's clients connect: the [kafka] table and NOTIFGUARD_KAFKA_* (TLS, SASL).
    kafka: KafkaSecurity = dataclasses.field(default_factory=KafkaSecurity)
    # Incidents computed by the worker (docs/incidents.md, streams/worker/incidents.py): each
    # flush also sends its breach-class alerts to the single-partition topic
    # `<app_id>-incident-alerts`, and the worker that owns it runs the aggregator and publishes
    # to the incidents topic. Off for a deployment that runs `notifguard incidents run` instead
    # (never both: they would publish the same incidents twice).
    incidents: bool = True
    # What closes quiet incidents: "wall" (the default, live) or "event" (only the alerts' event
    # time, as the offline replay: tests and replays of old captures), as `incidents run --clock`.
    incidents_clock: str = "wall"
    # At most one step of the incidents computation (poll, aggregate, publish the incidents that
    # changed, commit) per this many seconds. A step re-derives the incidents its alerts changed
    # and publishes each once: stepping at every flush's handful of alerts cost the worker a
    # third of its backlog throughput (bench.worker_bench, docs/performance.md). A second is
    # nothing against deadlines of hours, and a page takes Prometheus' scrape interval anyway.
    incidents_step_s: float = 1.0
    # A Relink (docs/topics.md 2.6a, "Across numbers") read from `<app_id>-relinks` is applied
    # once this worker's view of the address-index GlobalTable holds the links it carries the
    # digest of (the change's own worker flushed them to the changelog in the same flush that
    # produced the Relink, usually well under a second earlier); it is held (not acked, retried at
    # each batch and tick) at most this long, then applied with the view there is (counted:
    # notifguard_relinks_applied_total{view="waited_out"}). A view that never matches is a newer
    # one (a later change of the address) or a lagging one (the GlobalTable still recovering);
    # 30 s is far above a flush and a fetch (0.25 s and 25 ms) and a leader election (seconds),
    # and short against the stall bound (120 s), which a held Relink must not reach.
    relink_wait_s: float = 30.0
    # An upgraded deployment fills the address index of its partitions from the numbers' states
    # (streams.sweeper.LinksRebuild, docs/topics.md 2.6a) this many numbers a tick and a fetched
    # batch, holding its records meanwhile. 5,000 is the slice it was written with (the expiry
    # sweep's is 2,000, and a fill slice only reads a state and writes its links); set it lower
    # only to make a fill last longer, as a test of a rebalance in the middle of one does.
    index_fill_batch: int = 5_000
    # The [incidents] table and NOTIFGUARD_INCIDENTS_* (load_incident_settings).
    incident_settings: IncidentSettings = dataclasses.field(default_factory=IncidentSettings)

    def __post_init__(self) -> None:
        if self.index_fill_batch < 1:
            raise ValueError(f"index_fill_batch must be >= 1, not {self.index_fill_batch}")
        for name in ("stall_after_s", "delivery_timeout_s", "shutdown_timeout_s", "relink_wait_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, not {getattr(self, name)}")
        if self.fetch_min_bytes < 1 or self.fetch_max_wait_ms < 0:
            raise ValueError(
                f"fetch_min_bytes must be >= 1 and fetch_max_wait_ms >= 0, not "
                f"{self.fetch_min_bytes} and {self.fetch_max_wait_ms}"
            )
        if self.session_timeout_s < 6:
            raise ValueError(f"session_timeout_s must be >= 6 (the broker's minimum), not {self.session_timeout_s}")
        if self.crash_quarantine_after < 0:
            raise ValueError(f"crash_quarantine_after must be >= 0, not {self.crash_quarantine_after}")
        if self.max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, not {self.max_pending}")
        if self.replication_factor < 1:
            raise ValueError(f"replication_factor must be >= 1, not {self.replication_factor}")
        if self.incidents_step_s < 0:
            raise ValueError(f"incidents_step_s must be >= 0, not {self.incidents_step_s}")
        if self.incidents_clock not in ("wall", "event"):
            raise ValueError(f"incidents_clock must be wall or event, not {self.incidents_clock!r}")
        if self.processing_guarantee not in GUARANTEES:
            raise ValueError(
                f"processing_guarantee must be at_least_once or exactly_once, not {self.processing_guarantee!r}"
            )


def load_worker_config(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> WorkerConfig:
    """The worker's [worker] table of the settings file and NOTIFGUARD_WORKER_* env vars."""
    env = os.environ if env is None else env
    section: dict[str, Any] = {}
    kafka: dict[str, Any] = {}
    incidents: dict[str, Any] = {}
    rules_env = dict(env)
    doc = read_settings_file(path, env)
    if doc is not None:
        section = dict(doc.pop("worker", {}) or {})
        kafka = dict(doc.pop("kafka", {}) or {})
        incidents = dict(doc.pop("incidents", {}) or {})
    rules = _settings_from(doc if doc is not None else {}, rules_env)
    kwargs: dict[str, Any] = {
        "kafka": security_from(kafka, env),
        "incident_settings": _incident_settings_from(incidents, env),
    }
    defaults = WorkerConfig(rules=rules)
    names = {f.name for f in dataclasses.fields(WorkerConfig)} - {"rules", "kafka", "incident_settings"}
    for name in names:
        raw = env.get(f"{_ENV_PREFIX}WORKER_{name.upper()}", section.get(name))
        if raw is None:
            continue
        default = getattr(defaults, name)
        kwargs[name] = parse_boolean(name, raw) if isinstance(default, bool) else type(default)(raw)
    unknown = set(section) - names
    if unknown:
        raise ValueError(f"unknown worker settings: {', '.join(sorted(unknown))}")
    return WorkerConfig(rules=rules, **kwargs)


def worker_env(topics: Topics, app_id: str, bootstrap: str, web_port: int, partitions: int) -> dict[str, str]:
    """The NOTIFGUARD_* variables that point a `notifguard worker` process at these topics (tests, benchmarks).

    They allow the development key (WorkerConfig.allow_development_key): test and
    benchmark workers hash with it, as the offline replay they are compared with does.
    """
    return {
        f"{_ENV_PREFIX}WORKER_ALLOW_DEVELOPMENT_KEY": "true",
        f"{_ENV_PREFIX}TOPIC_OUTBOUND": topics.outbound,
        f"{_ENV_PREFIX}TOPIC_CHANGES": topics.changes,
        f"{_ENV_PREFIX}TOPIC_DELIVERY": topics.delivery,
        f"{_ENV_PREFIX}TOPIC_ALERTS": topics.alerts,
        f"{_ENV_PREFIX}TOPIC_DEADLETTER": topics.deadletter,
        f"{_ENV_PREFIX}TOPIC_INCIDENTS": topics.incidents,
        f"{_ENV_PREFIX}WORKER_APP_ID": app_id,
        f"{_ENV_PREFIX}WORKER_BOOTSTRAP": bootstrap,
        f"{_ENV_PREFIX}WORKER_WEB_PORT": str(web_port),
        f"{_ENV_PREFIX}WORKER_PARTITIONS": str(partitions),
    }
