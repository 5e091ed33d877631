"""What people read of an incident: the list, one screen per incident, and the register entry.

Pure functions of incident records (detectors.incidents) and a `now`; the
commands in streams/incidents.py read the records and print these.
The register entry pre-fills what the data knows for EU Reg. 611/2013
(Annex I), GDPR Art. 33(3) and (5), addressed to both German authorities
(TKG § 169: BNetzA and BfDI), and marks each field a person must write with
`[TO BE COMPLETED: ...]` (`BLANK`).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from typing import Any

import msgspec

from detectors.incidents import ACCESSED, CLOSE, REPORTED, SUPERSEDED, Action, Incident
from detectors.timefmt import parse_rfc3339

BLANK = "[TO BE COMPLETED: {}]"
RECIPIENTS = (
    "Bundesnetzagentur (BNetzA) and Die Bundesbeauftragte für den Datenschutz und die Informationsfreiheit "
    "(BfDI): TKG § 169 sends a telecommunications provider's notification to both"
)


def blank(what: str) -> str:
    return BLANK.format(what)


def is_blank(value: str) -> bool:
    return value.startswith("[TO BE COMPLETED:")


@dataclass(frozen=True)
class View:
    """An incident as the topic or file shows it: its last record, and actions not yet in it."""

    incident: Incident
    actions: list[Action]  # the record's actions and those recorded after it (pending), by time

    @property
    def reported(self) -> Action | None:
        return next((a for a in self.actions if a.action == REPORTED), None)

    @property
    def closed_by_operator(self) -> Action | None:
        return next((a for a in self.actions if a.action == CLOSE), None)

    @property
    def pending(self) -> list[Action]:
        known = {a.action_id for a in self.incident.actions}
        return [a for a in self.actions if a.action_id not in known]


def views(incidents: dict[str, Incident], actions: list[Action]) -> dict[str, View]:
    out = {}
    for iid, inc in incidents.items():
        merged = {a.action_id: a for a in inc.actions}
        for a in actions:
            if a.incident_id == iid:
                merged.setdefault(a.action_id, a)
        out[iid] = View(inc, sorted(merged.values(), key=lambda a: (a.at, a.action_id)))
    return out


def find(views_by_id: dict[str, View], prefix: str) -> View:
    """The incident whose id is (or starts with) `prefix`; ValueError if none or several."""
    if prefix in views_by_id:
        return views_by_id[prefix]
    hits = [v for i, v in views_by_id.items() if i.startswith(prefix)]
    if len(hits) != 1:
        raise ValueError(f"{len(hits)} incidents match {prefix!r}" if hits else f"no incident {prefix!r}")
    return hits[0]


def _left(deadline: str | None, now_us: int) -> str:
    if deadline is None:
        return "-"
    s = (parse_rfc3339(deadline) - now_us) // 1_000_000
    sign, s = ("", s) if s >= 0 else ("overdue ", -s)
    d, rest = divmod(s, 86_400)
    return f"{sign}{d}d {rest // 3600:02d}h" if d else f"{sign}{rest // 3600}h {rest % 3600 // 60:02d}m"


def next_deadline(view: View) -> tuple[str, str] | None:
    """The next deadline that still matters: initial report until reported, then none (the full report
    and GDPR deadlines are shown by `show`)."""
    d = view.incident.deadlines
    if d is None or view.reported is not None:
        return None
    return ("initial report", d.initial_report)


def list_lines(all_views: dict[str, View], now_us: int, include_superseded: bool = False) -> list[str]:
    rows = sorted(
        (v for v in all_views.values() if include_superseded or v.incident.status != SUPERSEDED),
        key=lambda v: (v.incident.status != "open", v.incident.detected_at or "", v.incident.incident_id),
    )
    lines = [
        f"{'incident':<24} {'status':<10} {'numbers':>7} {'mails':>6}  {'detected':<17} "
        f"{'initial report':<16} {'reported':<8} cause"
    ]
    for v in rows:
        i = v.incident
        nd = next_deadline(v)
        due = _left(nd[1], now_us) if nd else "-"
        lines.append(
            f"{i.incident_id:<24} {i.status:<10} {i.affected_numbers:>7} {i.mails:>6}  "
            f"{(i.detected_at or '-')[:16]:<17} {due:<16} {'yes' if v.reported else 'no':<8} {i.cause}"
        )
    return lines


def incident_line(i: Incident) -> str:
    """One line per incident record, as `incidents run --print-incidents` prints it (after the alerts of
    `worker --print-alerts`): status, scope, the first deadline, the cause."""
    due = (
        f"initial report due {i.deadlines.initial_report}"
        if i.deadlines and i.reported is None
        else ("reported" if i.reported else "-")
    )
    return (
        f"[incident] {i.incident_id} {i.status}{' (' + i.closed_by + ')' if i.closed_by else ''}: "
        f"{i.affected_numbers} number(s), {i.affected_recipients} recipient(s), {i.mails} mail(s); {due}; "
        f"{i.cause}"
    )


def show_lines(view: View, now_us: int, width: int = 40) -> list[str]:
    """One screen: what, how many, since when, the clocks, the actions, and affected numbers per day."""
    i = view.incident
    lines = [
        f"incident {i.incident_id}  {i.status.upper()}"
        + (f" ({i.closed_by})" if i.closed_by else "")
        + (f" -> {i.superseded_by}" if i.superseded_by else "")
    ]
    lines.append(f"  cause      {i.cause}")
    lines.append(f"  scope      {i.affected_numbers} numbers, {i.affected_recipients} recipients, {i.mails} mails")
    lines.append(f"  mails      {i.first_event_time} .. {i.last_event_time} (event time)")
    lines.append(f"  detected   {i.detected_at}   quiet until {i.quiet_until}")
    d = i.deadlines
    if d is not None:
        done = view.reported is not None
        for name, when in (
            ("initial report (Reg. 611/2013, 24 h)", d.initial_report),
            ("full report (Reg. 611/2013, 3 days)", d.full_report),
            ("GDPR Art. 33 (72 h)", d.gdpr),
        ):
            state = "reported" if done else _left(when, now_us)
            lines.append(f"  due        {when}  {name:<38} {state}")
    for a in view.actions:
        mark = " (pending: not yet in the incident record)" if a in view.pending else ""
        lines.append(f"  action     {a.at}  {a.action:<9} by {a.by}: {a.note}{mark}")
    if i.timeline:
        peak = max(day.new_numbers for day in i.timeline) or 1
        lines.append(f"  timeline   {'day':<10} {'mails':>6} {'numbers':>7} {'new':>5}")
        for day in i.timeline:
            bar = "#" * max(1 if day.new_numbers else 0, round(day.new_numbers * width / peak))
            lines.append(f"             {day.date:<10} {day.mails:>6} {day.numbers:>7} {day.new_numbers:>5} {bar}")
    return lines


# ------------------------------------------------------------------ the register entry


def register_fields(view: View, now_us: int) -> list[tuple[str, str, str]]:
    """(section, field, value) for the register entry and the notifications, in order."""
    i = view.incident
    s = i.signature
    d = i.deadlines
    reported = view.reported
    prior = [a for a in view.actions if a.action == REPORTED]
    accessed = [a for a in view.actions if a.action == ACCESSED]
    who = {
        "this_number": f"an earlier holder of the same number ({s.previous_brand or 'unknown brand'}, "
        f"{'ended by ' + s.previous_end if s.previous_end else 'not ended'})",
        "other_number": f"a customer of another number ({s.previous_brand or 'unknown brand'}, "
        f"{'still active' if s.previous_end == 'open' else 'ended'})",
    }.get(s.via or "", "nobody known to hold the number")
    period = f"{i.first_event_time} to {i.last_event_time} (UTC; the first and last affected mail)"
    gdpr_late = d is not None and (
        (reported is not None and reported.at > d.gdpr) or (reported is None and now_us > parse_rfc3339(d.gdpr))
    )
    f: list[tuple[str, str, str]] = [
        ("Notification", "Recipients", RECIPIENTS),
        ("Notification", "Legal basis", "EU Reg. 611/2013 Art. 2 and Annex I; GDPR (EU) 2016/679 Art. 33; TKG § 169"),
        (
            "Notification",
            "notifguard incident",
            f"{i.incident_id} ({i.status}" + (f", closed by {i.closed_by}" if i.closed_by else "") + ")",
        ),
        (
            "Notification",
            "Deadlines (from detection)",
            "-" if d is None else f"initial report {d.initial_report}; full report {d.full_report}; GDPR {d.gdpr}",
        ),
        (
            "Annex I, Section 1",
            "Name of the provider",
            blank(f"legal name of the provider; brand concerned: {s.brand or 'unknown'}"),
        ),
        (
            "Annex I, Section 1",
            "Identity and contact details of the data protection officer or other contact point",
            blank("name, e-mail and telephone of the DPO or contact point"),
        ),
        (
            "Annex I, Section 1",
            "First or second notification",
            "first notification"
            if not prior
            else f"second (follow-up) notification; first reported {prior[0].at} by {prior[0].by}: {prior[0].note}",
        ),
        ("Annex I, Section 1", "Date and time of incident", period),
        ("Annex I, Section 1", "Date and time of detection of incident", i.detected_at or "-"),
        (
            "Annex I, Section 1",
            "Circumstances of the personal data breach",
            f"Disclosure to unauthorised recipients: {i.mails} {s.template or 'unknown template'} e-mail(s) of "
            f"{s.brand or 'unknown brand'}, sent by {s.sender or 'unknown sender'}, for {i.affected_numbers} "
            f"number(s) went to addresses of {who}; the number was then "
            + (f"{s.active_start} at {s.active_brand}" if s.active_start else "without an active contract")
            + f" (notifguard alert kind {i.kind}). "
            + blank("root cause, how the addresses stayed linked"),
        ),
        (
            "Annex I, Section 1",
            "Nature and content of the personal data concerned",
            f"the content of '{s.template or 'unknown'}' notifications to the subscriber of each number. "
            + blank("the data fields the template contains"),
        ),
        (
            "Annex I, Section 1",
            "Technical and organisational measures applied (or to be applied)",
            blank("measures applied to the affected data"),
        ),
        (
            "Annex I, Section 1",
            "Relevant use of other providers",
            f"sending system or processor: {s.sender or 'unknown'}. " + blank("whether it is another provider"),
        ),
        (
            "Annex I, Section 2",
            "Summary of the incident (incl. physical location and storage media)",
            f"{i.cause}. " + blank("location of the breach and storage media involved"),
        ),
        (
            "Annex I, Section 2",
            "Number of subscribers or individuals concerned",
            f"{i.affected_numbers} subscriber(s) (distinct numbers) whose notifications were disclosed, to "
            f"{i.affected_recipients} distinct recipient address(es); {i.mails} mail(s)",
        ),
        (
            "Annex I, Section 2",
            "Potential consequences and potential adverse effects on subscribers or individuals",
            blank("likely consequences"),
        ),
        (
            "Annex I, Section 2",
            "Technical and organisational measures taken to mitigate potential adverse effects",
            blank("measures taken or proposed"),
        ),
        (
            "Annex I, Section 2",
            "Notification to subscribers or individuals: content",
            blank("content of the notification to the people affected"),
        ),
        (
            "Annex I, Section 2",
            "Notification to subscribers or individuals: means of communication",
            blank("letter, e-mail, SMS"),
        ),
        (
            "Annex I, Section 2",
            "Notification to subscribers or individuals: number notified",
            blank("number notified; `notifguard incidents resolve` lists the people affected"),
        ),
        (
            "Annex I, Section 2",
            "Cross-border issues (other national authorities involved)",
            blank("other authorities, if any"),
        ),
        (
            "GDPR Art. 33(3)",
            "(a) Nature of the breach, categories and approximate number of data subjects and records",
            f"confidentiality breach (disclosure); data subjects: {i.affected_numbers} subscriber(s) of "
            f"{s.active_brand or s.brand or 'the brand'}; records: {i.mails} e-mail notification(s)",
        ),
        (
            "GDPR Art. 33(3)",
            "(b) Name and contact details of the DPO or other contact point",
            blank("as in Annex I, Section 1"),
        ),
        ("GDPR Art. 33(3)", "(c) Likely consequences", blank("likely consequences")),
        (
            "GDPR Art. 33(3)",
            "(d) Measures taken or proposed, incl. to mitigate adverse effects",
            blank("measures taken or proposed"),
        ),
        (
            "GDPR Art. 33(1)",
            "Reasons for the delay (notified after 72 h)",
            blank("reasons for the delay")
            if gdpr_late
            else "not applicable (within 72 h of detection)"
            if reported is not None
            else f"not applicable if notified before {d.gdpr if d else '-'}",
        ),
        (
            "GDPR Art. 33(5)",
            "Facts, effects and remedial action (register)",
            f"incident {i.incident_id}; mails per day: "
            + ", ".join(f"{day.date} {day.mails}" for day in i.timeline[:31])
            + (" ..." if len(i.timeline) > 31 else "")
            + ". "
            + blank("effects and remedial action taken"),
        ),
        (
            "GDPR Art. 33(5)",
            "Operator actions",
            "; ".join(f"{a.at} {a.action} by {a.by}: {a.note}" for a in view.actions if a not in accessed) or "none",
        ),
        (
            "GDPR Art. 33(5)",
            "Accesses to the clear list (re-identification)",
            "; ".join(f"{a.at} by {a.by}: {a.note}" for a in accessed) or "none",
        ),
    ]
    return f


def export(view: View, fmt: str, now_us: int) -> str:
    fields = register_fields(view, now_us)
    i = view.incident
    if fmt == "json":
        doc: dict[str, Any] = {
            "incident_id": i.incident_id,
            "fields": [{"section": s, "field": k, "value": v, "to_complete": is_blank(v)} for s, k, v in fields],
            "incident": msgspec.to_builtins(i),
        }
        return json.dumps(doc, ensure_ascii=False, indent=2) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["section", "field", "value", "to_complete"])
        for s, k, v in fields:
            w.writerow([s, k, v, "yes" if is_blank(v) else "no"])
        return buf.getvalue()
    if fmt == "md":
        out = [
            f"# Personal data breach {i.incident_id}",
            "",
            "Fields marked `[TO BE COMPLETED: ...]` are for a person to write; everything else is from "
            "notifguard's records.",
            "",
        ]
        section = None
        for s, k, v in fields:
            if s != section:
                out += ["", f"## {s}", "", "| field | value |", "| --- | --- |"]
                section = s
            out.append(f"| {k} | {v.replace('|', '/')} |")
        return "\n".join(out) + "\n"
    raise ValueError(f"unknown format {fmt!r} (md, json or csv)")
