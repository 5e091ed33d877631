from streams.merge import Merger

T = ("changes", "outbound", "delivery")


def test_merges_in_timestamp_order_across_topics_and_partitions():
    m = Merger(T)
    m.push("outbound", 0, 30, "n30")
    m.push("changes", 1, 10, "c10")
    m.push("delivery", 0, 20, "d20")
    m.push("changes", 0, 40, "c40")
    assert list(m.ready(lambda t, p: False)) == ["c10", "d20", "n30", "c40"]
    assert m.queued == 0


def test_waits_for_a_lagging_topic_with_nothing_queued():
    m = Merger(T)
    m.expect("changes", 0)
    m.push("outbound", 0, 1000, "n1000")  # outbound ran ahead during a backlog
    lag = {"changes": True}
    assert list(m.ready(lambda t, p: lag.get(t, False))) == []
    m.push("changes", 0, 10, "c10")
    assert list(m.ready(lambda t, p: lag.get(t, False))) == ["c10"]  # changes may still have older ones
    lag["changes"] = False  # caught up with its highwater
    assert list(m.ready(lambda t, p: lag.get(t, False))) == ["n1000"]


def test_a_lagging_partition_holds_back_the_others_and_queues_report_their_limit():
    m = Merger(T, max_queue=2)
    m.expect("changes", 2)
    m.push("outbound", 1, 5, "a")
    m.push("outbound", 1, 6, "b")
    assert m.over_limit() == {("outbound", 1)}
    assert list(m.ready(lambda t, p: p == 2)) == []
    assert m.forget(1) == ["a", "b"] and m.queued == 0


def test_queued_in_counts_what_waits_per_topic_partition_and_extend_takes_any_iterable():
    m = Merger(T)
    m.extend("outbound", 0, iter([(5, "a"), (6, "b")]))
    m.push("changes", 0, 7, "c")
    assert (m.queued_in("outbound", 0), m.queued_in("changes", 0), m.queued_in("delivery", 3)) == (2, 1, 0)
    assert m.queued == 3
    assert list(m.ready(lambda t, p: False)) == ["a", "b", "c"]
    assert m.queued_in("outbound", 0) == 0 and m.queued == 0
