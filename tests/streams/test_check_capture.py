"""`notifguard check CAPTURE`: captures into a running worker, exactly the offline engine's alerts back.

The Kafka tests start a real `notifguard worker` (tests/streams/kafka_harness.py:
fresh topics and app id) and run the check as a subprocess with the worker's
environment (its topic names and rules), on a capture of a few scenarios made
by `notifguard scenario-capture`. They skip without a broker unless
NOTIFGUARD_KAFKA_REQUIRED=1.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from detectors.alerts import dedup_key
from detectors.capture import decode_line, encode_line
from detectors.settings import Settings, Topics
from detectors.timefmt import parse_rfc3339
from streams.cli import main
from streams.replay_offline import replay
from streams.scenarios import load
from streams.staging import (
    CheckedAlert,
    Isolation,
    Produced,
    capture_alert,
    check_target,
    compare_capture_alerts,
    expected_alerts,
    parse_capture_line,
    rebase_envelopes,
    standing_alerts,
)
from tests.streams.kafka_harness import ROOT, KafkaRun, free_port, require_broker

# Each in event-time order, on numbers of its own. Their verdicts do not depend on the order in
# which the worker reads the three topics: port_flapping has changes only, bounce_burst counts
# deliveries, notification_without_contract's notifications find no contract either way.
ORDER_FREE = ["port_flapping", "bounce_burst", "notification_without_contract"]
# Recipient kinds need a number's contract changes applied before its notifications are judged,
# current_address_bouncing the notification before its bounce: the worker (at this commit) can get
# that wrong when a capture spanning months is produced while it reads (see
# test_check_capture_of_recipient_scenarios_against_a_running_worker).
CROSS_TOPIC = ["motivating_re_port_leak", "recipient_other_customer", "current_address_bouncing", *ORDER_FREE]
# Shorter than the default 30 s: a capture's last records wait grace seconds of wall clock in the
# worker (its idle partitions' watermarks move on with the clock). The check gets the same rules
# through the worker's environment.
GRACE_S = 5


def scenario_capture(tmp: Path, names: list[str], out: str = "scenarios.jsonl", unique: bool = True) -> Path:
    """`notifguard scenario-capture` of each, merged into one capture in timestamp order (as
    `notifguard capture` writes one), each scenario's own order kept for equal times.

    `unique`: scenarios reuse event ids (n1, c1, ...), the contract wants them unique, and a
    dedup_key is kind + trigger event id; so each scenario's ids, numbers and addresses are
    made its own with the check's Isolation (tags s0, s1, ...), as a real capture's are.
    """
    lines: list[bytes] = []
    for i, name in enumerate(names):
        path = tmp / f"{name}.jsonl"
        subprocess.run(
            [sys.executable, "-m", "streams.cli", "scenario-capture", name, "--out", str(path)],
            cwd=ROOT,
            check=True,
            timeout=60,
        )
        if unique:
            iso = Isolation(f"s{i}")
            lines += [encode_line(iso.envelope(decode_line(line))) for line in path.read_bytes().splitlines()]
        else:
            lines += path.read_bytes().splitlines(keepends=True)
    path = tmp / out
    path.write_bytes(b"".join(sorted(lines, key=lambda line: int(json.loads(bytes(line))["ts"]))))
    return path


def offline_keys(path: Path, settings: Settings | None = None) -> dict[str, str]:
    """dedup_key -> kind of the offline replay of the file as it is."""
    _, alerts = replay([path], settings or Settings())
    return {a.dedup_key: a.kind for a in alerts}


def check_args(run: KafkaRun, *captures: Path, extra: tuple[str, ...] = ()) -> list[str]:
    renames = [f"--rename={old}={new}" for old, new in run.rename.items()]
    return [
        sys.executable,
        "-m",
        "streams.cli",
        "--log-level",
        "WARNING",
        "check",
        *map(str, captures),
        "--bootstrap",
        run.bootstrap,
        *renames,
        *extra,
    ]


def worker_late(run: KafkaRun) -> str:
    """The worker's late-record counters: a time-ordered capture has no late record offline, so
    any here means the worker judged records of one topic ahead of another's older ones (the
    known live-interleaving bug the worker rewrite fixes), not a wrong check."""
    text = KafkaRun.metrics(run.workers[-1][1])
    return "worker: " + "; ".join(line for line in text.splitlines() if line.startswith("notifguard_late_records"))


def clear_texts(path: Path) -> set[str]:
    """Every MSISDN and e-mail address in a capture, as written."""
    text = path.read_text()
    return set(re.findall(r"\+49[0-9]{8,13}", text)) | set(re.findall(r"[\w.+-]+@[\w.-]+\.[a-z]+", text))


# --------------------------------------------------------------------- pure parts


def test_check_target_tells_captures_from_scenarios(tmp_path: Path) -> None:
    cap = tmp_path / "cap.jsonl"
    cap.write_text("")
    other = tmp_path / "dump.txt"
    other.write_text("")
    assert check_target(str(cap)) == "capture"
    assert check_target(str(other)) == "capture"  # any existing file but a .toml
    assert check_target("motivating_re_port_leak") == "scenario"
    assert check_target(str(ROOT / "scenarios" / "bounce_burst.toml")) == "scenario"
    assert check_target(str(tmp_path / "absent.toml")) == "scenario"  # load() says it does not exist
    with pytest.raises(FileNotFoundError, match="no capture file"):
        check_target(str(tmp_path / "absent.jsonl"))


def test_cli_refuses_mixed_targets_and_options_of_the_other_kind(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cap = tmp_path / "cap.jsonl"
    cap.write_text("")
    argv = ["check", "--bootstrap", "127.0.0.1:1"]
    assert main([*argv, "bounce_burst", str(cap)]) == 2
    assert "one SCENARIO, or one or more CAPTURE" in capsys.readouterr().err
    assert main([*argv, "bounce_burst", "--rebase-time", "now"]) == 2
    assert "--rebase-time: for a CAPTURE only" in capsys.readouterr().err
    assert main([*argv, str(cap), "--no-isolate"]) == 2
    assert "--no-isolate: for a SCENARIO only" in capsys.readouterr().err
    assert main([*argv, str(tmp_path / "absent.jsonl")]) == 2
    assert "no capture file" in capsys.readouterr().err


def test_a_capture_topic_the_worker_does_not_read_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cap = scenario_capture(tmp_path, ["bounce_burst"])
    # no broker is asked: the topics are wrong before anything is produced
    assert main(["check", str(cap), "--bootstrap", "127.0.0.1:1", "--rename", "contracts.changes=elsewhere"]) == 2
    err = capsys.readouterr().err
    assert "elsewhere, not an input topic" in err and "--rename OLD=NEW" in err


def _alert_doc(kind: str, trigger: str, **extra: Any) -> bytes:
    doc = {
        "kind": kind,
        "dedup_key": dedup_key(kind, trigger),
        "trigger_event_id": trigger,
        "event_ids": [trigger],
        "event_time": "2026-01-01T00:00:00.000Z",
        "subject": {"msisdn_masked": "+49176******78", "msisdn_ref": "x"},
        **extra,
    }
    return json.dumps(doc).encode()


def test_capture_alert_takes_alerts_triggered_by_the_capture_only() -> None:
    ids = {"n1", "c1"}
    a = capture_alert(_alert_doc("recipient_unlinked", "n1"), ids)
    assert a == CheckedAlert(
        dedup_key("recipient_unlinked", "n1"), "recipient_unlinked", "n1", "2026-01-01T00:00:00.000Z", "+49176******78"
    )
    # other traffic, even when it quotes one of the capture's records as evidence
    assert capture_alert(_alert_doc("re_port", "x9", event_ids=["c1", "x9"]), ids) is None
    assert capture_alert(b"garbage", ids) is None
    assert capture_alert(None, ids) is None
    assert capture_alert(json.dumps({"kind": "re_port", "trigger_event_id": "c1"}).encode(), ids) is None  # no key
    # a subject in clear (not from notifguard) is masked before it is shown
    clear = capture_alert(_alert_doc("re_port", "c1", subject={"msisdn_masked": "+4917612345678"}), ids)
    assert clear is not None and clear.subject == "+49176******78"
    retraction = capture_alert(_alert_doc("re_port", "c1", status="retracted"), ids)
    assert retraction is not None and retraction.retracted


def test_compare_by_dedup_key_names_missing_and_unexpected() -> None:
    def alert(kind: str, trigger: str, retracted: bool = False) -> CheckedAlert:
        return CheckedAlert(
            dedup_key(kind, trigger), kind, trigger, "2026-01-01T00:00:00.000Z", "+49176******78", retracted
        )

    want = [alert("re_port", "c2"), alert("recipient_previous_holder", "n1")]
    ok = compare_capture_alerts(
        want, [alert("recipient_previous_holder", "n1"), alert("re_port", "c2"), alert("re_port", "c2")]
    )  # a repeat (at least once) is no error
    assert ok.ok and ok.expected == 2
    bad = compare_capture_alerts(want, [alert("recipient_previous_holder", "n1"), alert("bounce_burst", "d3")])
    assert [a.trigger for a in bad.missing] == ["c2"] and [a.trigger for a in bad.unexpected] == ["d3"]
    text = bad.render()
    assert "missing    re_port" in text and dedup_key("re_port", "c2") in text and "+49176******78" in text
    assert "unexpected bounce_burst" in text
    # retracted (contract 1.1): what stands is what counts
    assert not standing_alerts([alert("re_port", "c2"), alert("re_port", "c2", retracted=True)])
    assert compare_capture_alerts([], [alert("re_port", "c2"), alert("re_port", "c2", retracted=True)]).ok


def test_the_expectation_is_the_offline_replay_of_what_was_produced(tmp_path: Path) -> None:
    """Rebased and renamed records give the alerts of those records: the same dedup keys as
    the file's (they depend on kind and trigger only), at the produced times, by the topic
    names of the settings."""
    cap = scenario_capture(tmp_path, ["motivating_re_port_leak", "recipient_other_customer"])
    recs = [parse_capture_line(line) for line in cap.read_bytes().splitlines()]
    target = parse_rfc3339("2020-03-01T00:00:00Z")
    envs = rebase_envelopes([decode_line(line) for line in cap.read_bytes().splitlines()], target)
    topics = Topics(outbound="o", changes="c", delivery="d")
    rename = {"notifications.outbound": "o", "contracts.changes": "c", "notifications.delivery": "d"}
    produced = [
        Produced(i, rename[e.topic], r.partition, i, r.key, (e.payload or "").encode(), e.ts)
        for i, (e, r) in enumerate(zip(envs, recs, strict=True))
    ]
    got = expected_alerts(produced, Settings(topics=topics))
    assert {a.dedup_key: a.kind for a in got} == offline_keys(cap)
    assert max(parse_rfc3339(a.event_time) for a in got) <= target
    assert min(parse_rfc3339(a.event_time) for a in got) >= parse_rfc3339("2018-01-01T00:00:00Z")
    # the file's topic names are no input topics of these settings: nothing expected
    assert (
        expected_alerts([dataclasses.replace(p, topic=p.topic + "x") for p in produced], Settings(topics=topics)) == []
    )


def test_the_expectation_does_not_depend_on_the_partitions_the_records_landed_on(tmp_path: Path) -> None:
    """recipient_other_customer needs the other number's contract start (its address link)
    applied before the notification is judged. With one watermark per partition (contract 1.0)
    that held only when both numbers shared a partition: alone on its partition, the other
    number's start was released only at the end, and the notification was judged
    recipient_unlinked. The watermark is now the minimum over every input topic-partition
    (detectors.arrival), so the verdict is the same wherever Kafka put the numbers."""
    cap = scenario_capture(tmp_path, ["recipient_other_customer", "bounce_burst"], unique=False)
    recs = [parse_capture_line(line) for line in cap.read_bytes().splitlines()]
    other_number = b"+4917620000001"  # the number whose holder's address the notification went to

    def produced(split: bool) -> list[Produced]:
        return [
            Produced(i, r.topic, int(split and r.key == other_number), i, r.key, r.value, r.ts)
            for i, r in enumerate(recs)
        ]

    together = {a.kind for a in expected_alerts(produced(False), Settings())}
    apart = {a.kind for a in expected_alerts(produced(True), Settings())}
    assert together == apart == {"recipient_other_customer", "bounce_burst"}


# --------------------------------------------------------------------- real broker, real worker


@pytest.fixture()
def run(tmp_path: Path) -> Iterator[KafkaRun]:
    r = KafkaRun(require_broker(), tmp_path, grace_s=GRACE_S)
    yield r
    r.close()


def check_against_worker(run: KafkaRun, tmp_path: Path, names: list[str]) -> None:
    """The worker running first, then `check CAPTURE --rebase-time now` on a capture of these scenarios."""
    cap = scenario_capture(tmp_path, names)
    run.start_worker()
    done = subprocess.run(
        check_args(run, cap, extra=("--rebase-time", "now", "--timeout", "40", "--settle", "3")),
        cwd=ROOT,
        env=run.env(free_port()),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr + worker_late(run)
    # What the check waited for (it logs each alert it took) is what the worker wrote, read here
    # independently. (Not always the alerts of the file replayed offline as it is: the records land
    # on 6 partitions by key; see test_the_expectation_follows_the_partitions_the_records_landed_on.)
    took = {key: kind for kind, key in re.findall(r"^  alert +(\w+) +(\S+) ", done.stderr, re.M)}
    assert f"OK, {len(took)} expected alert(s), nothing else" in done.stdout
    assert len(took) >= sum(len(load(n).expect) for n in names)
    alerts = run.alerts(lambda a: {x["dedup_key"] for x in a} >= took.keys(), timeout=10)
    assert {a["dedup_key"]: a["kind"] for a in alerts} == took
    # at rebased times: the capture's last record is now (as written, the scenarios end 6 months ago)
    last = max(parse_rfc3339(a["event_time"]) for a in alerts)
    assert time.time_ns() // 1000 - 30 * 86_400_000_000 < last <= time.time_ns() // 1000
    assert not any(s in done.stdout + done.stderr for s in clear_texts(cap))


@pytest.mark.kafka
@pytest.mark.slow
def test_check_capture_passes_against_a_running_worker(run: KafkaRun, tmp_path: Path) -> None:
    check_against_worker(run, tmp_path, ORDER_FREE)


@pytest.mark.kafka
@pytest.mark.slow
def test_check_capture_of_recipient_scenarios_against_a_running_worker(run: KafkaRun, tmp_path: Path) -> None:
    check_against_worker(run, tmp_path, CROSS_TOPIC)


@pytest.mark.kafka
def test_check_capture_without_a_worker_names_the_missing_alerts(run: KafkaRun, tmp_path: Path) -> None:
    cap = scenario_capture(tmp_path, ["motivating_re_port_leak", "port_flapping"])
    expected = offline_keys(cap)
    assert len(expected) == 4
    started = time.monotonic()
    done = subprocess.run(
        check_args(run, cap, extra=("--rebase-time", "2020-03-01T00:00:00Z", "--timeout", "3", "--settle", "1")),
        cwd=ROOT,
        env=run.env(free_port()),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert time.monotonic() - started < 60
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAIL (timed out" in done.stdout and "4 of 4 expected alert(s) missing, 0 unexpected" in done.stdout
    missing = {m.group(2): m.group(1) for m in re.finditer(r"^  missing +(\w+) +(\S+) ", done.stdout, re.M)}
    assert missing == expected
    # at the produced (rebased) event times, with masked numbers only
    times = re.findall(r"^  missing +\w+ +\S+ +(\S+) +\+49\d{3}\*+\d\d +trigger ", done.stdout, re.M)
    assert len(times) == 4 and all("2018" <= t[:4] <= "2020" for t in times), done.stdout
    assert not any(s in done.stdout + done.stderr for s in clear_texts(cap))


@pytest.mark.kafka
@pytest.mark.slow
def test_other_traffic_on_the_alerts_topic_does_not_fail_the_check(run: KafkaRun, tmp_path: Path) -> None:
    """Alerts of other numbers on a shared alerts topic: raised by the same worker before the
    check (already on the topic) and while it waits (read by it, and not its own)."""
    run.start_worker()
    cap = scenario_capture(tmp_path, ["port_flapping", "bounce_burst"])
    other = scenario_capture(tmp_path, ["notification_without_contract"], "other.jsonl")
    envs = [decode_line(line) for line in other.read_bytes().splitlines()]

    def other_traffic(tag: str) -> list[Any]:
        # ids and numbers of their own; in 2015, before the capture's times: none of the capture is late
        iso = Isolation(tag)
        return rebase_envelopes([iso.envelope(e) for e in envs], parse_rfc3339("2015-01-01T00:00:00Z"))

    mine = set(re.findall(r"\+49[0-9]{8,13}", cap.read_text()))
    before, during = other_traffic("before"), other_traffic("during")
    assert not mine & {e.key for e in [*before, *during]}
    n_other = len(offline_keys(other))
    assert n_other == 2
    run.produce(before)
    assert len(run.alerts(lambda a: len(a) >= n_other, timeout=60)) >= n_other  # already on the topic

    proc = subprocess.Popen(
        check_args(run, cap, extra=("--rebase-time", "now", "--timeout", "40", "--settle", "8")),
        cwd=ROOT,
        env=run.env(free_port()),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    err_lines: list[str] = []
    listening = threading.Event()

    def read_err() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            err_lines.append(line)
            if line.startswith("expected offline:"):
                listening.set()

    reader = threading.Thread(target=read_err, daemon=True)
    reader.start()
    assert listening.wait(60), "".join(err_lines)
    produced_during = time.time_ns() // 1000
    run.produce(during)  # the worker raises their alerts while the check waits
    out, _ = proc.communicate(timeout=180)
    ended = time.time_ns() // 1000
    reader.join(10)
    assert proc.returncode == 0, out + "".join(err_lines) + worker_late(run)
    assert "OK, 3 expected alert(s), nothing else" in out
    alerts = run.alerts(lambda a: False, timeout=3)
    during_ids = {json.loads(e.payload or "")["event_id"] for e in during}
    seen_during = [
        a
        for a in alerts
        if a["trigger_event_id"] in during_ids and produced_during <= parse_rfc3339(a["detected_at"]) <= ended
    ]
    assert len(seen_during) == n_other, "the other traffic's alerts came after the check: nothing was tested"
