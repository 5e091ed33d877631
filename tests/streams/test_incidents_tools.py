"""Incidents offline: replay --incidents-out, the tools on a file, the register entry field by field, metrics."""

from __future__ import annotations

import functools
import io
import json
from pathlib import Path

import msgspec
import pytest
from prometheus_client import CollectorRegistry

from detectors.alerts import Alert, decode_alert
from detectors.incidents import REPORTED, Incident, Incidents, decode_record, latest
from detectors.settings import Settings
from detectors.timefmt import parse_rfc3339
from streams.cli import main
from streams.incident_report import RECIPIENTS, View, export, incident_line, register_fields, show_lines
from streams.incidents import IncidentMetrics, new_action
from streams.replay_offline import replay
from tests.incident_stories import blau_to_o2, blau_to_o2_counts, capture, o2_recycled

NOW = parse_rfc3339("2026-12-04T10:00:00Z")


@pytest.fixture(scope="module")
def story(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return capture(tmp_path_factory.mktemp("story") / "story.jsonl", blau_to_o2(300) + o2_recycled(100))


def _replay(path: Path) -> tuple[list[Alert], list[Incident]]:
    out = io.BytesIO()
    _, alerts = replay([path], Settings(), incidents_out=out, jobs=1)
    records = [decode_record(line) for line in out.getvalue().splitlines()]
    assert all(isinstance(r, Incident) for r in records)
    return alerts, [r for r in records if isinstance(r, Incident)]


def _stable(i: Incident) -> Incident:
    """Without what depends on the wall clock of the run (detection)."""
    return msgspec.structs.replace(i, detected_at=None, deadlines=None)


def test_replay_writes_the_incidents_with_the_same_ids_every_time(story: Path) -> None:
    alerts, records = _replay(story)
    final, _ = latest(records)
    again, _ = latest(_replay(story)[1])
    assert sorted(final) == sorted(again) and len(final) == 2
    assert {k: _stable(v) for k, v in final.items()} == {k: _stable(v) for k, v in again.items()}
    # the file's records are what the aggregator makes of the replay's alerts
    agg = Incidents()
    for a in alerts:
        agg.add(a)
    assert {i.incident_id: i for i in agg.incidents()} == final
    counts = sorted((i.mails, i.affected_numbers, i.affected_recipients) for i in final.values())
    seed = blau_to_o2_counts(300)
    assert counts == [(100, 100, 100), (seed["mails"], seed["affected_numbers"], seed["affected_recipients"])]


def test_the_records_of_a_replay_stay_small_and_the_demo_line(story: Path) -> None:
    """300 numbers: the record lists 100 and says so; every record of the replay is far under 64 KiB."""
    _, records = _replay(story)
    assert max(len(msgspec.json.encode(r)) for r in records) < 16 * 1024
    seed = next(i for i in latest(records)[0].values() if i.signature.sender == "crm-mailer")
    assert (seed.affected_numbers, seed.numbers_listed, len(seed.numbers), seed.truncated) == (300, 100, 100, True)
    assert seed.deadlines is not None
    assert incident_line(seed) == (
        f"[incident] {seed.incident_id} open: 300 number(s), 270 recipient(s), 375 mail(s); initial report due "
        f"{seed.deadlines.initial_report}; recipient_previous_holder: o2 contract_info mails from crm-mailer; "
        "previous holding blau, ended by ported_out; now ported_in at o2"
    )


def test_the_tools_on_an_incidents_file(story: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inc_file, alerts_file = tmp_path / "incidents.jsonl", tmp_path / "alerts.jsonl"
    assert (
        main(["replay", "--offline", str(story), "--alerts-out", str(alerts_file), "--incidents-out", str(inc_file)])
        == 0
    )
    capsys.readouterr()
    assert main(["incidents", "list", "--file", str(inc_file)]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert len(listing) == 3 and "crm-mailer" in listing[1] + listing[2]
    seed_id = next(line.split()[0] for line in listing[1:] if "crm-mailer" in line)
    assert main(["incidents", "show", seed_id[:12], "--file", str(inc_file)]) == 0
    screen = capsys.readouterr().out
    assert "300 numbers, 270 recipients, 375 mails" in screen
    assert screen.count("\n             2026-06-") == 21  # one timeline line per day with mails
    assert (
        main(
            [
                "incidents",
                "mark",
                seed_id,
                "reported",
                "--note",
                "BNetzA ref 77",
                "--by",
                "dpo",
                "--file",
                str(inc_file),
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["incidents", "show", seed_id, "--file", str(inc_file)]) == 0
    screen = capsys.readouterr().out
    assert "reported  by dpo: BNetzA ref 77 (pending" in screen and "initial report (Reg. 611/2013, 24 h)" in screen
    for fmt in ("md", "json", "csv"):
        out = tmp_path / f"entry.{fmt}"
        assert main(["incidents", "export", seed_id, "--format", fmt, "--file", str(inc_file), "--out", str(out)]) == 0
        assert "second (follow-up) notification" in out.read_text(encoding="utf-8")
    assert main(["incidents", "show", "inc-nope", "--file", str(inc_file)]) == 2
    # nothing in clear in what the tools write: no number, no address of the story
    for path in (inc_file, tmp_path / "entry.md", tmp_path / "entry.json", tmp_path / "entry.csv"):
        text = path.read_text(encoding="utf-8")
        assert "+49176" not in text and "@gmx.de" not in text and "@web.de" not in text


@functools.cache
def _seed_incident() -> Incident:
    alerts = [
        msgspec.structs.replace(a, detected_at="2026-12-01T09:30:00Z")
        for a in _replay_alerts()
        if a.template == "contract_info"
    ]
    agg = Incidents()
    for a in alerts:
        agg.add(a)
    (inc,) = [i for i in agg.incidents() if i.kind == "recipient_previous_holder"]
    return inc


@functools.cache
def _replay_alerts() -> tuple[Alert, ...]:
    from tests.detectors.test_incidents import alerts_of

    return tuple(decode_alert(msgspec.json.encode(a)) for a in alerts_of(blau_to_o2(40)))


def test_the_register_entry_field_by_field() -> None:
    inc = _seed_incident()
    fields = {f: v for _, f, v in register_fields(View(inc, []), parse_rfc3339("2026-12-01T12:00:00Z"))}
    assert fields["Recipients"] == RECIPIENTS and "BNetzA" in RECIPIENTS and "BfDI" in RECIPIENTS
    assert fields["Legal basis"] == "EU Reg. 611/2013 Art. 2 and Annex I; GDPR (EU) 2016/679 Art. 33; TKG § 169"
    assert fields["notifguard incident"] == f"{inc.incident_id} (open)"
    assert fields["Deadlines (from detection)"] == (
        "initial report 2026-12-02T09:30:00.000Z; full report 2026-12-04T09:30:00.000Z; GDPR 2026-12-04T09:30:00.000Z"
    )
    assert fields["Name of the provider"] == "[TO BE COMPLETED: legal name of the provider; brand concerned: o2]"
    assert fields["Identity and contact details of the data protection officer or other contact point"].startswith(
        "[TO BE COMPLETED: "
    )
    assert fields["First or second notification"] == "first notification"
    assert fields["Date and time of incident"] == (
        f"{inc.first_event_time} to {inc.last_event_time} (UTC; the first and last affected mail)"
    )
    assert fields["Date and time of detection of incident"] == "2026-12-01T09:30:00.000Z"
    assert fields["Circumstances of the personal data breach"].startswith(
        "Disclosure to unauthorised recipients: 50 contract_info e-mail(s) of o2, sent by crm-mailer, for 40 "
        "number(s) went to addresses of an earlier holder of the same number (blau, ended by ported_out); "
        "the number was then ported_in at o2 (notifguard alert kind recipient_previous_holder). [TO BE COMPLETED: "
    )
    assert fields["Number of subscribers or individuals concerned"] == (
        "40 subscriber(s) (distinct numbers) whose notifications were disclosed, to 36 distinct recipient "
        "address(es); 50 mail(s)"
    )
    assert fields["(a) Nature of the breach, categories and approximate number of data subjects and records"] == (
        "confidentiality breach (disclosure); data subjects: 40 subscriber(s) of o2; records: 50 e-mail notification(s)"
    )
    for person in (
        "Potential consequences and potential adverse effects on subscribers or individuals",
        "Technical and organisational measures taken to mitigate potential adverse effects",
        "(b) Name and contact details of the DPO or other contact point",
        "(c) Likely consequences",
        "(d) Measures taken or proposed, incl. to mitigate adverse effects",
        "Notification to subscribers or individuals: content",
        "Cross-border issues (other national authorities involved)",
    ):
        assert fields[person].startswith("[TO BE COMPLETED: "), person
    assert fields["Reasons for the delay (notified after 72 h)"] == (
        "not applicable if notified before 2026-12-04T09:30:00.000Z"
    )
    assert fields["Operator actions"] == "none"
    # past the GDPR deadline and not reported: the reasons for the delay are a blank
    late = {f: v for _, f, v in register_fields(View(inc, []), parse_rfc3339("2026-12-05T00:00:00Z"))}
    assert late["Reasons for the delay (notified after 72 h)"] == "[TO BE COMPLETED: reasons for the delay]"
    # reported: the next one is the follow-up
    report = new_action(inc, REPORTED, "initial, ref 9", "dpo", parse_rfc3339("2026-12-01T18:00:00Z"))
    after = {f: v for _, f, v in register_fields(View(inc, [report]), parse_rfc3339("2026-12-05T00:00:00Z"))}
    assert after["First or second notification"] == (
        "second (follow-up) notification; first reported 2026-12-01T18:00:00.000Z by dpo: initial, ref 9"
    )
    assert after["Reasons for the delay (notified after 72 h)"] == "not applicable (within 72 h of detection)"
    doc = json.loads(export(View(inc, [report]), "json", NOW))
    assert [f["to_complete"] for f in doc["fields"]].count(True) == sum(
        v.startswith("[TO BE COMPLETED:") for v in after.values()
    )
    assert doc["incident"]["incident_id"] == inc.incident_id
    assert "| Number of subscribers or individuals concerned | 40 subscriber(s)" in export(View(inc, []), "md", NOW)
    with pytest.raises(ValueError):
        export(View(inc, []), "pdf", NOW)
    assert any("initial report" in line and "reported" in line for line in show_lines(View(inc, [report]), NOW))


def test_metrics_of_open_or_unreported_incidents_and_their_deadlines() -> None:
    inc = _seed_incident()
    m = IncidentMetrics(CollectorRegistry())
    now = parse_rfc3339("2026-12-01T12:00:00Z")
    m.update([inc], now)
    r = m.registry
    assert r.get_sample_value("notifguard_incidents_open", {"kind": "recipient_previous_holder"}) == 1
    assert r.get_sample_value("notifguard_incidents_open", {"kind": "recipient_other_customer"}) == 0
    assert (
        r.get_sample_value(
            "notifguard_incident_affected_numbers", {"incident_id": inc.incident_id, "kind": inc.kind, "brand": "o2"}
        )
        == 40
    )
    left = {
        d: r.get_sample_value("notifguard_incident_deadline_seconds", {"incident_id": inc.incident_id, "deadline": d})
        for d in ("initial_report", "full_report", "gdpr")
    }
    assert left == {"initial_report": 21.5 * 3600, "full_report": 69.5 * 3600, "gdpr": 69.5 * 3600}
    reported = msgspec.structs.replace(inc, reported=new_action(inc, REPORTED, "", "dpo", now))
    m.update([reported], now)
    assert (
        r.get_sample_value("notifguard_incident_deadline_seconds", {"incident_id": inc.incident_id, "deadline": "gdpr"})
        is None
    )
    assert r.get_sample_value("notifguard_incident_reported", {"incident_id": inc.incident_id}) == 1
    # closed by its quiet period but never reported: not open, but its clocks still run (and page)
    m.update([msgspec.structs.replace(inc, status="closed", closed_by="quiet_period")], now)
    assert r.get_sample_value("notifguard_incidents_open", {"kind": "recipient_previous_holder"}) == 0
    assert (
        r.get_sample_value("notifguard_incident_deadline_seconds", {"incident_id": inc.incident_id, "deadline": "gdpr"})
        == 69.5 * 3600
    )
    # closed by an operator: nothing more
    m.update([msgspec.structs.replace(inc, status="closed", closed_by="operator")], now)
    assert (
        r.get_sample_value(
            "notifguard_incident_affected_numbers", {"incident_id": inc.incident_id, "kind": inc.kind, "brand": "o2"}
        )
        is None
    )
    assert (
        r.get_sample_value("notifguard_incident_deadline_seconds", {"incident_id": inc.incident_id, "deadline": "gdpr"})
        is None
    )


def test_incident_settings_from_the_file_and_the_environment(tmp_path: Path) -> None:
    from streams.config import load_incident_settings, load_settings

    cfg = tmp_path / "n.toml"
    cfg.write_text(
        'grace_s = 5.0\n[incidents]\nquiet_period_s = 86400\nbreach_kinds = ["recipient_other_customer"]\n'
        '[topics]\nincidents = "x.incidents"\n',
        encoding="utf-8",
    )
    s = load_incident_settings(cfg, env={})
    assert s.quiet_period_s == 86_400 and s.breach_kinds == ("recipient_other_customer",)
    assert load_settings(cfg, env={}).topics.incidents == "x.incidents"  # the section is no unknown setting
    env = {
        "NOTIFGUARD_INCIDENTS_BREACH_KINDS": "recipient_previous_holder, notification_without_contract",
        "NOTIFGUARD_INCIDENTS_GDPR_REPORT_S": "3600",
    }
    s = load_incident_settings(cfg, env=env)
    assert s.breach_kinds == ("recipient_previous_holder", "notification_without_contract")
    assert s.gdpr_report_s == 3600 and s.initial_report_s == 86_400
    cfg.write_text("[incidents]\nquiet_period = 1\n", encoding="utf-8")
    with pytest.raises(ValueError, match="quiet_period"):
        load_incident_settings(cfg, env={})
