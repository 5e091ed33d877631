"""A real broker, real topics and a real `notifguard worker` process for the integration tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

from detectors.capture import Envelope
from detectors.settings import Settings, Topics
from streams.config import worker_env
from streams.kafka_security import PLAINTEXT, KafkaSecurity, client_kwargs
from streams.topics import address_index_topic

ROOT = Path(__file__).resolve().parents[2]
BOOTSTRAP = os.environ.get("NOTIFGUARD_BOOTSTRAP", "127.0.0.1:19092")


def require_broker() -> str:
    host, _, port = BOOTSTRAP.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return BOOTSTRAP
    except OSError:
        msg = f"no Kafka broker at {BOOTSTRAP} (start one with deploy/kafka/start.sh)"
        if os.environ.get("NOTIFGUARD_KAFKA_REQUIRED") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    raise AssertionError("unreachable")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class KafkaRun:
    """One isolated deployment: its own topic names, consumer group and state."""

    def __init__(
        self, bootstrap: str, tmp: Path, partitions: int = 6, security: KafkaSecurity = PLAINTEXT, **rules: Any
    ) -> None:
        self.bootstrap = bootstrap
        self.security = security  # the harness's own clients (topics, produce, read): an admin's
        self.tmp = tmp
        self.partitions = partitions
        tag = uuid.uuid4().hex[:8]
        self.app_id = f"ngtest-{tag}"
        self.topics = Topics(
            outbound=f"{tag}.notifications.outbound",
            changes=f"{tag}.contracts.changes",
            delivery=f"{tag}.notifications.delivery",
            alerts=f"{tag}.notifguard.alerts",
            deadletter=f"{tag}.notifguard.deadletter",
            incidents=f"{tag}.notifguard.incidents",
        )
        self.rules = {"idle_flush_s": "2", **{k: str(v) for k, v in rules.items()}}
        self.workers: list[tuple[subprocess.Popen[bytes], int, Path]] = []
        from streams.topics import ensure_topics

        ensure_topics(
            bootstrap, Settings(topics=self.topics), partitions=partitions, app_id=self.app_id, security=security
        )
        from streams.incidents import worker_incident_specs

        # the incidents topic is no `<app_id>-` topic: made by the harness's admin, as an operator would
        # (a worker with only its ACLs cannot create it; docs/security.md)
        ensure_topics(
            bootstrap,
            Settings(topics=self.topics),
            app_id=self.app_id,
            specs=worker_incident_specs(Settings(topics=self.topics), self.app_id),
            security=security,
        )
        self._producer: Any = None

    @property
    def rename(self) -> dict[str, str]:
        d = Topics()
        t = self.topics
        return {d.outbound: t.outbound, d.changes: t.changes, d.delivery: t.delivery}

    def env(self, web_port: int) -> dict[str, str]:
        env = dict(os.environ)
        env.update(worker_env(self.topics, self.app_id, self.bootstrap, web_port, self.partitions))
        for k, v in self.rules.items():
            env[f"NOTIFGUARD_{k.upper()}"] = v
        return env

    def start_worker(
        self,
        store: str = "rocksdb://",
        name: str = "w1",
        wait: bool = True,
        module: str = "streams.cli",
        env: dict[str, str] | None = None,
        log_level: str = "WARNING",
    ) -> int:
        """`notifguard worker` (or `module`, taking the same arguments) with this run's environment
        and `env` on top; returns its web port."""
        port = free_port()
        datadir = self.tmp / f"data-{name}"
        log = self.tmp / f"{name}-{len(self.workers)}.log"
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                module,
                "--log-level",
                log_level,
                "worker",
                "--store",
                store,
                "--datadir",
                str(datadir),
                "--web-port",
                str(port),
            ],
            cwd=ROOT,
            env={**self.env(port), **(env or {})},
            stdout=open(log, "wb"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
        )
        self.workers.append((proc, port, log))
        if wait:
            self.wait_ready(port, proc, log)
        return port

    def wait_ready(self, port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"worker exited {proc.returncode}:\n{log.read_text()[-3000:]}")
            if self.health(port).get("ready"):
                return
            time.sleep(0.5)
        raise AssertionError(f"worker not ready after {timeout}s:\n{log.read_text()[-3000:]}")

    @staticmethod
    def health(port: int) -> dict[str, Any]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                return json.loads(r.read())  # type: ignore[no-any-return]
        except urllib.error.HTTPError as err:
            return json.loads(err.read())  # type: ignore[no-any-return]
        except OSError:
            return {}

    @staticmethod
    def metrics(port: int) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            return r.read().decode()

    def produce(self, envelopes: Iterable[Envelope]) -> int:
        from kafka import KafkaProducer

        if self._producer is None:
            self._producer = KafkaProducer(
                bootstrap_servers=self.bootstrap, linger_ms=5, acks="all", **client_kwargs(self.security)
            )
        n = 0
        for env in envelopes:
            topic = self.rename.get(env.topic, env.topic)
            self._producer.send(
                topic,
                key=env.key.encode() if env.key is not None else None,
                value=env.payload.encode() if env.payload is not None else None,
                timestamp_ms=env.ts,
            )
            n += 1
        self._producer.flush()
        return n

    def read(
        self,
        topic: str,
        until: Callable[[list[dict[str, Any]]], bool],
        timeout: float,
        isolation_level: str = "read_uncommitted",
    ) -> list[dict[str, Any]]:
        """Every record of a topic (JSON values), polling until `until(records)` or timeout.

        read_uncommitted by default: the tests see whatever a worker produced,
        aborted transactions included; the exactly-once tests read committed.
        """
        from kafka import KafkaConsumer, TopicPartition

        consumer = KafkaConsumer(
            bootstrap_servers=self.bootstrap,
            enable_auto_commit=False,
            value_deserializer=json.loads,
            consumer_timeout_ms=1000,
            isolation_level=isolation_level,
            **client_kwargs(self.security),
        )
        tps = [TopicPartition(topic, p) for p in range(self.partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                for batch in consumer.poll(timeout_ms=500).values():
                    out.extend(r.value for r in batch)
                if until(out):
                    break
        finally:
            consumer.close()
        return out

    def alerts(self, until: Callable[[list[dict[str, Any]]], bool], timeout: float = 90) -> list[dict[str, Any]]:
        return self.read(self.topics.alerts, until, timeout)

    def kill(self, index: int = -1, sig: int = signal.SIGKILL) -> None:
        proc = self.workers[index][0]
        proc.send_signal(sig)
        proc.wait(timeout=60)

    def close(self) -> None:
        for proc, _, _ in self.workers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
        if self._producer is not None:
            self._producer.close()
        from streams.topics import delete_topics

        try:
            t = self.topics
            delete_topics(
                self.bootstrap,
                [
                    t.outbound,
                    t.changes,
                    t.delivery,
                    t.alerts,
                    t.deadletter,
                    f"{self.app_id}-numbers-changelog",
                    address_index_topic(self.app_id),
                    f"{self.app_id}-relinks",
                    f"{self.app_id}-__assignor-__leader",
                    t.incidents,
                    f"{self.app_id}-incident-alerts",
                    f"{self.app_id}-incidents-members",
                ],
                security=self.security,
            )
        except Exception:
            pass


def keys(alerts: Iterable[Any]) -> set[tuple[str, str, str]]:
    """(kind, trigger event, number ref) of alert dicts or Alert structs."""
    out = set()
    for a in alerts:
        if isinstance(a, dict):
            out.add((a["kind"], a["trigger_event_id"], a["subject"]["msisdn_ref"]))
        else:
            out.add((a.kind, a.trigger_event_id, a.subject.msisdn_ref))
    return out


def committed_offsets(run: KafkaRun) -> int:
    """The offsets the run's consumer group has committed on the input topics, summed: how many
    input records its workers have acked."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=run.bootstrap)
    try:
        offsets = admin.list_group_offsets({run.app_id: None})[run.app_id]
    finally:
        admin.close()
    inputs = {run.topics.outbound, run.topics.changes, run.topics.delivery}
    return sum(meta.offset for tp, meta in offsets.items() if tp.topic in inputs)


def sample(exposition: str, name: str) -> float:
    """The value of an unlabelled series (or one written with its labels) in a worker's /metrics."""
    for line in exposition.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in the worker's metrics")
