"""The worker's incidents computation: `streams.incidents.IncidentsProcess` on the worker's feed.

Each flush of the pipeline sends every breach-class alert (IncidentSettings.joins) to the
single-partition topic `<app_id>-incident-alerts` beside the alerts topic, in the same
flush (exactly_once: in the same transaction), so the feed holds an alert exactly when
the alerts topic does (read_committed). Every worker runs an `IncidentsProcess` subscribed
to that feed in the consumer group `<app_id>-incidents`: the one partition goes to one
worker, which rebuilds the aggregator from `<app_id>-incidents-members` and the incidents
topic, and then does what `notifguard incidents run` does, poll by poll (the same code:
the members topic keeps the state, every step is idempotent, counts are a function of
the set of dedup_keys). When that worker dies, the group gives the partition to another.

The clients are kafka-python's (blocking), so the process runs in a thread of its own;
whatever ends that thread while the worker runs crashes the worker (a restart starts it
again from the committed offset of the feed).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from streams.config import WorkerConfig
from streams.incidents import IncidentMetrics, IncidentsProcess
from streams.topics import incident_feed_topic, incidents_id

log = logging.getLogger("notifguard.incidents")


class WorkerIncidents:
    """The thread that runs the worker's IncidentsProcess; its metrics are on the worker's registry."""

    def __init__(self, config: WorkerConfig, registry: Any, crash: Callable[[BaseException], None]) -> None:
        self.config = config
        self.metrics = IncidentMetrics(registry)
        self.crash = crash
        self.process: IncidentsProcess | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="notifguard-incidents", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        c = self.config
        process = None
        try:
            process = self.process = IncidentsProcess(
                c.bootstrap,
                c.rules,
                c.incident_settings,
                app_id=incidents_id(c.app_id),
                wall_clock=c.incidents_clock == "wall",
                metrics=self.metrics,
                security=c.kafka,
                source=incident_feed_topic(c.app_id),
                session_timeout_s=c.session_timeout_s,  # as the worker's own group
            )
            process.start()
            log.info("incidents: %s -> %s", incident_feed_topic(c.app_id), c.rules.topics.incidents)
            while not self._stop.is_set():
                started = time.monotonic()
                n = process.step()
                if n:
                    log.info("published %d incident record(s)", n)
                self._stop.wait(c.incidents_step_s - (time.monotonic() - started))  # (WorkerConfig.incidents_step_s)
        except BaseException as exc:
            if not self._stop.is_set():
                log.critical("the incidents computation failed; stopping the worker: %r", exc, exc_info=exc)
                self.crash(exc)
        finally:
            if process is not None:
                try:
                    process.close()
                except Exception as exc:  # closing after a failure: the failure was reported
                    log.debug("closing the incidents clients: %r", exc)
