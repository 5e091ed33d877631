"""The worker's table layer: batched writes to the local store, the numbers' cache of absent states."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from detectors.state import Mark, NumberState, decode_number, encode_number, number_key
from streams.tablestore import TableNumbers, store_get, store_put_many


class RawRocksTable:
    """The shape of a Faust table over its rocksdict store (raw mode): one database per partition."""

    def __init__(self, root: Path) -> None:
        self.dbs: dict[int, Any] = {}
        self.root = root
        self.reads = 0
        self.data = SimpleNamespace(_db_for_partition=self._db, get=self._get, _key_index={}, use_rocksdict=True)

    def _db(self, partition: int) -> Any:
        from rocksdict import Options, Rdict

        if partition not in self.dbs:
            self.dbs[partition] = Rdict(str(self.root / f"p{partition}"), Options(raw_mode=True))
        db = self.dbs[partition]
        return SimpleNamespace(get=self._counted(db.get), write=db.write, put=db.put, delete=db.delete)

    def _counted(self, get: Any) -> Any:
        def counted(key: bytes) -> Any:
            self.reads += 1
            return get(key)
        return counted

    def _get(self, key: bytes) -> Any:  # Faust's lookup of a key it does not know: every partition
        for partition in list(self.dbs):
            value = self._db(partition).get(key)
            if value is not None:
                return value
        return None

    def close(self) -> None:
        for db in self.dbs.values():
            db.close()


def test_store_put_many_writes_and_deletes_per_partition_as_store_put_would(tmp_path: Path) -> None:
    table = RawRocksTable(tmp_path)
    try:
        store_put_many(table, [(0, b"a", b"1"), (3, b"b", b"2"), (0, b"c", b"3")])
        assert [store_get(table, p, k) for p, k in ((0, b"a"), (3, b"b"), (0, b"c"), (3, b"a"))] == [
            b"1", b"2", b"3", None]
        assert table.data._key_index == {b"a": 0, b"b": 3, b"c": 0}
        store_put_many(table, [(0, b"a", None), (3, b"b", b"22")])
        assert store_get(table, 0, b"a") is None and store_get(table, 3, b"b") == b"22"
        assert b"a" not in table.data._key_index
    finally:
        table.close()


def test_store_put_many_on_the_memory_store() -> None:
    table = SimpleNamespace(data=SimpleNamespace(data={}))
    store_put_many(table, [(1, b"k", b"v"), (2, b"gone", b"x")])
    store_put_many(table, [(2, b"gone", None)])
    assert table.data.data == {b"k": b"v"}


def test_numbers_read_their_own_partition_once_and_remember_what_is_absent(tmp_path: Path) -> None:
    table = RawRocksTable(tmp_path)
    try:
        for p in range(4):
            table._db(p)
        numbers = TableNumbers(table)
        numbers.partition_of["r1"] = 2
        assert numbers.get("r1") is None
        reads = table.reads
        assert reads == 1  # its partition's database only, not all four
        assert numbers.get("r1") is None and numbers.get("r1") is None
        assert table.reads == reads  # known absent: no more reads
        state = NumberState(seen=[Mark(5, "e1")])
        numbers["r1"] = state
        written = numbers.flush()
        assert [(p, k) for p, k, _ in written] == [(2, number_key("r1"))]
        numbers.cache.clear()  # as when the cache is over its size
        got = numbers.get("r1")
        assert got is not None and got.seen == [Mark(5, "e1")]
        assert decode_number(store_get(table, 2, number_key("r1")) or b"").seen == [Mark(5, "e1")]
    finally:
        table.close()


def test_numbers_of_other_partitions_are_not_remembered_absent_and_a_rebalance_forgets(tmp_path: Path) -> None:
    table = RawRocksTable(tmp_path)
    try:
        numbers = TableNumbers(table)
        assert numbers.get("theirs") is None  # partition unknown: Faust's lookup, not cached
        assert "theirs" not in numbers.absent
        numbers.partition_of["mine"] = 1
        assert numbers.get("mine") is None and "mine" in numbers.absent
        numbers.forget_partitions({0})
        assert not numbers.absent  # another worker may have written it meanwhile
        # ... and what it wrote (recovered from the changelog) is found again
        numbers.partition_of["mine"] = 1
        store_put_many(table, [(1, number_key("mine"), encode_number(NumberState(max_t=7)))])
        assert numbers.get("mine") is not None
    finally:
        table.close()

