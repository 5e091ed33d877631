"""Liveness of the worker: is it making progress while input waits for it? (issue 11, item 4)

Nothing here knows Faust or Kafka. `Liveness` is fed by streams.worker.runtime.Runtime:
progress events (records consumed, records acked, outputs delivered, offsets
committed) and, at each check, what waits for the worker (records unread on
the broker, records in the grace buffer, records acked but not committed)
and whether it is ready. It reports the worker *stalled* when input has
waited, with the worker ready, for `stall_after` seconds without any progress,
or when the timer (Runtime.tick) has not completed for as long.

Records in the grace buffer count as waiting: they are released at the latest
`idle_flush + grace` after the last record read (a silent input is idle after
idle_flush, topics.md 1.1), and the worker gives the bound at least that much
(`stall_after` is raised to it). Held records alone are therefore never a
stall; held records with nothing read, released or committed for longer than
they can legitimately be held are.

`ShutdownWatchdog` bounds how long a stopping worker may take: past its
bound it logs what the process was waiting for (`describe_stacks`) and ends
the process with `os._exit`. Records not acked are read again on restart,
so the hard exit loses nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("notifguard.liveness")

# What counts as progress (the `kind` of Liveness.progress)
CONSUMED = "records consumed"
ACKED = "records acked"
DELIVERED = "outputs delivered"
COMMITTED = "offsets committed"
INDEXED = "address index filled"  # (streams.sweeper.LinksRebuild: records wait meanwhile)

# Exit status of a worker whose stop outlived ShutdownWatchdog's bound (EX_SOFTWARE, sysexits.h).
EXIT_STOP_TIMEOUT = 70


@dataclass(frozen=True)
class Status:
    """One check of Liveness."""

    stalled: bool
    reason: str  # why it is stalled ("" when it is not)
    waiting: str  # what input waits for the worker ("" when none does)
    since_progress_s: float  # seconds since the last progress (since the start if none yet)
    last_progress: str  # the kind of the last progress ("" if none yet)
    last_progress_unix: float  # wall-clock time of the last progress (of the start if none yet)
    stall_after_s: float

    def as_dict(self) -> dict[str, object]:
        return {
            "stalled": self.stalled, "reason": self.reason, "waiting": self.waiting,
            "seconds_since_progress": round(self.since_progress_s, 1), "last_progress": self.last_progress,
            "stall_after_s": self.stall_after_s,
        }  # fmt: skip


class Liveness:
    """Progress of a worker against the input waiting for it; clocks injected (monotonic, wall)."""

    def __init__(
        self,
        stall_after_s: float,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        if stall_after_s <= 0:
            raise ValueError(f"stall_after_s must be > 0, not {stall_after_s}")
        self.stall_after = stall_after_s
        self._clock, self._wall = clock, wall
        now = clock()
        self._last = now  # monotonic time of the last progress (of the start)
        self._last_unix = wall()
        self._last_kind = ""
        self._waiting_since: float | None = None  # first check that found input waiting, ready
        self._ticked = now  # last completed timer run (or the first check while ready)
        self._was_ready = False

    def progress(self, kind: str) -> None:
        """The worker moved on: read records, acked records, delivered outputs, committed offsets."""
        self._last = self._clock()
        self._last_unix = self._wall()
        self._last_kind = kind

    def ticked(self) -> None:
        """The timer (Runtime.tick) completed a run."""
        self._ticked = self._clock()

    def check(self, *, ready: bool, unread: int = 0, pending: int = 0, uncommitted: int = 0) -> Status:
        """Stalled or not, now: `unread` records on the broker past the consumer's position, `pending` in the
        grace buffer, `uncommitted` acked but not committed; a worker not ready (recovering,
        rebalancing) is never stalled, and its time not ready does not count."""
        now = self._clock()
        waiting = ", ".join(
            f"{n} {what}"
            for n, what in (
                (unread, "records unread on the broker"),
                (pending, "records in the grace buffer"),
                (uncommitted, "records acked but not committed"),
            )
            if n > 0
        )
        reason = ""
        if not ready:
            self._waiting_since = None
            self._was_ready = False
        else:
            if not self._was_ready:  # the timer's silence while not ready does not count either
                self._was_ready = True
                self._ticked = max(self._ticked, now)
            if not waiting:
                self._waiting_since = None
            elif self._waiting_since is None:
                self._waiting_since = now
            if self._waiting_since is not None:
                quiet = now - max(self._last, self._waiting_since)
                if quiet >= self.stall_after:
                    reason = f"no progress for {quiet:.0f} s with input waiting ({waiting})"
            timer = now - self._ticked
            if not reason and timer >= self.stall_after:
                reason = f"the timer has not completed a run for {timer:.0f} s"
        return Status(
            stalled=bool(reason), reason=reason, waiting=waiting, since_progress_s=now - self._last,
            last_progress=self._last_kind, last_progress_unix=self._last_unix, stall_after_s=self.stall_after,
        )  # fmt: skip


def stall_bound(stall_after_s: float, idle_flush_s: float, grace_s: float, slack_s: float) -> float:
    """The stall bound a worker uses: `stall_after_s`, but never less than the longest a record may
    legitimately wait in the grace buffer (idle_flush + grace) plus `slack_s` (timer and flush periods)."""
    return max(stall_after_s, idle_flush_s + grace_s + slack_s)


# ------------------------------------------------------------------ stacks


def describe_stacks(loop: asyncio.AbstractEventLoop | None = None, limit: int = 8) -> str:
    """Where every thread is, and where every unfinished task of `loop` and of the threads' own
    loops (Faust's consumer thread) waits: each task's await chain, innermost frames last.

    Safe to call from another thread than the loops' (the watchdog's): the sets of
    tasks are copied, and a task finishing meanwhile only shortens the list.
    """
    out: list[str] = []
    threads = {t.ident: t for t in threading.enumerate()}
    loops: list[tuple[str, asyncio.AbstractEventLoop]] = [("", loop)] if loop is not None else []
    for ident, frame in sys._current_frames().items():  # noqa: SLF001 - CPython's, documented in sys
        thread = threads.get(ident)
        if thread is not None:  # a mode ServiceThread (Faust's consumer thread) runs a loop of its own
            thread_loop = getattr(getattr(thread, "service", None), "thread_loop", None)
            if isinstance(thread_loop, asyncio.AbstractEventLoop) and thread_loop is not loop:
                loops.append((f" of thread {thread.name}", thread_loop))
        if ident == threading.get_ident():
            continue
        out.append(f"thread {thread.name if thread is not None else ident}:")
        out += ["  " + line for line in "".join(traceback.format_stack(frame, limit=limit)).rstrip().splitlines()]
    for where, each in loops:
        out += _describe_tasks(each, where, limit)
    return "\n".join(out)


def _describe_tasks(loop: asyncio.AbstractEventLoop, where: str, limit: int) -> list[str]:
    out: list[str] = []
    tasks: list[asyncio.Task[object]] = []
    for _ in range(3):  # the set may change size while it is copied (another thread)
        try:
            tasks = [t for t in list(asyncio.all_tasks(loop)) if not t.done()]
            break
        except RuntimeError:
            continue
    for task in sorted(tasks, key=lambda t: t.get_name()):
        coro = task.get_coro()
        name = getattr(coro, "__qualname__", None) or repr(coro)
        out.append(f"task{where} {task.get_name()} ({name}):")
        for f in _await_chain(coro)[-limit:]:
            out.append(f"  {f.f_code.co_filename}:{f.f_lineno} in {f.f_code.co_name}")
        waiter = _awaiting(task)
        if waiter:
            out.append(f"  awaiting {waiter}")
    return out


def _await_chain(coro: object) -> list[Any]:
    """The frames of a suspended coroutine and of what it awaits, down to the innermost
    (Task.get_stack gives only the outermost frame of a suspended coroutine)."""
    frames: list[Any] = []
    while coro is not None and len(frames) < 100:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None) or getattr(coro, "ag_frame", None)
        if frame is not None:
            frames.append(frame)
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None) or getattr(coro, "ag_await", None)
    return frames


def _awaiting(task: asyncio.Task[object]) -> str:
    fut = getattr(task, "_fut_waiter", None)  # CPython's Task: the future it waits on
    if fut is None:
        return ""
    text = repr(fut)
    return text if len(text) <= 300 else text[:300] + "..."


# ------------------------------------------------------------------ shutdown


class ShutdownWatchdog:
    """Ends the process `bound_s` after `arm()` unless it has exited by then.

    A thread, not a task: it fires even if the event loop is blocked. When it
    fires it logs the reason it was armed for and `describe(...)` (what the
    process was waiting for), then calls `exit(EXIT_STOP_TIMEOUT)`
    (os._exit: no cleanup that could hang again).
    """

    def __init__(
        self,
        bound_s: float,
        describe: Callable[[], str] = describe_stacks,
        exit: Callable[[int], object] = os._exit,
    ) -> None:
        if bound_s <= 0:
            raise ValueError(f"the shutdown bound must be > 0 s, not {bound_s}")
        self.bound = bound_s
        self._describe = describe
        self._exit = exit
        self._armed = threading.Event()
        self._disarmed = threading.Event()
        self._reason = ""
        self._started = 0.0
        self._thread: threading.Thread | None = None
        self.fired = threading.Event()

    @property
    def armed(self) -> bool:
        return self._armed.is_set()

    def arm(self, reason: str) -> None:
        """Start the countdown (once: later calls keep the first deadline)."""
        if self._armed.is_set():
            return
        self._armed.set()
        self._reason = reason
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="notifguard-shutdown-watchdog", daemon=True)
        self._thread.start()

    def disarm(self) -> None:
        """The stop completed in time (tests; a process that exits needs no disarming)."""
        self._disarmed.set()

    def _run(self) -> None:
        if self._disarmed.wait(self.bound):
            return
        self.fired.set()
        try:
            waited = time.monotonic() - self._started
            log.critical(
                "the worker did not stop within %.0f s of %s (shutdown_timeout_s); exiting with status %d. "
                "Records not acknowledged are read again on restart. It was waiting for:\n%s",
                waited,
                self._reason,
                EXIT_STOP_TIMEOUT,
                self._describe(),
            )
            for handler in logging.getLogger().handlers:
                handler.flush()
        finally:
            self._exit(EXIT_STOP_TIMEOUT)
