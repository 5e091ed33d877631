"""The worker's expiry sweep (detectors/expiry.py): every number of its partitions, a slice per tick.

The engine says when a sweep is due (Engine.sweep_due, in event time); this
walks the numbers table of the worker's input partitions in key order, a
bounded number of keys per call, so the event loop is never held for long.
Each state is read through TableNumbers (its cache first, so a state changed
since the walk began is swept as it is now) and written back, if it changed,
by Engine.sweep: the next flush sends it to the changelog with everything else.
A revoked partition leaves the walk; a sweep due before the last one ended
restarts it at the newer time.
"""

from __future__ import annotations

from typing import Any

from detectors.codec import number_key
from detectors.engine import Engine
from streams import seams
from streams.tablestore import TableLinks, TableMailers, TableNumbers, is_mailers_key

_KEY_BYTES = len(number_key("00" * 12))  # number keys are fixed-size; Faust's metadata keys are not


class Sweeper:
    def __init__(
        self, engine: Engine, numbers: TableNumbers, batch: int = 2_000, mailers: TableMailers | None = None
    ) -> None:
        self.engine = engine
        self.numbers = numbers
        # the mailers index's rows in the same table (detectors.mailers): walked with the numbers,
        # the numbers before the sweep's past horizon dropped from them
        self.mailers = mailers
        self.batch = batch
        self.now: int | None = None
        self._todo: list[int] = []  # partitions left to walk, the current one first
        self._after: bytes | None = None  # the last key swept in the current partition
        self.visited = 0
        self.changed = 0

    @property
    def active(self) -> bool:
        return self.now is not None

    def start(self, now: int, partitions: set[int]) -> None:
        """Begin a sweep at event time `now` over the numbers of `partitions`."""
        self.now = now
        self._todo = sorted(partitions)
        self._after = None

    def forget(self, partitions: set[int]) -> None:
        """Revoked partitions: another worker sweeps them now."""
        if self._todo and self._todo[0] in partitions:
            self._after = None
        self._todo = [p for p in self._todo if p not in partitions]
        if not self._todo:
            self.now = None

    def step(self) -> int:
        """Sweep up to `batch` numbers; returns how many were visited (0: the sweep is over)."""
        if self.now is None:
            return 0
        visited = 0
        while self._todo and visited < self.batch:
            partition = self._todo[0]
            limit = self.batch - visited
            keys = _keys_after(self.numbers, partition, self._after, limit)
            states = []
            rows: list[bytes] = []
            for key in keys:
                if len(key) != _KEY_BYTES:
                    rows.append(key)
                    continue
                ref = key.hex()
                state = self.numbers.get_in(ref, partition)
                if state is None:
                    continue
                self.numbers.partition_of[ref] = partition  # where Engine.sweep writes it, if it changes
                states.append((ref, state))
            self.changed += self.engine.sweep(states, self.now, partition)  # one sweep (one set of horizons) a slice
            if rows and self.mailers is not None:
                self.mailers.expire_rows(rows, partition, self.engine.mailers.floor)  # (set by engine.sweep)
            visited += len(keys)
            if len(keys) < limit:  # the partition is done
                self._todo.pop(0)
                self._after = None
            else:
                self._after = keys[-1]
        self.visited += visited
        if not self._todo:
            self.now = None
        return visited


class LinksRebuild:
    """Fill the address index (TableLinks, keyed by address and input partition since
    "address-index-v2") from the states of the numbers of this worker's partitions, for each
    partition the table does not say is built: a deployment upgraded from the table keyed by the
    address alone starts with an empty one (docs/topics.md 2.6a, upgrading). A slice of `batch`
    numbers per tick and per fetched batch (Pipeline, which holds the records meanwhile), as
    the sweeper walks them, once the tables are recovered; each number's links go in through
    Engine.index_number (an upsert: twice is once), and the partition is marked built at the
    end of its walk. A revoked partition leaves the walk; its next owner walks it again.
    """

    def __init__(self, engine: Engine, numbers: TableNumbers, links: TableLinks, batch: int = 5_000) -> None:
        self.engine = engine
        self.numbers = numbers
        self.links = links
        self.batch = batch
        self.todo: list[int] = []  # partitions left to walk, the current one first
        self._after: bytes | None = None  # the last key walked in the current partition
        self.indexed = 0

    def start(self, partitions: set[int]) -> None:
        """Walk those of `partitions` the table does not say are built."""
        self.todo = sorted(p for p in partitions if not self.links.built(p))
        self._after = None

    def forget(self, partitions: set[int]) -> None:
        if self.todo and self.todo[0] in partitions:
            self._after = None
        self.todo = [p for p in self.todo if p not in partitions]

    @property
    def active(self) -> bool:
        return bool(self.todo)

    def step(self) -> int:
        """Index up to `batch` numbers; returns how many keys were walked (0: nothing left)."""
        walked = 0
        while self.todo and walked < self.batch:
            partition = self.todo[0]
            limit = self.batch - walked
            keys = _keys_after(self.numbers, partition, self._after, limit)
            for key in keys:
                if len(key) != _KEY_BYTES:
                    continue  # (a mailers row)
                ref = key.hex()
                state = self.numbers.get_in(ref, partition)
                if state is not None:
                    self.engine.index_number(ref, state, partition)
                    self.indexed += 1
            walked += len(keys)
            if len(keys) < limit:  # the partition is done
                self.links.mark_built(partition)
                self.todo.pop(0)
                self._after = None
            else:
                self._after = keys[-1]
        return walked


def _keys_after(numbers: TableNumbers, partition: int, after: bytes | None, limit: int) -> list[bytes]:
    """Up to `limit` number keys and mailers keys (streams.tablestore.mailers_key) of one
    partition's store, in key order, after `after`."""
    store: Any = numbers.table.data
    if not seams.has_partition_dbs(store):
        # the memory store (tests): one dict for all partitions, so a key's partition is
        # the one this worker last wrote it in (or is about to)
        part, written = numbers.partition_of.get, numbers.memory_partitions.get
        keys = sorted(
            k
            for k in store.data
            if (after is None or k > after)
            and (
                (len(k) == _KEY_BYTES and part(k.hex(), written(k)) == partition)
                or (is_mailers_key(k) and int.from_bytes(k[-2:], "big") == partition)
            )
        )
        return keys[:limit]
    out: list[bytes] = []
    it = seams.partition_db(store, partition).iter()
    if after is None:
        it.seek_to_first()
    else:
        it.seek(after)
        if it.valid() and it.key() == after:
            it.next()
    while it.valid() and len(out) < limit:
        key = it.key()
        if isinstance(key, bytes) and (len(key) == _KEY_BYTES or is_mailers_key(key)):
            out.append(key)
        it.next()
    return out
