"""Benchmark of the Kafka worker against the raw consumer rate, on this machine, in one run.

    .venv/bin/python -m bench.worker_bench [--records 100000] [--json FILE]

Three measurements, each on its own fresh, isolated topics (names and app ids
start with ``wbench-<tag>-``; everything with that prefix is deleted at the end,
also on failure or Ctrl-C):

1. raw: the capture (bench.generate, seeded) is produced to three co-partitioned
   input topics, then read back from the beginning to the end offsets with one
   aiokafka ``AIOKafkaConsumer.getmany`` loop: no group, no commits, no
   decoding, no processing.  The reference rate, best of --raw-runs.
2. worker: the capture is produced to fresh input topics, then one
   ``notifguard worker`` (RocksDB store in a temp datadir) is started on them.
   the records it has read (``consumed`` of /health, the sum of
   ``notifguard_records_consumed_total``) are polled every 0.2 s; the
   sustained rate is measured from the first poll that sees a consumed record
   to the first that sees them all, as is the worker's CPU time
   (/proc/<pid>/stat) over the same interval.
3. latency: a worker with grace 2 s and idle flush 1 s (NOTIFGUARD_GRACE_S,
   NOTIFGUARD_IDLE_FLUSH_S) runs on fresh, empty topics (so it has caught up);
   a fresh capture (another seed) is produced live at half the sustained rate of
   (2): each record's ``event_time`` (JSON payload) and Kafka timestamp are set
   to the wall-clock time it is produced, by three kcat processes (librdkafka,
   C; --live-producer aiokafka for the Python producer, which costs the
   2-core machine ~0.6 of a core at 20k records/s).  A separate process reads the alerts
   topic; for each alert, added latency = (alert consumed, wall time)
   - (produce wall time of its trigger_event_id) - grace.  Only triggers
   produced in the measured window count: a warm-up before it and a tail
   after it (so the watermark keeps moving, as in a live stream) are produced
   but not counted.

Progress goes to stderr; the JSON result and a short table go to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import detectors
from streams.config import worker_env

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "wbench-"
DEFAULT_BOOTSTRAP = os.environ.get("NOTIFGUARD_BOOTSTRAP", "127.0.0.1:19092")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def kafka_version() -> str:
    """The broker version deploy/kafka runs (KAFKA_VERSION, default from common.sh)."""
    if os.environ.get("KAFKA_VERSION"):
        return os.environ["KAFKA_VERSION"]
    with contextlib.suppress(OSError):
        m = re.search(
            r'KAFKA_VERSION="\$\{KAFKA_VERSION:-([^}]+)\}"', (ROOT / "deploy" / "kafka" / "common.sh").read_text()
        )
        if m:
            return m.group(1)
    return "unknown"


def machine_facts() -> dict[str, Any]:
    import aiokafka
    import faust
    import kafka

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cores": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "python": platform.python_version(),
        "kafka": kafka_version(),
        "aiokafka": aiokafka.__version__,
        "kafka_python": kafka.__version__,
        "faust": faust.__version__,
        "platform": platform.platform(),
    }


def code_facts() -> dict[str, Any]:
    """Which code was measured: HEAD, uncommitted files, and a digest of the worker module (read-only git)."""
    import hashlib

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""

    digest = ""
    with contextlib.suppress(OSError):
        h = hashlib.sha256()
        for path in sorted((ROOT / "streams" / "worker").glob("*.py")):
            h.update(path.read_bytes())
        digest = h.hexdigest()[:16]
    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "modified": [line[3:] for line in git("status", "--porcelain", "--untracked-files=no").splitlines()],
        "streams_worker_sha256": digest,
        # the core as the worker it starts loads it (the same tree and NOTIFGUARD_NATIVE: detectors.native)
        "core": "compiled" if detectors.NATIVE else "python",
    }


def load_average() -> float | None:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def require_broker(bootstrap: str) -> None:
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=3):
            return
    except OSError:
        raise SystemExit(
            f"worker_bench: no Kafka broker at {bootstrap} (start one with deploy/kafka/start.sh)"
        ) from None


# ------------------------------------------------------------------ capture


def make_capture(records: int, numbers: int, seed: int, partitions: int) -> list[dict[str, Any]]:
    """The envelopes `python -m bench.generate --records R --numbers N --seed S` writes, in arrival order."""
    from bench.generate import generate

    return list(generate(records, numbers, 365, partitions, seed))


# --------------------------------------------------------------- deployment


def _cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process, in seconds (fields 14 and 15 of /proc/<pid>/stat)."""
    try:
        rest = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")


class Deployment:
    """One isolated set of topics (wbench-<tag>-<name>.*) and the workers on them."""

    def __init__(self, bootstrap: str, tag: str, name: str, partitions: int, tmp: Path) -> None:
        from detectors.settings import Settings, Topics
        from streams.incidents import worker_incident_specs
        from streams.topics import ensure_topics

        self.bootstrap = bootstrap
        self.partitions = partitions
        self.tmp = tmp
        self.app_id = f"{PREFIX}{tag}-{name}"
        a = self.app_id
        self.topics = Topics(
            outbound=f"{a}.notifications.outbound",
            changes=f"{a}.contracts.changes",
            delivery=f"{a}.notifications.delivery",
            alerts=f"{a}.notifguard.alerts",
            deadletter=f"{a}.notifguard.deadletter",
            incidents=f"{a}.notifguard.incidents",
        )
        d, t = Topics(), self.topics
        self.rename = {d.outbound: t.outbound, d.changes: t.changes, d.delivery: t.delivery}
        self.inputs = [t.changes, t.outbound, t.delivery]
        self.workers: list[tuple[subprocess.Popen[bytes], int, Path]] = []
        self.metrics_calls: list[tuple[float, int]] = []  # (seconds, body bytes) of each /health poll
        settings = Settings(topics=self.topics)
        ensure_topics(bootstrap, settings, partitions=partitions, app_id=self.app_id)
        # the workers compute incidents (the default): their feed, members and incidents topics
        ensure_topics(bootstrap, settings, app_id=self.app_id, specs=worker_incident_specs(settings, self.app_id))

    def env(self, web_port: int, rules: dict[str, str]) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFGUARD_")}
        env.update(worker_env(self.topics, self.app_id, self.bootstrap, web_port, self.partitions))
        env.update({f"NOTIFGUARD_{k.upper()}": str(v) for k, v in rules.items()})
        return env

    def start_worker(self, rules: dict[str, str], name: str = "w1") -> tuple[subprocess.Popen[bytes], int, Path]:
        port = free_port()
        logfile = self.tmp / f"{self.app_id}-{name}.log"
        with open(logfile, "wb") as out:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "streams.cli",
                    "--log-level",
                    "WARNING",
                    "worker",
                    "--store",
                    "rocksdb://",
                    "--datadir",
                    str(self.tmp / f"data-{self.app_id}-{name}"),
                    "--web-port",
                    str(port),
                    "--no-create-topics",
                ],
                cwd=ROOT,
                env=self.env(port, rules),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        w = (proc, port, logfile)
        self.workers.append(w)
        return w

    @staticmethod
    def _get(port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def health(self, port: int) -> dict[str, Any]:
        try:
            return json.loads(self._get(port, "/health")[1])  # type: ignore[no-any-return]
        except (OSError, ValueError):
            return {}

    def consumed(self, port: int) -> int | None:
        """Input records the worker has read (its /health `consumed`, the sum of
        notifguard_records_consumed_total); None if it does not answer.

        /health, not /metrics: rendering the whole exposition five times a second
        would cost the measured worker ~2 us of CPU per record at this rate.
        """
        started = time.monotonic()
        try:
            _, body = self._get(port, "/health")
        except OSError:
            return None
        self.metrics_calls.append((time.monotonic() - started, len(body)))
        try:
            return int(json.loads(body)["consumed"])
        except (ValueError, KeyError, TypeError):
            return None

    def wait_ready(self, worker: tuple[subprocess.Popen[bytes], int, Path], timeout: float) -> float:
        _, port, logfile = worker
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            check_alive(worker)
            if self.health(port).get("ready"):
                return time.monotonic() - t0
            time.sleep(0.25)
        raise RuntimeError(f"worker not ready after {timeout:.0f} s:\n{tail(logfile)}")

    def stop_workers(self) -> None:
        for proc, _, _ in self.workers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc, _, _ in self.workers:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=10)


def tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return "(no log)"


def check_alive(worker: tuple[subprocess.Popen[bytes], int, Path]) -> None:
    proc, _, logfile = worker
    if proc.poll() is not None:
        raise RuntimeError(f"worker exited with {proc.returncode}:\n{tail(logfile)}")


def delete_prefixed(bootstrap: str, prefix: str) -> list[str]:
    """Delete every topic whose name starts with `prefix` (ours: inputs, outputs, changelogs, leader topic)."""
    from streams.topics import _admin, delete_topics

    admin = _admin(bootstrap)
    try:
        names = [t for t in admin.list_topics() if t.startswith(prefix)]
    finally:
        admin.close()
    return delete_topics(bootstrap, names) if names else []


def produce_backlog(bootstrap: str, envelopes: Sequence[dict[str, Any]], rename: dict[str, str]) -> float:
    """Produce the capture as it is (original timestamps), keyed (default partitioner); returns seconds."""
    from kafka import KafkaProducer

    producer = KafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=20, batch_size=256 * 1024, client_id="wbench-producer"
    )
    errors: list[BaseException] = []
    t0 = time.monotonic()
    try:
        for env in envelopes:
            key, payload = env.get("key"), env.get("payload")
            producer.send(
                rename[env["topic"]],
                key=key.encode() if key is not None else None,
                value=payload.encode() if payload is not None else None,
                timestamp_ms=env.get("ts"),
            ).add_errback(errors.append)
        producer.flush(timeout=120)
    finally:
        producer.close(timeout=10)
    if errors:
        raise RuntimeError(f"{len(errors)} records failed to produce, e.g. {errors[0]!r}")
    return time.monotonic() - t0


# ----------------------------------------------------------------- 1. raw


async def _raw_once(bootstrap: str, topics: Sequence[str], partitions: int, timeout: float) -> dict[str, float]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        client_id="wbench-raw",
    )
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t in topics for p in range(partitions)]
        consumer.assign(tps)
        begin = await consumer.beginning_offsets(tps)
        end = await consumer.end_offsets(tps)
        await consumer.seek_to_beginning(*tps)
        target = sum(end[tp] - begin[tp] for tp in tps)
        n = 0
        t0 = time.perf_counter()
        deadline = t0 + timeout
        while n < target:
            if time.perf_counter() > deadline:
                raise RuntimeError(f"raw consume: {n} of {target} records after {timeout:.0f} s")
            batches = await consumer.getmany(timeout_ms=1000)
            for msgs in batches.values():
                n += len(msgs)
        elapsed = time.perf_counter() - t0
    finally:
        await consumer.stop()
    return {"records": n, "seconds": elapsed, "records_per_s": n / elapsed}


def bench_raw(bootstrap: str, dep: Deployment, runs: int, timeout: float) -> dict[str, Any]:
    results = []
    for i in range(runs):
        r = asyncio.run(_raw_once(bootstrap, dep.inputs, dep.partitions, timeout))
        log(f"raw run {i + 1}: {r['records']} records in {r['seconds']:.2f} s = {r['records_per_s']:,.0f}/s")
        results.append(r)
    best = max(results, key=lambda r: r["records_per_s"])
    return {
        "records": best["records"],
        "records_per_s": round(best["records_per_s"]),
        "records_per_s_all": [round(r["records_per_s"]) for r in results],
        "seconds": round(best["seconds"], 3),
    }


# -------------------------------------------------------------- 2. backlog


def metrics_call_stats(calls: Sequence[tuple[float, int]]) -> dict[str, Any]:
    """How long the polls of /health took: served by the worker's event loop, they show its stalls."""
    if not calls:
        return {"calls": 0}
    secs = [c[0] * 1000 for c in calls]
    return {
        "calls": len(calls),
        "p50_ms": round(_percentile(secs, 0.5), 1),
        "max_ms": round(max(secs), 1),
        "body_bytes_last": calls[-1][1],
    }


def bench_worker(dep: Deployment, total: int, timeout: float, rules: dict[str, str]) -> dict[str, Any]:
    worker = dep.start_worker(rules)
    proc, port, logfile = worker
    started = time.monotonic()
    first: tuple[float, int, float | None] | None = None
    last: tuple[float, int, float | None] | None = None
    samples: list[tuple[float, int]] = []
    next_log = started + 5
    while True:
        now = time.monotonic()
        if now - started > timeout:
            raise RuntimeError(
                f"worker consumed {samples[-1][1] if samples else 0} of {total} records "
                f"after {timeout:.0f} s:\n{tail(logfile)}"
            )
        check_alive(worker)
        count = dep.consumed(port)
        t = time.monotonic()
        cpu = _cpu_seconds(proc.pid)
        if count is not None:
            samples.append((t - started, count))
            if count > 0 and first is None:
                first = (t, count, cpu)
            if count >= total:
                last = (t, count, cpu)
                break
        if now >= next_log:
            log(f"worker: {count} of {total} consumed")
            next_log = now + 5
        time.sleep(max(0.0, 0.2 - (time.monotonic() - now)))
    assert first is not None and last is not None
    span = last[0] - first[0]
    if span <= 0:
        raise RuntimeError("the whole backlog was consumed between two polls: use more --records")
    rate = (last[1] - first[1]) / span
    cpu_s = (last[2] - first[2]) if first[2] is not None and last[2] is not None else None
    result = {
        "records": total,
        "records_per_s": round(rate),
        "measured_records": last[1] - first[1],
        "seconds": round(span, 3),
        "startup_to_first_record_s": round(first[0] - started, 2),
        "worker_cpu_s": round(cpu_s, 2) if cpu_s is not None else None,
        "worker_cpu_utilisation": round(cpu_s / span, 3) if cpu_s is not None else None,
        "worker_cpu_us_per_record": round(cpu_s * 1e6 / (last[1] - first[1]), 1) if cpu_s else None,
        "rules": rules,
        "health_polls": metrics_call_stats(dep.metrics_calls),
    }
    log(
        f"worker: {result['measured_records']} records in {span:.2f} s = {rate:,.0f}/s, "
        f"cpu {result['worker_cpu_utilisation']}"
    )
    return result


# -------------------------------------------------------------- 3. latency


def _alert_listener(bootstrap: str, topic: str, partitions: int, ready: Any, stop: Any, out: Any) -> None:
    """In a process of its own: every alert with the wall time it was read (kafka-python, 10 ms fetch wait).

    read_committed, as `forward-alerts` and kcat: with an exactly-once worker an
    alert counts when its transaction commits (at a flush), not when it is sent.
    """
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        fetch_max_wait_ms=10,
        client_id="wbench-alerts",
        isolation_level="read_committed",
    )  # as every alert reader: no aborted sends
    seen: list[tuple[float, bytes]] = []
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        for tp in tps:
            consumer.position(tp)
        consumer.poll(timeout_ms=100)
        ready.set()
        while not stop.is_set():
            batches = consumer.poll(timeout_ms=50)
            now = time.time()
            for msgs in batches.values():
                seen.extend((now, m.value) for m in msgs)
    finally:
        consumer.close()
        out.put(seen)


_EVENT_TIME = re.compile(r'"event_time"\s*:\s*"[^"]*"')
_EVENT_ID = re.compile(r'"event_id"\s*:\s*"([^"]*)"')


class _Clock:
    """RFC 3339 UTC with milliseconds, the date part cached per second."""

    def __init__(self) -> None:
        self._sec = -1
        self._prefix = ""

    def __call__(self, ms: int) -> str:
        sec, milli = divmod(ms, 1000)
        if sec != self._sec:
            self._sec = sec
            self._prefix = datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        return f'"event_time":"{self._prefix}.{milli:03d}Z"'


def _prepare_live(
    envelopes: Iterable[dict[str, Any]], rename: dict[str, str], partitions: int
) -> list[tuple[Any, ...]]:
    """(topic, key, partition, payload split around event_time, event id) per record: the hot loop pastes a time in."""
    from kafka.partitioner.default import murmur2

    out = []
    for env in envelopes:
        key = env.get("key")
        payload = env.get("payload")
        head = tail_ = raw = None
        eid = None
        if payload is not None:
            m = _EVENT_TIME.search(payload)
            if m:
                head, tail_ = payload[: m.start()], payload[m.end() :]
            else:
                raw = payload.encode()
            mid = _EVENT_ID.search(payload)
            eid = mid.group(1) if mid else None
        kb = key.encode() if key is not None else None
        # Kafka's default (murmur2) partition of the key, computed here rather than per send.
        part = (murmur2(kb) & 0x7FFFFFFF) % partitions if kb is not None else None
        out.append((rename[env["topic"]], kb, part, head, tail_, raw, eid))
    return out


def _machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of all cores, from the first line of /proc/stat."""
    try:
        fields = [float(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return (0.0, 0.0)
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
    total = sum(fields[:8])
    return (total - idle, total)


class _Sampler(threading.Thread):
    """Once a second: records produced vs consumed by the worker; CPU marks at the measured window's edges."""

    def __init__(
        self,
        dep: Deployment,
        worker: tuple[subprocess.Popen[bytes], int, Path],
        progress: list[int],
        t0: float,
        warmup_s: float,
        measure_s: float,
    ) -> None:
        super().__init__(name="wbench-sampler", daemon=True)
        self.dep, self.pid, self.port = dep, worker[0].pid, worker[1]
        self.progress = progress
        self.t0, self.start_at, self.end_at = t0, t0 + warmup_s, t0 + warmup_s + measure_s
        self.samples: list[tuple[float, int, int]] = []  # (s since t0, produced, consumed by the worker)
        self.cpu_marks: dict[str, tuple[float | None, float, float]] = {}  # worker cpu, bench cpu, wall
        self.machine_marks: dict[str, tuple[float, float]] = {}  # busy, total jiffies of all cores
        self._stop_event = threading.Event()

    def _mark(self, name: str) -> None:
        self.cpu_marks[name] = (_cpu_seconds(self.pid), time.process_time(), time.time())
        self.machine_marks[name] = _machine_cpu()

    def run(self) -> None:
        next_at = self.t0
        while not self._stop_event.is_set():
            now = time.time()
            if "start" not in self.cpu_marks and now >= self.start_at:
                self._mark("start")
            if "end" not in self.cpu_marks and now >= self.end_at:
                self._mark("end")
            if now >= next_at:
                next_at += 1.0
                produced = self.progress[0]
                consumed = self.dep.consumed(self.port)
                if consumed is not None:
                    self.samples.append((round(now - self.t0, 2), produced, consumed))
            self._stop_event.wait(0.02)

    def stop(self) -> None:
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout=10)


def _percentile(values: Sequence[float], q: float) -> float:
    s = sorted(values)
    if not s:
        return float("nan")
    k = (len(s) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def _parse_rfc3339(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class _Pacer:
    """The schedule of a live stream: how many of n records are due now, at `rate`/s from t0 for `total_s`."""

    def __init__(self, n: int, rate: float, total_s: float, started: Any) -> None:
        self.n, self.rate = n, rate
        self.t0 = time.time()
        self.end_at = self.t0 + total_s
        self.max_behind = 0  # most records ever due and not yet sent
        started(self.t0)

    def due(self, i: int) -> tuple[float, int]:
        """(now, records due by now); -1 once the stream's time is up."""
        now = time.time()
        if now >= self.end_at:
            return now, -1
        due = min(self.n, int((now - self.t0) * self.rate))
        if due - i > self.max_behind:
            self.max_behind = due - i
        return now, due


async def _live_produce(
    bootstrap: str,
    recs: Sequence[tuple[Any, ...]],
    rate: float,
    total_s: float,
    sent: dict[str, float],
    progress: list[int],
    started: Any,
    topics: Sequence[str],
) -> tuple[float, int, float, int]:
    """Produce `recs` at `rate`/s for `total_s`, stamping each with the wall time it is sent.

    aiokafka batches (create_batch / send_batch, one per topic-partition per
    ~1 ms tick) keep the producer's own CPU low: on a small machine it shares
    the cores with the worker and the broker.  Returns (t0, records, seconds,
    most records ever behind schedule).
    """
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=0, client_id="wbench-live", max_batch_size=1024 * 1024
    )
    await producer.start()
    try:
        for topic in topics:  # metadata now, not on the first send
            await producer.partitions_for(topic)
        clock = _Clock()
        n = len(recs)
        i = 0
        futures: list[asyncio.Future[Any]] = []
        pacer = _Pacer(n, rate, total_s, started)
        while i < n:
            now, due = pacer.due(i)
            if due < 0:
                break
            if due <= i:
                await asyncio.sleep(0.001)
                continue
            ms = int(now * 1000)
            stamp = clock(ms)
            batches: dict[tuple[str, int], Any] = {}
            while i < due:
                topic, key, part, head, tail_, raw, eid = recs[i]
                value = (head + stamp + tail_).encode() if head is not None else raw
                tp = (topic, part or 0)
                batch = batches.get(tp)
                if batch is None:
                    batch = batches[tp] = producer.create_batch()
                if batch.append(key=key, value=value, timestamp=ms) is None:  # full
                    futures.append(await producer.send_batch(batch, topic, partition=tp[1]))
                    batch = batches[tp] = producer.create_batch()
                    batch.append(key=key, value=value, timestamp=ms)
                if eid is not None and eid not in sent:
                    sent[eid] = now
                i += 1
            for (topic, part), batch in batches.items():
                futures.append(await producer.send_batch(batch, topic, partition=part))
            progress[0] = i
            if len(futures) > 5000:
                done = [f for f in futures if f.done()]
                for f in done:
                    f.result()  # raise a delivery error
                futures = [f for f in futures if not f.done()]
            await asyncio.sleep(0)
        produced_s = time.time() - pacer.t0
        await asyncio.wait_for(asyncio.gather(*futures), timeout=60)
    finally:
        await producer.stop()
    return pacer.t0, i, produced_s, pacer.max_behind


_KCAT_KEY_DELIM = b"\x1f"  # ASCII unit separator: key | value
_KCAT_RECORD_DELIM = b"\x1e"  # ASCII record separator: between records


def _live_produce_kcat(
    bootstrap: str,
    recs: Sequence[tuple[Any, ...]],
    rate: float,
    total_s: float,
    sent: dict[str, float],
    progress: list[int],
    started: Any,
    topics: Sequence[str],
    log_dir: Path,
) -> tuple[float, int, float, int]:
    """As _live_produce, with Debian's kcat (librdkafka, C) doing the producing: one per input topic.

    This loop only pastes the wall time into each record and writes it down a
    pipe; kcat sends it with librdkafka's default linger of 5 ms and acks=all,
    and its murmur2 partitioner puts each key where Kafka's Java client (and
    Faust) would.  The point is the machine: at ~24k records/s the aiokafka
    producer above took ~0.6 of a core, this loop and kcat ~0.1 + 0.19 (linger
    1 ms: 0.27), on a 2-core machine that the worker and the broker share.
    The time a record waits in the pipe and in librdkafka counts as latency.
    """
    procs: dict[str, subprocess.Popen[bytes]] = {}
    errs: dict[str, Any] = {}
    try:
        for topic in topics:
            errs[topic] = open(log_dir / f"kcat-{topic}.log", "wb")  # noqa: SIM115 (closed below)
            procs[topic] = subprocess.Popen(
                [
                    "kcat",
                    "-P",
                    "-q",
                    "-b",
                    bootstrap,
                    "-t",
                    topic,
                    "-K",
                    "\\x1f",
                    "-D",
                    "\\x1e",
                    "-X",
                    "partitioner=murmur2_random",
                    "-X",
                    "linger.ms=5",
                    "-X",
                    "acks=all",
                    "-X",
                    "client.id=wbench-live-kcat",
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=errs[topic],
            )
        fds = {topic: proc.stdin.fileno() for topic, proc in procs.items()}  # type: ignore[union-attr]
        clock = _Clock()
        n = len(recs)
        i = 0
        pacer = _Pacer(n, rate, total_s, started)
        while i < n:
            now, due = pacer.due(i)
            if due < 0:
                break
            if due <= i:
                time.sleep(0.001)
                continue
            stamp = clock(int(now * 1000))
            out: dict[str, list[bytes]] = {}
            while i < due:
                topic, key, _part, head, tail_, raw, eid = recs[i]
                value = (head + stamp + tail_).encode() if head is not None else raw
                chunk = out.get(topic)
                if chunk is None:
                    chunk = out[topic] = []
                chunk.append(key + _KCAT_KEY_DELIM + value + _KCAT_RECORD_DELIM)
                if eid is not None and eid not in sent:
                    sent[eid] = now
                i += 1
            for topic, chunk in out.items():
                data = b"".join(chunk)
                fd = fds[topic]
                while data:
                    data = data[os.write(fd, data) :]
            progress[0] = i
        produced_s = time.time() - pacer.t0
        for proc in procs.values():
            proc.stdin.close()  # type: ignore[union-attr]  # kcat flushes and exits at end of input
        for topic, proc in procs.items():
            if proc.wait(timeout=60) != 0:
                raise RuntimeError(
                    f"kcat producing to {topic} exited {proc.returncode}: "
                    f"{(log_dir / f'kcat-{topic}.log').read_text()[-500:]}"
                )
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for f in errs.values():
            f.close()
    return pacer.t0, i, produced_s, pacer.max_behind


def _check_kcat_records(recs: Sequence[tuple[Any, ...]]) -> None:
    """kcat reads delimited records: every record needs a key, and no delimiter byte inside."""
    for topic, key, _part, head, tail_, raw, _eid in recs:
        parts = [key] + ([raw] if raw is not None else [head.encode(), tail_.encode()])
        if key is None or any(_KCAT_KEY_DELIM in b or _KCAT_RECORD_DELIM in b for b in parts if b is not None):
            raise ValueError(f"a record for {topic} has no key or a delimiter byte: use --live-producer aiokafka")


def bench_latency(
    bootstrap: str,
    dep: Deployment,
    rate: float,
    *,
    warmup_s: float,
    measure_s: float,
    tail_s: float,
    grace_s: float,
    idle_flush_s: float,
    numbers: int,
    records_ref: int,
    seed: int,
    settle_s: float,
    producer: str,
    extra_rules: dict[str, str],
) -> dict[str, Any]:
    rules = {"grace_s": f"{grace_s:g}", "idle_flush_s": f"{idle_flush_s:g}", **extra_rules}
    worker = dep.start_worker(rules)
    ready_s = dep.wait_ready(worker, timeout=120)
    log(f"latency: worker ready after {ready_s:.1f} s")

    total_s = warmup_s + measure_s + tail_s
    needed = int(rate * total_s * 1.05) + 1000
    live_numbers = max(100, round(numbers * needed / max(records_ref, 1)))
    envs = make_capture(needed, live_numbers, seed, dep.partitions)
    recs = _prepare_live(envs, dep.rename, dep.partitions)
    del envs
    if producer == "kcat":
        _check_kcat_records(recs)
    log(
        f"latency: live capture of {len(recs)} records ({live_numbers} numbers, seed {seed}); "
        f"producing at {rate:,.0f}/s for {total_s:.0f} s"
    )

    ctx = mp.get_context("spawn")
    ready, stop, out = ctx.Event(), ctx.Event(), ctx.Queue()
    listener = ctx.Process(
        target=_alert_listener, daemon=True, args=(bootstrap, dep.topics.alerts, dep.partitions, ready, stop, out)
    )
    listener.start()
    sampler: _Sampler | None = None
    alerts_raw: list[tuple[float, bytes]] = []
    try:
        if not ready.wait(60):
            raise RuntimeError("alert listener not ready after 60 s")
        time.sleep(1.0)  # the worker idles a little: caught up, nothing pending
        check_alive(worker)
        sent: dict[str, float] = {}
        progress = [0]

        def started(t: float) -> None:
            # A thread samples the worker (an HTTP call may wait for its event loop: not in the send loop).
            nonlocal sampler
            sampler = _Sampler(dep, worker, progress, t, warmup_s, measure_s)
            sampler.start()

        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        if producer == "kcat":
            t0, i, produced_s, max_behind = _live_produce_kcat(
                bootstrap, recs, rate, total_s, sent, progress, started, dep.inputs, dep.tmp
            )
        else:
            t0, i, produced_s, max_behind = asyncio.run(
                _live_produce(bootstrap, recs, rate, total_s, sent, progress, started, dep.inputs)
            )
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        # kcat's processes are the only children reaped by now (the worker and the listener still run)
        kcat_cpu = (after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime) / produced_s
        assert sampler is not None
        sampler.stop()
        check_alive(worker)
        achieved = i / produced_s
        log(
            f"latency: produced {i} records in {produced_s:.1f} s = {achieved:,.0f}/s "
            f"(at most {max_behind} records behind schedule)"
        )
        time.sleep(settle_s)
        check_alive(worker)
    finally:
        if sampler is not None:
            sampler.stop()
        stop.set()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                alerts_raw = out.get(timeout=1)
                break
            except Exception:  # queue.Empty; the listener may be gone (killed with us)
                if not listener.is_alive() and out.empty():
                    break
        listener.join(timeout=10)
        if listener.is_alive():
            listener.kill()

    window = (t0 + warmup_s, t0 + warmup_s + measure_s)
    assert sampler is not None
    behind = [p_ - c for t, p_, c in sampler.samples if window[0] - t0 <= t < window[1] - t0]
    cpu: dict[str, float | None] = {
        "worker_cpu_utilisation": None,
        "bench_process_cpu_utilisation": None,
        "machine_cpu_busy_fraction": None,
    }
    marks = sampler.cpu_marks
    if "start" in marks and "end" in marks:
        (w0, b0, s0), (w1, b1, s1) = marks["start"], marks["end"]
        span = s1 - s0
        if w0 is not None and w1 is not None:
            cpu["worker_cpu_utilisation"] = round((w1 - w0) / span, 3)
        cpu["bench_process_cpu_utilisation"] = round((b1 - b0) / span, 3)
        (m0, t0_), (m1, t1_) = sampler.machine_marks["start"], sampler.machine_marks["end"]
        if t1_ > t0_:
            cpu["machine_cpu_busy_fraction"] = round((m1 - m0) / (t1_ - t0_), 3)
    first_seen: dict[str, tuple[float, dict[str, Any]]] = {}
    retracted = 0
    for wall, value in alerts_raw:
        try:
            a = json.loads(value)
        except (TypeError, ValueError):
            continue
        if a.get("status") == "retracted":  # withdraws an alert: not one, and no latency of its own
            retracted += 1
            continue
        key = a.get("dedup_key") or a.get("alert_id")
        if key not in first_seen:
            first_seen[key] = (wall, a)
    added, worker_part, output_part = [], [], []
    unknown = outside = late = 0
    kinds: dict[str, int] = {}
    for wall, a in first_seen.values():
        t_sent = sent.get(str(a.get("trigger_event_id")))
        if t_sent is None:
            unknown += 1
            continue
        if not window[0] <= t_sent < window[1]:
            outside += 1
            continue
        if a.get("late"):
            late += 1
        kinds[a.get("kind", "?")] = kinds.get(a.get("kind", "?"), 0) + 1
        added.append((wall - t_sent - grace_s) * 1000)
        with contextlib.suppress(KeyError, TypeError, ValueError):
            detected = _parse_rfc3339(a["detected_at"])
            worker_part.append((detected - t_sent - grace_s) * 1000)
            output_part.append((wall - detected) * 1000)

    def stats(v: list[float]) -> dict[str, float | None]:
        if not v:
            return {"p50_ms": None, "p99_ms": None, "max_ms": None, "mean_ms": None}
        return {
            "p50_ms": round(_percentile(v, 0.5), 1),
            "p99_ms": round(_percentile(v, 0.99), 1),
            "max_ms": round(max(v), 1),
            "mean_ms": round(statistics.fmean(v), 1),
        }

    return {
        "producer": producer,
        "kcat_cpu_utilisation": round(kcat_cpu, 3) if producer == "kcat" else None,
        "target_records_per_s": round(rate),
        "achieved_records_per_s": round(achieved),
        "produced_records": i,
        "producer_max_behind_schedule_records": max_behind,
        "warmup_s": warmup_s,
        "measured_s": measure_s,
        "tail_s": tail_s,
        "settle_s": settle_s,
        "grace_s": grace_s,
        "idle_flush_s": idle_flush_s,
        "worker_backlog_records": {  # produced (sent) minus consumed by the worker, sampled each second
            "mean": round(statistics.fmean(behind)) if behind else None,
            "max": max(behind) if behind else None,
        },
        **cpu,
        "health_polls": metrics_call_stats(dep.metrics_calls),
        "worker_backlog_samples": [[t, p_ - c] for t, p_, c in sampler.samples],  # [s since start, records]
        "alerts_read": len(first_seen),
        "alerts_measured": len(added),
        "alerts_outside_window": outside,
        "alerts_unknown_trigger": unknown,
        "alerts_late": late,
        "retractions_read": retracted,
        "alerts_by_kind": dict(sorted(kinds.items())),
        "added_latency": stats(added),
        "trigger_to_detected_minus_grace": stats(worker_part),
        "detected_to_alert_read": stats(output_part),
        "note": "added = alert read (wall) - trigger produced (wall) - grace; detected_at is the worker's clock",
    }


# -------------------------------------------------------------------- main


def render_table(r: dict[str, Any]) -> str:
    m, raw, w, lat = r["machine"], r["raw"], r["worker"], r.get("latency")
    digest = r["code"].get("streams_worker_sha256") or r["code"].get("streams_worker_py_sha256")
    lines = [
        f"machine: {m['cores']} cores ({m['cpu']}), Python {m['python']}, Kafka {m['kafka']}, "
        f"aiokafka {m['aiokafka']}, faust {m['faust']}",
        f"code: {r['code']['commit']} (+{len(r['code']['modified'])} modified files, streams/worker "
        f"{digest}); load average at start {r['load_average_1m_at_start']}",
        f"capture: {r['capture']['records']} records, {r['capture']['numbers']} numbers, seed {r['capture']['seed']}, "
        f"{r['partitions']} partitions, {r.get('guarantee', 'at_least_once')}, "
        f"flush interval {r.get('flush_interval_s') or 'default'}",
        "",
        f"{'measurement':<44}{'value':>16}",
        f"{'-' * 60}",
        f"{'raw aiokafka getmany (best of ' + str(len(raw['records_per_s_all'])) + ')':<44}"
        f"{raw['records_per_s']:>12,} r/s",
        f"{'worker, backlog (sustained)':<44}{w['records_per_s']:>12,} r/s",
        f"{'worker / raw':<44}{r['worker_to_raw_ratio']:>16.3f}",
        f"{'worker CPU (utilisation of one core)':<44}{w['worker_cpu_utilisation'] or 0:>16.2f}",
        f"{'worker CPU per record':<44}{w['worker_cpu_us_per_record'] or 0:>13.1f} us",
    ]
    if lat:
        a = lat["added_latency"]
        lines += [
            f"{'live stream rate (target / achieved)':<44}{lat['target_records_per_s']:>7,} / "
            f"{lat['achieved_records_per_s']:>6,}",
            f"{'live: worker backlog mean / max (records)':<44}{_n(lat['worker_backlog_records']['mean']):>7} / "
            f"{_n(lat['worker_backlog_records']['max']):>6}",
            f"{'live: producer':<44}{lat['producer']:>16}",
            f"{'live: worker CPU / bench process CPU':<44}{_f(lat['worker_cpu_utilisation']):>7} / "
            f"{_f(lat['bench_process_cpu_utilisation']):>6}",
            f"{'live: kcat CPU (all three, whole stream)':<44}{_f(lat.get('kcat_cpu_utilisation')):>16}",
            f"{'live: machine CPU busy (all ' + str(m['cores']) + ' cores)':<44}"
            f"{_f(lat['machine_cpu_busy_fraction']):>16}",
            f"{'alerts measured':<44}{lat['alerts_measured']:>16}",
            f"{'added latency p50 (beyond grace ' + format(lat['grace_s'], 'g') + ' s)':<44}{_ms(a['p50_ms']):>16}",
            f"{'added latency p99':<44}{_ms(a['p99_ms']):>16}",
            f"{'added latency max':<44}{_ms(a['max_ms']):>16}",
        ]
    return "\n".join(lines)


def _n(v: int | None) -> str:
    return "n/a" if v is None else f"{v:,}"


def _f(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def _ms(v: float | None) -> str:
    return "n/a" if v is None else f"{v:,.1f} ms"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=int, default=100_000, help="capture size (bench.generate --records)")
    p.add_argument("--numbers", type=int, default=2000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--partitions", type=int, default=6)
    p.add_argument("--bootstrap", default=DEFAULT_BOOTSTRAP)
    p.add_argument("--raw-runs", type=int, default=2)
    p.add_argument("--live-seconds", type=float, default=30.0, help="measured window of the live stream")
    p.add_argument("--warmup-seconds", type=float, default=5.0)
    p.add_argument("--grace", type=float, default=2.0, help="NOTIFGUARD_GRACE_S of the latency worker")
    p.add_argument("--idle-flush", type=float, default=1.0, help="NOTIFGUARD_IDLE_FLUSH_S of the latency worker")
    p.add_argument("--skip-latency", action="store_true")
    p.add_argument(
        "--live-rate",
        type=float,
        default=None,
        help="records/s of the live stream (default: half the worker's sustained backlog rate)",
    )
    p.add_argument(
        "--live-producer",
        choices=("kcat", "aiokafka"),
        default="kcat" if shutil.which("kcat") else "aiokafka",
        help="what produces the live stream: kcat (C, default when installed) or aiokafka (Python)",
    )
    p.add_argument(
        "--guarantee",
        choices=("at_least_once", "exactly_once"),
        default="at_least_once",
        help="the workers' processing guarantee (NOTIFGUARD_WORKER_PROCESSING_GUARANTEE)",
    )
    p.add_argument(
        "--flush-interval",
        type=float,
        default=None,
        help="the workers' flush_interval_s (NOTIFGUARD_WORKER_FLUSH_INTERVAL_S; default: the worker's own)",
    )
    p.add_argument(
        "--incidents",
        choices=("on", "off"),
        default="on",
        help="the workers compute incidents (NOTIFGUARD_WORKER_INCIDENTS; on, as by default) or not",
    )
    p.add_argument("--keep-topics", action="store_true", help="do not delete the wbench-<tag>-* topics")
    p.add_argument("--json", metavar="FILE", help="also write the result as JSON")
    args = p.parse_args(argv)

    require_broker(args.bootstrap)
    worker_rules = {"worker_processing_guarantee": args.guarantee}  # rules of every worker the bench starts
    worker_rules["worker_incidents"] = "true" if args.incidents == "on" else "false"
    if args.flush_interval is not None:
        worker_rules["worker_flush_interval_s"] = f"{args.flush_interval:g}"
    tag = uuid.uuid4().hex[:8]
    prefix = f"{PREFIX}{tag}-"
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    deployments: list[Deployment] = []

    def on_signal(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    result: dict[str, Any] = {
        "machine": machine_facts(),
        "bootstrap": args.bootstrap,
        "run_tag": tag,
        "partitions": args.partitions,
        "guarantee": args.guarantee,
        "flush_interval_s": args.flush_interval,
        "code": code_facts(),
        "load_average_1m_at_start": load_average(),
    }
    rc = 0
    try:
        log(f"run {tag}: generating the capture ({args.records} records, {args.numbers} numbers, seed {args.seed})")
        capture = make_capture(args.records, args.numbers, args.seed, args.partitions)
        total = len(capture)
        result["capture"] = {
            "records": total,
            "numbers": args.numbers,
            "seed": args.seed,
            "generator": f"bench.generate --records {args.records} --numbers {args.numbers} "
            f"--seed {args.seed} --partitions {args.partitions}",
        }

        # 1. raw
        raw_dep = Deployment(args.bootstrap, tag, "raw", args.partitions, tmp)
        deployments.append(raw_dep)
        secs = produce_backlog(args.bootstrap, capture, raw_dep.rename)
        log(f"raw: produced {total} records in {secs:.1f} s")
        result["raw"] = bench_raw(args.bootstrap, raw_dep, args.raw_runs, timeout=max(60.0, total / 2000))

        # 2. worker on a backlog
        wdep = Deployment(args.bootstrap, tag, "backlog", args.partitions, tmp)
        deployments.append(wdep)
        secs = produce_backlog(args.bootstrap, capture, wdep.rename)
        log(f"worker: produced {total} records in {secs:.1f} s; starting the worker")
        del capture
        result["worker"] = bench_worker(
            wdep, total, timeout=max(180.0, total / 500), rules={"idle_flush_s": "2", **worker_rules}
        )
        wdep.stop_workers()
        result["worker_to_raw_ratio"] = round(result["worker"]["records_per_s"] / result["raw"]["records_per_s"], 4)

        # 3. latency at half the sustained rate
        if not args.skip_latency:
            ldep = Deployment(args.bootstrap, tag, "live", args.partitions, tmp)
            deployments.append(ldep)
            tail_s = args.grace + args.idle_flush + 2.0
            result["latency"] = bench_latency(
                args.bootstrap,
                ldep,
                args.live_rate or result["worker"]["records_per_s"] / 2,
                warmup_s=args.warmup_seconds,
                measure_s=args.live_seconds,
                tail_s=tail_s,
                grace_s=args.grace,
                idle_flush_s=args.idle_flush,
                numbers=args.numbers,
                records_ref=total,
                seed=args.seed + 1000,
                settle_s=args.grace + 3.0,
                producer=args.live_producer,
                extra_rules=worker_rules,
            )
            ldep.stop_workers()
    except (Exception, KeyboardInterrupt) as err:
        log(f"FAILED: {err!r}")
        result["error"] = repr(err)
        rc = 1
    finally:
        for dep in deployments:
            with contextlib.suppress(Exception):
                dep.stop_workers()
        if not args.keep_topics:
            try:
                gone = delete_prefixed(args.bootstrap, prefix)
                log(f"deleted {len(gone)} topics {prefix}*")
            except Exception as err:
                log(f"could not delete the topics {prefix}*: {err!r}")
        if rc and deployments:
            keep = Path(tempfile.gettempdir()) / f"{prefix}logs"
            with contextlib.suppress(Exception):
                keep.mkdir(exist_ok=True)
                for f in tmp.glob("*.log"):
                    shutil.copy(f, keep / f.name)
                log(f"worker logs kept in {keep}")
        shutil.rmtree(tmp, ignore_errors=True)

    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    if rc == 0:
        print()
        print(render_table(result))
    return rc


if __name__ == "__main__":
    sys.exit(main())
