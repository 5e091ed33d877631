"""The JSON Schemas in docs/schemas/ describe exactly what notifguard accepts and emits."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from detectors import kinds
from detectors.records import BadRecord, decode
from detectors.settings import Settings
from streams.replay_offline import replay
from streams.scenarios import all_scenarios
from tests.factories import MSISDN, Rec, change, delivery, mail

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "docs" / "schemas"


def validator(name: str) -> Draft202012Validator:
    schema = json.loads((SCHEMAS / name).read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


INPUT = {
    "outbound": validator("notifications.outbound.json"),
    "changes": validator("contracts.changes.json"),
    "delivery": validator("notifications.delivery.json"),
}


def test_every_schema_is_valid_draft_2020_12():
    names = sorted(p.name for p in SCHEMAS.glob("*.json"))
    assert names == [
        "capture-envelope.json",
        "contracts.changes.json",
        "notifguard.alerts.json",
        "notifguard.deadletter.json",
        "notifications.delivery.json",
        "notifications.outbound.json",
    ]
    for name in names:
        validator(name)


def accepts(kind: str, value: dict) -> bool:
    try:
        decode(kind, value.get("msisdn") if isinstance(value.get("msisdn"), str) else MSISDN, json.dumps(value))
        return True
    except BadRecord:
        return False


BASE = {
    "outbound": mail("a@b.de", 0).event,
    "delivery": delivery("m1", "bounced", 0, bounce_type="hard", smtp_status="5.1.1").event,
    **{
        f"changes:{t}": change(t, 0, email="a@b.de").event
        for t in (
            "contract_started",
            "contract_ended",
            "email_changed",
            "email_verified",
            "holder_changed",
            "ported_in",
            "ported_out",
        )
    },
}
MUTATIONS = st.sampled_from(
    [
        None,
        "",
        " ",
        "x",
        0,
        1,
        2,
        -1,
        True,
        [],
        {},
        "+4917612345678",
        "4917612345678",
        "+0123456789",
        "2026-03-01T08:15:02.120Z",
        "2026-03-01t08:15:02z",
        "2026-03-01T08:15:02+01:00",
        "2026-03-01T08:15:02",
        "2026-13-01T00:00:00Z",
        "2026-02-29T00:00:00Z",
        "2028-02-29T23:59:59.999999Z",
        "2026-03-01 08:15:02Z",
        "email",
        "sms",
        "fax",
        "delivered",
        "bounced",
        "lost",
        "hard",
        "soft",
        "contract_started",
        "ported_out",
        "contract_paused",
        "+4917612345678\n",
    ]
)
FIELDS = sorted({k for v in BASE.values() for k in v} | {"unknown_field"})


@settings(max_examples=1500, deadline=None)
@given(
    st.sampled_from(sorted(BASE)),
    st.lists(st.tuples(st.sampled_from(FIELDS), st.one_of(MUTATIONS, st.just("__drop__"))), max_size=3),
)
def test_schema_valid_if_and_only_if_the_decoder_accepts(base, mutations):
    value = dict(BASE[base])
    for field, new in mutations:
        if new == "__drop__":
            value.pop(field, None)
        else:
            value[field] = new
    kind = base.split(":")[0]
    schema_ok = INPUT[kind].is_valid(value)
    assert schema_ok == accepts(kind, value), (value, list(INPUT[kind].iter_errors(value))[:2])


def test_alerts_and_dead_letters_of_every_scenario_fit_their_schemas(tmp_path):
    alert_schema = validator("notifguard.alerts.json")
    dead_schema = validator("notifguard.deadletter.json")
    envelope_schema = validator("capture-envelope.json")
    seen_kinds = set()
    for scenario in all_scenarios():
        path = tmp_path / f"{scenario.name}.jsonl"
        from detectors.capture import encode_line

        with open(path, "wb") as f:
            for env in scenario.envelopes():
                f.write(encode_line(env))
                envelope_schema.validate(json.loads(encode_line(env)))
        dead_path = tmp_path / "dead.jsonl"
        with open(path, "ab") as f:
            f.write(b'{"topic":"notifications.outbound","partition":0,"offset":99,"key":"x","payload":"[]"}\n')
            f.write(b"not an envelope\n")
        with open(dead_path, "wb") as dead:
            _, alerts = replay([path], Settings(), deadletter_out=dead)
        for a in alerts:
            alert_schema.validate(json.loads(json.dumps(__import__("msgspec").to_builtins(a))))
            seen_kinds.add(a.kind)
        lines = dead_path.read_text().splitlines()
        assert len(lines) == 2
        for line in lines:
            dead_schema.validate(json.loads(line))
    assert seen_kinds == set(kinds.KINDS)


def test_every_alert_kind_has_a_runbook_with_the_required_sections():
    for kind in kinds.KINDS:
        text = (ROOT / "docs" / "runbooks" / f"{kind}.md").read_text().lower()
        for section in ("meaning", "impact", "diagnosis", "mitigation"):
            assert re.search(rf"^#+ .*{section}", text, re.M), (kind, section)
    for kind in (kinds.RECIPIENT_PREVIOUS_HOLDER, kinds.RECIPIENT_OTHER_CUSTOMER):
        text = (ROOT / "docs" / "runbooks" / f"{kind}.md").read_text()
        assert "24 h" in text and "72 h" in text and "169" in text


@pytest.mark.parametrize("kind", kinds.KINDS)
def test_runbook_urls_point_at_existing_files(kind):
    url = f"{Settings().runbook_base_url}{kind}.md"
    assert (ROOT / url).is_file()


@pytest.mark.parametrize(("recipient", "ok"), [("+4917612345678", True), ("a@b.de", False), ("017612345678", False)])
def test_schema_and_decoder_agree_that_an_sms_goes_to_an_e164_number(recipient, ok):
    value = {**BASE["outbound"], "channel": "sms", "recipient": recipient}
    assert INPUT["outbound"].is_valid(value) is ok
    assert accepts("outbound", value) is ok


def test_capped_alerts_and_dead_letters_fit_their_schemas():
    import msgspec

    from detectors.engine import dead_letter
    from tests.factories import feed, new_engine

    engine = new_engine()
    feed(
        engine,
        [
            change("contract_started", 0, id="s", email="a@b.de", customer_id="C" * 999, brand="b" * 999),
            mail("x@b.de", 60, id="n" * 999, template="t" * 999, sender="s" * 999, brand="o" * 999),
            Rec("notifications.outbound", "+49" * 9999, b"\xff" * 99_999),
        ],
    )
    engine.flush(0)
    alerts, dead, _ = engine.drain()
    dead.append(dead_letter("t" * 999, 0, 1, None, None, "\u0001" * 99_999, "r" * 9999, "processing_error", "now"))
    assert [a.kind for a in alerts] == ["recipient_unlinked"] and len(dead) == 2
    for a in alerts:
        validator("notifguard.alerts.json").validate(json.loads(msgspec.json.encode(a)))
    for d in dead:
        validator("notifguard.deadletter.json").validate(json.loads(msgspec.json.encode(d)))
