"""The wiring: the Faust app, its tables, timer, rebalance callbacks and web pages around `Runtime`.

`create_app(config)` builds everything and starts nothing (no import-time side
effects); `notifguard worker` runs it with `Worker`. Nothing else in the
worker knows how Faust is put together.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
from collections.abc import Mapping
from typing import Any

import faust

from streams import seams
from streams.config import WorkerConfig
from streams.kafka_security import faust_settings
from streams.liveness import ShutdownWatchdog, describe_stacks
from streams.topics import ADDRESS_INDEX_TABLE
from streams.worker.exactly_once import TransactionManager
from streams.worker.offsets import TP
from streams.worker.runtime import Runtime

log = logging.getLogger("notifguard.worker")
_RAW: dict[str, Any] = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
GC_THRESHOLDS = (50_000, 20, 100)  # gc.set_threshold in a running worker (see create_app)
App = seams.make_app_class(TransactionManager)


class Worker(faust.Worker):
    """faust.Worker whose stop is bounded: `shutdown_timeout_s` after SIGTERM, SIGINT or the end of
    its run (a crash included), streams.liveness.ShutdownWatchdog logs what the process is
    waiting for and exits with status 70, whatever Faust's stop_and_shutdown is doing."""

    def __init__(self, app: faust.App, *, shutdown_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.watchdog = ShutdownWatchdog(shutdown_timeout_s, describe=lambda: describe_stacks(self.loop))

    def _on_sigterm(self) -> None:
        self.watchdog.arm("SIGTERM")
        super()._on_sigterm()

    def _on_sigint(self) -> None:
        self.watchdog.arm("SIGINT")
        super()._on_sigint()

    def on_worker_shutdown(self) -> None:
        reason = self.crash_reason or getattr(self.app, "crash_reason", None)
        self.watchdog.arm(f"a crash ({reason!r})" if reason is not None else "the end of its run")
        super().on_worker_shutdown()


def _batch_counter(sensor: Any) -> Any:
    """Report records sent in batches (FaustSender.send_changelog) as the sensor reports each `send`:
    counted per topic, and one record in LATENCY_SAMPLE timed (a batch's records share its latency)."""
    from streams.faust_sensor import LATENCY_SAMPLE

    metrics = getattr(sensor, "metrics", None)
    if metrics is None:
        return None
    sent = 0

    def count(topic: str, n: int, started: float, fut: asyncio.Future[Any]) -> None:
        nonlocal sent
        exc = None if fut.cancelled() else fut.exception()
        if fut.cancelled() or exc is not None:
            metrics.produce_errors.labels(topic).inc(n)
            log.error("producing %d records to %s failed: %r", n, topic, exc)
            return
        metrics.produced.labels(topic).inc(n)
        timed = -(-(sent + n) // LATENCY_SAMPLE) + (-sent // LATENCY_SAMPLE)  # records 0, 8, 16, ... of these
        sent += n
        elapsed = time.monotonic() - started
        for _ in range(timed):
            metrics.produce_seconds.observe(elapsed)

    return count


# The Faust and aiokafka releases whose private internals the worker was written and
# tested against (its consumer and producer subclasses, the offset bookkeeping fed in
# bulk, the commit arithmetic OffsetTracker.runs works around): pinned in pyproject.toml.
FAUST_TESTED = ("0.15.3", "0.14.0")


def check_versions(faust_version: str, aiokafka_version: str) -> None:
    """Refuse to run on a Faust or aiokafka the worker was not tested with: its at-least-once
    and exactly-once guarantees rest on their private internals."""
    if (faust_version, aiokafka_version) != FAUST_TESTED:
        raise RuntimeError(
            f"notifguard's worker needs faust-streaming {FAUST_TESTED[0]} and aiokafka {FAUST_TESTED[1]} "
            f"(found {faust_version} and {aiokafka_version}): it relies on their internals for its "
            "delivery guarantees; see pyproject.toml"
        )


def faust_env_overrides(settings: Mapping[str, Any], env: Mapping[str, str]) -> list[tuple[str, str]]:
    """(variable, setting) of each Faust environment variable set in `env` that would override
    a setting the worker passes: Faust's Settings read the environment before their arguments
    (BROKER_SESSION_TIMEOUT=10 beats broker_session_timeout=60), so the one settings object of
    notifguard would not be the one in force."""
    from faust.types.settings import Settings

    out = []
    for name in settings:
        env_name = getattr(Settings.__dict__.get(name), "env_name", None)
        if env_name and env_name in env:
            out.append((env_name, name))
    return out


def create_app(config: WorkerConfig) -> faust.App:
    """The notifguard Faust app; nothing connects or starts until it runs."""
    import aiokafka

    check_versions(faust.__version__, aiokafka.__version__)
    settings: dict[str, Any] = dict(
        broker=f"kafka://{config.bootstrap}",
        store=config.store,
        datadir=config.datadir,
        topic_partitions=config.partitions,
        topic_replication_factor=config.replication_factor,
        processing_guarantee=config.processing_guarantee,
        table_standby_replicas=config.standby_replicas,
        consumer_auto_offset_reset="earliest",
        stream_wait_empty=False,
        autodiscover=False,
        web_enabled=True,
        web_host=config.web_host,
        web_bind=config.web_host,
        web_port=config.web_port,
        web_tables_enabled=False,
        web_router_enabled=False,
        web_graph_enabled=False,
        web_stats_enabled=False,
        broker_commit_interval=1.0,
        broker_session_timeout=config.session_timeout_s,
        broker_heartbeat_interval=min(3.0, config.session_timeout_s / 3),
        # Changelog records go out in batches of their own (Runtime._send_changelog): 16 KiB
        # (Faust's default) would cut a flush of state into a hundred produce requests.
        producer_max_batch_size=256 * 1024,
        broker_max_poll_records=config.batch_max,
        **faust_settings(config.kafka),  # TLS and SASL (streams.kafka_security)
    )
    shadowed = faust_env_overrides(settings, os.environ)
    if shadowed:
        raise ValueError(
            "Faust reads these environment variables over the worker's own settings: "
            + ", ".join(f"{env} (would override {name})" for env, name in shadowed)
            + "; unset them and set notifguard's settings instead (NOTIFGUARD_WORKER_*, the settings file)"
        )
    app = App(config.app_id, **settings)
    numbers_table = app.Table("numbers", partitions=config.partitions, key_type=bytes, value_type=bytes)
    # Faust follows (as a standby) only the address index's changelog partitions a worker is not
    # active for (synchronize_all_active_partitions=True would follow those too, but it broke
    # restarts: with it a SIGKILLed at-least-once worker's successor lost records,
    # tests/streams/worker/test_incidents.py, 1 run in 3). So each number's links of an address
    # are kept under (address, P), P the number's input partition, in changelog partition P
    # (streams.tablestore.TableLinks): Faust's assignor co-partitions the changelog with the
    # inputs (the same partition count and subscribers), so the worker active for changelog
    # partition P is the one of input partition P, its only writer, and every other worker
    # follows P (docs/topics.md 2.6a). The records read while following are applied at least
    # once a tick (seams.apply_table_buffers).
    links_table = app.GlobalTable(
        ADDRESS_INDEX_TABLE,
        partitions=config.partitions,
        key_type=bytes,
        value_type=bytes,
    )
    rt = Runtime(app, config, numbers_table, links_table)
    app.notifguard = rt  # type: ignore[attr-defined]
    app.fetch_settings = (config.fetch_max_wait_ms, config.fetch_min_bytes)  # type: ignore[attr-defined]
    from streams.faust_sensor import install as install_faust_sensor

    sensor = install_faust_sensor(app, rt.metrics.registry, rt.topics)  # Faust's own signals as notifguard_ metrics
    rt.sender.count_produced = _batch_counter(sensor)
    # The inputs and the relinks topic (docs/topics.md 2.6a): one subscription, so that Faust's
    # assignor co-partitions them (the same partition count): relinks partition i goes to the
    # owner of input partition i, whose numbers it re-judges.
    inputs = app.topic(*rt.inputs, rt.pipeline.relinks, **_RAW)

    # Subscribed through the conductor (acks enabled); the records come to
    # rt.on_messages a fetched batch at a time (see streams.seams.BatchConsumer), not through a stream.
    app.topics.add(inputs)
    app.batch_topics = frozenset((*rt.inputs, rt.pipeline.relinks))  # type: ignore[attr-defined]
    app.batch_handler = rt.on_messages  # type: ignore[attr-defined]

    @app.timer(config.tick_interval_s)
    async def tick() -> None:
        await rt.run_tick()

    async def revoked(app: Any, revoked: set[TP], **_: Any) -> None:
        await rt.on_revoked(set(revoked))

    async def assigned(app: Any, assigned: set[TP], **_: Any) -> None:
        rt.on_assigned(set(assigned))

    app.on_partitions_revoked.connect(revoked)  # type: ignore[arg-type]
    app.on_partitions_assigned.connect(assigned)  # type: ignore[arg-type]

    @app.task
    async def mark_started() -> None:
        rt.started = True
        # The cyclic GC's young generation fills every 700 allocations, and a
        # batch allocates a few per record: its collections (and the older
        # generations' passes over everything Faust, aiokafka and the caches
        # hold) cost ~1.5-3 us a record. What was built at start-up is
        # long-lived (frozen: never scanned again); the rest is scanned 70x less often.
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)

    if config.incidents:  # the incidents computation (streams/worker/incidents.py), in a thread of its own
        from streams.worker.incidents import WorkerIncidents

        incidents = WorkerIncidents(config, rt.metrics.registry, crash=rt.crash_soon)

        @app.task
        async def start_incidents() -> None:
            loop = asyncio.get_running_loop()

            def crash(exc: BaseException) -> None:  # from the incidents thread
                loop.call_soon_threadsafe(rt.crash_soon, exc)

            incidents.crash = crash
            incidents.start()

        async def stop_incidents(app: Any, **_: Any) -> None:
            await asyncio.get_running_loop().run_in_executor(None, incidents.stop)

        app.on_before_shutdown.connect(stop_incidents)  # type: ignore[arg-type]

    @app.page("/health")
    async def health(web: Any, request: Any) -> Any:
        code, body = rt.health()
        return web.json(body, status=code)

    @app.page("/live")
    async def live(web: Any, request: Any) -> Any:
        code, body = rt.live()
        return web.json(body, status=code)

    @app.page("/metrics")
    async def metrics(web: Any, request: Any) -> Any:
        rt.liveness_status()  # the liveness gauges as of now, even if the timer stopped
        return web.bytes(rt.metrics.exposition(), content_type="text/plain; version=0.0.4")

    return app
