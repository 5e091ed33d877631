"""Crash-loop quarantine: a record the worker died on `limit` times is set aside as a dead letter.

A record that crashes the whole process (a fault in a C extension, the kernel's
OOM killer, anything that is not a Python exception the pipeline catches) is
read again after the restart, since its offset was never acknowledged, and
crashes the worker again: a crash loop that stops every partition behind it.
The journal remembers, across crashes, which input record the worker was
working on: before decoding each arriving record and before applying each
released one, its (topic, partition, offset) goes to a small memory-mapped file
in the worker's data directory (a store into shared memory, no system call:
the kernel keeps the page when the process dies, whatever kills it). At start,
a record found there "in flight" is charged one crash, in a JSON file beside it.
A record charged `limit` times is dead-lettered (`quarantined`) when it arrives,
and never reaches the engine again.

What it does not see: a crash while no record is in flight (a flush, a
rebalance), which is not a poison record's; and a crash on another worker
(counts live in this worker's data directory, the StatefulSet's volume).
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger("notifguard.quarantine")

_MARK = struct.Struct("<Bxxxiq")  # in flight (0/1), partition, offset
_TOPIC_AT = _MARK.size  # then the topic's index in `inputs`, one byte
_SIZE = 64
KEEP = 1_000  # crash counts kept (the oldest go first); a poison record needs only a few


class CrashJournal:
    """The record in flight, in a memory-mapped file, and the crashes charged to records."""

    def __init__(self, directory: str | os.PathLike[str], inputs: Sequence[str], limit: int) -> None:
        self.limit = limit
        self.inputs = tuple(inputs)
        self._index = {topic: i for i, topic in enumerate(self.inputs)}
        root = Path(directory)
        root.mkdir(parents=True, exist_ok=True)
        self.counts_path = root / "notifguard-crashes.json"
        self.counts: dict[tuple[str, int, int], int] = self._load_counts()
        marker = root / "notifguard-inflight"
        found = self._read_marker(marker)
        if found is not None:
            self.counts[found] = self.counts.get(found, 0) + 1
            self.counts = dict(list(self.counts.items())[-KEEP:])
            self._save_counts()
            log.error(
                "the worker died while working on %s[%s]@%s (crash %d of %d before it is quarantined)",
                *found,
                self.counts[found],
                limit,
            )
        with marker.open("r+b" if marker.exists() else "w+b") as f:
            f.truncate(_SIZE)
            self._mm = mmap.mmap(f.fileno(), _SIZE)
        self._mm[0] = 0
        self.quarantine = {k for k, n in self.counts.items() if n >= limit}

    def _read_marker(self, path: Path) -> tuple[str, int, int] | None:
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        if len(raw) < _SIZE or raw[0] != 1:
            return None
        _, partition, offset = _MARK.unpack_from(raw, 0)
        index = raw[_TOPIC_AT]
        if index >= len(self.inputs):
            return None
        return self.inputs[index], partition, offset

    def _load_counts(self) -> dict[tuple[str, int, int], int]:
        try:
            rows = json.loads(self.counts_path.read_text())
            return {(str(t), int(p), int(o)): int(n) for t, p, o, n in rows}
        except FileNotFoundError:
            return {}
        except (ValueError, TypeError) as exc:
            log.error("crash counts in %s unreadable (%s): starting afresh", self.counts_path, exc)
            return {}

    def _save_counts(self) -> None:
        tmp = self.counts_path.with_suffix(".tmp")
        tmp.write_text(json.dumps([[t, p, o, n] for (t, p, o), n in self.counts.items()]))
        tmp.replace(self.counts_path)

    def working_on(self, token: Any) -> None:
        """A record (or the engine's token: (record, arrival time)) is in flight from now."""
        rec = token[0] if type(token) is tuple else token
        mm = self._mm
        mm[_TOPIC_AT] = self._index[rec.topic]
        _MARK.pack_into(mm, 0, 1, rec.partition, rec.offset)

    def idle(self) -> None:
        """No record in flight (a batch or a tick is over)."""
        self._mm[0] = 0

    def crashes(self, topic: str, partition: int, offset: int) -> int:
        return self.counts.get((topic, partition, offset), 0)

    def close(self) -> None:
        self._mm.close()
