"""The secured local broker (NOTIFGUARD_KAFKA_SECURE=1 deploy/kafka/start.sh): principals, configs, secrets."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from detectors.settings import Secret, Topics
from streams.kafka_security import KafkaSecurity

ROOT = Path(__file__).resolve().parents[2]
SECURE_BOOTSTRAP = os.environ.get("NOTIFGUARD_SECURE_BOOTSTRAP", "127.0.0.1:19094")
MTLS_BOOTSTRAP = os.environ.get("NOTIFGUARD_SECURE_MTLS_BOOTSTRAP", "127.0.0.1:19096")
SECRETS = Path(os.environ.get("NOTIFGUARD_SECURE_SECRETS", Path.home() / ".cache/notifguard/kafka-data-secure/secrets"))
USERS = ("admin", "worker", "forwarder", "capture", "replay", "check")


def require_secure_broker() -> str:
    """The secured broker's SASL_SSL bootstrap; skips without it, fails if NOTIFGUARD_KAFKA_REQUIRED=1."""
    host, _, port = SECURE_BOOTSTRAP.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            pass
        if (SECRETS / "admin.password").is_file():
            return SECURE_BOOTSTRAP
        msg = f"no secrets of the secured broker in {SECRETS} (NOTIFGUARD_SECURE_SECRETS)"
    except OSError:
        msg = (
            f"no secured Kafka broker at {SECURE_BOOTSTRAP} "
            "(start one with NOTIFGUARD_KAFKA_SECURE=1 deploy/kafka/start.sh)"
        )
    if os.environ.get("NOTIFGUARD_KAFKA_REQUIRED") == "1":
        pytest.fail(msg)
    pytest.skip(msg)


def password(user: str) -> str:
    return (SECRETS / f"{user}.password").read_text().strip()


def security(user: str) -> KafkaSecurity:
    return KafkaSecurity(
        security_protocol="SASL_SSL",
        sasl_username=user,
        sasl_password=Secret(password(user)),
        ssl_cafile=str(SECRETS / "ca.pem"),
    )


def kafka_env(user: str, **over: str) -> dict[str, str]:
    """NOTIFGUARD_KAFKA_* for `user` over SASL_SSL, the password from its file; `over` replaces settings."""
    values = {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_username": user,
        "sasl_password_file": str(SECRETS / f"{user}.password"),
        "ssl_cafile": str(SECRETS / "ca.pem"),
        **over,
    }
    return {f"NOTIFGUARD_KAFKA_{k.upper()}": v for k, v in values.items()}


def config_file(path: Path, topics: Topics, kafka: dict[str, str]) -> Path:
    """A settings file with these topic names and this [kafka] table."""
    lines = [
        "[topics]",
        *(f'{k} = "{v}"' for k, v in vars(topics).items()),
        "[kafka]",
        *(f'{k} = "{v}"' for k, v in kafka.items()),
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def sasl_config(path: Path, topics: Topics, user: str) -> Path:
    return config_file(
        path,
        topics,
        {
            "security_protocol": "SASL_SSL",
            "sasl_username": user,
            "sasl_password_file": str(SECRETS / f"{user}.password"),
            "ssl_cafile": str(SECRETS / "ca.pem"),
        },
    )


def mtls_config(path: Path, topics: Topics) -> Path:
    """Mutual TLS as User:notifguard-mtls (the client certificate's CN)."""
    return config_file(
        path,
        topics,
        {
            "security_protocol": "SSL",
            "ssl_cafile": str(SECRETS / "ca.pem"),
            "ssl_certfile": str(SECRETS / "notifguard-mtls.crt"),
            "ssl_keyfile": str(SECRETS / "notifguard-mtls.key"),
        },
    )


def notifguard(log: Path, *args: str, timeout: float = 120, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run `notifguard ARGS` (log level INFO) to completion; its exit status and output (also in `log`)."""
    with open(log, "wb") as out:
        done = subprocess.run(
            [sys.executable, "-m", "streams.cli", "--log-level", "INFO", *args],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            env={**os.environ, **(env or {})},
            check=False,
        )
    return done.returncode, log.read_text(errors="replace")


def secrets() -> list[str]:
    """Every password of the broker's users and every private key's body."""
    out = [password(u) for u in USERS]
    for key in SECRETS.glob("*.key"):
        out += [line for line in key.read_text().splitlines() if line and not line.startswith("-----")][:3]
    return out


def assert_no_secret(logs: Iterable[Path], extra: Iterable[str] = ()) -> None:
    """No log line holds a secret (nor its first half, in case one was cut)."""
    needles = [*secrets(), *extra]
    needles += [s[: len(s) // 2] for s in needles if len(s) >= 16]
    for log in logs:
        text = log.read_text(errors="replace")
        assert text, f"{log} is empty: nothing was checked"
        for needle in needles:
            assert needle not in text, f"a secret appears in {log}"


class _Alertmanager(BaseHTTPRequestHandler):
    server: Any

    def do_GET(self) -> None:  # /api/v2/status
        self._answer()

    def do_POST(self) -> None:  # /api/v2/alerts
        import json

        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self._answer():
            self.server.alerts.extend(json.loads(body))

    def _answer(self) -> bool:
        ok = self.headers.get("Authorization") == self.server.authorization
        self.server.unauthorized += 0 if ok else 1
        self.send_response(200 if ok else 401)
        self.end_headers()
        self.wfile.write(b"{}")
        return ok

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def https_alertmanager(authorization: str) -> Iterator[Any]:
    """An HTTPS Alertmanager stand-in taking alerts only with this Authorization header (`.url`, `.alerts`)."""
    # Its certificate is the broker's, signed by the test CA.
    server: Any = ThreadingHTTPServer(("127.0.0.1", 0), _Alertmanager)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(SECRETS / "broker.pem"))
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    server.alerts, server.unauthorized, server.authorization = [], 0, authorization
    server.url = f"https://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def wait_for(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)
