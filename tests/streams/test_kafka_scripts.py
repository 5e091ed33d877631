"""The local broker from deploy/kafka/start.sh works for kafka-python.

Needs a running broker: ``deploy/kafka/start.sh`` (default 127.0.0.1:19092, or
NOTIFGUARD_BOOTSTRAP). Without one the tests skip, unless NOTIFGUARD_KAFKA_REQUIRED=1
(as in CI), where a missing broker is a failure.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.kafka

BOOTSTRAP = os.environ.get("NOTIFGUARD_BOOTSTRAP", "127.0.0.1:19092")
PING = Path(__file__).resolve().parents[2] / "deploy" / "kafka" / "ping.py"


def test_ping_script_sees_broker(bootstrap: str) -> None:
    """The stdlib readiness check that start.sh waits on answers 0 for a live broker."""
    done = subprocess.run([sys.executable, str(PING), bootstrap, "5"], check=False, timeout=30)
    assert done.returncode == 0


def test_create_produce_consume_one_record(bootstrap: str) -> None:
    kafka = pytest.importorskip("kafka")
    from kafka.admin import NewTopic

    topic = f"test-kafka-scripts-{uuid.uuid4().hex[:12]}"
    admin = kafka.KafkaAdminClient(bootstrap_servers=bootstrap, client_id="notifguard-test")
    try:
        admin.create_topics([NewTopic(topic, num_partitions=6, replication_factor=1)], wait_for_metadata=True)
        (described,) = admin.describe_topics([topic])
        assert len(described["partitions"]) == 6

        producer = kafka.KafkaProducer(bootstrap_servers=bootstrap, acks="all")
        try:
            sent = producer.send(topic, key=b"+15550001111", value=b'{"n": 1}').get(timeout=20)
        finally:
            producer.close(timeout=5)

        tp = kafka.TopicPartition(topic, sent.partition)
        consumer = kafka.KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
        try:
            consumer.assign([tp])
            consumer.seek(tp, sent.offset)
            records: list[Any] = []
            deadline = time.monotonic() + 20
            while not records and time.monotonic() < deadline:
                records = consumer.poll(timeout_ms=500).get(tp, [])
        finally:
            consumer.close()

        assert [(r.key, r.value, r.offset) for r in records[:1]] == [(b"+15550001111", b'{"n": 1}', sent.offset)]
    finally:
        admin.delete_topics([topic])
        admin.close()
