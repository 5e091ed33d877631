"""Capture lines: the kcat -J envelope, and what is no envelope."""

from __future__ import annotations

import json

import msgspec
import pytest

from detectors.capture import Envelope, decode_line, encode_line
from detectors.records import MAX_JSON_DEPTH


def test_a_line_round_trips():
    env = Envelope("contracts.changes", 3, 17, '{"a": 1}', "+4917612345678", 1767225600000, "create", 1)
    assert decode_line(encode_line(env)) == env


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 5000, 100_000])
def test_a_deeply_nested_line_is_no_envelope(depth):
    line = '{"topic": "t", "partition": 0, "offset": 1, "x": ' + "[" * depth + "]" * depth + "}\n"
    with pytest.raises(msgspec.DecodeError, match=f"more than {MAX_JSON_DEPTH}"):
        decode_line(line)
    with pytest.raises(msgspec.DecodeError, match=f"more than {MAX_JSON_DEPTH}"):
        decode_line(line.encode())


def _line(**fields: object) -> str:
    envelope = {"topic": "contracts.changes", "partition": 0, "offset": 0, "key": None, "payload": None}
    return json.dumps({**envelope, **fields})


@pytest.mark.parametrize(
    "fields",
    [
        {"partition": 2**31 - 1},
        {"offset": 2**63 - 1},
        {"ts": 2**63 - 1},
        {"ts": -(2**63)},
        {"ts": -1},
    ],
)
def test_kafkas_own_ranges_are_envelopes(fields):
    env = decode_line(_line(**fields))
    assert [getattr(env, k) for k in fields] == list(fields.values())


@pytest.mark.parametrize(
    ("fields", "name"),
    [
        ({"partition": 2**70}, "partition"),
        ({"partition": 2**31}, "partition"),  # an INT32 in Kafka's protocol
        ({"partition": -1}, "partition"),
        ({"offset": 2**63}, "offset"),
        ({"offset": -1}, "offset"),
        ({"ts": 2**63}, "ts"),
        ({"ts": -(2**63) - 1}, "ts"),
        ({"ts": 2**70}, "ts"),
    ],
)
def test_integers_outside_kafkas_ranges_are_no_envelope(fields, name):
    with pytest.raises(msgspec.ValidationError, match=f"at `\\$.{name}`"):
        decode_line(_line(**fields))
