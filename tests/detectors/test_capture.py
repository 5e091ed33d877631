"""Capture lines: the kcat -J envelope, and what is no envelope."""

from __future__ import annotations

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
