"""The Kafka ACLs each notifguard principal needs, and nothing more (docs/security.md lists them)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from detectors.settings import Topics
from streams.kafka_security import KafkaSecurity, admin_client


@dataclass(frozen=True)
class Acl:
    """One ALLOW rule: operation on a resource (a literal name, or every name with this prefix)."""

    resource: str  # TOPIC, GROUP, TRANSACTIONAL_ID
    name: str
    operation: str  # READ, WRITE, CREATE, DESCRIBE
    prefixed: bool = False

    def render(self) -> str:
        return f"{self.operation} {self.resource} {self.name}{'*' if self.prefixed else ''}"


def worker_acls(topics: Topics, app_id: str, exactly_once: bool = False, incidents: bool = True) -> list[Acl]:
    """Read the inputs, write alerts and dead letters, its group, its own `<app_id>-` topics and ids;
    with `incidents` (computed by the worker): read and write the incidents topic, and the group of
    its incidents computation (`<app_id>-incidents`; its feed and members topics are `<app_id>-` topics)."""
    acls = [Acl("TOPIC", t, "READ") for t in (topics.outbound, topics.changes, topics.delivery)]
    acls += [Acl("TOPIC", t, "WRITE") for t in (topics.alerts, topics.deadletter)]
    acls.append(Acl("GROUP", app_id, "READ"))
    # Its changelogs and Faust's assignor topic: declared (created if missing) at start, read on recovery.
    acls += [Acl("TOPIC", f"{app_id}-", op, prefixed=True) for op in ("CREATE", "READ", "WRITE")]
    if exactly_once:
        acls += [Acl("TRANSACTIONAL_ID", f"{app_id}-eos-", op, prefixed=True) for op in ("WRITE", "DESCRIBE")]
    if incidents:
        acls += [Acl("TOPIC", topics.incidents, op) for op in ("READ", "WRITE")]
        acls.append(Acl("GROUP", f"{app_id}-incidents", "READ"))
    return acls


def forwarder_acls(topics: Topics, group: str = "notifguard-forwarder") -> list[Acl]:
    """Read the alerts topic in its own consumer group."""
    return [Acl("TOPIC", topics.alerts, "READ"), Acl("GROUP", group, "READ")]


def incidents_acls(topics: Topics, app_id: str = "notifguard-incidents") -> list[Acl]:
    """`incidents run`: read the alerts in its group, write the incidents, keep its members topic."""
    return [
        Acl("TOPIC", topics.alerts, "READ"),
        Acl("GROUP", app_id, "READ"),
        Acl("TOPIC", topics.incidents, "READ"),
        Acl("TOPIC", topics.incidents, "WRITE"),
        *(Acl("TOPIC", f"{app_id}-", op, prefixed=True) for op in ("CREATE", "READ", "WRITE")),
    ]


def capture_acls(names: Iterable[str]) -> list[Acl]:
    """`capture`: read the captured topics (no consumer group)."""
    return [Acl("TOPIC", t, "READ") for t in names]


def replay_acls(names: Iterable[str]) -> list[Acl]:
    """`replay --bootstrap`: write the topics it produces to."""
    return [Acl("TOPIC", t, "WRITE") for t in names]


def check_acls(topics: Topics) -> list[Acl]:
    """`check`: write the inputs, read the alerts (no consumer group)."""
    return [*replay_acls((topics.outbound, topics.changes, topics.delivery)), Acl("TOPIC", topics.alerts, "READ")]


def topic_needs(acls: Iterable[Acl]) -> dict[str, tuple[str, ...]]:
    """The literal topics of these ACLs and their operations: what streams.kafka_access checks at start."""
    out: dict[str, tuple[str, ...]] = {}
    for a in acls:
        if a.resource == "TOPIC" and not a.prefixed:
            out[a.name] = (*out.get(a.name, ()), a.operation)
    return out


def grant(bootstrap: str, admin: KafkaSecurity, principal: str, acls: Sequence[Acl]) -> None:
    """Create these ALLOW ACLs for `principal` (e.g. User:worker), as a principal allowed to alter ACLs."""
    from kafka.admin import ACL, ACLOperation, ACLPermissionType, ACLResourcePatternType, ResourcePattern, ResourceType

    client = admin_client(bootstrap, admin)
    try:
        result = client.create_acls(
            [
                ACL(
                    principal,
                    "*",
                    ACLOperation[a.operation],
                    ACLPermissionType.ALLOW,
                    ResourcePattern(
                        ResourceType[a.resource],
                        a.name,
                        ACLResourcePatternType.PREFIXED if a.prefixed else ACLResourcePatternType.LITERAL,
                    ),
                )
                for a in acls
            ]
        )
    finally:
        client.close()
    if result["failed"]:
        raise RuntimeError(f"creating ACLs for {principal} failed: {result['failed']}")
