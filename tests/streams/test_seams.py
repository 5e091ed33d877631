"""Contract tests of streams.seams: one per private name of Faust, aiokafka, rocksdict or
prometheus_client that notifguard uses, against the installed (locked) releases.

An upgrade that renames, removes or re-shapes one fails here, by name, before it can
break the worker's delivery guarantees in production.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Iterator, MutableMapping
from types import SimpleNamespace
from typing import Any

import aiokafka
import faust
import pytest
from aiokafka.structs import TopicPartition
from faust.transport.consumer import Fetcher
from faust.transport.drivers import aiokafka as aiokafka_driver
from prometheus_client import CollectorRegistry, Histogram

from detectors.settings import Settings
from streams import seams
from streams.config import WorkerConfig
from streams.topics import ADDRESS_INDEX_TABLE
from streams.worker import create_app

# Overridden methods: the parameters notifguard's override takes (a changed signature means
# the base class calls it differently now).
OVERRIDDEN: dict[tuple[str, str], tuple[type, list[str]]] = {
    ("faust Consumer", "_new_consumer_thread"): (aiokafka_driver.Consumer, ["self"]),
    ("faust Consumer", "_drain_messages"): (aiokafka_driver.Consumer, ["self", "fetcher"]),
    ("faust ConsumerThread", "_create_worker_consumer"): (
        aiokafka_driver.AIOKafkaConsumerThread,
        ["self", "transport"],
    ),
    ("faust ConsumerThread", "_highwaters"): (aiokafka_driver.AIOKafkaConsumerThread, ["self", "partitions"]),
    ("faust App", "_new_transport"): (faust.App, ["self"]),
}
# Methods called: the parameters notifguard passes.
CALLED: dict[tuple[str, str], tuple[type, list[str]]] = {
    ("faust Consumer", "_wait_next_records"): (aiokafka_driver.Consumer, ["self", "timeout"]),
    ("faust Consumer", "_to_message"): (aiokafka_driver.Consumer, ["self", "tp", "record"]),
    ("faust ConsumerThread", "_ensure_consumer"): (aiokafka_driver.AIOKafkaConsumerThread, ["self"]),
    ("faust Producer", "_ensure_producer"): (aiokafka_driver.Producer, ["self"]),
    ("faust Producer", "_new_producer"): (aiokafka_driver.Producer, ["self", "transactional_id"]),
    ("faust Producer", "_settings_default"): (aiokafka_driver.Producer, ["self"]),
    ("faust Producer", "_settings_auth"): (aiokafka_driver.Producer, ["self"]),
}


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The worker's app with the RocksDB store: built, never started (nothing connects)."""
    datadir = tmp_path_factory.mktemp("seams")
    yield create_app(WorkerConfig(rules=Settings(), datadir=str(datadir), store="rocksdb://"))


def _aiokafka_objects() -> dict[str, Any]:
    async def build() -> dict[str, Any]:
        consumer = aiokafka.AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1")
        consumer.assign([TopicPartition("t", 0)])
        producer = aiokafka.AIOKafkaProducer(bootstrap_servers="127.0.0.1:1")
        got = {
            "consumer": consumer,
            "producer": producer,
            "state": consumer._subscription.subscription.assignment.state_value(TopicPartition("t", 0)),
        }
        await consumer.stop()
        await producer.stop()
        return got

    return asyncio.run(build())


def _instances(app: Any) -> dict[str, Callable[[], Any]]:
    registry = CollectorRegistry()
    return {
        "faust Consumer": lambda: app.consumer,
        "faust Fetcher": lambda: Fetcher(app=app),
        "faust ConsumerThread": lambda: app.consumer._thread,
        "faust App": lambda: app,
        "faust TableManager": lambda: app.tables,
        "faust Producer": lambda: app.producer,
        "aiokafka AIOKafkaConsumer": lambda: _aiokafka_objects()["consumer"],
        "aiokafka AIOKafkaProducer": lambda: _aiokafka_objects()["producer"],
        "faust RocksDB Store": lambda: app.tables["numbers"].data,
        "prometheus_client Histogram": lambda: Histogram("h", "h", registry=registry),
    }


@pytest.mark.parametrize(("owner", "name"), sorted(seams.PRIVATE_NAMES), ids=lambda v: str(v).replace(" ", "-"))
def test_private_name_is_there(app: Any, owner: str, name: str) -> None:
    """Each private name exists on what notifguard uses it on, with the shape it relies on."""
    if (owner, name) in OVERRIDDEN or (owner, name) in CALLED:
        cls, params = {**OVERRIDDEN, **CALLED}[(owner, name)]
        assert callable(getattr(cls, name, None)), f"{owner}.{name} is gone ({seams.PRIVATE_NAMES[(owner, name)]})"
        got = list(inspect.signature(getattr(cls, name)).parameters)
        assert got[: len(params)] == params, f"{owner}.{name} takes {got} now, not {params}"
        return
    obj = _instances(app)[owner]()
    assert hasattr(obj, name), f"{owner} has no {name} any more ({seams.PRIVATE_NAMES[(owner, name)]})"


def test_every_private_name_has_its_owner_here(app: Any) -> None:
    owners = set(_instances(app))
    assert {owner for owner, _ in seams.PRIVATE_NAMES} <= owners


def test_the_shapes_the_helpers_rely_on(app: Any) -> None:
    """Beyond the names: the types and paths the helpers of streams.seams walk."""
    consumer = app.consumer
    assert type(consumer).__name__ == "BatchConsumer" and type(consumer).__module__ == "streams.seams"
    assert type(consumer._thread).__name__ == "BatchConsumerThread"
    assert dict(seams.committed_offsets(consumer)) == {}  # a mapping per TP, empty before any assignment
    assert seams.fetch_position(consumer, ("t", 0)) is None  # not started: no AIOKafkaConsumer, no position
    state = _aiokafka_objects()["state"]
    assert state.has_valid_position is False and "position" in dir(type(state))  # read only when valid
    store = app.tables["numbers"].data
    assert seams.has_partition_dbs(store) and not seams.store_opened(store)
    assert isinstance(seams.key_index(store), MutableMapping)
    assert seams.table_recovery(app) is None or hasattr(seams.table_recovery(app), "active_remaining")
    fresh = create_app(WorkerConfig(rules=Settings()))
    assert not seams.producer_created(fresh)
    assert fresh.producer is not None and seams.producer_created(fresh)
    h = Histogram("h", "h", buckets=(1, 2), registry=CollectorRegistry())
    seams.observe_n(h, 1.5, 3)
    assert h._upper_bounds == [1, 2, float("inf")] and [b.get() for b in h._buckets] == [0, 3, 0]
    assert h._sum.get() == 4.5


def test_the_worker_s_faust_free_parts_import_no_faust() -> None:
    """The pipeline, the committers' protocol, the offsets, the table stores and the metrics load
    without Faust, aiokafka or mode (what their unit tests and the offline tools rely on)."""
    import subprocess
    import sys

    code = (
        "import sys; import streams.worker.pipeline, streams.worker.committer, streams.worker.offsets, "
        "streams.seams, streams.metrics, streams.tablestore; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'faust', 'aiokafka', 'mode'}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env={"PYTHONPATH": "."}
    ).stdout
    assert out.strip() == "[]"


def test_no_other_module_uses_private_names() -> None:
    """ruff's SLF001 is on for the project; only streams/seams.py (and tests) may be exempt."""
    import tomllib
    from pathlib import Path

    config = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    lint = config["tool"]["ruff"]["lint"]
    assert "SLF001" in lint["select"]
    exempt = {path for path, codes in lint.get("per-file-ignores", {}).items() if "SLF001" in codes}
    assert exempt <= {"streams/seams.py", "tests/**"}, exempt


def test_recovery_completed_is_set_once_after_the_first_seek_to_the_committed_offsets() -> None:
    """BatchConsumer hands no input record over before Recovery.completed: Faust sets it after
    on_recovery_completed (or _resume_streams, without tables) has awaited perform_seek, and never
    clears it; later assignments stop the flow at revocation and resume it after their seek."""
    from faust.tables.recovery import Recovery

    for method in (Recovery.on_recovery_completed, Recovery._resume_streams):
        source = inspect.getsource(method)
        assert "perform_seek()" in source and "self.completed.set()" in source, method.__name__
        assert source.index("perform_seek()") < source.index("self.completed.set()"), method.__name__
        assert source.index("self.completed.set()") < source.index("resume_flow()"), method.__name__
    assert "completed.clear()" not in inspect.getsource(Recovery)
    assert "stop_flow" in inspect.getsource(
        faust.App._on_partitions_revoked
    )  # a later rebalance stops the flow (BatchConsumer then hands nothing over)


def test_table_buffers_held_after_recovery_are_applied(app: Any, monkeypatch: Any) -> None:
    """seams.apply_table_buffers: what Faust's recovery loop buffers once recovery is over (the
    GlobalTable's changelog partitions, read in its active branch) is applied by
    Recovery.flush_buffers, and the buffers emptied; not during a recovery."""
    recovery = app.tables.recovery
    table = app.tables[ADDRESS_INDEX_TABLE]
    assert table.is_global
    applied: list[list[Any]] = []
    monkeypatch.setattr(table, "apply_changelog_batch", lambda batch: applied.append(list(batch)))
    recovery.buffers[table].append("event")
    recovery.in_recovery = True
    seams.apply_table_buffers(app)
    assert applied == [] and recovery.buffers[table] == ["event"]
    recovery.in_recovery = False
    seams.apply_table_buffers(app)
    assert applied == [["event"]] and not recovery.buffers[table]


def test_faust_gives_each_input_partition_s_owner_that_partition_of_the_address_index_changelog(app: Any) -> None:
    """streams.tablestore.TableLinks rests on it: Faust's assignor co-partitions the address index's
    changelog with the inputs (the same partition count, the same subscribers), so the worker
    active for its partition P (which Faust does not follow) is the owner of input partition P,
    the partition's only writer, and every other worker follows P as a standby."""
    from aiokafka.coordinator.protocol import ConsumerProtocolMemberMetadata
    from faust.assignor.client_assignment import ClientAssignment, ClientMetadata

    rt = app.notifguard
    partitions = 6
    links = app.tables[ADDRESS_INDEX_TABLE].changelog_topic.get_topic_name()
    numbers = app.tables["numbers"].changelog_topic.get_topic_name()
    topics = [*rt.inputs, rt.pipeline.relinks, links, numbers]
    cluster = SimpleNamespace(partitions_for_topic=lambda t: set(range(partitions)) if t in topics else None)
    members = {
        f"w{i}": ConsumerProtocolMemberMetadata(
            0,
            topics,
            ClientMetadata(
                # (each as this app's own url: on_assignment reads an assignment as this app's)
                assignment=ClientAssignment(actives={}, standbys={}),
                url=str(app.conf.canonical_url),
                changelog_distribution={},
            ).dumps(),
        )
        for i in range(3)
    }
    assignment = app.assignor.assign(cluster, members)
    owners: dict[int, str] = {}
    for member, protocol in assignment.items():
        app.assignor.on_assignment(protocol)
        actives, standbys = app.assignor.assigned_actives(), app.assignor.assigned_standbys()
        mine = {tp.partition for tp in actives if tp.topic == rt.inputs[0]}
        assert mine and all({tp.partition for tp in actives if tp.topic == t} == mine for t in rt.inputs)
        assert {tp.partition for tp in standbys if tp.topic == links} == set(range(partitions)) - mine
        owners.update(dict.fromkeys(mine, member))
    assert sorted(owners) == list(range(partitions))
