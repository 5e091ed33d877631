"""Sliding windows with one alert per episode, and the re_port rule."""

import pytest

from detectors.settings import Settings
from tests.factories import change, delivery, kinds_of, run

DAY = 86_400
H = 3600


def bounces(*times):
    return [delivery(f"m{i}", "bounced", t, id=f"b{i}", bounce_type="soft") for i, t in enumerate(times)]


@pytest.mark.parametrize(
    ("times", "fired_on"),
    [
        ((0, H, 2 * H), ["b2"]),  # three within 24 h
        ((0, H), []),  # two are not enough
        ((0, 12 * H, 24 * H), []),  # window is (t - 24h, t]: the first falls out
        ((0, 12 * H, 24 * H - 0.001), ["b2"]),
        ((0, 1, 2, 3, 4), ["b2"]),  # one alert per episode
        ((0, 1, 2, 2 * DAY, 2 * DAY + 1, 2 * DAY + 2), ["b2", "b5"]),  # a new episode after a quiet day
        ((0, 1, 2, 20 * H, 30 * H), ["b2"]),  # window never drops below 3 between: same episode
    ],
)
def test_bounce_burst_windows_and_episodes(times, fired_on):
    alerts = run(bounces(*times))
    assert [a.trigger_event_id for a in alerts if a.kind == "bounce_burst"] == fired_on


def test_bounce_burst_threshold_and_window_are_settings():
    s = Settings(bounce_burst_threshold=2, bounce_burst_window_s=60)
    alerts = run(bounces(0, 30, 200, 300), s)
    assert [a.trigger_event_id for a in alerts] == ["b1"]
    assert len(alerts[0].event_ids) == 2


def test_delivered_and_deferred_do_not_count():
    recs = [*bounces(0, 1), delivery("x", "delivered", 2), delivery("y", "deferred", 3)]
    assert run(recs) == []


def ports(*times):
    out = []
    for i, t in enumerate(times):
        if i % 2 == 0:
            out.append(change("ported_in", t, id=f"p{i}", contract_id=f"K{i}", customer_id="C-SAME"))
        else:
            out.append(change("ported_out", t, id=f"p{i}", contract_id=f"K{i - 1}"))
    return out


def test_port_flapping_within_30_days_once_per_episode():
    alerts = run(ports(0, 10 * DAY, 20 * DAY, 25 * DAY))
    assert [a.trigger_event_id for a in alerts if a.kind == "port_flapping"] == ["p2"]


def test_port_events_spread_over_more_than_30_days_do_not_flap():
    assert [a for a in run(ports(0, 16 * DAY, 31 * DAY)) if a.kind == "port_flapping"] == []


RE = [change("contract_started", 0, id="s1", customer_id="C-1", email="a@x.de")]


@pytest.mark.parametrize(
    ("end", "gap_days", "customer", "fires"),
    [
        ("ported_out", 100, "C-2", True),
        ("contract_ended", 365, "C-2", True),  # at most 365 days before
        ("contract_ended", 366, "C-2", False),
        ("ported_out", 10, "C-1", False),  # same customer: a brand switch, not a re-port
        ("holder_changed", 10, "C-2", False),  # not ended by ported_out/contract_ended
    ],
)
def test_re_port_rule(end, gap_days, customer, fires):
    recs = [*RE, change(end, DAY, id="end", customer_id="C-X")]
    if end == "holder_changed":
        recs.append(change("contract_ended", DAY + 1, id="end2"))
        gap_start = DAY + 1
    else:
        gap_start = DAY
    recs.append(change("ported_in", gap_start + gap_days * DAY, id="new", contract_id="K-2", customer_id=customer))
    alerts = [a for a in run(recs) if a.kind == "re_port"]
    if end == "holder_changed":
        # the last real end is by C-X (the new holder), not C-1: a re-port for C-2
        assert kinds_of(alerts) == [("re_port", "new")]
        return
    assert bool(alerts) == fires
    if fires:
        (a,) = alerts
        assert a.severity == "info"
        assert a.event_ids == ["new", "end"]
        assert a.evidence["gap_days"] == gap_days
