"""One security configuration (settings file, NOTIFGUARD_KAFKA_*, secret files) for every Kafka client."""

from __future__ import annotations

import logging

import pytest

from detectors.settings import Secret
from streams.config import load_kafka_security, load_settings, load_worker_config
from streams.forward import Forwarder, alertmanager_authorization
from streams.kafka_security import (
    KafkaSecurity,
    client_kwargs,
    faust_settings,
    security_from,
)

PASSWORD = "s3cret-Pa55word-never-shown"


def _config(tmp_path, body: str):
    path = tmp_path / "notifguard.toml"
    path.write_text(body)
    return path


def test_the_kafka_table_and_the_environment_give_one_configuration_for_tools_and_worker(tmp_path):
    secret = tmp_path / "password"
    secret.write_text(PASSWORD + "\n")  # as `openssl rand` or an editor writes it
    path = _config(
        tmp_path,
        f"""
grace_s = 10
[kafka]
security_protocol = "sasl_ssl"
sasl_mechanism = "SCRAM-SHA-256"
sasl_username = "from-file"
sasl_password_file = "{secret}"
ssl_cafile = "/etc/ca.pem"
[worker]
bootstrap = "kafka:9093"
""",
    )
    env = {"NOTIFGUARD_KAFKA_SASL_USERNAME": "worker"}
    tool = load_kafka_security(path, env)
    worker = load_worker_config(path, env)
    assert worker.kafka == tool
    assert (tool.security_protocol, tool.sasl_mechanism, tool.sasl_username) == ("SASL_SSL", "SCRAM-SHA-256", "worker")
    assert tool.sasl_password.reveal() == PASSWORD and tool.ssl_cafile == "/etc/ca.pem" and tool.ssl_check_hostname
    assert load_settings(path, env).grace_s == 10  # the rules ignore the [kafka] table
    assert load_kafka_security(None, {}) == KafkaSecurity()  # PLAINTEXT, as before


def test_a_secret_shows_in_no_repr_describe_or_error(tmp_path, caplog):
    sec = security_from(
        {
            "security_protocol": "SASL_SSL",
            "sasl_username": "worker",
            "sasl_password": PASSWORD,
            "ssl_key_password": PASSWORD,
        },
        {},
    )
    config = load_worker_config(
        None,
        {
            "NOTIFGUARD_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "NOTIFGUARD_KAFKA_SASL_USERNAME": "w",
            "NOTIFGUARD_KAFKA_SASL_PASSWORD": PASSWORD,
        },
    )
    creds = faust_settings(sec)["broker_credentials"]
    shown = [repr(sec), str(sec), sec.describe(), repr(config), repr(creds)]
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("t").info("config %s %r", config, sec)
    assert all(PASSWORD not in text for text in [*shown, caplog.text])
    assert "worker" in sec.describe()


def test_secret_files_and_bad_settings_are_errors_that_name_the_setting_not_the_secret(tmp_path):
    secret = tmp_path / "pw"
    secret.write_text(PASSWORD)
    bad = [
        (
            {
                "security_protocol": "SASL_SSL",
                "sasl_username": "u",
                "sasl_password": PASSWORD,
                "sasl_password_file": str(secret),
            },
            "both set",
        ),
        (
            {"security_protocol": "SASL_SSL", "sasl_username": "u", "sasl_password_file": str(tmp_path / "no")},
            "cannot read",
        ),
        ({"security_protocol": "SASL_SSL", "sasl_username": "u"}, "needs sasl_username and sasl_password"),
        ({"security_protocol": "TLS"}, "security_protocol must be one of"),
        (
            {
                "security_protocol": "SASL_SSL",
                "sasl_mechanism": "GSSAPI",
                "sasl_username": "u",
                "sasl_password": PASSWORD,
            },
            "sasl_mechanism must be one of",
        ),
        ({"ssl_cafile": "/ca.pem"}, "security_protocol is PLAINTEXT"),
        ({"security_protocol": "SSL", "ssl_certfile": "/c.pem"}, "go together"),
        ({"security_protocol": "SSL", "ssl_check_hostname": "maybe"}, "true or false"),
        ({"sasl_passwd": "x"}, "unknown kafka settings: sasl_passwd"),
    ]
    for section, message in bad:
        with pytest.raises(ValueError, match=message) as err:
            security_from(section, {})
        assert PASSWORD not in str(err.value)
    sec = security_from(
        {},
        {
            "NOTIFGUARD_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "NOTIFGUARD_KAFKA_SASL_USERNAME": "u",
            "NOTIFGUARD_KAFKA_SASL_PASSWORD_FILE": str(secret),
        },
    )
    assert sec.sasl_password == Secret(PASSWORD)


def test_one_function_turns_the_settings_into_client_arguments(tmp_path):
    import ssl

    assert client_kwargs(KafkaSecurity()) == {"security_protocol": "PLAINTEXT"}
    assert faust_settings(KafkaSecurity()) == {}
    sasl = KafkaSecurity(security_protocol="SASL_SSL", sasl_username="u", sasl_password=Secret(PASSWORD))
    kw = client_kwargs(sasl)
    assert (kw["sasl_mechanism"], kw["sasl_plain_username"], kw["sasl_plain_password"]) == (
        "SCRAM-SHA-512",
        "u",
        PASSWORD,
    )
    assert isinstance(kw["ssl_context"], ssl.SSLContext) and kw["ssl_context"].check_hostname
    assert kw["ssl_context"].verify_mode == ssl.CERT_REQUIRED
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    auth = credentials_to_aiokafka_auth(faust_settings(sasl)["broker_credentials"])
    assert (auth["security_protocol"], auth["sasl_mechanism"], auth["sasl_plain_password"]) == (
        "SASL_SSL",
        "SCRAM-SHA-512",
        PASSWORD,
    )
    off = KafkaSecurity(security_protocol="SSL", ssl_check_hostname=False)
    assert client_kwargs(off)["ssl_context"].check_hostname is False
    assert client_kwargs(off)["ssl_context"].verify_mode == ssl.CERT_REQUIRED  # the chain is still checked
    with pytest.raises(ValueError, match="cannot be loaded"):
        client_kwargs(KafkaSecurity(security_protocol="SSL", ssl_cafile=str(tmp_path / "missing.pem")))


def test_alertmanager_credentials_come_from_files_and_only_over_https(tmp_path):
    token = tmp_path / "token"
    token.write_text(PASSWORD + "\n")
    basic = tmp_path / "basic"
    basic.write_text(f"forwarder:{PASSWORD}")
    assert alertmanager_authorization(str(token), None) == Secret(f"Bearer {PASSWORD}")
    assert alertmanager_authorization(None, str(basic)).reveal().startswith("Basic ")
    assert alertmanager_authorization(None, None) is None
    with pytest.raises(ValueError, match="https:// only"):
        Forwarder("http://am:9093", authorization=Secret("Bearer x"))
    with pytest.raises(ValueError, match="user:password"):
        alertmanager_authorization(None, str(token))


def test_the_readmes_production_configurations_are_accepted(tmp_path):
    import re
    import tomllib
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    production = readme[readme.index("## Production") : readme.index("## Design")]
    blocks = re.findall(r"```toml\n(.*?)```", production, re.S)
    assert len(blocks) == 2
    protocols = set()
    for block in blocks:
        kafka = tomllib.loads(block)["kafka"]
        local = {k: str(tmp_path / "secret") if k.endswith("password_file") else v for k, v in kafka.items()}
        (tmp_path / "secret").write_text("pw")
        protocols.add(security_from(local, {}).security_protocol)
    assert protocols == {"SASL_SSL", "SSL"}
