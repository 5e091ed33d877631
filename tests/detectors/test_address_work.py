"""Work per contract change (issue 10, item 8): a change costs what it changes, not the number's history.

Counts, not seconds (bench.address_changes measures the time): entries read, links built, links
handed to the address index. And the index kept change by change is the one rebuilt from scratch.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import detectors.engine
from detectors.engine import Engine, _links
from detectors.expiry import CHANGES_BYTES
from detectors.holdings import AddressSet, Holding, derive
from detectors.settings import Settings
from detectors.state import AddressIndex, Link
from tests.detectors.test_expiry import long_change_logs
from tests.detectors.test_properties import histories
from tests.factories import change, feed, mail, new_engine


class _CountingList(list[AddressSet]):
    """A holding's address list that counts the entries read from it."""

    reads = 0

    def __getitem__(self, i: Any) -> Any:
        _CountingList.reads += 1
        return super().__getitem__(i)

    def __iter__(self) -> Any:
        for a in super().__iter__():
            _CountingList.reads += 1
            yield a


def test_the_current_address_is_found_without_reading_every_address():
    n = 4096
    h = Holding("K-1", "C-1", "o2", 0, 3, "s")
    h.addresses = _CountingList(AddressSet(10 * i, i.to_bytes(12, "big"), f"e{i}") for i in range(n))
    for t, expected in ((10 * n, n - 1), (10 * (n - 1), n - 1), (10 * 1000 + 5, 1000), (10 * 7, 7), (0, 0)):
        _CountingList.reads = 0
        assert h.current_address(t) == expected.to_bytes(12, "big")
        assert _CountingList.reads <= 2 + 2 * n.bit_length()  # a binary search, not a walk
    _CountingList.reads = 0
    assert h.current_address(-1) is None and _CountingList.reads <= 2 + 2 * n.bit_length()


class _CountingIndex(AddressIndex):
    """An address index that counts the links it is handed."""

    __slots__ = ("handed",)

    def __init__(self) -> None:
        super().__init__()
        self.handed = 0

    def replace(
        self, msisdn_ref: str, old: list[tuple[bytes, Link]], new: list[tuple[bytes, Link]], partition: int = -1
    ) -> None:
        self.handed += len(old) + len(new)
        super().replace(msisdn_ref, old, new, partition)


@pytest.mark.python_core
def test_an_address_change_builds_and_hands_the_index_one_link_whatever_the_history(monkeypatch):
    built = itertools.count()

    def counted_link(*args: Any) -> Link:
        next(built)
        return Link(*args)

    monkeypatch.setattr(detectors.engine, "Link", counted_link)
    index = _CountingIndex()
    counter = itertools.count()
    engine = Engine(Settings(), new_id=lambda: f"alert-{next(counter)}", index=index)
    n = 200  # with the 2 * 50 below, within the change log's byte budget: nothing is capped (test_expiry's)
    feed(
        engine,
        [
            change("contract_started", 0, id="s", email="a0@x.de"),
            *(change("email_changed", 1 + i, id=f"c{i}", email=f"a{1 + i}@x.de") for i in range(n)),
        ],
    )
    engine.flush(0)
    ((ref, state),) = engine.numbers.items()
    addresses = engine.holdings(ref, state)[-1].addresses
    assert len(addresses) == n + 1 and engine.stats.capped["changes"] == 0
    before_links, before_handed = next(built), index.handed
    more = 50
    feed(engine, [change("email_changed", 1000 + i, id=f"d{i}", email=f"b{i}@x.de") for i in range(more)])
    feed(engine, [change("email_changed", 2000 + i, id=f"r{i}", email=f"a{i}@x.de") for i in range(more)])  # seen
    engine.flush(0)
    # one link per new address (none for an address the holding had before), each handed over once
    assert next(built) - before_links - 1 <= more
    assert index.handed - before_handed <= more
    # the engine's holdings grew in place: the open holding's addresses were not copied at each change
    assert engine.holdings(ref, state)[-1].addresses is addresses and len(addresses) == n + 1 + 2 * more
    assert engine.holdings(ref, state) == derive(state.changes) and engine.stats.capped["changes"] == 0
    assert sorted((a, k) for a, ks in engine.index.items() for k in ks) == sorted(_links(ref, derive(state.changes)))


def test_closing_a_holding_hands_over_each_of_its_links_once():
    index = _CountingIndex()
    engine = Engine(Settings(), new_id=lambda: "a", index=index)
    n = 100
    feed(
        engine,
        [
            change("contract_started", 0, id="s", email="a0@x.de"),
            *(change("email_changed", 1 + i, id=f"c{i}", email=f"a{1 + i}@x.de") for i in range(n)),
        ],
    )
    engine.flush(0)
    before = index.handed
    feed(engine, [change("contract_ended", 500, id="end")])
    engine.flush(0)
    ((ref, state),) = engine.numbers.items()
    assert index.handed - before == 2 * (n + 1)  # its links as they were, then as they are (ended)
    links = sorted((a, k) for a, ks in engine.index.items() for k in ks)
    assert links == sorted(_links(ref, derive(state.changes))) and all(k.end is not None for _, k in links)


def _rebuilt(engine: Engine) -> dict[bytes, list[Link]]:
    index = AddressIndex()
    for ref, state in engine.numbers.items():  # type: ignore[attr-defined]
        index.replace(ref, [], _links(ref, derive(state.changes)))
    return _normal(index)


def _normal(index: AddressIndex) -> dict[bytes, list[Link]]:
    return {addr: sorted(links, key=repr) for addr, links in index.items()}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories())
def test_the_index_kept_change_by_change_is_the_one_rebuilt_from_scratch(records):
    """In any arrival order (late records change the log out of order, the rest in order)."""
    engine = new_engine()
    feed(engine, records)
    engine.flush(0)
    assert _normal(engine.index) == _rebuilt(engine)


@pytest.mark.parametrize("ordered", [True, False])
def test_the_index_is_the_rebuilt_one_after_many_changes_on_one_number(ordered):
    kinds = ["email_changed"] * 6 + [
        "email_verified",
        "holder_changed",
        "contract_ended",
        "contract_started",
        "ported_out",
        "ported_in",
    ]
    records = []
    for i in range(600):
        kind = kinds[(i * 7919) % len(kinds)]
        fields: dict[str, Any] = {"contract_id": f"K-{(i // 40) % 3}"}
        if kind in ("contract_started", "ported_in", "holder_changed"):
            fields["customer_id"] = f"C-{i % 4}"
        if kind in ("contract_started", "ported_in", "email_changed", "email_verified"):
            fields["email"] = f"a{(i * 31) % 90}@x.de"
        t = i if ordered else (i * 7919) % 600
        records.append(change(kind, t, id=f"e{i}", **fields))
    engine = new_engine()
    feed(engine, records)
    engine.flush(0)
    assert _normal(engine.index) == _rebuilt(engine)


@pytest.mark.python_core
def test_a_log_within_its_budget_is_measured_without_a_python_call_per_change(monkeypatch):
    """detectors.expiry.cap runs at every record; a number's log longer than a few changes
    was measured change by change at each of its records (a flood: ~330 calls a record)."""
    from detectors import expiry

    calls = itertools.count()
    measure = expiry._change_bytes

    def counted(c: Any) -> int:
        next(calls)
        return measure(c)

    monkeypatch.setattr(expiry, "_change_bytes", counted)
    engine = new_engine()
    feed(
        engine,
        [
            change("contract_started", 0, id="s", email="a0@x.de"),
            *(change("email_changed", 1 + i, id=f"c{i}", email=f"a{1 + i}@x.de") for i in range(100)),
        ],
    )
    engine.flush(0)
    before = next(calls)
    feed(engine, [mail(f"a{i}@x.de", 200 + i, id=f"m{i}") for i in range(50)])
    engine.flush(0)
    assert next(calls) - before - 1 == 0 and engine.stats.capped["changes"] == 0


def _cut_by_sizes(changes: list[Any], budget: int) -> list[Any] | None:
    """_trim_changes as it was (9e852e2): each change measured with _change_bytes."""
    from detectors.expiry import _change_bytes, _kept_event_ids

    sizes = [_change_bytes(c) for c in changes]
    total = sum(sizes)
    if total <= budget:
        return None
    needed = _kept_event_ids(changes)  # the same rule; only the measuring differs
    drop: set[int] = set()
    for i, c in enumerate(changes):
        if total <= budget:
            break
        if c.event_id not in needed:
            drop.add(i)
            total -= sizes[i]
    return [c for i, c in enumerate(changes) if i not in drop]


@settings(max_examples=200, deadline=None)
@given(long_change_logs(), st.sampled_from([1024, 4096, CHANGES_BYTES]))
def test_a_log_is_cut_where_its_changes_sizes_say(log, budget):
    """_trim_changes measures the whole log at once: the same cut as measuring change by change."""
    from detectors.expiry import _trim_changes

    assert _trim_changes(log, budget) == _cut_by_sizes(log, budget)
