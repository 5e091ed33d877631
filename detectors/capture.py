"""Captures: JSON Lines in the envelope `kcat -C -J` prints, one Kafka record a line."""

from __future__ import annotations

from typing import Final

import msgspec

from detectors.records import MAX_JSON_DEPTH, NEST_CHECK_MIN_LEN, too_deep


class Envelope(msgspec.Struct, frozen=True, omit_defaults=True):
    topic: str
    partition: int
    offset: int
    payload: str | None = None
    key: str | None = None
    ts: int | None = None
    tstype: str | None = None
    broker: int | None = None


_decoder: Final = msgspec.json.Decoder(Envelope)
_encoder: Final = msgspec.json.Encoder()


def decode_line(line: bytes | str) -> Envelope:
    """Raise msgspec.DecodeError (incl. ValidationError) for a line that is no envelope.

    A line nested more than MAX_JSON_DEPTH deep is none (it would exhaust the decoder's recursion).
    """
    if len(line) > NEST_CHECK_MIN_LEN and too_deep(line):
        raise msgspec.DecodeError(f"JSON nested more than {MAX_JSON_DEPTH} deep")
    return _decoder.decode(line)


def encode_line(env: Envelope) -> bytes:
    return _encoder.encode(env) + b"\n"
