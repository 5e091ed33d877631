"""The latency benchmark's kcat producer, against the real broker: keys land where Kafka's Java partitioner puts them.

The worker joins the three input topics per partition, so a producer that
partitioned keys any other way would make the latency benchmark measure a
broken join. Skips without a broker or kcat unless NOTIFGUARD_KAFKA_REQUIRED=1.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from bench import worker_bench as wb
from tests.streams.kafka_harness import require_broker

pytestmark = pytest.mark.kafka


def test_kcat_live_producer_partitions_like_java_and_stamps_event_time(tmp_path: Path) -> None:
    bootstrap = require_broker()
    if shutil.which("kcat") is None:
        if os.environ.get("NOTIFGUARD_KAFKA_REQUIRED") == "1":
            pytest.fail("kcat not installed (deploy/kafka/ensure-tools.sh)")
        pytest.skip("kcat not installed")
    from kafka import KafkaConsumer, TopicPartition
    from kafka.partitioner.default import murmur2

    from streams.topics import _admin

    envs = wb.make_capture(600, 50, 3, 6)
    tag = uuid.uuid4().hex[:8]
    rename = {t: f"wbtest-{tag}-{t}" for t in sorted({e["topic"] for e in envs})}
    admin = _admin(bootstrap)
    from kafka.admin import NewTopic

    admin.create_topics([NewTopic(t, 6, 1) for t in rename.values()])
    try:
        recs = wb._prepare_live(envs, rename, 6)
        wb._check_kcat_records(recs)
        sent: dict[str, float] = {}
        before = time.time()
        _t0, n, _secs, _behind = wb._live_produce_kcat(
            bootstrap, recs, 2000.0, 5.0, sent, [0], lambda t: None, list(rename.values()), tmp_path
        )
        assert n == len(recs)
        consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        tps = [TopicPartition(t, p) for t in rename.values() for p in range(6)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        got: list[tuple[TopicPartition, Any]] = []
        deadline = time.monotonic() + 30
        while len(got) < n and time.monotonic() < deadline:
            for tp, msgs in consumer.poll(timeout_ms=500).items():
                got.extend((tp, m) for m in msgs)
        consumer.close()
        assert len(got) == n
        for tp, m in got:
            assert tp.partition == (murmur2(m.key) & 0x7FFFFFFF) % 6
        stamped = [json.loads(m.value) for _tp, m in got if m.value.startswith(b"{")]
        times = [wb._parse_rfc3339(v["event_time"]) for v in stamped if isinstance(v.get("event_time"), str)]
        assert times and all(before - 1 <= t <= time.time() for t in times)  # the wall time of the send, pasted in
        texts = [m.value.decode("utf-8", "replace") for _tp, m in got]
        produced_ids = {mid.group(1) for text in texts if (mid := wb._EVENT_ID.search(text))}
        assert sent and set(sent) <= produced_ids  # each timed event id went out
    finally:
        admin.delete_topics(list(rename.values()))
        admin.close()
