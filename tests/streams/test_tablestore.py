"""The worker's table layer: batched writes to the local store, the numbers' cache of absent states."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from detectors.codec import decode_number, encode_number, number_key
from detectors.state import Mark, NumberState
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
            b"1",
            b"2",
            b"3",
            None,
        ]
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


# ---- issue 10, item 9: the numbers' partitions are kept for what is to be written, not for every number seen


def test_a_number_is_read_and_written_in_the_partition_it_is_given(tmp_path: Path) -> None:
    table = RawRocksTable(tmp_path)
    try:
        for p in range(4):
            table._db(p)
        numbers = TableNumbers(table)
        refs = [f"{i:024x}" for i in range(1000)]
        for i, ref in enumerate(refs):
            assert numbers.get_in(ref, i % 4) is None
            numbers.put_in(ref, NumberState(max_t=i), i % 4)
        assert table.reads == len(refs)  # one read each, in its own partition's database
        assert not numbers.absent  # written since
        written = numbers.flush()
        assert sorted((p, k) for p, k, _ in written) == sorted((i % 4, number_key(ref)) for i, ref in enumerate(refs))
        assert numbers.partition_of == {}  # nothing left to write: nothing kept
        numbers.cache.clear()
        reads = table.reads
        got = numbers.get_in(refs[7], 3)
        assert got is not None and got.max_t == 7 and table.reads == reads + 1
        assert decode_number(store_get(table, 3, number_key(refs[7])) or b"").max_t == 7
        assert numbers.get_in("f" * 24, 2) is None and "f" * 24 in numbers.absent
        try:
            numbers.put_in(refs[0], NumberState(), -1)
        except ValueError:
            pass
        else:
            raise AssertionError("a state written without its partition")
    finally:
        table.close()


def test_a_revocation_drops_the_revoked_partitions_dirty_states_and_the_clean_cache(tmp_path: Path) -> None:
    table = RawRocksTable(tmp_path)
    try:
        numbers = TableNumbers(table)
        numbers.put_in("a" * 24, NumberState(max_t=1), 0)
        numbers.put_in("b" * 24, NumberState(max_t=2), 1)
        numbers.flush()
        assert set(numbers.cache) == {"a" * 24, "b" * 24}
        numbers.put_in("c" * 24, NumberState(max_t=3), 0)
        numbers.put_in("d" * 24, NumberState(max_t=4), 1)
        numbers.forget_partitions({1})
        assert numbers.dirty == {"c" * 24} and set(numbers.cache) == {"c" * 24}
        assert [(p, k) for p, k, _ in numbers.flush()] == [(0, number_key("c" * 24))]
        got = numbers.get_in("a" * 24, 0)  # read again from the store
        assert got is not None and got.max_t == 1
    finally:
        table.close()


def test_the_worker_keeps_no_partition_for_numbers_it_has_written(monkeypatch: Any) -> None:
    """The worker's fake tables (memory store): every number's state goes to its input partition,
    also when its records wait in the grace buffer across many flushes, and what the worker keeps
    per number for that is gone once the state is written: it does not grow with the numbers seen."""
    from detectors.timefmt import parse_rfc3339
    from tests.factories import change, mail
    from tests.streams.worker.test_runtime import DAY, as_batches, run, runtime

    wall = [parse_rfc3339("2027-01-01T00:00:00Z")]
    rt, consumer, _ = runtime(partitions=4, wall=wall)
    msisdns = [f"+49176{i:08d}" for i in range(120)]
    records = [
        r
        for i, m in enumerate(msisdns)
        for r in (
            change("contract_started", i, id=f"s{i}", msisdn=m, email=f"n{i}@x.de"),
            mail(f"n{i}@x.de", DAY + i, id=f"n{i}", msisdn=m),
            change("email_changed", 2 * DAY + i, id=f"c{i}", msisdn=m, email=f"o{i}@x.de"),
        )
    ]
    flushed: list[tuple[int, bytes]] = []
    kept: list[int] = []
    waiting: list[int] = []
    flush = rt.numbers.flush

    def observed() -> list[tuple[int, bytes, bytes | None]]:
        out = flush()
        flushed.extend((p, k) for p, k, _ in out)
        kept.append(len(rt.numbers.partition_of))
        waiting.append(rt.engine.pending_count())
        return out

    monkeypatch.setattr(rt.numbers, "flush", observed)
    run(rt, consumer, as_batches(records, 4, ["contracts.changes", "notifications.outbound"], batch=5), wall)
    assert sum(len(v) for v in consumer.acked.values()) == len(records) and rt.engine.pending_count() == 0
    ref = rt.engine.pseudonymiser.msisdn_ref
    expected = {number_key(ref(m)): int(m[-1]) % 4 for m in msisdns}  # as_batches' partition of a key
    assert {k for _, k in flushed} == set(expected)
    assert all(expected[k] == p for p, k in flushed)
    assert max(waiting) > 100  # records waited in the grace buffer across flushes
    assert len(kept) > 50 and max(kept) == 0  # after every flush: nothing kept for the numbers written
    assert rt.numbers.partition_of == {} and len(rt.numbers.cache) == len(msisdns)
