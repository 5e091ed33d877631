"""Equivalence through the real broker: a worker fed a capture WHILE it reads gives the offline replay's alerts.

The pieces tests/streams/worker/test_live.py puts together, each through the
project's own command where there is one, as an operator would run it:

- `notifguard replay CAPTURE --bootstrap ... [--rebase-time ...] [--speed ...]
  --rename ...` produces (a part of) the capture, in a background process, while
  the worker runs (`LiveRun.produce`);
- `notifguard capture` takes the produced records back from the input topics
  (`LiveRun.capture_back`), and `notifguard replay --offline` of that file is the
  expectation (`offline`): it replays exactly the records the worker read;
- the worker is done when its consumer group has committed every input
  topic-partition up to its end offset (the worker commits a record only after
  its outputs are delivered, in both guarantees), and then the alerts topic is
  read to its end, read_committed (`LiveRun.wait_done`, `LiveRun.read_alerts`);
- alert sets are compared by dedup_key, with retractions (contract 1.1) applied
  (`final`), and a difference is shown by kind, with examples (`Diff`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detectors.capture import Envelope
from detectors.settings import Topics
from detectors.timefmt import rfc3339
from streams.staging import event_time_us
from tests.pipelines import write_capture
from tests.streams.kafka_harness import ROOT, KafkaRun

# What a notification to an address other than the number's current one is called,
# past recipient_previous_holder, depends on the address links of other numbers; two
# workers see each other's links a flush late (see tests/streams/worker/test_exactly_once.py).
# Whether it alerts at all, and every other kind, depends on the number's own state.
VIA_LINKS = frozenset({"recipient_other_customer", "recipient_stale_contract", "recipient_unlinked"})


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "streams.cli", "--log-level", "WARNING", *args]


# ---------------------------------------------------------------- alert sets


def dedup_key(alert: dict[str, Any]) -> str:
    return str(alert["dedup_key"])


def own_state_key(alert: dict[str, Any]) -> str:
    """The dedup_key, but the link-dependent kinds as one (for workers that share partitions)."""
    kind = alert["kind"]
    return f"recipient_via_links:{alert['trigger_event_id']}" if kind in VIA_LINKS else str(alert["dedup_key"])


def final(
    records: Iterable[dict[str, Any]], key: Callable[[dict[str, Any]], str] = dedup_key
) -> dict[str, dict[str, Any]]:
    """The alerts that stand at the end, by `key`: each dedup_key's first firing record, unless its
    last record is a retraction (the contract's final set), then the first of those with each `key`.

    Records of one dedup_key share a partition of the alerts topic (they are keyed by it), so
    their order on it is the order they were decided in; records of two dedup_keys have no order
    on it, so a retraction of one never withdraws another that `key` makes the same
    (own_state_key: a retracted recipient_unlinked and the recipient_other_customer that replaced
    it).
    """
    by_dedup: dict[str, dict[str, Any]] = {}
    for r in records:
        k = str(r["dedup_key"])
        if r.get("status", "firing") == "retracted":
            by_dedup.pop(k, None)
        else:
            by_dedup.setdefault(k, r)
    out: dict[str, dict[str, Any]] = {}
    for r in by_dedup.values():
        out.setdefault(key(r), r)
    return out


def repeated_firings(records: Iterable[dict[str, Any]]) -> Counter[str]:
    """dedup_keys that fire again without a retraction in between (never, exactly once)."""
    last: dict[str, str] = {}
    twice: Counter[str] = Counter()
    for r in records:
        status = r.get("status", "firing")
        if status == "firing" and last.get(r["dedup_key"]) == "firing":
            twice[r["dedup_key"]] += 1
        last[r["dedup_key"]] = status
    return twice


def _kind(key: str, alert: dict[str, Any]) -> str:
    return "recipient_via_links" if key.startswith("recipient_via_links:") else str(alert["kind"])


@dataclass
class Diff:
    """What the worker raised against what the offline replay raised."""

    expected: dict[str, dict[str, Any]]
    got: dict[str, dict[str, Any]]
    what: str = "worker"

    @property
    def missing(self) -> list[str]:
        return sorted(self.expected.keys() - self.got.keys())

    @property
    def unexpected(self) -> list[str]:
        return sorted(self.got.keys() - self.expected.keys())

    @property
    def ok(self) -> bool:
        return self.expected.keys() == self.got.keys()

    def by_kind(self) -> dict[str, tuple[int, int, int, int]]:
        """kind -> (offline, worker, missing, unexpected)."""
        exp = Counter(_kind(k, a) for k, a in self.expected.items())
        got = Counter(_kind(k, a) for k, a in self.got.items())
        miss = Counter(_kind(k, self.expected[k]) for k in self.missing)
        extra = Counter(_kind(k, self.got[k]) for k in self.unexpected)
        return {k: (exp[k], got[k], miss[k], extra[k]) for k in sorted(exp.keys() | got.keys())}

    def counts(self) -> str:
        """One line: the kinds that differ, as kind -missing/+unexpected (of how many offline)."""
        parts = [f"{k} -{m}/+{x} (of {e})" for k, (e, _, m, x) in self.by_kind().items() if m or x]
        return "; ".join(parts) or "none"

    def render(self, examples: int = 4) -> str:
        lines = [
            f"{self.what} against the offline replay of the same records: {len(self.missing)} missing, "
            f"{len(self.unexpected)} unexpected (of {len(self.expected)} offline, {len(self.got)} raised)",
            f"  {'kind':<32}{'offline':>8}{self.what:>9}{'missing':>9}{'unexpected':>11}",
        ]
        for kind, (e, g, m, x) in self.by_kind().items():
            flag = "  <--" if m or x else ""
            lines.append(f"  {kind:<32}{e:>8}{g:>9}{m:>9}{x:>11}{flag}")
        for title, keys, source in (
            ("missing", self.missing, self.expected),
            ("unexpected", self.unexpected, self.got),
        ):
            shown: Counter[str] = Counter()
            for k in keys:
                a = source[k]
                kind = _kind(k, a)
                if shown[kind] >= examples:
                    continue
                shown[kind] += 1
                late = " late" if a.get("late") else ""
                lines.append(
                    f"  {title:<10} {a['kind']:<30} trigger {a['trigger_event_id']:<18} "
                    f"at {a.get('event_time')} {a.get('subject', {}).get('msisdn_masked', '')}{late}"
                )
        return "\n".join(lines)

    def write(self, path: Path) -> Path:
        with open(path, "w") as f:
            for title, keys, source in (
                ("missing", self.missing, self.expected),
                ("unexpected", self.unexpected, self.got),
            ):
                for k in keys:
                    f.write(json.dumps({"diff": title, **source[k]}) + "\n")
        return path


# ---------------------------------------------------------------- offline replay


@dataclass
class Offline:
    alerts: list[dict[str, Any]]
    deadletters: Counter[str]
    seconds: float

    def final(self, key: Callable[[dict[str, Any]], str] = dedup_key) -> dict[str, dict[str, Any]]:
        return final(self.alerts, key)


def offline(capture: Path, env: dict[str, str], out_dir: Path, name: str) -> Offline:
    """`notifguard replay --offline` of a capture, with the settings (topics, rules) in `env`."""
    alerts, dead = out_dir / f"{name}.alerts.jsonl", out_dir / f"{name}.deadletters.jsonl"
    started = time.monotonic()
    done = subprocess.run(
        _cli("replay", "--offline", str(capture), "--alerts-out", str(alerts), "--deadletter-out", str(dead)),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0:
        raise AssertionError(f"offline replay of {capture} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    letters = [json.loads(line) for line in dead.read_text().splitlines() if line.strip()]
    return Offline(
        [json.loads(line) for line in alerts.read_text().splitlines() if line.strip()],
        Counter(d["reason_code"] for d in letters),
        time.monotonic() - started,
    )


# ---------------------------------------------------------------- captures


def record_time_us(env: Envelope) -> int | None:
    """The time `notifguard replay` paces and rebases a record by: its event_time, else its timestamp."""
    t = event_time_us(None if env.payload is None else env.payload.encode())
    if t is None and env.ts is not None:
        t = env.ts * 1000
    return t


@dataclass
class Part:
    """One file of a capture, produced by one `notifguard replay` process."""

    path: Path
    first_us: int
    last_us: int
    records: int


def write_part(path: Path, envelopes: Sequence[Envelope]) -> Part:
    write_capture(path, envelopes)
    times = [t for t in map(record_time_us, envelopes) if t is not None]
    return Part(path, min(times), max(times), len(envelopes))


def rebase_target(part: Part, delta_us: int, speed: float) -> str:
    """The --rebase-time that shifts this part by delta_us: the tool anchors its last record
    (as fast as possible) or its first (paced), per file; one delta keeps the parts consistent."""
    return rfc3339((part.first_us if speed > 0 else part.last_us) + delta_us)


# ---------------------------------------------------------------- the run


@dataclass
class Producer:
    proc: subprocess.Popen[bytes]
    log: Path
    part: Part
    started: float = field(default_factory=time.monotonic)

    def wait(self, timeout: float = 600) -> float:
        """Wait for it to end; its run time. A failed replay fails the test (with its output)."""
        rc = self.proc.wait(timeout=timeout)
        if rc != 0:
            raise AssertionError(f"notifguard replay of {self.part.path} exited {rc}:\n{self.log.read_text()[-3000:]}")
        return time.monotonic() - self.started


class LiveRun(KafkaRun):
    """A KafkaRun (own topics, group, workers) that produces with `notifguard replay` while workers read."""

    def __init__(self, bootstrap: str, tmp: Path, partitions: int = 6, **rules: Any) -> None:
        super().__init__(bootstrap, tmp, partitions, **rules)
        t = self.topics
        self.inputs = (t.changes, t.outbound, t.delivery)
        # what the group consumes: the inputs and the Relinks the workers broadcast (docs/topics.md 2.6a)
        self.consumed = (*self.inputs, f"{self.app_id}-relinks")
        self.producers: list[Producer] = []

    def env(self, web_port: int) -> dict[str, str]:
        env = super().env(web_port)
        env["PYTHONFAULTHANDLER"] = "1"  # SIGABRT dumps every thread's stack (see wait_ready)
        return env

    def wait_ready(self, port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 90) -> None:
        """As KafkaRun's, and a worker that never gets ready leaves its stacks in the failure."""
        try:
            super().wait_ready(port, proc, log, timeout)
        except AssertionError as err:
            if proc.poll() is None:
                proc.send_signal(signal.SIGABRT)
                proc.wait(timeout=30)
                raise AssertionError(f"{err}\n--- its stacks at SIGABRT:\n{log.read_text()[-12000:]}") from None
            raise

    def rules_env(self, topics: Topics) -> dict[str, str]:
        """Environment with the run's rules and these topic names: the offline replay's settings."""
        env = self.env(0)
        for name in ("outbound", "changes", "delivery", "alerts", "deadletter"):
            env[f"NOTIFGUARD_TOPIC_{name.upper()}"] = getattr(topics, name)
        return env

    def produce(  # type: ignore[override]
        self, part: Part, rebase: str | None = None, speed: float = 0.0, wait: bool = False
    ) -> Producer:
        """`notifguard replay PART --bootstrap` in the background (or to its end with wait)."""
        args = ["replay", str(part.path), "--bootstrap", self.bootstrap, "--speed", str(speed)]
        if rebase is not None:
            args += ["--rebase-time", rebase]
        for old, new in self.rename.items():
            args += ["--rename", f"{old}={new}"]
        log = self.tmp / f"replay-{len(self.producers)}.log"
        proc = subprocess.Popen(
            _cli(*args),
            cwd=ROOT,
            env=dict(os.environ),
            stdout=open(log, "wb"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
        )
        producer = Producer(proc, log, part)
        self.producers.append(producer)
        if wait:
            producer.wait()
        return producer

    def capture_back(self, path: Path) -> Path:
        """`notifguard capture` of the three input topics: the records the workers read."""
        done = subprocess.run(
            _cli(
                "capture",
                "--bootstrap",
                self.bootstrap,
                "--topics",
                *self.inputs,
                "--out",
                str(path),
                "--idle-timeout",
                "10",
            ),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if done.returncode != 0:
            raise AssertionError(f"notifguard capture exited {done.returncode}:\n{done.stderr[-3000:]}")
        return path

    # ------------------------------------------------------------ progress

    def end_offsets(self, topics: Iterable[str]) -> dict[Any, int]:
        from kafka import KafkaConsumer, TopicPartition

        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap)
        try:
            tps = [TopicPartition(t, p) for t in topics for p in range(self.partitions)]
            return dict(consumer.end_offsets(tps))
        finally:
            consumer.close()

    def committed(self) -> dict[Any, int]:
        from kafka import KafkaAdminClient

        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap)
        try:
            offsets = admin.list_group_offsets({self.app_id: None}).get(self.app_id, {})
        finally:
            admin.close()
        return {tp: meta.offset for tp, meta in offsets.items() if tp.topic in self.consumed}

    def behind(self) -> int:
        """Input and relink records the group has not committed yet (every one, before its first commit).

        The relinks topic is written by the workers, in their transactions under exactly_once: a
        partition of it ends with a transaction's marker (or a killed worker's aborted records and
        their marker), offsets no consumer is given and no commit covers, so what is left there
        counts only while a committed record is in it (_records_left)."""
        ends = self.end_offsets(self.consumed)
        committed = self.committed()
        left = 0
        for tp, end in ends.items():
            start = max(0, committed.get(tp, 0))
            if end > start and (tp.topic != self.consumed[-1] or self._records_left(tp, start, end)):
                left += end - start
        return left

    def _records_left(self, tp: Any, start: int, end: int) -> bool:
        """Whether a read_committed reader finds a record in [start, end) of tp: False only once it has
        read up to `end` (past markers and aborted records) and found none."""
        from kafka import KafkaConsumer

        consumer = KafkaConsumer(
            bootstrap_servers=self.bootstrap, enable_auto_commit=False, isolation_level="read_committed"
        )
        try:
            consumer.assign([tp])
            consumer.seek(tp, start)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                if consumer.poll(timeout_ms=500).get(tp):
                    return True
                if consumer.position(tp) >= end:
                    return False
            return True
        finally:
            consumer.close()

    def wait_done(self, timeout: float) -> int:
        """Until the group has committed every input record (0), or timeout: the records not committed."""
        deadline = time.monotonic() + timeout
        while True:
            left = self.behind()
            if left == 0 or time.monotonic() >= deadline:
                return left
            self.check_workers()
            time.sleep(1.0)

    def check_workers(self) -> None:
        """A worker that died by itself fails the test, with its log."""
        for proc, _, log in self.workers:
            rc = proc.poll()
            if rc is not None and rc not in (-9, -15, 0):
                raise AssertionError(f"a worker exited {rc}:\n{log.read_text()[-3000:]}")

    def read_all(self, topic: str, quiet: float = 2.0, timeout: float = 120) -> list[dict[str, Any]]:
        """Every record of a topic, read_committed, up to its end offsets and then `quiet` s without news."""
        from kafka import KafkaConsumer, TopicPartition

        consumer = KafkaConsumer(
            bootstrap_servers=self.bootstrap,
            enable_auto_commit=False,
            isolation_level="read_committed",
            value_deserializer=json.loads,
        )
        tps = [TopicPartition(topic, p) for p in range(self.partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        last_news = time.monotonic()
        try:
            while time.monotonic() < deadline:
                got = 0
                for batch in consumer.poll(timeout_ms=500).values():
                    out.extend(r.value for r in batch)
                    got += len(batch)
                now = time.monotonic()
                if got:
                    last_news = now
                    continue
                ends = consumer.end_offsets(tps)  # read_committed: the last stable offsets
                at_end = all(consumer.position(tp) >= ends[tp] for tp in tps)
                if at_end and now - last_news >= quiet:
                    break
        finally:
            consumer.close()
        return out

    def read_alerts(self, quiet: float = 2.0) -> list[dict[str, Any]]:
        return self.read_all(self.topics.alerts, quiet)

    def read_deadletters(self) -> tuple[Counter[str], int]:
        """Dead letters by reason, one per source record, and how many repeated one (at least once may)."""
        records = self.read_all(self.topics.deadletter, quiet=0.5)
        letters = {(d["source_topic"], d["partition"], d["offset"]): d for d in records}
        return Counter(d["reason_code"] for d in letters.values()), len(records) - len(letters)

    def close(self) -> None:
        for p in self.producers:
            if p.proc.poll() is None:
                p.proc.kill()
                p.proc.wait(timeout=30)
        super().close()


# ---------------------------------------------------------------- one comparison


@dataclass
class Result:
    expected: Offline  # the offline replay of the records captured back from the input topics
    original: Offline  # the offline replay of the generated capture
    alerts: list[dict[str, Any]]  # every record on the alerts topic
    deadletters: Counter[str]  # by reason, one per source record
    deadletter_repeats: int  # dead letters of a source record already dead-lettered
    not_committed: int
    seconds: dict[str, float]
    key: Callable[[dict[str, Any]], str] = dedup_key

    @property
    def diff(self) -> Diff:
        return Diff(self.expected.final(self.key), final(self.alerts, self.key))

    def report(self) -> str:
        d = self.diff
        times = ", ".join(f"{k} {v:.1f} s" for k, v in self.seconds.items())
        late = sum(1 for a in final(self.alerts, self.key).values() if a.get("late"))
        lines = [d.render(), f"  late alerts raised by the worker: {late}; timings: {times}"]
        if self.not_committed:
            lines.append(f"  NOTE: {self.not_committed} input records were still not committed by the group")
        if self.deadletters != self.expected.deadletters:
            lines.append(f"  dead letters: offline {dict(self.expected.deadletters)}, worker {dict(self.deadletters)}")
        if self.deadletter_repeats:
            lines.append(f"  dead letters repeating a source record: {self.deadletter_repeats}")
        return "\n".join(lines)


def settle(
    run: LiveRun,
    expected: Offline,
    original: Offline,
    produced_at: float,
    seconds: dict[str, float],
    done_timeout: float,
    key: Callable[[dict[str, Any]], str] = dedup_key,
) -> Result:
    """After the last producer ended: wait for the group to commit everything, read the outputs."""
    left = run.wait_done(done_timeout)
    seconds["until committed"] = time.monotonic() - produced_at
    alerts = run.read_alerts()
    dead, repeats = run.read_deadletters()
    return Result(expected, original, alerts, dead, repeats, left, seconds, key)


def assert_equivalent(result: Result, tmp: Path, exactly_once: bool = False) -> None:
    """The premise (the tools kept the records), then everything the worker got wrong, in one failure:
    its alerts, its dead letters, and (exactly_once) any alert or dead letter a read_committed reader saw twice."""
    premise = Diff(result.original.final(result.key), result.expected.final(result.key), "captured")
    assert premise.ok, (
        "the capture read back from Kafka replays offline differently from the generated one: "
        "the producing tools changed the records (rebase, partitioning), not a worker bug\n" + premise.render()
    )
    report = result.report()
    print(report)
    problems = []
    diff = result.diff
    if not diff.ok:
        problems.append(f"  every differing alert: {diff.write(tmp / 'diff.jsonl')}")
    if result.deadletters != result.expected.deadletters:
        problems.append("  the dead letters differ (above)")
    if exactly_once:
        twice = repeated_firings(result.alerts)
        if twice:
            problems.append(
                f"  exactly once: {sum(twice.values())} alert records repeat a firing alert "
                f"({len(twice)} dedup_keys, e.g. {list(twice)[:3]})"
            )
        if result.deadletter_repeats:
            problems.append(f"  exactly once: {result.deadletter_repeats} dead letters repeat a source record")
    if problems:
        raise AssertionError("\n".join([report, *problems]))
