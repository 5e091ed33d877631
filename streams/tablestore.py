"""Engine state in Faust tables: per-number states and the address index, with explicit partitions.

Writes bypass Faust's `table[key] = value` (which needs the current stream
event to pick the changelog partition, and sends each write through Faust's
one-message-at-a-time producer buffer): the worker knows each number's input
partition, coalesces writes, and hands them to the Kafka producer in batches
before it acknowledges the records they came from.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Final

import msgspec

from detectors.codec import NumberCodec, decode_links, encode_links, number_key
from detectors.mailers import Entry, kept
from detectors.state import Link, NumberState
from streams import seams


def store_put(table: Any, partition: int, key: bytes, value: bytes | None) -> None:
    """Write (or delete, value None) one key in a table's local store, in an explicit partition.

    Faust's RocksDB store keeps one database per partition and picks it from
    the current stream event; writes made outside an event (timers, batched
    flushes) name the partition themselves, as the changelog does.
    """
    store = table.data
    db = seams.partition_db(store, partition)
    if db is None:  # the memory store: one dict
        if value is None:
            store.data.pop(key, None)
        else:
            store.data[key] = value
        return
    if value is None:
        db.delete(key)
        seams.key_index(store).pop(key, None)
    else:
        db.put(key, value)
        seams.key_index(store)[key] = partition


def store_put_many(table: Any, writes: list[tuple[int, bytes, bytes | None]]) -> None:
    """store_put of each (partition, key, value or None): with rocksdict, one write batch per
    partition (a put each cost ~2x the CPU of a batch entry; a flush writes thousands)."""
    store = table.data
    if not seams.has_partition_dbs(store) or not getattr(store, "use_rocksdict", False):
        for partition, key, value in writes:
            store_put(table, partition, key, value)
        return
    from rocksdict import WriteBatch

    key_index = seams.key_index(store)
    batches: dict[int, Any] = {}
    for partition, key, value in writes:
        batch = batches.get(partition)
        if batch is None:
            batch = batches[partition] = WriteBatch(raw_mode=True)
        if value is None:
            batch.delete(key)
            key_index.pop(key, None)
        else:
            batch.put(key, value)
            key_index[key] = partition
    for partition, batch in batches.items():
        seams.partition_db(store, partition).write(batch)


def store_get(table: Any, partition: int, key: bytes) -> bytes | None:
    """Read one key of a table's local store from the database of its partition.

    One RocksDB get: Faust's own lookup tries each partition's database in
    turn for a key it has not seen yet (most address lookups find nothing).
    """
    store = table.data
    db = seams.partition_db(store, partition)
    if db is None:  # the memory store: one dict
        raw: bytes | None = store.data.get(key)
        return raw
    value: bytes | None = db.get(key)
    return value


class TableNumbers:
    """ref -> NumberState over a Faust table (key: detectors.codec.number_key, value: the
    stored form of detectors.codec); dirty states flushed in batches.

    A number's state lives in the changelog partition of its input records (the inputs are
    co-partitioned). The engine reads and writes a number for a record with that record's
    partition (get_in, put_in: a detectors.engine.PartitionedStore), and the sweeper says
    which partition it sweeps, so `partition_of` holds only the numbers written since the last
    flush (and those a sweep visited meanwhile): what changed, not every number ever seen.
    """

    def __init__(self, table: Any, cache_max: int = 200_000) -> None:
        self.table = table
        self.codec = NumberCodec()
        self.cache: dict[str, NumberState] = {}
        self.dirty: set[str] = set()
        # ref -> partition of the states to write at the next flush (emptied by it)
        self.partition_of: dict[str, int] = {}
        self.cache_max = cache_max
        # Numbers of this worker's partitions known to have no stored state. Only this
        # worker writes them (through put_in) while it owns their partition; a
        # number's records ask for it at every record of its first grace period, and
        # a miss is a RocksDB read per partition (Faust's lookup of an unknown key).
        self.absent: set[str] = set()
        # The memory store (tests, demos) is one dict for all partitions: the partition of each
        # key written there, for the sweeper's walk of one partition. As large as that store's
        # own dict of states; a RocksDB store has a database per partition and needs none.
        self.memory_partitions: dict[bytes, int] = {}

    def get(self, ref: str) -> NumberState | None:
        """The number's state; its partition is not known here: Faust's lookup on a cache miss."""
        return self._get(ref, self.partition_of.get(ref))

    def get_in(self, ref: str, partition: int) -> NumberState | None:
        """The state of a number of input partition `partition` (one of this worker's)."""
        return self._get(ref, partition)

    def _get(self, ref: str, partition: int | None) -> NumberState | None:
        state = self.cache.get(ref)
        if state is None:
            if ref in self.absent:
                return None
            if partition is None:  # not one of ours (or not known): Faust's lookup
                raw = self.table.data.get(number_key(ref))
            else:
                raw = store_get(self.table, partition, number_key(ref))
            if raw is None:
                if partition is not None:
                    if len(self.absent) >= self.cache_max:
                        self.absent.clear()
                    self.absent.add(ref)
                return None
            state = self.cache[ref] = self.codec.decode(raw)
        return state

    def __setitem__(self, ref: str, state: NumberState) -> None:
        """Write a number whose partition is in `partition_of` by the next flush (the sweeper's)."""
        self.cache[ref] = state
        self.dirty.add(ref)
        self.absent.discard(ref)

    def put_in(self, ref: str, state: NumberState, partition: int) -> None:
        """Write the state of a number of input partition `partition` (at the next flush)."""
        if partition < 0:
            raise ValueError(f"number state written without its input partition ({partition})")
        self.partition_of[ref] = partition
        self.cache[ref] = state
        self.dirty.add(ref)
        self.absent.discard(ref)

    def flush(self) -> list[tuple[int, bytes, bytes | None]]:
        """Write dirty states to the local store; returns the changelog records to send."""
        encode, cache, partition_of = self.codec.encode, self.cache, self.partition_of
        out: list[tuple[int, bytes, bytes | None]] = [
            (partition_of[ref], number_key(ref), encode(ref, cache[ref])) for ref in self.dirty
        ]
        store_put_many(self.table, out)
        if not seams.has_partition_dbs(self.table.data):
            self.memory_partitions.update((key, partition) for partition, key, _ in out)
        self.dirty.clear()
        partition_of.clear()  # (what is left: numbers a sweep visited and left unchanged)
        if len(self.cache) > self.cache_max:
            self.cache.clear()  # clean entries only: dirty ones were just written
        return out

    def forget_partitions(self, partitions: set[int]) -> None:
        """After a revocation: another worker owns these numbers now.

        Which partition a clean cached state is of is not kept: they all go (rebalances are
        rare; a state is read again at its number's next record).
        """
        self.absent.clear()  # (of any partition: rebalances are rare)
        for ref, partition in list(self.partition_of.items()):
            if partition in partitions:
                self.dirty.discard(ref)
                self.codec.forget(ref)
                del self.partition_of[ref]
        kept = {ref: self.cache[ref] for ref in self.dirty}
        self.cache.clear()
        self.cache.update(kept)

    def __len__(self) -> int:
        return sum(1 for key in self.table.data if not is_mailers_key(key))

    def values(self) -> Iterator[NumberState]:
        for key, raw in self.table.data.items():
            if not is_mailers_key(key):
                yield self.codec.decode(raw)


# A mailers entry's key in the numbers table: this prefix, the address hash and the input partition
# (2 bytes): never the 12 bytes of a number key (streams/sweeper.py walks only those), and one key
# per partition in the memory store, which is one dict for all partitions.
MAILERS_PREFIX: Final = b"m"
_MAILERS_KEY_BYTES: Final = 1 + 12 + 2  # (an address hash: detectors.privacy.REF_BYTES)


def mailers_key(addr: bytes, partition: int) -> bytes:
    return MAILERS_PREFIX + addr + partition.to_bytes(2, "big")


def is_mailers_key(key: bytes) -> bool:
    return len(key) == _MAILERS_KEY_BYTES and key.startswith(MAILERS_PREFIX)


class TableMailers:
    """The mailers index of the worker's partitions (detectors.mailers: addr and input partition
    -> the numbers that mailed it) as rows of the numbers table, in the changelog partition of
    the numbers that wrote them: they move with those numbers on a rebalance, are recovered
    with them, and are flushed with them (Changelog of streams.worker.pipeline), before the acks.

    Only this worker writes its partitions' entries, so they are cached (read once, then kept
    until the cache is full or a partition is revoked): noting a mail is a dict lookup.
    """

    def __init__(self, numbers: TableNumbers, cache_max: int = 200_000) -> None:
        self.table = numbers.table
        self.cache: dict[tuple[bytes, int], Entry] = {}
        self.dirty: set[tuple[bytes, int]] = set()
        self.cache_max = cache_max
        self._encode = msgspec.msgpack.Encoder().encode
        self._decode = msgspec.msgpack.Decoder(Entry).decode

    def get_in(self, addr: bytes, partition: int) -> Entry | None:
        key = (addr, partition)
        entry = self.cache.get(key)
        if entry is None:
            raw = store_get(self.table, partition, mailers_key(addr, partition))
            entry = self.cache[key] = {} if raw is None else self._decode(raw)
        return entry or None

    def put_in(self, addr: bytes, partition: int, entry: Entry) -> None:
        key = (addr, partition)
        self.cache[key] = entry
        self.dirty.add(key)

    def flush(self) -> list[tuple[int, bytes, bytes | None]]:
        """Write dirty entries to the local store; returns the changelog records to send."""
        cache, encode = self.cache, self._encode
        out: list[tuple[int, bytes, bytes | None]] = [
            (
                partition,
                mailers_key(addr, partition),
                encode(cache[(addr, partition)]) if cache[(addr, partition)] else None,
            )
            for addr, partition in self.dirty
        ]
        store_put_many(self.table, out)
        self.dirty.clear()
        if len(cache) > self.cache_max:
            cache.clear()  # clean entries only: dirty ones were just written
        return out

    def expire_rows(self, keys: list[bytes], partition: int, floor: int) -> int:
        """Drop the numbers before `floor` (detectors.mailers.kept) from the entries of these keys
        of one partition (the sweeper's walk: an address no number mails again would keep its
        entry for ever, as only a new mail rewrites it); returns how many entries changed."""
        changed = 0
        for key in keys:
            addr = key[1:-2]
            entry = self.get_in(addr, partition)
            if entry is None:
                continue
            left = kept(entry, floor)
            if len(left) != len(entry):
                self.put_in(addr, partition, left)
                changed += 1
        return changed

    def forget_partitions(self, partitions: set[int]) -> None:
        """After a revocation: another worker writes these partitions' entries now."""
        for key in [k for k in self.cache if k[1] in partitions]:
            del self.cache[key]
            self.dirty.discard(key)


# An address-index entry's key: the address hash and the input partition of the numbers whose links
# it holds (2 bytes, as mailers_key), so that the memory store (one dict) keeps one key per partition.
_LINKS_KEY_BYTES: Final = 12 + 2  # (an address hash: detectors.privacy.REF_BYTES)


def links_key(addr: bytes, partition: int) -> bytes:
    return addr + partition.to_bytes(2, "big")


def is_links_key(key: bytes) -> bool:
    return len(key) == _LINKS_KEY_BYTES


# Written in changelog partition P once the entries of P's numbers are in the table (a partition
# written from its first record on, or filled from its numbers' states: streams.sweeper.LinksRebuild);
# never 14 bytes long, so never read as an entry.
_BUILT_PREFIX: Final = b"built"


def built_key(partition: int) -> bytes:
    return _BUILT_PREFIX + partition.to_bytes(2, "big")


class TableLinks:
    """addr -> list[Link] over a Faust GlobalTable (every worker sees every address), as one entry
    per input partition: key (addr, P) holds the links of the numbers of input partition P, in
    changelog partition P (a detectors.state.PartitionedLinks).

    The table's changelog is co-partitioned with the inputs (Faust's assignor: same partition
    count, same subscribers), so changelog partition P has one writer, the worker of input
    partition P; every other worker follows it as a standby. A read merges an address's N
    entries (in partition order: detectors.verdicts.judge does not depend on it); a write puts
    back only the entries of the partitions it was made for (AddressIndex.replace says, through
    `own`, whose links it changes), so a link of another partition's number is never written
    here, and no worker's write overwrites another's.

    Not cached across flushes (other workers update it too): touched addresses are kept (merged,
    as the engine changes them) until the flush writes their entries back. What is cached is
    the decoding of stored bytes (same bytes, same links), as a fresh list each time since
    callers change the lists they get.
    """

    def __init__(self, table: Any, partitions: int, decoded_max: int = 100_000) -> None:
        self.table = table
        self.partitions = partitions
        # addr -> its links (merged) as the engine changed them since the last flush
        self.touched: dict[bytes, list[Link]] = {}
        # addr -> msisdn_ref -> the input partition whose entry holds that number's links
        self.owner: dict[bytes, dict[str, int]] = {}
        # addr -> the partitions whose entries to write at the flush
        self.writes: dict[bytes, set[int]] = {}
        self.built_now: set[int] = set()  # partitions whose built mark the flush writes
        self.decoded: dict[bytes, tuple[Link, ...]] = {}
        self.decoded_max = decoded_max

    def _decode(self, raw: bytes) -> tuple[Link, ...]:
        links = self.decoded.get(raw)
        if links is None:
            if len(self.decoded) >= self.decoded_max:
                self.decoded.clear()
            links = self.decoded[raw] = tuple(decode_links(raw))
        return links

    def _entries(self, addr: bytes) -> Iterator[tuple[int, tuple[Link, ...]]]:
        """(partition, links) of each stored entry of the address, in partition order."""
        store = self.table.data
        db_for = seams.partition_dbs(store)
        for partition in range(self.partitions):
            key = addr + partition.to_bytes(2, "big")  # (links_key)
            raw = store.data.get(key) if db_for is None else db_for(partition).get(key)
            if raw is not None:
                yield partition, self._decode(raw)

    def _load(self, addr: bytes) -> list[Link] | None:
        links = self.touched.get(addr)
        if links is not None:
            return links
        merged: list[Link] = []
        for _, entry in self._entries(addr):
            merged.extend(entry)
        return merged or None

    def own(self, addr: bytes, msisdn_ref: str, partition: int) -> None:
        """The links of number `msisdn_ref` of input partition `partition` in `addr` are about to
        change (AddressIndex.replace): that partition's entry is written at the flush."""
        if partition < 0:
            raise ValueError(f"address links changed without their number's input partition ({partition})")
        owner = self.owner.get(addr)
        if owner is None:
            owner = self.owner[addr] = {}
            merged: list[Link] = []
            for p, entry in self._entries(addr):
                merged.extend(entry)
                for link in entry:
                    owner[link.msisdn_ref] = p
            self.touched[addr] = merged
            self.writes[addr] = set()
        owner[msisdn_ref] = partition
        self.writes[addr].add(partition)

    def built(self, partition: int) -> bool:
        """Does the table hold the links of every number of input partition `partition`? (No: a
        partition of a deployment upgraded from the table keyed by address alone, until
        streams.sweeper.LinksRebuild has filled it from the numbers' states.)"""
        return partition in self.built_now or store_get(self.table, partition, built_key(partition)) is not None

    def mark_built(self, partition: int) -> None:
        """It does (written with the flush, after the entries)."""
        self.built_now.add(partition)

    def get(self, addr: bytes, default: Any = None) -> Any:
        links = self._load(addr)
        return default if links is None else links

    def setdefault(self, addr: bytes, default: list[Link]) -> list[Link]:
        links = self._load(addr)
        if links is None:
            links = self.touched[addr] = default
        return links

    def __setitem__(self, addr: bytes, links: list[Link]) -> None:
        self.touched[addr] = links

    def __delitem__(self, addr: bytes) -> None:
        self.touched[addr] = []

    def __len__(self) -> int:
        return sum(1 for _ in self.items())

    def items(self) -> Iterator[tuple[bytes, list[Link]]]:
        """Each address and its links (merged) as stored; Faust's walk over every partition."""
        entries: dict[bytes, list[tuple[int, bytes]]] = {}
        for key, raw in self.table.data.items():
            if is_links_key(key):
                entries.setdefault(key[:-2], []).append((int.from_bytes(key[-2:], "big"), raw))
        for addr, raws in entries.items():
            yield addr, [link for _, raw in sorted(raws) for link in decode_links(raw)]

    def flush(self) -> list[tuple[int, bytes, bytes | None]]:
        """Write the touched entries to the local store; returns the changelog records to send.

        An address's entry of partition P gets the links (of the merged list the engine changed)
        of the numbers P owns: those of P's entry when it was read, and those changed for P."""
        out: list[tuple[int, bytes, bytes | None]] = []
        touched, owner = self.touched, self.owner
        for addr, partitions in self.writes.items():
            links, owners = touched[addr], owner[addr]
            for partition in sorted(partitions):
                own = [link for link in links if owners.get(link.msisdn_ref) == partition]
                out.append((partition, links_key(addr, partition), encode_links(own) if own else None))
        out.extend((partition, built_key(partition), b"1") for partition in sorted(self.built_now))
        store_put_many(self.table, out)
        self.built_now.clear()
        touched.clear()
        owner.clear()
        self.writes.clear()
        return out
