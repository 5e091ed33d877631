"""Scenarios: short stories in TOML (scenarios/*.toml) with the alerts they must raise.

A scenario lists events in arrival order. Each becomes one Kafka record in the
`kcat -J` envelope, so the same capture drives the offline replay, the Kafka
replay and the staging check.
"""

from __future__ import annotations

import json
import tomllib
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from detectors.capture import Envelope
from detectors.settings import Topics
from detectors.timefmt import parse_rfc3339

SCENARIO_DIR = Path(__file__).resolve().parent.parent / "scenarios"
_SHORT = {"changes": "changes", "outbound": "outbound", "delivery": "delivery"}
_META = {"id", "at", "topic", "raw", "key", "partition", "note"}


@dataclass(frozen=True)
class Expected:
    kind: str
    trigger: str
    late: bool | None = None


@dataclass
class Scenario:
    name: str
    title: str
    story: str
    events: list[dict[str, object]]
    expect: list[Expected]
    partitions: int = 1
    settings: dict[str, object] = field(default_factory=dict)

    def expected_keys(self) -> set[tuple[str, str]]:
        return {(e.kind, e.trigger) for e in self.expect}

    def envelopes(self, topics: Topics | None = None) -> Iterator[Envelope]:
        """The scenario as Kafka records, in arrival order."""
        topics = topics or Topics()
        names = {"changes": topics.changes, "outbound": topics.outbound, "delivery": topics.delivery}
        offsets: dict[tuple[str, int], int] = {}
        for ev in self.events:
            topic = names.get(str(ev["topic"]), str(ev["topic"]))
            if "raw" in ev:
                payload = str(ev["raw"])
                msisdn = str(ev.get("msisdn", ""))
            else:
                value = {k: v for k, v in ev.items() if k not in _META}
                value.setdefault("schema_version", 1)
                value.setdefault("event_id", ev["id"])
                value.setdefault("event_time", ev["at"])
                payload = json.dumps(value, separators=(",", ":"))
                msisdn = str(value["msisdn"])
            key = str(ev["key"]) if "key" in ev else msisdn
            partition = int(ev.get("partition", zlib.crc32(key.encode()) % self.partitions))  # type: ignore[call-overload]
            offset = offsets.get((topic, partition), 0)
            offsets[(topic, partition)] = offset + 1
            at = ev.get("at")
            ts = parse_rfc3339(str(at)) // 1000 if at else None
            yield Envelope(topic, partition, offset, payload, key, ts, "create", 0)


def load(path: str | Path) -> Scenario:
    path = Path(path)
    if not path.suffix:
        path = SCENARIO_DIR / f"{path}.toml"
    with open(path, "rb") as f:
        doc = tomllib.load(f)
    defaults = doc.get("defaults", {})
    events = []
    for ev in doc.get("event", []):
        merged = {**defaults, **ev}
        if "raw" in ev:
            merged = {k: v for k, v in merged.items() if k in _META or k == "msisdn"}
        events.append(merged)
    expect = [Expected(e["kind"], e["trigger"], e.get("late")) for e in doc.get("expect", [])]
    return Scenario(
        name=path.stem,
        title=doc["title"],
        story=doc.get("story", "").strip(),
        events=events,
        expect=expect,
        partitions=int(doc.get("partitions", 1)),
        settings=dict(doc.get("settings", {})),
    )


def all_scenarios() -> list[Scenario]:
    return [load(p) for p in sorted(SCENARIO_DIR.glob("*.toml"))]
