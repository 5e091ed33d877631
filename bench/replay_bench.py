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

import detectors
from detectors.capture import decode_line
from detectors.codec import encode_links, encode_number, number_key
from detectors.engine import Engine
from detectors.mailers import MailerDict
from detectors.settings import Settings
from detectors.state import Link
from streams.replay_offline import replay
from streams.tablestore import links_key, mailers_key

ROOT = Path(__file__).resolve().parent.parent


def ensure_capture(records: int, numbers: int, seed: int) -> Path:
    out = ROOT / "bench" / "data" / f"capture-{records}-{numbers}-{seed}.jsonl"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.generate",
                "--records",
                str(records),
                "--numbers",
                str(numbers),
                "--days",
                "365",
                "--seed",
                str(seed),
                "--out",
                str(out),
            ],
            check=True,
            cwd=ROOT,
        )
    return out


def number_partitions(capture: Path, engine: Engine) -> dict[str, int]:
    """msisdn_ref -> the input partition of the number's records in the capture."""
    ref_of = engine.pseudonymiser.msisdn_ref
    by_key: dict[str, int] = {}
    with capture.open("rb") as f:
        for line in f:
            env = decode_line(line)
            if env.key is not None:
                by_key.setdefault(env.key, env.partition)
    return {ref_of(key): partition for key, partition in by_key.items()}


def state_size(engine: Engine, partitions: dict[str, int]) -> dict[str, float]:
    """Bytes the worker persists per tracked number: both tables, keys included.

    The number-state table holds number_key(ref) -> encode_number(state) and the mailers index's
    rows; the address index one entry per address and input partition of the numbers linked to
    it, links_key(addr, P) -> encode_links(their links) (streams/tablestore.py TableLinks;
    `partitions`: each number's input partition, number_partitions).
    """
    numbers = engine.numbers
    n = len(numbers)  # type: ignore[arg-type]
    number_bytes = sum(len(number_key(ref)) + len(encode_number(s)) for ref, s in numbers.items())  # type: ignore[attr-defined, misc]
    index_bytes = 0
    for addr, links in engine.index.items():
        entries: dict[int, list[Link]] = {}
        for link in links:
            entries.setdefault(partitions[link.msisdn_ref], []).append(link)
        index_bytes += sum(len(links_key(addr, p)) + len(encode_links(own)) for p, own in entries.items())
    # the mailers index (detectors.mailers): in the worker, rows of the numbers table
    # (streams.tablestore.TableMailers: key m + address + partition, msgpack of ref -> time)
    engine.build_mailers()  # (offline it is built at the first Relink only; the worker's notes every mail)
    store = engine.mailers.store
    assert isinstance(store, MailerDict)
    encode = msgspec.msgpack.Encoder().encode
    mailers_bytes = sum(len(mailers_key(addr, 0)) + len(encode(entry)) for (addr, _), entry in store.entries.items())
    return {
        "tracked_numbers": n,
        "number_state_bytes_per_number": number_bytes / n,
        "address_index_bytes_per_number": index_bytes / n,
        "mailers_index_bytes_per_number": mailers_bytes / n,
        "total_bytes_per_number": (number_bytes + index_bytes + mailers_bytes) / n,
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
    rates, cpus, last = [], [], None
    for _ in range(args.runs):
        engine = Engine(Settings(), new_id=lambda: "x")
        with open("/dev/null", "wb") as sink:
            children = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = time.process_time()
            started = time.perf_counter()
            summary, _ = replay([capture], Settings(), alerts_out=sink, engine=engine)
            elapsed = time.perf_counter() - started
            cpu = time.process_time() - cpu
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            child = (after.ru_utime + after.ru_stime) - (children.ru_utime + children.ru_stime)
        rates.append(summary.records / elapsed)
        cpus.append((cpu, child))
        last = (summary, engine)
    assert last is not None
    summary, engine = last
    # CPU time, less affected than wall time by other work on the machine: per process (the
    # parent runs the engine, the decoding child is 0 with jobs=1), the records
    # per CPU-second of both, and the rate the busier process allows when each
    # has a core of its own (the wall rate on an idle 2-core machine, less the
    # pipeline's start and end).
    parent_cpu, child_cpu = min(cpus, key=lambda c: max(c))
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
        "cpu_s_parent": round(parent_cpu, 3),
        "cpu_s_child": round(child_cpu, 3),
        "cpu_us_per_record_parent": round(parent_cpu / summary.records * 1e6, 2),
        "cpu_us_per_record_child": round(child_cpu / summary.records * 1e6, 2),
        "records_per_cpu_s": round(summary.records / (parent_cpu + child_cpu)),
        "records_per_s_cpu_bound": round(summary.records / max(parent_cpu, child_cpu)),
        "cpu_s_all": [[round(a, 3), round(b, 3)] for a, b in cpus],
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        **{k: round(v, 1) for k, v in state_size(engine, number_partitions(capture, engine)).items()},
        "core": "compiled" if detectors.NATIVE else "python",  # (detectors.native)
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {len(__import__('os').sched_getaffinity(0))} cores",
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
