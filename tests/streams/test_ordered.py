"""streams/ordered.py: judging delivered messages against a stored input position, and reading
skipped ones back from a real broker."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from streams.ordered import GapReader, sequence
from streams.security import KafkaSecurity


def _msgs(*offsets: int) -> list[tuple[int, bytes]]:
    return [(o, f"m{o}".encode()) for o in offsets]


def test_in_order_messages_are_all_applied_and_move_the_position() -> None:
    apply, gaps, position = sequence(5, _msgs(5, 6, 7))
    assert apply == _msgs(5, 6, 7)
    assert gaps == []
    assert position == 8


def test_messages_below_the_position_are_repeats_and_dropped() -> None:
    apply, gaps, position = sequence(10, _msgs(7, 8, 9, 10, 11))
    assert apply == _msgs(10, 11)
    assert gaps == []
    assert position == 12


def test_all_repeats_apply_nothing_and_keep_the_position() -> None:
    assert sequence(10, _msgs(3, 9)) == ([], [], 10)


def test_a_skipped_message_is_a_gap_before_the_next_one() -> None:
    # Faust acked offset 6 without delivering it; 7 arrives next
    apply, gaps, position = sequence(6, _msgs(7, 8))
    assert apply == _msgs(7, 8)
    assert gaps == [(6, 7)]
    assert position == 9


def test_gaps_inside_a_batch_and_out_of_order_delivery() -> None:
    # after a seek back, a batch may hold offsets twice and out of order
    apply, gaps, position = sequence(0, _msgs(3, 1, 0, 1, 5))
    assert apply == _msgs(0, 1, 3, 5)
    assert gaps == [(2, 3), (4, 5)]
    assert position == 6


def test_no_position_trusts_the_delivery_until_the_first_message() -> None:
    apply, gaps, position = sequence(None, _msgs(40, 42))
    assert apply == _msgs(40, 42)
    assert gaps == [(41, 42)]
    assert position == 43


@pytest.fixture
def topic(kafka_bootstrap: str) -> str:
    name = f"ordered{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    admin.create_topics([NewTopic(name, num_partitions=2, replication_factor=1)])
    admin.close()
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    for i in range(12):
        producer.send(name, value=f"m{i}".encode(), partition=1)
    producer.send(name, value=None, key=b"tomb", partition=1)  # offset 12: a null value reads back as None
    producer.flush()
    producer.close()
    return name


def test_the_reader_reads_exactly_the_skipped_range_from_the_broker(kafka_bootstrap: str, topic: str) -> None:
    async def chunks(it) -> list:  # noqa: ANN001 - an async iterator of chunks
        return [c async for c in it]

    async def go() -> tuple[list, list, list, list]:
        reader = GapReader(topic, kafka_bootstrap, KafkaSecurity(), chunk=3)
        try:
            middle = await chunks(reader.read(1, 3, 8))
            # Faust delivered 2, then 5 and 6: 3 and 4 were skipped and are read back in place
            applied = await chunks(reader.complete(1, *sequence(2, _msgs(2, 5, 6))[:2]))
            tail = await chunks(reader.read(1, 11, 13))
            return middle, applied, tail, [reader.filled]
        finally:
            await reader.stop()

    middle, applied, tail, filled = asyncio.run(go())
    assert middle == [_msgs(3, 4, 5), _msgs(6, 7)]  # in chunks of at most 3
    assert applied == [_msgs(2), _msgs(3, 4), _msgs(5, 6)]  # what came before the gap is applied before it
    assert tail == [[(11, b"m11"), (12, None)]]
    assert filled == [2]
