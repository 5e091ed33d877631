"""`notifguard incidents run` on a real broker: it gives the offline incident records, applies an operator's
mark from the topic, and keeps exact counts across a SIGKILL mid-stream with re-delivered alerts.

The alerts are the offline replay's, produced to a 3-partition compacted alerts topic keyed by dedup_key (as
the worker writes them); the process reads them in whatever order the partitions interleave.
"""

from __future__ import annotations

import csv
import io
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import msgspec
import pytest

from detectors.alerts import Alert, encode_alert
from detectors.incidents import SUPERSEDED, Incident, Incidents, latest
from detectors.settings import Settings, Topics
from detectors.timefmt import parse_rfc3339
from streams.incidents import _consume_all, read_records
from streams.replay_offline import replay
from tests.factories import Rec
from tests.incident_stories import blau_to_o2, capture, o2_recycled
from tests.streams.kafka_harness import ROOT

pytestmark = pytest.mark.kafka


class Run:
    def __init__(self, bootstrap: str, tmp: Path) -> None:
        tag = uuid.uuid4().hex[:8]
        self.bootstrap, self.tmp = bootstrap, tmp
        self.app_id = f"ngtest-inc-{tag}"
        self.settings = Settings(
            topics=Topics(
                alerts=f"{tag}.notifguard.alerts",
                incidents=f"{tag}.notifguard.incidents",
                outbound=f"{tag}.notifications.outbound",
            )
        )
        self.procs: list[subprocess.Popen[bytes]] = []
        from kafka import KafkaAdminClient, KafkaProducer

        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        try:
            admin.create_topics(
                {
                    self.settings.topics.alerts: {
                        "num_partitions": 3,
                        "replication_factor": 1,
                        "configs": {"cleanup.policy": "compact"},
                    },
                    self.settings.topics.outbound: {"num_partitions": 3, "replication_factor": 1},
                },
                wait_for_metadata=True,
            )
        finally:
            admin.close()
        self.producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)

    def produce(self, alerts: list[Alert]) -> None:
        for a in alerts:
            self.producer.send(self.settings.topics.alerts, key=a.dedup_key.encode(), value=encode_alert(a))
        self.producer.flush()

    def produce_inputs(self, recs: list[Rec]) -> None:
        """The story's outbound records, to this run's outbound topic (resolve reads only that one)."""
        for r in recs:
            if r.topic == "notifications.outbound":
                self.producer.send(
                    self.settings.topics.outbound,
                    key=(r.key or "").encode(),
                    value=r.value.encode() if isinstance(r.value, str) else r.value,
                )
        self.producer.flush()

    def start(self) -> subprocess.Popen[bytes]:
        env = {
            **os.environ,
            "NOTIFGUARD_TOPIC_ALERTS": self.settings.topics.alerts,
            "NOTIFGUARD_TOPIC_INCIDENTS": self.settings.topics.incidents,
        }
        log = open(self.tmp / f"incidents-{len(self.procs)}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streams.cli",
                "incidents",
                "run",
                "--bootstrap",
                self.bootstrap,
                "--app-id",
                self.app_id,
                "--clock",
                "event",
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.procs.append(proc)
        return proc

    def topic(self) -> dict[str, Incident]:
        args = SimpleNamespace(file=None, bootstrap=self.bootstrap, config=None)
        try:
            records = read_records(args, self.settings)  # type: ignore[arg-type]
        except ValueError:  # the topic is not there yet
            return {}
        return {k: v for k, v in latest(records)[0].items() if v.status != SUPERSEDED}

    def await_incidents(self, want: dict[str, Incident], timeout: float = 60) -> dict[str, Incident]:
        deadline = time.monotonic() + timeout
        got: dict[str, Incident] = {}
        while time.monotonic() < deadline:
            got = self.topic()
            if got == want:
                return got
            for p in self.procs:
                assert p.poll() is None or p.returncode == -signal.SIGKILL, self.logs()
            time.sleep(0.5)
        raise AssertionError(f"incidents on the topic {summary(got)} != expected {summary(want)}\n{self.logs()}")

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-3000:] for p in sorted(self.tmp.glob("incidents-*.log")))

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
        self.producer.close()
        from streams.incidents import members_topic
        from streams.topics import delete_topics

        t = self.settings.topics
        delete_topics(self.bootstrap, [t.alerts, t.incidents, t.outbound, members_topic(self.app_id)])


def summary(incs: dict[str, Incident]) -> list[tuple[str, int, int, int, str]]:
    return sorted((k, i.mails, i.affected_numbers, i.affected_recipients, i.status) for k, i in incs.items())


STORY = blau_to_o2(300) + o2_recycled(100)


@pytest.fixture(scope="module")
def offline(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Alert], dict[str, Incident]]:
    """The story's alerts and incident records from the offline replay (--incidents-out)."""
    path = capture(tmp_path_factory.mktemp("story") / "story.jsonl", STORY)
    out = io.BytesIO()
    from detectors.incidents import decode_record

    _, alerts = replay([path], Settings(), incidents_out=out, jobs=1)
    records = [decode_record(line) for line in out.getvalue().splitlines()]
    final = {k: v for k, v in latest(records)[0].items() if v.status != SUPERSEDED}
    assert len(final) == 2
    return alerts, final


@pytest.fixture
def run(bootstrap: str, tmp_path: Path) -> Iterator[Run]:
    r = Run(bootstrap, tmp_path)
    try:
        yield r
    finally:
        r.close()


def test_the_incidents_process_gives_the_offline_records_applies_a_mark_and_resolves(
    run: Run, offline: tuple[list[Alert], dict[str, Incident]], capsys: pytest.CaptureFixture[str]
) -> None:
    alerts, want = offline
    run.start()
    run.produce(alerts)
    run.await_incidents(want)
    # an operator marks the seed's incident reported through the topic; the process records it in the incident
    from streams.cli import main

    seed_id = next(k for k, v in want.items() if v.signature.template == "contract_info")
    env = {
        "NOTIFGUARD_TOPIC_INCIDENTS": run.settings.topics.incidents,
        "NOTIFGUARD_TOPIC_OUTBOUND": run.settings.topics.outbound,
    }
    os.environ.update(env)
    try:
        assert (
            main(
                [
                    "incidents",
                    "mark",
                    seed_id,
                    "reported",
                    "--note",
                    "ref 1",
                    "--by",
                    "dpo",
                    "--bootstrap",
                    run.bootstrap,
                ]
            )
            == 0
        )
        deadline = time.monotonic() + 30
        while (inc := run.topic()[seed_id]).reported is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert inc.reported is not None and inc.reported.by == "dpo" and inc.reported.note == "ref 1"
        assert msgspec.structs.replace(inc, reported=None, actions=[]) == want[seed_id]
        assert main(["incidents", "show", seed_id, "--bootstrap", run.bootstrap]) == 0
        assert "reported  by dpo: ref 1\n" in capsys.readouterr().out
        # re-identification: exactly the seed's mails, in clear, in an owner-only file; the access recorded
        run.produce_inputs(STORY)
        out = run.tmp / "people.csv"
        assert (
            main(
                [
                    "incidents",
                    "resolve",
                    seed_id,
                    "--bootstrap",
                    run.bootstrap,
                    "--out",
                    str(out),
                    "--app-id",
                    run.app_id,
                    "--by",
                    "dpo",
                ]
            )
            == 0
        )
        assert out.stat().st_mode & 0o777 == 0o600
        with open(out, newline="", encoding="utf-8") as f:
            rows = {(r["msisdn"], r["recipient"], r["event_id"]) for r in csv.DictReader(f)}
        mails = [r.event for r in STORY if r.event.get("template") == "contract_info"]
        assert rows == {(m["msisdn"], m["recipient"], m["event_id"]) for m in mails}
        assert len(rows) == want[seed_id].mails
        assert (
            main(
                [
                    "incidents",
                    "resolve",
                    seed_id,
                    "--bootstrap",
                    run.bootstrap,
                    "--out",
                    str(out),
                    "--app-id",
                    run.app_id,
                ]
            )
            == 2
        )  # never over an existing file
        deadline = time.monotonic() + 30
        while not any(a.action == "accessed" for a in run.topic()[seed_id].actions) and time.monotonic() < deadline:
            time.sleep(0.5)
        (access,) = [a for a in run.topic()[seed_id].actions if a.action == "accessed"]
        assert access.by == "dpo" and access.note.startswith("resolve: 375 of 375 mails (300 numbers)")
        # no clear number or address on the incidents topic
        raw = b"".join(r.value for r in _consume_all(run.bootstrap, run.settings.topics.incidents))
        assert b"+49176" not in raw and b"@" not in raw
    finally:
        for k in env:
            os.environ.pop(k)


def test_a_restart_mid_stream_keeps_the_counts_exact(
    run: Run, offline: tuple[list[Alert], dict[str, Incident]]
) -> None:
    alerts, want = offline
    half = len(alerts) // 2
    agg = Incidents()
    for a in alerts[:half]:
        agg.add(a)
    first = run.start()
    run.produce(alerts[:half])
    run.await_incidents({i.incident_id: i for i in agg.incidents()})
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    # while it is down: the rest, and the first 60 again (a worker's re-delivery: new alert ids, later detection)
    redelivered = [
        msgspec.structs.replace(a, alert_id=uuid.uuid4().hex, detected_at="2099-01-01T00:00:00Z") for a in alerts[:60]
    ]
    run.produce(alerts[half:] + redelivered)
    run.start()
    run.await_incidents(want)


def test_members_of_a_settled_incident_expire_as_tombstones_and_a_restart_keeps_its_record(
    run: Run, offline: tuple[list[Alert], dict[str, Incident]]
) -> None:
    from detectors.incidents import REPORTED, IncidentSettings
    from streams.incidents import IncidentsProcess, incident_topic_specs, members_topic, new_action
    from streams.topics import ensure_topics

    alerts, want = offline
    ensure_topics(run.bootstrap, run.settings, app_id=run.app_id, specs=incident_topic_specs(run.settings, run.app_id))
    isettings = IncidentSettings(members_retention_s=86_400.0)

    def process() -> IncidentsProcess:
        p = IncidentsProcess(run.bootstrap, run.settings, isettings, app_id=run.app_id, wall_clock=False)
        p.start()
        return p

    first = process()
    try:
        run.produce(alerts)
        deadline = time.monotonic() + 30
        while summary(run.topic()) != summary(want) and time.monotonic() < deadline:
            first.step(timeout_ms=200)
        seed = next(i for i in first.agg.incidents() if i.signature.template == "contract_info")
        first.agg.act(new_action(seed, REPORTED, "ref 1", "dpo", 0))  # as if taken from the topic
        first.step(timeout_ms=0)
        first.agg.tick(parse_rfc3339("2028-01-01T00:00:00Z"))
        first.step(timeout_ms=0)  # both closed by their quiet period now (expire runs once an hour of wall clock)
        assert first.expire() == 1  # the seed's final record; the other incident is not reported
        first.producer.flush()
    finally:
        first.close()
    tombstones = {r.key for r in _consume_all(run.bootstrap, members_topic(run.app_id)) if r.value is None}
    assert len(tombstones) == want[seed.incident_id].mails == 375
    final = run.topic()[seed.incident_id]
    assert final.members_expired and final.mails == 375 and final.affected_numbers == 300
    again = process()  # a restart: no member of the seed left, its record stays as it is (not superseded)
    try:
        # (the other one is published open again: this restart's clock is event time, not the 2028 ticked above)
        assert [i.incident_id for i in again.last_published] == [k for k in want if k != seed.incident_id]
        assert all(i.status != SUPERSEDED for i in again.last_published)
        assert seed.incident_id not in {i.incident_id for i in again.agg.incidents()}
        assert {k: v.mails for k, v in run.topic().items()} == {k: v.mails for k, v in want.items()}
    finally:
        again.close()


def test_incidents_run_refuses_to_start_while_workers_compute_the_incidents(run: Run) -> None:
    """Never both: a member in the incidents group is a worker computing them (incidents run reads by
    assignment, without membership); every incident would be published twice."""
    from kafka import KafkaConsumer

    member = KafkaConsumer(run.settings.topics.alerts, bootstrap_servers=run.bootstrap, group_id=run.app_id)
    try:
        deadline = time.monotonic() + 30
        while not member.assignment() and time.monotonic() < deadline:
            member.poll(200)
        assert member.assignment()
        proc = run.start()
        assert proc.wait(60) == 2
        log = (run.tmp / "incidents-0.log").read_text()
        assert f"the consumer group {run.app_id} has 1 active member(s)" in log and "Never both" in log
    finally:
        member.close()
    proc = run.start()  # the workers gone: it runs
    time.sleep(3)
    assert proc.poll() is None
