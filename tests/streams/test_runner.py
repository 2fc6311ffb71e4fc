"""The runner's order: every record acknowledged, then state in order, then the position last.

A fake producer and a dict-backed store log every call into one shared journal, so the test sees
the order in which things would reach Kafka.
"""

from __future__ import annotations

import asyncio

from typing import Any

import orjson
import pytest

from kpi_core.steps import ALERTS, LATE, SNAPSHOTS, Effects, Send
from streams import runner


class Journal(list):
    pass


class FakeProducer:
    """send() returns at once with a future; acks arrive later, in a chosen order, or fail."""

    def __init__(self, journal: Journal, fail: str | None = None) -> None:
        self.journal = journal
        self.fail = fail
        self.pending: list[tuple[Send, asyncio.Future]] = []

    async def send(self, record: Send) -> asyncio.Future:
        self.journal.append(("send", record.topic, record.value))
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self.pending.append((record, fut))
        asyncio.get_running_loop().call_later(0.01 * (5 - len(self.pending)), self._ack, record, fut)
        return fut

    def _ack(self, record: Send, fut: asyncio.Future) -> None:
        if record.topic == self.fail:
            fut.set_exception(RuntimeError(f"broker refused {record.topic}"))
            return
        self.journal.append(("ack", record.topic, record.value))
        fut.set_result(None)


class FakeStore(dict):
    """A dict that journals each entry of a write, in order."""

    def __init__(self, journal: Journal, *args) -> None:
        super().__init__(*args)
        self.journal = journal

    async def write(self, partition: int, entries: list[tuple[bytes, bytes | None]]) -> None:
        for key, value in entries:
            if value is None:
                self.journal.append(("delete", key))
                self.pop(key, None)
            else:
                self.journal.append(("write", key, value))
                self[key] = value


def effects() -> Effects:
    return Effects(
        sends=[Send(LATE, b"l1"), Send(SNAPSHOTS, b"s1", key=b"k"), Send(ALERTS, b"a1", key=b"t")],
        writes=[("a", [('["x"]', {"n": 1})]), ("c", [('["y"]', {"n": 2}), ('["gone"]', None)])],
        position=17,
    )


def test_every_ack_before_any_write_then_state_in_order_then_the_position() -> None:
    journal = Journal()
    store = FakeStore(journal, {b'3|c["gone"]': b"{}"})
    assert asyncio.run(runner.run(effects(), FakeProducer(journal).send, store, 3)) is True
    kinds = [j[0] for j in journal]
    assert kinds == ["send"] * 3 + ["ack"] * 3 + ["write", "write", "delete", "write"]
    # Acks came back in reverse order of sending; the writes still waited for the last one.
    assert [j[1] for j in journal if j[0] == "ack"] == [ALERTS, SNAPSHOTS, LATE]
    assert journal[6:] == [("write", b'3|a["x"]', b'{"n":1}'), ("write", b'3|c["y"]', b'{"n":2}'),
                           ("delete", b'3|c["gone"]'), ("write", b"3|position", b"17")]
    assert store == {b'3|a["x"]': b'{"n":1}', b'3|c["y"]': b'{"n":2}', b"3|position": b"17"}


def test_a_record_kafka_refuses_means_nothing_is_written() -> None:
    journal = Journal()
    store = FakeStore(journal)
    with pytest.raises(RuntimeError, match="broker refused snapshots"):
        asyncio.run(runner.run(effects(), FakeProducer(journal, fail=SNAPSHOTS).send, store, 3))
    assert store == {}
    assert not [j for j in journal if j[0] in ("write", "delete")]


def test_a_partition_revoked_while_sending_is_left_to_its_new_owner() -> None:
    journal = Journal()
    store = FakeStore(journal)
    asked: list[int] = []

    def owns() -> bool:
        asked.append(sum(1 for j in journal if j[0] == "ack"))
        return False

    assert asyncio.run(runner.run(effects(), FakeProducer(journal).send, store, 3, owns=owns)) is False
    assert asked == [3]  # asked once, after every acknowledgement
    assert store == {}


def test_a_timer_step_without_new_input_writes_state_but_no_position() -> None:
    journal = Journal()
    store = FakeStore(journal, {b"0|position": b"5"})
    fx = Effects(writes=[("", [('["w"]', {"n": 3})])], position=None)
    assert asyncio.run(runner.run(fx, FakeProducer(journal).send, store, 0)) is True
    assert journal == [("write", b'0|["w"]', b'{"n":3}')]
    assert store[b"0|position"] == b"5"
    assert orjson.loads(store[b'0|["w"]']) == {"n": 3}


class BatchingProducer:
    """aiokafka's real batch builder, small, with the sends journaled (no broker needed to see the order)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.sent: list[tuple[str, int, list[tuple[bytes, bytes | None]]]] = []

    def create_batch(self) -> Any:
        from aiokafka.producer.message_accumulator import BatchBuilder

        return BatchBuilder(self.size, 0, is_transactional=False)

    async def send_batch(self, batch: Any, topic: str, *, partition: int) -> None:
        from aiokafka.record.memory_records import MemoryRecords

        records = MemoryRecords(bytes(batch._buffer or batch._builder.build())).next_batch()
        self.sent.append(("batch", partition, [(r.key, r.value) for r in records]))


class Table:
    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {b"2|old": b"1"}

        class Changelog:
            @staticmethod
            def get_topic_name() -> str:
                return "app-stage1-changelog"

        self.changelog_topic = Changelog()


def test_a_table_store_writes_memory_and_sends_every_entry_in_order_in_batches() -> None:
    table, producer = Table(), BatchingProducer(size=300)
    store = runner.TableStore(table, lambda: producer)
    big = b"x" * 1000  # larger than a whole batch: a batch of its own, still in its place
    entries = [(f"2|k{i}".encode(), f"v{i}".encode() * 5) for i in range(12)]
    entries[5:5] = [(b"2|big", big)]
    entries.append((b"2|old", None))
    entries.append((b"2|position", b"99"))
    asyncio.run(store.write(2, entries))
    sent = [e for _, _, es in producer.sent for e in es]
    assert sent == entries  # every entry, in order, tombstone included
    assert {p for _, p, _ in producer.sent} == {2}
    assert [(b"2|big", big)] in [es for _, _, es in producer.sent] and len(producer.sent) >= 3
    assert all(len(es) > 0 for _, _, es in producer.sent)
    assert b"2|old" not in table.data and table.data[b"2|big"] == big and table.data[b"2|position"] == b"99"
