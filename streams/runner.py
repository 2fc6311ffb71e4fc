"""The one place a stage step's effects are made to happen, in the exactly-once order.

``kpi_core/steps.py`` says why the order is what it is: every record sent and acknowledged, then
the state writes in order, then the input position last in the same changelog partition. The
runner knows nothing about KPIs; it takes a ``send`` that returns an acknowledgement to await and
a ``Store``: a stage's table, whose entries are bytes.

``TableStore`` writes a Faust table in batches. Setting ``table[key]`` sends one changelog record
through Faust's per-record producer path (~10% of stage 1's time in the 2026-11-22 profile); a
step instead updates the table's memory directly and hands its changelog records, in order, to
the Kafka producer as whole batches for the partition, which keeps their order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any, Protocol

import orjson

from kpi_core.state import Change
from kpi_core.steps import Effects, Send

POSITION = "position"  # the key, after "<partition>|", of a stage's input position

#: send(record) -> an awaitable that resolves when Kafka has acknowledged the record.
SendRecord = Callable[[Send], Awaitable[Awaitable[Any]]]
Entry = tuple[bytes, bytes | None]  # (key, value); None deletes the key


class Store(Protocol):
    def items(self) -> Iterable[tuple[bytes, bytes]]:
        """Every entry held now (all partitions)."""

    async def write(self, partition: int, entries: list[Entry]) -> None:
        """Apply the entries in order and hand them, in order, to the changelog partition."""


async def run(fx: Effects, send: SendRecord, store: Store, partition: int, owns: Callable[[], bool] = lambda: True) -> bool:
    """Send, wait for every acknowledgement, write the state, then the position.

    ``owns`` is asked after the acknowledgements: a partition revoked meanwhile belongs to its new
    owner, and its old owner must not write it (nothing is written; returns False). A send that
    fails raises before anything is written.
    """
    acks = [await send(record) for record in fx.sends]
    await asyncio.gather(*acks)
    if not owns():
        return False
    entries = [entry for ns, changes in fx.writes for entry in encode(partition, changes, ns)]
    if fx.position is not None:
        entries.append(position_entry(partition, fx.position))
    if entries:
        await store.write(partition, entries)
    return True


async def restore(store: Store, partition: int, loaders: dict[str, Callable[[str, Any], None]]) -> int | None:
    """Load one partition's entries, each by the loader of its namespace; return the stored input position.

    Fresh state starts at offset 0, and says so in the table at once: state found
    without a position can then only be state stored before positions existed
    (None: no gap check), never a first step killed before its position was written.
    """
    prefix = f"{partition}|".encode()
    position: int | None = None
    found = False
    for key, value in list(store.items()):
        if key.startswith(prefix):
            found = True
            rest = key[len(prefix) :].decode()
            if rest == POSITION:
                position = orjson.loads(value)
                continue
            ns = "" if rest.startswith("[") else rest[0]  # stage keys are JSON arrays
            loaders[ns](rest[len(ns) :], orjson.loads(value))
    if not found:
        await store.write(partition, [position_entry(partition, 0)])  # ahead of any state, in the same changelog partition
        return 0
    return position


def encode(partition: int, changes: Iterable[Change], ns: str = "") -> Iterator[Entry]:
    """A stage's changes as table entries, in order; the order is what makes recovery consistent."""
    prefix = f"{partition}|{ns}"
    for key, value in changes:
        yield (prefix + key).encode(), None if value is None else orjson.dumps(value)


def position_entry(partition: int, position: int) -> Entry:
    """Written last in a step: when it is stored, the state it vouches for is stored too."""
    return f"{partition}|{POSITION}".encode(), orjson.dumps(position)


class TableStore:
    """A Faust table (bytes keys and values, "raw" serializers) written a step at a time."""

    def __init__(self, table: Any, producer: Callable[[], Any]) -> None:
        self.table = table
        self.producer = producer  # -> the aiokafka producer under Faust's (started with the app)

    def items(self) -> Iterable[tuple[bytes, bytes]]:
        return self.table.data.items()

    async def write(self, partition: int, entries: list[Entry]) -> None:
        data = self.table.data
        for key, value in entries:
            if value is None:
                data.pop(key, None)
            else:
                data[key] = value
        producer = self.producer()
        topic = self.table.changelog_topic.get_topic_name()
        batch = producer.create_batch()
        for key, value in entries:
            if batch.append(key=key, value=value, timestamp=None) is None:
                # Full: send what it holds and start the next (an empty batch takes any one record,
                # however large, as Kafka's own batches do).
                batch.close()
                await producer.send_batch(batch, topic, partition=partition)
                batch = producer.create_batch()
                added = batch.append(key=key, value=value, timestamp=None)
                assert added is not None
        batch.close()
        await producer.send_batch(batch, topic, partition=partition)
