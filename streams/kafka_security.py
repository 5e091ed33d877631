"""How every Kafka client of notifguard connects: TLS, SASL and their secrets, from one configuration.

Settings come from the `[kafka]` table of the settings file and `NOTIFGUARD_KAFKA_*`
variables (which win); a secret can be given as a file (`sasl_password_file`,
`ssl_key_password_file`: how Kubernetes mounts secrets). `client_kwargs` is the one
place the settings become client arguments: kafka-python (capture, replay, check,
forward-alerts, the admin client) and aiokafka take the same ones; `faust_settings`
gives the worker's Faust app the same connection. Secrets are `Secret`s: never in
repr, logs or errors.
"""

from __future__ import annotations

import dataclasses
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from detectors.settings import Secret

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN")
_ENV_PREFIX = "NOTIFGUARD_KAFKA_"
_SECRETS = ("sasl_password", "ssl_key_password")


@dataclass(frozen=True)
class KafkaSecurity:
    """The security settings of a Kafka connection (PLAINTEXT unless configured)."""

    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = "SCRAM-SHA-512"
    sasl_username: str = ""
    sasl_password: Secret = field(default_factory=lambda: Secret(""))
    # The CA bundle that signed the brokers' certificates; empty: the system's trust store.
    ssl_cafile: str = ""
    # The client's certificate and key (mutual TLS), PEM; the key may be encrypted.
    ssl_certfile: str = ""
    ssl_keyfile: str = ""
    ssl_key_password: Secret = field(default_factory=lambda: Secret(""))
    # The broker's certificate must name the host the client connected to (off only
    # for brokers reached by an address their certificates do not carry).
    ssl_check_hostname: bool = True

    def __post_init__(self) -> None:
        if self.security_protocol not in PROTOCOLS:
            raise ValueError(
                f"kafka security_protocol must be one of {', '.join(PROTOCOLS)}, not {self.security_protocol!r}"
            )
        if self.uses_sasl:
            if self.sasl_mechanism not in MECHANISMS:
                raise ValueError(
                    f"kafka sasl_mechanism must be one of {', '.join(MECHANISMS)}, not {self.sasl_mechanism!r}"
                )
            if not self.sasl_username or not self.sasl_password.reveal():
                raise ValueError(
                    f"kafka security_protocol {self.security_protocol} needs sasl_username and "
                    "sasl_password (or sasl_password_file)"
                )
        if bool(self.ssl_certfile) != bool(self.ssl_keyfile):
            raise ValueError("kafka ssl_certfile and ssl_keyfile go together (mutual TLS)")
        if not self.uses_tls and (self.ssl_cafile or self.ssl_certfile):
            raise ValueError(
                f"kafka ssl_* files are set but security_protocol is {self.security_protocol}: use SSL or SASL_SSL"
            )

    @property
    def uses_tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol.startswith("SASL_")

    def describe(self) -> str:
        """One line for logs and errors: protocol, mechanism and user, never a secret."""
        if self.uses_sasl:
            return f"{self.security_protocol} {self.sasl_mechanism} as {self.sasl_username}"
        if self.ssl_certfile:
            return f"{self.security_protocol} with client certificate {self.ssl_certfile}"
        return self.security_protocol


PLAINTEXT = KafkaSecurity()


def security_from(section: Mapping[str, Any], env: Mapping[str, str]) -> KafkaSecurity:
    """The `[kafka]` table of a settings file with NOTIFGUARD_KAFKA_* variables on top."""
    names = {f.name for f in dataclasses.fields(KafkaSecurity)}
    allowed = names | {f"{s}_file" for s in _SECRETS}
    unknown = set(section) - allowed
    if unknown:
        raise ValueError(f"unknown kafka settings: {', '.join(sorted(unknown))}")
    values: dict[str, Any] = dict(section)
    for name in allowed:
        raw = env.get(_ENV_PREFIX + name.upper())
        if raw is not None:
            values[name] = raw
    kwargs: dict[str, Any] = {}
    for name in _SECRETS:
        path = values.pop(f"{name}_file", None)
        if path and values.get(name):
            raise ValueError(f"kafka {name} and {name}_file are both set: give one")
        if path:
            values[name] = _read_secret(str(path), name)
        if name in values:
            kwargs[name] = Secret(str(values.pop(name)))
    for name, raw in values.items():
        if name == "ssl_check_hostname":
            kwargs[name] = parse_boolean(f"kafka {name}", raw)
        else:
            kwargs[name] = str(raw).strip().upper() if name in ("security_protocol", "sasl_mechanism") else str(raw)
    return KafkaSecurity(**kwargs)


def _read_secret(path: str, name: str) -> str:
    try:
        with open(path, encoding="utf-8") as fh:
            value = fh.read().rstrip("\r\n")
    except OSError as err:
        raise ValueError(f"kafka {name}_file {path}: cannot read it ({err.strerror})") from None
    if not value:
        raise ValueError(f"kafka {name}_file {path} is empty")
    return value


def parse_boolean(name: str, raw: Any) -> bool:
    """A TOML boolean, or an environment variable's true/false, 1/0, yes/no, on/off (every setting's)."""
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name} must be true or false, not {raw!r}")


def ssl_context(sec: KafkaSecurity) -> ssl.SSLContext | None:
    """The TLS context of a connection (certificates always verified), or None without TLS."""
    if not sec.uses_tls:
        return None
    try:
        ctx = ssl.create_default_context(cafile=sec.ssl_cafile or None)
        ctx.check_hostname = sec.ssl_check_hostname
        if sec.ssl_certfile:
            ctx.load_cert_chain(sec.ssl_certfile, sec.ssl_keyfile, password=sec.ssl_key_password.reveal() or None)
    except (OSError, ssl.SSLError) as err:
        files = ", ".join(f for f in (sec.ssl_cafile, sec.ssl_certfile, sec.ssl_keyfile) if f) or "system trust store"
        raise ValueError(f"kafka TLS files ({files}) cannot be loaded: {_reason(err)}") from None
    return ctx


def _reason(err: BaseException) -> str:
    return getattr(err, "strerror", None) or getattr(err, "reason", None) or type(err).__name__


def client_kwargs(sec: KafkaSecurity) -> dict[str, Any]:
    """The connection arguments of a kafka-python or aiokafka client (producer, consumer, admin)."""
    kwargs: dict[str, Any] = {"security_protocol": sec.security_protocol}
    if sec.uses_tls:
        kwargs["ssl_context"] = ssl_context(sec)
    if sec.uses_sasl:
        kwargs.update(
            sasl_mechanism=sec.sasl_mechanism,
            sasl_plain_username=sec.sasl_username,
            sasl_plain_password=sec.sasl_password.reveal(),
        )
    return kwargs


def faust_settings(sec: KafkaSecurity) -> dict[str, Any]:
    """The faust.App settings that give its consumer, producer and admin client this connection."""
    import faust

    if sec.uses_sasl:
        return {
            "broker_credentials": faust.SASLCredentials(
                username=sec.sasl_username,
                password=sec.sasl_password.reveal(),
                mechanism=sec.sasl_mechanism,
                ssl_context=ssl_context(sec),
            )
        }
    if sec.uses_tls:
        return {"broker_credentials": faust.SSLCredentials(ssl_context(sec))}
    return {}


def admin_client(bootstrap: str, sec: KafkaSecurity, **kw: Any) -> Any:
    """A kafka-python admin client (topics, ACLs) with this connection."""
    from kafka import KafkaAdminClient

    return KafkaAdminClient(bootstrap_servers=bootstrap, client_id="notifguard-admin", **client_kwargs(sec), **kw)
