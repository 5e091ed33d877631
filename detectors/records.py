"""The wire contract's input records, and their strict decoding into typed events or a reason."""

from __future__ import annotations

import re
from itertools import accumulate
from typing import Annotated, Any, Final, Literal, Union, get_args, get_origin, get_type_hints

import msgspec

from detectors.text import ID_MAX, NAME_MAX, cap_id, cap_name
from detectors.timefmt import parse_common, parse_rfc3339

SCHEMA_VERSION: Final = 1

# E.164: "+", a country code not starting with 0, at most 15 digits in all; \Z, not $,
# so that a trailing newline does not pass.
# Seven digits is the shortest national number in use with a country code.
MSISDN_PATTERN: Final = r"^\+[1-9][0-9]{6,14}\Z"
# RFC 3339 date-time, syntactically; calendar validity is checked on parse.
EVENT_TIME_PATTERN: Final = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})\Z"
)

# JSON nesting (arrays and objects in one another) deeper than this is invalid_json.
# The contract's values nest one level (an object of strings and numbers) and
# unknown fields may nest more. msgspec follows nesting by recursion and gives up
# with RecursionError where Python's recursion limit (1000 frames, less the
# caller's own stack) ends, so without a limit of our own what fails would depend
# on the caller; 256 fails nowhere short of that from any caller, and is twice
# serde_json's default limit (128), ample for any producer.
MAX_JSON_DEPTH: Final = 256
# Text this short cannot nest deeper than MAX_JSON_DEPTH without leaving brackets
# unclosed, which the decoders then refuse as invalid JSON (the fast path's check).
NEST_CHECK_MIN_LEN: Final = 2 * MAX_JSON_DEPTH

NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]
Msisdn = Annotated[str, msgspec.Meta(pattern=MSISDN_PATTERN)]
EventTime = Annotated[str, msgspec.Meta(pattern=EVENT_TIME_PATTERN)]
Version = Literal[1]


class Outbound(msgspec.Struct, frozen=True, omit_defaults=True, gc=False):
    """notifications.outbound: a notification handed to a sender."""

    schema_version: Version
    event_id: NonEmpty
    event_time: EventTime
    msisdn: Msisdn
    message_id: NonEmpty
    brand: NonEmpty
    channel: Literal["email", "sms"]
    recipient: NonEmpty
    template: NonEmpty
    sender: NonEmpty
    contract_id: str | None = None
    customer_id: str | None = None


class Delivery(msgspec.Struct, frozen=True, omit_defaults=True, gc=False):
    """notifications.delivery: the sender's outcome for one message."""

    schema_version: Version
    event_id: NonEmpty
    event_time: EventTime
    msisdn: Msisdn
    message_id: NonEmpty
    recipient: NonEmpty
    status: Literal["delivered", "bounced", "deferred", "complained"]
    brand: NonEmpty
    sender: NonEmpty
    bounce_type: Literal["hard", "soft"] | None = None
    smtp_status: str | None = None


class _Change(msgspec.Struct, frozen=True, omit_defaults=True, tag_field="type", gc=False):
    schema_version: Version
    event_id: NonEmpty
    event_time: EventTime
    msisdn: Msisdn
    contract_id: NonEmpty


class ContractStarted(_Change, frozen=True, tag="contract_started"):
    customer_id: NonEmpty
    brand: NonEmpty
    email: str | None = None


class ContractEnded(_Change, frozen=True, tag="contract_ended"):
    pass


class EmailChanged(_Change, frozen=True, tag="email_changed"):
    email: str


class EmailVerified(_Change, frozen=True, tag="email_verified"):
    email: str


class HolderChanged(_Change, frozen=True, tag="holder_changed"):
    customer_id: NonEmpty


class PortedIn(_Change, frozen=True, tag="ported_in"):
    customer_id: NonEmpty
    brand: NonEmpty
    operator: NonEmpty
    email: str | None = None


class PortedOut(_Change, frozen=True, tag="ported_out"):
    operator: NonEmpty


ContractChange = ContractStarted | ContractEnded | EmailChanged | EmailVerified | HolderChanged | PortedIn | PortedOut
InputRecord = Outbound | Delivery | ContractChange
CHANGE_CLASSES: Final = (
    ContractStarted,
    ContractEnded,
    EmailChanged,
    EmailVerified,
    HolderChanged,
    PortedIn,
    PortedOut,
)


def change_type(record: _Change) -> str:
    """The `type` tag of a decoded contract change."""
    tag = type(record).__struct_config__.tag
    assert isinstance(tag, str)
    return tag


# Reason codes: a bounded vocabulary, safe as a metrics label.
INVALID_JSON: Final = "invalid_json"
NOT_AN_OBJECT: Final = "not_an_object"
INVALID_RECORD: Final = "invalid_record"
UNSUPPORTED_SCHEMA_VERSION: Final = "unsupported_schema_version"
BAD_MSISDN: Final = "bad_msisdn"
BAD_EVENT_TIME: Final = "bad_event_time"
KEY_MISMATCH: Final = "key_mismatch"
UNKNOWN_TOPIC: Final = "unknown_topic"
BAD_ENVELOPE: Final = "bad_envelope"
REASON_CODES: Final = (
    INVALID_JSON,
    NOT_AN_OBJECT,
    INVALID_RECORD,
    UNSUPPORTED_SCHEMA_VERSION,
    BAD_MSISDN,
    BAD_EVENT_TIME,
    KEY_MISMATCH,
    UNKNOWN_TOPIC,
    BAD_ENVELOPE,
)

# Reason codes of the worker's dead letters that are not about the input's form:
# a bug while processing the record, and a record set aside after crash loops.
PROCESSING_ERROR: Final = "processing_error"
QUARANTINED: Final = "quarantined"
WORKER_REASON_CODES: Final = (PROCESSING_ERROR, QUARANTINED)


class BadRecord(Exception):
    """Input that does not fit the contract: dead-lettered with `code` and a readable `reason`."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


_PATH = re.compile(r" - at `\$\.?([^`]*)`$")
# A JSON string (its brackets are text, not nesting); a `\` escapes the next byte.
_JSON_STRING: Final = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS: Final = bytes(b for b in range(256) if b not in b"[]{}")
_NESTING: Final = tuple(1 if b in b"[{" else -1 if b in b"]}" else 0 for b in range(256))


def too_deep(text: bytes | str) -> bool:
    """Whether JSON text nests arrays and objects more than MAX_JSON_DEPTH deep (brackets in strings aside).

    Cheap unless the text has more than MAX_JSON_DEPTH opening brackets; callers
    on a hot path check only text longer than NEST_CHECK_MIN_LEN.
    """
    if isinstance(text, str):
        if text.count("[") + text.count("{") <= MAX_JSON_DEPTH:
            return False
        data = text.encode("utf-8", "surrogatepass")
    else:
        if text.count(b"[") + text.count(b"{") <= MAX_JSON_DEPTH:
            return False
        data = text
    brackets = _JSON_STRING.sub(b"", data).translate(None, _NOT_BRACKETS)
    return max(accumulate(map(_NESTING.__getitem__, brackets)), default=0) > MAX_JSON_DEPTH


def _classify(err: msgspec.ValidationError, what: str) -> BadRecord:
    message = str(err)
    m = _PATH.search(message)
    path = m.group(1) if m else ""
    if not m and message.startswith("Expected `object`"):
        return BadRecord(NOT_AN_OBJECT, f"{what} value is not a JSON object: {message}")
    if path == "schema_version" and message.startswith("Invalid enum value"):
        return BadRecord(
            UNSUPPORTED_SCHEMA_VERSION,
            f"{what}: schema_version must be {SCHEMA_VERSION} ({message})",
        )
    if path == "msisdn":
        return BadRecord(BAD_MSISDN, f"{what}: msisdn is not an E.164 number like +4917612345678 ({message})")
    if path == "event_time":
        return BadRecord(
            BAD_EVENT_TIME,
            f"{what}: event_time must be RFC 3339 with a time zone, e.g. 2026-03-01T08:15:02.120Z ({message})",
        )
    if path == "type" and message.startswith("Invalid value"):
        return BadRecord(INVALID_RECORD, f"{what}: unknown change type ({message})")
    return BadRecord(INVALID_RECORD, f"{what} does not fit the contract: {message}")


# Annotated on purpose: unannotated, mypy joins the three Decoder types, and with
# msgspec >= 0.23's stubs that join is `object` (no .decode).
_DECODERS: Final[dict[str, msgspec.json.Decoder[InputRecord]]] = {
    "outbound": msgspec.json.Decoder(Outbound),
    "changes": msgspec.json.Decoder(ContractChange),
    "delivery": msgspec.json.Decoder(Delivery),
}


# Free-text fields and their caps (detectors.text): a longer value is cut when the
# record is decoded, so alerts, state and labels only ever hold the capped form.
_CAPS: Final = {
    "event_id": ID_MAX,
    "message_id": ID_MAX,
    "contract_id": ID_MAX,
    "customer_id": ID_MAX,
    "brand": NAME_MAX,
    "template": NAME_MAX,
    "sender": NAME_MAX,
    "smtp_status": NAME_MAX,
}


def _cap(record: Any) -> Any:
    """The record with every field of _CAPS over its cap cut (the same record if none is)."""
    cut: dict[str, str] = {}
    for name in record.__struct_fields__:
        limit = _CAPS.get(name)
        if limit is None:
            continue
        value = getattr(record, name)
        if value is not None and len(value) > limit:
            cut[name] = cap_id(value) if limit == ID_MAX else cap_name(value)
    return msgspec.structs.replace(record, **cut) if cut else record


def _fast_type(hint: Any, limit: int) -> Any:
    """`hint` (str or NonEmpty, or either or None) with max_length=limit."""
    if hint is str:
        return Annotated[str, msgspec.Meta(max_length=limit)]
    if get_origin(hint) is Annotated:
        base, *metas = get_args(hint)
        min_length = next((m.min_length for m in metas if m.min_length is not None), None)
        return Annotated[base, msgspec.Meta(min_length=min_length, max_length=limit)]
    inner = [a for a in get_args(hint) if a is not type(None)]
    if len(inner) == 1 and len(get_args(hint)) == 2:  # X | None
        return _fast_type(inner[0], limit) | None
    raise TypeError(f"no capped form of {hint!r}")


def _fast_class(cls: type) -> Any:
    """A subclass of a record class without the pattern constraints (msisdn, event_time),
    and with the caps of _CAPS as max_length: a record it decodes needs no cutting."""
    hints = get_type_hints(cls, include_extras=True)
    names: tuple[str, ...] = getattr(cls, "__struct_fields__")  # noqa: B009
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = [
        (n, get_args(hints[n])[0])
        for n in names
        if get_origin(hints[n]) is Annotated
        and any(getattr(m, "pattern", None) is not None for m in get_args(hints[n])[1:])
    ]
    defaults = {f.name: f.default for f in msgspec.structs.fields(cls) if f.default is not msgspec.NODEFAULT}
    for n in names:
        if n in _CAPS:
            capped = _fast_type(hints[n], _CAPS[n])
            fields.append((n, capped, defaults[n]) if n in defaults else (n, capped))
    tag = cls.__struct_config__.tag  # type: ignore[attr-defined]
    options: dict[str, Any] = {"tag_field": "type", "tag": tag} if isinstance(tag, str) else {}
    return msgspec.defstruct(f"_Fast{cls.__name__}", fields, bases=(cls,), frozen=True, gc=False, **options)


_FAST_CHANGES: Final = tuple(_fast_class(c) for c in CHANGE_CLASSES)
_FAST: Final[dict[str, Any]] = {
    "outbound": msgspec.json.Decoder(_fast_class(Outbound)),
    "changes": msgspec.json.Decoder(Union[_FAST_CHANGES]),  # noqa: UP007
    "delivery": msgspec.json.Decoder(_fast_class(Delivery)),
}
_MSISDN_RE: Final = re.compile(MSISDN_PATTERN)
# Numbers that matched MSISDN_PATTERN (bounded; numbers recur).
_GOOD_MSISDNS: set[str] = set()
_GOOD_MSISDNS_MAX: Final = 100_000


def decode(
    kind: str, key: bytes | str | None, value: bytes | str | None, not_after_us: int | None = None
) -> tuple[InputRecord, int]:
    """Decode one input record of topic kind `outbound`, `changes` or `delivery`.

    `not_after_us`: the latest acceptable event time (the record's Kafka
    timestamp, and live the wall clock, plus `max_future_skew`: see
    `future_bound`); a later one is `bad_event_time`.

    Returns the typed record and its event time in microseconds, or raises
    BadRecord with a reason a person can act on.

    Fast path: a decoder without the two regular expressions, then cheap
    checks that imply them (a known-good msisdn, the common event-time form);
    a record passing them is exactly what the strict path returns (an instance
    of a subclass of the same class). Everything else takes the strict path,
    which gives the reasons.

    Free-text fields longer than their caps (detectors.text: ids 256, names
    128 characters) are cut, not refused: the fast decoder declines them and
    the strict path returns the record with those fields capped.
    """
    if value is not None and (len(value) <= NEST_CHECK_MIN_LEN or not too_deep(value)):
        try:
            record: Any = _FAST[kind].decode(value)
        except Exception:  # the strict path below says why
            pass
        else:
            when = parse_common(record.event_time)
            msisdn = record.msisdn
            if (
                when is not None
                and (msisdn in _GOOD_MSISDNS or _good_msisdn(msisdn))
                and (kind != "outbound" or good_sms(record))
            ):
                if key.__class__ is bytes:
                    try:
                        key = key.decode()
                    except UnicodeDecodeError:
                        key = None
                if key == msisdn and (not_after_us is None or when <= not_after_us):
                    return record, when
    return _decode_strict(kind, key, value, not_after_us)


def _good_msisdn(msisdn: str) -> bool:
    if _MSISDN_RE.match(msisdn) is None:
        return False
    if len(_GOOD_MSISDNS) >= _GOOD_MSISDNS_MAX:
        _GOOD_MSISDNS.clear()
    _GOOD_MSISDNS.add(msisdn)
    return True


def good_sms(record: Outbound) -> bool:
    """False for a notification by sms whose recipient is not E.164 (MSISDN_PATTERN): an sms goes to a number."""
    if record.channel != "sms":
        return True
    recipient = record.recipient
    return recipient in _GOOD_MSISDNS or _good_msisdn(recipient)


def future_bound(timestamp_ms: int | None, wall_us: int | None, skew_us: int) -> int | None:
    """The latest event time a record may carry: `skew_us` after its Kafka timestamp and after
    the wall clock, of those known (None: no bound). A far-future event time would move the
    watermark on and make every other record late, and expire history that is still needed."""
    bound = None if timestamp_ms is None else timestamp_ms * 1000
    if wall_us is not None and (bound is None or wall_us < bound):
        bound = wall_us
    return None if bound is None else bound + skew_us


def _decode_strict(
    kind: str, key: bytes | str | None, value: bytes | str | None, not_after_us: int | None = None
) -> tuple[InputRecord, int]:
    """decode() with every check done by the strict decoders: the reference, and the reasons."""
    what = {"outbound": "notification", "changes": "contract change", "delivery": "delivery event"}[kind]
    if value is None:
        raise BadRecord(INVALID_JSON, f"{what} has no value (tombstone or empty record)")
    if len(value) > NEST_CHECK_MIN_LEN and too_deep(value):
        raise BadRecord(
            INVALID_JSON, f"{what} value nests arrays or objects more than {MAX_JSON_DEPTH} deep (unknown fields too)"
        )
    try:
        record: InputRecord = _DECODERS[kind].decode(value)
    except msgspec.ValidationError as err:
        raise _classify(err, what) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as err:
        raise BadRecord(INVALID_JSON, f"{what} value is not valid UTF-8 JSON: {err}") from None
    record = _cap(record)
    try:
        when = parse_rfc3339(record.event_time)
    except (ValueError, OverflowError) as err:
        raise BadRecord(
            BAD_EVENT_TIME, f"{what}: event_time {record.event_time!r} is not a real instant ({err})"
        ) from None
    if isinstance(record, Outbound) and not good_sms(record):
        raise BadRecord(
            INVALID_RECORD,
            f"{what}: the recipient of an sms must be the E.164 number it went to, like +4917612345678",
        )
    if isinstance(key, bytes):
        try:
            key = key.decode()
        except UnicodeDecodeError:
            key = None
    if key != record.msisdn:
        raise BadRecord(
            KEY_MISMATCH,
            f"{what}: the Kafka key must be the record's msisdn (co-partitioning); "
            + ("the key is missing or not UTF-8" if key is None else "they differ"),
        )
    if not_after_us is not None and when > not_after_us:
        raise BadRecord(
            BAD_EVENT_TIME,
            f"{what}: event_time {record.event_time!r} lies further ahead of the record's Kafka timestamp "
            "(or the clock) than max_future_skew allows",
        )
    return record, when
