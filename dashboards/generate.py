"""Grafana dashboards of notifguard, as code (grafana-foundation-sdk).

    .venv/bin/python dashboards/generate.py           # rewrite dashboards/*.json
    .venv/bin/python dashboards/generate.py --check   # exit 1 if a committed file differs

Three dashboards: "Notification health" (what the notifications do: volume,
mismatched recipients, alerts, bounces, re-ports, corrections), "Detector pipeline" (how
the worker keeps up) and "Incidents" (the incidents process, job
``notifguard-incidents``: open incidents, affected numbers, time left to the
reporting deadlines, reported or not). Every panel queries the data source variable
``datasource`` (default: the provisioned Prometheus with uid
``notifguard-prometheus``), filters on the ``job`` and ``instance`` variables
and uses ``$__rate_interval`` in every rate()/increase(). Metric contract:
docs/metrics.md. Lint rules (grafana's dashboard-linter's, checked in Python):
tests/deploy/test_dashboards.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard, prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import prometheus as prom_models

HERE = Path(__file__).resolve().parent
DATASOURCE_UID = "notifguard-prometheus"
DATASOURCE_NAME = "notifguard-prometheus"
DS = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")
SEL = 'job=~"$job", instance=~"$instance"'
RI = "$__rate_interval"

PANEL_WIDTH = 12
PANEL_HEIGHT = 8


def sel(metric: str, matchers: str = "") -> str:
    """``metric{job=~"$job", <matchers>}``."""
    return f"{metric}{{{SEL}{', ' + matchers if matchers else ''}}}"


def rate(metric: str, matchers: str = "") -> str:
    return f"rate({sel(metric, matchers)}[{RI}])"


def increase(metric: str, matchers: str = "") -> str:
    return f"increase({sel(metric, matchers)}[{RI}])"


def quantile(q: float, histogram: str) -> str:
    return f"histogram_quantile({q}, sum by (le) ({rate(histogram + '_bucket')}))"


@dataclass
class Query:
    expr: str
    legend: str
    # drawn against a right-hand axis in the panel's right_unit (a gauge beside rates)
    right: bool = False


@dataclass
class Panel:
    title: str
    unit: str
    queries: list[Query]
    description: str = ""
    kind: str = "timeseries"  # or "stat"
    min_zero: bool = True
    extra: dict[str, Any] = field(default_factory=dict)
    right_unit: str = "short"


@dataclass
class Row:
    title: str
    panels: list[Panel]


def _target(ref: str, q: Query) -> prometheus.Dataquery:
    return (
        prometheus.Dataquery()
        .ref_id(ref)
        .datasource(DS)
        .expr(q.expr)
        .legend_format(q.legend)
        .range()
        .editor_mode(prom_models.QueryEditorMode.CODE)
    )


def _panel(p: Panel, panel_id: int, x: int, y: int) -> timeseries.Panel | stat.Panel:
    builder: timeseries.Panel | stat.Panel
    if p.kind == "stat":
        builder = (
            stat.Panel()
            .graph_mode(common.BigValueGraphMode.AREA)
            .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]))
        )
    else:
        builder = (
            timeseries.Panel()
            .legend(
                cb.VizLegendOptions()
                .display_mode(common.LegendDisplayMode.TABLE)
                .placement(common.LegendPlacement.RIGHT)
                .show_legend(True)
                .calcs(["lastNotNull", "max"])
            )
            .tooltip(cb.VizTooltipOptions().mode(common.TooltipDisplayMode.MULTI).sort(common.SortOrder.DESCENDING))
            .line_width(1)
            .fill_opacity(10)
        )
        if p.min_zero:
            builder = builder.min(0)
    builder = (
        builder.id(panel_id)
        .title(p.title)
        .description(p.description)
        .unit(p.unit)
        .datasource(DS)
        .grid_pos(dm.GridPos(h=PANEL_HEIGHT, w=PANEL_WIDTH, x=x, y=y))
    )
    for i, q in enumerate(p.queries):
        ref = chr(ord("A") + i)
        builder = builder.with_target(_target(ref, q))
        if q.right and isinstance(builder, timeseries.Panel):
            builder = builder.override_by_query(
                ref,
                [
                    dm.DynamicConfigValue(id_val="unit", value=p.right_unit),
                    dm.DynamicConfigValue(id_val="custom.axisPlacement", value="right"),
                ],
            )
    return builder


def _variables(
    d: dashboard.Dashboard, job: str | list[str] = "notifguard", job_metric: str = "notifguard_build_info"
) -> dashboard.Dashboard:
    jobs = [job] if isinstance(job, str) else job
    return (
        d.with_variable(
            dashboard.DatasourceVariable("datasource")
            .label("Data source")
            .type("prometheus")
            .current(dm.VariableOption(selected=True, text=DATASOURCE_NAME, value=DATASOURCE_UID))
        )
        .with_variable(
            dashboard.QueryVariable("job")
            .label("Job")
            .datasource(DS)
            .query(f"label_values({job_metric}, job)")
            .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(dm.VariableSort.ALPHABETICAL_ASC)
            .multi(True)
            .include_all(True)
            .all_value(".+")
            .current(dm.VariableOption(selected=True, text=jobs, value=jobs))
        )
        .with_variable(
            dashboard.QueryVariable("instance")
            .label("Instance")
            .datasource(DS)
            .query(f'label_values({job_metric}{{job=~"$job"}}, instance)')
            .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(dm.VariableSort.ALPHABETICAL_ASC)
            .multi(True)
            .include_all(True)
            .all_value(".+")
            .current(dm.VariableOption(selected=True, text=["All"], value=["$__all"]))
        )
    )


def build(
    uid: str,
    title: str,
    description: str,
    rows: list[Row],
    job: str | list[str] = "notifguard",
    job_metric: str = "notifguard_build_info",
) -> dict[str, Any]:
    d = (
        dashboard.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["notifguard"])
        .readonly()  # provisioned from code: change the generator, not the dashboard
        .refresh("30s")
        .time("now-6h", "now")
        .timezone("utc")
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
    )
    d = _variables(d, job, job_metric)
    panel_id = 1
    y = 0
    for row in rows:
        d = d.with_row(dashboard.Row(row.title).id(panel_id).grid_pos(dm.GridPos(h=1, w=24, x=0, y=y)))
        panel_id += 1
        y += 1
        for i, p in enumerate(row.panels):
            x = (i % 2) * PANEL_WIDTH
            if i and i % 2 == 0:
                y += PANEL_HEIGHT
            d = d.with_panel(_panel(p, panel_id, x, y))
            panel_id += 1
        y += PANEL_HEIGHT
    out: dict[str, Any] = json.loads(json.dumps(d.build(), cls=JSONEncoder))
    return out


# Metric names (docs/metrics.md) and label matchers used below.
VERDICTS = "notifguard_verdicts_total"
ALERTS = "notifguard_alerts_total"
DELIVERIES = "notifguard_deliveries_total"
REBALANCES = "notifguard_rebalances_total"
CONSUMED = "notifguard_records_consumed_total"
VERDICT_DELAY = "notifguard_verdict_delay_seconds"
PROCESSING = "notifguard_processing_seconds"
DEADLETTERS = "notifguard_deadletters_total"
LATE = "notifguard_late_records_total"
TOO_LATE = "notifguard_too_late_records_total"
CORRECTIONS = "notifguard_corrections_total"
RELINKS_SENT = "notifguard_relinks_sent_total"
RELINKS_APPLIED = "notifguard_relinks_applied_total"
RELINKS_HELD = "notifguard_relinks_held"
RELINKS_OUT_OF_REACH = "notifguard_relinks_out_of_reach_total"
RAISED_LATE = "notifguard_alerts_raised_late_total"
RETRACTED = "notifguard_alerts_retracted_total"
DUPLICATES = "notifguard_duplicates_total"
ERRORS = "notifguard_processing_errors_total"
PRODUCED = "notifguard_records_produced_total"
PRODUCE_ERRORS = "notifguard_produce_errors_total"
PRODUCE_SECONDS = "notifguard_produce_seconds"
COMMIT_SECONDS = "notifguard_offset_commit_seconds"
REBALANCE_SECONDS = "notifguard_rebalance_seconds"
ASSIGNMENTS = "notifguard_partition_assignments_total"
RECOVERY_REMAINING = "notifguard_table_recovery_remaining_records"
EXPIRED = "notifguard_states_expired_total"
CAPPED = "notifguard_state_capped_total"

NOT_OK = 'verdict!="ok"'
CHANGES_TOPIC = 'topic="contracts.changes"'
HARD_BOUNCE = 'status="bounced", bounce_type="hard"'
FINAL = 'status=~"delivered|bounced"'
BOUNCE_KINDS = 'kind=~"current_address_bouncing|bounce_burst"'
PORT_KINDS = 'kind=~"re_port|port_flapping"'
WITHOUT_CONTRACT = 'verdict="notification_without_contract"'
MISMATCH = 'verdict!="ok", verdict=~"recipient_.*"'
BREACH = 'verdict=~"recipient_previous_holder|recipient_other_customer"'


# --------------------------------------------------------------------------
# Notification health
# --------------------------------------------------------------------------


def notification_health() -> dict[str, Any]:
    rows = [
        Row(
            "Notifications",
            [
                Panel(
                    "Notifications judged per second by brand",
                    "ops",
                    [Query(f"sum by (brand) ({rate(VERDICTS)})", "{{brand}}")],
                    "One verdict per notification (notifguard_verdicts_total).",
                ),
                Panel(
                    "Share of mismatched recipients by brand/template/sender",
                    "percentunit",
                    [
                        Query(
                            f"sum by (brand, template, sender) ({rate(VERDICTS, MISMATCH)})\n"
                            f"/\n(sum by (brand, template, sender) ({rate(VERDICTS)}) > 0)",
                            "{{brand}} / {{template}} / {{sender}}",
                        )
                    ],
                    "Share of notifications that raised a recipient kind. Alert NotifguardSystemicRecipientMismatch "
                    "fires above max(0.1 %, 3 x the 1-day baseline).",
                ),
                Panel(
                    "Recipient verdicts per second by kind",
                    "ops",
                    [Query(f"sum by (verdict) ({rate(VERDICTS, NOT_OK)})", "{{verdict}}")],
                    "Verdicts other than ok, by the kind raised.",
                ),
                Panel(
                    "Mail to a previous holder / other customer, by brand",
                    "short",
                    [Query(f"sum by (brand) ({increase(VERDICTS, BREACH)})", "{{brand}}")],
                    "Presumed personal-data breaches (alert NotifguardRecipientBreach pages on any).",
                ),
            ],
        ),
        Row(
            "Alerts",
            [
                Panel(
                    "Alerts per second by kind",
                    "ops",
                    [Query(f"sum by (kind, severity) ({rate(ALERTS)})", "{{kind}} ({{severity}})")],
                    "Alerts raised (on time or late) and written to notifguard.alerts; their retractions are "
                    "counted apart (row Corrections).",
                ),
                Panel(
                    "Alerts by severity",
                    "short",
                    [Query(f"sum by (severity) ({increase(ALERTS)})", "{{severity}}")],
                    "Alerts emitted per interval, by severity.",
                ),
            ],
        ),
        Row(
            "Delivery",
            [
                Panel(
                    "Hard-bounce rate by brand/sender",
                    "percentunit",
                    [
                        Query(
                            f"sum by (brand, sender) ({rate(DELIVERIES, HARD_BOUNCE)})\n"
                            f"/\n(sum by (brand, sender) ({rate(DELIVERIES, FINAL)}) > 0)",
                            "{{brand}} / {{sender}}",
                        )
                    ],
                    "Hard bounces among final outcomes (delivered or bounced). Alerts at 5 % (warning) and 10 % "
                    "(critical) over 1 h.",
                ),
                Panel(
                    "Delivery events per second by status",
                    "ops",
                    [
                        Query(
                            f"sum by (status, bounce_type) ({rate(DELIVERIES)})",
                            "{{status}} ({{bounce_type}})",
                        )
                    ],
                    "notifications.delivery events by outcome.",
                ),
                Panel(
                    "Current address bouncing and bounce bursts",
                    "ops",
                    [
                        Query(
                            f"sum by (kind) ({rate(ALERTS, BOUNCE_KINDS)})",
                            "{{kind}}",
                        )
                    ],
                    "Customers who miss mail: hard bounces to the current address, bursts of bounces on one number.",
                ),
            ],
        ),
        Row(
            "Numbers changing hands",
            [
                Panel(
                    "Re-ports and port flapping",
                    "ops",
                    [
                        Query(
                            f"sum by (kind) ({rate(ALERTS, PORT_KINDS)})",
                            "{{kind}}",
                        )
                    ],
                    "re_port: a recycled or re-ported number (early warning); port_flapping: 3+ ports within 30 days.",
                ),
                Panel(
                    "Notifications without an active contract",
                    "ops",
                    [
                        Query(
                            f"sum by (brand) ({rate(VERDICTS, WITHOUT_CONTRACT)})",
                            "{{brand}}",
                        )
                    ],
                    "Notifications for numbers nobody holds at event time.",
                ),
            ],
        ),
        Row(
            "Corrections",
            [
                Panel(
                    "Alerts raised late and retracted, by kind",
                    "ops",
                    [
                        Query(f"sum by (kind) ({rate(RAISED_LATE)})", "raised late: {{kind}}"),
                        Query(f"sum by (kind) ({rate(RETRACTED)})", "retracted: {{kind}}"),
                    ],
                    "Contract 1.1: a record later than grace but within the correction horizon judges its number "
                    "again; what now holds is raised late (late: true, also counted in Alerts), what no longer "
                    "holds is retracted (Alertmanager resolves it at once). Runbook: an alert was retracted or "
                    "raised late.",
                ),
                Panel(
                    "Corrections by cause",
                    "ops",
                    [Query(f"sum by (cause) ({rate(CORRECTIONS)})", "{{cause}}")],
                    "Numbers judged again, by the topic of the late record (changes, outbound, delivery) or relink "
                    "(a late change of another number altered an address's links); whether or not anything changed.",
                ),
                Panel(
                    "Share of contract changes arriving late",
                    "percentunit",
                    [
                        Query(
                            f"sum by (topic) ({rate(LATE, CHANGES_TOPIC)})\n"
                            f"/\n(sum by (topic) ({rate(CONSUMED, CHANGES_TOPIC)}) > 0)",
                            "{{topic}}",
                        )
                    ],
                    "Contract changes later than grace (applied in their place, their numbers judged again). "
                    "Batches pass; a share that stays high means a feed falls behind: alert "
                    "NotifguardLateContractChanges.",
                ),
                Panel(
                    "Records beyond the correction horizon, by topic",
                    "short",
                    [Query(f"sum by (topic) ({increase(TOO_LATE)})", "{{topic}}")],
                    "Records later than correction_horizon (7 days) behind the watermark: state updated, nothing "
                    "judged again, verdicts stand as judged. Should stay 0: alert "
                    "NotifguardRecordsBeyondCorrectionHorizon.",
                ),
                Panel(
                    "Relinks: sent, applied by view, held",
                    "ops",
                    [
                        Query(f"sum({rate(RELINKS_SENT)})", "sent"),
                        Query(f"sum by (view) ({rate(RELINKS_APPLIED)})", "applied: {{view}}"),
                        Query(f"sum by (instance) ({sel(RELINKS_HELD)})", "held: {{instance}}", right=True),
                        Query(f"sum({rate(RELINKS_OUT_OF_REACH)})", "out of reach"),
                    ],
                    "Cross-number corrections (docs/topics.md 2.6a): a change, late or on time, that alters an "
                    "address's links sends a Relink to every partition of <app_id>-relinks (sent: Relinks, all of a "
                    "flush's in one record a partition); each partition's owner applies each Relink once its "
                    "address-index view holds the origin's links (current) or after relink_wait_s, 30 s (waited_out: "
                    "judged on the view there was); most find no number of the partition to re-judge. Held (right "
                    "axis, Relinks): what waits now, per worker. waited_out that persists means that worker's "
                    "address-index changelog lags: alert NotifguardRelinksWaitedOut. Out of reach: numbers a "
                    "Relink reached more than the horizon behind their newest event, whose older mails it could "
                    "not judge again (workers far apart): alert NotifguardRelinksOutOfReach.",
                ),
            ],
        ),
    ]
    return build(
        "notifguard-notification-health",
        "Notification health",
        "Where notifications go: volume, mismatched recipients, alerts, bounces, numbers changing hands, "
        "corrections by late data.",
        rows,
    )


# --------------------------------------------------------------------------
# Detector pipeline
# --------------------------------------------------------------------------


def detector_pipeline() -> dict[str, Any]:
    rows = [
        Row(
            "Workers",
            [
                Panel(
                    "Workers up",
                    "none",
                    [
                        Query(f"sum(up{{{SEL}}})", "up"),
                        Query(f"sum(notifguard_worker_ready{{{SEL}}})", "ready"),
                        Query(f"sum(notifguard_worker_stalled{{{SEL}}})", "stalled"),
                    ],
                    "Scraped workers (up), workers recovered and not rebalancing (notifguard_worker_ready), and "
                    "workers stalled: input waiting and nothing read, acked, delivered or committed for stall_after_s "
                    "(notifguard_worker_stalled; alert NotifguardWorkerStalled).",
                    kind="stat",
                ),
                Panel(
                    "Seconds since progress",
                    "s",
                    [
                        Query(
                            f"max by (instance) (time() - notifguard_last_progress_timestamp_seconds{{{SEL}}})",
                            "{{instance}}",
                        )
                    ],
                    "Since each worker last read, acked, delivered or committed anything. Grows while no input "
                    "comes (that is no stall); with input waiting, a worker is stalled past stall_after_s (120 s).",
                ),
                Panel(
                    "Rebalances",
                    "short",
                    [Query(f"sum by (instance) ({increase(REBALANCES)})", "{{instance}}")],
                    "Consumer group rebalances seen, per worker.",
                ),
            ],
        ),
        Row(
            "Throughput",
            [
                Panel(
                    "Records consumed per second by topic",
                    "ops",
                    [Query(f"sum by (topic) ({rate(CONSUMED)})", "{{topic}}")],
                    "Input records read, including bad records and duplicates.",
                ),
                Panel(
                    "Verdicts and alerts per second",
                    "ops",
                    [
                        Query(f"sum({rate(VERDICTS)})", "verdicts"),
                        Query(f"sum({rate(ALERTS)})", "alerts"),
                    ],
                    "Output of the detector.",
                ),
            ],
        ),
        Row(
            "Lag",
            [
                Panel(
                    "Consumer lag by topic",
                    "short",
                    [Query(f"sum by (topic) (notifguard_consumer_lag_records{{{SEL}}})", "{{topic}}")],
                    "Records between the committed position and the high-water mark, summed over workers.",
                ),
                Panel(
                    "Watermark lag by partition",
                    "s",
                    [
                        Query(
                            f"max by (partition) (notifguard_watermark_lag_seconds{{{SEL}}})", "partition {{partition}}"
                        )
                    ],
                    "Wall clock minus the partition's watermark; near grace in normal operation.",
                ),
                Panel(
                    "Pending events in grace buffers",
                    "short",
                    [Query(f"sum by (instance) (notifguard_pending_events{{{SEL}}})", "{{instance}}")],
                    "Events waiting until the watermark passes event_time + grace.",
                ),
                Panel(
                    "Verdict delay",
                    "s",
                    [
                        Query(
                            f"{quantile(0.99, VERDICT_DELAY)}",
                            "p99",
                        ),
                        Query(
                            f"{quantile(0.5, VERDICT_DELAY)}",
                            "p50",
                        ),
                    ],
                    "Wall time from a notification's arrival to its verdict (grace included).",
                ),
                Panel(
                    "Processing time per record",
                    "s",
                    [
                        Query(
                            f"{quantile(0.99, PROCESSING)}",
                            "p99",
                        )
                    ],
                    "Engine time to process one input record.",
                ),
            ],
        ),
        Row(
            "Input quality",
            [
                Panel(
                    "Dead letters per second by topic and reason",
                    "ops",
                    [
                        Query(
                            f"sum by (topic, reason) ({rate(DEADLETTERS)})",
                            "{{topic}}: {{reason}}",
                        )
                    ],
                    "Bad records sent to notifguard.deadletter.",
                ),
                Panel(
                    "Late records per second by topic",
                    "ops",
                    [Query(f"sum by (topic) ({rate(LATE)})", "{{topic}}")],
                    "Records arriving after watermark > event_time + grace.",
                ),
                Panel(
                    "Duplicates per second by topic",
                    "ops",
                    [Query(f"sum by (topic) ({rate(DUPLICATES)})", "{{topic}}")],
                    "Repeated event_ids ignored.",
                ),
                Panel(
                    "Processing errors (bugs)",
                    "short",
                    [
                        Query(
                            f"sum by (instance, topic) ({increase(ERRORS)})",
                            "{{instance}} {{topic}}",
                        )
                    ],
                    "Exceptions other than bad input; each one is a bug.",
                ),
            ],
        ),
        Row(
            "State",
            [
                Panel(
                    "Tracked numbers",
                    "short",
                    [Query(f"sum by (instance) (notifguard_tracked_numbers{{{SEL}}})", "{{instance}}")],
                    "Numbers with state on each worker.",
                ),
                Panel(
                    "Table recovery: changelog records to read",
                    "short",
                    [Query(f"sum by (instance, role) ({sel(RECOVERY_REMAINING)})", "{{instance}} {{role}}")],
                    "Changelog records a (re)starting worker still has to read before it is ready; 0 once recovered.",
                ),
                Panel(
                    "Number states shrunk by expiry sweeps",
                    "short",
                    [Query(f"sum by (instance) ({increase(EXPIRED)})", "{{instance}}")],
                    "States a sweep (every 7 days of event time) cut: expired seen ids, sent mails and pattern "
                    "marks, and holdings ended beyond the history retention (GDPR data minimisation). None for "
                    "weeks while records flow: the sweep is not running.",
                ),
                Panel(
                    "Number state entries dropped over size budgets by part",
                    "short",
                    [Query(f"sum by (part) ({increase(CAPPED)})", "{{part}}")],
                    "Seen ids, sent mails, pattern marks or contract changes dropped because a number's state "
                    "went over its size budget (docs/topics.md 2.3a): a flood of records for one number. "
                    "Should stay 0; the oldest entries go, the newest are judged by the rules.",
                ),
            ],
        ),
        Row(
            "Kafka client",
            [
                Panel(
                    "Records produced per second by topic",
                    "ops",
                    [
                        Query(f"sum by (topic) ({rate(PRODUCED)})", "{{topic}}"),
                        Query(f"sum by (topic) ({rate(PRODUCE_ERRORS)})", "errors: {{topic}}"),
                    ],
                    "Records acknowledged by the broker (alerts, dead letters, table changelogs) and records the "
                    "producer failed to deliver (should be 0: a failure stops the worker, which re-reads on restart).",
                ),
                Panel(
                    "Produce latency (to the broker's ack)",
                    "s",
                    [Query(f"{quantile(0.99, PRODUCE_SECONDS)}", "p99")],
                    "From handing a record to the producer to the broker's acknowledgement.",
                ),
                Panel(
                    "Offset commit duration",
                    "s",
                    [
                        Query(f"{quantile(0.99, COMMIT_SECONDS)}", "p99"),
                        Query(f"{quantile(0.5, COMMIT_SECONDS)}", "p50"),
                    ],
                    "One commit round of the consumer (every second), producer flush included.",
                ),
                Panel(
                    "Rebalance duration",
                    "s",
                    [
                        Query(
                            f"histogram_quantile(0.99, sum by (le, phase) ({rate(REBALANCE_SECONDS + '_bucket')}))",
                            "p99 until {{phase}}",
                        )
                    ],
                    "From a rebalance's start until the consumer rejoined the group, and until the tables are "
                    "recovered and records flow again. No line: no rebalance in the interval.",
                ),
                Panel(
                    "Partition assignments by result",
                    "short",
                    [Query(f"sum by (result) ({increase(ASSIGNMENTS)})", "{{result}}")],
                    "Assignments computed by the group leader; an error leaves partitions unread.",
                ),
            ],
        ),
    ]
    return build(
        "notifguard-detector-pipeline",
        "Detector pipeline",
        "How the notifguard workers keep up: throughput, lag, watermarks, delays, input quality, Kafka client.",
        rows,
    )


# --------------------------------------------------------------------------
# Incidents (computed by the workers, or by `notifguard incidents run --metrics-port`)
# --------------------------------------------------------------------------

# The workers compute incidents by default (job notifguard); `incidents run` is the separate option
INCIDENTS_JOBS = ["notifguard", "notifguard-incidents"]
INCIDENTS_POLL = "notifguard_incidents_last_poll_timestamp_seconds"
AFFECTED = "notifguard_incident_affected_numbers"
DEADLINE = "notifguard_incident_deadline_seconds"
REPORTED = "notifguard_incident_reported"


def incidents() -> dict[str, Any]:
    rows = [
        Row(
            "Incidents",
            [
                Panel(
                    "Open incidents by kind",
                    "none",
                    [Query(f"sum by (kind) ({sel('notifguard_incidents_open')})", "{{kind}}")],
                    "Open incidents (notifguard_incidents_open): one per breach cause, its alerts within the quiet "
                    "period (35 days). Each pages once (NotifguardIncidentOpen). `notifguard incidents list`.",
                    kind="stat",
                ),
                Panel(
                    "Incidents to report: reported or not",
                    "none",
                    [
                        Query(f"sum(1 - {sel(REPORTED)})", "not reported"),
                        Query(f"sum({sel(REPORTED)})", "reported"),
                    ],
                    "Incidents open, or closed by their quiet period and not reported (notifguard_incident_reported). "
                    "Mark one with `notifguard incidents mark ID reported --note ...`.",
                    kind="stat",
                ),
            ],
        ),
        Row(
            "Scope",
            [
                Panel(
                    "Affected numbers per incident",
                    "short",
                    [
                        Query(
                            f"max by (incident_id, kind, brand) ({sel(AFFECTED)})", "{{incident_id}} {{kind}} {{brand}}"
                        )
                    ],
                    "Distinct numbers whose mails went to somebody else, per incident (exact counts; "
                    "`notifguard incidents show ID` for the timeline per day).",
                ),
                Panel(
                    "Affected numbers by kind and brand",
                    "short",
                    [Query(f"sum by (kind, brand) ({sel(AFFECTED)})", "{{kind}} {{brand}}")],
                    "The incidents' affected numbers added up by breach kind and sending brand.",
                ),
            ],
        ),
        Row(
            "Deadlines",
            [
                Panel(
                    "Time left to the deadlines (not reported)",
                    "s",
                    [Query(f"min by (incident_id, deadline) ({sel(DEADLINE)})", "{{incident_id}} {{deadline}}")],
                    "Seconds until the initial report (24 h), full report (3 days) and GDPR (72 h) deadlines of "
                    "each incident not marked reported, from its detection; negative: overdue. "
                    "NotifguardIncidentDeadlineNear pages 6 h before.",
                    min_zero=False,
                ),
                Panel(
                    "Next deadline",
                    "s",
                    [Query(f"min({sel(DEADLINE)})", "next deadline")],
                    "The nearest deadline over all incidents not marked reported (no value: nothing to report).",
                    kind="stat",
                ),
                Panel(
                    "Reported, per incident",
                    "bool",
                    [Query(f"max by (incident_id) ({sel(REPORTED)})", "{{incident_id}}")],
                    "1 once the incident is marked reported (its deadline series then end).",
                ),
                Panel(
                    "Seconds since the incidents process polled",
                    "s",
                    [Query(f"time() - max by (instance) ({sel(INCIDENTS_POLL)})", "{{instance}}")],
                    "The process polls the alerts topic every half second or so; a growing value: it is stuck or "
                    "down, and incidents and deadlines above are stale.",
                ),
            ],
        ),
    ]
    return build(
        "notifguard-incidents",
        "Incidents",
        "Breach incidents (one per cause), computed by the workers or by `notifguard incidents run`: "
        "open incidents, affected numbers, time left to the reporting deadlines (Reg. 611/2013, "
        "GDPR Art. 33), reported or not.",
        rows,
        job=INCIDENTS_JOBS,
        job_metric=INCIDENTS_POLL,
    )


DASHBOARDS = {
    "notification-health.json": notification_health,
    "detector-pipeline.json": detector_pipeline,
    "incidents.json": incidents,
}


def render(d: dict[str, Any]) -> str:
    return json.dumps(d, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def generate() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    return {name: render(fn()) for name, fn in DASHBOARDS.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only compare with the committed files")
    ap.add_argument("--out", type=Path, default=HERE, help="output directory (default: dashboards/)")
    args = ap.parse_args(argv)
    stale = []
    for name, text in generate().items():
        path = args.out / name
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    if stale:
        print(f"out of date (run dashboards/generate.py): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
