import json

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detectors import records as r
from detectors.records import BadRecord, decode
from tests.factories import MSISDN, change, delivery, mail


def _decode(rec):
    kind = {"contracts.changes": "changes", "notifications.outbound": "outbound", "notifications.delivery": "delivery"}[
        rec.topic
    ]
    return decode(kind, rec.key, rec.value)


def test_every_change_type_decodes_to_its_class():
    cases = {
        "contract_started": r.ContractStarted,
        "contract_ended": r.ContractEnded,
        "email_changed": r.EmailChanged,
        "email_verified": r.EmailVerified,
        "holder_changed": r.HolderChanged,
        "ported_in": r.PortedIn,
        "ported_out": r.PortedOut,
    }
    for type_, cls in cases.items():
        extra = {"email": "a@b.c"} if type_.startswith("email") else {}
        record, t = _decode(change(type_, 1.5, **extra))
        assert isinstance(record, cls)
        assert r.change_type(record) == type_
        assert t == 1767225601500000  # 2026-01-01T00:00:01.500Z in microseconds


def test_unknown_fields_are_ignored_and_optional_fields_default():
    rec = mail("a@b.c", 0, future_field={"x": 1})
    record, _ = _decode(rec)
    assert record.contract_id is None and record.customer_id is None


def test_offsets_are_normalised_to_utc():
    _, ta = _decode(change("contract_ended", "2026-03-01T10:00:00+02:00"))
    _, tb = _decode(change("contract_ended", "2026-03-01T08:00:00Z"))
    assert ta == tb


def _with(rec, **patch):
    value = json.loads(rec.value)
    for k, v in patch.items():
        if v is _DROP:
            value.pop(k)
        else:
            value[k] = v
    return type(rec)(rec.topic, rec.key, json.dumps(value))


_DROP = object()


@pytest.mark.parametrize(
    ("rec", "code", "words"),
    [
        (_with(mail("a@b.c"), channel="fax"), r.INVALID_RECORD, "channel"),
        (_with(mail("a@b.c"), recipient=""), r.INVALID_RECORD, "recipient"),
        (_with(mail("a@b.c"), message_id=_DROP), r.INVALID_RECORD, "message_id"),
        (_with(mail("a@b.c"), brand=7), r.INVALID_RECORD, "brand"),
        (_with(delivery("m"), status="lost"), r.INVALID_RECORD, "status"),
        (_with(delivery("m"), bounce_type="medium"), r.INVALID_RECORD, "bounce_type"),
        (_with(change("contract_ended"), type="contract_paused"), r.INVALID_RECORD, "unknown change type"),
        (_with(change("contract_ended"), type=_DROP), r.INVALID_RECORD, "type"),
        (_with(change("contract_started"), customer_id=None), r.INVALID_RECORD, "customer_id"),
        (_with(change("email_changed", email="a@b"), email=_DROP), r.INVALID_RECORD, "email"),
        (_with(change("ported_out"), operator=_DROP), r.INVALID_RECORD, "operator"),
        (_with(mail("a@b.c"), schema_version=2), r.UNSUPPORTED_SCHEMA_VERSION, "schema_version"),
        (_with(mail("a@b.c"), schema_version="1"), r.INVALID_RECORD, "schema_version"),
        (_with(mail("a@b.c"), event_id=""), r.INVALID_RECORD, "event_id"),
        (_with(mail("a@b.c"), msisdn="017612345678"), r.BAD_MSISDN, "E.164"),
        (_with(mail("a@b.c"), msisdn="+49 176 1234"), r.BAD_MSISDN, "E.164"),
        (_with(mail("a@b.c"), event_time="2026-03-01T08:15:02"), r.BAD_EVENT_TIME, "time zone"),
        (_with(mail("a@b.c"), event_time="2026-02-30T08:15:02Z"), r.BAD_EVENT_TIME, "real instant"),
        (_with(mail("a@b.c"), event_time=1772352902), r.BAD_EVENT_TIME, "RFC 3339"),
        (_with(mail("a@b.c"), msisdn=MSISDN[:-1] + "9"), r.KEY_MISMATCH, "key"),
    ],
)
def test_bad_records_have_a_code_and_a_reason_naming_the_problem(rec, code, words):
    with pytest.raises(BadRecord) as info:
        _decode(rec)
    assert info.value.code == code
    assert words in info.value.reason


@pytest.mark.parametrize(
    ("value", "code"),
    [
        (b"{not json", r.INVALID_JSON),
        (b"\xff\xfe", r.INVALID_JSON),
        (None, r.INVALID_JSON),
        (b"[1, 2]", r.NOT_AN_OBJECT),
        (b'"text"', r.NOT_AN_OBJECT),
    ],
)
def test_values_that_are_no_json_object(value, code):
    with pytest.raises(BadRecord) as info:
        decode("outbound", MSISDN, value)
    assert info.value.code == code


def test_missing_key_is_a_key_mismatch():
    rec = mail("a@b.c")
    with pytest.raises(BadRecord) as info:
        decode("outbound", None, rec.value)
    assert info.value.code == r.KEY_MISMATCH
    with pytest.raises(BadRecord):
        decode("outbound", b"\xff", rec.value)


def test_key_as_bytes_is_accepted():
    rec = mail("a@b.c")
    record, _ = decode("outbound", MSISDN.encode(), rec.value.encode())
    assert record.msisdn == MSISDN


# The fast path of decode() must give exactly what the strict decoders give:
# the same record (class, fields), event time, or the same reason.

_TIME_CHARS = "0123456789-:.TtZz+ x\u0663"
_MSISDN_CHARS = "+0123456789 x\u0663"


def _outcome(fn, kind, key, value):
    try:
        record, t = fn(kind, key, value)
    except BadRecord as bad:
        return ("bad", bad.code, bad.reason)
    base = next(c for c in type(record).__mro__ if c in (r.Outbound, r.Delivery, *r.CHANGE_CLASSES))
    return ("ok", base, msgspec.structs.asdict(record), t)


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(
        [
            "2026-03-01T08:15:02.120Z",
            "2024-02-29t23:59:59.999z",
            "2026-03-01T08:15:02Z",
            "2026-03-01T08:15:02.120+02:00",
        ]
    ),
    st.lists(st.tuples(st.integers(0, 30), st.sampled_from(_TIME_CHARS)), max_size=2),
    st.sampled_from([MSISDN, "+4915999478698", "+1234567"]),
    st.lists(st.tuples(st.integers(0, 16), st.sampled_from(_MSISDN_CHARS)), max_size=2),
    st.sampled_from(["same", "none", "bytes", "other", "bad-utf8"]),
    st.sampled_from(["outbound", "delivery", "changes"]),
)
def test_fast_path_agrees_with_the_strict_decoders(time_, time_edits, msisdn, msisdn_edits, key_form, kind):
    chars = list(time_)
    for i, c in time_edits:
        if i < len(chars):
            chars[i] = c
    event_time = "".join(chars)
    digits = list(msisdn)
    for i, c in msisdn_edits:
        if i < len(digits):
            digits[i] = c
    number = "".join(digits)
    rec = {"outbound": mail("a@b.c"), "delivery": delivery("m-1"), "changes": change("contract_ended")}[kind]
    value = json.loads(rec.value)
    value["event_time"], value["msisdn"] = event_time, number
    key = {"same": number, "none": None, "bytes": number.encode(), "other": MSISDN + "9", "bad-utf8": b"\xff"}[key_form]
    data = json.dumps(value)
    assert _outcome(decode, kind, key, data) == _outcome(r._decode_strict, kind, key, data)


def _nested(rec, depth: int, closed: bool = True) -> str:
    """The record's value with an unknown field holding `depth` arrays in one another (the value itself is one more)."""
    return rec.value[:-1] + ', "future": ' + "[" * depth + ("]" * depth if closed else "") + "}"


@pytest.mark.parametrize("as_bytes", [False, True])
def test_nesting_deeper_than_the_limit_is_invalid_json_not_a_crash(as_bytes):
    rec = mail("a@b.c")
    for depth in (r.MAX_JSON_DEPTH, r.MAX_JSON_DEPTH + 1, 5000, 100_000):
        value = _nested(rec, depth - 1)  # the record's object is the first level
        for fn in (decode, r._decode_strict):
            arg = value.encode() if as_bytes else value
            if depth <= r.MAX_JSON_DEPTH:
                record, _ = fn("outbound", MSISDN, arg)
                assert record.recipient == "a@b.c"
                continue
            with pytest.raises(BadRecord) as info:
                fn("outbound", MSISDN, arg)
            assert info.value.code == r.INVALID_JSON
            assert f"more than {r.MAX_JSON_DEPTH}" in info.value.reason


def test_brackets_in_strings_and_unclosed_brackets_do_not_count_as_nesting():
    rec = mail("a@b.c")
    deep_text = rec.value[:-1] + ', "future": "' + "[{" * 5000 + '\\"]"}'
    record, _ = decode("outbound", MSISDN, deep_text)
    assert record.recipient == "a@b.c"
    with pytest.raises(BadRecord) as info:
        decode("outbound", MSISDN, _nested(rec, 5000, closed=False))
    assert info.value.code == r.INVALID_JSON


@pytest.mark.parametrize("when", ["0001-01-01T00:00:00.000+00:01", "9999-12-31T23:59:59.000-00:01"])
def test_event_times_outside_years_0001_to_9999_in_utc_are_bad_event_times(when):
    for rec in (mail("a@b.c", when), change("contract_ended", when)):
        with pytest.raises(BadRecord) as info:
            _decode(rec)
        assert info.value.code == r.BAD_EVENT_TIME
        assert "0001-9999" in info.value.reason


@pytest.mark.parametrize(
    "recipient", ["anna.schmidt@gmx.de", "4917612345678", "+49 176 12345678", "+4917612345678\n", "+0123456789", "+"]
)
def test_an_sms_recipient_must_be_e164(recipient):
    rec = mail(recipient, channel="sms")
    for fn in (decode, r._decode_strict):
        with pytest.raises(BadRecord) as info:
            fn("outbound", rec.key, rec.value)
        assert info.value.code == r.INVALID_RECORD
        assert "sms" in info.value.reason and "E.164" in info.value.reason
        # the reason repeats no recipient: it is the same for all of them
        assert info.value.reason == (
            "notification: the recipient of an sms must be the E.164 number it went to, like +4917612345678"
        )


def test_e164_sms_recipients_and_any_email_recipient_are_accepted():
    for rec in (mail("+4915198765432", channel="sms"), mail("+12345678", channel="sms"), mail("+4915198765432")):
        record, _ = decode("outbound", rec.key, rec.value)
        assert record.recipient == rec.event["recipient"]


# Free text over its cap (detectors.text) is cut when decoded, on both paths.

_LONG = {
    "event_id": ("ev-", 256),
    "message_id": ("msg-", 256),
    "contract_id": ("K-", 256),
    "customer_id": ("C-", 256),
    "brand": ("brand-", 128),
    "template": ("tpl-", 128),
    "sender": ("mailer-", 128),
    "smtp_status": ("5.1.1 ", 128),
}


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["outbound", "delivery", "contract_started", "holder_changed", "email_changed"]),
    st.sampled_from(sorted(_LONG)),
    st.sampled_from([-1, 0, 1, 600_000]),
    st.sampled_from(["x", "ä", "\u0001", "€"]),
)
def test_free_text_over_its_cap_is_cut_when_decoded_and_never_within_it(kind, field, over, char):
    rec = {"outbound": mail("a@b.c", customer_id="C-1", contract_id="K-1"), "delivery": delivery("m-1")}.get(
        kind
    ) or change(kind, email="a@b.c")
    value = json.loads(rec.value)
    if field not in value:
        return
    prefix, cap = _LONG[field]
    value[field] = prefix + char * (cap - len(prefix) + over)
    data = json.dumps(value)
    topic_kind = "changes" if kind not in ("outbound", "delivery") else kind
    record, _ = decode(topic_kind, MSISDN, data)
    got = getattr(record, field)
    if over <= 0:
        assert got == value[field]
    else:
        assert len(got) == cap and got.startswith(prefix) and "…[truncated" in got
    assert _outcome(decode, topic_kind, MSISDN, data) == _outcome(r._decode_strict, topic_kind, MSISDN, data)
