"""The runner's order: every record acknowledged, then state in order, then the position last.

A fake producer and a dict-backed store log every call into one shared journal, so the test sees
the order in which things would reach Kafka.
"""

from __future__ import annotations

import asyncio

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
    def __init__(self, journal: Journal, *args) -> None:
        super().__init__(*args)
        self.journal = journal

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self.journal.append(("write", key, value))
        super().__setitem__(key, value)

    def __delitem__(self, key: bytes) -> None:
        self.journal.append(("delete", key))
        super().__delitem__(key)


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
