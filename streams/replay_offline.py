"""Offline replay: captures through the engine, in file order, alerts to JSON Lines."""

from __future__ import annotations

import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import msgspec

from detectors.alerts import Alert, encode_alert
from detectors.capture import decode_line
from detectors.engine import Engine
from detectors.records import BAD_ENVELOPE, BadRecord
from detectors.settings import Settings

_json = msgspec.json.Encoder()


@dataclass
class Summary:
    records: int = 0
    by_topic: Counter[str] = field(default_factory=Counter)
    alerts_by_kind: Counter[str] = field(default_factory=Counter)
    alerts_by_severity: Counter[str] = field(default_factory=Counter)
    deadletters: Counter[str] = field(default_factory=Counter)
    late: int = 0
    duplicates: int = 0
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0

    def render(self) -> str:
        lines = [
            f"records      {self.records:>10,}  ({', '.join(f'{k} {v:,}' for k, v in sorted(self.by_topic.items()))})",
            f"alerts       {sum(self.alerts_by_kind.values()):>10,}",
        ]
        lines += [f"  {k:<32}{v:>8,}" for k, v in sorted(self.alerts_by_kind.items())]
        lines += [f"  severity {k:<23}{v:>8,}" for k, v in sorted(self.alerts_by_severity.items())]
        lines.append(f"dead letters {sum(self.deadletters.values()):>10,}")
        lines += [f"  {k:<32}{v:>8,}" for k, v in sorted(self.deadletters.items())]
        lines.append(f"late records {self.late:>10,}")
        lines.append(f"duplicates   {self.duplicates:>10,}")
        lines.append(f"elapsed      {self.seconds:>10.2f} s   {self.rate:,.0f} records/s")
        return "\n".join(lines)


def _now_us() -> int:
    return time.time_ns() // 1000


def alert_line(a: Alert) -> str:
    """One readable line per alert, for people watching a terminal."""
    late = " LATE" if a.late else ""
    return f"[{a.severity:<8}] {a.kind:<29} {a.event_time}  {a.subject.msisdn_masked}{late}  {a.summary}"


class _Progress:
    def __init__(self, stream: IO[str] | None) -> None:
        self.stream = stream
        self.next = time.monotonic() + 0.5

    def show(self, summary: Summary, started: float, alerts: int) -> None:
        now = time.monotonic()
        if self.stream is None or now < self.next:
            return
        self.next = now + 0.5
        rate = summary.records / max(now - started, 1e-9)
        self.stream.write(f"\r{summary.records:>12,} records  {rate:>10,.0f}/s  {alerts:>8,} alerts")
        self.stream.flush()

    def done(self) -> None:
        if self.stream is not None:
            self.stream.write("\r" + " " * 60 + "\r")
            self.stream.flush()


def replay(
    paths: Iterable[str | Path],
    settings: Settings,
    alerts_out: IO[bytes] | None = None,
    deadletter_out: IO[bytes] | None = None,
    print_alerts: IO[str] | None = None,
    progress: IO[str] | None = None,
    engine: Engine | None = None,
) -> tuple[Summary, list[Alert]]:
    """Run captures through a fresh engine; returns the summary and every alert."""
    engine = engine or Engine(settings, new_id=lambda: uuid.uuid4().hex)
    summary = Summary()
    all_alerts: list[Alert] = []
    bar = _Progress(progress)
    started = time.monotonic()
    now = _now_us()

    def drain() -> None:
        alerts, dead, _ = engine.drain()
        for a in alerts:
            summary.alerts_by_kind[a.kind] += 1
            summary.alerts_by_severity[a.severity] += 1
            if alerts_out is not None:
                alerts_out.write(encode_alert(a) + b"\n")
            if print_alerts is not None:
                print_alerts.write(alert_line(a) + "\n")
        all_alerts.extend(alerts)
        for d in dead:
            summary.deadletters[d.reason_code] += 1
            if deadletter_out is not None:
                deadletter_out.write(_json.encode(d) + b"\n")

    process = engine.process
    for path in paths:
        with open(path, "rb") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                summary.records += 1
                try:
                    env = decode_line(line)
                except msgspec.DecodeError as err:
                    engine._dead_letter(
                        f"{path}:{lineno}", None, None, None, None, line.rstrip(b"\n"),
                        BadRecord(BAD_ENVELOPE, f"line is not a kcat -J envelope: {err}"),
                    )
                    continue
                summary.by_topic[env.topic] += 1
                process(env.topic, env.partition, env.offset, env.key, env.payload, now, env.ts)
                if summary.records & 1023 == 0:
                    now = _now_us()
                    drain()
                    bar.show(summary, started, len(all_alerts))
    engine.flush(_now_us())
    drain()
    bar.done()
    summary.seconds = time.monotonic() - started
    summary.late = sum(engine.stats.late.values())
    summary.duplicates = sum(engine.stats.duplicates.values())
    return summary, all_alerts


def progress_stream() -> IO[str] | None:
    return sys.stderr if sys.stderr.isatty() else None
