"""Incidents computed by the worker (streams/worker/incidents.py), through the real broker.

A capture of the seed story on 300 numbers (one cause) goes to a worker's input topics;
the incident records the worker publishes to the compacted incidents topic have the ids
and exact counts of the offline replay's `--incidents-out` records, in exactly_once mode
and, with a SIGKILL of the worker mid-stream and a restart (the inputs read again from
the committed offsets: their alerts re-delivered to the feed), in at_least_once mode.
The worker's clock for incidents is event time here (`incidents_clock = "event"`), as the
offline replay's; detection times are the worker's wall clock, so they are not compared.
"""

from __future__ import annotations

import io
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import msgspec
import pytest

from detectors.alerts import Alert, encode_alert
from detectors.capture import Envelope
from detectors.incidents import SUPERSEDED, Incident, decode_record, latest
from detectors.settings import Settings
from streams.incidents import read_records
from streams.replay_offline import replay
from streams.topics import incident_feed_topic
from tests.incident_stories import blau_to_o2, blau_to_o2_counts, capture, envelopes
from tests.streams.kafka_harness import KafkaRun, require_broker

pytestmark = pytest.mark.kafka

NUMBERS = 300
STORY = blau_to_o2(NUMBERS)
# event time closes incidents, as offline; a SIGKILLed worker leaves its groups after 6 s, not 60
EVENT_CLOCK = {"NOTIFGUARD_WORKER_INCIDENTS_CLOCK": "event", "NOTIFGUARD_WORKER_SESSION_TIMEOUT_S": "6"}

OFFLINE_ALERTS: list[Alert] = []  # the offline replay's (the `offline` fixture)
Summary = tuple[str, str, int, int, int, str | None, str | None]


def summary(incidents: dict[str, Incident]) -> list[Summary]:
    """What must be the offline replay's: ids, status, exact counts, first and last mail."""
    return sorted(
        (
            i.incident_id,
            i.status,
            i.mails,
            i.affected_numbers,
            i.affected_recipients,
            i.first_event_time,
            i.last_event_time,
        )
        for i in incidents.values()
    )


def current(records: list[Incident]) -> dict[str, Incident]:
    return {k: v for k, v in latest(records)[0].items() if v.status != SUPERSEDED}


@pytest.fixture(scope="module")
def offline(tmp_path_factory: pytest.TempPathFactory) -> list[Summary]:
    path = capture(tmp_path_factory.mktemp("story") / "story.jsonl", STORY)
    out = io.BytesIO()
    _, alerts = replay([path], Settings(), incidents_out=out, jobs=1)
    OFFLINE_ALERTS[:] = alerts
    want = current([decode_record(line) for line in out.getvalue().splitlines()])  # type: ignore[misc]
    (inc,) = want.values()
    assert {k: getattr(inc, k) for k in blau_to_o2_counts(NUMBERS)} == blau_to_o2_counts(NUMBERS)
    return summary(want)


def topic(run: KafkaRun) -> dict[str, Incident]:
    settings = Settings(topics=run.topics)
    try:
        records = read_records(SimpleNamespace(file=None, bootstrap=run.bootstrap, config=None), settings)  # type: ignore[arg-type]
    except ValueError:  # not created yet
        return {}
    return current([r for r in records if isinstance(r, Incident)])


def await_incidents(run: KafkaRun, want: list[Summary], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    got: list[Summary] = []
    while time.monotonic() < deadline:
        got = summary(topic(run))
        if got == want:
            return
        for proc, _, log in run.workers:
            assert proc.poll() is None or proc.returncode < 0, log.read_text()[-3000:]
        time.sleep(0.5)
    raise AssertionError(f"incidents on the topic {got} != offline {want}\n{run.workers[-1][2].read_text()[-3000:]}")


def story_envelopes() -> list[Envelope]:
    return envelopes(STORY, partitions=3)


@pytest.fixture
def run(tmp_path: Path):
    # the story is in event-time order on each partition: a short grace changes no alert, and the
    # worker releases the last records seconds after they came, not 30
    r = KafkaRun(require_broker(), tmp_path, partitions=3, grace_s=1)
    yield r
    r.close()


def test_exactly_once_worker_publishes_the_offline_incident(run: KafkaRun, offline: list[Summary]) -> None:
    run.produce(story_envelopes())
    port = run.start_worker(
        store="memory://", env={**EVENT_CLOCK, "NOTIFGUARD_WORKER_PROCESSING_GUARANTEE": "exactly_once"}
    )
    await_incidents(run, offline)
    # the owner's metrics, from the code `incidents run` serves them with
    (iid, *_) = offline[0]
    metrics = run.metrics(port).splitlines()
    (numbers,) = [m for m in metrics if m.startswith("notifguard_incident_affected_numbers{") and iid in m]
    assert 'brand="o2"' in numbers and numbers.endswith(" 300.0")
    assert 'notifguard_incidents_open{kind="recipient_previous_holder"} 1.0' in metrics


def test_a_sigkill_mid_stream_and_a_restart_keep_the_counts_exact(run: KafkaRun, offline: list[Summary]) -> None:
    envs = story_envelopes()
    half = len(envs) // 2
    run.produce(envs[:half])
    run.start_worker(store="memory://", env=EVENT_CLOCK)
    deadline = time.monotonic() + 60
    while not topic(run) and time.monotonic() < deadline:  # some alerts are in an incident
        time.sleep(0.2)
    assert topic(run), run.workers[-1][2].read_text()[-3000:]
    run.kill()  # SIGKILL: whatever was not committed is read again, its alerts sent to the feed again
    # and for certain: 60 of the story's alerts on the feed once more, as a worker re-delivers them
    # (new alert ids, a later detection); they are members already
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=run.bootstrap, acks="all")
    for a in OFFLINE_ALERTS[:60]:
        again = msgspec.structs.replace(a, alert_id=uuid.uuid4().hex, detected_at="2099-01-01T00:00:00Z")
        producer.send(incident_feed_topic(run.app_id), key=a.dedup_key.encode(), value=encode_alert(again))
    producer.flush()
    producer.close()
    run.produce(envs[half:])
    run.start_worker(store="memory://", env=EVENT_CLOCK, name="w2")
    await_incidents(run, offline)
