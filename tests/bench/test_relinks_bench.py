"""bench.relinks_bench on the cross-partition stories: what it counts, and the final set it compares."""

from __future__ import annotations

from bench.relinks_bench import run
from tests.pipelines import Shape, add_cross_partition_links, build_pipeline


def test_one_worker_behind_needs_the_on_time_relinks_and_the_counts_add_up():
    pipeline = build_pipeline(Shape(seed=104, numbers=240, days=3.0, partitions=2, p_family=0.5))
    add_cross_partition_links(pipeline)
    envelopes = pipeline.envelopes()
    behind = 4 * 86_400.0  # worker 0 reads each record after the others read the whole capture
    got = run(envelopes, 2, 100, True, behind)
    assert got["final_differs_from_one_engine"] == 0
    assert got["relinks"] > 0 and got["numbers_re_judged"] > 0
    assert got["receiver_lookups"] == got["relinks"] * 2  # every Relink, in each of the 2 partitions
    assert got["relink_records"] % 2 == 0 and got["relink_records"] <= 2 * 2 * got["flushes"]
    before = run(envelopes, 2, 100, False, behind)
    assert before["relinks"] == 0 and before["final_differs_from_one_engine"] > 0
