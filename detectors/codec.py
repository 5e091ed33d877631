"""The stored form of engine state: a number's state and an address's links, as bytes.

Written and read only here (the worker's tables, streams/tablestore.py, hold these bytes).
A `NumberCodec` is what a store keeps: its msgpack encoder and decoder and its memos of
encoded and decoded change logs are its own, so two stores (or two engines' stores) share
nothing. `encode_number`, `decode_number`, `encode_links`, `decode_links` are the same
forms without memos, for one-off use (tests, size measurements).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import msgspec

from detectors.holdings import Change
from detectors.state import Fired, Link, Mark, NumberState, Past, Sent

# States and link lists are stored in a compact binary form (see the format versions below),
# written and read only here. Everything round-trips exactly; what makes it small:
#
# - Times are integer µs and stay exact: each is stored as the signed difference
#   to the time stored before it (a link list's or change log's first time is
#   from 0), in ms when that difference is a whole number of ms (the contract's example
#   precision) and in µs otherwise, as a zigzag varint. A year apart costs 5
#   bytes, an hour 3, instead of msgpack's 9.
# - Strings are interned per stored value: a repeat (a contract id on each of its
#   changes) is a back-reference of one byte. A first
#   occurrence is kept exactly, in the smallest of these lossless forms: a
#   canonical lower-case UUID as 16 bytes, lower-case hex of even length (the
#   msisdn_ref) as its bytes, a prefix and a run of decimal digits (`K-29296629`,
#   `C-0140516`: leading zeros kept) as the prefix (itself interned) and an
#   integer, else UTF-8. No id is hashed or shortened: every id may be quoted in
#   an alert, so none is lossy and there is no collision to reason about.
# - Address hashes are interned likewise.
# - Enum-like strings of the contract (brands, templates) are pre-seeded in
#   every string table, so even their first occurrence is one byte.
#
# That form is used for what changes only with a contract change (a few times a
# year): link lists, and a number's change log. The rest of a number's state
# (sent notifications, pattern marks, seen event ids, flags, max_t) changes at
# almost every record, so it is written by msgspec, whose C encoder costs a
# fraction of this one's pure-Python work per flush. A number's state (format
# version 3) is: the tag, the change log's length (varint), the change log,
# then the msgpack array [sent, bounces, bounce_hot, ports, port_hot, seen,
# max_t] (Sent and Mark as arrays, times as msgpack integers). NumberCodec keeps
# each number's bytes up to the end of its change log and reuses them while the
# log is equal. (Version 2 wrote everything in the compact form, seen event ids
# and marks as references into the change log: 558 instead of ~600 B per number,
# but ~15 µs of Python per flush instead of ~2.)
#
# A value starts with a tag byte of its kind and must be consumed exactly;
# anything else (truncated, foreign, garbage) raises StateDecodeError.


class StateDecodeError(ValueError):
    """Stored bytes that are not a state or link list this codec wrote."""


_NUMBER_TAG: Final = 0xA4  # format version 3 (0xA1, 0xA3: versions 1 and 2, refused)
_LINKS_TAG: Final = 0xA2  # format version 1
# Append only, never reorder (a stored back-reference is an index here).
_SEEDED: Final = (
    "o2",
    "blau",
    "eplus",
    "contract_info",
    "topup_reminder",
    "cancellation_confirmation",
    "invoice",
)
_SEED_TABLE: Final = {s: i for i, s in enumerate(_SEEDED)}
# String forms (low 3 bits of a string's header varint).
_RAW: Final = 0
_REF: Final = 1
_DIGITS: Final = 2
_UUID: Final = 3
_HEX: Final = 4
_HEX_CHARS: Final = "0123456789abcdef"
_DIGIT_CHARS: Final = "0123456789"
_DIGIT_SET: Final = frozenset(_DIGIT_CHARS)
_MAX_DIGITS: Final = 38  # longer digit runs are stored as UTF-8 (bounds what a decoder builds)
_MAX_VARINT_SHIFT: Final = 140
# Change header bits (above them: the change type)
_C_CUSTOMER: Final = 1
_C_BRAND: Final = 2
_C_ADDR: Final = 4
_C_SAME_CONTRACT: Final = 8
# Link header bits
_L_BRAND: Final = 1
_L_END: Final = 2
_L_END_EVENT: Final = 4
_L_SINCE_IS_START: Final = 8
_L_SINCE_EVENT_IS_START: Final = 16
# the end type (a varint, detectors.holdings' code) follows the end event id. Added in place, without
# a new format version: links written before carry no such flag and decode as before, with
# end_type None (a decoder older than the flag refuses a link that has it: "unknown link flags")
_L_END_TYPE: Final = 32
_L_FLAGS: Final = 64  # every flag bit below this


def number_key(ref: str) -> bytes:
    """The table key of a number: its msisdn_ref's bytes (hex -> 12 raw bytes), else UTF-8."""
    if len(ref) % 2 == 0 and ref and not ref.strip(_HEX_CHARS):
        return bytes.fromhex(ref)
    return ref.encode()


# The codec is written for CPython speed: plain functions over a bytearray and
# an offset (no per-field method calls), the common one-byte cases inline.


def _put_uint(out: bytearray, v: int) -> None:
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)  # a negative value raises ValueError here


def _put_time(out: bytearray, d: int) -> None:
    """A time difference in µs: zigzag, then one bit for the unit (0: ms, 1: µs)."""
    if d % 1000:
        v = ((d << 2) if d >= 0 else ((-d << 2) - 2)) | 1
    else:
        d //= 1000
        v = (d << 2) if d >= 0 else ((-d << 2) - 2)
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)


def _put_text(out: bytearray, strs: dict[str, int], s: str) -> None:
    idx = strs.get(s)
    if idx is None:
        _put_new_text(out, strs, s)
    elif idx < 16:
        out.append(idx << 3 | _REF)
    else:
        _put_uint(out, idx << 3 | _REF)


def _put_new_text(out: bytearray, strs: dict[str, int], s: str) -> None:
    """A string not yet in the value's table, in its smallest lossless form."""
    n = len(s)
    if n == 36 and s[8] == "-" and s[13] == "-" and s[18] == "-" and s[23] == "-":
        h = s[:8] + s[9:13] + s[14:18] + s[19:23] + s[24:]
        if not h.strip(_HEX_CHARS):
            out.append(_UUID)
            out += bytes.fromhex(h)
            strs[s] = len(strs)
            return
    if n and not n & 1 and not s.strip(_HEX_CHARS):
        _put_uint(out, n << 2 | _HEX)  # (n // 2 bytes) << 3
        out += bytes.fromhex(s)
        strs[s] = len(strs)
        return
    prefix = s.rstrip(_DIGIT_CHARS)
    digits = n - len(prefix)
    if 0 < digits <= _MAX_DIGITS:
        out.append(digits << 3 | _DIGITS) if digits < 16 else _put_uint(out, digits << 3 | _DIGITS)
        _put_text(out, strs, prefix)
        _put_uint(out, int(s[len(prefix) :]))
        strs[s] = len(strs)
        return
    b = s.encode()
    m = len(b)
    if m < 16:
        out.append(m << 3)  # | _RAW
    else:
        _put_uint(out, m << 3 | _RAW)
    out += b
    strs[s] = len(strs)


def _put_addr(out: bytearray, addrs: dict[bytes, int], a: bytes) -> None:
    idx = addrs.get(a)
    if idx is not None:
        _put_uint(out, idx << 1 | 1)
        return
    n = len(a)
    if n < 64:
        out.append(n << 1)
    else:
        _put_uint(out, n << 1)
    out += a
    addrs[a] = len(addrs)


def encode_number(state: NumberState) -> bytes:
    """A number's state in the stored form (see above); NumberCodec.encode without its memos."""
    return _log_head(state.changes) + msgspec.msgpack.encode(_hot(state))


def _hot(state: NumberState) -> tuple[Any, ...]:
    """The parts of a number's state msgspec writes (see _Hot): the 7 of before contract 1.1, then
    those of 1.1 up to the last that is not at its default (the bytes of a state that has none
    of the later parts are the bytes it had before they were added)."""
    head = (state.sent, state.bounces, state.bounce_hot, state.ports, state.port_hot, state.seen, state.max_t)
    if state.cut is not None:
        return (*head, state.past, state.fired, state.masked, state.restated, state.cut)
    if state.restated:
        return (*head, state.past, state.fired, state.masked, state.restated)
    if state.past or state.fired or state.masked:
        return (*head, state.past, state.fired, state.masked)
    return head


def _state(changes: list[Change], hot: _Hot) -> NumberState:
    return NumberState(
        changes,
        hot.sent,
        hot.bounces,
        hot.bounce_hot,
        hot.ports,
        hot.port_hot,
        hot.seen,
        hot.max_t,
        hot.past,
        hot.fired,
        hot.masked,
        hot.restated,
        hot.cut,
    )


def _log_head(changes: list[Change]) -> bytes:
    """The tag, the change log's length and the change log."""
    log = bytearray()
    _encode_changes(log, changes)
    head = bytearray(_NUMBER_HEAD)
    _put_uint(head, len(log))
    head += log
    return bytes(head)


class NumberCodec:
    """The stored form of number states, for a store that writes them again and again (the
    worker's table): encode_number and decode_number with memos that are this codec's own.

    A number's state is re-encoded at every flush that finds it dirty, while its change log
    changes a few times a year: the bytes up to the end of the log are kept per number and
    reused while the log is equal (compared by value, so any change, in place or not, is
    seen); the rest is one msgpack encoding. A number read by this codec's `decode` brings its
    log's bytes along (`_decoded`), so its first flush after a read need not encode the log
    either. Same bytes as encode_number; same values as decode_number.
    """

    __slots__ = ("_decoded", "_encoder", "_hot_decoder", "_memo", "decoded_max", "max_entries")

    def __init__(self, max_entries: int = 100_000, decoded_max: int = 65_536) -> None:
        self.max_entries = max_entries
        self.decoded_max = decoded_max
        self._memo: dict[str, tuple[tuple[Change, ...], bytes]] = {}
        # Change logs this codec decoded, with the bytes they were decoded from, by the identity
        # of the decoded list (each entry holds the list, so the identity stays its own).
        self._decoded: dict[int, tuple[list[Change], tuple[Change, ...], bytes]] = {}
        self._encoder = msgspec.msgpack.Encoder()
        self._hot_decoder = msgspec.msgpack.Decoder(_Hot)

    def encode(self, ref: str, state: NumberState) -> bytes:
        changes = tuple(state.changes)
        memo = self._memo.get(ref)
        if memo is not None and memo[0] == changes:
            head = memo[1]
        else:
            decoded = self._decoded.pop(id(state.changes), None)
            if decoded is not None and decoded[0] is state.changes and decoded[1] == changes:
                head = decoded[2]
            else:
                head = _log_head(state.changes)
            if memo is None and len(self._memo) >= self.max_entries:
                del self._memo[next(iter(self._memo))]
            self._memo[ref] = (changes, head)
        return head + self._encoder.encode(_hot(state))

    def decode(self, data: bytes) -> NumberState:
        """decode_number, remembering the log's bytes for this codec's `encode` (see above)."""
        changes, end, data, hot = _decode_number(data, self._hot_decoder.decode)
        decoded = self._decoded
        if len(decoded) >= self.decoded_max:
            decoded.clear()
        decoded[id(changes)] = (changes, tuple(changes), data[:end])
        return _state(changes, hot)

    def forget(self, ref: str) -> None:
        self._memo.pop(ref, None)


_NUMBER_HEAD: Final = bytes((_NUMBER_TAG,))
_LINKS_HEAD: Final = bytes((_LINKS_TAG,))


class _Hot(msgspec.Struct, array_like=True, gc=False):
    """The hot parts of a number's state: an array of sent, bounces, bounce_hot, ports, port_hot, seen,
    max_t, then (contract 1.1, the correction horizon) past, fired, masked, restated (written as
    msgspec writes a Change: a few a number, for the horizon only), cut (None unless a budget cut
    within the horizon). A state is written without its trailing parts at their defaults (_hot):
    one with none of the 1.1 parts has the bytes of format version 3 before them, and such bytes
    decode with the defaults: the format stays version 3."""

    sent: list[Sent]
    bounces: list[Mark]
    bounce_hot: bool
    ports: list[Mark]
    port_hot: bool
    seen: list[Mark]
    max_t: int
    past: list[Past] = msgspec.field(default_factory=list)
    fired: list[Fired] = msgspec.field(default_factory=list)
    masked: str = ""
    restated: list[Change] = msgspec.field(default_factory=list)
    cut: int | None = None


def _encode_changes(out: bytearray, changes: list[Change]) -> None:
    """The change log (its first time absolute, so its bytes depend on the log alone)."""
    strs = dict(_SEED_TABLE)
    put = out.append
    addrs: dict[bytes, int] = {}
    n = len(changes)
    if n < 0x80:
        put(n)
    else:
        _put_uint(out, n)
    cursor = 0
    contract: str | None = None
    for c in changes:
        t, event_id, customer, brand, a = c.t, c.event_id, c.customer_id, c.brand, c.addr
        same = c.contract_id == contract
        head = (
            c.type << 4
            | (_C_CUSTOMER if customer is not None else 0)
            | (_C_BRAND if brand is not None else 0)
            | (_C_ADDR if a is not None else 0)
            | (_C_SAME_CONTRACT if same else 0)
        )
        if 0 <= head < 0x80:
            put(head)
        else:
            _put_uint(out, head)
        _put_time(out, t - cursor)
        cursor = t
        _put_text(out, strs, event_id)
        if not same:
            contract = c.contract_id
            _put_text(out, strs, contract)
        if customer is not None:
            _put_text(out, strs, customer)
        if brand is not None:
            _put_text(out, strs, brand)
        if a is not None:
            i = addrs.get(a)
            if i is not None and i < 64:
                put(i << 1 | 1)
            else:
                _put_addr(out, addrs, a)


# ---- reading: each reader takes the bytes and an offset, returns the value and the next offset


def _get_uint(data: bytes, pos: int) -> tuple[int, int]:
    b = data[pos]
    if b < 0x80:
        return b, pos + 1
    return _get_uint_rest(data, pos + 1, b)


def _get_uint_rest(data: bytes, pos: int, b: int) -> tuple[int, int]:
    """The rest of a varint whose first byte b (>= 0x80) is before pos."""
    v = b & 0x7F
    shift = 7
    while True:
        b = data[pos]
        pos += 1
        v |= (b & 0x7F) << shift
        if b < 0x80:
            return v, pos
        shift += 7
        if shift > _MAX_VARINT_SHIFT:
            raise StateDecodeError(f"varint longer than {_MAX_VARINT_SHIFT} bits at byte {pos}")


def _get_time(data: bytes, pos: int) -> tuple[int, int]:
    v = data[pos]
    if v < 0x80:
        pos += 1
    else:
        v, pos = _get_uint_rest(data, pos + 1, v)
    z = v >> 1
    d = (z >> 1) if not z & 1 else -((z + 1) >> 1)
    return (d if v & 1 else d * 1000), pos


def _get_text(data: bytes, pos: int, strs: list[str]) -> tuple[str, int]:
    h = data[pos]
    if h < 0x80:
        pos += 1
        form = h & 7
        if form == _REF:
            arg = h >> 3
            if arg >= len(strs):
                raise StateDecodeError(f"string back-reference {arg} beyond the {len(strs)} known")
            return strs[arg], pos
        if form == _RAW:
            end = pos + (h >> 3)
            if end > len(data):
                raise StateDecodeError(f"value truncated: {h >> 3} bytes wanted at byte {pos} of {len(data)}")
            s = data[pos:end].decode()
            strs.append(s)
            return s, end
        if form == _DIGITS and h > 7:  # a short digit run after a one-byte prefix (the common id forms)
            p = data[pos]
            if p < 0x80 and p & 7 == _REF:
                p >>= 3
                if p >= len(strs):
                    raise StateDecodeError(f"string back-reference {p} beyond the {len(strs)} known")
                prefix = strs[p]
                pos += 1
            else:
                prefix, pos = _get_text(data, pos, strs)
            v = data[pos]
            if v < 0x80:
                pos += 1
            else:
                v, pos = _get_uint_rest(data, pos + 1, v)
            text = str(v)
            n = h >> 3
            if len(text) > n or prefix[-1:] in _DIGIT_SET:
                raise StateDecodeError("digit run does not fit its length or its prefix ends in a digit")
            s = prefix + text if len(text) == n else prefix + text.zfill(n)
            strs.append(s)
            return s, pos
    else:
        h, pos = _get_uint_rest(data, pos + 1, h)
    return _get_text_form(data, pos, strs, h)


def _take(data: bytes, pos: int, n: int) -> bytes:
    end = pos + n
    if end > len(data):
        raise StateDecodeError(f"value truncated: {n} bytes wanted at byte {pos} of {len(data)}")
    return data[pos:end]


def _get_text_form(data: bytes, pos: int, strs: list[str], h: int) -> tuple[str, int]:
    """A string whose header h is read (any form; the one-byte ref and raw cases come here when long)."""
    form = h & 7
    arg = h >> 3
    if form == _REF:
        if arg >= len(strs):
            raise StateDecodeError(f"string back-reference {arg} beyond the {len(strs)} known")
        return strs[arg], pos
    if form == _RAW:
        s = _take(data, pos, arg).decode()
        pos += arg
    elif form == _HEX:
        if arg == 0:
            raise StateDecodeError("empty hex string form")
        s = _take(data, pos, arg).hex()
        pos += arg
    elif form == _DIGITS:
        if not 0 < arg <= _MAX_DIGITS:
            raise StateDecodeError(f"digit run of {arg} digits")
        prefix, pos = _get_text(data, pos, strs)
        value, pos = _get_uint(data, pos)
        text = str(value)
        if len(text) > arg or prefix.rstrip(_DIGIT_CHARS) != prefix:
            raise StateDecodeError("digit run does not fit its length or its prefix ends in a digit")
        s = prefix + text.zfill(arg)
    elif form == _UUID and arg == 0:
        x = _take(data, pos, 16).hex()
        pos += 16
        s = f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"
    else:
        raise StateDecodeError(f"unknown string form {form}")
    strs.append(s)
    return s, pos


def _get_addr(data: bytes, pos: int, addrs: list[bytes]) -> tuple[bytes, int]:
    h = data[pos]
    if h < 0x80:
        pos += 1
    else:
        h, pos = _get_uint_rest(data, pos + 1, h)
    if h & 1:
        idx = h >> 1
        if idx >= len(addrs):
            raise StateDecodeError(f"address back-reference {idx} beyond the {len(addrs)} known")
        return addrs[idx], pos
    a = _take(data, pos, h >> 1)
    addrs.append(a)
    return a, pos + (h >> 1)


def _check_bytes(data: bytes, tag: int, what: str) -> bytes:
    if type(data) is not bytes:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise StateDecodeError(f"{what}: expected bytes, got {type(data).__name__}")
        data = bytes(data)
    if not data or data[0] != tag:
        first = f"0x{data[0]:02x}" if data else "nothing"
        raise StateDecodeError(f"{what}: starts with {first}, not the tag 0x{tag:02x} of this format")
    return data


def decode_number(data: bytes) -> NumberState:
    """The inverse of encode_number; StateDecodeError for anything it did not write."""
    changes, _, _, hot = _decode_number(data, _decode_hot)
    return _state(changes, hot)


def _decode_hot(data: memoryview) -> _Hot:
    return msgspec.msgpack.decode(data, type=_Hot)


def _decode_number(data: bytes, decode_hot: Callable[[memoryview], _Hot]) -> tuple[list[Change], int, bytes, _Hot]:
    """A number state's change log, where it ends, the bytes (as bytes) and the hot parts."""
    try:
        data = _check_bytes(data, _NUMBER_TAG, "number state")
        n = data[1]
        if n < 0x80:
            pos = 2
        else:
            n, pos = _get_uint_rest(data, 2, n)
        end = pos + n
        if end > len(data):
            raise StateDecodeError(f"number state: change log of {n} bytes truncated")
        changes = _decode_changes(data, pos, end)
        hot = decode_hot(memoryview(data)[end:])
    except StateDecodeError:
        raise
    except (IndexError, ValueError, UnicodeDecodeError, msgspec.DecodeError) as err:
        raise StateDecodeError(f"number state: corrupt or truncated ({err})") from None
    return changes, end, data, hot


def _decode_changes(data: bytes, pos: int, end: int) -> list[Change]:
    """The change log in data[pos:end] (as _encode_changes writes it), consumed exactly."""
    get_text = _get_text
    strs = list(_SEEDED)
    addrs: list[bytes] = []
    changes: list[Change] = []
    cursor = 0
    contract: str | None = None
    n, pos = _get_uint(data, pos)
    for _ in range(n):
        head = data[pos]
        if head < 0x80:
            pos += 1
        else:
            head, pos = _get_uint_rest(data, pos + 1, head)
        v = data[pos]  # the time (as _get_time)
        if v < 0x80:
            pos += 1
        else:
            v, pos = _get_uint_rest(data, pos + 1, v)
        z = v >> 1
        d = (z >> 1) if not z & 1 else -((z + 1) >> 1)
        t = cursor = cursor + (d if v & 1 else d * 1000)
        event_id, pos = get_text(data, pos, strs)
        if not head & _C_SAME_CONTRACT:
            contract, pos = get_text(data, pos, strs)
        elif contract is None:
            raise StateDecodeError("number state: first change refers to a previous contract")
        customer: str | None
        if head & _C_CUSTOMER:
            customer, pos = get_text(data, pos, strs)
        else:
            customer = None
        brand: str | None
        if head & _C_BRAND:
            brand, pos = get_text(data, pos, strs)
        else:
            brand = None
        a: bytes | None
        if head & _C_ADDR:
            a, pos = _get_addr(data, pos, addrs)
        else:
            a = None
        changes.append(Change(t, head >> 4, event_id, contract, customer, brand, a))
    if pos != end:
        raise StateDecodeError(f"number state: change log of {end - pos:+} bytes more than it says")
    return changes


def encode_links(links: list[Link]) -> bytes:
    """One address's links in the stored form (see above)."""
    out = bytearray(_LINKS_HEAD)
    strs = dict(_SEED_TABLE)
    n = len(links)
    if n < 0x80:
        out.append(n)
    else:
        _put_uint(out, n)
    cursor = 0
    for k in links:
        start, since, end, brand, end_event_id = k.start, k.since, k.end, k.brand, k.end_event_id
        end_type = k.end_type
        start_event_id = k.start_event_id
        since_is_start = since == start
        since_event_is_start = k.since_event_id == start_event_id
        out.append(
            (_L_BRAND if brand is not None else 0)
            | (_L_END if end is not None else 0)
            | (_L_END_EVENT if end_event_id is not None else 0)
            | (_L_SINCE_IS_START if since_is_start else 0)
            | (_L_SINCE_EVENT_IS_START if since_event_is_start else 0)
            | (_L_END_TYPE if end_type is not None else 0)
        )
        _put_text(out, strs, k.msisdn_ref)
        _put_text(out, strs, k.customer_id)
        _put_text(out, strs, k.contract_id)
        if brand is not None:
            _put_text(out, strs, brand)
        _put_time(out, start - cursor)
        cursor = start
        _put_text(out, strs, start_event_id)
        if not since_is_start:
            _put_time(out, since - start)
        if not since_event_is_start:
            _put_text(out, strs, k.since_event_id)
        if end is not None:
            _put_time(out, end - since)
        if end_event_id is not None:
            _put_text(out, strs, end_event_id)
        if end_type is not None:
            _put_uint(out, end_type)
    return bytes(out)


def decode_links(data: bytes) -> list[Link]:
    """The inverse of encode_links; StateDecodeError for anything it did not write."""
    try:
        return _decode_links(_check_bytes(data, _LINKS_TAG, "address links"))
    except StateDecodeError:
        raise
    except (IndexError, ValueError, UnicodeDecodeError) as err:
        raise StateDecodeError(f"address links: corrupt or truncated ({err})") from None


def _decode_links(data: bytes) -> list[Link]:
    get_text = _get_text
    get_time = _get_time
    strs = list(_SEEDED)
    out: list[Link] = []
    cursor = 0
    n, pos = _get_uint(data, 1)
    for _ in range(n):
        head = data[pos]
        if head >= _L_FLAGS:
            raise StateDecodeError(f"address links: unknown link flags {head}")
        ref, pos = get_text(data, pos + 1, strs)
        customer, pos = get_text(data, pos, strs)
        contract, pos = get_text(data, pos, strs)
        brand: str | None
        if head & _L_BRAND:
            brand, pos = get_text(data, pos, strs)
        else:
            brand = None
        d, pos = get_time(data, pos)
        start = cursor = cursor + d
        start_event_id, pos = get_text(data, pos, strs)
        if head & _L_SINCE_IS_START:
            since = start
        else:
            d, pos = get_time(data, pos)
            since = start + d
        if head & _L_SINCE_EVENT_IS_START:
            since_event_id = start_event_id
        else:
            since_event_id, pos = get_text(data, pos, strs)
        end: int | None
        if head & _L_END:
            d, pos = get_time(data, pos)
            end = since + d
        else:
            end = None
        end_event_id: str | None
        if head & _L_END_EVENT:
            end_event_id, pos = get_text(data, pos, strs)
        else:
            end_event_id = None
        end_type: int | None
        if head & _L_END_TYPE:
            end_type, pos = _get_uint(data, pos)
        else:
            end_type = None
        out.append(
            Link(
                ref,
                customer,
                contract,
                brand,
                since,
                since_event_id,
                start,
                start_event_id,
                end,
                end_event_id,
                end_type,
            )
        )
    if pos != len(data):
        raise StateDecodeError(f"address links: {len(data) - pos} bytes left over after the value")
    return out
