import pytest

from streams.config import load_settings


def test_env_overrides_file_and_types_are_converted(tmp_path):
    conf = tmp_path / "c.toml"
    conf.write_text("grace_s = 10.0\nbounce_burst_threshold = 5\n[topics]\nalerts = 'x.alerts'\n")
    s = load_settings(
        conf,
        env={
            "NOTIFGUARD_GRACE_S": "12.5",
            "NOTIFGUARD_TOPIC_OUTBOUND": "o",
            "NOTIFGUARD_PSEUDONYMISATION_KEY": "s3cret",
        },
    )
    assert s.grace_s == 12.5 and s.bounce_burst_threshold == 5
    assert s.topics.alerts == "x.alerts" and s.topics.outbound == "o"
    assert s.pseudonymisation_key.reveal() == "s3cret" and not s.uses_dev_key
    assert "s3cret" not in repr(s)


def test_defaults_use_the_development_key():
    assert load_settings(env={}).uses_dev_key


def test_unknown_keys_and_bad_values_fail_at_start(tmp_path):
    conf = tmp_path / "c.toml"
    conf.write_text("grace = 10\n")
    with pytest.raises(ValueError, match="unknown settings: grace"):
        load_settings(conf, env={})
    with pytest.raises(ValueError):
        load_settings(env={"NOTIFGUARD_GRACE_S": "-1"})


def test_replication_factor_reaches_the_topics_faust_creates(tmp_path):
    from streams.config import load_worker_config
    from streams.worker import create_app

    conf = tmp_path / "c.toml"
    conf.write_text("[worker]\nreplication_factor = 3\n")
    config = load_worker_config(conf, env={})
    assert config.replication_factor == 3
    assert create_app(config).conf.topic_replication_factor == 3
    assert load_worker_config(None, env={}).replication_factor == 1  # the single local broker
    with pytest.raises(ValueError, match="replication_factor"):
        load_worker_config(None, env={"NOTIFGUARD_WORKER_REPLICATION_FACTOR": "0"})


def test_a_faust_environment_variable_cannot_override_the_worker_s_settings(monkeypatch):
    """Faust's Settings read BROKER_SESSION_TIMEOUT, PROCESSING_GUARANTEE, ... over their arguments:
    set, they would silently replace the settings object's values (an operator's shell, a test)."""
    from streams.config import load_worker_config
    from streams.worker import create_app

    config = load_worker_config(None, env={"NOTIFGUARD_WORKER_SESSION_TIMEOUT_S": "10"})
    assert create_app(config).conf.broker_session_timeout == 10
    monkeypatch.setenv("BROKER_SESSION_TIMEOUT", "45")
    monkeypatch.setenv("PROCESSING_GUARANTEE", "at_least_once")
    with pytest.raises(ValueError, match=r"PROCESSING_GUARANTEE .*BROKER_SESSION_TIMEOUT \(would override broker_sess"):
        create_app(config)


def test_the_worker_refuses_a_faust_or_aiokafka_it_was_not_tested_with():
    from streams.worker import FAUST_TESTED, check_versions

    check_versions(*FAUST_TESTED)
    with pytest.raises(RuntimeError, match=r"faust-streaming 0\.15\.3"):
        check_versions("0.16.0", FAUST_TESTED[1])
    with pytest.raises(RuntimeError, match="aiokafka"):
        check_versions(FAUST_TESTED[0], "0.15.0")
