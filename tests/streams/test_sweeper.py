"""The worker's expiry sweep over a numbers table: slices, partitions, revocation; RocksDB and memory stores."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from detectors.codec import encode_number, number_key
from detectors.engine import Engine
from detectors.settings import Settings
from detectors.state import Mark, NumberState
from streams.sweeper import Sweeper
from streams.tablestore import TableNumbers

DAY = 86_400_000_000
NOW = 1_000 * DAY


class RocksTable:
    """The shape of a Faust table over its RocksDB store: one database per partition."""

    def __init__(self, root: Path) -> None:
        from rocksdict import Rdict

        self.dbs: dict[int, Rdict] = {}
        self.root = root
        self.data = SimpleNamespace(_db_for_partition=self._db, get=self._get, _key_index={})

    def _db(self, partition: int):
        from rocksdict import Rdict

        if partition not in self.dbs:
            self.dbs[partition] = Rdict(str(self.root / f"p{partition}"))
        return self.dbs[partition]

    def _get(self, key: bytes):
        for db in self.dbs.values():
            value = db.get(key)
            if value is not None:
                return value
        return None

    def put(self, partition: int, key: bytes, value: bytes) -> None:
        self._db(partition)[key] = value

    def close(self) -> None:
        for db in self.dbs.values():
            db.close()


class MemoryTable:
    def __init__(self) -> None:
        self.data = SimpleNamespace(data={})
        self.data.get = self.data.data.get

    def put(self, partition: int, key: bytes, value: bytes) -> None:
        self.data.data[key] = value


def _ref(i: int) -> str:
    return f"{i:024x}"


def _old() -> NumberState:
    # seen ids two weeks old: past the 48 h dedup retention at NOW
    return NumberState(seen=[Mark(NOW - 14 * DAY, "e-old"), Mark(NOW - DAY, "e-new")], max_t=NOW - DAY)


def _fresh() -> NumberState:
    return NumberState(seen=[Mark(NOW - DAY, "e-new")], max_t=NOW - DAY)


@pytest.fixture(params=["rocksdb", "memory"])
def table(request, tmp_path):
    t = RocksTable(tmp_path) if request.param == "rocksdb" else MemoryTable()
    yield t
    if isinstance(t, RocksTable):
        t.close()


def _setup(table, layout: dict[int, list[int]], batch: int):
    numbers = TableNumbers(table)
    engine = Engine(Settings(), new_id=lambda: "x", numbers=numbers)
    for partition, ids in layout.items():
        for i in ids:
            state = _old() if i % 2 == 0 else _fresh()
            table.put(partition, number_key(_ref(i)), encode_number(state))
            if isinstance(table, MemoryTable):
                numbers.partition_of[_ref(i)] = partition  # the memory store knows no partitions
    return numbers, engine, Sweeper(engine, numbers, batch=batch)


def test_a_sweep_visits_every_number_of_its_partitions_in_slices_and_writes_back_what_changed(table):
    layout = {0: list(range(0, 7)), 3: list(range(10, 15)), 5: list(range(20, 22))}
    numbers, engine, sweeper = _setup(table, layout, batch=4)
    sweeper.start(NOW + 30_000_000, {0, 3})  # partition 5 is not this worker's
    steps = []
    while sweeper.active:
        steps.append(sweeper.step())
    assert all(n <= 4 for n in steps) and sum(steps) == 12
    swept = {_ref(i) for p in (0, 3) for i in layout[p] if i % 2 == 0}
    assert numbers.dirty == swept  # only the states that lost something are written back
    assert sweeper.changed == len(swept) == engine.stats.expired
    for ref in swept:
        assert [m.event_id for m in numbers.cache[ref].seen] == ["e-new"]
    records = numbers.flush()
    assert {(p, k.hex()) for p, k, _ in records} == {(p, _ref(i)) for p in (0, 3) for i in layout[p] if i % 2 == 0}


def test_a_revoked_partition_leaves_the_sweep(table):
    layout = {0: list(range(0, 6)), 1: list(range(10, 16))}
    numbers, _, sweeper = _setup(table, layout, batch=4)
    sweeper.start(NOW + 30_000_000, {0, 1})
    sweeper.step()  # partition 0, first four numbers
    sweeper.forget({0})
    while sweeper.active:
        sweeper.step()
    assert {int(r, 16) for r in numbers.dirty} == {0, 2, 10, 12, 14}
    sweeper.forget({1})
    assert not sweeper.active and sweeper.step() == 0


def test_a_sweep_drops_the_numbers_before_its_past_horizon_from_the_mailers_rows_of_its_partitions(table):
    """detectors.mailers in the worker: its rows in the numbers table are walked with the numbers;
    a row whose numbers all mailed before the sweep's past horizon is deleted, one that keeps some
    is rewritten, a row of another partition is left alone."""
    import msgspec

    from detectors.expiry import past_span
    from detectors.mailers import REFRESH_US
    from streams.tablestore import TableMailers, mailers_key

    numbers = TableNumbers(table)
    mailers = TableMailers(numbers)
    engine = Engine(Settings(), new_id=lambda: "x", numbers=numbers, mailers=mailers)
    now = NOW + 30_000_000
    horizon = now - past_span(Settings())  # (the sweep's event time is the watermark less grace already)
    old, recent = horizon - 2 * REFRESH_US, horizon + 1
    rows = {
        (b"a" * 12, 0): {"r1": old},
        (b"b" * 12, 0): {"r1": old, "r2": recent},
        (b"c" * 12, 1): {"r3": old},
    }
    for (addr, partition), entry in rows.items():
        table.put(partition, mailers_key(addr, partition), msgspec.msgpack.encode(entry))
    table.put(0, number_key(_ref(1)), encode_number(_fresh()))
    if isinstance(table, MemoryTable):
        numbers.partition_of[_ref(1)] = 0
    sweeper = Sweeper(engine, numbers, batch=2, mailers=mailers)
    sweeper.start(now, {0})
    while sweeper.active:
        sweeper.step()
    assert engine.mailers.floor == horizon
    written = {(p, k): v for p, k, v in mailers.flush()}
    assert written == {
        (0, mailers_key(b"a" * 12, 0)): None,
        (0, mailers_key(b"b" * 12, 0)): msgspec.msgpack.encode({"r2": recent}),
    }
