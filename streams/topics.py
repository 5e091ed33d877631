"""Create and check the topics notifguard reads and writes (kafka-python admin client).

`ensure_topics` is idempotent: missing topics are created, existing ones are
checked. Partition counts that break co-partitioning (the three input topics
and the worker's address-keyed repartition topic must have one count) are an
error; other differences (a config that is not what we would have set, an
output topic with another partition count) are reported as notes, never
changed behind the operator's back.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from detectors.settings import Settings
from streams.kafka_security import PLAINTEXT, KafkaSecurity, admin_client

DAY_MS = 86_400_000


class TopicLayoutError(RuntimeError):
    """Existing topics cannot be used as they are (co-partitioning would break)."""


@dataclass(frozen=True)
class TopicSpec:
    name: str
    role: str
    partitions: int
    configs: dict[str, str]
    # Must have the same partition count as the input topics.
    co_partitioned: bool


@dataclass
class TopicState:
    spec: TopicSpec
    partitions: int
    created: bool
    configs: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass
class TopicsReport:
    bootstrap: str
    topics: list[TopicState]

    def by_name(self) -> dict[str, TopicState]:
        return {t.name: t for t in self.topics}

    @property
    def created(self) -> list[str]:
        return [t.name for t in self.topics if t.created]

    def render(self) -> str:
        lines = [f"topics on {self.bootstrap}:"]
        for t in self.topics:
            state = "created" if t.created else "exists "
            cfg = ", ".join(f"{k}={v}" for k, v in sorted(t.configs.items()))
            lines.append(f"  {state} {t.name:<40} {t.spec.role:<16} partitions={t.partitions:<3} {cfg}")
            lines += [f"          note: {n}" for n in t.notes]
        return "\n".join(lines)


# The worker's address-index GlobalTable: keyed by (address, input partition) since "-v2"
# (streams.tablestore.TableLinks); the table keyed by the address alone, "address-index", is
# never read again (docs/topics.md 2.6a, upgrading).
ADDRESS_INDEX_TABLE: Final = "address-index-v2"


def address_index_topic(app_id: str) -> str:
    """The changelog of the worker's address-index GlobalTable (Faust's name for it)."""
    return f"{app_id}-{ADDRESS_INDEX_TABLE}-changelog"


def numbers_topic(app_id: str) -> str:
    """The changelog of the worker's numbers table (Faust's name for it)."""
    return f"{app_id}-numbers-changelog"


def incident_feed_topic(app_id: str) -> str:
    """The worker's single-partition feed of breach-class alerts to its incidents computation
    (streams/worker/incidents.py): written in each flush with the alerts, read by one worker."""
    return f"{app_id}-incident-alerts"


def relinks_topic(app_id: str) -> str:
    """The worker's Relinks (a late change that altered an address's links, detectors.engine.Relink),
    broadcast to every partition: co-partitioned with the inputs, so partition i goes to the owner
    of input partition i, which re-judges its numbers' mails to the address (docs/topics.md 2.6a)."""
    return f"{app_id}-relinks"


def incidents_id(app_id: str) -> str:
    """The worker's incidents computation's consumer group and topic prefix (`<app_id>-incidents-members`):
    `notifguard-incidents` for the default app id, as `incidents run`'s default --app-id."""
    return f"{app_id}-incidents"


def topic_specs(settings: Settings, partitions: int = 6, app_id: str = "notifguard") -> list[TopicSpec]:
    """The intended layout: names from the settings, counts and configs of the contract."""
    if partitions < 1:
        raise ValueError(f"partitions must be >= 1, not {partitions}")
    t = settings.topics
    delete = {"cleanup.policy": "delete"}
    return [
        TopicSpec(t.outbound, "input", partitions, dict(delete), True),
        TopicSpec(t.changes, "input", partitions, dict(delete), True),
        TopicSpec(t.delivery, "input", partitions, dict(delete), True),
        # Keyed by dedup_key: compaction keeps the newest record per alert, delete bounds the age.
        TopicSpec(
            t.alerts,
            "output",
            partitions,
            {"cleanup.policy": "compact,delete", "retention.ms": str(30 * DAY_MS)},
            False,
        ),
        TopicSpec(
            t.deadletter, "output", partitions, {"cleanup.policy": "delete", "retention.ms": str(30 * DAY_MS)}, False
        ),
        # The tables' changelogs, made before the worker starts: Faust declares them itself, but
        # its partition assignor can run before their metadata has spread, ignore them as
        # missing ("not found in cluster metadata"), and leave the worker never ready.
        # Compacted: the newest state per key is the state.
        TopicSpec(numbers_topic(app_id), "internal", partitions, {"cleanup.policy": "compact"}, True),
        TopicSpec(address_index_topic(app_id), "internal", partitions, {"cleanup.policy": "compact"}, True),
        # Relinks broadcast between the workers' partitions, read at once (held at most
        # relink_wait_s): kept as long as the alerts, for a worker that was down that long.
        TopicSpec(
            relinks_topic(app_id),
            "internal",
            partitions,
            {"cleanup.policy": "delete", "retention.ms": str(30 * DAY_MS)},
            True,
        ),
    ]


def _admin(bootstrap: str, security: KafkaSecurity = PLAINTEXT, **kw: Any) -> Any:
    return admin_client(bootstrap, security, **kw)


def wait_for_broker(bootstrap: str, timeout: float = 30.0, security: KafkaSecurity = PLAINTEXT) -> bool:
    """True once a broker at `bootstrap` answers a metadata request, False after `timeout` seconds."""
    # A broker that answers but refuses this client (TLS, SASL) is no reason to wait:
    # streams.kafka_access.KafkaAccessError, naming the cause, at once.
    from kafka.errors import KafkaError

    from streams.kafka_access import KafkaAccessError, check_connection

    deadline = time.monotonic() + timeout
    while True:
        admin = None
        left_ms = max(1000, int((deadline - time.monotonic()) * 1000))
        try:
            # Connect, handshake and log in first: the admin client would retry a refusal
            # until its bootstrap timeout and not say why.
            check_connection(bootstrap, security, timeout=min(2.0, left_ms / 1000))
            admin = _admin(
                bootstrap, security, request_timeout_ms=min(left_ms, 10_000), bootstrap_timeout_ms=min(left_ms, 10_000)
            )
            if admin.describe_cluster().get("brokers"):
                return True
        except KafkaAccessError as err:
            if not err.retryable:
                raise
        except (KafkaError, OSError, ValueError):
            pass
        finally:
            if admin is not None:
                admin.close()
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.5)


def _existing(admin: Any, names: list[str]) -> dict[str, int]:
    """Partition counts of the topics among `names` that exist."""
    out: dict[str, int] = {}
    for t in admin.describe_topics(names):
        if t.get("error_code", 0) == 0 and t.get("partitions"):
            out[t["name"]] = len(t["partitions"])
    return out


def _configs(admin: Any, names: Iterable[str]) -> dict[str, dict[str, str]]:
    from kafka.admin import ConfigResource, ConfigResourceType

    names = list(names)
    if not names:
        return {}
    got = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, n) for n in names], config_filter="all").get(
        "topic", {}
    )
    return {n: {k: str(v.get("value")) for k, v in got.get(n, {}).items()} for n in names}


def ensure_topics(
    bootstrap: str,
    settings: Settings,
    partitions: int = 6,
    app_id: str = "notifguard",
    timeout: float = 30.0,
    specs: list[TopicSpec] | None = None,
    security: KafkaSecurity = PLAINTEXT,
) -> TopicsReport:
    """Create what is missing, check what exists; raise TopicLayoutError when co-partitioning would break.

    `specs`: other topics than the worker's (topic_specs), e.g. the incidents process's.
    """
    from kafka.errors import TopicAlreadyExistsError

    if specs is None:
        specs = topic_specs(settings, partitions, app_id)
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"topic names must be distinct: {names}")
    admin = _admin(bootstrap, security)
    try:
        existing = _existing(admin, names)
        co = {s.name: existing[s.name] for s in specs if s.co_partitioned and s.name in existing}
        counts = set(co.values())
        if len(counts) > 1:
            listing = ", ".join(f"{n}: {c}" for n, c in sorted(co.items()))
            raise TopicLayoutError(
                "the input topics (and the worker's address index) must be co-partitioned, but their "
                f"partition counts differ ({listing}); all must have the same number of partitions"
            )
        if counts and counts != {partitions}:
            (have,) = counts
            listing = ", ".join(sorted(co))
            raise TopicLayoutError(
                f"{listing} already exist(s) with {have} partitions, but {partitions} were requested; "
                f"new co-partitioned topics would not match: ask for {have} partitions, or recreate the topics"
            )
        created: list[str] = []
        for spec in specs:
            if spec.name in existing:
                continue
            try:
                admin.create_topics(
                    {spec.name: {"num_partitions": spec.partitions, "replication_factor": -1, "configs": spec.configs}},
                )
                created.append(spec.name)
            except TopicAlreadyExistsError:
                pass  # created concurrently; checked below like any existing topic
        if created:
            admin.wait_for_topics(created, timeout_ms=int(timeout * 1000))
        counts_now = _existing(admin, names)
        configs = _configs(admin, names)
    finally:
        admin.close()

    states = []
    for spec in specs:
        have = counts_now.get(spec.name, 0)
        state = TopicState(
            spec, have, spec.name in created, {k: configs.get(spec.name, {}).get(k, "?") for k in spec.configs}
        )
        if spec.co_partitioned and have != spec.partitions:
            # Raced with another creator that used another count.
            raise TopicLayoutError(
                f"{spec.name} has {have} partitions, expected {spec.partitions} (co-partitioned with the inputs)"
            )
        if have != spec.partitions:
            state.notes.append(f"has {have} partitions, {spec.partitions} intended (not co-partitioned: allowed)")
        for key, want in spec.configs.items():
            got = state.configs.get(key)
            if got != want:
                state.notes.append(f"{key} is {got!r}, intended {want!r} (left unchanged)")
        states.append(state)
    return TopicsReport(bootstrap, states)


def delete_topics(
    bootstrap: str, names: Iterable[str], timeout: float = 30.0, security: KafkaSecurity = PLAINTEXT
) -> list[str]:
    """Delete those of `names` that exist and wait until they are gone; returns the ones deleted."""
    names = list(names)
    admin = _admin(bootstrap, security)
    try:
        present = sorted(_existing(admin, names))
        if present:
            admin.delete_topics(present, raise_errors=False)
        deadline = time.monotonic() + timeout
        while present and _existing(admin, present) and time.monotonic() < deadline:
            time.sleep(0.2)
        return present
    finally:
        admin.close()
