"""`notifguard worker` refuses a pseudonymisation key anybody can know, before it contacts Kafka."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

import streams.topics
import streams.worker
from detectors.settings import DEV_PSEUDONYMISATION_KEY, Topics
from streams.cli import main
from streams.config import KEY_MIN_BYTES, load_worker_config, worker_env

ROOT = Path(__file__).resolve().parents[2]
PLACEHOLDER = "REPLACE-ME-with-openssl-rand-hex-32"  # deploy/k8s/secret.yaml
GOOD_KEY = "0123456789abcdef" * 4


@pytest.fixture
def no_kafka(monkeypatch):
    """No NOTIFGUARD_* from the caller; a worker that gets past the key check finds no broker."""
    import os

    for name in [n for n in os.environ if n.startswith("NOTIFGUARD_")]:
        monkeypatch.delenv(name)
    asked: list[str] = []

    def no_broker(bootstrap: str, timeout: float = 0, security: object = None) -> bool:
        asked.append(bootstrap)
        return False

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("the worker went on to Kafka")

    monkeypatch.setattr(streams.topics, "wait_for_broker", no_broker)
    monkeypatch.setattr(streams.topics, "ensure_topics", never)
    monkeypatch.setattr(streams.worker, "create_app", never)
    return asked


@pytest.mark.parametrize(
    ("key", "words"),
    [
        (None, "public development key"),
        (DEV_PSEUDONYMISATION_KEY, "public development key"),
        ("k", "shorter than 32 bytes"),
        ("x" * (KEY_MIN_BYTES - 1), "shorter than 32 bytes"),
        ("ü" * 15 + "x", "shorter than 32 bytes"),  # 16 characters, 31 bytes
        (PLACEHOLDER, "placeholder"),
        ("REPLACE-ME with a real key, please", "placeholder"),
    ],
)
def test_a_key_anybody_can_know_stops_the_worker_before_kafka(no_kafka, monkeypatch, capsys, key, words):
    if key is not None:
        monkeypatch.setenv("NOTIFGUARD_PSEUDONYMISATION_KEY", key)
    assert main(["worker", "--bootstrap", "127.0.0.1:9"]) == 2
    assert no_kafka == []
    out, err = capsys.readouterr()
    assert "pseudonymisation key" in err and words in err
    assert "allow_development_key" in err
    if key is not None and len(key) > 1:
        assert key not in out + err


@pytest.mark.parametrize("key", [None, "k", PLACEHOLDER])
@pytest.mark.parametrize("how", ["file", "env"])
def test_allow_development_key_lets_tests_and_demos_start(no_kafka, monkeypatch, tmp_path, capsys, key, how):
    if key is not None:
        monkeypatch.setenv("NOTIFGUARD_PSEUDONYMISATION_KEY", key)
    args = ["worker", "--bootstrap", "127.0.0.1:9"]
    if how == "file":
        conf = tmp_path / "c.toml"
        conf.write_text("[worker]\nallow_development_key = true\n")
        args += ["--config", str(conf)]
    else:
        monkeypatch.setenv("NOTIFGUARD_WORKER_ALLOW_DEVELOPMENT_KEY", "true")
    assert main(args) == 2  # no broker answers: past the key check
    assert no_kafka == ["127.0.0.1:9"]
    assert "no Kafka broker answers" in capsys.readouterr().err


@pytest.mark.parametrize("key", [GOOD_KEY[:KEY_MIN_BYTES], GOOD_KEY, "ü" * 16])
def test_a_secret_of_32_bytes_or_more_passes(no_kafka, monkeypatch, key):
    monkeypatch.setenv("NOTIFGUARD_PSEUDONYMISATION_KEY", key)
    assert main(["worker", "--bootstrap", "127.0.0.1:9"]) == 2
    assert no_kafka == ["127.0.0.1:9"]


def test_the_refusal_as_a_process_sees_it():
    env = {"PATH": "/usr/bin:/bin", "NOTIFGUARD_PSEUDONYMISATION_KEY": "short-key"}
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "streams.cli", "worker", "--bootstrap", "127.0.0.1:9"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,  # (waiting for a broker would take 60 s)
        check=False,
    )
    assert proc.returncode == 2
    assert "pseudonymisation key" in proc.stderr and "short-key" not in proc.stdout + proc.stderr
    assert time.monotonic() - started < 30


def test_the_demo_and_the_test_and_benchmark_workers_allow_the_development_key():
    assert load_worker_config(ROOT / "deploy" / "demo.toml", env={}).allow_development_key
    env = worker_env(Topics(), "app", "127.0.0.1:9", 6066, 1)
    assert load_worker_config(None, env=env).allow_development_key
    assert not load_worker_config(None, env={}).allow_development_key


def test_allow_development_key_takes_booleans_only(tmp_path):
    assert not load_worker_config(None, env={"NOTIFGUARD_WORKER_ALLOW_DEVELOPMENT_KEY": "false"}).allow_development_key
    assert load_worker_config(None, env={"NOTIFGUARD_WORKER_ALLOW_DEVELOPMENT_KEY": "1"}).allow_development_key
    with pytest.raises(ValueError, match="allow_development_key"):
        load_worker_config(None, env={"NOTIFGUARD_WORKER_ALLOW_DEVELOPMENT_KEY": "maybe"})
    conf = tmp_path / "c.toml"
    conf.write_text('[worker]\nallow_development_key = "yes please"\n')
    with pytest.raises(ValueError, match="allow_development_key"):
        load_worker_config(conf, env={})
