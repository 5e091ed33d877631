"""Event time in the engine: grace, lateness, release order, duplicates, dead letters, timers."""

import base64
import hashlib

import msgspec

from detectors.codec import decode_number, encode_number
from detectors.engine import dead_letter
from detectors.settings import Settings
from detectors.timefmt import parse_rfc3339
from tests.factories import (
    FILLER_START,
    MSISDN,
    T0,
    Rec,
    advance,
    change,
    delivery,
    feed,
    kinds_of,
    mail,
    new_engine,
)

DAY = 86_400
S = 1_000_000
T0_US = parse_rfc3339(T0)
STARTED = change("contract_started", 0, id="s", email="old@x.de")


def test_a_change_arriving_after_the_mail_within_grace_is_applied_first():
    engine = new_engine()
    feed(engine, [STARTED, mail("new@x.de", DAY + 5, id="n"), change("email_changed", DAY, email="new@x.de")])
    engine.flush(0)
    alerts, _, verdicts = engine.drain()
    assert alerts == [] and [v.verdict for v in verdicts] == ["ok"]
    assert engine.stats.late == {"changes": 0, "outbound": 0, "delivery": 0}


def test_nothing_is_judged_before_the_watermark_passes_event_time_plus_grace():
    engine = new_engine()
    feed(engine, [STARTED, FILLER_START, mail("stranger@x.de", DAY, id="n")])
    assert engine.arrival.watermark is None  # nothing on the delivery topic yet: the minimum waits
    assert engine.pending_count() == 3
    feed(engine, [delivery("z", "delivered", DAY + 30)])
    assert engine.arrival.watermark == T0_US  # the contract topic's
    advance(engine, DAY + 30)  # every topic at t + grace: not yet past
    assert engine.arrival.watermark == T0_US + (DAY + 30) * S
    assert engine.drain()[0] == []
    advance(engine, DAY + 30.001)
    assert kinds_of(engine.drain()[0]) == [("recipient_unlinked", "n")]


def test_a_change_later_than_grace_within_the_horizon_retracts_what_it_disproves():
    engine = new_engine()
    feed(engine, [STARTED, FILLER_START, mail("new@x.de", DAY + 5, id="n1")])
    advance(engine, DAY + 100)
    feed(
        engine, [change("email_changed", DAY, id="late-change", email="new@x.de"), mail("new@x.de", DAY + 200, id="n2")]
    )
    engine.flush(0)
    alerts = engine.drain()[0]
    # n1's alert, then its retraction (contract 1.1); n2 sees the late change: silent
    assert [(a.kind, a.trigger_event_id, a.status) for a in alerts] == [
        ("recipient_unlinked", "n1", "firing"),
        ("recipient_unlinked", "n1", "retracted"),
    ]
    assert alerts[0].late is False and alerts[1].dedup_key == alerts[0].dedup_key
    assert alerts[1].retracted_by == ["late-change"] and alerts[1].reason
    assert engine.stats.late["changes"] == 1 and engine.stats.too_late["changes"] == 0
    assert engine.stats.retracted["recipient_unlinked"] == 1 and engine.stats.corrections["changes"] == 1


def test_a_change_later_than_the_correction_horizon_updates_state_but_withdraws_nothing():
    engine = new_engine(Settings(correction_horizon_s=60))
    feed(engine, [STARTED, FILLER_START, mail("new@x.de", DAY + 5, id="n1")])
    advance(engine, DAY + 100)
    feed(
        engine, [change("email_changed", DAY, id="late-change", email="new@x.de"), mail("new@x.de", DAY + 200, id="n2")]
    )
    engine.flush(0)
    alerts = engine.drain()[0]
    assert kinds_of(alerts) == [("recipient_unlinked", "n1")]  # n2 sees the late change: silent
    assert alerts[0].late is False and alerts[0].status == "firing"
    assert engine.stats.late["changes"] == 1 and engine.stats.too_late["changes"] == 1


def test_a_late_notification_is_judged_at_once_and_marked():
    engine = new_engine()
    feed(engine, [STARTED, FILLER_START])
    advance(engine, DAY + 100)
    feed(engine, [mail("stranger@x.de", DAY, id="late")])
    alerts, _, verdicts = engine.drain()  # no flush needed: judged at once
    assert kinds_of(alerts) == [("recipient_unlinked", "late")]
    assert alerts[0].late is True and verdicts[-1].late is True
    assert engine.stats.late["outbound"] == 1


def test_same_event_time_applies_changes_then_notifications_then_deliveries():
    engine = new_engine()
    t = DAY
    feed(
        engine,
        [
            STARTED,
            delivery("m1", "bounced", t, id="d", bounce_type="hard", recipient="new@x.de"),
            mail("new@x.de", t, id="n", message_id="m1"),
            change("email_changed", t, id="c", email="new@x.de"),
        ],
    )
    engine.flush(0)
    # the change makes new@ current for the mail, the mail is known to the bounce
    assert kinds_of(engine.drain()[0]) == [("current_address_bouncing", "d")]


def test_duplicates_change_nothing_and_are_counted():
    engine = new_engine()
    n = mail("stranger@x.de", DAY, id="n")
    feed(engine, [STARTED, STARTED, n, n])  # duplicates in the buffer: dropped on arrival
    engine.flush(0)
    feed(engine, [n])  # a duplicate of an applied record: dropped when applied (the number's seen ids)
    engine.flush(0)
    assert kinds_of(engine.drain()[0]) == [("recipient_unlinked", "n")]
    assert engine.stats.duplicates == {"changes": 1, "outbound": 2, "delivery": 0}


def test_duplicate_ids_are_forgotten_after_the_retention():
    engine = new_engine(Settings(dedup_retention_s=3600))
    feed(engine, [STARTED, FILLER_START, change("email_changed", 2 * 3600, id="later", email="a@b.c")])
    advance(engine, 2 * 3600)
    engine.flush(0)
    feed(engine, [STARTED])
    assert engine.stats.duplicates["changes"] == 0  # old id forgotten: a resend long after counts again
    assert engine.stats.late["changes"] == 1


def test_bad_records_are_dead_lettered_and_change_no_state():
    engine = new_engine()
    feed(engine, [STARTED])
    before = {ref: encode_number(s) for ref, s in engine.numbers.items()}
    arrival = engine.arrival.snapshot()
    far_future = change("contract_ended", 10 * DAY, msisdn=MSISDN)
    bad = [
        Rec("notifications.outbound", MSISDN, b"{oops"),
        Rec("notifications.outbound", MSISDN, b"\xff\xfe"),
        Rec("contracts.changes", MSISDN, far_future.value.replace('"contract_ended"', '"contract_frozen"')),
        Rec("contracts.changes", "+4900000000", far_future.value),  # key mismatch
        Rec("some.other.topic", MSISDN, far_future.value),
        Rec("notifications.delivery", MSISDN, None),
    ]
    feed(engine, bad)
    _, dead, _ = engine.drain()
    assert [d.reason_code for d in dead] == [
        "invalid_json",
        "invalid_json",
        "invalid_record",
        "key_mismatch",
        "unknown_topic",
        "invalid_json",
    ]
    assert dead[1].value_encoding == "base64"
    assert dead[2].source_topic == "contracts.changes" and dead[2].offset == 2
    assert {ref: encode_number(s) for ref, s in engine.numbers.items()} == before
    assert engine.arrival.snapshot() == arrival
    assert engine.stats.deadletters == {"invalid_json": 3, "invalid_record": 1, "key_mismatch": 1, "unknown_topic": 1}


OLD_DEAD_LETTER_FIELDS = {
    "schema_version",
    "source_topic",
    "partition",
    "offset",
    "timestamp_ms",
    "key",
    "key_encoding",
    "value",
    "value_encoding",
    "reason",
    "reason_code",
    "detected_at",
}


def test_a_dead_letter_quotes_a_huge_value_as_a_prefix_with_its_length_and_hash():
    engine = new_engine()
    binary = b"\xff\xfe" * 450_000  # 900 KB, no UTF-8: it was a 1.2 MB base64 dead letter
    text = ("{" + "\u0001" * 40_000 + '"é\\' * 40_000).encode()  # JSON escapes: ~440 KB once quoted
    long_key = "+49" + "1" * 200_000
    feed(
        engine,
        [
            Rec("notifications.outbound", MSISDN, binary),
            Rec("notifications.outbound", MSISDN, text),
            Rec("contracts.changes", long_key, STARTED.value),
        ],
    )
    dead = engine.drain()[1]
    assert [d.reason_code for d in dead] == ["invalid_json", "invalid_json", "key_mismatch"]
    for d in dead:
        assert len(msgspec.json.encode(d)) <= 34 * 1024
    first, second, third = dead
    assert first.value_encoding == "base64" and binary.startswith(base64.b64decode(first.value))
    assert len(first.value) <= 32 * 1024 and len(base64.b64decode(first.value)) == 24 * 1024
    assert first.value_length == 900_000 and first.value_sha256 == hashlib.sha256(binary).hexdigest()
    assert second.value_encoding == "utf-8" and text.decode().startswith(second.value)
    assert len(msgspec.json.encode(second.value)) - 2 <= 32 * 1024 < len(msgspec.json.encode(second.value)) + 4
    assert second.value_length == len(text) and second.value_sha256 == hashlib.sha256(text).hexdigest()
    assert third.key == long_key[:1024] and third.key_length == len(long_key)
    assert third.value == STARTED.value and third.value_length is msgspec.UNSET
    assert set(msgspec.to_builtins(third)) == OLD_DEAD_LETTER_FIELDS | {"key_length", "key_sha256"}


def test_a_dead_letter_of_a_record_of_normal_size_is_whole_and_as_before():
    engine = new_engine()
    feed(engine, [Rec("notifications.outbound", MSISDN, b"\xff\xfe"), Rec("contracts.changes", MSISDN, "[]")])
    for d in engine.drain()[1]:
        assert set(msgspec.to_builtins(d)) == OLD_DEAD_LETTER_FIELDS


def test_a_reason_is_capped():
    assert len(dead_letter("t" * 9999, 0, 1, None, None, None, "r" * 99_999, "invalid_record", "now").reason) == 1000


def test_idle_partition_is_flushed_by_the_wall_clock():
    engine = new_engine()
    feed(engine, [STARTED, mail("stranger@x.de", DAY, id="n")], now_us=1000 * S)
    engine.tick(1010 * S)
    assert engine.drain()[0] == []  # quiet for 10 s < idle_flush
    engine.tick(1031 * S)  # watermark moves 31 s on: past event_time + grace
    assert kinds_of(engine.drain()[0]) == [("recipient_unlinked", "n")]


def test_a_partition_that_runs_ahead_makes_no_other_partition_late():
    engine = new_engine()
    other = "+4917600000002"
    recs = [STARTED, FILLER_START, change("contract_started", 0, msisdn=other, customer_id="C-2", email="b@x.de")]
    recs[2] = Rec(recs[2].topic, recs[2].key, recs[2].value, partition=1)
    feed(engine, recs)
    advance(engine, DAY)  # partition 0 a day on
    assert engine.arrival.partition_watermarks() == {0: T0_US + DAY * S, 1: T0_US}
    late_on_1 = mail("stranger2@x.de", 10, id="n2", msisdn=other)
    feed(engine, [Rec(late_on_1.topic, late_on_1.key, late_on_1.value, partition=1)])
    # partition 1's watermark is at 0, and the engine's is the lowest: a mail at 10 s is not late
    assert engine.stats.late["outbound"] == 0
    engine.flush(0)
    assert kinds_of(engine.drain()[0]) == [("recipient_unlinked", "n2")]


def test_flush_releases_everything_in_event_time_order():
    engine = new_engine()
    feed(engine, [STARTED, mail("a@x.de", DAY + 2, id="n2"), mail("b@x.de", DAY + 1, id="n1")])
    engine.flush(0)
    alerts = engine.drain()[0]
    assert [a.trigger_event_id for a in alerts] == ["n1", "n2"]
    assert engine.pending_count() == 0


def test_number_state_survives_a_round_trip():
    engine = new_engine()
    feed(
        engine,
        [
            STARTED,
            change("email_changed", 10, email="n@x.de"),
            mail("n@x.de", 20, id="n"),
            delivery("m-n", "bounced", 21, bounce_type="hard"),
        ],
    )
    engine.flush(0)
    for state in engine.numbers.values():
        assert decode_number(encode_number(state)) == state


def test_a_restart_that_lost_the_buffer_re_applies_what_was_pending():
    engine = new_engine()
    feed(engine, [STARTED, FILLER_START])
    advance(engine, DAY - 60)  # STARTED applied
    feed(engine, [mail("stranger@x.de", DAY, id="n")])
    assert engine.pending_count() == 4  # the mail and the filler's last three records
    restarted = new_engine()  # same state, empty buffers: as a worker recovered from its changelog
    restarted.numbers = engine.numbers
    restarted.index = engine.index
    feed(restarted, [STARTED, mail("stranger@x.de", DAY, id="n")])  # re-read from the committed offset
    restarted.flush(0)
    assert kinds_of(restarted.drain()[0]) == [("recipient_unlinked", "n")]  # the lost mail, judged
    assert restarted.stats.duplicates["changes"] == 1


def test_stats_count_records_alerts_and_releases():
    engine = new_engine()
    feed(engine, [STARTED, mail("stranger@x.de", DAY, id="n")])
    engine.flush(0)
    assert engine.stats.records == {"changes": 1, "outbound": 1, "delivery": 0}
    assert engine.stats.alerts["recipient_unlinked"] == 1
    assert engine.stats.released == 2


def test_delivery_outcomes_are_reported_for_metrics_and_cleared_by_drain():
    engine = new_engine()
    feed(
        engine,
        [
            STARTED,
            delivery("m1", "bounced", 1, bounce_type="hard", brand="blau", sender="x"),
            delivery("m2", "delivered", 2),
        ],
    )
    engine.flush(0)
    assert engine.deliveries == [("blau", "x", "bounced", "hard"), ("o2", "crm-mailer", "delivered", "none")]
    engine.drain()
    assert engine.deliveries == []


def test_the_engine_keeps_its_attributes_in_slots():
    """Past 30 instance-dict attributes CPython 3.11 no longer specialises `self.x` (Engine.__slots__;
    compiled, detectors.native, a struct of its own)."""
    engine = new_engine()
    assert getattr(engine, "__dict__", {}) == {}


def test_a_recipient_is_masked_for_its_channel_whichever_came_first():
    # one text as an sms recipient and as an e-mail recipient: each remembered with its own mask
    # (the memo of masks is by channel: once keyed by the text alone, the second took the first's)
    other = "+4917611111111"
    text = "+4917655555555"
    engine = new_engine()
    feed(
        engine,
        [
            STARTED,
            mail(text, 10, id="sms", channel="sms"),
            mail(text, 20, id="mail", msisdn=other),
            delivery("m-mail", "bounced", 30, id="b", msisdn=other, recipient=text, bounce_type="hard"),
        ],
    )
    engine.flush(0)
    ref_of = engine.pseudonymiser.msisdn_ref
    sms = engine.numbers[ref_of(MSISDN)].past[-1]
    email = [p.to_masked for p in engine.numbers[ref_of(other)].past]
    assert (sms.channel, sms.to_masked) == ("sms", "+49176******55")
    assert email == ["+***", "+***"]  # (no @: a mailbox's text is masked whole)
