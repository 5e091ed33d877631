"""`notifguard worker` with faults injected, for the liveness tests on a real broker.

    python -m tests.streams.faulty_worker [notifguard arguments]

NOTIFGUARD_TEST_FAULTS: comma-separated faults, each active once the worker has
consumed NOTIFGUARD_TEST_FAULT_AFTER records (default 0):

- consumer-hangs: the consumer's next fetch never returns (the worker reads no more);
- stop-hangs: the commit Faust makes when the consumer stops never returns (what a
  broker that stopped answering does to it);
- tick-raises: the timer's tick raises;
- dies-on-event: the process kills itself (SIGKILL, as the OOM killer would) when the engine
  applies the record whose event_id is NOTIFGUARD_TEST_POISON_EVENT (a poison record); with
  the core's Python modules only (NOTIFGUARD_NATIVE=0: it patches the engine).
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

from streams import worker
from streams.worker import app as worker_app


def _armed(rt: Any, after: int) -> bool:
    return rt is not None and rt.consumed_total >= after


async def _forever() -> None:
    await asyncio.get_running_loop().create_future()


def install(faults: set[str], after: int) -> None:
    consumer_cls: Any = worker_app.App.batch_consumer
    runtime_cls: Any = worker.Runtime
    unknown = faults - {"consumer-hangs", "stop-hangs", "tick-raises", "dies-on-event"}
    if unknown:
        raise SystemExit(f"unknown faults: {sorted(unknown)}")

    if "consumer-hangs" in faults:
        wait_next_records = consumer_cls._wait_next_records

        async def hanging_fetch(self: Any, timeout: float) -> Any:
            if _armed(getattr(self.app, "notifguard", None), after):
                await _forever()
            return await wait_next_records(self, timeout)

        consumer_cls._wait_next_records = hanging_fetch

    if "stop-hangs" in faults:

        async def hanging_commit(self: Any) -> None:
            await _forever()

        consumer_cls.commit_and_end_transactions = hanging_commit

    if "dies-on-event" in faults:
        import signal

        import detectors
        from detectors.engine import Engine

        if detectors.NATIVE:  # compiled, Engine calls its own _apply (detectors.native)
            raise SystemExit("dies-on-event patches Engine._apply: run with NOTIFGUARD_NATIVE=0")
        poison = os.environ["NOTIFGUARD_TEST_POISON_EVENT"]
        engine_cls: Any = Engine
        apply = engine_cls._apply

        def dying_apply(self: Any, category: int, t: int, record: Any, *args: Any) -> Any:
            if getattr(record, "event_id", None) == poison:
                os.kill(os.getpid(), signal.SIGKILL)
            return apply(self, category, t, record, *args)

        engine_cls._apply = dying_apply

    if "tick-raises" in faults:
        tick = runtime_cls.tick

        async def raising_tick(self: Any) -> None:
            if _armed(self, after):
                raise RuntimeError("injected: tick-raises")
            await tick(self)

        runtime_cls.tick = raising_tick


if __name__ == "__main__":
    install(
        {f for f in os.environ.get("NOTIFGUARD_TEST_FAULTS", "").split(",") if f},
        int(os.environ.get("NOTIFGUARD_TEST_FAULT_AFTER", "0")),
    )
    from streams.cli import main

    sys.exit(main())
