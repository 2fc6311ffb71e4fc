"""The one place a stage step's effects are made to happen, in the exactly-once order.

``kpi_core/steps.py`` says why the order is what it is: every record sent and acknowledged, then
the state writes in order, then the input position last in the same changelog partition. The
runner knows nothing about KPIs; it takes a ``send`` that returns an acknowledgement to await and a
store that behaves like a Faust table (a mapping of bytes to bytes).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

import orjson

from kpi_core.state import Change
from kpi_core.steps import Effects, Send

POSITION = "position"  # the key, after "<partition>|", of a stage's input position

#: send(record) -> an awaitable that resolves when Kafka has acknowledged the record.
SendRecord = Callable[[Send], Awaitable[Awaitable[Any]]]
Store = MutableMapping[bytes, bytes]


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
    for ns, changes in fx.writes:
        persist(store, partition, changes, ns)
    persist_position(store, partition, fx.position)
    return True


def restore(store: Store, partition: int, loaders: dict[str, Callable[[str, Any], None]]) -> int | None:
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
        persist_position(store, partition, 0)  # ahead of any state, in the same changelog partition
        return 0
    return position


def persist(store: Store, partition: int, changes: Iterable[Change], ns: str = "") -> None:
    """Write a stage's changes in order; the order is what makes recovery consistent."""
    prefix = f"{partition}|{ns}"
    for key, value in changes:
        k = (prefix + key).encode()
        if value is not None:
            store[k] = orjson.dumps(value)
        elif k in store:
            del store[k]


def persist_position(store: Store, partition: int, position: int | None) -> None:
    """Written last in a step: when it is stored, the state it vouches for is stored too."""
    if position is not None:
        store[f"{partition}|{POSITION}".encode()] = orjson.dumps(position)
