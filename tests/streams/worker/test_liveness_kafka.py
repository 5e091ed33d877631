"""Liveness on a real broker: a stalled worker is reported and stops within its bound; a failing
timer or a broker that never acknowledges crashes it; a restart loses no alert either way.

Faults are injected with tests/streams/faulty_worker.py (the worker, with a fetch, a commit,
a tick or the broker's acknowledgements replaced). Each test compares the alerts after the
restart with the offline replay, as tests/streams/worker/test_kafka.py does.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from detectors.settings import Settings
from streams.liveness import EXIT_STOP_TIMEOUT
from tests.streams.kafka_harness import KafkaRun, keys, require_broker
from tests.streams.worker.test_kafka import (
    REREAD_RETENTION_S,
    generated,
    offline,
    settle_and_compare,
    wait_consumed,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

# A restart re-reads from the committed offsets: the dedup retention covers the captures' 120 days.
RULES: dict[str, Any] = {"dedup_retention_s": REREAD_RETENTION_S}
SETTINGS = Settings(dedup_retention_s=REREAD_RETENTION_S)
FAULTY = "tests.streams.faulty_worker"


@pytest.fixture()
def run(tmp_path: Path) -> Any:
    r = KafkaRun(require_broker(), tmp_path, **RULES)
    yield r
    r.close()


def backlog(run: KafkaRun, tmp: Path, records: int, seed: int) -> set[tuple[str, str, str]]:
    envs = generated(records, seed=seed)
    expected = keys(offline(envs, tmp, SETTINGS))
    assert expected
    run.produce(envs)
    return expected


def wait_exit(proc: subprocess.Popen[bytes], log: Path, timeout: float) -> float:
    """Seconds until the process exits (fails after `timeout`, killing it)."""
    started = time.monotonic()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"the worker did not exit within {timeout} s:\n{log.read_text(errors='replace')[-4000:]}")
    return time.monotonic() - started


def test_sigterm_mid_stream_stops_within_the_bound_and_a_restart_loses_no_alert(run, tmp_path):
    expected = backlog(run, tmp_path, 20_000, seed=31)
    port = run.start_worker(name="w1")
    wait_consumed(run, [port], 10_000)
    proc, _, log = run.workers[-1]
    proc.send_signal(signal.SIGTERM)
    took = wait_exit(proc, log, timeout=60)
    text = log.read_text(errors="replace")
    assert took <= 30 + 5, f"{took:.1f} s"
    assert proc.returncode == 0, f"exit {proc.returncode} after {took:.1f} s:\n{text[-4000:]}"
    port = run.start_worker(name="w1")
    settle_and_compare(run, expected, timeout=300)
    health = run.health(port)
    assert health["ready"] is True and health["stalled"] is False, health


def test_a_stalled_worker_is_reported_and_a_stop_that_hangs_ends_within_the_bound(run, tmp_path):
    """The consumer stops fetching after 3,000 records with 17,000 waiting on the broker: /health and
    /live answer 503, the gauge is 1 and the log says where the worker waits. SIGTERM: Faust's stop
    waits for a commit that never returns; the watchdog ends the process within shutdown_timeout_s."""
    expected = backlog(run, tmp_path, 20_000, seed=32)
    env = {
        "NOTIFGUARD_TEST_FAULTS": "consumer-hangs,stop-hangs",
        "NOTIFGUARD_TEST_FAULT_AFTER": "3000",
        "NOTIFGUARD_WORKER_STALL_AFTER_S": "5",
        "NOTIFGUARD_WORKER_SHUTDOWN_TIMEOUT_S": "8",
    }
    port = run.start_worker(name="w1", module=FAULTY, env=env)
    proc, _, log = run.workers[-1]
    bound = 2 + 30 + 1 + 0.25 + 10  # idle_flush (KafkaRun's) + grace + tick + flush + 10 s > 5 s
    deadline = time.monotonic() + 90 + bound
    health: dict[str, Any] = {}
    while time.monotonic() < deadline:
        health = run.health(port)
        if health.get("stalled"):
            break
        assert proc.poll() is None, log.read_text(errors="replace")[-4000:]
        time.sleep(1)
    assert health.get("stalled") is True, health
    liveness = health["liveness"]
    assert "records unread on the broker" in liveness["waiting"], liveness
    assert liveness["stall_after_s"] == bound and liveness["seconds_since_progress"] >= bound
    assert liveness["reason"].startswith("no progress for ")
    assert 3000 <= health["consumed"] < 20_000
    metrics = run.metrics(port)
    assert "notifguard_worker_stalled 1.0" in metrics
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.HTTPError) as live:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/live", timeout=5)
    assert live.value.code == 503
    text = log.read_text(errors="replace")
    assert "STALLED: no progress for" in text and "hanging_fetch" in text, text[-4000:]

    proc.send_signal(signal.SIGTERM)
    took = wait_exit(proc, log, timeout=60)
    text = log.read_text(errors="replace")
    assert proc.returncode == EXIT_STOP_TIMEOUT, f"exit {proc.returncode} after {took:.1f} s:\n{text[-4000:]}"
    assert 8 <= took <= 8 + 5, f"{took:.1f} s"
    assert "the worker did not stop within 8 s of SIGTERM" in text
    assert "hanging_commit" in text  # what it was waiting for

    run.start_worker(name="w1")  # no fault: what was not acked is read again
    settle_and_compare(run, expected, timeout=300)


def test_a_failing_tick_crashes_the_worker_and_a_restart_loses_nothing(run, tmp_path):
    expected = backlog(run, tmp_path, 20_000, seed=33)
    env = {"NOTIFGUARD_TEST_FAULTS": "tick-raises", "NOTIFGUARD_TEST_FAULT_AFTER": "5000"}
    run.start_worker(name="w1", module=FAULTY, env=env)
    proc, _, log = run.workers[-1]
    wait_exit(proc, log, timeout=120)  # it stops by itself
    text = log.read_text(errors="replace")
    assert proc.returncode not in (0, None), text[-4000:]
    assert "the timer (Runtime.tick) ended with RuntimeError('injected: tick-raises')" in text, text[-4000:]
    run.start_worker(name="w1")
    settle_and_compare(run, expected, timeout=300)


def test_a_broker_that_stops_taking_the_alerts_crashes_the_worker_within_its_bounds_and_nothing_is_lost(run, tmp_path):
    """The stall of issue 11: the broker answers the alerts' produce requests with a retriable error
    (here UnknownTopicOrPartition: the alerts topic is deleted), which aiokafka retries for up to
    Faust's producer_request_timeout, 1,200 s. The flush waiting for them held the worker's lock:
    it read nothing more, its number states were never flushed again, and Faust's stop waited for
    the same producer flush. Now the flush gives up after delivery_timeout_s and crashes the worker,
    whose stop is bounded by shutdown_timeout_s. Once the topic is back, a restart reads the records
    whose alerts were lost again and gives the offline alerts.

    The topic goes before the input comes, so that no alert was delivered to it (deleting it would
    delete those too)."""
    from streams.topics import _admin, ensure_topics

    envs = generated(20_000, seed=34)
    expected = keys(offline(envs, tmp_path, SETTINGS))
    env = {"NOTIFGUARD_WORKER_DELIVERY_TIMEOUT_S": "5", "NOTIFGUARD_WORKER_SHUTDOWN_TIMEOUT_S": "5"}
    run.start_worker(name="w1", env=env)
    proc, _, log = run.workers[-1]

    def alerts_topic_exists() -> bool:
        admin = _admin(run.bootstrap)
        try:
            return run.topics.alerts in admin.list_topics()
        finally:
            admin.close()

    admin = _admin(run.bootstrap)
    try:
        admin.delete_topics([run.topics.alerts])
    finally:
        admin.close()
    deadline = time.monotonic() + 60
    while alerts_topic_exists():
        assert time.monotonic() < deadline, "the alerts topic was not deleted"
        time.sleep(0.5)
    run.produce(envs)
    took = wait_exit(proc, log, timeout=120)
    text = log.read_text(errors="replace")
    assert took <= 5 + 5 + 60, f"{took:.1f} s"
    assert "a flush waited 5 s (delivery_timeout_s) while" in text, text[-4000:]
    assert proc.returncode == EXIT_STOP_TIMEOUT or proc.returncode == 1, text[-4000:]
    if proc.returncode == EXIT_STOP_TIMEOUT:  # Faust's stop waited for the producer's flush
        assert "the worker did not stop within 5 s of a crash (DeliveryTimeout(" in text

    deadline = time.monotonic() + 60
    while True:  # create the topic again
        try:
            ensure_topics(run.bootstrap, Settings(topics=run.topics), partitions=run.partitions, app_id=run.app_id)
            if alerts_topic_exists():
                break
        except Exception:
            pass
        assert time.monotonic() < deadline, "the alerts topic did not come back"
        time.sleep(1)
    run.start_worker(name="w1")
    settle_and_compare(run, expected, timeout=300)


def test_a_record_the_worker_dies_on_is_quarantined_after_three_crashes_and_the_rest_goes_on(run, tmp_path):
    """A poison record kills the worker process whenever it is applied (SIGKILL: no Python code runs
    after it). Each restart reads it again; after the third death it is dead-lettered as
    `quarantined` when it arrives, and the worker gives the offline alerts of the capture without it."""
    import json

    from tests.streams.kafka_harness import keys as alert_keys

    envs = generated(4_000, seed=34)
    mails = [e for e in envs if e.topic == "notifications.outbound"]
    poison = mails[len(mails) // 2]
    poison_id = json.loads(poison.payload or "{}")["event_id"]
    expected = alert_keys(offline([e for e in envs if e is not poison], tmp_path, SETTINGS))
    run.produce(envs)
    # the group gives a killed worker's partitions back after 6 s, not Faust's 60
    env = {
        "NOTIFGUARD_TEST_FAULTS": "dies-on-event",
        "NOTIFGUARD_TEST_POISON_EVENT": poison_id,
        # (the fault patches Engine._apply: the core's Python modules, detectors.native; the
        # quarantine under test is the shell's)
        "NOTIFGUARD_NATIVE": "0",
        "NOTIFGUARD_WORKER_SESSION_TIMEOUT_S": "6",
    }
    for _ in range(3):
        run.start_worker(name="w1", module=FAULTY, env=env, wait=False)
        proc, _, log = run.workers[-1]
        wait_exit(proc, log, timeout=120)
        assert proc.returncode == -signal.SIGKILL, log.read_text(errors="replace")[-4000:]
    assert "crash 2 of 3" in log.read_text(errors="replace")  # the journal charged the same record
    run.start_worker(name="w1", module=FAULTY, env=env)  # the fault is still armed: the record never reaches it
    settle_and_compare(run, expected, timeout=300)
    proc, port, log = run.workers[-1]
    assert proc.poll() is None, log.read_text(errors="replace")[-4000:]
    letters = run.read(
        run.topics.deadletter, lambda ds: any(d.get("reason_code") == "quarantined" for d in ds), timeout=60
    )
    quarantined = [d for d in letters if d.get("reason_code") == "quarantined"]
    assert [d["source_topic"] for d in quarantined] == [run.topics.outbound]
    assert poison_id in (quarantined[0]["value"] or "")  # the record as received
    assert "died 3 times" in quarantined[0]["reason"]
    assert f'notifguard_quarantined_records_total{{topic="{run.topics.outbound}"}} 1.0' in run.metrics(port)
