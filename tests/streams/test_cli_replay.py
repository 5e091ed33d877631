"""`notifguard replay --offline` as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from detectors.capture import Envelope, encode_line
from streams.cli import main
from streams.scenarios import load

ROOT = Path(__file__).resolve().parents[2]


def _capture(tmp_path: Path, name: str = "motivating_re_port_leak") -> Path:
    path = tmp_path / f"{name}.jsonl"
    path.write_bytes(b"".join(encode_line(e) for e in load(name).envelopes()))
    return path


def test_replay_writes_alerts_and_prints_a_summary(tmp_path, capsys):
    cap = _capture(tmp_path)
    with open(cap, "ab") as f:
        f.write(b'{"topic":"notifications.outbound","partition":0,"offset":9,"key":"+49","payload":"{}"}\n')
    out, dead = tmp_path / "alerts.jsonl", tmp_path / "dead.jsonl"
    rc = main(["replay", "--offline", str(cap), "--alerts-out", str(out), "--deadletter-out", str(dead)])
    assert rc == 0
    alerts = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(a["kind"] for a in alerts) == ["re_port", "recipient_previous_holder"]
    assert json.loads(dead.read_text())["reason_code"] == "invalid_record"
    text = capsys.readouterr().out
    assert "records               8" in text
    assert "recipient_previous_holder              1" in text
    assert "severity critical                      1" in text
    assert "dead letters          1" in text
    assert "records/s" in text


def test_replaying_twice_gives_the_same_dedup_keys(tmp_path):
    cap = _capture(tmp_path)
    keys = []
    for i in range(2):
        out = tmp_path / f"a{i}.jsonl"
        assert main(["replay", "--offline", str(cap), "--alerts-out", str(out)]) == 0
        keys.append(sorted(json.loads(line)["dedup_key"] for line in out.read_text().splitlines()))
    assert keys[0] == keys[1] and len(keys[0]) == 2


def test_config_file_changes_the_rules(tmp_path):
    cap = _capture(tmp_path)
    conf = tmp_path / "conf.toml"
    conf.write_text("re_port_window_s = 86400.0\npseudonymisation_key = 'k-test'\n")
    out = tmp_path / "a.jsonl"
    assert main(["replay", "--offline", str(cap), "--alerts-out", str(out), "--config", str(conf)]) == 0
    assert [json.loads(line)["kind"] for line in out.read_text().splitlines()] == ["recipient_previous_holder"]


def test_cannot_run_exits_non_zero_but_alerts_do_not(tmp_path):
    assert main(["replay", "--offline", str(tmp_path / "missing.jsonl")]) == 2
    proc = subprocess.run(
        [sys.executable, "-m", "streams.cli", "replay", "--offline", str(_capture(tmp_path)), "--print-alerts"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0
    assert "[critical] recipient_previous_holder" in proc.stdout
    assert "DEVELOPMENT PSEUDONYMISATION KEY" in proc.stderr
    assert "anna.schmidt" not in proc.stdout + proc.stderr.lower()


def _replay_jobs(cap: Path, tmp_path: Path, jobs: int) -> tuple[int, list[dict], list[dict]]:
    out, dead = tmp_path / f"alerts-{jobs}.jsonl", tmp_path / f"dead-{jobs}.jsonl"
    rc = main(
        ["replay", "--offline", "--jobs", str(jobs), str(cap), "--alerts-out", str(out), "--deadletter-out", str(dead)]
    )
    alerts = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    deads = [json.loads(line) for line in dead.read_text().splitlines()] if dead.exists() else []
    return rc, alerts, deads


def test_jobs_picks_one_or_two_processes_with_the_same_results(tmp_path, monkeypatch):
    import streams.replay_offline as ro

    cap = _capture(tmp_path)
    with open(cap, "ab") as f:
        f.write(b'{"topic":"notifications.outbound","partition":0,"offset":9,"key":"+49","payload":"{}"}\n')
    used = []
    parallel = ro._parallel
    monkeypatch.setattr(ro, "_parallel", lambda *a: used.append(2) or parallel(*a))
    results = {jobs: _replay_jobs(cap, tmp_path, jobs) for jobs in (1, 2)}
    assert used == [2]  # --jobs 2 only
    for rc, alerts, deads in results.values():
        assert rc == 0
        assert sorted(a["kind"] for a in alerts) == ["re_port", "recipient_previous_holder"]
        assert [d["reason_code"] for d in deads] == ["invalid_record"]
    assert sorted(a["dedup_key"] for a in results[1][1]) == sorted(a["dedup_key"] for a in results[2][1])


def _append(cap: Path, *lines: bytes) -> None:
    with open(cap, "ab") as f:
        f.writelines(line.rstrip(b"\n") + b"\n" for line in lines)


def _outbound_line(offset: int, **fields: object) -> bytes:
    value = {
        "schema_version": 1,
        "event_id": f"hostile-{offset}",
        "event_time": "2026-06-01T08:00:00.000Z",
        "msisdn": "+4917612345678",
        "message_id": f"m-{offset}",
        "brand": "o2",
        "channel": "email",
        "recipient": "x@example.org",
        "template": "invoice",
        "sender": "crm-mailer",
        **fields,
    }
    key = value["msisdn"]
    assert isinstance(key, str)
    ts = 1_780_300_800_000  # Kafka's CreateTime = event_time, as producers set it (2026-06-01T08:00:00Z)
    try:
        from detectors.timefmt import parse_rfc3339

        ts = parse_rfc3339(str(value["event_time"])) // 1000
    except (ValueError, OverflowError):
        pass  # not a writable instant: the record is refused whatever its timestamp
    return encode_line(Envelope("notifications.outbound", 0, offset, json.dumps(value), key, ts))


@pytest.mark.parametrize("jobs", [1, 2])
def test_deep_nesting_is_dead_lettered_not_a_crash(tmp_path, jobs):
    cap = _capture(tmp_path)
    deep_value = _outbound_line(100).replace(b'\\"invoice\\"', b'\\"invoice\\", \\"x\\": ' + b"[" * 5000 + b"]" * 5000)
    deep_envelope = b'{"topic": "contracts.changes", "partition": 0, "offset": 101, "x": ' + b"[" * 5000 + b"]" * 5000
    _append(cap, deep_value, deep_envelope + b"}")
    rc, alerts, deads = _replay_jobs(cap, tmp_path, jobs)
    assert rc == 0
    assert sorted(a["kind"] for a in alerts) == ["re_port", "recipient_previous_holder"]
    assert sorted(d["reason_code"] for d in deads) == ["bad_envelope", "invalid_json"]
    assert all("more than 256" in d["reason"] for d in deads)


@pytest.mark.parametrize("jobs", [1, 2])
def test_event_times_the_contract_accepts_but_cannot_be_written_are_bad_event_times(tmp_path, jobs):
    cap = _capture(tmp_path)
    _append(
        cap,
        _outbound_line(100, msisdn="+4930123456789", event_time="0001-01-01T00:00:00.000+00:01"),
        _outbound_line(101, msisdn="+4930123456789", event_time="9999-12-31T23:59:59.000-00:01"),
        _outbound_line(102, msisdn="+4930123456789", event_time="0001-01-01T00:01:00.000+00:01"),
    )
    rc, alerts, deads = _replay_jobs(cap, tmp_path, jobs)
    assert rc == 0
    assert [d["reason_code"] for d in deads] == ["bad_event_time", "bad_event_time"]
    edge = [a for a in alerts if a["kind"] == "notification_without_contract"]
    assert [a["event_time"] for a in edge] == ["0001-01-01T00:00:00.000Z"]


@pytest.mark.parametrize("jobs", [1, 2])
def test_envelope_integers_outside_kafkas_ranges_are_bad_envelopes(tmp_path, jobs):
    cap = _capture(tmp_path)
    good = json.loads(_outbound_line(100))
    lines = [{**good, "partition": 2**70}, {**good, "offset": -1}, {**good, "ts": 2**64}, {**good, "partition": 2**31}]
    _append(cap, *(json.dumps(line).encode() for line in lines))
    rc, alerts, deads = _replay_jobs(cap, tmp_path, jobs)
    assert rc == 0
    assert sorted(a["kind"] for a in alerts) == ["re_port", "recipient_previous_holder"]
    assert [d["reason_code"] for d in deads] == ["bad_envelope"] * 4
    assert all(d["partition"] is None for d in deads)


@pytest.mark.parametrize("jobs", [1, 2])
def test_an_sms_to_an_address_is_dead_lettered_and_no_mask_shows_the_address(tmp_path, jobs):
    cap = _capture(tmp_path)
    # after the o2 contract's start: an sms to the number is fine, one "to" an address is no sms;
    # an sms on a number without a contract is alerted, with both numbers masked
    _append(
        cap,
        _outbound_line(100, channel="sms", recipient="anna.schmidt@gmx.de", event_time="2026-12-01T08:00:00.000Z"),
        _outbound_line(101, channel="sms", recipient="+4917612345678", event_time="2026-12-01T08:00:01.000Z"),
        _outbound_line(102, channel="sms", recipient="+12345678", msisdn="+12345678"),
    )
    rc, alerts, deads = _replay_jobs(cap, tmp_path, jobs)
    assert rc == 0
    assert [(d["reason_code"], d["offset"]) for d in deads] == [("invalid_record", 100)]
    assert "E.164" in deads[0]["reason"]
    kinds = sorted(a["kind"] for a in alerts)
    assert kinds == ["notification_without_contract", "re_port", "recipient_previous_holder"]
    (sms,) = [a for a in alerts if a["kind"] == "notification_without_contract"]
    assert sms["subject"]["msisdn_masked"] == "+******78"
    text = json.dumps(alerts)
    assert "anna.s" not in text and "+12345" not in text and "2345678" not in text


def test_the_worst_inputs_give_no_output_record_or_state_value_over_64_kib(tmp_path, monkeypatch, capsys):
    # Issue 10: a 600 KB template (a 1.2 MB alert), a 900 KB value that is no UTF-8 (a 1.5 MB
    # dead letter), 22,000 mails to one number (1.09 MB of state): each over the producer's
    # 1 MB request size, on which the worker stopped, restarted and read the record again.
    import streams.replay_offline as replay_offline
    from detectors.capture import Envelope
    from detectors.codec import encode_links, encode_number
    from detectors.engine import Engine
    from tests.factories import MSISDN, change, mail

    limit = 64 * 1024
    long_id = "n-" + "x" * 300_000
    records = [
        change("contract_started", 0, id="s", email="anna@x.de"),
        mail("stranger@x.de", 60, id=long_id, template="t" * 600_000, sender="mailer anna.schmidt@gmx.de"),
        *(mail("anna@x.de", 120 + 3 * i, id=f"mail-{i:05d}") for i in range(22_000)),
        mail("stranger@x.de", 120 + 3 * 22_000, id="last"),
    ]
    cap = tmp_path / "hostile.jsonl"
    with open(cap, "wb") as f:
        for offset, r in enumerate(records):
            f.write(encode_line(Envelope(r.topic, 0, offset, r.value, r.key)))
        f.write(
            b'{"topic":"notifications.outbound","partition":0,"offset":9,"key":"'
            + MSISDN.encode()
            + b'","payload":"'
            + b"\xff\xfe" * 450_000
            + b'"}\n'
        )
    engines = []

    def replay(*args, **kwargs):
        engines.append(Engine(args[1], new_id=lambda: "a"))
        return real(*args, engine=engines[0], **kwargs)

    real = replay_offline.replay
    monkeypatch.setattr(replay_offline, "replay", replay)
    out, dead = tmp_path / "alerts.jsonl", tmp_path / "dead.jsonl"
    assert main(["replay", "--offline", str(cap), "--alerts-out", str(out), "--deadletter-out", str(dead)]) == 0

    alerts = out.read_bytes().splitlines()
    letters = dead.read_bytes().splitlines()
    assert max(map(len, alerts + letters)) <= limit
    assert sorted(json.loads(a)["trigger_event_id"][:2] for a in alerts) == ["la", "n-"]
    first = next(json.loads(a) for a in alerts if json.loads(a)["trigger_event_id"].startswith("n-"))
    assert len(first["trigger_event_id"]) == 256 and len(first["template"]) == 128
    assert first["sender"] == "mailer anna.schmidt@gmx.de" and "anna.schmidt" not in first["summary"]
    [letter] = map(json.loads, letters)
    assert letter["reason_code"] == "bad_envelope" and letter["value_length"] > 900_000
    engine = engines[0]
    assert max(len(encode_number(state)) for state in engine.numbers.values()) <= limit
    assert max(len(encode_links(links)) for _, links in engine.index.items()) <= limit
    assert engine.stats.capped["seen"] > 0 and engine.stats.capped["sent"] > 0
    assert "records          22,004" in capsys.readouterr().out


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_far_future_event_time_is_dead_lettered_and_moves_no_watermark(tmp_path, jobs):
    """Issue: one contract change of another number dated 9999-01-01 between the seed story's
    records moved the watermark on, the sweep dropped the previous holder's history, and the
    seed's critical recipient_previous_holder became a recipient_unlinked warning."""
    envs = list(load("motivating_re_port_leak").envelopes())
    seed_ts = sorted(e.ts for e in envs if e.ts is not None)
    poison = {
        "schema_version": 1,
        "event_id": "poison",
        "event_time": "9999-01-01T00:00:00.000Z",
        "msisdn": "+4930999999999",
        "type": "contract_started",
        "contract_id": "K-X",
        "customer_id": "C-X",
        "brand": "o2",
    }
    middle = seed_ts[len(seed_ts) // 2]  # its Kafka timestamp is the seed's: only its event_time lies
    envs.insert(len(envs) // 2, Envelope("contracts.changes", 0, 999, json.dumps(poison), "+4930999999999", middle))
    cap = tmp_path / "poisoned.jsonl"
    cap.write_bytes(b"".join(encode_line(e) for e in envs))
    rc, alerts, deads = _replay_jobs(cap, tmp_path, jobs)
    assert rc == 0
    assert [(d["reason_code"], d["offset"]) for d in deads] == [("bad_event_time", 999)]
    assert "max_future_skew" in deads[0]["reason"]
    assert sorted((a["kind"], a["severity"]) for a in alerts) == [
        ("re_port", "info"),
        ("recipient_previous_holder", "critical"),
    ]


def test_the_summary_counts_a_retraction_apart_from_the_alerts_and_the_late_alerts_among_them(tmp_path):
    """A late email_changed retracts n1's unlinked alert; a late contract_ended raises n2's alert late.
    The summary's alerts are those raised (n1's, n2's late one), as notifguard_alerts_total counts them;
    the retraction is counted apart (docs/metrics.md, "Corrections")."""
    from detectors.capture import Envelope
    from detectors.settings import Settings
    from streams.replay_offline import alert_line, replay
    from tests.factories import FILLER, FILLER_START, change, delivery, mail

    DAY = 86_400

    holder = "+4917688888888"
    records = [
        FILLER_START,
        change("contract_started", 0, id="s", email="me@x.de"),
        change("contract_started", 0, id="h", msisdn=holder, contract_id="K-H", customer_id="C-H", email="h@x.de"),
        mail("new@x.de", DAY, id="n1"),
        mail("h@x.de", DAY + 60, id="n2", msisdn=holder),
        change("email_verified", DAY + 3600, id="fc", msisdn=FILLER, contract_id="K-F", email="filler@example.com"),
        mail("filler@example.com", DAY + 3600, id="fm", msisdn=FILLER),
        delivery("m-fm", "delivered", DAY + 3600, id="fd", msisdn=FILLER),
        change("email_changed", DAY - 600, id="late-email", email="new@x.de"),
        change("contract_ended", DAY - 600, id="late-end", msisdn=holder, contract_id="K-H", customer_id="C-H"),
    ]
    path = tmp_path / "late.jsonl"
    path.write_bytes(b"".join(encode_line(Envelope(r.topic, 0, o, r.value, r.key)) for o, r in enumerate(records)))
    summary, alerts = replay([path], Settings(), jobs=1)
    assert sorted((a.kind, a.trigger_event_id, a.status, a.late) for a in alerts) == [
        ("notification_without_contract", "n2", "firing", True),
        ("recipient_unlinked", "n1", "firing", False),
        ("recipient_unlinked", "n1", "retracted", True),
    ]
    assert summary.alerts_by_kind == {"recipient_unlinked": 1, "notification_without_contract": 1}
    assert summary.raised_late == {"notification_without_contract": 1}
    assert summary.retracted == {"recipient_unlinked": 1}
    text = summary.render()
    assert "alerts                2" in text and "retractions           1" in text
    assert "of them raised late                    1" in text
    assert [alert_line(a).split()[0] for a in alerts if a.status == "retracted"] == ["[RETRACTED]"]
