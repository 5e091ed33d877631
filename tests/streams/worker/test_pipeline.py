"""The worker's record path without Faust: fetched batches in, a flush batch out (streams.worker.pipeline)."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detectors.settings import Settings
from detectors.timefmt import parse_rfc3339
from streams.config import WorkerConfig
from streams.metrics import Metrics
from streams.tablestore import TableLinks, TableNumbers, is_links_key
from streams.worker.offsets import TP
from streams.worker.pipeline import FlushBatch, Pipeline
from tests.detectors.test_properties import histories
from tests.factories import FILLER_START, change, mail
from tests.streams.test_metrics import samples
from tests.streams.worker.test_runtime import DAY, ConsumerRecord, S, _table, as_batches, expected_keys

TOPICS = Settings().topics


def pipeline(partitions: int = 2, **config: Any) -> tuple[Pipeline, list[int]]:
    wall = [parse_rfc3339("2027-01-01T00:00:00Z")]
    cfg = WorkerConfig(rules=Settings(), partitions=partitions, **config)
    p = Pipeline(
        cfg,
        TableNumbers(_table("numbers")),
        TableLinks(_table("links"), partitions),
        Metrics(TOPICS),
        clock=lambda: wall[0],
    )
    p.assign({TP(t, n) for t in p.inputs for n in range(partitions)})
    return p, wall


def drive(p: Pipeline, wall: list[int], batches: list[list[ConsumerRecord]]) -> list[FlushBatch]:
    """Each batch, then the timer, then a flush; then silence until every input is idle."""
    flushes = []
    for recs in batches:
        wall[0] += 1_000
        p.mark_behind(lambda tp: False)
        p.on_events([(TP(recs[0].topic, recs[0].partition), list(recs))])
        p.tick()
        flushes.append(p.take_flush())
    for _ in range(3):
        wall[0] += 40 * S
        p.tick()
        flushes.append(p.take_flush())
    return flushes


def alerts_of(flushes: list[FlushBatch]) -> dict[str, str]:
    return {o.key.decode(): json.loads(o.value)["kind"] for f in flushes for o in f.outputs if o.topic == TOPICS.alerts}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories(), st.permutations([TOPICS.changes, TOPICS.outbound, TOPICS.delivery]), st.integers(1, 7))
def test_any_landing_order_gives_the_in_order_alerts_and_every_record_is_done_once(records, order, batch):
    p, wall = pipeline()
    flushes = drive(p, wall, as_batches(records, 2, list(order), batch))
    assert alerts_of(flushes) == expected_keys(records)
    done = [(m.topic, m.partition, m.offset) for f in flushes for m in f.done]
    assert len(done) == len(set(done)) == len(records)


@pytest.mark.python_core
def test_a_record_whose_application_raises_is_dead_lettered_as_itself_and_the_others_go_on(monkeypatch):
    """A bug while applying one released record charges that record (its topic, partition and
    offset), not the record that arrived and released it; the other records are applied."""
    p, wall = pipeline(partitions=1)
    records = [
        change("contract_started", 0, id="s", email="me@x.de"),
        mail("me@x.de", DAY, id="n1"),
        mail("old@x.de", DAY + 5, id="n2"),
    ]
    batches = as_batches(records, 1, [TOPICS.changes, TOPICS.outbound], batch=10)
    real = p.engine._apply

    def apply(*args: Any, **kwargs: Any) -> Any:
        if any(getattr(a, "event_id", None) == "n1" for a in args):
            raise ZeroDivisionError("boom")
        return real(*args, **kwargs)

    monkeypatch.setattr(p.engine, "_apply", apply)
    flushes = drive(p, wall, batches)
    letters = [json.loads(o.value) for f in flushes for o in f.outputs if o.topic == TOPICS.deadletter]
    mails = batches[1]
    assert [(d["source_topic"], d["offset"], d["reason_code"]) for d in letters] == [
        (TOPICS.outbound, mails[0].offset, "processing_error")
    ]
    assert "ZeroDivisionError: boom" in letters[0]["reason"]
    assert sorted(alerts_of(flushes).values()) == ["recipient_unlinked"]  # n2 was judged
    assert len([m for f in flushes for m in f.done]) == 3


def test_flow_control_pauses_the_topics_running_ahead_and_resumes_them_below_half():
    p, wall = pipeline(partitions=1, max_pending=4)
    contracts = as_batches(
        [
            change("contract_started", i * 60, id=f"s{i}", email=f"{i}@x.de", msisdn=f"+4917600000{i:03d}")
            for i in range(6)
        ],
        1,
        [TOPICS.changes],
        batch=6,
    )
    p.mark_behind(lambda tp: False)
    p.on_events([(TP(TOPICS.changes, 0), contracts[0])])  # the mails and deliveries have said nothing yet
    pause, resume = p.flow_control()
    assert pause == {TP(TOPICS.changes, 0)} and resume == set()
    assert p.flow_control() == (set(), set())  # nothing changes while it is over the bound
    wall[0] += 40 * S  # the silent topics go idle: the buffer drains up to the paused topic's grace
    p.tick()
    assert p.engine.pending_count() < 4 // 2
    pause, resume = p.flow_control()
    assert pause == set() and resume == {TP(TOPICS.changes, 0)}


def test_a_revocation_forgets_the_partitions_and_their_undone_records():
    p, _ = pipeline(partitions=2)
    records = [change("contract_started", 0, id="s", email="me@x.de"), mail("me@x.de", DAY, id="n1")]
    for recs in as_batches(records, 2, [TOPICS.changes, TOPICS.outbound], batch=10):
        p.on_events([(TP(recs[0].topic, recs[0].partition), list(recs))])
    assert p.engine.pending_count() == 2 and p.read
    partition = as_batches(records, 2, [TOPICS.changes], batch=10)[0][0].partition
    p.revoke({partition})
    assert p.engine.pending_count() == 0 and not any(k[1] == partition for k in p.read)
    assert p.take_flush().done == []  # nothing of theirs is acked: the next owner reads them again


OTHER = "+4917600000001"  # partition 1 of 2 (as_batches: the key's last digit); MSISDN's is 0


def _worker(partition: int, links: Any, partitions: int = 2, **config: Any) -> tuple[Pipeline, list[int], list[float]]:
    """A pipeline owning one input partition of `partitions`, over a shared address-index view
    (`links`: the GlobalTable) and a monotonic clock of its own."""
    wall = [parse_rfc3339("2027-01-01T00:00:00Z")]
    mono = [0.0]
    cfg = WorkerConfig(rules=Settings(), partitions=partitions, **config)
    p = Pipeline(
        cfg,
        TableNumbers(_table("numbers")),
        TableLinks(links, partitions),
        Metrics(TOPICS),
        clock=lambda: wall[0],
        monotonic=lambda: mono[0],
    )
    p.assign({TP(t, partition) for t in p.inputs})
    return p, wall, mono


def _story() -> tuple[list[Any], Any]:
    """MSISDN (partition 0) mails an address no customer has; OTHER (partition 1) later, and late,
    turns out to have set it before the mail."""
    records = [
        change("contract_started", 0, id="s", email="me@x.de"),
        change("contract_started", 0, id="o", msisdn=OTHER, contract_id="K-O", customer_id="C-OTHER", email="o@x.de"),
        mail("shared@x.de", DAY, id="n"),
        mail("o@x.de", DAY + 100, id="on", msisdn=OTHER),
    ]
    late = change("email_changed", DAY - 600, id="late", msisdn=OTHER, contract_id="K-O", email="shared@x.de")
    return records, late


def _relink_records(flushes: list[FlushBatch], relinks: str, start: int = 0) -> list[ConsumerRecord]:
    """The relinks a worker produced, as the consumer of the relinks topic reads them; the
    flushes' state written to the tables first, as the committer does."""
    out = []
    for f in flushes:
        f.links.flush()
        f.numbers.flush()
        for o in f.outputs:
            if o.topic == relinks:
                assert o.partition is not None
                out.append(ConsumerRecord(relinks, o.partition, start + len(out), o.key, o.value, 0))
    return out


def _alert_events(flushes: list[FlushBatch]) -> list[tuple[str, str, str]]:
    return [
        (v["kind"], v["trigger_event_id"], v["status"])
        for f in flushes
        for o in f.outputs
        if o.topic == TOPICS.alerts
        for v in [json.loads(o.value)]
    ]


def test_a_late_change_s_relink_goes_to_every_partition_and_the_other_worker_re_judges_its_mail():
    """Contract 1.1 across partitions (docs/topics.md 2.6a): the worker of the late change
    broadcasts its Relink to every partition of the relinks topic, with the digest of the links;
    the owner of the mailing number's partition re-judges that mail (a retraction and a late
    recipient_other_customer) and acks the relink record only with them; the other partition's
    owner finds no other number of its own that mailed the address."""
    links = _table("links")
    a, wall_a, _ = _worker(0, links)
    b, wall_b, _ = _worker(1, links)
    records, late = _story()
    topics = [TOPICS.changes, TOPICS.outbound, TOPICS.delivery]
    mine = [r for r in records if r.key and not r.key.endswith("1")]
    theirs = [r for r in records if r.key and r.key.endswith("1")]
    first_a = drive(a, wall_a, as_batches(mine, 2, topics, batch=10))
    drive(b, wall_b, as_batches(theirs, 2, topics, batch=10))
    assert _alert_events(first_a) == [("recipient_unlinked", "n", "firing")]
    sent = samples(b.metrics.registry)
    assert sent["notifguard_relinks_sent_total"] == 1  # (on time: OTHER's contract_started links o@x.de)
    flushes_b = drive(b, wall_b, as_batches([late], 2, topics, batch=10))
    assert b.engine.stats.late["changes"] == 1
    relinks = _relink_records(flushes_b, b.relinks)
    assert sorted(r.partition for r in relinks) == [0, 1]  # every partition, the origin's too
    # OTHER itself was re-judged by its own worker: its mail to its old address is now to a stale one
    assert _alert_events(flushes_b) == [("recipient_stale_contract", "on", "firing")]
    got = samples(b.metrics.registry)
    assert got["notifguard_relinks_sent_total"] == 2
    assert got["notifguard_relink_records_sent_total"] - sent["notifguard_relink_records_sent_total"] == 2

    for worker, partition in ((a, 0), (b, 1)):
        (record,) = [r for r in relinks if r.partition == partition]
        worker.on_events([(TP(worker.relinks, partition), [record])])
        flush = worker.take_flush()
        assert [(m.topic, m.partition, m.offset) for m in flush.done] == [(worker.relinks, partition, record.offset)]
        got = samples(worker.metrics.registry)
        assert got['notifguard_relinks_applied_total{view="current"}'] == 1
        if worker is a:
            assert _alert_events([flush]) == [
                ("recipient_unlinked", "n", "retracted"),
                ("recipient_other_customer", "n", "firing"),
            ]
            assert a.engine.stats.corrections["relink"] == 1
        else:
            assert _alert_events([flush]) == [] and b.engine.stats.corrections["relink"] == 0


def _final(flushes: list[FlushBatch]) -> dict[str, str]:
    """Firing minus retracted, by dedup_key: key -> kind."""
    out: dict[str, str] = {}
    for f in flushes:
        for o in f.outputs:
            if o.topic == TOPICS.alerts:
                v = json.loads(o.value)
                if v["status"] == "retracted":
                    out.pop(o.key.decode(), None)
                else:
                    out[o.key.decode()] = v["kind"]
    return out


def test_a_change_on_time_in_a_worker_behind_re_judges_the_mail_the_worker_ahead_judged():
    """Issue 12, watermarks apart: worker A runs ahead and judges MSISDN's mail (no customer has the
    address: recipient_unlinked); worker B works through its backlog afterwards, where OTHER set
    that address before the mail: on time in B (its own watermark), older than A's verdict. B's
    flush sends one relinks record per partition with all its Relinks (the flush's two
    link-altering changes); A re-judges the mail and acks the record once: the final set is the
    in-order one."""
    links = _table("links")
    a, wall_a, _ = _worker(0, links)
    b, wall_b, _ = _worker(1, links)
    records, change = _story()
    topics = [TOPICS.changes, TOPICS.outbound, TOPICS.delivery]
    first_a = drive(a, wall_a, as_batches([r for r in records if not r.key.endswith("1")], 2, topics, batch=10))
    assert _alert_events(first_a) == [("recipient_unlinked", "n", "firing")]
    backlog = [r for r in records if r.key.endswith("1")] + [change]
    flushes_b = drive(b, wall_b, as_batches(backlog, 2, topics, batch=10))
    assert b.engine.stats.late["changes"] == 0  # on time in its own worker
    relinks = _relink_records(flushes_b, b.relinks)
    assert sorted(r.partition for r in relinks) == [0, 1]  # one record per partition for the flush
    (record,) = [r for r in relinks if r.partition == 0]
    assert [e.relink.by for e in b._relink_decode(record.value).relinks] == [["o"], ["late"]]
    a.on_events([(TP(a.relinks, 0), [record])])
    flush = a.take_flush()
    assert [m.offset for m in flush.done] == [record.offset]
    assert _alert_events([flush]) == [
        ("recipient_unlinked", "n", "retracted"),
        ("recipient_other_customer", "n", "firing"),
    ]
    got = samples(a.metrics.registry)
    assert got['notifguard_relinks_applied_total{view="current"}'] == 2  # one looked up, no candidate
    assert a.engine.stats.corrections["relink"] == 1
    assert _final([*first_a, flush]) | _final(flushes_b) == expected_keys([*records, change])


@pytest.mark.python_core
def test_a_relink_whose_application_raises_leaves_the_others_of_its_record_applied_and_the_record_dead_lettered(
    monkeypatch,
):
    """A bug in one Relink of a record: the record's other Relinks are applied, and the record is
    dead-lettered as itself (processing_error) and done once, after all of them."""
    links = _table("links")
    a, wall_a, _ = _worker(0, links)
    b, wall_b, _ = _worker(1, links)
    records, link = _story()
    topics = [TOPICS.changes, TOPICS.outbound, TOPICS.delivery]
    drive(a, wall_a, as_batches([r for r in records if not r.key.endswith("1")], 2, topics, batch=10))
    backlog = [r for r in records if r.key.endswith("1")] + [link]
    (record,) = [
        r for r in _relink_records(drive(b, wall_b, as_batches(backlog, 2, topics, batch=10)), b.relinks)
        if r.partition == 0
    ]  # fmt: skip
    real = a.engine.relinked

    def relinked(event, partition=None):  # type: ignore[no-untyped-def]
        if event.by == ["o"]:
            raise RuntimeError("boom")
        return real(event, partition)

    monkeypatch.setattr(a.engine, "relinked", relinked)
    a.on_events([(TP(a.relinks, 0), [record])])
    flush = a.take_flush()
    assert [(m.topic, m.offset) for m in flush.done] == [(a.relinks, record.offset)]
    (letter,) = [json.loads(o.value) for o in flush.outputs if o.topic == TOPICS.deadletter]
    assert letter["reason_code"] == "processing_error" and "boom" in letter["reason"]
    assert _alert_events([flush]) == [
        ("recipient_unlinked", "n", "retracted"),
        ("recipient_other_customer", "n", "firing"),
    ]


def test_a_relink_whose_origin_changed_the_address_again_goes_on_with_the_later_relink_s_view():
    """OTHER links the address, then its contract ends (its links of the address change again) in
    a later flush, before worker A reads the first relinks record: A's view holds the later links,
    which the first record's digest never matches; the later Relink of the same address and origin
    carries them, so the first is applied at once (current), not after relink_wait_s."""
    links = _table("links")
    a, wall_a, _ = _worker(0, links)
    b, wall_b, _ = _worker(1, links)
    records, link = _story()
    topics = [TOPICS.changes, TOPICS.outbound, TOPICS.delivery]
    drive(a, wall_a, as_batches([r for r in records if not r.key.endswith("1")], 2, topics, batch=10))
    first = _relink_records(
        drive(b, wall_b, as_batches([r for r in records if r.key.endswith("1")] + [link], 2, topics, batch=10)),
        b.relinks,
    )
    ended = change("contract_ended", DAY + 200, id="end", msisdn=OTHER, contract_id="K-O")
    then = _relink_records(drive(b, wall_b, as_batches([ended], 2, topics, batch=10)), b.relinks, len(first))
    mine = [r for r in (*first, *then) if r.partition == 0]
    assert len(mine) == 2
    a.on_events([(TP(a.relinks, 0), mine)])
    flush = a.take_flush()
    assert [m.offset for m in flush.done] == [r.offset for r in mine] and not a.held[0]
    got = samples(a.metrics.registry)
    assert got['notifguard_relinks_applied_total{view="waited_out"}'] == 0
    assert got['notifguard_relinks_applied_total{view="current"}'] == 4  # o, late; end (its two addresses)
    assert _alert_events([flush]) == [
        ("recipient_unlinked", "n", "retracted"),
        ("recipient_other_customer", "n", "firing"),
    ]


def test_a_relink_is_held_until_the_address_index_view_holds_its_links_or_the_wait_runs_out():
    """The global-table race: the consumer's view of the address's links may lag the change. The
    relink record is held (not done, not acked) until its view matches the digest it carries; past
    relink_wait_s it is applied with the view there is, and counted."""
    from detectors.codec import decode_links

    links_b = _table("links")
    b, wall_b, _ = _worker(1, links_b)
    records, late = _story()
    topics = [TOPICS.changes, TOPICS.outbound, TOPICS.delivery]
    drive(b, wall_b, as_batches([r for r in records if r.key and r.key.endswith("1")], 2, topics, batch=10))
    relinks = _relink_records(drive(b, wall_b, as_batches([late], 2, topics, batch=10)), b.relinks)
    (record,) = [r for r in relinks if r.partition == 0]

    for catch_up in (True, False):
        links_a = _table("links")  # worker A's view: B's links changelog not read yet
        for key, value in links_b.data.data.items():
            if not is_links_key(key) or decode_links(value)[0].msisdn_ref != b.engine.pseudonymiser.msisdn_ref(OTHER):
                links_a.data.data[key] = value
        a, wall_a, mono_a = _worker(0, links_a, relink_wait_s=30.0)
        drive(a, wall_a, as_batches([r for r in records if r.key and not r.key.endswith("1")], 2, topics, batch=10))
        a.on_events([(TP(a.relinks, 0), [record])])
        a.tick()
        assert a.take_flush().done == [] and len(a.held[0]) == 1
        assert samples(a.metrics.registry)["notifguard_relinks_held"] == 1
        if catch_up:
            links_a.data.data.update(links_b.data.data)  # the changelog's records arrive
            view = "current"
        else:
            mono_a[0] += 30.0  # never: applied with the view there is
            view = "waited_out"
        a.tick()
        flush = a.take_flush()
        assert [m.offset for m in flush.done] == [record.offset] and not a.held[0]
        got = samples(a.metrics.registry)
        assert got[f'notifguard_relinks_applied_total{{view="{view}"}}'] == 1
        assert got["notifguard_relinks_held"] == 0
        expected = [("recipient_unlinked", "n", "retracted"), ("recipient_other_customer", "n", "firing")]
        assert _alert_events([flush]) == (expected if catch_up else [])  # (the old view: nothing changes)


def test_a_relink_record_of_before_the_batches_is_applied_after_the_wait():
    """A record of the previous format (one Relink, its digest of the links' stored form) still in
    the topic at an upgrade: held, then applied with the view there is after relink_wait_s."""
    import hashlib

    from detectors.codec import encode_links
    from detectors.engine import Relink
    from streams.worker.pipeline import RelinkRecord

    links = _table("links")
    a, wall_a, mono_a = _worker(0, links)
    b, wall_b, _ = _worker(1, links)
    records, link = _story()
    topics = [TOPICS.changes, TOPICS.outbound, TOPICS.delivery]
    drive(a, wall_a, as_batches([r for r in records if not r.key.endswith("1")], 2, topics, batch=10))
    flushes_b = drive(b, wall_b, as_batches([r for r in records if r.key.endswith("1")] + [link], 2, topics, batch=10))
    _relink_records(flushes_b, b.relinks)  # (B's state written to the tables: A's view holds its links)
    origin = b.engine.pseudonymiser.msisdn_ref(OTHER)
    addr = b.engine.pseudonymiser.address_ref("shared@x.de")
    own = [x for x in b.links.get(addr, []) if x.msisdn_ref == origin]
    old_digest = hashlib.blake2b(encode_links(own), digest_size=8).digest()
    relink = Relink(addr, parse_rfc3339(link.event["event_time"]), ["late"], origin)
    value = a._relink_encode(RelinkRecord(relink, old_digest))
    record = ConsumerRecord(a.relinks, 0, 3, b"k", value, 0)
    a.on_events([(TP(a.relinks, 0), [record])])
    assert a.take_flush().done == [] and len(a.held[0]) == 1
    mono_a[0] += 30.0
    a.tick()
    flush = a.take_flush()
    assert [m.offset for m in flush.done] == [3]
    assert samples(a.metrics.registry)['notifguard_relinks_applied_total{view="waited_out"}'] == 1
    assert _alert_events([flush]) == [
        ("recipient_unlinked", "n", "retracted"),
        ("recipient_other_customer", "n", "firing"),
    ]


def test_a_relink_record_that_does_not_decode_is_dead_lettered_and_done():
    links = _table("links")
    a, _, _ = _worker(0, links)
    bad = ConsumerRecord(a.relinks, 0, 7, b"k", b"not msgpack of a relink", 0)
    a.on_events([(TP(a.relinks, 0), [bad])])
    flush = a.take_flush()
    (letter,) = [json.loads(o.value) for o in flush.outputs if o.topic == TOPICS.deadletter]
    assert (letter["source_topic"], letter["offset"], letter["reason_code"]) == (a.relinks, 7, "invalid_record")
    assert [m.offset for m in flush.done] == [7]
    assert a.engine.arrival.pending_count() == 0 and not a.held.get(0)


def test_relink_records_never_enter_arrival_nor_hold_the_watermark():
    """A relink record is no event-time input: an idle relinks topic holds no watermark, and a
    relink record read moves none."""
    links = _table("links")
    a, wall, _ = _worker(0, links)
    assert all(tp.topic in a.inputs for tp in a.assigned)
    records, _ = _story()
    drive(a, wall, as_batches([r for r in records if r.key and not r.key.endswith("1")], 2, list(a.inputs), 10))
    before = a.engine.arrival.partition_watermarks()
    a.on_events([(TP(a.relinks, 0), [ConsumerRecord(a.relinks, 0, 0, b"k", b"x", 0)])])
    assert a.engine.arrival.partition_watermarks() == before
    assert a.consumed_total == len([r for r in records if r.key and not r.key.endswith("1")])


def test_breach_alerts_also_go_to_the_incident_feed_in_the_same_flush_and_only_they() -> None:
    """The feed of the worker's incidents computation (streams/worker/incidents.py): each alert of a kind
    that joins incidents (IncidentSettings.joins) once more, same key and value, in the alerts' flush."""
    from detectors.incidents import IncidentSettings
    from streams.topics import incident_feed_topic

    story = [change("contract_started", 0, email="a@x.de"), change("contract_ended", 50), mail("a@x.de", 100)]
    batches = as_batches(story, 2, [TOPICS.changes, TOPICS.outbound, TOPICS.delivery], 7)
    for incidents, kinds in [
        (True, ("notification_without_contract",)),
        (True, ("recipient_other_customer",)),
        (False, ()),
    ]:
        p, wall = pipeline(incidents=incidents, incident_settings=IncidentSettings(breach_kinds=kinds or ("re_port",)))
        flushes = drive(p, wall, batches)
        outputs = [o for f in flushes for o in f.outputs]
        alerts = {o.key: o.value for o in outputs if o.topic == TOPICS.alerts}
        feed = {o.key: o.value for o in outputs if o.topic == incident_feed_topic("notifguard")}
        assert any(json.loads(v)["kind"] == "notification_without_contract" for v in alerts.values())
        assert feed == {k: v for k, v in alerts.items() if incidents and json.loads(v)["kind"] in kinds}


def test_delivered_corrections_count_a_retraction_as_retracted_and_a_late_alert_as_an_alert_and_late():
    """A late email_changed retracts the unlinked alert of a mail it explains; a late contract_ended
    raises a late alert for a mail it leaves without a contract. Once the broker has them (the
    committers call `sent.inc()`), notifguard_alerts_total counts the first alert and the late one,
    never the retraction; the correction counters count each once. Nothing counts before delivery."""
    p, wall = pipeline(partitions=1)
    holder = "+4917688888888"
    records = [
        FILLER_START,
        change("contract_started", 0, id="s", email="me@x.de"),
        change("contract_started", 0, id="h", msisdn=holder, contract_id="K-H", customer_id="C-H", email="h@x.de"),
        mail("new@x.de", DAY, id="n1"),
        mail("h@x.de", DAY + 60, id="n2", msisdn=holder),
    ]
    first = drive(p, wall, as_batches(records, 1, [TOPICS.changes, TOPICS.outbound], batch=10))
    late = [
        change("email_changed", DAY - 600, id="late-email", email="new@x.de"),
        change("contract_ended", DAY - 600, id="late-end", msisdn=holder, contract_id="K-H", customer_id="C-H"),
    ]
    second = drive(p, wall, as_batches(late, 1, [TOPICS.changes], batch=10))
    outputs = [o for f in first + second for o in f.outputs if o.topic == TOPICS.alerts]
    records_out = [json.loads(o.value) for o in outputs]
    assert sorted((r["kind"], r["trigger_event_id"], r["status"], r["late"]) for r in records_out) == [
        ("notification_without_contract", "n2", "firing", True),
        ("recipient_unlinked", "n1", "firing", False),
        ("recipient_unlinked", "n1", "retracted", True),
    ]
    key = '{kind="%s",severity="%s"}'
    unlinked, nwc = key % ("recipient_unlinked", "warning"), key % ("notification_without_contract", "critical")
    assert samples(p.metrics.registry)["notifguard_alerts_total" + unlinked] == 0  # judged, not delivered
    for o in outputs:
        assert o.sent is not None
        o.sent.inc()
    got = samples(p.metrics.registry)
    assert got["notifguard_alerts_total" + unlinked] == 1 and got["notifguard_alerts_retracted_total" + unlinked] == 1
    assert got["notifguard_alerts_raised_late_total" + unlinked] == 0
    assert got["notifguard_alerts_total" + nwc] == 1 and got["notifguard_alerts_raised_late_total" + nwc] == 1
    assert got["notifguard_alerts_retracted_total" + nwc] == 0


def _links_table(name: str) -> Any:
    """_table's memory store, walked as a Faust store is (TableLinks.items)."""
    table = _table(name)
    table.data.items = table.data.data.items
    return table


def test_an_upgraded_deployment_s_address_index_is_filled_from_the_numbers_states_once_recovered(caplog):
    """An upgrade from the index keyed by address alone (docs/topics.md 2.6a): the numbers table
    holds the states written before, the address index (a new table) nothing. Once the tables
    are recovered the worker fills the index of its partitions from the states, a slice a tick,
    marks each partition built, and a mail to an address another customer's number set is
    judged with that link; a worker over the filled table walks nothing again."""
    topics = [TOPICS.changes, TOPICS.outbound, TOPICS.delivery]
    numbers = _table("numbers")
    before = [
        change(
            "contract_started", 0, id="o", msisdn=OTHER, contract_id="K-O", customer_id="C-OTHER", email="shared@x.de"
        ),
        change(
            "contract_started", 0, id="t", msisdn="+4917600000003", contract_id="K-T", customer_id="C-T", email="t@x.de"
        ),
    ]

    def worker(links: Any) -> tuple[Pipeline, list[int]]:
        wall = [parse_rfc3339("2027-01-01T00:00:00Z")]
        p = Pipeline(
            WorkerConfig(rules=Settings(), partitions=1),
            TableNumbers(numbers),
            TableLinks(links, 1),
            Metrics(TOPICS),
            clock=lambda: wall[0],
        )
        p.assign({TP(t, 0) for t in p.inputs})
        return p, wall

    old_links = _links_table("links")
    old, wall = worker(old_links)
    with caplog.at_level(logging.WARNING, logger="notifguard.worker"):
        for f in drive(old, wall, as_batches(before, 1, topics, batch=10)):
            f.links.flush()
            f.numbers.flush()
    assert not caplog.records  # (a fresh deployment: its partition marked built, nothing to say)
    indexed = dict(TableLinks(old_links, 1).items())
    assert len(indexed) == 2

    links = _links_table("links-v2")  # the upgrade: a new, empty table over the same numbers
    new, wall = worker(links)
    # (the memory store is one dict: which partition a number key is of, as RocksDB's databases know)
    new.numbers.memory_partitions.update(old.numbers.memory_partitions)
    new.rebuild.batch = 1
    new.tick(recovered=False)  # still recovering: nothing walked
    assert new.take_flush().links.flush() == [] and not new.links.built(0)
    new.tick()
    new.take_flush().links.flush()
    assert len(dict(new.links.items())) == 1 and not new.links.built(0)  # one number a tick
    # a batch meanwhile waits (its inputs paused) until the index is filled
    mails = [change("contract_started", DAY // 2, id="s", email="me@x.de"), mail("shared@x.de", DAY, id="n")]
    batches = as_batches(mails, 1, topics, batch=10)
    new.on_events([(TP(recs[0].topic, recs[0].partition), list(recs)) for recs in batches])
    assert new.consumed_total == 0 and new.flow_control()[0] == new.assigned
    for _ in range(2):
        new.tick()
        new.take_flush().links.flush()
    assert dict(new.links.items()) == indexed and new.links.built(0) and new.rebuild.indexed == 2
    assert new.consumed_total == len(mails) and new.flow_control()[1] == new.assigned
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [
        "the address index has no entries of input partitions [0] (a deployment upgraded from the index "
        "keyed by address alone, docs/topics.md 2.6a)",
        "the address index is filled",
    ]

    flushes = drive(new, wall, [])
    assert sorted(alerts_of(flushes).values()) == ["recipient_other_customer"]

    again, _ = worker(links)
    again.tick()
    assert not again.rebuild.active and again.rebuild.indexed == 0


def test_the_address_index_fill_takes_the_slice_of_the_worker_settings():
    """index_fill_batch (NOTIFGUARD_WORKER_INDEX_FILL_BATCH) is the numbers the fill walks a slice."""
    from streams.config import load_worker_config

    assert load_worker_config(None, env={}).index_fill_batch == 5_000
    config = load_worker_config(None, env={"NOTIFGUARD_WORKER_INDEX_FILL_BATCH": "2"})
    p = Pipeline(config, TableNumbers(_table("numbers")), TableLinks(_table("links"), 1), Metrics(TOPICS))
    assert p.rebuild.batch == 2
    with pytest.raises(ValueError, match="index_fill_batch"):
        load_worker_config(None, env={"NOTIFGUARD_WORKER_INDEX_FILL_BATCH": "0"})
