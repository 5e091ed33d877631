"""`notifguard replay --offline` as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from detectors.capture import encode_line
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
        cwd=ROOT, capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 0
    assert "[critical] recipient_previous_holder" in proc.stdout
    assert "DEVELOPMENT PSEUDONYMISATION KEY" in proc.stderr
    assert "anna.schmidt" not in proc.stdout + proc.stderr.lower()


def test_the_worst_inputs_give_no_output_record_or_state_value_over_64_kib(tmp_path, monkeypatch, capsys):
    # Issue 10: a 600 KB template (a 1.2 MB alert), a 900 KB value that is no UTF-8 (a 1.5 MB
    # dead letter), 22,000 mails to one number (1.09 MB of state): each over the producer's
    # 1 MB request size, on which the worker stopped, restarted and read the record again.
    import streams.replay_offline as replay_offline
    from detectors.capture import Envelope
    from detectors.engine import Engine
    from detectors.state import encode_links, encode_number
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
        f.write(b'{"topic":"notifications.outbound","partition":0,"offset":9,"key":"' + MSISDN.encode()
                + b'","payload":"' + b"\xff\xfe" * 450_000 + b'"}\n')
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
