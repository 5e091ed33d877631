"""The pipeline generator of the live tests (tests/pipelines.py): deterministic, Kafka-shaped, rich enough."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detectors.kinds import KINDS
from detectors.settings import Settings
from streams.replay_offline import replay
from streams.staging import read_capture
from tests.pipelines import Shape, build_pipeline, kafka_partition, shapes


def test_the_same_shape_gives_the_same_records_and_another_seed_others():
    a, b = build_pipeline(Shape(seed=3, numbers=60)), build_pipeline(Shape(seed=3, numbers=60))
    assert [(r.topic, r.key, r.value, r.arrival) for r in a.records] == [
        (r.topic, r.key, r.value, r.arrival) for r in b.records
    ]
    c = build_pipeline(Shape(seed=4, numbers=60))
    assert [r.value for r in a.records] != [r.value for r in c.records]


def test_records_are_kafka_records_partitioned_by_murmur2(tmp_path: Path):
    p = build_pipeline(Shape(seed=5, numbers=120))
    envs = p.envelopes()
    offsets: Counter[tuple[str, int]] = Counter()
    for e in envs:
        assert e.key is not None and e.payload is not None
        assert e.partition == kafka_partition(e.key.encode(), 6)
        assert e.offset == offsets[(e.topic, e.partition)]
        offsets[(e.topic, e.partition)] += 1
        try:
            doc = json.loads(e.payload)
        except ValueError:
            continue
        if isinstance(doc, dict) and "event_time" in doc:
            from detectors.timefmt import parse_rfc3339

            assert e.ts == parse_rfc3339(doc["event_time"]) // 1000  # CreateTime = event_time
    path = p.write(tmp_path / "c.jsonl")
    back = list(read_capture(path))
    assert [(r.topic, r.partition, r.offset, r.key, r.value, r.ts) for r in back] == [
        (e.topic, e.partition, e.offset, e.key.encode(), e.payload.encode(), e.ts) for e in envs if e.key and e.payload
    ]


def test_kafka_partition_is_kafkas_murmur2():
    # Kafka's Java client: Utils.toPositive(Utils.murmur2(key)) % partitions; these keys'
    # murmur2 values are in Kafka's own test suite (UtilsTest.testMurmur2)
    from kafka.partitioner.default import murmur2

    cases = {
        b"21": -973932308,
        b"foobar": -790332482,
        b"a-little-bit-long-string": -985981536,
        b"a-little-bit-longer-string": -1486304829,
        b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
        b"abc": 479470107,
    }
    for key, value in cases.items():
        assert murmur2(key) & 0xFFFFFFFF == value & 0xFFFFFFFF
        assert kafka_partition(key, 7) == (value & 0x7FFFFFFF) % 7


def test_a_default_pipeline_raises_every_kind_offline_and_dead_letters_its_bad_records(tmp_path: Path):
    p = build_pipeline(Shape(seed=7))
    summary, _ = replay([p.write(tmp_path / "c.jsonl")], Settings(), jobs=1)
    assert set(summary.alerts_by_kind) == set(KINDS), summary.render()
    assert set(summary.deadletters) == {"invalid_json", "not_an_object", "invalid_record", "key_mismatch"}
    assert sum(summary.deadletters.values()) == p.stats["bad records"]
    assert summary.duplicates == p.stats["duplicates"] > 0
    assert summary.late == 0
    assert 3000 < len(p) < 8000


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shape=shapes(numbers=st.integers(20, 80), days=st.sampled_from([30.0, 60.0])))
def test_generated_captures_replay_with_nothing_late_and_every_duplicate_caught(tmp_path_factory, shape):
    p = build_pipeline(shape)
    summary, _ = replay([p.write(tmp_path_factory.mktemp("p") / "c.jsonl")], Settings(), jobs=1)
    assert summary.late == 0
    assert summary.duplicates == p.stats["duplicates"]
    assert sum(summary.deadletters.values()) == p.stats["bad records"]
    assert summary.records == len(p)
