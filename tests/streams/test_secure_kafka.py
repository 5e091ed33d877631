"""Production connections on the secured broker (SASL_SSL with SCRAM, mTLS, StandardAuthorizer): every
client with its own least-privilege principal, and each refusal named at start, nothing acked.

The broker: NOTIFGUARD_KAFKA_SECURE=1 deploy/kafka/start.sh (scripts/test starts it). Each test grants
its principals what streams/acls.py says their role needs, on its own topics, and nothing more.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from detectors.settings import Settings, Topics
from streams.acls import Acl, capture_acls, check_acls, forwarder_acls, grant, replay_acls, worker_acls
from streams.kafka_security import admin_client
from tests.streams.kafka_harness import ROOT, KafkaRun, keys
from tests.streams.secure_harness import (
    MTLS_BOOTSTRAP,
    SECRETS,
    assert_no_secret,
    https_alertmanager,
    kafka_env,
    mtls_config,
    notifguard,
    password,
    require_secure_broker,
    sasl_config,
    security,
    wait_for,
)
from tests.streams.worker.test_kafka import offline, scenario_stream

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


@pytest.fixture(scope="module")
def broker() -> str:
    return require_secure_broker()


def test_over_sasl_ssl_the_worker_gives_the_offline_alerts_and_each_tool_works_with_its_own_principal(broker, tmp_path):
    admin = security("admin")
    run = KafkaRun(broker, tmp_path, security=admin)
    logs: list[Path] = []
    try:
        t = run.topics
        inputs = (t.outbound, t.changes, t.delivery)
        group = f"{run.app_id}-forwarder"
        for principal, acls in [
            ("User:worker", worker_acls(t, run.app_id)),
            ("User:replay", replay_acls(inputs)),
            ("User:capture", capture_acls([t.alerts])),
            ("User:check", check_acls(t)),
            ("User:forwarder", forwarder_acls(t, group)),
            ("User:notifguard-mtls", capture_acls([t.alerts])),
        ]:
            grant(broker, admin, principal, acls)
        envs = scenario_stream()
        expected = keys(offline(envs, tmp_path))  # writes tmp_path/capture.jsonl
        renames = [a for old, new in run.rename.items() for a in ("--rename", f"{old}={new}")]

        logs.append(tmp_path / "replay.log")
        code, out = notifguard(
            logs[-1],
            "replay",
            str(tmp_path / "capture.jsonl"),
            "--bootstrap",
            broker,
            "--config",
            str(sasl_config(tmp_path / "replay.toml", t, "replay")),
            *renames,
        )
        assert code == 0, out
        port = run.start_worker(env=kafka_env("worker"), log_level="INFO")  # every scenario, one worker run
        logs.append(run.workers[-1][2])
        got = run.alerts(lambda a: keys(a) >= expected, timeout=120)
        got = run.alerts(lambda a: False, timeout=2) if keys(got) >= expected else got
        assert keys(got) == expected
        logs.append(tmp_path / "metrics.txt")
        logs[-1].write_text(run.metrics(port))

        for name, bootstrap, config in [
            ("capture", broker, sasl_config(tmp_path / "capture.toml", t, "capture")),
            ("capture-mtls", MTLS_BOOTSTRAP, mtls_config(tmp_path / "mtls.toml", t)),
        ]:
            logs.append(tmp_path / f"{name}.log")
            code, out = notifguard(
                logs[-1],
                "capture",
                "--bootstrap",
                bootstrap,
                "--topics",
                t.alerts,
                "--out",
                str(tmp_path / f"{name}.jsonl"),
                "--config",
                str(config),
            )
            assert code == 0, out
            assert len((tmp_path / f"{name}.jsonl").read_bytes().splitlines()) == len(got)

        logs.append(tmp_path / "check.log")
        code, out = notifguard(
            logs[-1],
            "check",
            "motivating_re_port_leak",
            "--bootstrap",
            broker,
            "--config",
            str(sasl_config(tmp_path / "check.toml", t, "check")),
            "--settle",
            "2",
        )
        assert code == 0 and "OK" in out, out

        token = "bearer-" + password("forwarder")[::-1]
        (tmp_path / "token").write_text(token + "\n")
        with https_alertmanager(f"Bearer {token}") as am:
            logs.append(tmp_path / "forward.log")
            with open(logs[-1], "wb") as out_f:
                proc = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "streams.cli",
                        "--log-level",
                        "INFO",
                        "forward-alerts",
                        "--bootstrap",
                        broker,
                        "--group",
                        group,
                        "--alertmanager",
                        am.url,
                        "--alertmanager-ca",
                        str(SECRETS / "ca.pem"),
                        "--alertmanager-bearer-file",
                        str(tmp_path / "token"),
                        "--config",
                        str(sasl_config(tmp_path / "forwarder.toml", t, "forwarder")),
                    ],
                    cwd=ROOT,
                    stdout=out_f,
                    stderr=subprocess.STDOUT,
                )
                try:
                    dedup = {a["dedup_key"] for a in run.read(t.alerts, lambda a: False, timeout=1)}
                    wait_for(
                        lambda: {a["labels"]["dedup_key"] for a in am.alerts} >= dedup,
                        60,
                        "forward-alerts to post every alert",
                    )
                finally:
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(timeout=30)
            assert am.unauthorized == 0
        assert_no_secret(logs, extra=[token])
    finally:
        run.close()


@pytest.fixture(scope="module")
def refused(broker, tmp_path_factory):
    """A deployment whose inputs hold records, the worker granted all it needs: only what a test breaks fails."""
    run = KafkaRun(broker, tmp_path_factory.mktemp("refused"), security=security("admin"))
    grant(broker, security("admin"), "User:worker", worker_acls(run.topics, run.app_id))
    run.produce(scenario_stream()[:50])
    yield run
    run.close()


def _refused_start(run: KafkaRun, env: dict[str, str], bootstrap: str | None = None) -> tuple[int, str, float]:
    """Start the worker as `env` says; it must stop within seconds and never report ready."""
    env = {**env, **({"NOTIFGUARD_WORKER_BOOTSTRAP": bootstrap} if bootstrap else {})}
    started = time.monotonic()
    port = run.start_worker(env=env, wait=False, log_level="INFO", name=f"refused{len(run.workers)}")
    proc, _, log = run.workers[-1]
    ready = False
    while proc.poll() is None and time.monotonic() - started < 30:
        ready = ready or bool(run.health(port).get("ready"))
        time.sleep(0.2)
    elapsed = time.monotonic() - started
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    assert not ready, "a worker whose connection is refused reported ready"
    admin = admin_client(run.bootstrap, run.security)
    try:
        committed = admin.list_group_offsets({run.app_id: None}).get(run.app_id, {})
    finally:
        admin.close()
    assert not committed, "a refused worker committed offsets"
    assert_no_secret([log])
    return proc.returncode, log.read_text(errors="replace"), elapsed


@pytest.mark.parametrize(
    ("case", "over", "cause"),
    [
        ("wrong password", {"sasl_password_file": "WRONG"}, "SASL SCRAM-SHA-512 authentication as worker failed"),
        ("untrusted CA", {"ssl_cafile": str(SECRETS / "untrusted-ca.pem")}, "the broker's certificate is not trusted"),
        ("hostname mismatch", {}, "hostname mismatch: the broker's certificate does not name localhost"),
    ],
)
def test_a_refused_connection_stops_the_worker_at_start_naming_the_cause(refused, tmp_path, case, over, cause):
    if over.get("sasl_password_file") == "WRONG":
        (tmp_path / "wrong").write_text(password("worker")[::-1])
        over = {"sasl_password_file": str(tmp_path / "wrong")}
    bootstrap = refused.bootstrap.replace("127.0.0.1", "localhost") if case == "hostname mismatch" else None
    code, out, elapsed = _refused_start(refused, kafka_env("worker", **over), bootstrap)
    assert code == 2 and cause in out, out
    assert elapsed < 20


@pytest.mark.parametrize(
    ("case", "drop"),
    [
        ("no read on one input", ("TOPIC", "delivery", "READ")),
        ("no write on the alerts", ("TOPIC", "alerts", "WRITE")),
        ("no consumer group", ("GROUP", "app_id", "READ")),
    ],
)
def test_a_missing_acl_stops_the_worker_at_start_naming_what_and_the_permission(broker, tmp_path, case, drop):
    run = KafkaRun(broker, tmp_path, security=security("admin"))
    try:
        resource, attr, operation = drop
        name = run.app_id if attr == "app_id" else getattr(run.topics, attr)
        acls = [a for a in worker_acls(run.topics, run.app_id) if a != Acl(resource, name, operation)]
        assert len(acls) == len(worker_acls(run.topics, run.app_id)) - 1
        grant(broker, security("admin"), "User:worker", acls)
        run.produce(scenario_stream()[:50])
        code, out, elapsed = _refused_start(run, kafka_env("worker"))
        assert code == 2 and f"{name}: no {operation} permission (missing ACL)" in out, out
        assert elapsed < 20
    finally:
        run.close()


def test_exactly_once_without_its_transactional_id_acl_crashes_before_it_is_ready(broker, tmp_path):
    run = KafkaRun(broker, tmp_path, security=security("admin"))
    try:
        grant(broker, security("admin"), "User:worker", worker_acls(run.topics, run.app_id, exactly_once=False))
        run.produce(scenario_stream()[:50])
        code, out, elapsed = _refused_start(
            run, {**kafka_env("worker"), "NOTIFGUARD_WORKER_PROCESSING_GUARANTEE": "exactly_once"}
        )
        assert code != 0 and "TransactionalIdAuthorizationFailed" in out, out
        assert elapsed < 25
    finally:
        run.close()


def test_a_tool_without_its_acl_exits_at_once_naming_topic_and_permission(broker, tmp_path):
    run = KafkaRun(broker, tmp_path, security=security("admin"))
    try:
        t = run.topics
        grant(broker, security("admin"), "User:forwarder", forwarder_acls(t, "not-the-group"))
        grant(broker, security("admin"), "User:capture", capture_acls([t.alerts]))
        forward = sasl_config(tmp_path / "f.toml", t, "forwarder")
        code, out = notifguard(
            tmp_path / "forward.log",
            "forward-alerts",
            "--bootstrap",
            broker,
            "--config",
            str(forward),
            "--group",
            f"{run.app_id}-fwd",
            "--alertmanager",
            "http://127.0.0.1:9",
        )
        assert code == 2 and f"consumer group {run.app_id}-fwd: no READ permission" in out, out
        capture = sasl_config(tmp_path / "c.toml", t, "capture")
        code, out = notifguard(
            tmp_path / "capture.log",
            "capture",
            "--bootstrap",
            broker,
            "--topics",
            t.alerts,
            t.deadletter,
            "--out",
            str(tmp_path / "x.jsonl"),
            "--config",
            str(capture),
        )
        assert code == 2 and f"{t.deadletter}: no READ permission" in out and f"{t.alerts}:" not in out, out
        assert_no_secret([tmp_path / "forward.log", tmp_path / "capture.log"])
    finally:
        run.close()


def test_a_tool_with_a_wrong_password_exits_at_once_naming_the_cause(broker, tmp_path):
    (tmp_path / "wrong").write_text("not-the-password")
    config = sasl_config(tmp_path / "c.toml", Topics(), "capture")
    config.write_text(config.read_text().replace(str(SECRETS / "capture.password"), str(tmp_path / "wrong")))
    started = time.monotonic()
    code, out = notifguard(
        tmp_path / "capture.log",
        "capture",
        "--bootstrap",
        broker,
        "--topics",
        "x",
        "--out",
        str(tmp_path / "x.jsonl"),
        "--config",
        str(config),
    )
    assert code == 2 and "authentication as capture failed" in out, out
    assert time.monotonic() - started < 15
    assert_no_secret([tmp_path / "capture.log"])


def test_the_readiness_ping_speaks_tls_with_a_client_certificate_to_the_mtls_listener(broker):
    ping = [sys.executable, str(ROOT / "deploy" / "kafka" / "ping.py"), MTLS_BOOTSTRAP, "5", str(SECRETS / "ca.pem")]
    cert = [str(SECRETS / "notifguard-ping.crt"), str(SECRETS / "notifguard-ping.key")]
    assert subprocess.run([*ping, *cert], check=False, timeout=30).returncode == 0
    other_ca = [*ping[:-1], str(SECRETS / "untrusted-ca.pem"), *cert]
    assert subprocess.run(other_ca, check=False, timeout=30).returncode == 1


def test_incidents_run_checks_its_acls_at_start(broker, tmp_path):
    """`incidents run` as a principal with streams.acls.incidents_acls starts; without READ on the alerts, or
    with a wrong password, it exits 2 at once naming the cause (as the other commands do)."""
    import dataclasses

    from streams.acls import incidents_acls
    from streams.incidents import incident_topic_specs
    from streams.topics import ensure_topics

    run = KafkaRun(broker, tmp_path, security=security("admin"))
    try:
        t = dataclasses.replace(run.topics, incidents=f"{run.app_id}-incidents-topic")
        app = f"{run.app_id}-inc"
        # the incidents topic is made by an admin (the principal has no CREATE on it), its members topic by itself
        ensure_topics(
            broker,
            Settings(topics=t),
            app_id=app,
            security=security("admin"),
            specs=incident_topic_specs(Settings(topics=t), app)[:1],
        )
        acls = incidents_acls(t, app)
        grant(broker, security("admin"), "User:replay", [a for a in acls if a != Acl("TOPIC", t.alerts, "READ")])
        config = sasl_config(tmp_path / "i.toml", t, "replay")
        started = time.monotonic()
        code, out = notifguard(
            tmp_path / "denied.log", "incidents", "run", "--bootstrap", broker, "--config", str(config), "--app-id", app
        )
        assert code == 2 and f"{t.alerts}: no READ permission (missing ACL)" in out, out
        assert time.monotonic() - started < 25
        (tmp_path / "wrong").write_text("not-the-password")
        config.write_text(config.read_text().replace(str(SECRETS / "replay.password"), str(tmp_path / "wrong")))
        code, out = notifguard(
            tmp_path / "wrong.log", "incidents", "run", "--bootstrap", broker, "--config", str(config), "--app-id", app
        )
        assert code == 2 and "authentication as replay failed" in out, out
        grant(broker, security("admin"), "User:replay", [Acl("TOPIC", t.alerts, "READ")])
        config = sasl_config(tmp_path / "i.toml", t, "replay")
        with open(tmp_path / "ok.log", "wb") as log:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "streams.cli",
                    "--log-level",
                    "INFO",
                    "incidents",
                    "run",
                    "--bootstrap",
                    broker,
                    "--config",
                    str(config),
                    "--app-id",
                    app,
                ],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_for(
                lambda: f"incidents: {t.alerts} -> {t.incidents}" in (tmp_path / "ok.log").read_text(),
                60,
                "incidents run to start with its ACLs",
            )
            assert proc.poll() is None
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        assert_no_secret([tmp_path / "denied.log", tmp_path / "wrong.log", tmp_path / "ok.log"])
    finally:
        run.close()
