"""Every scenario raises exactly its expected alerts (golden), and the story reads well."""

from __future__ import annotations

import pytest

from detectors.capture import encode_line
from detectors.settings import Settings
from streams.replay_offline import replay
from streams.scenarios import all_scenarios, load

SCENARIOS = all_scenarios()


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_scenario_raises_exactly_its_expected_alerts(scenario, tmp_path):
    path = tmp_path / "capture.jsonl"
    path.write_bytes(b"".join(encode_line(e) for e in scenario.envelopes()))
    _, alerts = replay([path], Settings())
    got = {(a.kind, a.trigger_event_id) for a in alerts}
    assert got == scenario.expected_keys()
    assert len(alerts) == len(got)  # nothing raised twice
    for exp in scenario.expect:
        if exp.late is not None:
            (alert,) = [a for a in alerts if (a.kind, a.trigger_event_id) == (exp.kind, exp.trigger)]
            assert alert.late is exp.late
    assert scenario.title and scenario.story


def test_there_is_a_scenario_for_every_kind_and_the_negatives():
    from detectors import kinds

    expected = {e.kind for s in SCENARIOS for e in s.expect}
    assert expected == set(kinds.KINDS)
    silent = [s.name for s in SCENARIOS if s.name.startswith("silent_")]
    assert len(silent) >= 5


def test_scenario_capture_is_keyed_by_msisdn_with_event_time_timestamps():
    s = load("motivating_re_port_leak")
    envs = list(s.envelopes())
    assert all(e.key == "+4917612345678" for e in envs)
    assert envs[0].ts == 1714557600000
    assert [e.offset for e in envs if e.topic == "contracts.changes"] == [0, 1, 2]
