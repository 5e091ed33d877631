"""The offline replay decoding in a second process gives exactly what one process gives."""

from __future__ import annotations

import msgspec
import pytest

from bench.generate import main as generate
from detectors.codec import decode_number, encode_number
from detectors.engine import Engine
from detectors.privacy import Pseudonymiser
from detectors.settings import Settings
from streams.replay_offline import replay


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    path = tmp_path_factory.mktemp("capture") / "capture.jsonl"
    generate(
        [
            "--records",
            "6000",
            "--numbers",
            "120",
            "--days",
            "60",
            "--seed",
            "7",
            "--bad-rate",
            "0.01",
            "--out",
            str(path),
        ]
    )
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


@pytest.mark.python_core
def test_the_second_process_fills_the_engines_memos_of_hashes_and_masks(capture, monkeypatch):
    # The decoding process hashes and masks what the engine will (Engine.learn): the engine
    # process computes no keyed hash and no masked recipient itself, and judges the same.
    import detectors.engine as engine_module

    masked: list[str] = []
    real_mask = engine_module.masked_recipient
    monkeypatch.setattr(engine_module, "masked_recipient", lambda r, c: masked.append(c) or real_mask(r, c))
    engine = Engine(Settings(), new_id=lambda: "x")
    hashed: list[bytes] = []
    real_hmac = Pseudonymiser._hmac  # (the forked decoding process appends to its own copy of `hashed`)
    monkeypatch.setattr(Pseudonymiser, "_hmac", lambda self, data: hashed.append(data) or real_hmac(self, data))
    _, alerts = replay([capture], Settings(), engine=engine, jobs=2)
    assert hashed == [] and masked == []
    memo = engine.pseudonymiser
    assert len(memo.numbers_memo()) > 100 and len(memo.addresses_memo()) > 100
    assert engine._masks and engine._sms_masks  # (both channels: the capture has sms too)
    one = _run(capture, 1)
    assert [msgspec.structs.replace(a, alert_id="", detected_at="") for a in alerts] == one[1]


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
        runs.append((again.duplicates, again.late, dict(again.alerts_by_kind), [(a.dedup_key, a.kind) for a in alerts]))
        assert engine.collect_metrics is True  # restored after each replay
    assert runs[0] == runs[1]
    assert runs[0][0] > 0


# ---------------------------------------------------------------- arrival in the second process
#
# With two processes the child also does the engine's arrival stage (duplicates,
# watermarks, grace buffers, release order) and tells the parent where to sweep.
# These captures are built to exercise what that has to get exactly right.


def _awkward(path, seed):
    """A generated capture, reordered: some lines move far later (late records), some are
    sent again much later (duplicates past the dedup retention, or not), plus lines that
    are not one plain envelope each, and a last line without a newline."""
    import random

    generate(
        [
            "--records",
            "5000",
            "--numbers",
            "600",
            "--days",
            "20",
            "--seed",
            str(seed),
            "--dup-rate",
            "0.02",
            "--out",
            str(path),
        ]
    )
    rng = random.Random(seed)
    lines = path.read_bytes().splitlines(keepends=True)
    out, delayed = [], []
    for i, line in enumerate(lines):
        roll = rng.random()
        if roll < 0.03:
            delayed.append((i + rng.randint(20, 1500), line))
        else:
            out.append(line)
        if roll > 0.985:  # the same record again, later
            delayed.append((i + rng.randint(100, 4000), line))
        due = [d for d in delayed if d[0] <= i]
        delayed = [d for d in delayed if d[0] > i]
        out += [line for _, line in due]
    out += [line for _, line in delayed]
    out.insert(100, out[100].rstrip(b"\n") + b"\r\n")  # CRLF
    out.insert(200, out[200].rstrip(b"\n") + b" " + out[201])  # two envelopes on one line
    out.insert(300, b" \t \n")
    out.insert(400, out[400][:40] + b"\n")  # cut short
    out.append(out[-1].rstrip(b"\n"))  # a duplicate, on the last line, without a newline
    path.write_bytes(b"".join(out))
    return path


def _run_with(path, jobs, settings):
    engine = Engine(settings, new_id=lambda: "x")
    dead = []

    class Sink:
        def write(self, data):
            dead.append(data)

    summary, alerts = replay([path], settings, deadletter_out=Sink(), engine=engine, jobs=jobs)
    scrub = [msgspec.structs.replace(a, alert_id="", detected_at="") for a in alerts]
    dead = [msgspec.json.decode(d) for d in dead]
    for d in dead:
        d.pop("detected_at")
    return summary, scrub, dead, engine


@pytest.mark.parametrize("seed", [3, 11])
def test_arrival_in_the_second_process_gives_the_same_results_and_state(tmp_path, monkeypatch, seed):
    from streams import replay_offline

    # sweep checks every 512 lines, messages of 128: more of both than the default sizes give here
    monkeypatch.setattr(replay_offline, "_BATCH", 512)
    monkeypatch.setattr(replay_offline, "_SEND", 128)
    path = _awkward(tmp_path / "awkward.jsonl", seed)
    # a short dedup retention and frequent sweeps, so that duplicates are looked for in
    # seen ids that both the engine's pruning and the sweeps have cut
    settings = Settings(dedup_retention_s=6 * 3600, expiry_sweep_interval_s=12 * 3600)
    one = _run_with(path, 1, settings)
    two = _run_with(path, 2, settings)
    assert one[0].records == two[0].records and one[0].by_topic == two[0].by_topic
    assert (one[0].duplicates, one[0].late) == (two[0].duplicates, two[0].late)
    assert one[0].late > 0 and one[0].duplicates > 0
    assert one[0].alerts_by_kind == two[0].alerts_by_kind and one[0].deadletters == two[0].deadletters
    assert one[0].deadletters["bad_envelope"] >= 2  # the two envelopes on a line, the cut one
    assert one[1] == two[1] and one[2] == two[2]
    e1, e2 = one[3], two[3]
    assert e1.stats == e2.stats and e1.stats.expired > 0
    assert {r: encode_number(s) for r, s in e1.numbers.items()} == {r: encode_number(s) for r, s in e2.numbers.items()}
    assert e1.index.items() == e2.index.items()
    assert e1.arrival.snapshot() == e2.arrival.snapshot()  # watermarks, sources, clock, seq, sweeps, counts


def test_remembered_deliveries_need_metrics_off():
    from detectors.arrival import DELIVERY
    from detectors.engine import Remembered

    engine = Engine(Settings(), new_id=lambda: "x")
    items = [DELIVERY, 1_000_000, False, Remembered("+4917612345678", "e1")]
    with pytest.raises(ValueError):
        engine.apply_released(items, 0)
    engine.collect_metrics = False
    engine.apply_released(items, 0)
    ref = engine.pseudonymiser.msisdn_ref("+4917612345678")
    state = engine.numbers.get(ref)
    assert state is not None and [m.event_id for m in state.seen] == ["e1"] and state.max_t == 1_000_000


def test_a_duplicate_of_an_id_dropped_by_the_size_caps_is_judged_the_same_in_both_modes(tmp_path):
    from detectors.capture import Envelope, encode_line
    from tests.factories import change, mail

    long = "x" * 200  # ~80 such ids fill the seen ids' budget (detectors.expiry.SEEN_BYTES)
    records = [
        change("contract_started", 0, id="s", email="a@x.de"),
        mail("b@x.de", 30, id=f"early-{long}"),
        *(mail("a@x.de", 60 + i, id=f"m{i}-{long}") for i in range(300)),
        mail("b@x.de", 30, id=f"early-{long}"),
    ]  # resent: its id is no longer among the seen ids
    path = tmp_path / "flood.jsonl"
    path.write_bytes(b"".join(encode_line(Envelope(r.topic, 0, o, r.value, r.key)) for o, r in enumerate(records)))
    one, two = _run(path, 1), _run(path, 2)
    assert one[1] == two[1] and one[0].duplicates == two[0].duplicates
