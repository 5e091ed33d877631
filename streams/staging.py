"""Staging tools on a real Kafka cluster (kafka-python): capture, replay and check.

- `notifguard capture`: topics -> a capture file, byte for byte the envelope
  `kcat -C -J` prints (field order, escaping, `null` keys, `headers`).
- `notifguard replay --bootstrap`: capture files -> topics, keyed, optionally
  paced, renamed and rebased to the present.
- `notifguard check SCENARIO`: one scenario into a running system, isolated per
  run, then wait for exactly its expected alerts on the alerts topic.
- `notifguard check CAPTURE`: captures into a running system as `replay
  --bootstrap` produces them, then wait for exactly the alerts the offline
  engine raises on the records the broker acknowledged.

The pure parts (envelope formatting, capture parsing, rebasing, isolation,
alert-set comparison) are plain functions so tests can use them without Kafka.
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import json
import os
import re
import secrets
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

from detectors.alerts import Alert
from detectors.capture import Envelope
from detectors.privacy import mask_msisdn
from detectors.settings import Settings
from detectors.timefmt import parse_rfc3339, rfc3339
from streams.acls import capture_acls, replay_acls, topic_needs
from streams.config import load_kafka_security
from streams.kafka_access import check_topics
from streams.kafka_security import PLAINTEXT, KafkaSecurity, client_kwargs

# ---------------------------------------------------------------------------
# kcat -J envelope
# ---------------------------------------------------------------------------

# kcat 1.7.1 writes JSON with yajl: '"' and '\' escaped, \b \f \n \r \t short,
# other control characters as \u00XX (upper-case hex), everything else (also
# non-ASCII and invalid UTF-8) as the raw bytes.
_YAJL_SHORT = {0x22: b'\\"', 0x5C: b"\\\\", 0x08: b"\\b", 0x0C: b"\\f", 0x0A: b"\\n", 0x0D: b"\\r", 0x09: b"\\t"}
_YAJL_ESC = {bytes([c]): _YAJL_SHORT.get(c, b"\\u%04X" % c) for c in [*range(0x20), 0x22, 0x5C]}
_YAJL_RE = re.compile(rb'[\x00-\x1f"\\]')


def yajl_string(data: bytes | str) -> bytes:
    """A JSON string exactly as kcat's yajl writes it (bytes are not UTF-8-validated)."""
    raw = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data
    return b'"' + _YAJL_RE.sub(lambda m: _YAJL_ESC[m.group()], raw) + b'"'


def _opt(data: bytes | str | None) -> bytes:
    return b"null" if data is None else yajl_string(data)


def kcat_line(
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    ts: int | None = None,
    tstype: str = "create",
    broker: int = -1,
    headers: Sequence[tuple[str, bytes | None]] = (),
) -> bytes:
    """One capture line, as `kcat -C -J` prints it (newline included).

    kcat 1.7.1: topic, partition, offset, tstype+ts (when the record has a
    timestamp), broker, headers (only when there are any, as a flat
    [name, value, ...] array), key, payload; a missing key or value is null.
    """
    parts = [b'{"topic":', yajl_string(topic), b',"partition":%d,"offset":%d' % (partition, offset)]
    if ts is not None:
        parts += [b',"tstype":', yajl_string(tstype), b',"ts":%d' % ts]
    parts.append(b',"broker":%d' % broker)
    if headers:
        parts.append(b',"headers":[' + b",".join(_opt(k) + b"," + _opt(v) for k, v in headers) + b"]")
    parts += [b',"key":', _opt(key), b',"payload":', _opt(value), b"}\n"]
    return b"".join(parts)


def envelope_line(env: Envelope) -> bytes:
    """A detectors.capture.Envelope in kcat's layout."""
    return kcat_line(
        env.topic,
        env.partition,
        env.offset,
        None if env.key is None else _to_bytes(env.key),
        None if env.payload is None else _to_bytes(env.payload),
        env.ts,
        env.tstype or "create",
        -1 if env.broker is None else env.broker,
    )


def _to_bytes(text: str) -> bytes:
    """Back to the original bytes: raw non-UTF-8 bytes of a kcat line survive (surrogateescape)."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


@dataclass(frozen=True)
class CaptureRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    ts: int | None = None
    headers: tuple[tuple[str, bytes | None], ...] = ()


class BadCaptureLine(ValueError):
    pass


def parse_capture_line(line: bytes) -> CaptureRecord:
    """Parse one kcat -J line (also one with raw non-UTF-8 bytes, as kcat writes them)."""
    try:
        doc = json.loads(line.decode("utf-8", "surrogateescape"))
    except ValueError as err:
        raise BadCaptureLine(f"not JSON: {err}") from None
    if not isinstance(doc, dict):
        raise BadCaptureLine("not a JSON object")
    topic, partition, offset = doc.get("topic"), doc.get("partition"), doc.get("offset")
    if not isinstance(topic, str) or not topic:
        raise BadCaptureLine("no topic")
    if type(partition) is not int or type(offset) is not int:
        raise BadCaptureLine("partition and offset must be integers")
    key, payload, ts = doc.get("key"), doc.get("payload"), doc.get("ts")
    if key is not None and not isinstance(key, str):
        raise BadCaptureLine("key must be a string or null")
    if payload is not None and not isinstance(payload, str):
        raise BadCaptureLine("payload must be a string or null")
    if ts is not None and type(ts) is not int:
        raise BadCaptureLine("ts must be an integer")
    headers: list[tuple[str, bytes | None]] = []
    raw_headers = doc.get("headers")
    if isinstance(raw_headers, list):
        for i in range(0, len(raw_headers) - 1, 2):
            name, val = raw_headers[i], raw_headers[i + 1]
            if isinstance(name, str) and (val is None or isinstance(val, str)):
                headers.append((name, None if val is None else _to_bytes(val)))
    elif isinstance(raw_headers, dict):
        headers += [(str(k), None if v is None else _to_bytes(str(v))) for k, v in raw_headers.items()]
    return CaptureRecord(
        topic,
        partition,
        offset,
        None if key is None else _to_bytes(key),
        None if payload is None else _to_bytes(payload),
        ts,
        tuple(headers),
    )


def read_capture(path: str | Path, bad: Counter[str] | None = None) -> Iterator[CaptureRecord]:
    """Records of one capture file in file order; lines that are no envelope are counted in `bad`."""
    with open(path, "rb") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                yield parse_capture_line(line)
            except BadCaptureLine:
                if bad is not None:
                    bad[str(path)] += 1


# ---------------------------------------------------------------------------
# Event time rebasing
# ---------------------------------------------------------------------------


def event_time_us(value: bytes | None) -> int | None:
    """`event_time` of a JSON-object payload in µs, or None (not JSON, no/odd event_time)."""
    if value is None:
        return None
    try:
        doc = json.loads(value)
        return parse_rfc3339(doc["event_time"]) if isinstance(doc, dict) else None
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def shift_event_time(value: bytes | None, delta_us: int) -> tuple[bytes | None, int | None]:
    """(payload with event_time moved by delta_us, the new event time in µs).

    A payload that is no JSON object, or has no parseable event_time, comes
    back unchanged with None: it is a bad record and must reach the detector as it was.
    """
    if value is None:
        return None, None
    try:
        doc = json.loads(value)
        if not isinstance(doc, dict):
            return value, None
        new = parse_rfc3339(doc["event_time"]) + delta_us
    except (ValueError, KeyError, TypeError, AttributeError):
        return value, None
    doc["event_time"] = rfc3339(new)
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode(), new


def parse_rebase_target(text: str, now_us: int | None = None) -> int:
    """`now` or an RFC 3339 time with offset, as µs."""
    if text.strip().lower() == "now":
        return time.time_ns() // 1000 if now_us is None else now_us
    return parse_rfc3339(text.strip())


def _record_time_us(rec: CaptureRecord) -> int | None:
    """The time pacing and rebasing go by: the Kafka timestamp, else the payload's event_time."""
    if rec.ts is not None and rec.ts >= 0:
        return rec.ts * 1000
    return event_time_us(rec.value)


# ---------------------------------------------------------------------------
# capture
# ---------------------------------------------------------------------------


@dataclass
class CaptureSummary:
    records: int = 0
    by_topic: Counter[str] = field(default_factory=Counter)
    stopped: str = ""
    not_at_end: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def render(self, out: str) -> str:
        topics = ", ".join(f"{k} {v}" for k, v in sorted(self.by_topic.items())) or "no records"
        line = f"captured {self.records} records ({topics}) to {out} in {self.seconds:.1f} s; stopped: {self.stopped}"
        if self.not_at_end:
            line += f"; NOT at end: {', '.join(self.not_at_end)}"
        return line


class _Merge:
    """Writes records of many partitions in timestamp order, keeping each partition's own order.

    A record is written once every partition that may still deliver records has
    one buffered, so the file reads in (approximate) event-time order, which the
    offline replay's watermark needs (kcat itself writes in arrival order).
    """

    def __init__(self, parts: Iterable[Any], out: IO[bytes]) -> None:
        self.buf: dict[Any, deque[tuple[int, bytes]]] = {tp: deque() for tp in parts}
        self.open = set(self.buf)
        self.out = out

    def add(self, tp: Any, ts: int, line: bytes) -> None:
        self.buf[tp].append((ts, line))

    def close_partition(self, tp: Any) -> None:
        self.open.discard(tp)

    def drain(self, final: bool = False) -> None:
        while True:
            heads = [(q[0][0], str(tp), tp) for tp, q in self.buf.items() if q]
            if not heads:
                return
            if not final and any(not self.buf[tp] for tp in self.open):
                return
            _, _, tp = min(heads)
            self.out.write(self.buf[tp].popleft()[1])


def capture(
    bootstrap: str,
    topics: Sequence[str],
    out: IO[bytes],
    idle_timeout: float = 5.0,
    max_records: int = 0,
    security: KafkaSecurity = PLAINTEXT,
) -> CaptureSummary:
    """Read `topics` from the beginning up to their end offsets as of now; no consumer group."""
    from kafka import KafkaConsumer, TopicPartition

    from streams.topics import _admin

    started = time.monotonic()
    summary = CaptureSummary()
    admin = _admin(bootstrap, security)
    try:
        described = admin.describe_topics(list(topics))
    finally:
        admin.close()
    leaders: dict[Any, int] = {}
    for t in described:
        if t.get("error_code", 0) != 0 or not t.get("partitions"):
            raise LookupError(f"topic {t.get('name')!r} does not exist on {bootstrap}")
        for p in t["partitions"]:
            leaders[TopicPartition(t["name"], p["partition_index"])] = p.get("leader_id", -1)
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        client_id="notifguard-capture",
        **client_kwargs(security),
        isolation_level="read_committed",  # as kcat (librdkafka's default): no aborted transactions
    )
    try:
        tps = sorted(leaders, key=lambda tp: (tp.topic, tp.partition))
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        begin = consumer.beginning_offsets(tps)
        merge = _Merge(tps, out)
        for tp in tps:
            if begin[tp] >= end[tp]:
                merge.close_partition(tp)
        last = time.monotonic()
        while True:
            if not merge.open:
                summary.stopped = "all partitions at their end offsets"
                break
            if max_records and summary.records >= max_records:
                summary.stopped = f"max records ({max_records})"
                break
            if time.monotonic() - last >= idle_timeout:
                summary.stopped = f"idle for {idle_timeout:g} s"
                break
            polled = consumer.poll(timeout_ms=200, max_records=500)
            for tp, records in polled.items():
                for r in records:
                    if r.offset >= end[tp] or (max_records and summary.records >= max_records):
                        continue
                    tstype = {0: "create", 1: "logappend"}.get(r.timestamp_type, "unknown")
                    ts = r.timestamp if r.timestamp is not None and r.timestamp >= 0 else None
                    merge.add(
                        tp,
                        ts if ts is not None else -1,
                        kcat_line(
                            tp.topic,
                            tp.partition,
                            r.offset,
                            r.key,
                            r.value,
                            ts,
                            tstype,
                            leaders.get(tp, -1),
                            list(r.headers or ()),
                        ),
                    )
                    summary.records += 1
                    summary.by_topic[tp.topic] += 1
                    last = time.monotonic()
            for tp in list(merge.open):
                if consumer.position(tp) >= end[tp]:
                    merge.close_partition(tp)
            merge.drain()
        merge.drain(final=True)
        if not (max_records and summary.records >= max_records):
            summary.not_at_end = [f"{tp.topic}[{tp.partition}]" for tp in tps if tp in merge.open]
    finally:
        consumer.close()
    summary.seconds = time.monotonic() - started
    return summary


def capture_command(args: argparse.Namespace) -> int:
    from kafka.errors import KafkaError

    from streams.topics import wait_for_broker

    security = load_kafka_security(getattr(args, "config", None))
    if not wait_for_broker(args.bootstrap, timeout=10, security=security):
        print(f"notifguard capture: no Kafka broker answers at {args.bootstrap}", file=sys.stderr)
        return 2
    check_topics(args.bootstrap, security, topic_needs(capture_acls(args.topics)), existing=False)
    try:
        with ExitStack() as stack:
            sink = sys.stdout.buffer if args.out == "-" else stack.enter_context(open(args.out, "wb"))
            summary = capture(
                args.bootstrap, args.topics, sink, float(args.idle_timeout), int(args.max_records), security
            )
            sink.flush()
    except (LookupError, KafkaError) as err:
        print(f"notifguard capture: {err}", file=sys.stderr)
        return 2
    print(summary.render(args.out), file=sys.stderr)
    return 1 if summary.not_at_end else 0


# ---------------------------------------------------------------------------
# replay to Kafka
# ---------------------------------------------------------------------------


def parse_renames(items: Iterable[str]) -> dict[str, str]:
    renames = {}
    for item in items:
        old, sep, new = item.partition("=")
        if not sep or not old or not new:
            raise ValueError(f"--rename wants OLD=NEW, not {item!r}")
        renames[old] = new
    return renames


@dataclass
class ReplaySummary:
    produced: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)
    bad_lines: Counter[str] = field(default_factory=Counter)
    rebased: int = 0
    unchanged: int = 0
    delta_us: int | None = None
    first_error: str | None = None
    seconds: float = 0.0

    def render(self) -> str:
        total = sum(self.produced.values())
        lines = [f"replayed {total} records in {self.seconds:.1f} s"]
        lines += [f"  {t:<40}{n:>8}" for t, n in sorted(self.produced.items())]
        if self.delta_us is not None:
            lines.append(
                f"  event times shifted by {self.delta_us / 1e6:+.3f} s "
                f"({self.rebased} rebased, {self.unchanged} produced unchanged: no JSON event_time)"
            )
        for t, n in sorted(self.failed.items()):
            lines.append(f"  FAILED {t}: {n} records ({self.first_error})")
        for path, n in sorted(self.bad_lines.items()):
            lines.append(f"  skipped {n} lines of {path} that are no kcat -J envelope")
        return "\n".join(lines)


def _timed(path: str | Path, bad: Counter[str]) -> Iterator[tuple[int, int, CaptureRecord]]:
    """(pacing time µs, file position, record); a record without a time inherits its predecessor's."""
    prev = None
    for i, rec in enumerate(read_capture(path, bad)):
        t = _record_time_us(rec)
        t = prev if t is None else t
        prev = t
        yield (0 if t is None else t), i, rec


@dataclass(frozen=True)
class Produced:
    """One record as the broker acknowledged it: what `replay_to_kafka` sent, where it landed."""

    seq: int  # send order
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    ts: int | None

    def line(self) -> bytes:
        """As a capture line (kcat -J), for the offline replay of exactly what was produced."""
        return kcat_line(self.topic, self.partition, self.offset, self.key, self.value, self.ts)


def replay_to_kafka(
    bootstrap: str,
    paths: Sequence[str | Path],
    speed: float = 0.0,
    rebase_to_us: int | None = None,
    renames: dict[str, str] | None = None,
    keep_partitions: bool = False,
    sleep: Callable[[float], None] = time.sleep,
    sent: list[Produced] | None = None,
    security: KafkaSecurity = PLAINTEXT,
) -> ReplaySummary:
    """Produce capture records, keyed, in time order across files (each file's own order kept).

    `sent`: gets every acknowledged record (renamed, rebased, with the partition and
    offset the broker gave it), in send order.
    """
    from kafka import KafkaProducer

    if speed < 0:
        raise ValueError("--speed must be >= 0")
    renames = renames or {}
    summary = ReplaySummary()
    started = time.monotonic()
    if rebase_to_us is not None:
        # Paced (speed > 0): the first record is at the target and the rest follow
        # in real time. As fast as possible: the last record is at the target and
        # the rest lie before it, since brokers refuse timestamps far in the future
        # (message.timestamp.after.max.ms, 1 h by default in Kafka 4).
        times = []
        for path in paths:
            for rec in read_capture(path):
                t = event_time_us(rec.value)
                t = t if t is not None else _record_time_us(rec)
                if t is not None:
                    times.append(t)
        anchor = (min(times) if speed > 0 else max(times)) if times else None
        summary.delta_us = 0 if anchor is None else rebase_to_us - anchor
    lock = threading.Lock()

    def failed(topic: str) -> Callable[[Exception], None]:
        def errback(err: Exception) -> None:
            with lock:
                summary.failed[topic] += 1
                summary.first_error = summary.first_error or repr(err)

        return errback

    def acked(
        out: list[Produced],
        seq: int,
        key: bytes | None,
        value: bytes | None,
        ts: int | None,
    ) -> Callable[[Any], None]:
        def callback(meta: Any) -> None:
            stamp = ts if ts is not None or meta.timestamp is None or meta.timestamp < 0 else meta.timestamp
            with lock:
                out.append(Produced(seq, meta.topic, meta.partition, meta.offset, key, value, stamp))

        return callback

    producer = KafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=5, client_id="notifguard-replay", **client_kwargs(security)
    )
    try:
        first_t: int | None = None
        merged = heapq.merge(*(_timed(p, summary.bad_lines) for p in paths), key=lambda x: x[0])
        for seq, (t, _, rec) in enumerate(merged):
            if speed > 0:
                first_t = t if first_t is None else first_t
                wait = (t - first_t) / 1e6 / speed - (time.monotonic() - started)
                if wait > 0:
                    sleep(wait)
            value, ts = rec.value, rec.ts
            if summary.delta_us is not None:
                value, new_us = shift_event_time(rec.value, summary.delta_us)
                if new_us is not None:
                    summary.rebased += 1
                    ts = new_us // 1000
                else:
                    summary.unchanged += 1
                    ts = None if ts is None else (ts * 1000 + summary.delta_us) // 1000
            topic = renames.get(rec.topic, rec.topic)
            future = producer.send(
                topic,
                key=rec.key,
                value=value,
                timestamp_ms=ts,
                partition=rec.partition if keep_partitions else None,
                headers=[(k, v if v is not None else b"") for k, v in rec.headers] or None,
            )
            future.add_errback(failed(topic))
            if sent is not None:
                future.add_callback(acked(sent, seq, rec.key, value, ts))
            summary.produced[topic] += 1
        producer.flush()
    finally:
        producer.close(timeout=10)
    if sent is not None:
        sent.sort(key=lambda p: p.seq)
    for topic, n in summary.failed.items():
        summary.produced[topic] -= n
    summary.seconds = time.monotonic() - started
    return summary


def _missing_topics(bootstrap: str, names: Iterable[str], security: KafkaSecurity = PLAINTEXT) -> list[str]:
    from streams.topics import _admin, _existing

    names = sorted(set(names))
    admin = _admin(bootstrap, security)
    try:
        have = _existing(admin, names)
    finally:
        admin.close()
    return [n for n in names if n not in have]


def replay_to_kafka_command(args: argparse.Namespace, settings: Settings) -> int:
    from kafka.errors import KafkaError

    from streams.topics import wait_for_broker

    renames = parse_renames(args.rename or [])
    rebase = parse_rebase_target(args.rebase_time) if args.rebase_time else None
    security = load_kafka_security(args.config)
    if not wait_for_broker(args.bootstrap, timeout=10, security=security):
        print(f"notifguard replay: no Kafka broker answers at {args.bootstrap}", file=sys.stderr)
        return 2
    topics = {renames.get(r.topic, r.topic) for p in args.captures for r in read_capture(p)}
    missing = _missing_topics(args.bootstrap, topics, security)
    if missing:
        print(
            f"notifguard replay: topics missing on {args.bootstrap}: {', '.join(missing)} "
            "(auto-creation is off; create them, or map them with --rename OLD=NEW)",
            file=sys.stderr,
        )
        return 2
    check_topics(args.bootstrap, security, topic_needs(replay_acls(topics)))
    try:
        summary = replay_to_kafka(
            args.bootstrap,
            args.captures,
            float(args.speed),
            rebase,
            renames,
            keep_partitions=bool(getattr(args, "keep_partitions", False)),
            security=security,
        )
    except KafkaError as err:
        print(f"notifguard replay: {err}", file=sys.stderr)
        return 2
    print(summary.render(), file=sys.stderr)
    if summary.failed:
        print(
            "notifguard replay: some records were rejected (a record timestamp more than "
            "message.timestamp.after.max.ms, 1 h by default in Kafka 4, in the future?)",
            file=sys.stderr,
        )
        return 1
    return 0


# ---------------------------------------------------------------------------
# isolation: one scenario, replayed many times into one long-running system
# ---------------------------------------------------------------------------

_E164 = re.compile(r"\+[1-9][0-9]{6,14}")
_ID_FIELDS = ("event_id", "message_id", "contract_id", "customer_id")


class Isolation:
    """Rewrites ids, numbers and addresses of one run consistently, so runs do not share state.

    - ids (event, message, contract, customer): `<id>-<tag>`;
    - MSISDNs: the last 6 digits moved by a run-specific offset (mod 10^6), a
      bijection, so the result is E.164 again and distinct numbers stay distinct;
      strings that are no E.164 number (bad records) are left as they are;
    - e-mail addresses: `-<tag>` inserted into the local part (before a `+`
      sub-address, else before the last `@`), keeping case and surrounding
      spaces; the tag is lower-case, so two addresses normalise equal after
      the rewrite exactly when they did before.
    """

    def __init__(self, tag: str) -> None:
        if not re.fullmatch(r"[a-z0-9]{1,16}", tag):
            raise ValueError(f"isolation tag must be 1-16 lower-case letters or digits, not {tag!r}")
        self.tag = tag
        self._offset = int.from_bytes(hashlib.sha256(tag.encode()).digest()[:8], "big") % 999_999 + 1
        self.event_ids: dict[str, str] = {}

    @classmethod
    def new(cls) -> Isolation:
        return cls(secrets.token_hex(4))

    def ident(self, value: str) -> str:
        return f"{value}-{self.tag}"

    def event_id(self, value: str) -> str:
        new = self.ident(value)
        self.event_ids[new] = value
        return new

    def original_event_id(self, value: str) -> str | None:
        return self.event_ids.get(value)

    def msisdn(self, value: str) -> str:
        if not _E164.fullmatch(value):
            return value
        head, tail = value[:-6], int(value[-6:])
        return f"{head}{(tail + self._offset) % 1_000_000:06d}"

    def email(self, value: str) -> str:
        at = value.rfind("@")
        if at < 0:
            return value
        plus = value.find("+", 0, at)
        cut = plus if plus >= 0 else at
        return f"{value[:cut]}-{self.tag}{value[cut:]}"

    def address(self, value: str) -> str:
        """A recipient: an e-mail address or (sms) a number."""
        return self.email(value) if "@" in value else self.msisdn(value)

    def value(self, payload: str | None) -> str | None:
        """An input record's JSON value, rewritten; a payload that is no JSON object stays as it is."""
        if payload is None:
            return None
        try:
            doc = json.loads(payload)
        except ValueError:
            return payload
        if not isinstance(doc, dict):
            return payload
        for name in _ID_FIELDS:
            if isinstance(doc.get(name), str):
                doc[name] = self.event_id(doc[name]) if name == "event_id" else self.ident(doc[name])
        if isinstance(doc.get("msisdn"), str):
            doc["msisdn"] = self.msisdn(doc["msisdn"])
        if isinstance(doc.get("email"), str):
            doc["email"] = self.email(doc["email"])
        if isinstance(doc.get("recipient"), str):
            doc["recipient"] = self.address(doc["recipient"])
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":"))

    def envelope(self, env: Envelope) -> Envelope:
        key = None if env.key is None else self.msisdn(env.key)
        return Envelope(
            env.topic, env.partition, env.offset, self.value(env.payload), key, env.ts, env.tstype, env.broker
        )


def rebase_envelopes(envs: Sequence[Envelope], target_us: int, anchor: str = "last") -> list[Envelope]:
    """Shift all event times (payload and record ts) by one offset so the latest (or first) is at target.

    `last` keeps every record at or before the target: Kafka 4 rejects record
    timestamps more than an hour in the future (message.timestamp.after.max.ms),
    and a scenario often spans months.
    """
    times = [t for t in (event_time_us(_to_bytes(e.payload)) if e.payload else None for e in envs) if t is not None]
    if not times:
        return list(envs)
    delta = target_us - (max(times) if anchor == "last" else min(times))
    out = []
    for e in envs:
        value, new = shift_event_time(None if e.payload is None else _to_bytes(e.payload), delta)
        ts = new // 1000 if new is not None else (None if e.ts is None else (e.ts * 1000 + delta) // 1000)
        out.append(
            Envelope(
                e.topic,
                e.partition,
                e.offset,
                None if value is None else value.decode("utf-8", "surrogateescape"),
                e.key,
                ts,
                e.tstype,
                e.broker,
            )
        )
    return out


def staged_envelopes(
    scenario: Any,
    settings: Settings,
    isolation: Isolation | None,
    now_us: int,
) -> list[Envelope]:
    """A scenario as it is produced by `check`: isolated (optional), rebased so its last event is now."""
    envs = list(scenario.envelopes(settings.topics))
    if isolation is not None:
        envs = [isolation.envelope(e) for e in envs]
    return rebase_envelopes(envs, now_us, anchor="last")


# ---------------------------------------------------------------------------
# check: the pieces both checks share
# ---------------------------------------------------------------------------

_T = TypeVar("_T")


def _event_ids(payloads: Iterable[bytes | str | None]) -> set[str]:
    """The `event_id`s of the payloads that are JSON objects with one (bad records have none)."""
    ids: set[str] = set()
    for payload in payloads:
        try:
            doc = json.loads(payload or "")
        except ValueError:
            continue
        if isinstance(doc, dict) and isinstance(doc.get("event_id"), str):
            ids.add(doc["event_id"])
    return ids


def _alerts_consumer(bootstrap: str, alerts_topic: str, security: KafkaSecurity = PLAINTEXT) -> Any:
    """A consumer of every partition of the alerts topic, at its end offsets: a check
    opens it before producing, so it sees exactly the alerts that come after."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        client_id="notifguard-check",
        **client_kwargs(security),
        # an exactly-once worker's aborted sends are not alerts
        isolation_level="read_committed",
    )
    try:
        parts = consumer.partitions_for_topic(alerts_topic)
        if not parts:
            raise LookupError(f"alerts topic {alerts_topic!r} does not exist on {bootstrap}")
        tps = [TopicPartition(alerts_topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        for tp, off in consumer.end_offsets(tps).items():
            consumer.seek(tp, off)
    except BaseException:
        consumer.close()
        raise
    return consumer


def _await_alerts(
    consumer: Any,
    take: Callable[[bytes | None], _T | None],
    judge: Callable[[list[_T]], tuple[bool, bool]],
    deadline: float,
    settle: float,
    since: float,
    on_alert: Callable[[_T], None] | None = None,
) -> tuple[list[_T], bool]:
    """Read the alerts topic, keeping what `take` makes of a record (None: not this run's).

    `judge(seen)` says (complete: nothing expected is missing, wrong: something
    unexpected arrived). Stops when complete and wrong, or when complete and
    `settle` seconds passed since completing (and since `since`, the end of
    producing) with nothing wrong; else at `deadline` (monotonic), timed out.
    Returns what it kept and whether it timed out.
    """
    seen: list[_T] = []
    complete_at: float | None = None
    while True:
        complete, wrong = judge(seen)
        now = time.monotonic()
        if complete:
            complete_at = complete_at or now
            if wrong or now >= max(complete_at, since) + settle:
                return seen, False
        else:
            complete_at = None  # (a retraction can take an expected alert back)
        if now >= deadline:
            return seen, True
        wait_ms = int(max(10, min(500, (deadline - now) * 1000)))
        for records in consumer.poll(timeout_ms=wait_ms).values():
            for r in records:
                a = take(r.value)
                if a is not None:
                    seen.append(a)
                    if on_alert is not None:
                        on_alert(a)


def default_settle_s(settings: Settings) -> float:
    """Quiet time after the last expected alert: the pending verdicts at the end of a
    run are released by the idle-partition flush, up to max(grace, idle_flush) later."""
    env = os.environ.get("NOTIFGUARD_CHECK_SETTLE_S")
    if env:
        return float(env)
    return max(settings.grace_s, settings.idle_flush_s) + 5.0


def _check_preflight(
    bootstrap: str, topics: Iterable[str], timeout: float, security: KafkaSecurity = PLAINTEXT
) -> str | None:
    """Why a check cannot run on this cluster (no broker, topics missing), or None."""
    from streams.topics import wait_for_broker

    if not wait_for_broker(bootstrap, timeout=min(10.0, timeout), security=security):
        return f"no Kafka broker answers at {bootstrap}"
    topics = list(topics)
    missing = _missing_topics(bootstrap, topics, security)
    if missing:
        return f"topics missing on {bootstrap}: {', '.join(missing)}"
    # the last is the alerts topic, read; the others are written
    check_topics(bootstrap, security, topic_needs([*replay_acls(topics[:-1]), *capture_acls(topics[-1:])]))
    return None


# ---------------------------------------------------------------------------
# check SCENARIO
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SeenAlert:
    kind: str
    trigger: str  # original (pre-isolation) trigger event id
    late: bool | None = None


@dataclass
class Comparison:
    missing: list[tuple[str, str]]
    unexpected: list[tuple[str, str]]
    late_mismatch: list[tuple[str, str, bool | None, bool | None]]
    repeats: int = 0

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.late_mismatch)

    def render(self) -> str:
        lines = [f"  missing    {k:<32} trigger {t}" for k, t in self.missing]
        lines += [f"  unexpected {k:<32} trigger {t}" for k, t in self.unexpected]
        lines += [
            f"  late flag  {k:<32} trigger {t}: expected late={w}, got late={g}" for k, t, w, g in self.late_mismatch
        ]
        return "\n".join(lines)


def compare_alerts(expected: Iterable[Any], seen: Iterable[SeenAlert]) -> Comparison:
    """Expected (kind, trigger[, late]) against what arrived; repeats of one alert are not an error."""
    want = {(e.kind, e.trigger): getattr(e, "late", None) for e in expected}
    got: dict[tuple[str, str], bool | None] = {}
    repeats = 0
    for a in seen:
        if (a.kind, a.trigger) in got:
            repeats += 1
        got.setdefault((a.kind, a.trigger), a.late)
    late = [
        (k, t, want[(k, t)], got[(k, t)])
        for (k, t) in sorted(want.keys() & got.keys())
        if want[(k, t)] is not None and want[(k, t)] != got[(k, t)]
    ]
    return Comparison(sorted(want.keys() - got.keys()), sorted(got.keys() - want.keys()), late, repeats)


def alert_for_run(value: bytes | None, isolation: Isolation | None, run_ids: set[str]) -> SeenAlert | None:
    """The alert of an alerts-topic record if it belongs to this run (its trigger or evidence ids), else None."""
    if value is None:
        return None
    try:
        doc = json.loads(value)
    except ValueError:
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("kind"), str):
        return None
    trigger = doc.get("trigger_event_id")
    ids = [i for i in doc.get("event_ids") or [] if isinstance(i, str)]
    if not isinstance(trigger, str) or not ({trigger, *ids} & run_ids):
        return None
    original = isolation.original_event_id(trigger) if isolation is not None else trigger
    late = doc.get("late")
    return SeenAlert(doc["kind"], original or trigger, late if isinstance(late, bool) else None)


@dataclass
class CheckResult:
    comparison: Comparison
    produced: int
    seconds: float
    timed_out: bool
    tag: str | None


def run_check(
    bootstrap: str,
    scenario: Any,
    settings: Settings,
    timeout: float = 60.0,
    isolation: Isolation | None = None,
    settle_s: float | None = None,
    now_us: int | None = None,
    log: IO[str] | None = None,
    security: KafkaSecurity = PLAINTEXT,
) -> CheckResult:
    """Produce the (isolated, rebased) scenario, then watch the alerts topic from the offsets before it."""
    from kafka import KafkaProducer

    settle = default_settle_s(settings) if settle_s is None else settle_s
    started = time.monotonic()
    now_us = time.time_ns() // 1000 if now_us is None else now_us
    envs = staged_envelopes(scenario, settings, isolation, now_us)
    run_ids = _event_ids(e.payload for e in envs)
    consumer = _alerts_consumer(bootstrap, settings.topics.alerts, security)
    try:
        producer = KafkaProducer(
            bootstrap_servers=bootstrap, acks="all", client_id="notifguard-check", **client_kwargs(security)
        )
        try:
            for e in envs:
                producer.send(
                    e.topic,
                    key=None if e.key is None else _to_bytes(e.key),
                    value=None if e.payload is None else _to_bytes(e.payload),
                    timestamp_ms=e.ts,
                )
            producer.flush(timeout=max(1.0, timeout))
        finally:
            producer.close(timeout=10)
        produced_at = time.monotonic()
        if log is not None:
            tag = f" (run tag {isolation.tag})" if isolation else ""
            log.write(
                f"check {scenario.name}: produced {len(envs)} records{tag}, waiting for "
                f"{len(scenario.expect)} alerts on {settings.topics.alerts}\n"
            )

        def judge(seen: list[SeenAlert]) -> tuple[bool, bool]:
            comp = compare_alerts(scenario.expect, seen)
            return not comp.missing, bool(comp.unexpected or comp.late_mismatch)

        def show(a: SeenAlert) -> None:
            if log is not None:
                log.write(f"  alert {a.kind} trigger {a.trigger}{' late' if a.late else ''}\n")

        seen, timed_out = _await_alerts(
            consumer,
            lambda v: alert_for_run(v, isolation, run_ids),
            judge,
            started + timeout,
            settle,
            produced_at,
            show,
        )
    finally:
        consumer.close()
    return CheckResult(
        compare_alerts(scenario.expect, seen),
        len(envs),
        time.monotonic() - started,
        timed_out,
        isolation.tag if isolation else None,
    )


def _check_scenario(args: argparse.Namespace, settings: Settings) -> int:
    from kafka.errors import KafkaError

    from streams.scenarios import load

    scenario = load(args.targets[0])
    t = settings.topics
    security = load_kafka_security(args.config)
    why = _check_preflight(args.bootstrap, [t.outbound, t.changes, t.delivery, t.alerts], float(args.timeout), security)
    if why:
        print(f"notifguard check: {why}", file=sys.stderr)
        return 2
    isolation = Isolation.new() if getattr(args, "isolate", True) else None
    settle = getattr(args, "settle", None)
    try:
        result = run_check(
            args.bootstrap,
            scenario,
            settings,
            float(args.timeout),
            isolation,
            None if settle is None else float(settle),
            log=sys.stderr,
            security=security,
        )
    except (LookupError, KafkaError) as err:
        print(f"notifguard check: {err}", file=sys.stderr)
        return 2
    comp = result.comparison
    n = len(scenario.expect)
    if comp.ok:
        print(f"check {scenario.name}: OK, {n} expected alert(s), nothing else ({result.seconds:.1f} s)")
        return 0
    why = "timed out" if result.timed_out and comp.missing else "mismatch"
    print(f"check {scenario.name}: FAIL ({why} after {result.seconds:.1f} s)\n{comp.render()}")
    return 1


# ---------------------------------------------------------------------------
# check CAPTURE
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckedAlert:
    """An alert as `check CAPTURE` names it: the subject masked, no clear-text number or address."""

    dedup_key: str
    kind: str
    trigger: str
    event_time: str
    subject: str
    retracted: bool = False

    @classmethod
    def of(cls, alert: Alert) -> CheckedAlert:
        return cls(
            alert.dedup_key,
            alert.kind,
            alert.trigger_event_id,
            alert.event_time,
            mask_msisdn(alert.subject.msisdn_masked),
            getattr(alert, "status", "firing") == "retracted",
        )

    def render(self) -> str:
        return f"{self.kind:<30} {self.dedup_key:<52} {self.event_time:<27} {self.subject:<16} trigger {self.trigger}"


def capture_alert(value: bytes | None, ids: set[str]) -> CheckedAlert | None:
    """The alert of an alerts-topic record if its `trigger_event_id` is one of `ids`, else None.

    The trigger, not the evidence: an alert is this capture's when one of its
    records completed it (`dedup_key` is kind + trigger). An alert of other
    traffic may quote one of the capture's records as evidence; the offline
    replay of the capture alone cannot expect it, so it is not the check's.
    """
    if value is None:
        return None
    try:
        doc = json.loads(value)
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    kind, key, trigger = doc.get("kind"), doc.get("dedup_key"), doc.get("trigger_event_id")
    if not (isinstance(kind, str) and isinstance(key, str) and isinstance(trigger, str)) or trigger not in ids:
        return None
    subject = doc.get("subject")
    masked = subject.get("msisdn_masked") if isinstance(subject, dict) else None
    event_time = doc.get("event_time")
    return CheckedAlert(
        key,
        kind,
        trigger,
        event_time if isinstance(event_time, str) else "?",
        mask_msisdn(masked) if isinstance(masked, str) else "?",  # masked again, to be sure
        doc.get("status") == "retracted",
    )


def standing_alerts(alerts: Iterable[CheckedAlert]) -> dict[str, CheckedAlert]:
    """By dedup_key, the alerts that stand: each firing one unless a later record retracts it (contract 1.1)."""
    out: dict[str, CheckedAlert] = {}
    for a in alerts:
        if a.retracted:
            out.pop(a.dedup_key, None)
        else:
            out.setdefault(a.dedup_key, a)
    return out


@dataclass
class CaptureComparison:
    missing: list[CheckedAlert]
    unexpected: list[CheckedAlert]
    expected: int

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected)

    def render(self) -> str:
        lines = [f"  missing    {a.render()}" for a in self.missing]
        lines += [f"  unexpected {a.render()}" for a in self.unexpected]
        return "\n".join(lines)


def compare_capture_alerts(expected: Iterable[CheckedAlert], seen: Iterable[CheckedAlert]) -> CaptureComparison:
    """Expected against arrived, by dedup_key, each side as it stands after retractions; repeats are no error."""
    want, got = standing_alerts(expected), standing_alerts(seen)
    order = lambda a: (a.kind, a.event_time, a.dedup_key)  # noqa: E731
    return CaptureComparison(
        sorted((want[k] for k in want.keys() - got.keys()), key=order),
        sorted((got[k] for k in got.keys() - want.keys()), key=order),
        len(want),
    )


def expected_alerts(produced: Sequence[Produced], settings: Settings) -> list[CheckedAlert]:
    """The offline engine's alerts for exactly these records (as produced: renamed, rebased, on the
    partitions the broker chose), in send order, through `streams.replay_offline.replay`."""
    import tempfile

    from streams.replay_offline import replay

    with tempfile.TemporaryDirectory(prefix="notifguard-check-") as tmp:
        path = Path(tmp) / "produced.jsonl"
        with open(path, "wb") as f:
            for p in produced:
                f.write(p.line())
        _, alerts = replay([path], settings)
    return [CheckedAlert.of(a) for a in alerts]


@dataclass
class CaptureCheckResult:
    comparison: CaptureComparison
    replay: ReplaySummary
    seconds: float
    timed_out: bool


def run_capture_check(
    bootstrap: str,
    paths: Sequence[str | Path],
    settings: Settings,
    timeout: float = 60.0,
    settle_s: float | None = None,
    speed: float = 0.0,
    rebase_to_us: int | None = None,
    renames: dict[str, str] | None = None,
    keep_partitions: bool = False,
    log: IO[str] | None = None,
    security: KafkaSecurity = PLAINTEXT,
) -> CaptureCheckResult:
    """Produce captures as `replay --bootstrap` does, compute their alerts offline from what the broker
    acknowledged, and watch the alerts topic (from the offsets before producing) for exactly those.

    `timeout` counts from when the records are produced and their alerts computed
    (a paced replay takes its time first).
    """
    settle = default_settle_s(settings) if settle_s is None else settle_s
    started = time.monotonic()
    consumer = _alerts_consumer(bootstrap, settings.topics.alerts, security)
    try:
        sent: list[Produced] = []
        summary = replay_to_kafka(
            bootstrap, paths, speed, rebase_to_us, renames, keep_partitions, sent=sent, security=security
        )
        produced_at = time.monotonic()
        if log is not None:
            log.write(summary.render() + "\n")
        if summary.failed:
            return CaptureCheckResult(CaptureComparison([], [], 0), summary, produced_at - started, False)
        expected = expected_alerts(sent, settings)
        ids = _event_ids(p.value for p in sent)
        shared = [k for k, n in Counter(a.dedup_key for a in expected if not a.retracted).items() if n > 1]
        if log is not None and shared:
            log.write(
                f"warning: {len(shared)} dedup key(s) stand for alerts of different records: the capture "
                "reuses event ids on different numbers (the contract wants them unique); each such key "
                "is compared once\n"
            )
        if log is not None:
            kinds = Counter(a.kind for a in standing_alerts(expected).values())
            log.write(
                f"expected offline: {sum(kinds.values())} alert(s)"
                f"{' (' + ', '.join(f'{k} {n}' for k, n in sorted(kinds.items())) + ')' if kinds else ''}; "
                f"waiting on {settings.topics.alerts} for alerts triggered by the {len(ids)} produced "
                f"event ids (timeout {timeout:g} s, then quiet {settle:g} s)\n"
            )

        def judge(seen: list[CheckedAlert]) -> tuple[bool, bool]:
            comp = compare_capture_alerts(expected, seen)
            return not comp.missing, bool(comp.unexpected)

        def show(a: CheckedAlert) -> None:
            if log is not None:
                log.write(f"  {'retracted' if a.retracted else 'alert':<9} {a.render()}\n")

        seen, timed_out = _await_alerts(
            consumer, lambda v: capture_alert(v, ids), judge, time.monotonic() + timeout, settle, produced_at, show
        )
    finally:
        consumer.close()
    return CaptureCheckResult(compare_capture_alerts(expected, seen), summary, time.monotonic() - started, timed_out)


def _check_captures(args: argparse.Namespace, settings: Settings) -> int:
    from kafka.errors import KafkaError

    paths = list(args.targets)
    renames = parse_renames(args.rename or [])
    rebase = parse_rebase_target(args.rebase_time) if args.rebase_time else None
    t = settings.topics
    inputs = {t.outbound, t.changes, t.delivery}
    topics = {renames.get(r.topic, r.topic) for p in paths for r in read_capture(p)}
    if not topics:
        print(f"notifguard check: no records in {', '.join(paths)}", file=sys.stderr)
        return 2
    foreign = sorted(topics - inputs)
    if foreign:
        print(
            f"notifguard check: the capture would be produced to {', '.join(foreign)}, not an input topic "
            f"of the configuration ({', '.join(sorted(inputs))}); map it with --rename OLD=NEW, or give the "
            "worker's --config",
            file=sys.stderr,
        )
        return 2
    security = load_kafka_security(args.config)
    why = _check_preflight(args.bootstrap, [*topics, t.alerts], float(args.timeout), security)
    if why:
        print(f"notifguard check: {why}", file=sys.stderr)
        return 2
    settle = getattr(args, "settle", None)
    try:
        result = run_capture_check(
            args.bootstrap,
            paths,
            settings,
            float(args.timeout),
            None if settle is None else float(settle),
            float(args.speed),
            rebase,
            renames,
            bool(args.keep_partitions),
            log=sys.stderr,
            security=security,
        )
    except (LookupError, KafkaError) as err:
        print(f"notifguard check: {err}", file=sys.stderr)
        return 2
    name = ", ".join(Path(p).name for p in paths)
    if result.replay.failed:
        print(
            f"notifguard check: the broker rejected some records of {name}; nothing checked "
            "(a record timestamp more than message.timestamp.after.max.ms in the future?)",
            file=sys.stderr,
        )
        return 2
    comp = result.comparison
    if comp.ok:
        print(f"check {name}: OK, {comp.expected} expected alert(s), nothing else ({result.seconds:.1f} s)")
        return 0
    why = "timed out" if result.timed_out and comp.missing else "mismatch"
    print(
        f"check {name}: FAIL ({why} after {result.seconds:.1f} s): {len(comp.missing)} of {comp.expected} "
        f"expected alert(s) missing, {len(comp.unexpected)} unexpected\n{comp.render()}"
    )
    return 1


# ---------------------------------------------------------------------------
# check: SCENARIO or CAPTURE
# ---------------------------------------------------------------------------

_CAPTURE_SUFFIXES = (".jsonl", ".json", ".ndjson")


def check_target(text: str) -> str:
    """`capture` or `scenario`: a `.toml` is a scenario file; an existing file is a capture;
    a path ending in .jsonl/.json/.ndjson that does not exist is an error; anything else
    names a scenario in scenarios/."""
    path = Path(text)
    if path.suffix == ".toml":
        return "scenario"
    if path.is_file():
        return "capture"
    if path.suffix in _CAPTURE_SUFFIXES:
        raise FileNotFoundError(f"no capture file {text!r}")
    return "scenario"


def check_command(args: argparse.Namespace) -> int:
    from streams.config import load_settings

    kinds = [check_target(t) for t in args.targets]
    capture_only = [
        opt
        for opt, used in (
            ("--speed", float(getattr(args, "speed", 0.0) or 0.0) != 0.0),
            ("--rebase-time", bool(getattr(args, "rebase_time", None))),
            ("--rename", bool(getattr(args, "rename", None))),
            ("--keep-partitions", bool(getattr(args, "keep_partitions", False))),
        )
        if used
    ]
    settings = load_settings(args.config)
    if kinds == ["scenario"]:
        if capture_only:
            raise ValueError(f"{', '.join(capture_only)}: for a CAPTURE only (a scenario is rebased to now)")
        return _check_scenario(args, settings)
    if "scenario" in kinds:
        raise ValueError("give one SCENARIO, or one or more CAPTURE files")
    if not getattr(args, "isolate", True):
        raise ValueError("--no-isolate: for a SCENARIO only (a capture is produced as it is)")
    return _check_captures(args, settings)
