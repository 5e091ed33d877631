"""The offline replay decoding in a second process gives exactly what one process gives."""

from __future__ import annotations

import msgspec
import pytest

from bench.generate import main as generate
from detectors.engine import Engine
from detectors.settings import Settings
from detectors.state import decode_number, encode_number
from streams.replay_offline import replay


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    path = tmp_path_factory.mktemp("capture") / "capture.jsonl"
    generate(["--records", "6000", "--numbers", "120", "--days", "60", "--seed", "7",
              "--bad-rate", "0.01", "--out", str(path)])
    with open(path, "ab") as f:  # a blank line, a line that is no envelope, an unknown topic
        f.write(b"\n   \nnot json\n")
        f.write(b'{"topic":"elsewhere","partition":0,"offset":1,"key":"+4917612345678","payload":"{}"}\n')
    return path


def _run(path, jobs):
    engine = Engine(Settings(), new_id=lambda: "x")
    dead = []

    class Sink:
        def write(self, data):
            dead.append(data)

    summary, alerts = replay([path], Settings(), deadletter_out=Sink(), engine=engine, jobs=jobs)
    scrub = [msgspec.structs.replace(a, alert_id="", detected_at="") for a in alerts]
    dead = [msgspec.json.decode(d) for d in dead]
    for d in dead:
        d.pop("detected_at")
    return summary, scrub, dead, engine


def test_two_processes_give_the_same_alerts_dead_letters_and_state(capture):
    one = _run(capture, 1)
    two = _run(capture, 2)
    assert one[0].records == two[0].records and one[0].by_topic == two[0].by_topic
    assert one[0].alerts_by_kind == two[0].alerts_by_kind and sum(one[0].alerts_by_kind.values()) > 0
    assert one[0].deadletters == two[0].deadletters and sum(one[0].deadletters.values()) > 0
    assert (one[0].duplicates, one[0].late) == (two[0].duplicates, two[0].late)
    assert one[1] == two[1]  # same alerts, same order
    assert one[2] == two[2]  # same dead letters, same order
    assert {r: encode_number(s) for r, s in one[3].numbers.items()} == {
        r: encode_number(s) for r, s in two[3].numbers.items()
    }
    assert one[3].index.items() == two[3].index.items()


def test_state_built_from_transferred_records_round_trips(capture):
    _, _, _, engine = _run(capture, 2)
    for state in engine.numbers.values():
        assert decode_number(encode_number(state)) == state


def test_the_capture_has_duplicates_and_both_modes_count_them(capture):
    one, two = _run(capture, 1)[0], _run(capture, 2)[0]
    assert one.duplicates > 0 and one.duplicates == two.duplicates


def test_a_second_replay_into_the_same_engine_dedups_the_same_in_both_modes(capture):
    """The second process's "first occurrence" hint must not apply to an engine that has state."""
    runs = []
    for jobs in (1, 2):
        engine = Engine(Settings(), new_id=lambda: "x")
        replay([capture], Settings(), engine=engine, jobs=jobs)
        again, alerts = replay([capture], Settings(), engine=engine, jobs=jobs)
        runs.append((again.duplicates, again.late, dict(again.alerts_by_kind),
                     [(a.dedup_key, a.kind) for a in alerts]))
        assert engine.collect_metrics is True  # restored after each replay
    assert runs[0] == runs[1]
    assert runs[0][0] > 0
