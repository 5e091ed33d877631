"""streams.topics on the local broker (deploy/kafka/start.sh): idempotent creation and co-partitioning checks.

Skips without a broker unless NOTIFGUARD_KAFKA_REQUIRED=1 (then a missing broker fails).
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator

import pytest

from detectors.settings import Settings, Topics
from streams.topics import (
    DAY_MS,
    TopicLayoutError,
    address_index_topic,
    delete_topics,
    ensure_topics,
    numbers_topic,
    topic_specs,
    wait_for_broker,
)

BOOTSTRAP = os.environ.get("NOTIFGUARD_BOOTSTRAP", "127.0.0.1:19092")


def _settings(prefix: str) -> Settings:
    return Settings(
        topics=Topics(
            outbound=f"{prefix}.outbound",
            changes=f"{prefix}.changes",
            delivery=f"{prefix}.delivery",
            alerts=f"{prefix}.alerts",
            deadletter=f"{prefix}.deadletter",
        )
    )


@pytest.fixture()
def layout(bootstrap: str) -> Iterator[tuple[Settings, str]]:
    prefix = f"test-topics-{uuid.uuid4().hex[:10]}"
    settings, app_id = _settings(prefix), f"{prefix}-app"
    yield settings, app_id
    delete_topics(bootstrap, [s.name for s in topic_specs(settings, 1, app_id)])


def _configs(bootstrap: str, names: list[str]) -> dict[str, dict[str, str]]:
    from streams.topics import _admin, _configs

    admin = _admin(bootstrap)
    try:
        return _configs(admin, names)
    finally:
        admin.close()


def _create(bootstrap: str, name: str, partitions: int) -> None:
    """A topic made behind ensure_topics' back, as another tool or team might."""
    from streams.topics import _admin

    admin = _admin(bootstrap)
    try:
        admin.create_topics({name: {"num_partitions": partitions, "replication_factor": 1}}, wait_for_metadata=True)
    finally:
        admin.close()


def test_topic_specs_follow_the_contract() -> None:
    specs = {s.name: s for s in topic_specs(Settings(), 6, "notifguard")}
    assert set(specs) == {
        "notifications.outbound",
        "contracts.changes",
        "notifications.delivery",
        "notifguard.alerts",
        "notifguard.deadletter",
        "notifguard-numbers-changelog",
        "notifguard-address-index-v2-changelog",
        "notifguard-relinks",
    }
    assert {s.partitions for s in specs.values()} == {6}
    assert specs["notifguard.alerts"].configs == {"cleanup.policy": "compact,delete", "retention.ms": str(30 * DAY_MS)}
    assert specs["notifguard-address-index-v2-changelog"].co_partitioned
    assert specs["notifguard-numbers-changelog"].co_partitioned
    assert specs["notifguard-relinks"].co_partitioned  # partition i: the owner of input partition i
    assert not specs["notifguard.deadletter"].co_partitioned
    with pytest.raises(ValueError):
        topic_specs(Settings(), 0)


@pytest.mark.kafka
def test_wait_for_broker(bootstrap: str) -> None:
    assert wait_for_broker(bootstrap, timeout=10)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    assert not wait_for_broker(f"127.0.0.1:{free}", timeout=1)


@pytest.mark.kafka
def test_ensure_topics_creates_once_with_intended_layout(bootstrap: str, layout: tuple[Settings, str]) -> None:
    settings, app_id = layout
    first = ensure_topics(bootstrap, settings, partitions=3, app_id=app_id)
    names = [s.name for s in topic_specs(settings, 3, app_id)]
    assert sorted(first.created) == sorted(names)
    assert {t.partitions for t in first.topics} == {3}
    assert all(not t.notes for t in first.topics), first.render()

    again = ensure_topics(bootstrap, settings, partitions=3, app_id=app_id)
    assert again.created == []
    assert {t.partitions for t in again.topics} == {3}
    assert "exists" in again.render()

    cfg = _configs(bootstrap, names)
    t = settings.topics
    for name in (t.outbound, t.changes, t.delivery):
        assert cfg[name]["cleanup.policy"] == "delete"
    assert cfg[t.alerts]["cleanup.policy"] == "compact,delete"
    assert cfg[t.alerts]["retention.ms"] == str(30 * DAY_MS)
    assert cfg[t.deadletter]["cleanup.policy"] == "delete"
    assert cfg[t.deadletter]["retention.ms"] == str(30 * DAY_MS)
    for changelog in (address_index_topic(app_id), numbers_topic(app_id)):
        assert cfg[changelog]["cleanup.policy"] == "compact"


@pytest.mark.kafka
def test_existing_input_with_another_partition_count_is_rejected(bootstrap: str, layout: tuple[Settings, str]) -> None:
    settings, app_id = layout
    _create(bootstrap, settings.topics.changes, 2)
    with pytest.raises(TopicLayoutError, match=rf"{settings.topics.changes}.*2 partitions.*6 were requested"):
        ensure_topics(bootstrap, settings, partitions=6, app_id=app_id)
    # nothing else was created on the way
    from streams.topics import _admin, _existing

    admin = _admin(bootstrap)
    try:
        assert list(_existing(admin, [settings.topics.outbound, settings.topics.alerts])) == []
    finally:
        admin.close()
    _create(bootstrap, settings.topics.outbound, 3)
    with pytest.raises(TopicLayoutError, match=r"co-partitioned.*differ"):
        ensure_topics(bootstrap, settings, partitions=2, app_id=app_id)


@pytest.mark.kafka
def test_output_topic_differences_are_notes_not_errors(bootstrap: str, layout: tuple[Settings, str]) -> None:
    settings, app_id = layout
    _create(bootstrap, settings.topics.alerts, 1)
    report = ensure_topics(bootstrap, settings, partitions=2, app_id=app_id)
    alerts = report.by_name()[settings.topics.alerts]
    assert not alerts.created and alerts.partitions == 1
    assert any("1 partitions" in n for n in alerts.notes)
    assert any("cleanup.policy is 'delete', intended 'compact,delete'" in n for n in alerts.notes)
