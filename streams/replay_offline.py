"""Offline replay: captures through the engine, in file order, alerts to JSON Lines."""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import IO, Annotated, Any, Union, get_args, get_origin, get_type_hints

import msgspec

from detectors.alerts import Alert, encode_alert
from detectors.capture import decode_line
from detectors.engine import Engine
from detectors.records import BAD_ENVELOPE, CHANGE_CLASSES, BadRecord, Delivery, Outbound, decode
from detectors.settings import Settings

_json = msgspec.json.Encoder()


@dataclass
class Summary:
    records: int = 0
    by_topic: Counter[str] = field(default_factory=Counter)
    alerts_by_kind: Counter[str] = field(default_factory=Counter)
    alerts_by_severity: Counter[str] = field(default_factory=Counter)
    deadletters: Counter[str] = field(default_factory=Counter)
    late: int = 0
    duplicates: int = 0
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0

    def render(self) -> str:
        lines = [
            f"records      {self.records:>10,}  ({', '.join(f'{k} {v:,}' for k, v in sorted(self.by_topic.items()))})",
            f"alerts       {sum(self.alerts_by_kind.values()):>10,}",
        ]
        lines += [f"  {k:<32}{v:>8,}" for k, v in sorted(self.alerts_by_kind.items())]
        lines += [f"  severity {k:<23}{v:>8,}" for k, v in sorted(self.alerts_by_severity.items())]
        lines.append(f"dead letters {sum(self.deadletters.values()):>10,}")
        lines += [f"  {k:<32}{v:>8,}" for k, v in sorted(self.deadletters.items())]
        lines.append(f"late records {self.late:>10,}")
        lines.append(f"duplicates   {self.duplicates:>10,}")
        lines.append(f"elapsed      {self.seconds:>10.2f} s   {self.rate:,.0f} records/s")
        return "\n".join(lines)


def _now_us() -> int:
    return time.time_ns() // 1000


def alert_line(a: Alert) -> str:
    """One readable line per alert, for people watching a terminal."""
    late = " LATE" if a.late else ""
    return f"[{a.severity:<8}] {a.kind:<29} {a.event_time}  {a.subject.msisdn_masked}{late}  {a.summary}"


class _Progress:
    def __init__(self, stream: IO[str] | None) -> None:
        self.stream = stream
        self.next = time.monotonic() + 0.5

    def show(self, summary: Summary, started: float, alerts: int) -> None:
        now = time.monotonic()
        if self.stream is None or now < self.next:
            return
        self.next = now + 0.5
        rate = summary.records / max(now - started, 1e-9)
        self.stream.write(f"\r{summary.records:>12,} records  {rate:>10,.0f}/s  {alerts:>8,} alerts")
        self.stream.flush()

    def done(self) -> None:
        if self.stream is not None:
            self.stream.write("\r" + " " * 60 + "\r")
            self.stream.flush()


# ------------------------------------------------------------------ pipeline
#
# With jobs=2 a child process reads the captures, decodes and validates every
# line with detectors.records.decode (the same function Engine.process calls)
# and sends the results in batches; the parent feeds them to the one engine
# through Engine.process_decoded, in file order. Lines that do not decode go
# to the parent as received and through Engine.process, which dead-letters
# them exactly as in one process. Both modes give the same alerts.

_BATCH = 2048
_PARALLEL_MIN_BYTES = 4 << 20  # below this, starting a process costs more than it saves


def _wire_type(cls: type, tag: str) -> Any:
    """A transfer form of a record class: a subclass, array-like, tagged, constraints off.

    Records are validated once, in the child; the parent gets instances of the
    same classes (subclasses) without paying for the patterns again.
    """
    hints = get_type_hints(cls, include_extras=True)
    names: tuple[str, ...] = getattr(cls, "__struct_fields__")  # noqa: B009
    fields = [(n, get_args(hints[n])[0]) for n in names if get_origin(hints[n]) is Annotated]
    return msgspec.defstruct(
        f"_{cls.__name__}Wire", fields, bases=(cls,), array_like=True, frozen=True, gc=False,
        tag_field="type", tag=tag,
    )


_WIRE: dict[type, Any] = {Outbound: _wire_type(Outbound, "outbound"), Delivery: _wire_type(Delivery, "delivery")}
for _cls in CHANGE_CLASSES:
    _WIRE[_cls] = _wire_type(_cls, str(_cls.__struct_config__.tag))
_TAG = {cls: w.__struct_config__.tag for cls, w in _WIRE.items()}
_KINDS = ("changes", "outbound", "delivery")
_KIND_INDEX = {k: i for i, k in enumerate(_KINDS)}
# A batch: decoded records (kind index, partition, event time, record) and, by
# their position in the batch, the lines left to Engine.process or refused as envelopes.
_Decoded: Any = tuple[int, int, int, Union[tuple(_WIRE.values())]]  # type: ignore[misc]  # noqa: UP007
# Other lines, as lists: [topic, partition, offset, key, payload, ts] to process as
# received, or [path, line number, line, error] for a line that is no envelope.
_Batch = tuple[list[Any], list[tuple[int, list[Any]]], dict[str, int]]
_batch_decoder: msgspec.msgpack.Decoder[_Batch] = msgspec.msgpack.Decoder(
    tuple[list[_Decoded], list[tuple[int, list[Any]]], dict[str, int]]
)


def _lines(paths: list[str]) -> Iterator[tuple[str, int, bytes]]:
    for path in paths:
        with open(path, "rb") as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    yield path, lineno, line


def _decode_into(paths: list[str], topic_kinds: dict[str, str], conn: Connection) -> None:
    """Child process: decode every line, send batches, then an empty batch."""
    encoder = msgspec.msgpack.Encoder()
    astuple = msgspec.structs.astuple
    tag = _TAG
    kind_index = _KIND_INDEX
    decoded: list[Any] = []
    others: list[Any] = []
    topics: Counter[str] = Counter()
    n = 0
    try:
        for path, lineno, line in _lines(paths):
            n += 1
            try:
                env = decode_line(line)
            except msgspec.DecodeError as err:
                others.append((len(decoded) + len(others), (path, lineno, line.rstrip(b"\n"), str(err))))
            else:
                topics[env.topic] += 1
                kind = topic_kinds.get(env.topic)
                try:
                    if kind is None:
                        raise BadRecord("", "")
                    record, t = decode(kind, env.key, env.payload)
                except BadRecord:
                    others.append((len(decoded) + len(others),
                                   (env.topic, env.partition, env.offset, env.key, env.payload, env.ts)))
                else:
                    decoded.append((kind_index[kind], env.partition, t, (tag[type(record)], *astuple(record))))
            if n % _BATCH == 0:
                conn.send_bytes(encoder.encode((decoded, others, dict(topics))))
                decoded, others, topics = [], [], Counter()
        conn.send_bytes(encoder.encode((decoded, others, dict(topics))))
        conn.send_bytes(b"")
    finally:
        conn.close()


def _parallel(paths: list[str], settings: Settings) -> Iterator[_Batch]:
    ctx: Any = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    t = settings.topics
    topic_kinds = {t.changes: "changes", t.outbound: "outbound", t.delivery: "delivery"}
    receiver, sender = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_decode_into, args=(paths, topic_kinds, sender), daemon=True)
    child.start()
    sender.close()
    try:
        while True:
            try:
                data = receiver.recv_bytes()
            except EOFError:
                raise RuntimeError(f"the decoding process ended early (exit code {child.exitcode})") from None
            if not data:
                break
            yield _batch_decoder.decode(data)
    finally:
        receiver.close()
        child.join(timeout=5)
        if child.is_alive():
            child.kill()


def default_jobs(paths: Iterable[str | Path]) -> int:
    """Two processes when there are two cores and enough input to be worth it."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    size = sum(os.path.getsize(p) for p in paths)
    return 2 if cores >= 2 and size >= _PARALLEL_MIN_BYTES else 1


def replay(
    paths: Iterable[str | Path],
    settings: Settings,
    alerts_out: IO[bytes] | None = None,
    deadletter_out: IO[bytes] | None = None,
    print_alerts: IO[str] | None = None,
    progress: IO[str] | None = None,
    engine: Engine | None = None,
    jobs: int | None = None,
) -> tuple[Summary, list[Alert]]:
    """Run captures through a fresh engine; returns the summary and every alert.

    `jobs`: 1 decodes in this process, 2 in a second one (same engine, same
    results); None picks 2 for large inputs on a machine with two cores.
    """
    files = [str(p) for p in paths]
    if jobs is None:
        jobs = default_jobs(files)
    engine = engine or Engine(settings, new_id=lambda: uuid.uuid4().hex)
    summary = Summary()
    all_alerts: list[Alert] = []
    bar = _Progress(progress)
    started = time.monotonic()
    now = _now_us()

    def drain() -> None:
        alerts, dead, _ = engine.drain()
        for a in alerts:
            summary.alerts_by_kind[a.kind] += 1
            summary.alerts_by_severity[a.severity] += 1
            if alerts_out is not None:
                alerts_out.write(encode_alert(a) + b"\n")
            if print_alerts is not None:
                print_alerts.write(alert_line(a) + "\n")
        all_alerts.extend(alerts)
        for d in dead:
            summary.deadletters[d.reason_code] += 1
            if deadletter_out is not None:
                deadletter_out.write(_json.encode(d) + b"\n")

    def bad_envelope(path: str, lineno: int, line: bytes, err: str) -> None:
        engine._dead_letter(
            f"{path}:{lineno}", None, None, None, None, line,
            BadRecord(BAD_ENVELOPE, f"line is not a kcat -J envelope: {err}"),
        )

    process = engine.process
    if jobs <= 1:
        by_topic = summary.by_topic
        for path, lineno, line in _lines(files):
            summary.records += 1
            try:
                env = decode_line(line)
            except msgspec.DecodeError as err:
                bad_envelope(path, lineno, line.rstrip(b"\n"), str(err))
                continue
            by_topic[env.topic] += 1
            process(env.topic, env.partition, env.offset, env.key, env.payload, now, env.ts)
            if summary.records & 1023 == 0:
                now = _now_us()
                drain()
                bar.show(summary, started, len(all_alerts))
    else:
        process_decoded = engine.process_decoded
        kinds = _KINDS
        for decoded, others, topics in _parallel(files, settings):
            summary.by_topic.update(topics)
            if others:
                merged: list[Any] = list(decoded)
                for position, item in others:
                    merged.insert(position, item)
            else:
                merged = decoded
            for item in merged:
                if type(item) is tuple:
                    k, partition, t, record = item
                    process_decoded(kinds[k], partition, record, t, now)
                elif len(item) == 4:
                    bad_envelope(*item)
                else:
                    topic, partition, offset, key, payload, ts = item
                    process(topic, partition, offset, key, payload, now, ts)
            summary.records += len(merged)
            now = _now_us()
            drain()
            bar.show(summary, started, len(all_alerts))
    engine.flush(_now_us())
    drain()
    bar.done()
    summary.seconds = time.monotonic() - started
    summary.late = sum(engine.stats.late.values())
    summary.duplicates = sum(engine.stats.duplicates.values())
    return summary, all_alerts


def progress_stream() -> IO[str] | None:
    return sys.stderr if sys.stderr.isatty() else None
