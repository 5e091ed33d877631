"""Keyed hashes and masks: the only forms in which numbers and addresses leave the input topics."""

from __future__ import annotations

import hashlib
import re
from typing import Final

import idna

REF_BYTES = 12  # 96 bits: collision-free in practice for billions of values, compact in state

# Masked numbers (alerts, for people) show a fixed, small part of the number: '+',
# up to 5 leading digits (country code and network prefix: +49 176), the last 2, and
# never fewer than 6 hidden digits. 6 is what a German mobile number (+49 1xx and 7
# or 8 digits) has always had hidden here (`+49176******78`: one in a million of the
# numbers with that prefix); shorter numbers give up leading, then trailing digits.
MASK_HIDDEN_DIGITS_MIN: Final = 6
MASK_LEADING_DIGITS_MAX: Final = 5
MASK_TRAILING_DIGITS: Final = 2
MASK_SHOWN_DIGITS_MAX: Final = MASK_LEADING_DIGITS_MAX + MASK_TRAILING_DIGITS


def normalise_address(address: str) -> str:
    """The comparison form (docs/topics.md 2.2): trim, lower-case, the domain as IDNA A-labels.

    `Anna@GMÜX.de` and `anna@xn--gmx-ioa.de` are one address: one domain, written
    as a U-label or as its A-label (RFC 5890), lower-cased, then IDNA 2008
    (`idna.encode`, no UTS 46 mapping). An ASCII domain is taken as it is (no
    IDNA: the common case stays a strip and a lower); a domain IDNA 2008 rejects
    keeps its lower-cased text. The local part is only lower-cased.
    """
    norm = address.strip().lower()
    if norm.isascii():
        return norm
    local, at, domain = norm.rpartition("@")
    if not at or domain.isascii():
        return norm
    try:
        return local + "@" + idna.encode(domain).decode("ascii")
    except idna.IDNAError:
        return norm


class Pseudonymiser:
    """HMAC-SHA256 with a secret key, domain-separated per kind of value, truncated.

    Recent results are memoised in process memory (never persisted, bounded),
    since the same numbers and addresses recur and HMAC is the costliest step
    of a record's processing.
    """

    __slots__ = ("_addresses", "_inner", "_numbers", "_outer")
    CACHE_MAX = 200_000

    def __init__(self, key: bytes) -> None:
        if not key:
            raise ValueError("the pseudonymisation key must not be empty")
        # HMAC (RFC 2104) with its two keyed SHA-256 states computed once: each
        # hash then costs two compressions, not four (hmac.digest redoes the key's)
        block = hashlib.sha256(key).digest() if len(key) > 64 else key
        block = block.ljust(64, b"\0")
        self._inner = hashlib.sha256(bytes([b ^ 0x36 for b in block]))
        self._outer = hashlib.sha256(bytes([b ^ 0x5C for b in block]))
        self._numbers: dict[str, str] = {}
        self._addresses: dict[str, bytes] = {}

    def __repr__(self) -> str:
        return "Pseudonymiser(key=********)"

    def numbers_memo(self) -> dict[str, str]:
        """The live memo msisdn -> ref, for callers that look it up before calling msisdn_ref."""
        return self._numbers

    def addresses_memo(self) -> dict[str, bytes]:
        """The live memo address (as given) -> keyed hash, likewise."""
        return self._addresses

    def learn(self, numbers: dict[str, str], addresses: dict[str, bytes]) -> None:
        """Add results computed elsewhere with the same key (e.g. by another process of one run) to the memos."""
        if len(self._numbers) + len(numbers) > self.CACHE_MAX:
            self._numbers.clear()
        self._numbers.update(numbers)
        if len(self._addresses) + len(addresses) > self.CACHE_MAX:
            self._addresses.clear()
        self._addresses.update(addresses)

    def _hmac(self, data: bytes) -> bytes:
        """HMAC-SHA256(key, data)."""
        inner = self._inner.copy()
        inner.update(data)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()

    def msisdn_ref(self, msisdn: str) -> str:
        """Stable reference of a number (hex), for state keys and alerts."""
        ref = self._numbers.get(msisdn)
        if ref is None:
            if len(self._numbers) >= self.CACHE_MAX:
                self._numbers.clear()
            ref = self._hmac(b"msisdn\x00" + msisdn.encode())[:REF_BYTES].hex()
            self._numbers[msisdn] = ref
        return ref

    def address_ref(self, address: str) -> bytes:
        """Keyed hash of a normalised e-mail address, as held in state."""
        ref = self._addresses.get(address)
        if ref is None:
            if len(self._addresses) >= self.CACHE_MAX:
                self._addresses.clear()
            data = b"email\x00" + normalise_address(address).encode()
            ref = self._hmac(data)[:REF_BYTES]
            self._addresses[address] = ref
        return ref


_HOST = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*\.?")


def mask_msisdn(msisdn: str) -> str:
    """`+4917612345678` -> `+49176******78`, `+491761234` -> `+4******34`, `+12345678` -> `+******78`.

    '+', up to MASK_LEADING_DIGITS_MAX leading and MASK_TRAILING_DIGITS trailing
    characters, and at least MASK_HIDDEN_DIGITS_MIN hidden (all of a short text).
    """
    plus = "+" if msisdn.startswith("+") else ""
    digits = msisdn[len(plus) :]
    n = len(digits)
    shown = max(0, min(MASK_SHOWN_DIGITS_MAX, n - MASK_HIDDEN_DIGITS_MIN))
    last = min(MASK_TRAILING_DIGITS, shown)
    return plus + digits[: shown - last] + "*" * (n - shown) + digits[n - last :]


def mask_address(address: str) -> str:
    """`Jane.Doe@GMX.de` -> `j***@gmx.de`: first character of the local part and the domain.

    The domain is shown only when it is a host name (letters, digits, hyphens and
    dots; IDNA-encoded, see normalise_address): whatever else a recipient field
    carries after its `@` (a name, a phone number) is free text, and masked whole.
    """
    norm = normalise_address(address)
    local, at, domain = norm.rpartition("@")
    if not at:
        return (norm[:1] + "***") if norm else "***"
    if not _HOST.fullmatch(domain):
        return (local[:1] or "") + "***@***"
    return (local[:1] or "") + "***@" + domain
