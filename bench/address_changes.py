"""Benchmark of contract changes on one number (issue 10, item 8): the engine's cost per change as its history grows.

    NOTIFGUARD_NATIVE=0 .venv/bin/python -m bench.address_changes [--changes 5000 10000] [--runs 3] [--json FILE]

One number: a contract_started, then N email_changed of the same contract, each to
a new address, one second apart, fed to the engine as Kafka records (JSON values,
so decoding is included) and flushed. Measured: CPU seconds of the process
(time.process_time, steadier than wall time on a shared machine), best of --runs,
for each N, in two modes:

- `uncapped`: the change log's byte budget (detectors.expiry.CHANGES_BYTES) lifted,
  so the log, the holding's address list and the number's links grow to N: the
  engine's own cost per change (fold, links, address index) as the history grows.
- `capped`: the budget as shipped. Past ~330 such changes the log is at its budget
  and every further change cuts it (detectors.expiry.cap): the cost per change is
  then that of a log at the budget (cut, re-derived, relinked), whatever N.

With work per change that does not grow with the history, twice the changes cost
twice the time: the `ratio` column is time(N) / time(previous N) against the ratio
of the N.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any
from unittest.mock import patch

import detectors
from detectors import expiry
from detectors.engine import Engine
from detectors.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
MSISDN = "+4917612345678"
T0_US = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z
MODES = ("uncapped", "capped")


def records(n: int) -> list[bytes]:
    """The values of the n + 1 change records (the start, then n address changes)."""
    from detectors.timefmt import rfc3339

    out = [
        json.dumps({
            "schema_version": 1, "event_id": "start", "event_time": rfc3339(T0_US), "msisdn": MSISDN,
            "type": "contract_started", "contract_id": "K-1", "customer_id": "C-1", "brand": "o2",
            "email": "a0@example.com",
        }).encode()
    ]  # fmt: skip
    for i in range(1, n + 1):
        out.append(
            json.dumps({
                "schema_version": 1, "event_id": f"c{i}", "event_time": rfc3339(T0_US + i * 1_000_000),
                "msisdn": MSISDN, "type": "email_changed", "contract_id": "K-1", "email": f"a{i}@example.com",
            }).encode()
        )  # fmt: skip
    return out


def run_once(values: list[bytes], capped: bool) -> dict[str, Any]:
    settings = Settings()
    topic = settings.topics.changes
    engine = Engine(settings, new_id=lambda: "x")
    # uncapped: the budget lifted (cap() reads the module's CHANGES_BYTES at each call)
    lifted: AbstractContextManager[Any] = nullcontext() if capped else patch.object(expiry, "CHANGES_BYTES", 1 << 62)
    with lifted:
        cpu = time.process_time()
        wall = time.perf_counter()
        for offset, value in enumerate(values):
            engine.process(topic, 0, offset, MSISDN, value, 0)
        engine.flush(0)
        cpu = time.process_time() - cpu
        wall = time.perf_counter() - wall
    ((ref, state),) = engine.numbers.items()  # type: ignore[attr-defined]
    return {
        "cpu_s": cpu,
        "wall_s": wall,
        "log_length": len(state.changes),
        "changes_capped": engine.stats.capped["changes"],
        "addresses_indexed": len(engine.index),
        "holding_addresses": len(engine.holdings(ref, state)[-1].addresses),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--changes", type=int, nargs="+", default=[5000, 10000])
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = p.parse_args(argv)
    if "uncapped" in args.modes and detectors.NATIVE:
        p.error(
            "the uncapped mode lifts expiry.CHANGES_BYTES, which the compiled core reads as built: NOTIFGUARD_NATIVE=0"
        )
    rows: list[dict[str, Any]] = []
    for mode in args.modes:
        previous: dict[str, Any] | None = None
        for n in sorted(args.changes):
            values = records(n)
            runs = [run_once(values, mode == "capped") for _ in range(args.runs)]
            best = min(runs, key=lambda r: r["cpu_s"])
            row = {"mode": mode, "changes": n, **best, "cpu_s_all": [round(r["cpu_s"], 3) for r in runs]}
            row["cpu_us_per_change"] = best["cpu_s"] / n * 1e6
            if previous is not None:
                row["ratio"] = best["cpu_s"] / previous["cpu_s"]
                row["ratio_of_changes"] = n / previous["changes"]
            rows.append(row)
            previous = row
            print(f"{mode} {n}: {best['cpu_s']:.3f} s CPU", file=sys.stderr)
    result = {
        "rows": [{k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()} for r in rows],
        "commit": _git("rev-parse", "--short", "HEAD"),
        "modified": _git("status", "--porcelain", "--untracked-files=no").splitlines(),
        "load_average": Path("/proc/loadavg").read_text().split()[:3],
        "python": platform.python_version(),
    }
    print(json.dumps(result, indent=2))
    print(f"\n{'mode':9} {'changes':>8} {'cpu s':>8} {'µs/change':>10} {'ratio':>7} {'log':>6} {'capped':>7}")
    for r in rows:
        ratio = f"{r['ratio']:.2f}" if "ratio" in r else ""
        print(
            f"{r['mode']:9} {r['changes']:>8} {r['cpu_s']:>8.3f} {r['cpu_us_per_change']:>10.1f} {ratio:>7} "
            f"{r['log_length']:>6} {r['changes_capped']:>7}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


if __name__ == "__main__":
    sys.exit(main())
