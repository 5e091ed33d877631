"""Read co-partitioned input topics in event-time order while catching up on a backlog.

Records of each input topic-partition wait in a queue; the oldest head (by
Kafka record timestamp, which producers set to event_time) goes to the
engine, unless a topic-partition that still has unread records (it lags
behind its highwater) has nothing queued: then its next record could be
older, and the others wait. So after a restart or an outage no notification
is judged ahead of the contract changes that precede it, however far one
topic ran ahead; and since the merge spans all partitions of the worker, the
address links one number's changes create are in place before another
number's mail is judged. Queues over `max_queue` ask the consumer to pause
that topic-partition.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from heapq import heapify, heappop, heapreplace
from typing import Any


class Merger:
    def __init__(self, topics: tuple[str, ...], max_queue: int = 100_000) -> None:
        self.topics = topics
        self.max_queue = max_queue
        self._queues: dict[tuple[str, int], deque[tuple[int, Any]]] = {}
        self.queued = 0

    def push(self, topic: str, partition: int, ts: int, item: Any) -> None:
        q = self._queues.get((topic, partition))
        if q is None:
            q = self._queues[(topic, partition)] = deque()
        q.append((ts, item))
        self.queued += 1

    def extend(self, topic: str, partition: int, items: Iterable[tuple[int, Any]]) -> None:
        """Queue a fetched batch of one topic-partition: (timestamp, item) pairs in offset order."""
        q = self._queues.get((topic, partition))
        if q is None:
            q = self._queues[(topic, partition)] = deque()
        before = len(q)
        q.extend(items)
        self.queued += len(q) - before

    def ready(self, lagging: Callable[[str, int], bool]) -> Iterator[Any]:
        """Queued items in timestamp order, as far as they can be known to be next.

        A heap of the queues' heads (ties: the queue registered first); a queue
        that runs empty is asked about its lag before anything else is taken.
        """
        heap: list[tuple[int, int, deque[tuple[int, Any]], str, int]] = []
        for i, ((topic, partition), q) in enumerate(self._queues.items()):
            if q:
                heap.append((q[0][0], i, q, topic, partition))
            elif lagging(topic, partition):
                return  # its next record may be older than anything queued
        heapify(heap)
        while heap:
            _, i, q, topic, partition = heap[0]
            item = q.popleft()[1]
            self.queued -= 1
            if q:
                heapreplace(heap, (q[0][0], i, q, topic, partition))
                yield item
            else:
                heappop(heap)
                yield item
                if lagging(topic, partition):
                    return

    def expect(self, topic: str, partition: int) -> None:
        """Register an assigned topic-partition, so that its lag is asked about before it delivers."""
        self._queues.setdefault((topic, partition), deque())

    def queued_in(self, topic: str, partition: int) -> int:
        """How many items of this topic-partition wait."""
        q = self._queues.get((topic, partition))
        return len(q) if q is not None else 0

    def over_limit(self) -> set[tuple[str, int]]:
        return {tp for tp, q in self._queues.items() if len(q) >= self.max_queue}

    def forget(self, partition: int) -> list[Any]:
        """Drop a revoked partition's queues; returns what was queued (unacked, re-read later)."""
        dropped: list[Any] = []
        for t in self.topics:
            q = self._queues.pop((t, partition), None)
            if q:
                self.queued -= len(q)
                dropped.extend(item for _, item in q)
        return dropped
