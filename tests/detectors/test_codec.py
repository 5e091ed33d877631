"""The stored form of states and address links: exact round trips, loud failures (hypothesis)."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detectors.codec import (
    NumberCodec,
    StateDecodeError,
    decode_links,
    decode_number,
    encode_links,
    encode_number,
    number_key,
)
from detectors.holdings import Change
from detectors.state import Fired, Link, Mark, NumberState, Past, Sent

# Ids in every form the codec treats specially, and in none.
IDS = st.one_of(
    st.text(max_size=14),
    st.uuids().map(str),
    st.uuids().map(lambda u: str(u).upper()),  # not canonical: kept as text
    st.binary(min_size=1, max_size=14).map(bytes.hex),
    st.tuples(st.text(max_size=4), st.text("0123456789", min_size=1, max_size=45)).map("".join),
    st.sampled_from(["o2", "blau", "invoice", "e4", "C-0140516", "K-29296629", "0", "00", "", "-1"]),
)
# µs times: whole ms (the common case), any µs, far past and future, negative
TIMES = st.one_of(
    st.integers(-(2**62), 2**62).map(lambda t: t - t % 1000),
    st.integers(-(2**63), 2**64),
    st.integers(1_700_000_000_000_000, 1_800_000_000_000_000),
)
# The hot parts (sent, marks, max_t) are msgpack integers: 64 bits, signed or not.
HOT_TIMES = st.one_of(
    st.integers(-(2**62), 2**62).map(lambda t: t - t % 1000),
    st.integers(-(2**63), 2**64 - 1),
    st.integers(1_700_000_000_000_000, 1_800_000_000_000_000),
)
ADDRS = st.one_of(st.binary(min_size=12, max_size=12), st.binary(max_size=20))


@st.composite
def changes(draw, times: st.SearchStrategy[int] = TIMES) -> Change:
    return Change(
        draw(times),
        draw(st.one_of(st.integers(0, 7), st.integers(0, 10_000))),
        draw(IDS),
        draw(IDS),
        draw(st.none() | IDS),
        draw(st.none() | IDS),
        draw(st.none() | ADDRS),
    )


@st.composite
def number_states(draw) -> NumberState:
    log = sorted(draw(st.lists(changes(), max_size=8)), key=Change.sort_key)
    if log and draw(st.booleans()):  # the same address and contract again, as the engine writes them
        c = log[0]
        log.append(Change(c.t + 1, 5, draw(IDS), c.contract_id, None, None, c.addr))
    sent = draw(st.lists(st.builds(Sent, HOT_TIMES, IDS, IDS, st.booleans(), IDS, st.booleans()), max_size=4))
    mark = st.builds(Mark, HOT_TIMES, IDS)
    return NumberState(
        log,
        sent,
        draw(st.lists(mark, max_size=4)),
        draw(st.booleans()),
        draw(st.lists(mark, max_size=4)),
        draw(st.booleans()),
        draw(st.lists(mark, max_size=6)),
        draw(HOT_TIMES),
        *(draw(horizon_parts()) if draw(st.booleans()) else ()),
    )


@st.composite
def horizon_parts(draw) -> tuple[list[Past], list[Fired], str, list[Change], int | None]:
    """The parts of contract 1.1 (the correction horizon): past, fired, masked, restated, cut."""
    past = st.builds(
        Past, HOT_TIMES, st.integers(1, 2), IDS, IDS, IDS, IDS, ADDRS, IDS, IDS,
        st.none() | IDS, st.none() | IDS, st.none() | IDS,
    )  # fmt: skip
    return (
        draw(st.lists(past, max_size=3)),
        draw(st.lists(st.builds(Fired, HOT_TIMES, st.integers(0, 8), IDS), max_size=3)),
        draw(st.just("") | IDS),
        draw(st.lists(changes(HOT_TIMES), max_size=2)),  # (msgpack: 64-bit times)
        draw(st.none() | HOT_TIMES),
    )


@st.composite
def links(draw) -> list[Link]:
    out = []
    for _ in range(draw(st.integers(0, 4))):
        start = draw(TIMES)
        start_eid = draw(IDS)
        since = start if draw(st.booleans()) else draw(TIMES)
        end = draw(st.none() | TIMES)
        out.append(
            Link(
                draw(IDS),
                draw(IDS),
                draw(IDS),
                draw(st.none() | IDS),
                since,
                start_eid if draw(st.booleans()) else draw(IDS),
                start,
                start_eid,
                end,
                draw(st.none() | IDS),
                draw(st.none() | st.integers(0, 6)),
            )
        )
    return out


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(number_states())
def test_any_number_state_round_trips_exactly(state):
    data = encode_number(state)
    assert decode_number(data) == state
    assert NumberCodec().encode("r", state) == data


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(number_states(), changes())
def test_the_codec_memo_sees_every_change_of_the_log(state, extra):
    codec = NumberCodec()
    assert codec.encode("r", state) == encode_number(state)
    assert codec.encode("r", state) == encode_number(state)  # from the memo
    state.add_change(extra)
    assert codec.encode("r", state) == encode_number(state)
    if state.changes:
        state.changes[0] = extra  # replaced in place, same length
        assert codec.encode("r", state) == encode_number(state)
    assert decode_number(codec.encode("r", state)) == state


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(number_states(), st.data())
def test_the_codec_memo_sees_every_change_of_every_section(state, data):
    """Each section the codec reuses is checked by value, in place changes included."""
    codec = NumberCodec()
    assert codec.encode("r", state) == encode_number(state)
    mark = data.draw(st.builds(Mark, HOT_TIMES, IDS))
    edits = [
        lambda: state.seen.append(mark),
        lambda: state.ports.append(mark),
        lambda: state.bounces.insert(0, mark),
        lambda: setattr(state, "max_t", mark.t),
        lambda: setattr(state, "port_hot", not state.port_hot),
        lambda: state.sent.append(Sent(mark.t, "m", mark.event_id, True, "invoice")),
        lambda: setattr(state.sent[0], "alerted", not state.sent[0].alerted),  # in place
        lambda: state.sent.pop(0),
        lambda: state.add_change(Change(mark.t, 5, mark.event_id, "K-1", None, None, b"x" * 12)),
    ]
    for i in data.draw(st.lists(st.integers(0, len(edits) - 1), max_size=6)):
        if state.sent or i < 6 or i == 8:
            edits[i]()
        assert codec.encode("r", state) == encode_number(state)
    assert decode_number(codec.encode("r", state)) == state


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(number_states(), changes(), st.booleans())
def test_a_decoded_number_brings_its_log_bytes_to_the_codec(state, extra, edit):
    """A number read from the store, then flushed: the codec reuses the bytes it was read from
    only while its log is as read (in place changes included)."""
    codec = NumberCodec()
    decoded = codec.decode(encode_number(state))
    assert decoded == state
    decoded.seen.append(Mark(1, "new"))
    if edit and decoded.changes:
        decoded.changes[0] = extra  # in place, same length
    elif edit:
        decoded.add_change(extra)
    assert codec.encode("r", decoded) == encode_number(decoded)
    assert codec.encode("r", decoded) == encode_number(decoded)
    assert decode_number(codec.encode("r", decoded)) == decoded


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(links())
def test_any_link_list_round_trips_exactly(value):
    assert decode_links(encode_links(value)) == value


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.binary(max_size=80), st.binary(max_size=80).map(lambda b: b"\xa4" + b)))
def test_garbage_fails_loudly_or_is_a_value_that_round_trips(data):
    for decode, encode in ((decode_number, encode_number), (decode_links, encode_links)):
        try:
            value = decode(data)
        except StateDecodeError:
            continue
        assert decode(encode(value)) == value  # type: ignore[operator]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(number_states(), links())
def test_truncated_or_extended_values_fail_loudly(state, value):
    for data, decode in ((encode_number(state), decode_number), (encode_links(value), decode_links)):
        for cut in range(len(data)):
            with pytest.raises(StateDecodeError):
                decode(data[:cut])
        with pytest.raises(StateDecodeError):
            decode(data + b"\x00")


def test_the_previous_forms_and_the_wrong_kind_are_refused():
    state = NumberState([Change(1_000, 3, "e1", "K-1", "C-1", "o2", b"a" * 12)], max_t=1_000)
    with pytest.raises(StateDecodeError, match="tag"):
        decode_number(msgspec.msgpack.encode(state))
    for old_tag in (0xA1, 0xA3):  # compact format versions 1 and 2
        with pytest.raises(StateDecodeError, match="tag"):
            decode_number(bytes([old_tag]) + encode_number(state)[1:])
    with pytest.raises(StateDecodeError, match="tag"):
        decode_links(encode_number(state))
    with pytest.raises(StateDecodeError, match="tag"):
        decode_number(encode_links([]))


def test_the_stored_form_is_compact():
    """A typical holding: in the change log ids, µs times and hashes cost what they must, repeats one byte."""
    t = 1_750_000_000_000_000
    addr = bytes(range(12))
    state = NumberState(
        [
            Change(t, 3, "e1", "K-29296629", "C-0140516", "blau", addr),
            Change(t + 86_400_000_000, 6, "e2", "K-29296629", None, None, addr),
            Change(t + 90 * 86_400_000_000, 0, "e3", "K-29296629"),
        ],
        seen=[Mark(t + 90 * 86_400_000_000, "e3")],
        max_t=t + 90 * 86_400_000_000,
    )
    data = encode_number(state)
    # tag 1, log length 1; the log 57: count 1, first change 39 (time 7, ids 2+7+7, brand 1,
    # hash 1+12), the others 9 and 8 (time 5, id 2, address back-reference 1); then msgpack 29:
    # array 1, three empty lists 3, two flags 2, the seen mark 1+1+9+3, max_t 9
    assert len(data) == 2 + 57 + 29
    assert len(msgspec.msgpack.encode(state)) > 1.5 * len(data)


def test_number_keys_are_the_ref_bytes():
    assert number_key("60c22e724028627b944b8bc4") == bytes.fromhex("60c22e724028627b944b8bc4")
    assert number_key("not-hex") == b"not-hex"
    assert number_key("ABCD") == b"ABCD"  # upper case is not the ref's form: kept as text


def test_two_codecs_share_no_memo(monkeypatch):
    """A codec's memos are its own: a number another codec decoded (or encoded) is new to it."""
    import detectors.codec

    state = NumberState([Change(1_000, 3, "e1", "K-1", "C-1", "o2", b"a" * 12)], max_t=1_000)
    data = encode_number(state)
    logs: list[int] = []
    log_head = detectors.codec._log_head
    monkeypatch.setattr(detectors.codec, "_log_head", lambda changes: logs.append(1) or log_head(changes))
    mine, theirs = NumberCodec(), NumberCodec()
    decoded = mine.decode(data)
    assert theirs.encode("r", decoded) == data and len(logs) == 1  # theirs encodes the log
    assert mine.encode("r", decoded) == data and len(logs) == 1  # mine has its bytes from decode
    assert NumberCodec().encode("r", decoded) == data and len(logs) == 2
    assert decode_number(data) == state and len(logs) == 2


def test_links_stored_before_the_end_type_decode_with_none_and_new_ones_carry_it():
    """Changelog values written before Link.end_type (these bytes, by the encoder of commit 56d8fd0)
    decode as they did; the end type is one flag bit and a one-byte varint where a holding ended."""
    from detectors.holdings import TYPE_CODES

    before = bytes.fromhex(
        "a202070a18726566010a10432d010a104b2d0109a01f0ce1807d0ce2807d0ce3180a39020a49020a5902a01f0cf1"
    )
    ended = Link("ref1", "C-1", "K-1", "blau", 5_000_000, "e2", 1_000_000, "e1", 9_000_000, "e3")
    still = Link("ref2", "C-2", "K-2", None, 2_000_000, "f1", 2_000_000, "f1", None, None)
    assert decode_links(before) == [ended, still]
    assert encode_links([ended, still]) == before  # no end type: the same bytes as before
    ported = msgspec.structs.replace(ended, end_type=TYPE_CODES["ported_out"])
    data = encode_links([ported, still])
    assert decode_links(data) == [ported, still]
    assert len(data) == len(before) + 1
