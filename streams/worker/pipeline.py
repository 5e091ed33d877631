"""The worker's record path with no Faust in it: fetched batches in, outputs and a flush batch out.

Records go to the engine, whose arrival stage (detectors.arrival: min-of-inputs
watermarks, grace buffer, release order) decides when each is applied; what
the engine finishes comes back as alerts and dead letters (the output queue,
`Pipeline.out`) and as records done (`Pipeline.done`), whose Kafka acks the
committer gives once their outputs and state are delivered. The wall clock
is injected; what Kafka knows about each input topic-partition (records
waiting on the broker) comes in as a function. Unit-tested with fakes
(tests/streams/worker/test_pipeline.py); streams.worker.runtime wires it to Faust.
"""

from __future__ import annotations

import hashlib
import logging
import time
import traceback
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final, NamedTuple, Protocol

import msgspec

from detectors.alerts import encode_alert
from detectors.engine import TOPIC_KINDS, Engine, Relink, dead_letter
from detectors.records import INVALID_RECORD, PROCESSING_ERROR, QUARANTINED, BadRecord, decode
from detectors.settings import Topics
from detectors.state import AddressIndex, Link
from detectors.timefmt import rfc3339
from streams.config import WorkerConfig
from streams.metrics import Counted, Metrics
from streams.sweeper import LinksRebuild, Sweeper
from streams.tablestore import TableLinks, TableMailers, TableNumbers
from streams.topics import incident_feed_topic, relinks_topic
from streams.worker.offsets import TP, Batch
from streams.worker.quarantine import CrashJournal

log = logging.getLogger("notifguard.worker")
_json = msgspec.json.Encoder()

# notifguard_processing_seconds times one record in 64 (two clock reads and a
# histogram update per record cost more than a fast record's processing).
_TIME_EVERY_MASK = 63

ChangelogRecord = tuple[int, bytes, bytes | None]  # (partition, key, value or None: a deletion)


def input_topics(topics: Topics) -> tuple[str, str, str]:
    """The three input topics, in detectors.arrival's category order (detectors.engine.TOPIC_KINDS)."""
    changes, outbound, delivery = (getattr(topics, kind) for kind in TOPIC_KINDS)
    return changes, outbound, delivery


def wall_clock_us() -> int:
    return time.time_ns() // 1000


class Output(NamedTuple):
    """An alert, a dead letter or a relink to produce; `sent` is counted once the broker has it;
    `partition`: the topic's partition, None for the producer's partitioner (by key)."""

    topic: str
    key: bytes
    value: bytes
    sent: Counted | None = None
    partition: int | None = None


# At most this many Relinks in one record of the relinks topic (66 bytes each on the bench capture,
# bench.relinks_bench: the address's keyed hash, the event time, the change's event id, the origin's
# keyed hash, the digest; longer event ids make more): ~100 KB at most, a tenth of the broker's
# default message.max.bytes (1 MiB). A flush of a backlog with more
# link-altering changes than this sends more records (measured: docs/performance.md).
RELINKS_PER_RECORD: Final = 1_000


class RelinkRecord(msgspec.Struct, array_like=True, frozen=True):
    """One Relink of a relinks record: the engine's Relink and the digest of the origin number's
    links of the address as the worker that made it saw them at its flush, after the change
    (origin_links_digest): its consumer waits until its own view of the address-index GlobalTable
    holds them (Pipeline._apply_relinks)."""

    relink: Relink
    links: bytes


class RelinkBatch(msgspec.Struct, array_like=True, frozen=True):
    """A record of the relinks topic (msgpack): the Relinks of one flush of one worker (at most
    RELINKS_PER_RECORD), in the order the engine emitted them: the same value to every partition."""

    relinks: list[RelinkRecord]


_links_msgpack = msgspec.msgpack.Encoder().encode


def origin_links_digest(links: list[Link], origin: str) -> bytes:
    """A digest of the links of number `origin` among an address's links (their msgpack: ~1 µs, where
    the stored form, detectors.codec.encode_links, took ~15 µs, most of a receiver's cost per
    Relink; none: empty). The origin's own links only: a later change of another number to the
    same address does not make a view that holds this change look different."""
    own = [link for link in links if link.msisdn_ref == origin]
    return hashlib.blake2b(_links_msgpack(own), digest_size=8).digest() if own else b""


@dataclass(slots=True)
class HeldRelinks:
    """A relinks record read and not applied whole yet: its Kafka record (acked once every Relink in
    it is applied and their outputs delivered), its Relinks, how many of them are applied, when it
    was first tried (monotonic seconds), and whether applying one raised (the record is then
    dead-lettered as itself once all of its are applied, and done then)."""

    msg: Any
    relinks: list[RelinkRecord]
    since: float
    applied: int = 0
    failed: str | None = None  # the traceback of the first Relink of it whose application raised


class StateWrites(Protocol):
    """Table state changed since the last flush: written locally and returned as changelog records."""

    changelog: str

    def flush(self) -> list[ChangelogRecord]: ...


@dataclass(frozen=True, slots=True)
class FlushBatch:
    """What one flush delivers, in the order that makes a crash at any point safe: the outputs, then
    the address links, then the number states (which remember their records as done), then the
    acks of the input records `done` (see streams.worker.committer)."""

    outputs: list[Output]
    links: StateWrites
    numbers: StateWrites
    done: list[Any]  # input records (topic, partition, offset) whose outputs and state are in this batch

    def __bool__(self) -> bool:
        return bool(self.outputs or self.done)


class Changelog:
    """Table stores (TableNumbers and the TableMailers in its table, or TableLinks) with the name of
    their table's changelog topic."""

    def __init__(self, changelog: str, *stores: TableNumbers | TableMailers | TableLinks) -> None:
        self.stores = stores
        self.changelog = changelog

    def flush(self) -> list[ChangelogRecord]:
        out: list[ChangelogRecord] = []
        for store in self.stores:
            out += store.flush()
        return out


def _superseded(held: deque[HeldRelinks], key: tuple[bytes, str], view: bytes) -> bool:
    """Whether a later Relink held for this partition, of the same address and origin number, carries
    the digest `view`: the view holds the origin's links as of that later flush, which know more
    than the first's (the origin changed them again before this worker read the first: without
    this it would wait relink_wait_s out). Looked at only when the first does not match."""
    addr, origin = key
    for batch in held:
        for entry in batch.relinks[batch.applied :]:
            relink = entry.relink
            if entry.links == view and relink.addr == addr and relink.origin == origin:
                return True
    return False


class Pipeline:
    """Everything between the fetched records and the flush batch, for one worker process."""

    def __init__(
        self,
        config: WorkerConfig,
        numbers: TableNumbers,
        links: TableLinks,
        metrics: Metrics,
        *,
        numbers_changelog: str = "numbers-changelog",
        links_changelog: str = "address-index-v2-changelog",
        clock: Callable[[], int] = wall_clock_us,
        monotonic: Callable[[], float] = time.monotonic,
        new_id: Callable[[], str] = lambda: uuid.uuid4().hex,
    ) -> None:
        rules = config.rules
        self.config = config
        self.topics = rules.topics
        self.inputs = input_topics(rules.topics)
        # the topic kinds of detectors.records.decode, and detectors.arrival's categories
        self._kind_of = dict(zip(self.inputs, TOPIC_KINDS, strict=True))
        self._category = {topic: i for i, topic in enumerate(self.inputs)}
        self.numbers, self.links = numbers, links
        self.mailers = TableMailers(numbers)  # (rows of the numbers table: flushed with the numbers)
        self.numbers_changelog = Changelog(numbers_changelog, self.mailers, numbers)
        self.links_changelog = Changelog(links_changelog, links)
        self.engine = Engine(rules, new_id=new_id, numbers=numbers, index=AddressIndex(links), mailers=self.mailers)
        self.engine.live = True  # now_us is the wall clock: event times are bounded by it too
        self.sweeper = Sweeper(self.engine, numbers, mailers=self.mailers)
        # the address index of assigned partitions it does not hold yet (an upgraded deployment),
        # filled from the numbers' states a slice per tick once the tables are recovered
        self.rebuild = LinksRebuild(self.engine, numbers, links, batch=config.index_fill_batch)
        self._rebuild_due = False
        self._rebuild_from = 0  # rebuild.indexed when the current walk started
        self._rebuild_todo: list[int] = []  # the partitions it walks (for the log)
        # batches fetched while the index is filled: applied once it is (the inputs paused meanwhile)
        self._waiting: Batch = []
        self.metrics = metrics
        self.clock, self.monotonic = clock, monotonic
        self.out: list[Output] = []  # the output queue: alerts and dead letters not handed over yet
        self.done: list[Any] = []  # input records done (applied, dead-lettered, duplicates): acked after delivery
        self.read: dict[tuple[str, int], int] = {}  # the last offset read per input topic-partition
        self.assigned: set[TP] = set()
        self.paused: set[TP] = set()
        self.consumed_total = 0  # input records read (notifguard_records_consumed_total, summed; /health)
        self.echo: Callable[[Any], None] | None = None  # called with each alert (the demo prints them)
        # the worker's incidents computation (streams/worker/incidents.py): breach-class alerts go to
        # its single-partition feed too, in the same flush as the alerts (the same transaction)
        self.feed = incident_feed_topic(config.app_id) if config.incidents else None
        self._joins = config.incident_settings.joins
        self._consumed: dict[str, Any] = {}  # records_consumed counter per input topic
        # Relinks between the workers' partitions (docs/topics.md 2.6a): each Relink the engine
        # emits goes to every partition of this topic; each partition's records are applied to
        # that input partition's numbers, in order, each held until the address-index view holds
        # its links (at most relink_wait_s)
        self.relinks = relinks_topic(config.app_id)
        self.held: dict[int, deque[HeldRelinks]] = {}
        self._relink_encode = msgspec.msgpack.Encoder().encode
        self._relink_decode = msgspec.msgpack.Decoder(RelinkBatch).decode
        # a record of before the batches: one RelinkRecord (its digest, of the stored form, does not
        # match this version's: applied after relink_wait_s, with the view there is)
        self._relink_decode_one = msgspec.msgpack.Decoder(RelinkRecord).decode
        # on-time changes' Relinks too: this engine's watermark is its own partitions' only (Relink)
        self.engine.relink_on_time = True
        self._n = 0
        # the crash journal (streams.worker.quarantine): told each record before it is decoded and
        # before it is applied; records it charged with too many crashes are set aside on arrival
        self.journal: CrashJournal | None = None  # use_journal: the runtime opens it at the first assignment

    def use_journal(self, journal: CrashJournal) -> None:
        self.journal = journal
        self.engine.applying = journal.working_on

    # ------------------------------------------------------------------ records

    def on_events(self, batch: Batch) -> None:
        """Fetched records per input topic-partition, in offset order (aiokafka ConsumerRecords).

        One clock read a batch, not a record: the records of a fetched batch
        arrived together (the engine's wall clock, the arrival clock for
        idleness, and the verdict delay), and the clock moves on every
        _TIME_EVERY_MASK + 1 records (a batch takes a few ms).
        """
        if self._rebuild_due or self.rebuild.active:
            # records come once the tables are recovered: the fill starts (or goes on) here too,
            # and a fresh deployment's empty partitions are marked built at once
            self._rebuild_step()
            if self.rebuild.active:
                # the address index of this worker's partitions is not filled yet (an upgraded
                # deployment, LinksRebuild): a record judged now would miss links the fill brings
                self._waiting.extend(batch)
                return
        if self._waiting:
            batch, self._waiting = [*self._waiting, *batch], []
        engine = self.engine
        process, process_decoded, not_after = engine.process, engine.process_decoded, engine.not_after
        kind_of = self._kind_of
        observe = self.metrics.processing.observe
        perf_counter = time.perf_counter
        consumed = self._consumed
        read = self.read
        clock = self.clock
        n = self._n
        journal = self.journal
        working_on = journal.working_on if journal is not None else None
        quarantine = journal.quarantine if journal is not None else None
        arrived = self.monotonic()
        now = clock()
        relinks = self.relinks
        for tp, records in batch:
            if not records:
                continue
            topic, p = tp
            if topic == relinks:  # no event-time input: applied at once, past arrival (_read_relinks)
                self._read_relinks(p, records, now)
                continue
            counter = consumed.get(topic)
            if counter is None:
                counter = consumed[topic] = self.metrics.consumed.labels(topic)
            counter.inc(len(records))
            self.consumed_total += len(records)
            read[(topic, p)] = records[-1].offset
            kind = kind_of[topic]
            for rec in records:
                if quarantine and (topic, p, rec.offset) in quarantine:
                    self._quarantine(rec, now)
                    continue
                if working_on is not None:
                    working_on(rec)
                key = rec.key
                n += 1
                timed = not n & _TIME_EVERY_MASK
                token = (rec, arrived)
                try:
                    if timed:
                        now = clock()
                        started = perf_counter()
                    # Engine.process, unrolled: decoded here, and what does not decode goes to
                    # Engine.process (which dead-letters it, with the reason)
                    try:
                        record, when = decode(kind, key, rec.value, not_after(rec.timestamp, now))
                    except BadRecord:
                        process(topic, p, rec.offset, key, rec.value, now, rec.timestamp, token)
                    else:
                        process_decoded(kind, p, record, when, now, token)
                    if timed:
                        observe(perf_counter() - started)
                except Exception:
                    # Not bad input (that is dead-lettered by the engine, and a record whose
                    # application raised is reported in engine.failed): a bug before the record
                    # reached the grace buffer. Loud, counted, dead-lettered with the traceback.
                    self.bug(rec, traceback.format_exc(limit=3))
        self._n = n
        if journal is not None:
            journal.idle()
        self._take_done()
        self._apply_relinks()
        self._emit()

    def _quarantine(self, rec: Any, now: int) -> None:
        """A record the worker died on `journal.limit` times: dead-lettered as `quarantined`, done."""
        assert self.journal is not None
        crashes = self.journal.crashes(rec.topic, rec.partition, rec.offset)
        log.error(
            "QUARANTINED %s[%s]@%s: the worker died %d times while working on it",
            rec.topic,
            rec.partition,
            rec.offset,
            crashes,
        )
        self.metrics.quarantined.labels(rec.topic).inc()
        self._set_aside(
            rec,
            f"the worker died {crashes} times while working on this record (crash_quarantine_after "
            f"= {self.journal.limit}): set aside so that the worker can go on",
            QUARANTINED,
            now,
        )

    def _set_aside(self, msg: Any, reason: str, code: str, now: int) -> None:
        """Dead-letter an input record as itself (the worker's own reasons: PROCESSING_ERROR, QUARANTINED)
        and count it done: acked once the dead letter is delivered."""
        letter = dead_letter(msg.topic, msg.partition, msg.offset, None, msg.key, msg.value, reason, code, rfc3339(now))
        self.out.append(
            Output(
                self.topics.deadletter,
                (letter.key or "").encode(),
                _json.encode(letter),
                self.metrics.deadletters.labels(msg.topic, code),
            )
        )
        self.done.append(msg)

    def tick(self, recovered: bool = True) -> None:
        """The wall-clock timer's part: idle partitions move on, due sweeps run a slice, and once
        the tables are `recovered` after an assignment, the address index of the partitions
        it lacks is filled a slice (streams.sweeper.LinksRebuild)."""
        self.engine.tick(self.clock())
        if self.journal is not None:
            self.journal.idle()
        self._take_done()
        now = self.engine.sweep_due()
        if now is not None:  # detectors/expiry.py: a slice per tick, see streams/sweeper.py
            self.sweeper.start(now, {tp.partition for tp in self.assigned})
        self.sweeper.step()
        if recovered:
            self._rebuild_step()
            if self._waiting and not self.rebuild.active:
                self.on_events([])  # the batches that waited for it
        self._apply_relinks()
        self._emit()

    def _rebuild_step(self) -> None:
        """A slice of LinksRebuild, started after each assignment (a fresh deployment's partitions,
        with no numbers, are marked built at the first step; logged only when numbers are indexed)."""
        rebuild = self.rebuild
        if self._rebuild_due:
            self._rebuild_due = False
            rebuild.start({tp.partition for tp in self.assigned})
            self._rebuild_from = rebuild.indexed
            self._rebuild_todo = list(rebuild.todo)
        if not rebuild.active:
            return
        announced = rebuild.indexed > self._rebuild_from
        rebuild.step()
        indexed = rebuild.indexed - self._rebuild_from
        if indexed and not announced:
            log.warning(
                "the address index has no entries of input partitions %s (a deployment upgraded from the "
                "index keyed by address alone, docs/topics.md 2.6a): filling them from the numbers' states, "
                "%d numbers a tick; until then verdicts on those numbers' links may miss them",
                self._rebuild_todo,
                rebuild.batch,
            )
        if indexed and not rebuild.active:
            log.warning("the address index is filled: %d numbers' links indexed", indexed)

    def take_flush(self) -> FlushBatch:
        """The outputs and acks gathered since the last flush, with the state stores to write."""
        self._relinks()
        out, self.out = self.out, []
        done, self.done = self.done, []
        return FlushBatch(out, self.links_changelog, self.numbers_changelog, done)

    def take_outputs(self) -> list[Output]:
        out, self.out = self.out, []
        return out

    def _take_done(self) -> None:
        """Take what the engine finished: acks for the records done, dead letters for those that failed."""
        engine = self.engine
        done = engine.take_done()
        if done:
            ack = self.done.append
            outbound = self.topics.outbound
            arrivals: list[float] = []  # of the notifications: their verdicts were reached now
            for msg, arrived in done:
                ack(msg)
                if msg.topic == outbound:
                    arrivals.append(arrived)
            if arrivals:
                self.metrics.observe_verdict_delays(self.monotonic(), arrivals)
        if engine.failed:
            failed, engine.failed = engine.failed, []
            for (msg, _), exc in failed:
                self.bug(msg, "".join(traceback.format_exception(exc, limit=3)))

    def bug(self, msg: Any, trace: str) -> None:
        """A record whose processing raised (a bug, not bad input): logged, counted, dead-lettered as
        itself with the traceback's last line (`processing_error`), and done, so the worker goes on."""
        self.metrics.errors.labels(msg.topic).inc()
        log.error("BUG while processing %s[%s]@%s:\n%s", msg.topic, msg.partition, msg.offset, trace)
        self._set_aside(
            msg, f"internal error (a bug, reported): {trace.splitlines()[-1]}", PROCESSING_ERROR, self.clock()
        )

    def _relinks(self) -> None:
        """Take the engine's Relinks (changes that altered an address's links: late ones, and on-time
        ones, which another worker whose watermark runs ahead may need) and broadcast them to every
        partition of the relinks topic, one record per partition per flush (RelinkBatch, more past
        RELINKS_PER_RECORD), each Relink with the digest of the origin number's links of the
        address as this worker's view holds them now (after the change), in the output queue:
        delivered before the acks of the records behind them (at least once), or in the flush's
        transaction. Every partition, the origin's too: its other numbers may have mailed the
        address (and its owner may have changed since)."""
        relinks = self.engine.take_relinks()
        if not relinks:
            return
        links = self.links
        digests: dict[tuple[bytes, str], bytes] = {}
        entries: list[RelinkRecord] = []
        for relink in relinks:
            key = (relink.addr, relink.origin)
            digest = digests.get(key)
            if digest is None:
                digest = digests[key] = origin_links_digest(links.get(relink.addr, []), relink.origin)
            entries.append(RelinkRecord(relink, digest))
        encode, out, topic = self._relink_encode, self.out, self.relinks
        partitions = range(self.config.partitions)
        records = 0
        for start in range(0, len(entries), RELINKS_PER_RECORD):
            value = encode(RelinkBatch(entries[start : start + RELINKS_PER_RECORD]))
            out.extend(Output(topic, b"", value, None, p) for p in partitions)
            records += len(partitions)
        self.metrics.relinks_sent.inc(len(relinks))
        self.metrics.relink_records_sent.inc(records)

    def _read_relinks(self, partition: int, records: list[Any], now: int) -> None:
        """Relinks records of one partition, in offset order: held (in order) for _apply_relinks;
        one that does not decode is dead-lettered (invalid_record) and done."""
        held = self.held.get(partition)
        if held is None:
            held = self.held[partition] = deque()
        since = self.monotonic()
        quarantine = self.journal.quarantine if self.journal is not None else None
        for rec in records:
            if quarantine and (rec.topic, partition, rec.offset) in quarantine:
                self._quarantine(rec, now)
                continue
            try:
                relinks = self._relink_decode(rec.value).relinks
            except (msgspec.DecodeError, TypeError) as exc:
                try:
                    relinks = [self._relink_decode_one(rec.value)]
                except (msgspec.DecodeError, TypeError):
                    self._set_aside(rec, f"a relink record that does not decode: {exc}", INVALID_RECORD, now)
                    continue
            held.append(HeldRelinks(rec, relinks, since))

    def _apply_relinks(self) -> None:
        """Apply the held Relinks whose links this worker's address-index view holds, or whose record
        waited relink_wait_s (with the view there is: a newer view only knows more), each partition
        in offset order and each record's in its order; a record is done (acked) once all of its
        are applied, their outputs delivered. Most find no number of the partition that mailed the
        address at or after their time (Engine.relinked: one look at the mailers index)."""
        if not self.held:
            return
        engine, links, metrics, journal = self.engine, self.links, self.metrics, self.journal
        now = self.monotonic()
        wait = self.config.relink_wait_s
        views: dict[tuple[bytes, str], bytes] = {}  # this worker's view, read once per pass
        waiting = 0
        for partition, held in self.held.items():
            while held:
                batch = held[0]
                relinks = batch.relinks
                while batch.applied < len(relinks):
                    entry = relinks[batch.applied]
                    relink = entry.relink
                    key = (relink.addr, relink.origin)
                    view_digest = views.get(key)
                    if view_digest is None:
                        view_digest = views[key] = origin_links_digest(links.get(relink.addr, []), relink.origin)
                    if view_digest == entry.links or _superseded(held, key, view_digest):
                        view = "current"
                    elif now - batch.since >= wait:
                        view = "waited_out"
                        log.warning(
                            "a relink of partition %d applied after %.0f s (relink_wait_s) with an address-index "
                            "view that does not hold its links",
                            partition,
                            now - batch.since,
                        )
                    else:
                        break
                    batch.applied += 1
                    if journal is not None:
                        journal.working_on(batch.msg)
                    try:
                        engine.relinked(relink, partition)
                    except Exception:  # (a bug) its other Relinks go on; the record is dead-lettered
                        if batch.failed is None:
                            batch.failed = traceback.format_exc(limit=3)
                        continue
                    metrics.relinks_applied.labels(view).inc()
                if batch.applied < len(relinks):
                    break
                held.popleft()
                if batch.failed is None:
                    self.done.append(batch.msg)
                else:  # dead-lettered as itself, and done, once all of its Relinks are applied
                    self.bug(batch.msg, batch.failed)
            waiting += sum(len(b.relinks) - b.applied for b in held)
        if journal is not None:
            journal.idle()
        metrics.relinks_held.set(waiting)

    def _emit(self) -> None:
        engine = self.engine
        if engine.deliveries:
            self.metrics.observe_deliveries(engine.deliveries)
        alerts, dead, verdicts = engine.drain()
        out = self.out
        metrics = self.metrics
        feed, joins = self.feed, self._joins
        for a in alerts:
            key, value = a.dedup_key.encode(), encode_alert(a)
            out.append(Output(self.topics.alerts, key, value, metrics.alert_counter(a)))
            if feed is not None and joins(a.kind):
                out.append(Output(feed, key, value))
            if self.echo is not None:
                self.echo(a)
        for d in dead:
            out.append(
                Output(
                    self.topics.deadletter,
                    (d.key or "").encode(),
                    _json.encode(d),
                    metrics.deadletters.labels(d.source_topic, d.reason_code),
                )
            )
        if verdicts:
            metrics.observe_verdicts(verdicts)

    # ------------------------------------------------------------ the inputs

    def mark_behind(self, behind: Callable[[TP], bool]) -> None:
        """Tell the arrival stage which input topic-partitions have records waiting for us: their
        silence is ours, so they are not idle. (Kafka's highwater says only that records wait,
        never that no older record is coming: the watermark rule does not rest on it.)"""
        arrival = self.engine.arrival
        category = self._category
        for tp in self.assigned:
            arrival.set_behind(category[tp.topic], tp.partition, behind(tp))

    def flow_control(self) -> tuple[set[TP], set[TP]]:
        """Which input topic-partitions to pause and to resume now: while the grace buffer holds
        max_pending records, those running ahead of the watermark pause; below half of it, all
        resume. The arrival stage is told, so that a paused topic-partition never counts as idle."""
        arrival = self.engine.arrival
        pending = arrival.pending_count()
        limit = self.config.max_pending
        if self.rebuild.active:  # (see on_events)
            want = set(self.assigned)
        elif pending >= limit:
            by_key = {(tp.topic, tp.partition): tp for tp in self.assigned}  # the consumer's own TP objects
            want = set(self.paused)
            for s in arrival.ahead():
                tp = by_key.get((self.inputs[s.category], s.partition))
                if tp is not None:
                    want.add(tp)
        elif pending < limit // 2:
            want = set()
        else:
            return set(), set()
        pause, resume = want - self.paused, self.paused - want
        for tp in pause:
            arrival.set_paused(self._category[tp.topic], tp.partition, True)
        for tp in resume:
            arrival.set_paused(self._category[tp.topic], tp.partition, False)
        self.paused = want
        return pause, resume

    def assign(self, assigned: Iterable[TP]) -> None:
        """Every assigned input topic-partition holds the watermark back from now until it delivers
        or is idle: its first records may be older than anything fetched."""
        self.numbers.absent.clear()  # partitions recovered from their changelogs may hold any number
        self.assigned = {tp for tp in assigned if tp.topic in self._category}
        clock = self.clock()
        for p in sorted({tp.partition for tp in self.assigned}):
            self.engine.arrival.expect(p, clock)
        self.read = {k: v for k, v in self.read.items() if k in self.assigned}
        self._rebuild_due = True  # (at the next tick once the tables are recovered)

    def revoke(self, partitions: set[int]) -> None:
        """After the revocation's flush: another worker owns these partitions now. Their buffered
        records were not acked: the next owner reads them again."""
        self.engine.arrival.forget(partitions)
        self.paused = {tp for tp in self.paused if tp.partition not in partitions}
        self.numbers.forget_partitions(partitions)
        self.mailers.forget_partitions(partitions)
        for p in partitions:  # (not acked: the next owner reads them again)
            self.held.pop(p, None)
        self._waiting = [(tp, records) for tp, records in self._waiting if tp[1] not in partitions]
        self.sweeper.forget(partitions)
        self.rebuild.forget(partitions)
        self.read = {k: v for k, v in self.read.items() if k[1] not in partitions}
        self.done.clear()

    # --------------------------------------------------------------- gauges

    def refresh_gauges(self, waiting: Callable[[TP], int]) -> None:
        """The gauges the timer keeps: pending records, watermark lags, tracked numbers, consumer lag."""
        now = self.clock()
        m = self.metrics
        m.sync_stats(self.engine.stats)
        m.pending.set(self.engine.pending_count())
        for p, watermark in self.engine.arrival.partition_watermarks().items():
            if watermark is not None:
                m.watermark_lag.labels(str(p)).set(max(0.0, (now - watermark) / 1e6))
        m.tracked.set(len(self.numbers.cache))
        lag: dict[str, int] = dict.fromkeys(self.inputs, 0)
        for tp in self.assigned:
            lag[tp.topic] += waiting(tp)
        for topic, total in lag.items():
            m.consumer_lag.labels(topic).set(total)
