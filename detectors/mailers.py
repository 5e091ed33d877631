"""The mailers index: which numbers mailed an address within the past span, per input partition.

A late change that alters an address's links (a Relink, detectors.engine) re-judges the mails
to that address on other numbers from its event time on. Scanning every number's past for them
is what one offline engine could afford; the worker cannot (its numbers are in a table, spread
over partitions and workers). This index answers it instead: for an address (its keyed hash) and
an input partition, the numbers of that partition that mailed it, each with the event time of
its last mail as the index knows it.

It may over-approximate (a number whose mails to the address are gone from its past, a time
older than the last mail by up to REFRESH_US): `Engine.relinked` checks each candidate's past
as before. It never under-approximates: a number with a remembered e-mail to the address at or
after event time t is a candidate for t (tests/detectors/test_mailers.py holds that property).

The per-mail cost is one read of the entry: it is written only when the number is not in it or
its time is older than REFRESH_US behind the mail's; each write drops the numbers whose time is
before the floor (the past horizon of the engine's last sweep, detectors.expiry.Horizons.past),
whose mails a sweep has dropped from their past. Offline the store is a dict (MailerDict), which
a whole sweep also expires; in the worker it is rows of the numbers table in the changelog
partition of the numbers that wrote them (streams/tablestore.py TableMailers).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final, Protocol, runtime_checkable

# An entry's time of a number is rewritten only when a mail is this much newer (1 day of event
# time): a number writes its entry at most once a day per address, not at every mail (measured on
# the bench capture, 1 hour rewrote the entry at nearly every mail: a number's mails are days
# apart), and a candidate's time is at most this older than its last mail (`candidates` allows
# for it). What a larger value costs is more candidates for a rare Relink, each a look at the
# newest entries of its past; in the worker each write is a table row and a changelog record.
REFRESH_US: Final = 86_400_000_000

Entry = dict[str, int]  # msisdn_ref -> event time (µs) of its last mail to the address, within REFRESH_US


class MailerStore(Protocol):
    """Where the entries live: addr (keyed hash) and input partition -> Entry."""

    def get_in(self, addr: bytes, partition: int) -> Entry | None: ...
    def put_in(self, addr: bytes, partition: int, entry: Entry) -> None: ...


@runtime_checkable
class ExpirableMailers(MailerStore, Protocol):
    """A store that can be expired whole (the offline dict: a sweep there covers every number)."""

    def expire(self, floor: int) -> int: ...


class MailerDict:
    """The offline store: one dict, (addr, partition) -> Entry."""

    __slots__ = ("entries",)

    def __init__(self) -> None:
        self.entries: dict[tuple[bytes, int], Entry] = {}

    def get_in(self, addr: bytes, partition: int) -> Entry | None:
        return self.entries.get((addr, partition))

    def put_in(self, addr: bytes, partition: int, entry: Entry) -> None:
        if entry:
            self.entries[(addr, partition)] = entry
        else:
            self.entries.pop((addr, partition), None)

    def expire(self, floor: int) -> int:
        """Drop the numbers whose time is before `floor` (see `kept`); returns how many entries changed."""
        changed = 0
        for key, entry in list(self.entries.items()):
            left = kept(entry, floor)
            if len(left) != len(entry):
                self.put_in(*key, left)
                changed += 1
        return changed


class MailerIndex:
    """The rule of the index over a MailerStore: note a mail, list the candidates of a Relink."""

    __slots__ = ("floor", "store")

    def __init__(self, store: MailerStore | None = None) -> None:
        self.store: MailerStore = store if store is not None else MailerDict()
        # the past horizon of the engine's last sweep: numbers before it are dropped when an entry
        # is written (their mails are gone from their past; no Relink reaches back before it)
        self.floor = 0

    def note(self, addr: bytes, ref: str, t: int, partition: int) -> None:
        """Number `ref` of input partition `partition` mailed `addr` at event time `t`."""
        store = self.store
        entry = store.get_in(addr, partition)
        if entry is None:
            store.put_in(addr, partition, {ref: t})
            return
        known = entry.get(ref)
        if known is not None and known >= t - REFRESH_US:
            return  # (the common case: known, and recent enough)
        left = kept(entry, self.floor)
        left[ref] = t if known is None or t > known else known
        store.put_in(addr, partition, left)

    def candidates(self, addr: bytes, t: int, partitions: Iterable[int]) -> list[tuple[str, int, int]]:
        """(ref, partition, last) of the numbers of `partitions` that may have a mail to `addr` at or
        after event time `t`, in ref order; `last`: the time the index holds of the number's last
        mail to `addr` (at most REFRESH_US older than the mail's)."""
        out: list[tuple[str, int, int]] = []
        get_in = self.store.get_in
        since = t - REFRESH_US
        for partition in partitions:
            entry = get_in(addr, partition)
            if entry:
                out.extend((ref, partition, last) for ref, last in entry.items() if last >= since)
        out.sort()
        return out

    def expire(self, floor: int) -> None:
        """A sweep at past horizon `floor`: later writes drop numbers before it; a store that can
        be expired whole (offline) is expired now."""
        self.floor = floor
        store = self.store
        if isinstance(store, ExpirableMailers):
            store.expire(floor)


def kept(entry: Entry, floor: int) -> Entry:
    """The one rule of the index's expiry (at a write, at a sweep; offline and in the worker): the
    entry without the numbers whose last mail (at most REFRESH_US after their time) is before
    `floor`."""
    since = floor - REFRESH_US
    return {ref: last for ref, last in entry.items() if last >= since}
