"""What the worker's Relinks cost (docs/topics.md 2.6a): sent per flush, and looked up by their receivers.

    .venv/bin/python -m bench.relinks_bench [--records 150000] [--numbers 2000] [--workers 6]
        [--per-flush 1250] [--runs 2]

The bench capture (bench.generate, 6 input partitions) through one engine per worker, as the
worker's (a PartitionedStore of its partitions, the address index shared: the GlobalTable), each
record to the engine of its partition's worker with its capture timestamp as the clock. Every
`--per-flush` records of the capture (1,250: a flush of 0.25 s at 5,000 records/s) is a flush:
each worker takes its engine's Relinks and, as streams.worker.pipeline does, makes one record
(RelinkBatch) for every partition; every worker then applies every record of its partitions
(the digest of its view, once per address and origin and pass; Engine.relinked per partition).
The final alert set is compared with one engine's over the whole capture (the offline replay's).
Twice: the workers in step (the capture's order), and worker 0 `--behind` seconds of capture
time behind the others (a worker working through a backlog).

Reported: Relinks per 1,000 records, per flush, relink records and bytes; the receivers' time
per Relink and partition (the digest and the mailers-index look-up, and the re-judging of the
candidates found), how many found a number to re-judge, what that raised or retracted; and the
engines' time per record with on-time Relinks and without (alternating, best of --runs).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from typing import Any

import msgspec

from bench.replay_bench import ensure_capture
from detectors.alerts import final_set
from detectors.capture import Envelope
from detectors.engine import Engine
from detectors.settings import Settings
from detectors.state import AddressIndex
from detectors.stores import PartitionedDict
from streams.worker.pipeline import RelinkBatch, RelinkRecord, origin_links_digest


def run(envelopes: list[Envelope], workers: int, per_flush: int, on_time: bool, behind_s: float = 0) -> dict[str, Any]:
    settings = Settings()
    links: dict[Any, Any] = {}
    counter = itertools.count()
    engines = [
        Engine(settings, new_id=lambda: f"a{next(counter)}", numbers=PartitionedDict(), index=AddressIndex(links))
        for _ in range(workers)
    ]
    for e in engines:
        e.relink_on_time = on_time
        e.collect_metrics = False
    partitions = 1 + max(env.partition for env in envelopes)
    owned = [[p for p in range(partitions) if p % workers == w] for w in range(workers)]
    encode = msgspec.msgpack.Encoder().encode
    decode = msgspec.msgpack.Decoder(RelinkBatch).decode
    index = AddressIndex(links)
    fed = receive = 0.0
    relinks = records = relink_bytes = flushes = flushes_with = looked = hits = 0
    alerts: list[Any] = []
    most = 0

    def flush() -> None:
        nonlocal receive, relinks, records, relink_bytes, flushes, flushes_with, looked, hits, most
        flushes += 1
        batches = []
        for e in engines:
            taken = e.take_relinks()
            if not taken:
                continue
            relinks += len(taken)
            most = max(most, len(taken))
            digests: dict[tuple[bytes, str], bytes] = {}
            entries = []
            for r in taken:
                key = (r.addr, r.origin)
                if key not in digests:
                    digests[key] = origin_links_digest(index.get(r.addr), r.origin)
                entries.append(RelinkRecord(r, digests[key]))
            value = encode(RelinkBatch(entries))
            records += partitions
            relink_bytes += partitions * len(value)
            batches.append(value)
        flushes_with += bool(batches)
        started = time.perf_counter()
        for w, e in enumerate(engines):
            views: dict[tuple[bytes, str], bytes] = {}
            for value in batches:
                batch = decode(value).relinks
                for p in owned[w]:
                    for entry in batch:
                        r = entry.relink
                        key = (r.addr, r.origin)
                        if key not in views:
                            views[key] = origin_links_digest(index.get(r.addr), r.origin)
                        looked += 1
                        hits += e.relinked(r, p)
        receive += time.perf_counter() - started

    in_order = envelopes
    if behind_s:  # worker 0 reads each record when the others read those behind_s of capture time later
        lag = int(behind_s * 1000)
        envelopes = sorted(envelopes, key=lambda env: (env.ts or 0) + (lag if env.partition % workers == 0 else 0))
    for i, env in enumerate(envelopes):
        now = (env.ts or 0) * 1000
        started = time.perf_counter()
        engines[env.partition % workers].process(env.topic, env.partition, env.offset, env.key, env.payload, now)
        fed += time.perf_counter() - started
        if (i + 1) % per_flush == 0:
            flush()
    for e in engines:
        e.flush((envelopes[-1].ts or 0) * 1000)
    flush()
    for e in engines:
        alerts += e.drain()[0]
    n = len(envelopes)
    late = sum(1 for a in alerts if a.late)
    one = Engine(settings, new_id=lambda: f"o{next(counter)}")
    one.collect_metrics = False
    for env in in_order:
        one.process(env.topic, env.partition, env.offset, env.key, env.payload, (env.ts or 0) * 1000)
    one.flush((envelopes[-1].ts or 0) * 1000)
    return {
        "records": n,
        "workers": workers,
        "partitions": partitions,
        "records_per_flush": per_flush,
        "on_time_relinks": on_time,
        "worker_0_behind_s": behind_s,
        "engine_us_per_record": round(fed * 1e6 / n, 2),
        "relinks": relinks,
        "relinks_per_1000_records": round(relinks * 1000 / n, 2),
        "relinks_per_flush_with_any": round(relinks / max(1, flushes_with), 2),
        "most_relinks_in_one_worker_flush": most,
        "flushes": flushes,
        "relink_records": records,
        "relink_bytes_per_relink": round(relink_bytes / max(1, relinks * partitions), 1),
        "receiver_lookups": looked,
        "receiver_us_per_lookup": round(receive * 1e6 / max(1, looked), 2),
        "receiver_us_per_record": round(receive * 1e6 / n, 3),
        "numbers_re_judged": hits,
        "alerts_late_or_retracted": late,
        "alerts": len(alerts),
        # the final set (firing minus retracted, by dedup_key) against one engine's over every partition
        "final_differs_from_one_engine": len(set(_final(alerts).items()) ^ set(_final(one.drain()[0]).items())),
    }


def _final(alerts: list[Any]) -> dict[str, str]:
    return {key: a.kind for key, a in final_set(alerts).items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=int, default=150_000)
    p.add_argument("--numbers", type=int, default=2000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--workers", type=int, default=6, help="engines, each owning partitions p %% workers")
    p.add_argument("--per-flush", type=int, default=1250, help="capture records per flush")
    p.add_argument("--runs", type=int, default=2)
    p.add_argument(
        "--behind", type=float, default=3600.0, help="a second pass with worker 0 this far behind (capture seconds)"
    )
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = p.parse_args(argv)
    path = ensure_capture(args.records, args.numbers, args.seed)
    dec = msgspec.json.Decoder(Envelope)
    envelopes = [dec.decode(line) for line in path.read_bytes().splitlines() if line.strip()]
    best: dict[tuple[bool, float], dict[str, Any]] = {}
    for _ in range(args.runs):
        for behind in (0.0, args.behind):
            for on_time in (True, False):
                r = run(envelopes, args.workers, args.per_flush, on_time, behind)
                key = (on_time, behind)
                if key not in best or r["engine_us_per_record"] < best[key]["engine_us_per_record"]:
                    best[key] = r
                print(json.dumps(r), file=sys.stderr)
    out = {
        f"{'on_time' if on_time else 'late_only'}{'_behind' if behind else ''}": r
        for (on_time, behind), r in best.items()
    }
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
