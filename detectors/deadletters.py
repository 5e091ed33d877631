"""Dead letters: a refused input record as received, why it was refused, within the output size limit."""

from __future__ import annotations

import base64
import hashlib
from typing import Final

import msgspec

from detectors.text import cap_text


class DeadLetter(msgspec.Struct, frozen=True):
    """One record on notifguard.deadletter: the input as received and why it was refused.

    A key or value too large to quote whole (see `dead_letter`) is a prefix, and
    `*_length` and `*_sha256` describe the whole; they are absent otherwise.
    """

    source_topic: str
    partition: int | None
    offset: int | None
    timestamp_ms: int | None
    key: str | None
    key_encoding: str
    value: str | None
    value_encoding: str
    reason: str
    reason_code: str
    detected_at: str
    schema_version: int = 1
    key_length: int | msgspec.UnsetType = msgspec.UNSET  # bytes of the whole key
    key_sha256: str | msgspec.UnsetType = msgspec.UNSET  # hex, of the whole key's bytes
    value_length: int | msgspec.UnsetType = msgspec.UNSET
    value_sha256: str | msgspec.UnsetType = msgspec.UNSET


# What a dead letter quotes of a record, in characters of its JSON form (escapes
# counted): the contract's records are well under 1 KiB, so 32 KiB shows all of
# any real one and what went wrong with a broken one, and with the key (1 KiB:
# keys are MSISDNs), the reason and the topic a dead letter stays under the
# 64 KiB every output record is held to (a 900 KB binary value made a 1.2 MB
# dead letter, over the producer's 1 MB request size: the worker looped on it).
DEADLETTER_VALUE_MAX: Final = 32 * 1024
DEADLETTER_KEY_MAX: Final = 1024
# A reason quotes decoder messages (and a bad event_time); a topic name is at most
# 249 characters in Kafka, a capture's "path:line" about as long.
DEADLETTER_REASON_MAX: Final = 1000
DEADLETTER_TOPIC_MAX: Final = 512
_JSON_CHAR_MAX: Final = 6  # the longest JSON form of one character: \u00XX


def _encode_bytes(data: bytes | str | None) -> tuple[str | None, str]:
    if data is None or isinstance(data, str):
        return data, "utf-8"
    try:
        return data.decode(), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(data).decode(), "base64"


def _json_length(text: str) -> int:
    """Bytes of `text` as a JSON string, quotes excluded."""
    return len(msgspec.json.encode(text)) - 2


def _quoted(data: bytes | str | None, limit: int) -> tuple[str | None, str, int | None, str | None]:
    """(text, encoding, length, sha256) of a key or value for a dead letter.

    Whole when its JSON form fits `limit`; else its longest prefix that fits
    (whole characters; for base64, whole groups of 3 bytes), with the length in
    bytes and the SHA-256 (hex) of the whole. length and sha256 are None when whole.
    """
    text, encoding = _encode_bytes(data)
    if text is None or len(text) * _JSON_CHAR_MAX <= limit or _json_length(text) <= limit:
        return text, encoding, None, None
    raw = data.encode() if isinstance(data, str) else data
    assert raw is not None
    if encoding == "base64":
        return base64.b64encode(raw[: limit // 4 * 3]).decode(), encoding, len(raw), hashlib.sha256(raw).hexdigest()
    fits, over = 0, min(len(text), limit + 1)  # text[:fits] fits, text[:over] does not
    while over - fits > 1:
        mid = (fits + over) // 2
        if _json_length(text[:mid]) <= limit:
            fits = mid
        else:
            over = mid
    return text[:fits], encoding, len(raw), hashlib.sha256(raw).hexdigest()


def dead_letter(
    topic: str,
    partition: int | None,
    offset: int | None,
    timestamp_ms: int | None,
    key: bytes | str | None,
    value: bytes | str | None,
    reason: str,
    reason_code: str,
    detected_at: str,
) -> DeadLetter:
    """The dead letter of a record as received, within the limits above (DEADLETTER_*)."""
    k, k_enc, k_len, k_sha = _quoted(key, DEADLETTER_KEY_MAX)
    v, v_enc, v_len, v_sha = _quoted(value, DEADLETTER_VALUE_MAX)
    unset = msgspec.UNSET
    return DeadLetter(
        cap_text(topic, DEADLETTER_TOPIC_MAX),
        partition,
        offset,
        timestamp_ms,
        k,
        k_enc,
        v,
        v_enc,
        cap_text(reason, DEADLETTER_REASON_MAX),
        reason_code,
        detected_at,
        key_length=unset if k_len is None else k_len,
        key_sha256=unset if k_sha is None else k_sha,
        value_length=unset if v_len is None else v_len,
        value_sha256=unset if v_sha is None else v_sha,
    )
