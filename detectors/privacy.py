"""Keyed hashes and masks: the only forms in which numbers and addresses leave the input topics."""

from __future__ import annotations

import hmac

REF_BYTES = 12  # 96 bits: collision-free in practice for billions of values, compact in state


def normalise_address(address: str) -> str:
    """The spec's comparison form: trim, lower-case the whole address, nothing else."""
    return address.strip().lower()


class Pseudonymiser:
    """HMAC-SHA256 with a secret key, domain-separated per kind of value, truncated."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        if not key:
            raise ValueError("the pseudonymisation key must not be empty")
        self._key = key

    def __repr__(self) -> str:
        return "Pseudonymiser(key=********)"

    def msisdn_ref(self, msisdn: str) -> str:
        """Stable reference of a number (hex), for state keys and alerts."""
        return hmac.digest(self._key, b"msisdn\x00" + msisdn.encode(), "sha256")[:REF_BYTES].hex()

    def address_ref(self, address: str) -> bytes:
        """Keyed hash of a normalised e-mail address, as held in state."""
        data = b"email\x00" + normalise_address(address).encode()
        return hmac.digest(self._key, data, "sha256")[:REF_BYTES]


def mask_msisdn(msisdn: str) -> str:
    """`+4917612345678` -> `+49176******78`: country and network prefix, last two digits."""
    if len(msisdn) <= 8:
        return msisdn[:2] + "*" * max(0, len(msisdn) - 2)
    return msisdn[:6] + "*" * (len(msisdn) - 8) + msisdn[-2:]


def mask_address(address: str) -> str:
    """`Jane.Doe@GMX.de` -> `j***@gmx.de`: first character of the local part and the domain."""
    norm = normalise_address(address)
    local, at, domain = norm.rpartition("@")
    if not at:
        return (norm[:1] + "***") if norm else "***"
    return (local[:1] or "") + "***@" + domain
