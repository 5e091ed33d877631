"""The worker on a real Kafka broker gives what the offline replay gives.

Captures produced before the worker starts: a backlog, which the worker reads
a fetch at a time, topic-partitions far apart in event time; its arrival stage
(detectors.arrival: the watermark is the minimum over the input
topic-partitions) applies the records in event-time order across topics and
partitions anyway. Captures produced while the worker reads are the subject of
tests/streams/worker/test_live.py.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest

from detectors.capture import Envelope, encode_line
from detectors.codec import number_key
from detectors.settings import Settings
from detectors.timefmt import parse_rfc3339, rfc3339
from streams.replay_offline import replay
from streams.scenarios import all_scenarios
from tests.streams.kafka_harness import KafkaRun, committed_offsets, keys, require_broker, sample
from tests.streams.live_harness import final

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


def offline(envs: list[Envelope], tmp: Path, settings: Settings | None = None) -> list:
    path = tmp / "capture.jsonl"
    path.write_bytes(b"".join(encode_line(e) for e in envs))
    _, alerts = replay([path], settings or Settings())
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
    run.produce(envs)  # a backlog: the worker must read it in event-time order
    run.start_worker()
    got = run.alerts(lambda a: keys(a) >= expected, timeout=120)
    # wait a little longer: nothing unexpected may follow
    got = run.alerts(lambda a: False, timeout=3) if keys(got) >= expected else got
    assert keys(got) == expected
    assert len({a["dedup_key"] + a["subject"]["msisdn_ref"] for a in got}) == len(got)


BAD = [
    ("contracts.changes", "+4917612345678", "{not json"),
    ("contracts.changes", "+4917612345678", "[1, 2, 3]"),
    (
        "notifications.outbound",
        "+4917612345678",
        '{"schema_version":1,"event_id":"b1","event_time":"2026-01-01T00:00:00Z","msisdn":"+4917612345678"}',
    ),
    (
        "notifications.outbound",
        "+4917612345678",
        '{"schema_version":1,"event_id":"b2","event_time":"2026-01-01T00:00:00Z","msisdn":"+4917612345678",'
        '"message_id":"m","brand":"o2","channel":"fax","recipient":"a@b.de","template":"t","sender":"s"}',
    ),
    (
        "contracts.changes",
        "0176",
        '{"schema_version":1,"event_id":"b3","event_time":"2026-01-01T00:00:00Z",'
        '"msisdn":"0176","type":"contract_ended","contract_id":"K"}',
    ),
    (
        "contracts.changes",
        "+4917612345678",
        '{"schema_version":1,"event_id":"b4","event_time":"yesterday",'
        '"msisdn":"+4917612345678","type":"contract_ended","contract_id":"K"}',
    ),
    (
        "notifications.delivery",
        "+4999999999",
        '{"schema_version":1,"event_id":"b5",'
        '"event_time":"2026-01-01T00:00:00Z","msisdn":"+4917612345678","message_id":"m","recipient":"a@b.de",'
        '"status":"delivered","brand":"o2","sender":"s"}',
    ),
    ("notifications.delivery", "+4917612345678", '{"schema_version":2,"event_id":"b6"}'),
]
BAD_CODES = [
    "invalid_json",
    "not_an_object",
    "invalid_record",
    "invalid_record",
    "bad_msisdn",
    "bad_event_time",
    "key_mismatch",
    "unsupported_schema_version",
]


def test_bad_records_are_dead_lettered_with_reasons_and_the_worker_goes_on(run, tmp_path):
    good = scenario_stream()
    first = min(e.ts for e in good if e.ts is not None)
    # stamped like the records around them (the merge orders a partition by its timestamps)
    envs = [Envelope(t, 0, i, v, k, first - len(BAD) + i) for i, (t, k, v) in enumerate(BAD)]
    run.produce(envs + good)
    port = run.start_worker()
    dead = run.read(run.topics.deadletter, lambda d: len(d) >= len(BAD), timeout=60)
    assert sorted(d["reason_code"] for d in dead) == sorted(BAD_CODES)
    by_value = {d["value"]: d for d in dead}
    for topic, key, value in BAD:
        letter = by_value[value]
        assert letter["source_topic"] == run.rename[topic] and letter["key"] == key
        assert letter["reason"] and letter["offset"] is not None
    expected = keys(offline(good, tmp_path))
    got = run.alerts(lambda a: keys(a) >= expected, timeout=120)
    assert keys(got) == expected  # the good records after the bad ones are judged as usual
    assert run.health(port)["ready"] is True
    metrics = run.metrics(port)
    line = f'notifguard_deadletters_total{{reason="invalid_json",topic="{run.topics.changes}"}} 1.0'
    assert line in metrics


def generated(records: int, seed: int) -> list[Envelope]:
    from bench.generate import generate

    envs = []
    for d in generate(records, numbers=max(200, records // 50), days=120, partitions=6, seed=seed):
        envs.append(msgspec.convert(d, Envelope))
    return envs


def consumed(run: KafkaRun, port: int) -> float:
    try:
        text = run.metrics(port)
    except OSError:
        return 0.0
    return sum(
        float(line.split()[-1]) for line in text.splitlines() if line.startswith("notifguard_records_consumed_total")
    )


def wait_consumed(run: KafkaRun, ports: list[int], n: float, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while sum(consumed(run, p) for p in ports) < n:
        assert time.monotonic() < deadline, f"workers consumed {sum(consumed(run, p) for p in ports)} < {n}"
        time.sleep(0.2)


def wait_acked(run: KafkaRun, records: int, timeout: float) -> None:
    """Until the workers' group has committed offsets past `records` input records."""
    deadline = time.monotonic() + timeout
    while committed_offsets(run) < records:
        assert time.monotonic() < deadline, f"acked {committed_offsets(run)} of {records} records"
        time.sleep(0.5)


def settle_and_compare(run: KafkaRun, expected: set, timeout: float) -> None:
    """The alerts that stand (the alerts topic's firing records less the retracted, contract 1.1:
    live_harness.final) are `expected`: none missing, none more."""
    got = run.alerts(lambda a: keys(final(a).values()) >= expected, timeout=timeout)
    missing = expected - keys(final(got).values())
    assert not missing, f"{len(missing)} alerts missing, e.g. {sorted(missing)[:5]}"
    got = run.alerts(lambda a: False, timeout=5)  # anything unexpected would show now
    extra = keys(final(got).values()) - expected
    assert not extra, f"{len(extra)} unexpected alerts, e.g. {sorted(extra)[:5]}"


OUT_OF_REACH = "notifguard_relinks_out_of_reach_total"


def settle_or_counted(run: KafkaRun, expected: set, records: int, counted: Callable[[], float]) -> None:
    """Every input record acked, then the corrections of the last Relinks: the alerts that stand
    are `expected`, or the workers counted Relinks out of reach (`counted`: their
    notifguard_relinks_out_of_reach_total). Two workers reading a backlog of weeks of event time
    in seconds can be further apart than the correction horizon (docs/topics.md 2.6a): a
    difference is then allowed, one that nothing counts is not."""
    wait_acked(run, records, timeout=300)
    got = run.alerts(lambda a: keys(final(a).values()) == expected, timeout=20)
    standing = keys(final(got).values())
    n = counted()
    print(f"standing == offline: {standing == expected}; relinks out of reach: {n}")
    if standing != expected:
        missing, extra = sorted(expected - standing)[:3], sorted(standing - expected)[:3]
        assert n > 0, f"differs from offline (missing {missing}, extra {extra}), nothing counted"


# A crash or a partition handover re-reads from the last committed offsets;
# the engine drops what it already applied by event id, within the dedup
# retention (event time). Live, that span is seconds of event time; these
# captures squeeze 120 days into seconds of reading, so the re-read span is
# weeks of event time, and the retention is configured to cover it.
REREAD_RETENTION_S = 200 * 86_400


@pytest.fixture()
def reread_run(tmp_path):
    r = KafkaRun(require_broker(), tmp_path, dedup_retention_s=REREAD_RETENTION_S)
    yield r
    r.close()


def test_sigkill_halfway_then_restart_loses_no_alert_and_raises_no_false_one(reread_run, tmp_path):
    run = reread_run
    envs = generated(20_000, seed=11)
    expected = keys(offline(envs, tmp_path, Settings(dedup_retention_s=REREAD_RETENTION_S)))
    run.produce(envs)
    port = run.start_worker(name="w1")
    wait_consumed(run, [port], len(envs) / 2)
    run.kill()  # SIGKILL: no flush, no commit, no goodbye
    run.start_worker(name="w1b")  # a fresh RocksDB directory: state comes from the changelog alone
    settle_and_compare(run, expected, timeout=300)


def test_two_workers_one_leaving_mid_stream_give_the_same_alerts(reread_run, tmp_path):
    """Two workers read a backlog of 120 days; at half, w2 leaves and w1 takes its partitions over:
    the offline alerts, or a difference the workers counted (settle_or_counted: reading the
    backlog at once, they can be further apart than the horizon; seen in a suite run, 2 alerts,
    and in one of four runs of this test beside another, 56 numbers counted)."""
    run = reread_run
    envs = generated(20_000, seed=12)
    expected = keys(offline(envs, tmp_path, Settings(dedup_retention_s=REREAD_RETENTION_S)))
    run.produce(envs)
    p1 = run.start_worker(name="w1")
    p2 = run.start_worker(name="w2")
    wait_consumed(run, [p1, p2], len(envs) / 2)
    left = sample(run.metrics(p2), OUT_OF_REACH)  # (what w2 counted goes with it)
    run.kill(index=-1, sig=signal.SIGTERM)  # w2 leaves the group; w1 takes its partitions over
    settle_or_counted(run, expected, len(envs), lambda: left + sample(run.metrics(p1), OUT_OF_REACH))


def _numbers_in_changelog(run: KafkaRun) -> int:
    """How many number states the numbers table's changelog holds (detectors.codec.number_key; the
    mailers index's rows, in the same table, have other keys): what a worker recovers."""
    from streams.topics import numbers_topic

    size = len(number_key("00" * 12))
    return sum(
        1 for (_, key), value in _changelog(run, numbers_topic(run.app_id)).items() if value and len(key) == size
    )


def _address_index_changelog(run: KafkaRun) -> dict[tuple[int, bytes], bytes | None]:
    """(changelog partition, key) -> the latest value (None: a tombstone) of the address index's changelog."""
    from streams.topics import address_index_topic

    return _changelog(run, address_index_topic(run.app_id))


def _changelog(run: KafkaRun, topic: str) -> dict[tuple[int, bytes], bytes | None]:
    """(partition, key) -> the latest value (None: a tombstone) of a table's changelog topic."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=run.bootstrap, enable_auto_commit=False, consumer_timeout_ms=2000)
    tps = [TopicPartition(topic, p) for p in range(run.partitions)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    ends = consumer.end_offsets(tps)
    latest: dict[tuple[int, bytes], bytes | None] = {}
    while any(consumer.position(tp) < ends[tp] for tp in tps):
        for tp, batch in consumer.poll(timeout_ms=500).items():
            latest.update(((tp.partition, r.key), r.value) for r in batch)
    consumer.close()
    return latest


def _empty_the_address_index(run: KafkaRun) -> dict[tuple[int, bytes], bytes | None]:
    """Tombstone every key of the address index's changelog (what an upgraded deployment has of
    the new table: nothing); returns what it held (_address_index_changelog)."""
    from kafka import KafkaProducer

    from streams.topics import address_index_topic

    found = _address_index_changelog(run)
    producer = KafkaProducer(bootstrap_servers=run.bootstrap, acks="all")
    for partition, key in found:
        producer.send(address_index_topic(run.app_id), key=key, value=None, partition=partition)
    producer.flush()
    producer.close()
    return found


def _applied_by_a_worker_that_stops(run: KafkaRun, envs: list[Envelope]) -> None:
    """Produce `envs`, start a worker (w1), wait until it has acked them all (so applied them and
    flushed their states: the pending gauge is refreshed at ticks only), and stop it (SIGTERM)."""
    run.produce(envs)
    run.start_worker(name="w1")
    wait_acked(run, len(envs), timeout=120)
    run.kill(sig=signal.SIGTERM)


def test_an_upgraded_deployment_fills_the_address_index_from_the_numbers_changelog(reread_run, tmp_path):
    """An upgrade from the index keyed by address alone (docs/topics.md 2.6a): the numbers'
    states are in their changelog, the address index (a new table) holds nothing. A worker
    started then (a fresh RocksDB directory) fills the index of its partitions from the recovered
    states before the rest of the stream comes, and gives the offline replay's alerts."""
    run = reread_run
    envs = generated(6_000, seed=14)
    expected = keys(offline(envs, tmp_path, Settings(dedup_retention_s=REREAD_RETENTION_S)))
    first, rest = envs[: len(envs) // 2], envs[len(envs) // 2 :]
    _applied_by_a_worker_that_stops(run, first)
    assert _empty_the_address_index(run)
    run.start_worker(name="w2")  # a fresh RocksDB directory: the numbers from their changelog alone
    log = run.workers[-1][2]
    deadline = time.monotonic() + 60
    while "the address index is filled" not in log.read_text():
        assert time.monotonic() < deadline, "the worker did not fill the address index"
        time.sleep(0.5)
    text = log.read_text()
    assert "the address index has no entries of input partitions [0, 1, 2, 3, 4, 5]" in text
    filled = int(text.split("the address index is filled: ")[1].split()[0])
    assert filled == _numbers_in_changelog(run) > 0  # every number w1 left
    run.produce(rest)
    settle_and_compare(run, expected, timeout=300)


def _built_partitions(run: KafkaRun) -> set[int]:
    """The input partitions the address index's changelog marks filled (TableLinks.mark_built)."""
    from streams.tablestore import built_key

    latest = _address_index_changelog(run)
    return {p for p in range(run.partitions) if latest.get((p, built_key(p))) is not None}


def _log_has(run: KafkaRun, index: int, text: str, timeout: float, why: str) -> None:
    log = run.workers[index][2]
    deadline = time.monotonic() + timeout
    while text not in log.read_text():
        assert time.monotonic() < deadline, why
        time.sleep(0.2)


def test_a_rebalance_in_the_middle_of_the_address_index_fill_leaves_no_partition_unfilled(reread_run, tmp_path):
    """The upgrade's fill (as above) interrupted: a second worker joins while the first fills the
    index a few numbers a tick. The first gives up the partitions it no longer owns (their walk:
    LinksRebuild.forget); the new owner fills those not marked built once it has recovered the
    numbers' states (Faust's app.rebalancing stays set until then). Every partition ends marked
    filled, holding every address entry the worker before the upgrade had written."""
    run = reread_run
    first = generated(6_000, seed=16)[:3_000]
    _applied_by_a_worker_that_stops(run, first)
    indexed = {key for key, value in _empty_the_address_index(run).items() if value is not None}
    assert len(indexed) > run.partitions  # (links, not only the partitions' built marks)
    slow = {"NOTIFGUARD_WORKER_INDEX_FILL_BATCH": "2"}  # a fill of a minute or two, not of one tick
    run.start_worker(name="w2", env=slow)
    _log_has(run, 1, "filling them from the numbers' states", 90, "w2 did not start filling the address index")
    assert "the address index is filled" not in run.workers[1][2].read_text()
    run.start_worker(name="w3", env=slow)  # the group rebalances: w2 gives up some partitions mid-fill
    _log_has(run, 2, "filling them from the numbers' states", 120, "w3 filled none of the partitions it took")
    deadline = time.monotonic() + 300
    while (built := _built_partitions(run)) != set(range(run.partitions)):
        assert time.monotonic() < deadline, f"only input partitions {sorted(built)} are marked filled"
        time.sleep(1)
    refilled = {key for key, value in _address_index_changelog(run).items() if value is not None}
    assert refilled == indexed  # every address's entry of every partition is back, none more


def test_two_workers_taking_over_a_stopped_worker_s_state_give_the_offline_alerts_or_count_what_they_missed(
    reread_run, tmp_path
):
    """w1 applies the first half and stops; w2 and w3 start on its state (the group rebalances as
    w3 joins) and apply the rest, produced at once. The alerts that stand are the offline replay's,
    or the workers count Relinks out of reach: a backlog of weeks read in seconds can put one
    worker past the correction horizon of another's Relink within the second the Relink takes
    (docs/topics.md 2.6a; seen here: one mail judged recipient_unlinked, not
    recipient_other_customer). Never a difference that nothing tells on call of."""
    run = reread_run
    envs = generated(6_000, seed=16)
    expected = keys(offline(envs, tmp_path, Settings(dedup_retention_s=REREAD_RETENTION_S)))
    first, rest = envs[: len(envs) // 2], envs[len(envs) // 2 :]
    _applied_by_a_worker_that_stops(run, first)
    ports = [run.start_worker(name="w2"), run.start_worker(name="w3")]
    time.sleep(10)  # (both in the group)
    run.produce(rest)
    settle_or_counted(run, expected, len(envs), lambda: sum(sample(run.metrics(p), OUT_OF_REACH) for p in ports))


def test_at_scale_the_worker_gives_exactly_the_offline_dedup_keys(run, tmp_path):
    envs = generated(100_000, seed=13)
    expected = keys(offline(envs, tmp_path))
    assert len(expected) > 1000
    run.produce(envs)
    port = run.start_worker()
    settle_and_compare(run, expected, timeout=600)
    # 120 days of event time: the worker's weekly expiry sweeps ran meanwhile, and changed no alert
    expired = sum(
        float(line.split()[-1])
        for line in run.metrics(port).splitlines()
        if line.startswith("notifguard_states_expired_total")
    )
    assert expired > 0
