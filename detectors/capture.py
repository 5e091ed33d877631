"""Captures: JSON Lines in the envelope `kcat -C -J` prints, one Kafka record a line."""

from __future__ import annotations

from typing import Annotated, Final

import msgspec

from detectors.records import MAX_JSON_DEPTH, NEST_CHECK_MIN_LEN, too_deep

# Kafka's ranges (the protocol's field types): a partition is an INT32 and an
# offset an INT64, neither negative; a timestamp is an INT64 of milliseconds
# (-1: none). A line outside them is no envelope, in both modes of the replay.
Partition = Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1)]
Offset = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
Timestamp = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]


class Envelope(msgspec.Struct, frozen=True, omit_defaults=True):
    topic: str
    partition: Partition
    offset: Offset
    payload: str | None = None
    key: str | None = None
    ts: Timestamp | None = None
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
