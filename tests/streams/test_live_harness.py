"""The live harness's own rules (tests/streams/live_harness.py): what counts as the final alert set."""

from __future__ import annotations

from tests.streams.live_harness import final, own_state_key


def _alert(kind: str, trigger: str, status: str = "firing") -> dict[str, str]:
    return {"kind": kind, "trigger_event_id": trigger, "dedup_key": f"{kind}:{trigger}", "status": status}


def test_a_retraction_withdraws_its_own_dedup_key_only_also_when_the_key_groups_kinds():
    # a worker judged the mail with a view that lacked another worker's link, then a Relink
    # replaced the verdict; the retraction lands after the new alert (another partition of the topic)
    records = [
        _alert("recipient_unlinked", "n1"),
        _alert("recipient_other_customer", "n1"),
        _alert("recipient_unlinked", "n1", "retracted"),
    ]
    assert set(final(records)) == {"recipient_other_customer:n1"}
    grouped = final(records, own_state_key)
    assert list(grouped) == ["recipient_via_links:n1"]
    assert grouped["recipient_via_links:n1"]["kind"] == "recipient_other_customer"


def test_the_last_record_of_a_dedup_key_decides_and_its_first_firing_since_a_retraction_stands():
    records = [
        _alert("re_port", "c1"),
        _alert("re_port", "c1", "retracted"),
        _alert("re_port", "c2"),
        _alert("re_port", "c2", "retracted"),
        _alert("re_port", "c2"),
    ]
    assert set(final(records)) == {"re_port:c2"}
    assert final(records)["re_port:c2"] is records[4]
