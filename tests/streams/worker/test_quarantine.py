"""The crash journal (streams.worker.quarantine): what the worker was working on survives a SIGKILL,
a record charged with `limit` deaths is set aside on arrival, and one finished is never charged."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from detectors.settings import Settings
from detectors.timefmt import parse_rfc3339
from streams.worker.offsets import TP
from streams.worker.quarantine import CrashJournal
from tests.factories import change
from tests.streams.test_metrics import samples
from tests.streams.worker.test_pipeline import pipeline
from tests.streams.worker.test_runtime import ConsumerRecord

INPUTS = ("contracts.changes", "notifications.outbound", "notifications.delivery")


def die_working_on(directory: Path, topic: str, partition: int, offset: int, finish: bool = False) -> int:
    """A process that marks a record in flight and is then SIGKILLed (or finishes it first)."""
    code = (
        "import os, signal, sys; from types import SimpleNamespace as R\n"
        "from streams.worker.quarantine import CrashJournal\n"
        f"j = CrashJournal({str(directory)!r}, {INPUTS!r}, 3)\n"
        f"j.working_on((R(topic={topic!r}, partition={partition}, offset={offset}), 0.0))\n"
        + ("j.idle()\n" if finish else "")
        + "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    return subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[3], check=False).returncode


def test_the_record_in_flight_survives_a_sigkill_and_is_charged_once_per_death(tmp_path):
    for _ in range(2):
        assert die_working_on(tmp_path, "notifications.outbound", 4, 1234) == -9
    journal = CrashJournal(tmp_path, INPUTS, limit=3)
    assert journal.crashes("notifications.outbound", 4, 1234) == 2 and journal.quarantine == set()
    journal.close()
    assert die_working_on(tmp_path, "notifications.outbound", 4, 1234) == -9
    journal = CrashJournal(tmp_path, INPUTS, limit=3)
    assert journal.quarantine == {("notifications.outbound", 4, 1234)}
    assert json.loads((tmp_path / "notifguard-crashes.json").read_text()) == [["notifications.outbound", 4, 1234, 3]]


def test_a_record_finished_before_the_death_is_not_charged(tmp_path):
    assert die_working_on(tmp_path, "contracts.changes", 0, 7, finish=True) == -9
    assert CrashJournal(tmp_path, INPUTS, limit=3).counts == {}


def test_a_clean_start_charges_nothing_and_unreadable_counts_start_afresh(tmp_path):
    CrashJournal(tmp_path, INPUTS, limit=3).close()
    (tmp_path / "notifguard-crashes.json").write_text("{not json")
    journal = CrashJournal(tmp_path, INPUTS, limit=3)
    assert journal.counts == {} and journal.quarantine == set()


def test_the_pipeline_dead_letters_a_quarantined_record_on_arrival_and_never_applies_it(tmp_path):
    for _ in range(3):
        die_working_on(tmp_path, "contracts.changes", 0, 1)
    p, _ = pipeline(partitions=1)
    journal = CrashJournal(tmp_path, INPUTS, limit=3)
    p.use_journal(journal)  # as Runtime does at the first assignment
    records = [change("contract_started", 0, id=f"s{i}", email="me@x.de", msisdn=f"+491760000000{i}") for i in range(3)]
    batch = [
        ConsumerRecord(
            "contracts.changes",
            0,
            i,
            r.key.encode() if r.key else None,
            r.value.encode() if isinstance(r.value, str) else r.value,
            parse_rfc3339(r.event["event_time"]) // 1000,
        )
        for i, r in enumerate(records)
    ]
    p.on_events([(TP("contracts.changes", 0), batch)])
    letters = [json.loads(o.value) for o in p.out if o.topic == Settings().topics.deadletter]
    assert [(d["offset"], d["reason_code"]) for d in letters] == [(1, "quarantined")]
    assert "died 3 times" in letters[0]["reason"]
    assert [m.offset for m in p.done] == [1]  # done at once (acked after its dead letter is delivered)
    assert p.engine.pending_count() == 2  # the two others went to the engine
    assert samples(p.metrics.registry)['notifguard_quarantined_records_total{topic="contracts.changes"}'] == 1
    assert (tmp_path / "notifguard-inflight").read_bytes()[0] == 0  # idle after the batch
