"""Benchmark of the offline replay: records/s end to end (decoding included) and state bytes per number.

    .venv/bin/python -m bench.replay_bench [--records 150000] [--numbers 2000] [--runs 3]

Generates the capture with bench.generate (seeded, so every run measures the
same input), replays it through the same code path as `notifguard replay
--offline` with alerts written to a file, and reports the best of --runs.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import msgspec

from detectors.engine import Engine
from detectors.settings import Settings
from detectors.state import encode_number
from streams.replay_offline import replay

ROOT = Path(__file__).resolve().parent.parent


def ensure_capture(records: int, numbers: int, seed: int) -> Path:
    out = ROOT / "bench" / "data" / f"capture-{records}-{numbers}-{seed}.jsonl"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "bench.generate", "--records", str(records), "--numbers", str(numbers),
             "--days", "365", "--seed", str(seed), "--out", str(out)],
            check=True, cwd=ROOT,
        )
    return out


def state_size(engine: Engine) -> dict[str, float]:
    numbers = engine.numbers
    n = len(numbers)  # type: ignore[arg-type]
    number_bytes = sum(len(encode_number(s)) for s in numbers.values())  # type: ignore[attr-defined, misc]
    enc = msgspec.msgpack.Encoder()
    index_bytes = sum(len(addr) + len(enc.encode(links)) for addr, links in engine.index.items())
    return {
        "tracked_numbers": n,
        "number_state_bytes_per_number": number_bytes / n,
        "address_index_bytes_per_number": index_bytes / n,
        "total_bytes_per_number": (number_bytes + index_bytes) / n,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=int, default=150_000)
    p.add_argument("--numbers", type=int, default=2000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = p.parse_args(argv)
    capture = ensure_capture(args.records, args.numbers, args.seed)
    rates, last = [], None
    for _ in range(args.runs):
        engine = Engine(Settings(), new_id=lambda: "x")
        with open("/dev/null", "wb") as sink:
            started = time.perf_counter()
            summary, _ = replay([capture], Settings(), alerts_out=sink, engine=engine)
            elapsed = time.perf_counter() - started
        rates.append(summary.records / elapsed)
        last = (summary, engine)
    assert last is not None
    summary, engine = last
    result = {
        "capture": capture.name,
        "records": summary.records,
        "alerts": sum(summary.alerts_by_kind.values()),
        "alerts_by_kind": dict(sorted(summary.alerts_by_kind.items())),
        "dead_letters": sum(summary.deadletters.values()),
        "duplicates": summary.duplicates,
        "late": summary.late,
        "records_per_s_best": round(max(rates)),
        "records_per_s_all": [round(r) for r in rates],
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        **{k: round(v, 1) for k, v in state_size(engine).items()},
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {len(__import__('os').sched_getaffinity(0))} cores",
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
