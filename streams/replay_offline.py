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
from itertools import islice
from multiprocessing.connection import Connection
from pathlib import Path
from typing import IO, Annotated, Any, Final, Union, get_args, get_origin, get_type_hints

import msgspec

from detectors.alerts import RETRACTED, Alert, encode_alert
from detectors.arrival import DELIVERY, DUPLICATE, NOTIFICATION, Arrival
from detectors.capture import Envelope, decode_line
from detectors.engine import TOPIC_KINDS, Engine, Remembered
from detectors.incidents import Incidents, encode_record
from detectors.privacy import Pseudonymiser
from detectors.records import (
    _FAST,
    _GOOD_MSISDNS,
    BAD_ENVELOPE,
    CHANGE_CLASSES,
    NEST_CHECK_MIN_LEN,
    BadRecord,
    Delivery,
    Outbound,
    _decode_strict,
    _good_msisdn,
    future_bound,
    good_sms,
    too_deep,
)
from detectors.settings import Settings
from detectors.timefmt import _FRACTIONS, _HOURS, _MINSEC, parse_common
from detectors.wording import masked_recipient

_json = msgspec.json.Encoder()


@dataclass
class Summary:
    records: int = 0
    by_topic: Counter[str] = field(default_factory=Counter)
    alerts_by_kind: Counter[str] = field(default_factory=Counter)
    alerts_by_severity: Counter[str] = field(default_factory=Counter)
    # contract 1.1 corrections, by kind: of the alerts above those raised late; the retractions,
    # counted here only (as notifguard_alerts_total and its two correction counters count them)
    raised_late: Counter[str] = field(default_factory=Counter)
    retracted: Counter[str] = field(default_factory=Counter)
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
        if self.raised_late or self.retracted:
            lines.append(f"  {'of them raised late':<32}{sum(self.raised_late.values()):>8,}")
            lines.append(f"retractions  {sum(self.retracted.values()):>10,}")
            lines += [f"  {k:<32}{v:>8,}" for k, v in sorted(self.retracted.items())]
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
    if a.status == RETRACTED:
        return f"[RETRACTED] {a.kind:<28} {a.event_time}  {a.subject.msisdn_masked}  {a.reason or a.summary}"
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
# line with detectors.records.decode (the same function Engine.process calls),
# and runs the arrival stage for it with the same component the engine runs
# (detectors.arrival.Arrival: watermarks, idleness, grace buffer, release
# order, pending duplicates), starting from the engine's arrival state. It
# sends the records in the order the engine is to apply them; the parent
# applies them with Engine.apply_released (where duplicates of records applied
# before are found, in the numbers' seen ids, as in one process), sweeps where
# the child says (Engine.sweep, at the points and event times the
# one-process batches would), and takes over the child's arrival state at the
# end. Lines that do not decode go to the parent as received and through
# Engine.process, which dead-letters them exactly as in one process. Both
# modes give the same alerts, dead letters, counts and state.
#
# The child also fills the engine's memos (Engine.learn): it computes the keyed
# hashes of numbers (it needs them), and those of the addresses and the masked
# recipients of the records it sends (as it decodes them, in file order: memos
# of functions of their key alone, so the order changes nothing), each once,
# sent with the next message. The engine's share of the work grew with the
# correction horizon (the numbers' past); this keeps the two processes about as
# busy (docs/performance.md).

_BATCH = 2048  # lines between two drains (sweep checks), in both modes
_SEND = 256  # lines a message (a divisor of _BATCH); small ones keep the records in the caches
_CHUNK = 64  # lines read and decoded at once
_PARALLEL_MIN_BYTES = 4 << 20  # below this, starting a process costs more than it saves
_MASKS_SENT_MAX = 100_000  # recipients the child remembers having sent the masks of, by channel
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
        f"_{cls.__name__}Wire",
        fields,
        bases=(cls,),
        array_like=True,
        frozen=True,
        gc=False,
        tag_field="type",
        tag=tag,
    )


_WIRE: dict[type, Any] = {Outbound: _wire_type(Outbound, "outbound"), Delivery: _wire_type(Delivery, "delivery")}
for _cls in CHANGE_CLASSES:
    _WIRE[_cls] = _wire_type(_cls, str(_cls.__struct_config__.tag))
_TAG = {cls: w.__struct_config__.tag for cls, w in _WIRE.items()}
# Where a record's event_time is among its fields (the same in every record class). The transfer
# form sends it empty: the engine reads a record's event time as the `t` sent beside it, never its
# text (re-judging's stand-ins have none either), and leaving it out spares the parent decoding
# 24 characters a record. Both modes giving the same alerts and state (tests/detectors/
# test_replay_pipeline.py) holds the engine to that.
_EVENT_TIME: Final = Outbound.__struct_fields__.index("event_time")
assert all(msgspec.structs.fields(cls)[_EVENT_TIME].name == "event_time" for cls in _WIRE)
# A message: the records to apply, flat (category, event time, late, record for
# each, in apply order); the sweeps, as (records of the message applied before
# it, event time to sweep at); the other lines, as lists: [topic, partition,
# offset, key, payload, ts] to process as received (they are dead-lettered), or
# [path, line number, line, error] for a line that is no envelope; lines per
# topic; the memo entries new since the last message (Engine.learn): msisdn ->
# msisdn_ref, address -> its keyed hash, recipient -> its mask (e-mail, sms).
_Item: Any = Union[(int, bool, Remembered, *_WIRE.values())]
_Memos = tuple[dict[str, str], dict[str, bytes], dict[str, str], dict[str, str]]
_Batch = tuple[list[Any], list[tuple[int, int]], list[list[Any]], dict[str, int], _Memos]
_batch_decoder: msgspec.msgpack.Decoder[_Batch] = msgspec.msgpack.Decoder(
    tuple[list[_Item], list[tuple[int, int]], list[list[Any]], dict[str, int], _Memos]
)
# The last message: the child's arrival state (detectors.arrival.Arrival.snapshot).
_envelopes = msgspec.json.Decoder(Envelope)


def _lines(paths: list[str]) -> Iterator[tuple[str, int, bytes]]:
    for path in paths:
        with open(path, "rb") as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    yield path, lineno, line


def _read(paths: list[str]) -> Iterator[list[Any]]:
    """Chunks of lines, each without its blank lines: an item is the line's Envelope,
    or (path, line number, line, error) for a line that is no envelope.

    Each line is decoded alone, as decode_line does (a chunk's lines through
    map, one by one when one of them fails).
    """
    decode_envelope = _envelopes.decode
    for path in paths:
        with open(path, "rb") as f:
            lineno = 1
            while lines := list(islice(f, _CHUNK)):
                # a long line may nest too deep for the decoder: decode_line checks
                decode = decode_line if max(map(len, lines)) > NEST_CHECK_MIN_LEN else decode_envelope
                try:
                    items: list[Any] = list(map(decode, lines))
                except msgspec.DecodeError:
                    items = []
                    for i, line in enumerate(lines, lineno):
                        if not line.strip():
                            continue
                        try:
                            items.append(decode(line))
                        except msgspec.DecodeError as err:
                            items.append((path, i, line.rstrip(b"\n"), str(err)))
                yield items
                lineno += len(lines)


def _decode_into(paths: list[str], settings: Settings, conn: Connection, arrival_state: list[Any]) -> None:
    """Child process: decode every line, run arrival (detectors.arrival, as Engine.process_decoded
    does), send what it releases in batches, its final state, then b"".

    Decoding is detectors.records.decode, its fast path inlined. The sweep
    points are Engine.sweep_due's at the drains of the replay's batches (every
    _BATCH lines and at the end). `arrival_state`: the engine's (an Arrival
    snapshot, its buffer empty).
    """
    gc.disable()  # the child makes no reference cycles, and exits at the end
    encoder = msgspec.msgpack.Encoder()
    astuple = msgspec.structs.astuple
    tag = dict(_TAG)
    t_ = settings.topics
    topic_names = (t_.changes, t_.outbound, t_.delivery)  # by category
    category_of = {name: i for i, name in enumerate(topic_names)}
    fast_decoders = [_FAST[kind].decode for kind in TOPIC_KINDS]
    hours, minsecs, fractions, good_msisdns = _HOURS, _MINSEC, _FRACTIONS, _GOOD_MSISDNS
    us = settings.us
    arrival = Arrival(
        us(settings.grace_s),
        us(settings.idle_flush_s),
        us(settings.expiry_sweep_interval_s),
        settings.max_buffered,
        us(settings.correction_horizon_s),
    )
    arrival.restore(arrival_state)
    arrive, take_ready, sweep_due = arrival.arrive, arrival.take_ready, arrival.sweep_due
    skew = us(settings.max_future_skew_s)
    pseudo = Pseudonymiser(settings.pseudonymisation_key.reveal().encode())
    known_numbers = pseudo.numbers_memo()
    known_addresses = pseudo.addresses_memo()
    msisdn_ref, address_ref = pseudo.msisdn_ref, pseudo.address_ref
    # the recipients whose masks the engine has been sent, by channel (bounded: past
    # _MASKS_SENT_MAX, sent again)
    masked_email: set[str] = set()
    masked_sms: set[str] = set()
    lines_by = [0, 0, 0]  # lines per input topic, by category
    out: list[Any] = []
    sweeps: list[tuple[int, int]] = []
    others: list[Any] = []
    sent_by = [0, 0, 0]  # lines_by when the last message was sent
    other_topics: Counter[str] = Counter()
    numbers: dict[str, str] = {}
    addresses: dict[str, bytes] = {}
    email_masks: dict[str, str] = {}
    sms_masks: dict[str, str] = {}
    n = 0  # lines

    def learn_recipient(recipient: str, channel: str) -> None:
        """The engine's memo entries for a recipient of a mail or a bounce (e-mail), or of an sms."""
        if channel == "email":
            if recipient not in known_addresses:
                addresses[recipient] = address_ref(recipient)
            masked, masks = masked_email, email_masks
        else:  # (an sms: the keyed hash of the recipient number)
            if recipient not in known_numbers:
                numbers[recipient] = msisdn_ref(recipient)
            masked, masks = masked_sms, sms_masks
        if recipient not in masked:
            if len(masked) >= _MASKS_SENT_MAX:
                masked.clear()
            masked.add(recipient)
            masks[recipient] = masked_recipient(recipient, channel)

    clock = arrival.clock  # the capture's record timestamps play the wall clock (idleness)

    def wire(category: int, record: Any) -> Any:
        """The transfer form of a record (its class's tag and fields), or a Remembered's."""
        if category == DELIVERY and record.status != "bounced":
            return ("remembered", record.msisdn, record.event_id)  # all the engine needs of it
        cls = record.__class__
        wire_tag = tag.get(cls)
        if wire_tag is None:  # a subclass (the fast decoders' classes)
            wire_tag = tag[cls] = next(tag[c] for c in cls.__mro__ if c in tag)
        fields = astuple(record)
        # (the event time travels as `t`: its text is not sent, see _EVENT_TIME)
        return (wire_tag, *fields[:_EVENT_TIME], "", *fields[_EVENT_TIME + 1 :])

    def message() -> bytes:
        topics = {name: a - b for name, a, b in zip(topic_names, lines_by, sent_by, strict=True) if a != b}
        for name, k in other_topics.items():
            topics[name] = topics.get(name, 0) + k
        sent_by[:] = lines_by
        other_topics.clear()
        return encoder.encode((out, sweeps, others, topics, (numbers, addresses, email_masks, sms_masks)))

    try:
        for chunk in _read(paths):
            start = 0
            while start < len(chunk):
                room = _SEND - n % _SEND
                segment = chunk[start : start + room] if start or room < len(chunk) else chunk
                start += len(segment)
                n += len(segment)
                for env in segment:
                    if env.__class__ is tuple:  # no envelope
                        others.append(env)
                        continue
                    topic = env.topic
                    category = category_of.get(topic)
                    if category is None:
                        other_topics[topic] += 1
                        others.append((topic, env.partition, env.offset, env.key, env.payload, env.ts))
                        continue
                    lines_by[category] += 1
                    # detectors.records.decode, its fast path inlined
                    key, payload = env.key, env.payload
                    bound = future_bound(env.ts, None, skew)
                    record: Any = None
                    if payload is not None and (len(payload) <= NEST_CHECK_MIN_LEN or not too_deep(payload)):
                        try:
                            record = fast_decoders[category](payload)
                        except Exception:  # the strict path below says why
                            record = None
                    if record is not None:
                        text = record.event_time
                        t = None
                        if len(text) == 24:
                            hour = hours.get(text[:13])
                            minsec = minsecs.get(text[13:19])
                            fraction = fractions.get(text[19:])
                            if hour is not None and minsec is not None and fraction is not None:
                                t = hour + minsec + fraction
                        if t is None:
                            t = parse_common(text)
                        msisdn = record.msisdn
                        if (
                            t is None
                            or (bound is not None and t > bound)
                            or key != msisdn
                            or not (msisdn in good_msisdns or _good_msisdn(msisdn))
                            or (category == NOTIFICATION and record.channel == "sms" and not good_sms(record))
                        ):
                            record = None
                    if record is None:
                        try:
                            record, t = _decode_strict(TOPIC_KINDS[category], key, payload, bound)
                        except BadRecord:
                            others.append((topic, env.partition, env.offset, key, payload, env.ts))
                            continue
                        msisdn = record.msisdn
                    ref = known_numbers.get(msisdn)
                    if ref is None:
                        ref = numbers[msisdn] = msisdn_ref(msisdn)
                    # the engine's memos (Engine.learn): what it will hash and mask of this record
                    if category == NOTIFICATION:
                        recipient = record.recipient
                        if recipient not in (masked_email if record.channel == "email" else masked_sms):
                            learn_recipient(recipient, record.channel)
                    elif category == DELIVERY:
                        if record.status == "bounced" and record.recipient not in masked_email:
                            learn_recipient(record.recipient, "email")
                    else:
                        email = getattr(record, "email", None)
                        if email and email not in known_addresses:  # (a contract's address: hashed only)
                            addresses[email] = address_ref(email)
                    ts = env.ts
                    if ts is not None:
                        clock = ts * 1000
                    assert t is not None  # (decoded)
                    status = arrive(category, env.partition, t, record, ref, clock)
                    if status and status != DUPLICATE:  # LATE or TOO_LATE: applied at once (the status says how)
                        out += (category, t, status, wire(category, record))
                    for item in take_ready():  # (what is due: detectors.arrival decides)
                        out += (item[1], item[0], False, wire(item[1], item[6]))
                if n % _SEND:
                    continue
                if n % _BATCH == 0:  # where the replay drains, Engine.sweep_due
                    at = sweep_due()
                    if at is not None:
                        sweeps.append((len(out) // 4, at))
                conn.send_bytes(message())
                out, sweeps, others = [], [], []
                numbers, addresses, email_masks, sms_masks = {}, {}, {}, {}
        if n % _BATCH:
            at = sweep_due()
            if at is not None:
                sweeps.append((len(out) // 4, at))
        for item in arrival.take_all():  # Engine.flush
            out += (item[1], item[0], False, wire(item[1], item[6]))
        conn.send_bytes(message())
        conn.send_bytes(encoder.encode(arrival.snapshot()))
        conn.send_bytes(b"")
    finally:
        conn.close()


def _parallel(paths: list[str], settings: Settings, engine: Engine, end: list[Any]) -> Iterator[_Batch]:
    """The child's messages; its arrival state (an Arrival snapshot) is appended to `end` after the last."""
    ctx: Any = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    receiver, sender = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_decode_into, args=(paths, settings, sender, engine.arrival.snapshot()), daemon=True)
    child.start()
    sender.close()
    try:
        last: bytes | None = None
        while True:
            try:
                data = receiver.recv_bytes()
            except EOFError:
                raise RuntimeError(f"the decoding process ended early (exit code {child.exitcode})") from None
            if not data:
                break
            if last is not None:
                yield _batch_decoder.decode(last)
            last = data
        if last is None:
            raise RuntimeError("the decoding process sent nothing")
        end.append(msgspec.msgpack.decode(last))
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
    incidents_out: IO[bytes] | None = None,
    incidents: Incidents | None = None,
) -> tuple[Summary, list[Alert]]:
    """Run captures through a fresh engine; returns the summary and every alert.

    `jobs`: 1 decodes in this process, 2 in a second one (same engine, same
    results); None picks 2 for large inputs on a machine with two cores. An
    engine with records in its grace buffer, or whose numbers are no dict, gets 1.

    The capture's record timestamps (`ts`) are the arrival clock (detectors.arrival):
    a topic-partition with no record for `idle_flush_s` of them is idle.

    `incidents_out`: the incident records (detectors.incidents), one for each incident
    that changed in a batch of records, by the aggregator `incidents` (default settings
    if None); its clock is the alerts' event time only, so the records are the same
    every time.
    """
    if incidents_out is not None and incidents is None:
        incidents = Incidents()
    files = [str(p) for p in paths]
    if jobs is None:
        jobs = default_jobs(files)
    engine = engine or Engine(settings, new_id=lambda: uuid.uuid4().hex)
    if engine.pending_count() or not isinstance(engine.numbers, dict):
        jobs = 1  # the second process starts from the engine's arrival state with an empty buffer
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
            if a.status == RETRACTED:
                summary.retracted[a.kind] += 1
            else:
                summary.alerts_by_kind[a.kind] += 1
                summary.alerts_by_severity[a.severity] += 1
                if a.late:
                    summary.raised_late[a.kind] += 1
            if alerts_out is not None:
                alerts_out.write(encode_alert(a) + b"\n")
            if print_alerts is not None:
                print_alerts.write(alert_line(a) + "\n")
        all_alerts.extend(alerts)
        if incidents is not None:
            for a in alerts:
                incidents.add(a)
            if incidents_out is not None:
                for inc in incidents.changes():
                    incidents_out.write(encode_record(inc) + b"\n")
        for d in dead:
            summary.deadletters[d.reason_code] += 1
            if deadletter_out is not None:
                deadletter_out.write(_json.encode(d) + b"\n")

    def bad_envelope(path: str, lineno: int, line: bytes, err: str) -> None:
        engine._dead_letter(  # noqa: SLF001 - the engine's own dead-letter path (first-party)
            f"{path}:{lineno}",
            None,
            None,
            None,
            None,
            line,
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
            clock = engine.arrival.clock
            for path, lineno, line in _lines(files):
                summary.records += 1
                try:
                    env = decode_line(line)
                except msgspec.DecodeError as err:
                    bad_envelope(path, lineno, line.rstrip(b"\n"), str(err))
                    continue
                by_topic[env.topic] += 1
                if env.ts is not None:
                    clock = env.ts * 1000
                process(env.topic, env.partition, env.offset, env.key, env.payload, now, env.ts, None, clock)
                if summary.records % _BATCH == 0:
                    now = _now_us()
                    drain()
                    bar.show(summary, started, len(all_alerts))
            if summary.records % _BATCH:
                drain()  # before the flush, as with two processes: the sweeps are at the same points
        else:
            apply_released = engine.apply_released
            learn = engine.learn
            sweep = engine.sweep
            numbers_of = engine.numbers
            assert isinstance(numbers_of, dict)
            end: list[Any] = []
            for items, sweeps, others, topics, memos in _parallel(files, engine.settings, engine, end):
                learn(*memos)
                summary.by_topic.update(topics)
                summary.records += sum(topics.values())
                for item in others:
                    if len(item) == 4:
                        summary.records += 1
                        bad_envelope(*item)
                    else:
                        topic, partition, offset, key, payload, ts = item
                        process(topic, partition, offset, key, payload, now, ts)
                done = 0
                for before, at in sweeps:  # where the one-process replay's drains sweep
                    apply_released(items[done : before * 4], now)
                    done = before * 4
                    sweep(list(numbers_of.items()), at)
                apply_released(items[done:] if done else items, now)
                now = _now_us()
                drain()
                bar.show(summary, started, len(all_alerts))
            engine.arrival.restore(end[0])
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
