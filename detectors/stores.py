"""Where the engine keeps per-number state: the store interfaces, and a partitioned one in dicts.

Apart from detectors/engine.py, which is compiled (detectors.native): Protocols stay interpreted.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from detectors.state import NumberState


class NumberStore(Protocol):
    """Where per-number state lives: a dict offline, a table in the worker."""

    def get(self, ref: str) -> NumberState | None: ...
    def __setitem__(self, ref: str, state: NumberState) -> None: ...


@runtime_checkable
class PartitionedStore(NumberStore, Protocol):
    """A NumberStore that keeps each number's state in the input partition of its records (the
    worker's table: the input topics are co-partitioned, docs/topics.md 1.1). The engine reads
    and writes a number for a record through these, with that record's partition, so the store
    needs no map of its own from numbers to partitions (the worker's kept every number it saw).
    Sweeps (Engine.sweep) write through __setitem__: their caller knows the partition swept.
    """

    def get_in(self, ref: str, partition: int) -> NumberState | None: ...
    def put_in(self, ref: str, state: NumberState, partition: int) -> None: ...


class PartitionedDict:
    """A PartitionedStore in dicts, partition -> ref -> state: one worker's numbers table, for an
    engine run as a worker's outside Kafka (benchmarks, tests)."""

    def __init__(self) -> None:
        self.parts: dict[int, dict[str, NumberState]] = {}

    def get(self, ref: str) -> NumberState | None:
        for states in self.parts.values():
            if ref in states:
                return states[ref]
        return None

    def __setitem__(self, ref: str, state: NumberState) -> None:
        for states in self.parts.values():
            if ref in states:
                states[ref] = state

    def get_in(self, ref: str, partition: int) -> NumberState | None:
        return self.parts.get(partition, {}).get(ref)

    def put_in(self, ref: str, state: NumberState, partition: int) -> None:
        self.parts.setdefault(partition, {})[ref] = state
