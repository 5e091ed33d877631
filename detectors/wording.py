"""Alert wording: the alert record of each finding, its summary for people and its evidence.

A summary shows a value of the input only in a form that cannot leak free text or personal
data: numbers and recipients masked (detectors.privacy), names and ids only when they look
like names and ids of the contract (detectors.text.shown_name, shown_id), the SMTP status
only as an RFC 3463 code; anything else is a fixed word. The evidence keeps the (capped)
values, for the runbooks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from detectors import kinds
from detectors.alerts import RETRACTED, Alert, Subject, dedup_key, unique
from detectors.holdings import TYPE_NAMES, Holding
from detectors.privacy import Pseudonymiser, mask_address, mask_msisdn
from detectors.records import ContractChange, Delivery, InputRecord, Outbound
from detectors.settings import Settings
from detectors.state import Mark, Sent
from detectors.text import cap_name, shown_id, shown_name, shown_smtp_status
from detectors.timefmt import rfc3339
from detectors.verdicts import Verdict

_DAY_US: Final = 86_400_000_000


class Wording:
    """The alerts of one engine: its settings' runbooks and windows, its keyed hashes, its alert ids."""

    __slots__ = ("_bounce_hours", "_new_id", "_port_days", "_pseudo", "_runbooks")

    def __init__(self, settings: Settings, pseudonymiser: Pseudonymiser, new_id: Callable[[], str]) -> None:
        self._runbooks = settings.runbook_base_url
        self._port_days = settings.port_flapping_window_s / 86_400
        self._bounce_hours = settings.bounce_burst_window_s / 3600
        self._pseudo = pseudonymiser
        self._new_id = new_id

    def _alert(
        self,
        kind: str,
        t: int,
        now: int,
        rec: InputRecord,
        ref: str,
        event_ids: list[str | None],
        summary: str,
        evidence: dict[str, Any],
        late: bool,
        brand: str | None,
        template: str | None = None,
        sender: str | None = None,
    ) -> Alert:
        return Alert(
            alert_id=self._new_id(),
            dedup_key=dedup_key(kind, rec.event_id),
            kind=kind,
            severity=kinds.SEVERITY[kind],
            event_time=rfc3339(t),
            detected_at=rfc3339(now),
            trigger_event_id=rec.event_id,
            event_ids=unique([rec.event_id, *event_ids]),
            subject=Subject(mask_msisdn(rec.msisdn), ref),
            brand=brand,
            template=template,
            sender=sender,
            summary=summary,
            evidence=evidence,
            late=late,
            runbook_url=f"{self._runbooks}{kind}.md",
        )

    def recipient(
        self,
        t: int,
        now: int,
        rec: Outbound,
        ref: str,
        addr: bytes | None,
        v: Verdict,
        late: bool,
        to_ref: str | None = None,
    ) -> Alert:
        """The alert of a notification whose verdict `v` is a recipient kind (detectors.rules).

        `to_ref`: the keyed hash of an sms recipient when `rec` is a stand-in with masked fields
        (a re-judging, detectors.engine), else it is computed from `rec.recipient`."""
        masked_number = mask_msisdn(rec.msisdn)
        masked_to = masked_recipient(rec.recipient, rec.channel)
        brand, template = shown_name(rec.brand, "brand"), shown_name(rec.template, "template")
        what = f"{brand} {template} {rec.channel} for {masked_number}"
        active = v.active
        evidence: dict[str, Any] = {
            "channel": rec.channel,
            "message_id": rec.message_id,
            "recipient_masked": masked_to,
            "recipient_ref": addr.hex()
            if addr is not None
            else to_ref
            if to_ref is not None
            else self._pseudo.msisdn_ref(rec.recipient),
            "notification_contract_id": rec.contract_id,
            "notification_customer_id": rec.customer_id,
            "active": active.describe() if active is not None else None,
        }
        ids: list[str | None] = []
        if active is not None:
            ids.append(active.start_event_id)
        linked: dict[str, Any] | None = None
        owner = ""
        if v.holding is not None:
            h = v.holding
            linked = {"via": "this_number", "msisdn_ref": ref, **h.describe()}
            ids += [h.start_event_id, v.since_event_id, h.end_event_id]
            owner = contract_words(h.customer_id, h.brand, h.contract_id) + (
                f" (ended {rfc3339(h.end)[:10]})" if h.end is not None else ""
            )
        elif v.link is not None:
            k = v.link
            linked = {
                "via": "other_number",
                "msisdn_ref": k.msisdn_ref,
                "contract_id": k.contract_id,
                "customer_id": k.customer_id,
                "brand": k.brand,
                "start": rfc3339(k.start),
                "start_event_id": k.start_event_id,
                "end": None if k.end is None else rfc3339(k.end),
                "end_event_id": k.end_event_id,
                "end_type": None if k.end_type is None else TYPE_NAMES[k.end_type],
            }
            ids += [k.start_event_id, v.since_event_id, k.end_event_id]
            owner = f"{contract_words(k.customer_id, k.brand, k.contract_id)} on another number"
        if linked is not None and v.since is not None:
            linked["linked_since"] = rfc3339(v.since)
            linked["linked_since_event_id"] = v.since_event_id
        evidence["linked"] = linked
        holder = contract_words(active.customer_id, active.brand, active.contract_id) if active is not None else ""
        if v.kind == kinds.NOTIFICATION_WITHOUT_CONTRACT:
            if v.holding is not None:
                h = v.holding
                end_type = TYPE_NAMES[h.end_type] if h.end_type is not None else "?"
                end_date = rfc3339(h.end)[:10] if h.end is not None else "?"
                summary = (
                    f"{what} sent while the number has no active contract: "
                    f"last contract {shown_id(h.contract_id)} ({shown_name(h.brand, 'brand')}) "
                    f"ended {end_date} by {end_type}"
                )
            else:
                summary = f"{what} sent to a number notifguard knows no contract of"
            evidence["linked"] = None
            evidence["previous_contract"] = v.holding.describe() if v.holding is not None else None
        elif v.kind == kinds.RECIPIENT_PREVIOUS_HOLDER:
            summary = (
                f"{what} went to {masked_to}, an address of the number's previous holder: {owner}; "
                f"the number is now {holder}"
            )
        elif v.kind == kinds.RECIPIENT_OTHER_CUSTOMER:
            summary = f"{what} went to {masked_to}, an address of another customer: {owner}; the number is {holder}"
        elif v.kind == kinds.RECIPIENT_STALE_CONTRACT:
            summary = (
                f"{what} went to {masked_to}, an old address of the holder from {owner}, "
                f"not the current address of {holder}"
            )
        else:
            summary = f"{what} went to {masked_to}, an address linked to no customer; the number is {holder}"
        return self._alert(v.kind, t, now, rec, ref, ids, summary, evidence, late, rec.brand, rec.template, rec.sender)

    def re_port(
        self, t: int, now: int, rec: ContractChange, ref: str, started: Holding, prev: Holding, late: bool
    ) -> Alert:
        """The alert of a start that re-ports the number (detectors.patterns.re_port)."""
        days = (t - (prev.end or t)) // _DAY_US
        end_type = TYPE_NAMES[prev.end_type] if prev.end_type is not None else "?"
        summary = (
            f"{mask_msisdn(rec.msisdn)} {TYPE_NAMES[started.start_type]} at {shown_name(started.brand, 'brand')} "
            f"for customer {shown_id(started.customer_id)} {days} days after "
            f"{contract_words(prev.customer_id, prev.brand, prev.contract_id)} ended by {end_type}: "
            "contact data of the previous holder may linger"
        )
        evidence = {"started": started.describe(), "previous": prev.describe(), "gap_days": days}
        return self._alert(kinds.RE_PORT, t, now, rec, ref, [prev.end_event_id], summary, evidence, late, started.brand)

    def port_flapping(self, t: int, now: int, rec: ContractChange, ref: str, window: list[Mark], late: bool) -> Alert:
        """The alert of a port whose window holds the threshold's port events."""
        days = self._port_days
        summary = f"{len(window)} port events within {days:g} days on {mask_msisdn(rec.msisdn)}"
        evidence = {"count": len(window), "window_days": days, "events": [rfc3339(m.t) for m in window]}
        return self._alert(
            kinds.PORT_FLAPPING,
            t,
            now,
            rec,
            ref,
            [m.event_id for m in window],
            summary,
            evidence,
            late,
            getattr(rec, "brand", None),
        )

    def bounce_burst(self, t: int, now: int, rec: Delivery, ref: str, window: list[Mark], late: bool) -> Alert:
        """The alert of a bounce whose window holds the threshold's bounces."""
        hours = self._bounce_hours
        who = f"{mask_msisdn(rec.msisdn)} ({shown_name(rec.brand, 'brand')}, {shown_name(rec.sender, 'sender')})"
        summary = f"{len(window)} bounces within {hours:g} h for {who}"
        evidence = {"count": len(window), "window_hours": hours, "events": [rfc3339(m.t) for m in window]}
        return self._alert(
            kinds.BOUNCE_BURST,
            t,
            now,
            rec,
            ref,
            [m.event_id for m in window],
            summary,
            evidence,
            late,
            rec.brand,
            None,
            rec.sender,
        )

    def bouncing(
        self, t: int, now: int, rec: Delivery, ref: str, sent: Sent, late: bool, to_ref: bytes | None = None
    ) -> Alert:
        """The alert of a hard bounce of a mail `sent` to the number's current address (`to_ref`: the
        keyed hash of the bounce's recipient, when known)."""
        masked_to = masked_recipient(rec.recipient, "email")
        summary = (
            f"{shown_name(rec.brand, 'brand')} {shown_name(sent.template, 'template')} mail to the current address "
            f"{masked_to} of {mask_msisdn(rec.msisdn)} hard-bounced ({shown_smtp_status(rec.smtp_status)}): "
            "the customer misses reminders and confirmations"
        )
        evidence = {
            "message_id": rec.message_id,
            "recipient_masked": masked_to,
            "recipient_ref": (to_ref if to_ref is not None else self._pseudo.address_ref(rec.recipient)).hex(),
            "smtp_status": rec.smtp_status,
            "notification_event_id": sent.event_id,
            "notification_time": rfc3339(sent.t),
            "bounce_event_id": rec.event_id,
        }
        return self._alert(
            kinds.CURRENT_ADDRESS_BOUNCING,
            t,
            now,
            rec,
            ref,
            [sent.event_id],
            summary,
            evidence,
            late,
            rec.brand,
            sent.template,
            rec.sender,
        )

    def retraction(
        self,
        t: int,
        now: int,
        kind: str,
        trigger_event_id: str,
        ref: str,
        masked_number: str,
        by: list[str],
        now_kind: str | None,
    ) -> Alert:
        """The record withdrawing the alert of `kind` on `trigger_event_id` (contract 1.1, "Retractions"):
        a late record (`by`) changed the verdict; `now_kind` is what the same event raises now, if anything."""
        what = "notification" if kind in kinds.RECIPIENT_KINDS else "event"
        if now_kind is not None:
            outcome = f"the {what} is now {now_kind} (its own alert)"
        elif kind in kinds.RECIPIENT_KINDS:
            outcome = "the notification went where it should, as the state of the number is now known"
        else:
            outcome = f"the {kind} pattern no longer holds at this event"
        reason = (
            f"{kind} on {masked_number} withdrawn: input that arrived late ({len(by)} event(s)) changed "
            f"the verdict; {outcome}"
        )
        return Alert(
            alert_id=self._new_id(),
            dedup_key=dedup_key(kind, trigger_event_id),
            kind=kind,
            severity=kinds.SEVERITY[kind],
            event_time=rfc3339(t),
            detected_at=rfc3339(now),
            trigger_event_id=trigger_event_id,
            event_ids=unique([trigger_event_id, *by]),
            subject=Subject(mask_msisdn(masked_number), ref),
            brand=None,
            template=None,
            sender=None,
            summary=reason,
            evidence={"retracted_by": list(by), "now": now_kind},
            late=True,
            runbook_url=f"{self._runbooks}{kind}.md",
            status=RETRACTED,
            retracted_by=list(by),
            reason=reason,
        )


def masked_recipient(recipient: str, channel: str) -> str:
    """The masked form of a recipient (its domain, for e-mail, is kept: capped like a name)."""
    return cap_name(mask_address(recipient) if channel == "email" else mask_msisdn(recipient))


def contract_words(customer_id: str, brand: str | None, contract_id: str) -> str:
    """`customer C-1's o2 contract K-1`, for a summary (what is no id or name is not shown)."""
    return f"customer {shown_id(customer_id)}'s {shown_name(brand, 'brand')} contract {shown_id(contract_id)}"
