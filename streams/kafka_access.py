"""Fail fast, naming the cause: can this client reach, trust, log in to the broker and use its topics?

The Kafka clients retry a failed TLS handshake or SASL login until their timeout and
then say only that they could not bootstrap. `check_connection` does the handshake
and the login itself (standard library: TCP, TLS, SaslHandshake, SaslAuthenticate with
SCRAM or PLAIN) and raises `KafkaAccessError` with what went wrong; `check_topics`
asks the broker (Metadata with the topics' authorized operations) whether the
principal may do what the command needs. Neither reads or writes a record.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import socket
import ssl
import struct
import time
from collections.abc import Mapping, Sequence
from typing import Any

from streams.kafka_security import KafkaSecurity, admin_client, ssl_context

_CLIENT_ID = b"notifguard-access-check"
# Kafka's AclOperation codes: the bit of each in a topic's authorized operations.
OPERATIONS = {"READ": 3, "WRITE": 4, "CREATE": 5, "DESCRIBE": 8}
_HOSTNAME_MISMATCH = (62, 64)  # X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH


class KafkaAccessError(RuntimeError):
    """The client cannot use the broker as configured; the message says why (never a secret)."""

    def __init__(self, message: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


def check_connection(bootstrap: str, sec: KafkaSecurity, timeout: float = 10.0) -> None:
    """Connect, handshake and log in to the first bootstrap server that answers; raise what failed."""
    errors: list[KafkaAccessError] = []
    for addr in (a.strip() for a in bootstrap.split(",") if a.strip()):
        try:
            _check_one(addr, sec, timeout)
            return
        except KafkaAccessError as err:
            if not err.retryable:
                raise
            errors.append(err)
    if not errors:
        raise KafkaAccessError(f"no bootstrap server in {bootstrap!r}")
    raise errors[0]


def _check_one(addr: str, sec: KafkaSecurity, timeout: float) -> None:
    host, _, port = addr.rpartition(":")
    host = host.strip("[]")
    try:
        raw = socket.create_connection((host, int(port)), timeout=timeout)
    except (OSError, ValueError) as err:
        reason = getattr(err, "strerror", None) or str(err)
        raise KafkaAccessError(f"cannot reach the Kafka broker at {addr}: {reason}", retryable=True) from None
    with raw:
        sock: socket.socket = raw
        sock.settimeout(timeout)
        if sec.uses_tls:
            sock = _tls(raw, host, addr, sec)
        try:
            if sec.uses_sasl:
                _sasl(sock, addr, sec)
            else:
                _request(sock, 18, 0, 1, b"")  # ApiVersions: the broker speaks Kafka to us
        except ssl.SSLError as err:
            hint = "" if sec.ssl_certfile else "; does it want a client certificate (ssl_certfile, ssl_keyfile)?"
            raise KafkaAccessError(
                f"TLS: the Kafka broker at {addr} ended the connection ({err.reason or type(err).__name__}){hint}"
            ) from None
        except (OSError, struct.error) as err:
            hint = "; is the listener TLS? security_protocol is " + sec.security_protocol if not sec.uses_tls else ""
            raise KafkaAccessError(
                f"the Kafka broker at {addr} dropped the connection ({type(err).__name__}){hint}"
            ) from None


def _tls(raw: socket.socket, host: str, addr: str, sec: KafkaSecurity) -> socket.socket:
    ctx = ssl_context(sec)
    assert ctx is not None
    try:
        return ctx.wrap_socket(raw, server_hostname=host)
    except ssl.SSLCertVerificationError as err:
        if err.verify_code in _HOSTNAME_MISMATCH:
            raise KafkaAccessError(
                f"TLS to {addr}: hostname mismatch: the broker's certificate does not name {host} "
                f"({err.verify_message}); connect by a name the certificate carries"
            ) from None
        raise KafkaAccessError(
            f"TLS to {addr}: the broker's certificate is not trusted ({err.verify_message}): "
            f"ssl_cafile ({sec.ssl_cafile or 'the system trust store'}) does not hold the CA that signed it"
        ) from None
    except ssl.SSLError as err:
        raise KafkaAccessError(f"TLS handshake with {addr} failed: {err.reason or err}") from None
    except OSError as err:
        raise KafkaAccessError(
            f"TLS handshake with {addr} failed: {err.strerror or type(err).__name__}", retryable=True
        ) from None


def _sasl(sock: socket.socket, addr: str, sec: KafkaSecurity) -> None:
    mech = sec.sasl_mechanism
    data = _request(sock, 17, 1, 1, _string(mech))  # SaslHandshake v1
    err, n = struct.unpack(">hi", data[:6])
    offered, pos = [], 6
    for _ in range(max(n, 0)):
        (size,) = struct.unpack(">h", data[pos : pos + 2])
        offered.append(data[pos + 2 : pos + 2 + size].decode())
        pos += 2 + size
    if err:
        raise KafkaAccessError(
            f"the Kafka broker at {addr} does not offer SASL {mech} "
            f"(it offers {', '.join(offered) or 'none'}; error {err})"
        )
    user, password = sec.sasl_username, sec.sasl_password.reveal()
    if mech == "PLAIN":
        _authenticate(sock, addr, sec, b"\0" + user.encode() + b"\0" + password.encode(), 2)
        return
    digest = hashlib.sha256 if mech == "SCRAM-SHA-256" else hashlib.sha512
    nonce = base64.b64encode(os.urandom(24)).decode()
    name = user.replace("=", "=3D").replace(",", "=2C")
    first_bare = f"n={name},r={nonce}"
    server_first = _authenticate(sock, addr, sec, b"n,," + first_bare.encode(), 2).decode()
    fields = dict(item.split("=", 1) for item in server_first.split(","))
    if not fields.get("r", "").startswith(nonce):
        raise KafkaAccessError(f"SASL {mech} at {addr}: the broker's answer does not continue our nonce")
    salted = hashlib.pbkdf2_hmac(digest().name, password.encode(), base64.b64decode(fields["s"]), int(fields["i"]))
    client_key = hmac.new(salted, b"Client Key", digest).digest()
    final_bare = f"c={base64.b64encode(b'n,,').decode()},r={fields['r']}"
    message = f"{first_bare},{server_first},{final_bare}".encode()
    signature = hmac.new(digest(client_key).digest(), message, digest).digest()
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    final = f"{final_bare},p={base64.b64encode(proof).decode()}"
    server_final = _authenticate(sock, addr, sec, final.encode(), 3).decode()
    server_key = hmac.new(salted, b"Server Key", digest).digest()
    expected = base64.b64encode(hmac.new(server_key, message, digest).digest()).decode()
    if server_final != f"v={expected}":
        raise KafkaAccessError(f"SASL {mech} at {addr}: the broker did not prove it knows the credentials")


def _authenticate(sock: socket.socket, addr: str, sec: KafkaSecurity, token: bytes, corr: int) -> bytes:
    """One SaslAuthenticate v1 round; the broker's answer, or KafkaAccessError with its message."""
    data = _request(sock, 36, 1, corr, struct.pack(">i", len(token)) + token)
    (err,) = struct.unpack(">h", data[:2])
    (size,) = struct.unpack(">h", data[2:4])
    message = data[4 : 4 + size].decode(errors="replace") if size >= 0 else ""
    pos = 4 + max(size, 0)
    (length,) = struct.unpack(">i", data[pos : pos + 4])
    if err:
        raise KafkaAccessError(
            f"SASL {sec.sasl_mechanism} authentication as {sec.sasl_username} failed at {addr}: "
            f"{message or f'error {err}'} (wrong user or password?)"
        )
    return data[pos + 4 : pos + 4 + max(length, 0)]


def _string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack(">h", len(raw)) + raw


def _request(sock: socket.socket, api_key: int, version: int, corr: int, body: bytes) -> bytes:
    header = struct.pack(">hhih", api_key, version, corr, len(_CLIENT_ID)) + _CLIENT_ID
    msg = header + body
    sock.sendall(struct.pack(">i", len(msg)) + msg)
    (size,) = struct.unpack(">i", _recv(sock, 4))
    data = _recv(sock, size)
    if struct.unpack(">i", data[:4])[0] != corr:
        raise ConnectionError("correlation id mismatch")
    return data[4:]


def _recv(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed")
        buf += chunk
    return buf


def check_topics(
    bootstrap: str,
    sec: KafkaSecurity,
    needs: Mapping[str, Sequence[str]],
    groups: Sequence[str] = (),
    timeout: float = 10.0,
    existing: bool = True,
) -> None:
    """Raise KafkaAccessError naming each topic and group this principal may not use (or missing topic)."""
    from kafka.errors import KafkaError

    check_connection(bootstrap, sec, timeout)
    admin = None
    problems = []
    try:
        admin = admin_client(bootstrap, sec, request_timeout_ms=int(timeout * 1000))
        described = {t["name"]: t for t in admin.describe_topics(sorted(needs))}
        problems += [
            f"consumer group {g}: no READ permission (missing ACL)"
            for g in groups
            if not _may_use_group(admin, g, time.monotonic() + timeout)
        ]
    except KafkaError as err:
        raise KafkaAccessError(f"cannot describe the topics at {bootstrap}: {type(err).__name__}") from None
    finally:
        if admin is not None:
            admin.close()
    for name, ops in sorted(needs.items()):
        topic = described.get(name, {})
        code = topic.get("error_code", 3)
        allowed = topic.get("topic_authorized_operations")
        known = isinstance(allowed, int) and allowed >= 0  # INT_MIN: the broker did not say
        denied = [op for op in ops if code == 29 or (code == 0 and known and not allowed & (1 << OPERATIONS[op]))]
        if denied:
            problems.append(f"{name}: no {' or '.join(denied)} permission (missing ACL)")
        elif code == 3 and existing:
            problems.append(f"{name}: does not exist")
        elif code and code != 3:
            problems.append(f"{name}: error {code}")
    if problems:
        who = f" as {sec.sasl_username}" if sec.uses_sasl else ""
        raise KafkaAccessError(f"Kafka at {bootstrap}{who}: " + "; ".join(problems))


def _may_use_group(admin: Any, group: str, deadline: float) -> bool:
    """False if the broker refuses this principal the group, else True (also if no coordinator came)."""
    # On a new cluster the first FindCoordinator makes the offsets topic: the coordinator comes seconds later.
    from kafka.errors import GroupAuthorizationFailedError, RetriableError

    while True:
        try:
            admin.describe_groups([group])  # a group that does not exist yet is no error
            return True
        except GroupAuthorizationFailedError:
            return False
        except RetriableError:  # the coordinator not (yet) available, loading, moved
            if time.monotonic() >= deadline:
                return True
            time.sleep(0.5)
