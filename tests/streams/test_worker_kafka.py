"""The worker on a real Kafka broker gives what the offline replay gives."""

from __future__ import annotations

import json
import time
from pathlib import Path

import msgspec
import pytest

from detectors.capture import Envelope, encode_line
from detectors.settings import Settings
from detectors.timefmt import parse_rfc3339, rfc3339
from streams.replay_offline import replay
from streams.scenarios import all_scenarios
from tests.streams.kafka_harness import KafkaRun, keys, require_broker

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
DAY_US = 86_400_000_000


def shifted(env: Envelope, delta_us: int) -> Envelope:
    try:
        value = json.loads(env.payload or "")
        value["event_time"] = rfc3339(parse_rfc3339(value["event_time"]) + delta_us)
        payload = json.dumps(value)
    except (ValueError, KeyError, TypeError):
        payload = env.payload
    ts = env.ts + delta_us // 1000 if env.ts is not None else None
    return msgspec.structs.replace(env, payload=payload, ts=ts)


def scenario_stream() -> list[Envelope]:
    """Every scenario once, each moved to an era after the previous one, in its own arrival order."""
    out: list[Envelope] = []
    eras = [list(s.envelopes()) for s in all_scenarios()]
    span = sum(max(e.ts for e in envs) - min(e.ts for e in envs) for envs in eras) * 1000  # type: ignore[misc]
    # all in the past: brokers refuse timestamps more than an hour ahead
    cursor = parse_rfc3339(rfc3339(time.time_ns() // 1000)) - span - (len(eras) + 30) * DAY_US
    for envs in eras:
        times = [e.ts * 1000 for e in envs if e.ts is not None]
        delta = cursor - min(times)
        out += [shifted(e, delta) for e in envs]
        cursor = max(times) + delta + DAY_US
    return out


def offline(envs: list[Envelope], tmp: Path) -> list:
    path = tmp / "capture.jsonl"
    path.write_bytes(b"".join(encode_line(e) for e in envs))
    _, alerts = replay([path], Settings())
    return alerts


@pytest.fixture()
def run(tmp_path):
    r = KafkaRun(require_broker(), tmp_path)
    yield r
    r.close()


def test_every_scenario_through_kafka_gives_the_offline_alerts(run, tmp_path):
    envs = scenario_stream()
    expected = keys(offline(envs, tmp_path))
    assert len(expected) >= 15
    run.start_worker()
    run.produce(envs)
    got = run.alerts(lambda a: keys(a) >= expected, timeout=120)
    # wait a little longer: nothing unexpected may follow
    got = run.alerts(lambda a: False, timeout=3) if keys(got) >= expected else got
    assert keys(got) == expected
    assert len({a["dedup_key"] + a["subject"]["msisdn_ref"] for a in got}) == len(got)
