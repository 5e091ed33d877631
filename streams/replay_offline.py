"""Offline replay: captures through the engine, in file order, alerts to JSON Lines."""

from __future__ import annotations

import gc
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
from detectors.engine import TOPIC_KINDS, Engine
from detectors.privacy import Pseudonymiser
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
#
# The engine (the parent) is the busier process, so the child also does what
# needs no engine state: the keyed hashes of numbers and addresses (sent with
# each batch, for the engine's memos) and whether a record's event id is new
# in the run (if so, and the engine started empty, it can be no duplicate).

_BATCH = 2048
_FIRST_MAX = 5_000_000  # event ids the child remembers (~100 B each); records after that are not "first"
_PARALLEL_MIN_BYTES = 4 << 20  # below this, starting a process costs more than it saves
_GC_YOUNG = 20_000  # allocations between young-generation collections during a replay


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
# a topic kind's index in TOPIC_KINDS is its engine category (CHANGE, NOTIFICATION, DELIVERY)
_KIND_INDEX = {k: i for i, k in enumerate(TOPIC_KINDS)}
# A batch: decoded records (kind index, partition, event time, first occurrence of
# its event id, record) and, by
# their position in the batch, the lines left to Engine.process or refused as envelopes.
_Decoded: Any = tuple[int, int, int, bool, Union[tuple(_WIRE.values())]]  # type: ignore[misc]  # noqa: UP007
# Other lines, as lists: [topic, partition, offset, key, payload, ts] to process as
# received, or [path, line number, line, error] for a line that is no envelope.
# Then the new keyed hashes: msisdn -> msisdn_ref and address -> address hash.
_Batch = tuple[list[Any], list[tuple[int, list[Any]]], dict[str, int], dict[str, str], dict[str, bytes]]
_batch_decoder: msgspec.msgpack.Decoder[_Batch] = msgspec.msgpack.Decoder(
    tuple[list[_Decoded], list[tuple[int, list[Any]]], dict[str, int], dict[str, str], dict[str, bytes]]
)


def _lines(paths: list[str]) -> Iterator[tuple[str, int, bytes]]:
    for path in paths:
        with open(path, "rb") as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    yield path, lineno, line


def _decode_into(paths: list[str], settings: Settings, conn: Connection) -> None:
    """Child process: decode every line, send batches, then an empty message.

    It also computes the keyed hashes of the numbers and addresses the engine
    will want (same key) and sends the new ones with each batch: HMACs are a
    large part of the engine's cost, and the parent is the busier process.
    """
    encoder = msgspec.msgpack.Encoder()
    astuple = msgspec.structs.astuple
    tag = dict(_TAG)
    kind_index = _KIND_INDEX
    t_ = settings.topics
    topic_kinds = {t_.changes: "changes", t_.outbound: "outbound", t_.delivery: "delivery"}
    pseudo = Pseudonymiser(settings.pseudonymisation_key.reveal().encode())
    known_numbers = pseudo.numbers_memo()
    known_addresses = pseudo.addresses_memo()
    decoded: list[Any] = []
    others: list[Any] = []
    topics: Counter[str] = Counter()
    numbers: dict[str, str] = {}
    addresses: dict[str, bytes] = {}
    # Event ids decoded so far: a record whose id is new can be no duplicate
    # (for an engine that started empty), and the engine skips its checks.
    event_ids: set[str] = set()
    n = 0
    try:
        for path in paths:
            with open(path, "rb") as f:
                for lineno, line in enumerate(f, 1):
                    if not line.strip():
                        continue
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
                            cls = type(record)
                            wire_tag = tag.get(cls)
                            if wire_tag is None:  # a subclass (the fast decoders' classes)
                                wire_tag = tag[cls] = next(tag[c] for c in cls.__mro__ if c in tag)
                            event_id = record.event_id
                            first = event_id not in event_ids
                            if first and len(event_ids) < _FIRST_MAX:
                                event_ids.add(event_id)
                            decoded.append((kind_index[kind], env.partition, t, first,
                                            (wire_tag, *astuple(record))))
                            # the keyed hashes the engine will want (Engine.process_decoded,
                            # _notification and _change), computed here rather than there
                            msisdn = record.msisdn
                            if msisdn not in known_numbers:
                                numbers[msisdn] = pseudo.msisdn_ref(msisdn)
                            address: str | None = None
                            if kind == "outbound":
                                if record.channel == "email":  # type: ignore[union-attr]
                                    address = record.recipient  # type: ignore[union-attr]
                            elif kind == "changes":
                                address = getattr(record, "email", None)
                            if address and address not in known_addresses and address.strip():
                                addresses[address] = pseudo.address_ref(address)
                    if n % _BATCH == 0:
                        conn.send_bytes(encoder.encode((decoded, others, dict(topics), numbers, addresses)))
                        decoded, others, topics, numbers, addresses = [], [], Counter(), {}, {}
        conn.send_bytes(encoder.encode((decoded, others, dict(topics), numbers, addresses)))
        conn.send_bytes(b"")
    finally:
        conn.close()


def _parallel(paths: list[str], settings: Settings) -> Iterator[_Batch]:
    ctx: Any = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    receiver, sender = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_decode_into, args=(paths, settings, sender), daemon=True)
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
        swept_at = engine.sweep_due()
        if swept_at is not None and isinstance(engine.numbers, dict):
            engine.sweep(list(engine.numbers.items()), swept_at)
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

    # verdicts and delivery outcomes are for metrics; drain() below drops them
    collect_metrics, engine.collect_metrics = engine.collect_metrics, False
    # Fewer young-generation collections: the engine allocates a few containers per
    # record that mostly live on (state), and each collection walks the young ones
    # (~2% of the engine's instructions at the default 700).
    gc_threshold = gc.get_threshold()
    gc.set_threshold(max(gc_threshold[0], _GC_YOUNG), *gc_threshold[1:])
    try:
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
            process_many = engine.process_decoded_many
            # an event id new to the child is new to the engine only if the engine started empty
            fresh = not engine.partitions and isinstance(engine.numbers, dict) and not engine.numbers
            learn = engine.pseudonymiser.learn
            for decoded, others, topics, numbers, addresses in _parallel(files, engine.settings):
                learn(numbers, addresses)
                summary.by_topic.update(topics)
                # the other lines go between the decoded records, at their positions in the batch
                done = 0
                for i, (position, item) in enumerate(others):
                    upto = position - i  # decoded records before this line
                    if upto > done:
                        process_many(decoded[done:upto], now, fresh)
                        done = upto
                    if len(item) == 4:
                        bad_envelope(*item)
                    else:
                        topic, partition, offset, key, payload, ts = item
                        process(topic, partition, offset, key, payload, now, ts)
                process_many(decoded[done:] if done else decoded, now, fresh)
                summary.records += len(decoded) + len(others)
                now = _now_us()
                drain()
                bar.show(summary, started, len(all_alerts))
        engine.flush(_now_us())
        drain()
    finally:
        engine.collect_metrics = collect_metrics
        gc.set_threshold(*gc_threshold)
    bar.done()
    summary.seconds = time.monotonic() - started
    summary.late = sum(engine.stats.late.values())
    summary.duplicates = sum(engine.stats.duplicates.values())
    return summary, all_alerts


def progress_stream() -> IO[str] | None:
    return sys.stderr if sys.stderr.isatty() else None
