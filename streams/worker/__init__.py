"""The streaming worker: the pure engine on Kafka, with its state in changelog-backed tables.

The parts, each readable on its own:

- `pipeline`: the record path with no Faust in it (arrival, engine, output queue, flush batch);
- `committer`: the `Committer` protocol and at-least-once delivery and acks;
- `exactly_once`: the exactly-once committer (one Kafka transaction per flush);
- `offsets`: the offset bookkeeping both committers use;
- `runtime`: batches, timer ticks, rebalances and liveness on Faust, around the pipeline;
- `app`: the wiring (`create_app`, `Worker`).

The private names of Faust, aiokafka, rocksdict and prometheus_client it
needs live in one module, streams.seams.
"""

from typing import Any

# Loaded on first use (PEP 562): importing a Faust-free part (streams.worker.pipeline, ...) does not
# load Faust through this package.
_EXPORTS = {
    "FAUST_TESTED": "streams.worker.app",
    "Worker": "streams.worker.app",
    "check_versions": "streams.worker.app",
    "create_app": "streams.worker.app",
    "ProduceFailed": "streams.worker.committer",
    "DeliveryTimeout": "streams.worker.runtime",
    "Runtime": "streams.worker.runtime",
    "TimerFailed": "streams.worker.runtime",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'streams.worker' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
