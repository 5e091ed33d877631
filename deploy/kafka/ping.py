#!/usr/bin/env python3
"""Checks that a Kafka broker answers requests: ApiVersions, then Metadata.

Standard library only, so start.sh can use it before any venv exists.
Exit 0 when the broker lists at least one live broker in its metadata, else 1.
Usage: ping.py HOST:PORT [timeout_seconds [CA_FILE CERT_FILE KEY_FILE]]
With the three files it speaks TLS with a client certificate (the secured
broker's mTLS listener), verifying the broker's certificate and host name.
"""

from __future__ import annotations

import socket
import ssl
import struct
import sys

CLIENT_ID = b"notifguard-ping"


def _request(sock: socket.socket, api_key: int, version: int, corr: int, body: bytes) -> bytes:
    header = struct.pack(">hhih", api_key, version, corr, len(CLIENT_ID)) + CLIENT_ID
    msg = header + body
    sock.sendall(struct.pack(">i", len(msg)) + msg)
    size = struct.unpack(">i", _recv(sock, 4))[0]
    data = _recv(sock, size)
    if struct.unpack(">i", data[:4])[0] != corr:
        raise RuntimeError("correlation id mismatch")
    return data[4:]


def _recv(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed")
        buf += chunk
    return buf


def ping(host: str, port: int, timeout: float, tls: ssl.SSLContext | None = None) -> int:
    """Returns the number of brokers in the cluster metadata."""
    with socket.create_connection((host, port), timeout=timeout) as raw:
        sock = tls.wrap_socket(raw, server_hostname=host) if tls is not None else raw
        sock.settimeout(timeout)
        # ApiVersions v0 (every broker answers it), to pick a Metadata version.
        data = _request(sock, 18, 0, 1, b"")
        (err,) = struct.unpack(">h", data[:2])
        if err:
            raise RuntimeError(f"ApiVersions error {err}")
        (n,) = struct.unpack(">i", data[2:6])
        ranges = {}
        for i in range(n):
            key, lo, hi = struct.unpack(">hhh", data[6 + 6 * i : 12 + 6 * i])
            ranges[key] = (lo, hi)
        lo, hi = ranges[3]
        version = max(lo, 4)
        if version > min(hi, 8):
            raise RuntimeError(f"no non-flexible Metadata version in {lo}..{hi}")
        # Metadata, all topics (null array), non-flexible encoding (v4..v8).
        body = struct.pack(">i?", -1, False)
        if version >= 8:
            body += struct.pack(">??", False, False)
        data = _request(sock, 3, version, 2, body)
        pos = 4  # throttle_time_ms
        brokers: int = struct.unpack(">i", data[pos : pos + 4])[0]
        return brokers


def main() -> int:
    host, _, port = sys.argv[1].rpartition(":")
    timeout = float(sys.argv[2]) if len(sys.argv) > 2 else 3.0
    tls = None
    if len(sys.argv) > 3:
        tls = ssl.create_default_context(cafile=sys.argv[3])
        tls.load_cert_chain(sys.argv[4], sys.argv[5])
    try:
        return 0 if ping(host, int(port), timeout, tls) > 0 else 1
    except (OSError, RuntimeError, KeyError, struct.error):
        return 1


if __name__ == "__main__":
    sys.exit(main())
