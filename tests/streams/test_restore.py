"""How a stage's table entries are read back after a restart (streams/runner.py ``restore``).

A Faust table is a mapping of bytes to bytes; a dict stands in for its recovered contents.
"""

from __future__ import annotations

from typing import Any

import orjson

import asyncio

from streams import runner


class DictStore(dict):
    async def write(self, partition: int, entries: list[tuple[bytes, bytes | None]]) -> None:
        for key, value in entries:
            if value is None:
                self.pop(key, None)
            else:
                self[key] = value


def _restore(table: DictStore, partition: int, loaders: dict) -> int | None:
    return asyncio.run(runner.restore(table, partition, loaders))


def _persist(table: DictStore, partition: int, changes: list) -> None:
    asyncio.run(table.write(partition, list(runner.encode(partition, changes))))


def _persist_position(table: DictStore, partition: int, position: int) -> None:
    asyncio.run(table.write(partition, [runner.position_entry(partition, position)]))


def loaded() -> tuple[dict[str, Any], dict]:
    got: dict[str, Any] = {}
    return got, {"": lambda key, value: got.__setitem__(key, value)}


def test_a_fresh_partition_starts_at_0_and_stores_that_before_any_state() -> None:
    table = DictStore()
    got, loaders = loaded()
    assert _restore(table, 3, loaders) == 0
    # Written at once: a first step killed after its state but before its own position
    # must still read as "from offset 0", not as state from before positions existed.
    assert table == {b"3|position": b"0"}
    _persist(table, 3, [('["k"]', {"n": 1})])
    assert _restore(table, 3, loaded()[1]) == 0


def test_state_and_position_come_back_as_stored() -> None:
    table = DictStore()
    _persist(table, 1, [('["a"]', {"n": 2}), ('["b"]', {"n": 5})])
    _persist_position(table, 1, 42)
    _persist(table, 2, [('["c"]', {"n": 9})])  # another partition's entries are not loaded
    _persist_position(table, 2, 7)
    got, loaders = loaded()
    assert _restore(table, 1, loaders) == 42
    assert got == {'["a"]': {"n": 2}, '["b"]': {"n": 5}}


def test_state_stored_before_positions_existed_has_no_position() -> None:
    table = DictStore({b'0|["a"]': orjson.dumps({"n": 1})})
    got, loaders = loaded()
    assert _restore(table, 0, loaders) is None
    assert got == {'["a"]': {"n": 1}}
    assert b"0|position" not in table
