"""streams.staging: kcat envelope, capture/replay on a real broker (both kcat directions), rebasing,
isolation and the scenario check against a stand-in worker.

The Kafka tests need deploy/kafka/start.sh; they skip without a broker unless
NOTIFGUARD_KAFKA_REQUIRED=1 (then they fail). The kcat interop tests also need
kcat (deploy/kafka/ensure-tools.sh).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from detectors.alerts import Alert, encode_alert
from detectors.capture import encode_line
from detectors.settings import Settings, Topics
from detectors.timefmt import parse_rfc3339
from streams.cli import main
from streams.replay_offline import replay
from streams.scenarios import Expected, all_scenarios, load
from streams.staging import (
    Isolation,
    Produced,
    SeenAlert,
    alert_for_run,
    capture,
    compare_alerts,
    kcat_line,
    parse_capture_line,
    parse_rebase_target,
    rebase_envelopes,
    replay_to_kafka,
    shift_event_time,
    staged_envelopes,
    yajl_string,
)
from streams.topics import delete_topics, ensure_topics, topic_specs

BOOTSTRAP = os.environ.get("NOTIFGUARD_BOOTSTRAP", "127.0.0.1:19092")
REQUIRED = os.environ.get("NOTIFGUARD_KAFKA_REQUIRED") == "1"


@pytest.fixture()
def kcat() -> str:
    path = shutil.which("kcat")
    if path is None:
        msg = "kcat not installed (deploy/kafka/ensure-tools.sh)"
        if REQUIRED:
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.fixture()
def new_topic(bootstrap: str) -> Iterator[Callable[..., str]]:
    """Creates uniquely named topics and deletes them after the test."""
    from streams.topics import _admin

    made: list[str] = []

    def make(partitions: int = 3) -> str:
        name = f"test-staging-{uuid.uuid4().hex[:12]}"
        admin = _admin(bootstrap)
        try:
            admin.create_topics({name: {"num_partitions": partitions, "replication_factor": 1}}, wait_for_metadata=True)
        finally:
            admin.close()
        made.append(name)
        return name

    yield make
    delete_topics(bootstrap, made)


def _produce(bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes | None, int | None]]) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        for key, value, ts in records:
            producer.send(topic, key=key, value=value, timestamp_ms=ts)
        producer.flush()
    finally:
        producer.close(timeout=5)


def _capture_lines(bootstrap: str, *topics: str) -> list[dict[str, Any]]:
    buf = io.BytesIO()
    summary = capture(bootstrap, list(topics), buf, idle_timeout=10)
    assert not summary.not_at_end
    return [json.loads(line) for line in buf.getvalue().splitlines()]


# --------------------------------------------------------------------- envelope (pure)


def test_yajl_string_escapes_like_kcat() -> None:
    assert yajl_string(b'a\nb\tc\rd\x08e\x0cf/g\x7fh"\\') == b'"a\\nb\\tc\\rd\\be\\ff/g\x7fh\\"\\\\"'
    assert yajl_string(b"\x1f\x01") == b'"\\u001F\\u0001"'
    assert yajl_string("é€".encode()) == '"é€"'.encode()  # raw UTF-8, not \u-escaped
    assert yajl_string(b"\xc3") == b'"\xc3"'  # invalid UTF-8 passes through, as in kcat


def test_kcat_line_layout() -> None:
    line = kcat_line("t", 1, 7, None, b'{"a":1}', ts=1700000000123, broker=1)
    assert line == (
        b'{"topic":"t","partition":1,"offset":7,"tstype":"create","ts":1700000000123,'
        b'"broker":1,"key":null,"payload":"{\\"a\\":1}"}\n'
    )
    with_headers = kcat_line("t", 0, 0, b"k", None, ts=5, headers=[("h", b"v"), ("e", None)])
    assert b'"broker":-1,"headers":["h","v","e",null],"key":"k","payload":null}' in with_headers
    assert b'"ts"' not in kcat_line("t", 0, 0, b"k", b"v")


def test_capture_line_round_trip_keeps_raw_bytes() -> None:
    key, value = b"\xff\xfe", b'x\n\x00\xc3"y'
    rec = parse_capture_line(kcat_line("t", 2, 3, key, value, ts=9, headers=[("h", b"\xff")]))
    assert (rec.topic, rec.partition, rec.offset, rec.key, rec.value, rec.ts) == ("t", 2, 3, key, value, 9)
    assert rec.headers == (("h", b"\xff"),)
    with pytest.raises(ValueError):
        parse_capture_line(b'{"topic":"t","partition":"0","offset":1}')


# --------------------------------------------------------------------- rebasing (pure)


def test_shift_event_time() -> None:
    value, new = shift_event_time(b'{"event_id":"e","event_time":"2026-03-01T08:15:02.120Z","x":"\xc3\xa4"}', 1_500_000)
    assert new == parse_rfc3339("2026-03-01T08:15:03.620Z")
    assert value is not None and json.loads(value) == {
        "event_id": "e",
        "event_time": "2026-03-01T08:15:03.620Z",
        "x": "ä",
    }
    for bad in (b"not json", b'{"x":1}', b"[1]", b'{"event_time":"yesterday"}', b'{"event_time":5}'):
        assert shift_event_time(bad, 10) == (bad, None)
    assert shift_event_time(None, 10) == (None, None)
    assert parse_rebase_target("now", now_us=42) == 42
    assert parse_rebase_target("2025-01-01T00:00:00+01:00") == parse_rfc3339("2024-12-31T23:00:00Z")


def test_rebase_envelopes_puts_the_last_event_at_the_target() -> None:
    envs = list(load("motivating_re_port_leak").envelopes())
    target = parse_rfc3339("2026-11-01T00:00:00Z")
    out = rebase_envelopes(envs, target)
    times = [json.loads(e.payload or "")["event_time"] for e in out]
    assert max(parse_rfc3339(t) for t in times) == target
    delta = parse_rfc3339(times[0]) - parse_rfc3339(json.loads(envs[0].payload or "")["event_time"])
    for before, after in zip(envs, out, strict=True):
        t0 = parse_rfc3339(json.loads(before.payload or "")["event_time"])
        t1 = parse_rfc3339(json.loads(after.payload or "")["event_time"])
        assert t1 - t0 == delta
        assert after.ts == t1 // 1000


# --------------------------------------------------------------------- isolation (pure)

E164 = st.from_regex(r"\+[1-9][0-9]{6,14}", fullmatch=True)
TAGS = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=16)


@given(TAGS, E164, E164)
def test_isolated_msisdns_are_e164_and_a_bijection(tag: str, a: str, b: str) -> None:
    iso = Isolation(tag)
    ia, ib = iso.msisdn(a), iso.msisdn(b)
    assert Isolation(tag).msisdn(a) == ia  # deterministic within a run
    assert len(ia) == len(a) and ia[:-6] == a[:-6]
    assert (ia == ib) == (a == b)
    import re

    assert re.fullmatch(r"\+[1-9][0-9]{6,14}", ia)


def test_runs_differ_and_bad_numbers_stay_bad() -> None:
    a, b = Isolation("run1"), Isolation("run2")
    assert a.msisdn("+4917612345678") != b.msisdn("+4917612345678")
    assert a.msisdn("+4917612345678") != "+4917612345678"
    assert a.event_id("n1") != b.event_id("n1")
    assert a.email("anna@gmx.de") != b.email("anna@gmx.de")
    for bad in ("0176 1234567", "+4917612345678\n", "", "+0123456789"):
        assert a.msisdn(bad) == bad


def _norm(addr: str) -> str:
    return addr.strip().lower()


ADDRESSES = st.builds(
    lambda pre, local, plus, dom, post: f"{pre}{local}{plus}@{dom}{post}",
    st.sampled_from(["", " ", "  ", "\t"]),
    st.text("abcXYZ._-", min_size=1, max_size=6),
    st.sampled_from(["", "+news", "+A"]),
    st.sampled_from(["gmx.de", "GMX.de", "web.DE", "x.org"]),
    st.sampled_from(["", " ", "\n"]),
)


@given(TAGS, ADDRESSES, ADDRESSES)
def test_isolated_addresses_keep_normalisation_equivalence(tag: str, a: str, b: str) -> None:
    iso = Isolation(tag)
    ia, ib = iso.email(a), iso.email(b)
    assert (_norm(ia) == _norm(ib)) == (_norm(a) == _norm(b))
    assert ia != a and ia.startswith(a[: len(a) - len(a.lstrip())]) and ia.endswith(a[len(a.rstrip()) :])


def test_isolation_rewrites_a_record_consistently() -> None:
    iso = Isolation("abc123")
    value = iso.value(
        json.dumps(
            {
                "event_id": "n1",
                "msisdn": "+4917612345678",
                "message_id": "m1",
                "recipient": " Anna@GMX.de ",
                "contract_id": "K-1",
                "customer_id": None,
                "brand": "o2",
            }
        )
    )
    doc = json.loads(value or "")
    assert doc["event_id"] == "n1-abc123" and iso.original_event_id("n1-abc123") == "n1"
    assert doc["message_id"] == "m1-abc123" and doc["contract_id"] == "K-1-abc123"
    assert doc["customer_id"] is None and doc["brand"] == "o2"
    assert doc["recipient"] == " Anna-abc123@GMX.de "
    assert doc["msisdn"] == iso.msisdn("+4917612345678")
    assert iso.value("not json") == "not json"
    sms = json.loads(iso.value('{"recipient":"+4917612345678"}') or "")
    assert sms["recipient"] == doc["msisdn"]


@pytest.mark.parametrize("scenario", all_scenarios(), ids=lambda s: s.name)
def test_isolated_rebased_scenarios_raise_their_expected_alerts_offline(scenario: Any, tmp_path: Path) -> None:
    """Isolation and rebasing change no verdict: the offline engine agrees with each scenario's expectations."""
    from streams.config import load_settings

    settings = load_settings(None, env={})
    iso = Isolation("t0a1b2")
    envs = staged_envelopes(scenario, settings, iso, time.time_ns() // 1000)
    path = tmp_path / "cap.jsonl"
    path.write_bytes(b"".join(encode_line(e) for e in envs))
    _, alerts = replay([path], settings)
    seen = [SeenAlert(a.kind, iso.original_event_id(a.trigger_event_id) or "?", a.late) for a in alerts]
    assert compare_alerts(scenario.expect, seen).ok, compare_alerts(scenario.expect, seen).render()


# --------------------------------------------------------------------- alert comparison (pure)


def test_compare_alerts() -> None:
    expected = [Expected("re_port", "c2"), Expected("recipient_previous_holder", "n1", late=True)]
    ok = compare_alerts(
        expected,
        [SeenAlert("recipient_previous_holder", "n1", True), SeenAlert("re_port", "c2"), SeenAlert("re_port", "c2")],
    )
    assert ok.ok and ok.repeats == 1
    bad = compare_alerts(
        expected, [SeenAlert("recipient_previous_holder", "n1", False), SeenAlert("bounce_burst", "d3")]
    )
    assert not bad.ok
    assert bad.missing == [("re_port", "c2")]
    assert bad.unexpected == [("bounce_burst", "d3")]
    assert bad.late_mismatch == [("recipient_previous_holder", "n1", True, False)]
    text = bad.render()
    assert "missing    re_port" in text and "trigger d3" in text
    assert compare_alerts([], []).ok


def test_alert_for_run_filters_and_maps_back() -> None:
    iso = Isolation("r1")
    run_ids = {iso.event_id("n1"), iso.event_id("c1")}
    rec = json.dumps(
        {"kind": "recipient_unlinked", "trigger_event_id": "n1-r1", "event_ids": ["n1-r1"], "late": False}
    ).encode()
    assert alert_for_run(rec, iso, run_ids) == SeenAlert("recipient_unlinked", "n1", False)
    other = json.dumps({"kind": "recipient_unlinked", "trigger_event_id": "n1-zz", "event_ids": ["n1-zz"]})
    assert alert_for_run(other.encode(), iso, run_ids) is None
    assert alert_for_run(b"garbage", iso, run_ids) is None
    assert alert_for_run(None, iso, run_ids) is None


# --------------------------------------------------------------------- capture <-> kcat (broker)


def _kcat_json(kcat: str, bootstrap: str, topic: str) -> list[dict[str, Any]]:
    done = subprocess.run(
        [kcat, "-C", "-J", "-e", "-q", "-b", bootstrap, "-t", topic], capture_output=True, check=True, timeout=60
    )
    return [json.loads(line) for line in done.stdout.splitlines()]


@pytest.mark.kafka
def test_capture_writes_what_kcat_prints(
    bootstrap: str, kcat: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    topic = new_topic(3)
    now = int(time.time() * 1000)
    records: list[tuple[bytes | None, bytes | None, int | None]] = [
        (f"+49176{i:08d}".encode(), json.dumps({"n": i, "s": 'ä\n"/'}).encode(), now - 1000 + i) for i in range(20)
    ]
    records += [(None, b"no key", now), (b"+4917600000001", None, now), (b"k", b"\x01\x1f<>", None)]
    _produce(bootstrap, topic, records)

    out = tmp_path / "cap.jsonl"
    assert (
        main(["capture", "--bootstrap", bootstrap, "--topics", topic, "--out", str(out), "--idle-timeout", "10"]) == 0
    )
    mine_raw = out.read_bytes().splitlines()
    theirs_raw = subprocess.run(
        [kcat, "-C", "-J", "-e", "-q", "-b", bootstrap, "-t", topic], capture_output=True, check=True, timeout=60
    ).stdout.splitlines()
    # byte for byte the same lines (kcat writes in arrival order, notifguard in timestamp order)
    assert sorted(mine_raw) == sorted(theirs_raw)

    def by_pos(lines: list[bytes]) -> dict[tuple[int, int], dict[str, Any]]:
        docs = [json.loads(x) for x in lines]
        return {(d["partition"], d["offset"]): d for d in docs}

    mine, theirs = by_pos(mine_raw), by_pos(theirs_raw)
    assert len(mine) == len(records)
    for pos, doc in theirs.items():
        assert {k: mine[pos][k] for k in ("topic", "partition", "offset", "key", "payload", "ts", "tstype")} == {
            k: doc[k] for k in ("topic", "partition", "offset", "key", "payload", "ts", "tstype")
        }
    assert sum(1 for d in mine.values() if d["key"] is None) == 1
    assert sum(1 for d in mine.values() if d["payload"] is None) == 1
    # within each partition, file order is offset order
    for p in {d["partition"] for d in mine.values()}:
        offsets = [json.loads(x)["offset"] for x in mine_raw if json.loads(x)["partition"] == p]
        assert offsets == sorted(offsets)


@pytest.mark.kafka
def test_max_records_and_missing_topic(
    bootstrap: str, new_topic: Callable[..., str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    topic = new_topic(1)
    _produce(bootstrap, topic, [(b"k", b"%d" % i, None) for i in range(5)])
    out = tmp_path / "cap.jsonl"
    assert main(["capture", "--bootstrap", bootstrap, "--topics", topic, "--out", str(out), "--max-records", "3"]) == 0
    assert [json.loads(x)["payload"] for x in out.read_text().splitlines()] == ["0", "1", "2"]
    assert "captured 3 records" in capsys.readouterr().err
    assert main(["capture", "--bootstrap", bootstrap, "--topics", f"{topic}-absent", "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.kafka
def test_kcat_capture_replays_and_recaptures_the_same(
    bootstrap: str, kcat: str, new_topic: Callable[..., str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src, dst = new_topic(3), new_topic(3)
    records: list[tuple[bytes | None, bytes | None, int | None]] = [
        (f"+49151{i % 4:08d}".encode(), json.dumps({"i": i, "t": "ü"}).encode(), None) for i in range(12)
    ]
    records.append((None, b"unkeyed", None))
    _produce(bootstrap, src, records)
    cap = tmp_path / "kcat.jsonl"
    with open(cap, "wb") as f:
        subprocess.run([kcat, "-C", "-J", "-e", "-q", "-b", bootstrap, "-t", src], stdout=f, check=True, timeout=60)

    assert main(["replay", "--bootstrap", bootstrap, str(cap), "--rename", f"{src}={dst}"]) == 0
    assert f"{dst}" in capsys.readouterr().err

    before, after = _kcat_json(kcat, bootstrap, src), _capture_lines(bootstrap, dst)
    assert sorted((d["key"] or "", d["payload"]) for d in before) == sorted(
        (d["key"] or "", d["payload"]) for d in after
    )
    assert {d["topic"] for d in after} == {dst}
    for d in before:  # same original timestamps
        assert any(a["payload"] == d["payload"] and a["ts"] == d["ts"] for a in after)
    # keyed: one key, one partition, original per-key order kept
    for key in {d["key"] for d in before if d["key"]}:
        parts = {d["partition"] for d in after if d["key"] == key}
        assert len(parts) == 1
        assert [d["payload"] for d in after if d["key"] == key] == [d["payload"] for d in before if d["key"] == key]


def _events_capture(path: Path, topic: str, base_ms: int, offsets_s: list[float]) -> None:
    from detectors.timefmt import rfc3339

    lines = []
    for i, off in enumerate(offsets_s):
        ts = base_ms + int(off * 1000)
        value = json.dumps({"event_id": f"e{i}", "event_time": rfc3339(ts * 1000), "msisdn": f"+4917600000{i:03d}"})
        lines.append(kcat_line(topic, 0, i, f"+4917600000{i:03d}".encode(), value.encode(), ts=ts, broker=1))
    path.write_bytes(b"".join(lines))


@pytest.mark.kafka
def test_replay_rebases_event_time_and_record_timestamp(
    bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    dst = new_topic(2)
    cap = tmp_path / "cap.jsonl"
    base = parse_rfc3339("2026-01-10T12:00:00.250Z") // 1000
    _events_capture(cap, "orig.topic", base, [0.0, 0.5, 1.25, 90.0])
    with open(cap, "ab") as f:  # bad records: produced unchanged
        f.write(kcat_line("orig.topic", 0, 10, b"+4917600000999", b"not json {", ts=base + 200, broker=1))
        f.write(kcat_line("orig.topic", 0, 11, b"+4917600000999", b'{"event_id":"x"}', ts=base + 300, broker=1))

    assert (
        main(
            [
                "replay",
                "--bootstrap",
                bootstrap,
                str(cap),
                "--rename",
                f"orig.topic={dst}",
                "--rebase-time",
                "2025-06-01T00:00:00Z",
            ]
        )
        == 0
    )
    got = {d["key"] + d["payload"][:12]: d for d in _capture_lines(bootstrap, dst)}
    target = parse_rfc3339("2025-06-01T00:00:00Z")
    # as fast as possible (--speed 0): the last record lands on the target, the rest before it
    delta_ms = target // 1000 - (base + 90_000)
    good = [d for d in got.values() if d["payload"].startswith('{"event_id":"e')]
    assert len(good) == 4
    for d in good:
        doc = json.loads(d["payload"])
        i = int(doc["event_id"][1:])
        new_ms = parse_rfc3339(doc["event_time"]) // 1000
        assert new_ms == base + int([0.0, 0.5, 1.25, 90.0][i] * 1000) + delta_ms
        assert d["ts"] == new_ms  # record timestamp = rebased event time
        assert doc["event_time"].endswith("Z") and len(doc["event_time"]) == len("2025-06-01T00:00:00.000Z")
    assert max(json.loads(d["payload"])["event_time"] for d in good) == "2025-06-01T00:00:00.000Z"
    bad = {d["payload"]: d for d in got.values() if d not in good}
    assert set(bad) == {"not json {", '{"event_id":"x"}'}
    assert bad["not json {"]["ts"] == base + 200 + delta_ms


@pytest.mark.kafka
def test_replay_reports_each_record_as_the_broker_took_it(
    bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    """`sent`: what was produced (renamed, rebased), where it landed; what check CAPTURE replays offline."""
    dst = new_topic(3)
    cap = tmp_path / "cap.jsonl"
    _events_capture(cap, "orig.topic", parse_rfc3339("2026-01-10T12:00:00Z") // 1000, [0.0, 0.5, 1.25, 90.0, 91.0])
    sent: list[Produced] = []
    target = parse_rfc3339("2025-06-01T00:00:00Z")
    summary = replay_to_kafka(bootstrap, [cap], rebase_to_us=target, renames={"orig.topic": dst}, sent=sent)
    assert sum(summary.produced.values()) == 5 and [p.seq for p in sent] == list(range(5))
    on_topic = {(d["partition"], d["offset"]): d for d in _capture_lines(bootstrap, dst)}
    assert len({p.partition for p in sent}) > 1  # by key, not the capture's partition 0
    for p in sent:
        d = on_topic[(p.partition, p.offset)]
        assert (p.topic, p.key, p.value, p.ts) == (dst, d["key"].encode(), d["payload"].encode(), d["ts"])
    assert max(json.loads(p.value or b"")["event_time"] for p in sent) == "2025-06-01T00:00:00.000Z"
    assert json.loads(sent[0].line())["payload"] == (sent[0].value or b"").decode()


@pytest.mark.kafka
def test_replay_rebase_now_and_original_pacing(bootstrap: str, new_topic: Callable[..., str], tmp_path: Path) -> None:
    dst = new_topic(1)
    cap = tmp_path / "cap.jsonl"
    _events_capture(cap, dst, parse_rfc3339("2024-02-29T23:59:59.500Z") // 1000, [0.0, 0.5, 1.0])
    t0 = time.time()
    started = time.monotonic()
    assert main(["replay", "--bootstrap", bootstrap, str(cap), "--rebase-time", "now", "--speed", "1"]) == 0
    elapsed = time.monotonic() - started
    assert elapsed >= 0.8
    docs = _capture_lines(bootstrap, dst)
    times = sorted(parse_rfc3339(json.loads(d["payload"])["event_time"]) / 1e6 for d in docs)
    assert t0 - 1 <= times[0] <= t0 + 10
    assert times[2] - times[0] == pytest.approx(1.0)
    assert all(d["ts"] == parse_rfc3339(json.loads(d["payload"])["event_time"]) // 1000 for d in docs)


# --------------------------------------------------------------------- check (broker, stand-in worker)


class StandInWorker(threading.Thread):
    """NOT the real worker: it reads the input topics until the scenario's records are there,
    runs them through the offline engine (streams.replay_offline.replay) and writes the
    alerts it gets, optionally altered, to the alerts topic."""

    def __init__(
        self,
        bootstrap: str,
        settings: Settings,
        n_records: int,
        tmp: Path,
        alter: Callable[[list[Alert]], list[Alert]] = lambda a: a,
    ) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.settings, self.n, self.tmp, self.alter = bootstrap, settings, n_records, tmp, alter
        self.error: BaseException | None = None
        self.produced = 0

    def run(self) -> None:
        try:
            self._run()
        except BaseException as err:  # reported by the test
            self.error = err

    def _run(self) -> None:
        from kafka import KafkaProducer

        t = self.settings.topics
        deadline = time.monotonic() + 60
        while True:
            buf = io.BytesIO()
            if capture(self.bootstrap, [t.changes, t.outbound, t.delivery], buf, idle_timeout=2).records >= self.n:
                break
            if time.monotonic() > deadline:
                raise TimeoutError("scenario records never arrived")
            time.sleep(0.2)
        path = self.tmp / "standin.jsonl"
        path.write_bytes(buf.getvalue())
        _, alerts = replay([path], self.settings)
        producer = KafkaProducer(bootstrap_servers=self.bootstrap, acks="all")
        try:
            for a in self.alter(alerts):
                producer.send(t.alerts, key=a.dedup_key.encode(), value=encode_alert(a))
                self.produced += 1
            producer.flush()
        finally:
            producer.close(timeout=5)


@pytest.fixture()
def check_env(bootstrap: str, tmp_path: Path) -> Iterator[tuple[Settings, Path]]:
    prefix = f"test-check-{uuid.uuid4().hex[:10]}"
    topics = Topics(
        outbound=f"{prefix}.outbound",
        changes=f"{prefix}.changes",
        delivery=f"{prefix}.delivery",
        alerts=f"{prefix}.alerts",
        deadletter=f"{prefix}.deadletter",
    )
    settings = Settings(topics=topics)
    ensure_topics(bootstrap, settings, partitions=3, app_id=prefix)
    cfg = tmp_path / "settings.toml"
    cfg.write_text("[topics]\n" + "".join(f'{k} = "{v}"\n' for k, v in vars(topics).items()))
    yield settings, cfg
    delete_topics(bootstrap, [s.name for s in topic_specs(settings, 3, prefix)])


@pytest.mark.kafka
def test_check_passes_when_exactly_the_expected_alerts_arrive(
    bootstrap: str,
    check_env: tuple[Settings, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings, cfg = check_env
    monkeypatch.setenv("NOTIFGUARD_CHECK_SETTLE_S", "2")
    scenario = load("motivating_re_port_leak")
    worker = StandInWorker(bootstrap, settings, len(scenario.events), tmp_path)
    worker.start()
    rc = main(["check", "motivating_re_port_leak", "--bootstrap", bootstrap, "--timeout", "60", "--config", str(cfg)])
    worker.join(30)
    assert worker.error is None
    out = capsys.readouterr()
    assert rc == 0, out
    assert "OK, 2 expected alert(s)" in out.out
    assert worker.produced == 2
    assert "run tag" in out.err


@pytest.mark.kafka
def test_check_names_missing_and_unexpected_alerts(
    bootstrap: str,
    check_env: tuple[Settings, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import msgspec

    settings, cfg = check_env
    monkeypatch.setenv("NOTIFGUARD_CHECK_SETTLE_S", "2")
    scenario = load("motivating_re_port_leak")

    def alter(alerts: list[Alert]) -> list[Alert]:
        kept = [a for a in alerts if a.kind != "re_port"]
        extra = msgspec.structs.replace(
            kept[0],
            kind="recipient_unlinked",
            trigger_event_id=kept[0].trigger_event_id.replace("out-o2-contract-info", "dlv-o2-contract-info"),
        )
        return [*kept, extra]

    worker = StandInWorker(bootstrap, settings, len(scenario.events), tmp_path, alter)
    worker.start()
    rc = main(["check", "motivating_re_port_leak", "--bootstrap", bootstrap, "--timeout", "15", "--config", str(cfg)])
    worker.join(30)
    assert worker.error is None
    out = capsys.readouterr().out
    assert rc == 1
    assert "FAIL" in out
    assert "missing    re_port" in out and "trigger chg-o2-portin" in out
    assert "unexpected recipient_unlinked" in out and "trigger dlv-o2-contract-info" in out


@pytest.mark.kafka
def test_check_cannot_run_without_topics(bootstrap: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "settings.toml"
    cfg.write_text(f'[topics]\nalerts = "absent-{uuid.uuid4().hex[:8]}"\n')
    rc = main(["check", "motivating_re_port_leak", "--bootstrap", bootstrap, "--config", str(cfg)])
    assert rc == 2
    assert "topics missing" in capsys.readouterr().err
