"""Tests of the capture generator (bench/generate.py): small sizes, well under 2 s."""

from __future__ import annotations

import json
import re
import zlib
from collections import Counter, defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

import bench.generate as gen

RECORDS, NUMBERS, DAYS, PARTITIONS, SEED = 3000, 40, 365, 4, 7
JITTER_S = 10.0
TOPICS = ("contracts.changes", "notifications.outbound", "notifications.delivery")
E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")
RFC3339_MS_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
ROOT = Path(__file__).resolve().parents[2]


def _run(seed: int = SEED, **kw: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    manifest: dict[str, Any] = {}
    envs = list(gen.generate(RECORDS, NUMBERS, DAYS, PARTITIONS, seed, jitter_s=JITTER_S, manifest=manifest, **kw))
    return envs, manifest


def _ms(s: str) -> int:
    return int(datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp() * 1000)


def _good(env: dict[str, Any]) -> dict[str, Any] | None:
    """The payload if the record is well-formed by the contract, else None."""
    try:
        v = json.loads(env["payload"])
    except ValueError:
        return None
    if not isinstance(v, dict):
        return None
    if v.get("schema_version") != 1 or not isinstance(v.get("event_id"), str):
        return None
    m, et = v.get("msisdn"), v.get("event_time")
    if not (isinstance(m, str) and E164.match(m) and m == env["key"]):
        return None
    if not (isinstance(et, str) and RFC3339_MS_Z.match(et)):
        return None
    try:
        _ms(et)
    except ValueError:
        return None
    topic = env["topic"]
    if topic == "contracts.changes":
        ok = v.get("type") in {
            "contract_started",
            "contract_ended",
            "email_changed",
            "email_verified",
            "holder_changed",
            "ported_in",
            "ported_out",
        }
        ok = ok and isinstance(v.get("contract_id"), str)
    elif topic == "notifications.outbound":
        ok = v.get("channel") in {"email", "sms"} and all(
            isinstance(v.get(f), str) for f in ("message_id", "recipient", "brand", "template", "sender")
        )
    else:
        ok = v.get("status") in {"delivered", "bounced", "deferred", "complained"} and all(
            isinstance(v.get(f), str) for f in ("message_id", "recipient", "brand", "sender")
        )
    return v if ok else None


@pytest.fixture(scope="module")
def run() -> tuple[list[dict[str, Any]], dict[str, Any]]:
    return _run()


def test_same_seed_gives_identical_lines(run: tuple[list[dict[str, Any]], dict[str, Any]]) -> None:
    envs, manifest = run
    again, manifest2 = _run()
    assert [json.dumps(e) for e in envs] == [json.dumps(e) for e in again]
    assert manifest == manifest2
    other, _ = _run(seed=SEED + 1)
    assert [e["payload"] for e in other] != [e["payload"] for e in envs]


def test_envelope_shape_and_offsets(run: tuple[list[dict[str, Any]], dict[str, Any]]) -> None:
    envs, _ = run
    next_offset: dict[tuple[str, int], int] = defaultdict(int)
    for e in envs:
        assert list(e) == ["topic", "partition", "offset", "tstype", "ts", "broker", "key", "payload"]
        assert e["topic"] in TOPICS and e["tstype"] == "create" and e["broker"] == 1
        assert isinstance(e["ts"], int) and isinstance(e["payload"], str)
        assert 0 <= e["partition"] < PARTITIONS
        tp = (e["topic"], e["partition"])
        assert e["offset"] == next_offset[tp]  # dense, increasing per (topic, partition)
        next_offset[tp] += 1


def test_co_partitioned_by_msisdn(run: tuple[list[dict[str, Any]], dict[str, Any]]) -> None:
    envs, _ = run
    seen: dict[str, int] = {}
    topics_of: dict[str, set[str]] = defaultdict(set)
    for e in envs:
        assert e["partition"] == zlib.crc32(e["key"].encode()) % PARTITIONS
        assert seen.setdefault(e["key"], e["partition"]) == e["partition"]
        topics_of[e["key"]].add(e["topic"])
    # the same number really does appear on all three topics, in one partition
    assert sum(1 for t in topics_of.values() if len(t) == 3) >= NUMBERS // 2


def test_good_records_key_equals_msisdn_and_ts_is_event_time(
    run: tuple[list[dict[str, Any]], dict[str, Any]],
) -> None:
    envs, manifest = run
    bad = 0
    for e in envs:
        v = _good(e)
        if v is None:
            bad += 1
            continue
        assert e["key"] == v["msisdn"]
        assert e["ts"] == _ms(v["event_time"])
    assert bad == manifest["bad_records"] > 0


def test_arrival_jitter_is_bounded(run: tuple[list[dict[str, Any]], dict[str, Any]]) -> None:
    envs, _ = run
    jitter_ms = int(JITTER_S * 1000)
    high = None
    late = 0
    for e in envs:
        if high is not None:
            assert e["ts"] >= high - jitter_ms, "record arrives later than the jitter bound"
            late += e["ts"] < high
        high = e["ts"] if high is None else max(high, e["ts"])
    assert late > 0  # there is some out-of-order arrival to exercise the grace period


def test_zero_jitter_is_in_event_time_order() -> None:
    envs = list(gen.generate(800, 10, 60, 2, 3, jitter_s=0))
    ts = [e["ts"] for e in envs]
    assert ts == sorted(ts)


def test_duplicates_repeat_event_and_content(
    run: tuple[list[dict[str, Any]], dict[str, Any]],
) -> None:
    envs, manifest = run
    by_id: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in envs:
        v = _good(e)
        if v is not None:
            by_id[v["event_id"]].append(e)
    repeated = [es for es in by_id.values() if len(es) > 1]
    assert len(repeated) == manifest["duplicates"] > 0
    for first, *rest in repeated:
        for d in rest:
            assert (d["topic"], d["partition"], d["key"], d["payload"], d["ts"]) == (
                first["topic"],
                first["partition"],
                first["key"],
                first["payload"],
                first["ts"],
            )
            assert d["offset"] > first["offset"]


def test_counts_roughly_as_asked(run: tuple[list[dict[str, Any]], dict[str, Any]]) -> None:
    envs, manifest = run
    assert abs(len(envs) - RECORDS) <= 0.15 * RECORDS
    assert manifest["records"] == len(envs)
    counts = Counter(e["topic"] for e in envs)
    assert counts == Counter(manifest["by_topic"])
    mix = {t: counts[t] / len(envs) for t in TOPICS}
    assert 0.08 <= mix["contracts.changes"] <= 0.25
    assert 0.35 <= mix["notifications.outbound"] <= 0.55
    assert 0.30 <= mix["notifications.delivery"] <= 0.50
    numbers = {v["msisdn"] for e in envs if (v := _good(e)) is not None}
    assert NUMBERS <= len(numbers) <= NUMBERS + manifest["unknown_numbers"]
    assert manifest["numbers"] == NUMBERS
    assert 0 < manifest["anomalies_total"] <= 0.1 * counts["notifications.outbound"]
    assert manifest["anomalies_total"] == sum(manifest["anomalies"].values())
    assert manifest["bad_records"] == sum(manifest["bad_records_by_reason"].values())


def test_realistic_content(run: tuple[list[dict[str, Any]], dict[str, Any]]) -> None:
    envs, _ = run
    goods = [(e["topic"], v) for e in envs if (v := _good(e)) is not None]
    types = Counter(v["type"] for t, v in goods if t == "contracts.changes")
    assert types["contract_started"] >= NUMBERS // 2 and types["email_changed"] > 0
    first_change: dict[str, dict[str, Any]] = {}
    for t, v in sorted(goods, key=lambda tv: tv[1]["event_time"]):
        if t == "contracts.changes":
            first_change.setdefault(v["msisdn"], v)
    assert all(v["type"] in ("contract_started", "ported_in") for v in first_change.values())
    sent = {v["message_id"]: v for t, v in goods if t == "notifications.outbound"}
    for t, v in goods:
        if t == "notifications.delivery":
            o = sent[v["message_id"]]  # every delivery event refers to a notification
            assert o["msisdn"] == v["msisdn"]
            assert _ms(v["event_time"]) > _ms(o["event_time"])
        elif t == "notifications.outbound" and v["channel"] == "email":
            assert "@" in v["recipient"]
    assert all(v["event_id"].startswith("e") and len(v["event_id"]) <= 8 for _, v in goods)


def test_good_and_bad_records_against_project_schemas(
    run: tuple[list[dict[str, Any]], dict[str, Any]],
) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    paths = {t: ROOT / "docs" / "schemas" / f"{t}.json" for t in TOPICS}
    if not all(p.exists() for p in paths.values()):
        pytest.skip("docs/schemas not present")
    validators = {t: jsonschema.Draft202012Validator(json.loads(p.read_text())) for t, p in paths.items()}
    envs, _ = run
    for e in envs:
        by_contract = _good(e) is not None
        try:
            v = json.loads(e["payload"])
        except ValueError:
            v = None
        valid = isinstance(v, dict) and validators[e["topic"]].is_valid(v) and (v.get("msisdn") == e["key"])
        assert valid == by_contract, e


def test_cli_writes_capture_and_manifest(tmp_path: Path) -> None:
    out = tmp_path / "data" / "capture.jsonl"
    rc = gen.main(
        [
            "--records",
            "600",
            "--numbers",
            "8",
            "--days",
            "90",
            "--partitions",
            "3",
            "--seed",
            "5",
            "--out",
            str(out),
            "--jitter-s",
            "5",
        ]
    )
    assert rc == 0
    lines = out.read_text().splitlines()
    manifest = json.loads((tmp_path / "data" / "capture.jsonl.manifest.json").read_text())
    assert len(lines) == manifest["records"]
    assert [json.loads(x) for x in lines] == list(gen.generate(600, 8, 90, 3, 5, jitter_s=5))
    assert manifest["params"]["seed"] == 5 and set(manifest["anomalies"]) >= {
        "recipient_previous_holder",
        "port_flapping",
        "bounce_burst",
    }


@pytest.mark.parametrize("jitter", [30, 45.0, -1])
def test_jitter_must_stay_below_grace(jitter: float) -> None:
    with pytest.raises(ValueError):
        list(gen.generate(100, 2, 10, 1, 1, jitter_s=jitter))
