"""The worker's metrics: counts taken a batch at a time are what one update per event gives."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from detectors.alerts import FIRING, RETRACTED, Alert, Subject, dedup_key
from detectors.engine import Stats, VerdictRecord
from detectors.kinds import SEVERITY
from detectors.settings import Topics
from streams.metrics import LABEL_VALUES_MAX, Metrics, observe_n

BUCKETS = (1, 5, 10, 20, 30, 31, 32, 35, 40, 60, 120, 300, 900)


def samples(registry: CollectorRegistry) -> dict[str, float]:
    out = {}
    for line in generate_latest(registry).decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def test_observe_n_is_n_observations() -> None:
    one, many = CollectorRegistry(), CollectorRegistry()
    h1 = Histogram("d", "d", buckets=BUCKETS, registry=one)
    h2 = Histogram("d", "d", buckets=BUCKETS, registry=many)
    for value, n in [(0.0, 1), (1.0, 3), (1.0000001, 2), (30.5, 4), (900.0, 1), (901.0, 2), (5000.0, 1)]:
        for _ in range(n):
            h1.observe(value)
        observe_n(h2, value, n)
    a, b = samples(one), samples(many)
    assert a.keys() == b.keys()
    for name in a:
        assert abs(a[name] - b[name]) <= 1e-9 * max(1.0, abs(a[name])), name


def test_verdict_delays_and_verdicts_count_each_event() -> None:
    m = Metrics(Topics())
    m.observe_verdict_delays(100.0, [98.5, 98.5, 70.0, 98.5])  # delays 1.5 s (three) and 30 s
    got = samples(m.registry)
    assert got['notifguard_verdict_delay_seconds_bucket{le="5.0"}'] == 3
    assert got['notifguard_verdict_delay_seconds_bucket{le="30.0"}'] == 4
    assert got["notifguard_verdict_delay_seconds_count"] == 4
    assert abs(got["notifguard_verdict_delay_seconds_sum"] - 34.5) < 1e-9
    v = [
        VerdictRecord("b", "t", "s", "email", "ok", False, 1),
        VerdictRecord("b", "t", "s", "email", "ok", False, 1),
        VerdictRecord("b", "t", "s", "email", "unverified_recipient", False, 1),
    ]
    m.observe_verdicts(v)
    m.observe_verdicts(v[:1])
    got = samples(m.registry)
    ok = [k for k in got if k.startswith("notifguard_verdicts_total") and 'verdict="ok"' in k]
    assert len(ok) == 1 and got[ok[0]] == 3


def test_free_text_labels_are_names_or_other() -> None:
    m = Metrics(Topics())
    m.observe_verdicts(
        [
            VerdictRecord("o2", "contract_info", "mailer anna.schmidt@gmx.de", "email", "ok", False, 1),
            VerdictRecord("o2", "Vertrag für anna.schmidt@gmx.de", "crm-mailer", "email", "ok", False, 1),
            VerdictRecord("o2", "x" * 65, "crm-mailer", "email", "ok", False, 1),
        ]
    )
    m.observe_deliveries(
        [
            ("anna.schmidt@gmx.de", "crm-mailer", "bounced", "hard"),
            ("o2", "mailer anna.schmidt@gmx.de", "delivered", "none"),
        ]
    )
    text = m.exposition().decode()
    assert "anna" not in text and "x" * 65 not in text
    got = samples(m.registry)
    key = 'notifguard_verdicts_total{brand="o2",channel="email",sender="%s",template="%s",verdict="ok"}'
    assert got[key % ("other", "contract_info")] == 1 and got[key % ("crm-mailer", "other")] == 2
    key = 'notifguard_deliveries_total{bounce_type="%s",brand="%s",sender="%s",status="%s"}'
    assert got[key % ("hard", "other", "crm-mailer", "bounced")] == 1
    assert got[key % ("none", "o2", "other", "delivered")] == 1


def test_each_free_text_label_has_at_most_fifty_values_per_process() -> None:
    m = Metrics(Topics())
    for i in range(60):
        m.observe_verdicts([VerdictRecord("o2", f"template-{i}", "crm-mailer", "email", "ok", False, 1)])
    m.observe_verdicts([VerdictRecord("o2", "template-3", "crm-mailer", "email", "ok", False, 1)])
    got = samples(m.registry)
    templates = {
        k.split('template="')[1].split('"')[0]: v
        for k, v in got.items()
        if k.startswith("notifguard_verdicts_total") and 'verdict="ok"' in k
    }
    assert len(templates) == LABEL_VALUES_MAX + 1 == 51
    assert templates["other"] == 10 and templates["template-3"] == 2 and "template-50" not in templates


def test_capped_state_entries_are_counted_by_part() -> None:
    m = Metrics(Topics())
    stats = Stats()
    stats.capped["seen"] += 7
    m.sync_stats(stats)
    stats.capped["seen"] += 3
    m.sync_stats(stats)
    got = samples(m.registry)
    assert got['notifguard_state_capped_total{part="seen"}'] == 10
    assert got['notifguard_state_capped_total{part="changes"}'] == 0


def alert(kind: str, *, late: bool = False, status: str = FIRING) -> Alert:
    return Alert(
        alert_id="a",
        dedup_key=dedup_key(kind, "n1"),
        kind=kind,
        severity=SEVERITY[kind],
        event_time="2027-01-01T00:00:00Z",
        detected_at="2027-01-01T00:00:00Z",
        trigger_event_id="n1",
        event_ids=["n1"],
        subject=Subject("+49176****1234", "ref"),
        brand=None,
        template=None,
        sender=None,
        summary="s",
        evidence={},
        late=late or status == RETRACTED,  # a retraction is late by nature (detectors.wording)
        runbook_url="",
        status=status,
    )


def test_corrections_are_counted_and_the_correction_series_pre_initialised() -> None:
    m = Metrics(Topics())
    got = samples(m.registry)  # pre-initialised, for dashboards to divide by
    assert got['notifguard_alerts_retracted_total{kind="recipient_unlinked",severity="warning"}'] == 0
    assert got['notifguard_alerts_raised_late_total{kind="re_port",severity="info"}'] == 0
    assert got['notifguard_corrections_total{cause="relink"}'] == 0
    assert got["notifguard_relinks_out_of_reach_total"] == 0
    stats = Stats()
    stats.too_late["changes"] += 2
    stats.corrections["changes"] += 3
    stats.corrections["relink"] += 1
    stats.relinks_out_of_reach += 2
    m.sync_stats(stats)
    stats.corrections["changes"] += 1
    stats.relinks_out_of_reach += 1
    m.sync_stats(stats)
    got = samples(m.registry)
    topics = Topics()
    assert got[f'notifguard_too_late_records_total{{topic="{topics.changes}"}}'] == 2
    assert got[f'notifguard_too_late_records_total{{topic="{topics.outbound}"}}'] == 0
    assert got['notifguard_corrections_total{cause="changes"}'] == 4
    assert got['notifguard_corrections_total{cause="relink"}'] == 1
    assert got["notifguard_relinks_out_of_reach_total"] == 3


def test_a_retraction_counts_as_a_retraction_and_a_late_alert_as_an_alert_and_late() -> None:
    """notifguard_alerts_total counts alerts raised (on time or late), never their retractions
    (a retracted alert was counted when it fired: counting its withdrawal too would double it);
    the correction counters count the late ones and the retractions, all once delivered."""
    m = Metrics(Topics())
    for a in [
        alert("recipient_unlinked"),
        alert("recipient_unlinked", status=RETRACTED),
        alert("recipient_previous_holder", late=True),
        alert("recipient_previous_holder", late=True),
        alert("recipient_previous_holder"),
    ]:
        m.alert_counter(a).inc()
    got = samples(m.registry)
    key = '{kind="%s",severity="%s"}'
    unlinked, holder = key % ("recipient_unlinked", "warning"), key % ("recipient_previous_holder", "critical")
    assert got["notifguard_alerts_total" + unlinked] == 1
    assert got["notifguard_alerts_retracted_total" + unlinked] == 1
    assert got["notifguard_alerts_raised_late_total" + unlinked] == 0
    assert got["notifguard_alerts_total" + holder] == 3
    assert got["notifguard_alerts_raised_late_total" + holder] == 2
    assert got["notifguard_alerts_retracted_total" + holder] == 0
    assert m.alert_counter(alert("recipient_unlinked")) is m.alert_counter(alert("recipient_unlinked"))
