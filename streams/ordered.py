"""Every message of an internal topic's partition applied once, in offset order.

Faust's stream does not guarantee that an agent sees every message it acks. Around
a rebalance it skips messages that arrive from an older consumer generation or
while flow control is paused, and acks them (faust/streams.py, the
``skipped_value`` path); if an offset commit lands before the partition is
sought back, the skipped message is never delivered again. Its counterpart
in the kill -9 tests was a router bundle acked without being applied, after
which later bundles moved stage 1's offset marks past it (docs/reliability.md).

So a stateful stage does not rely on what Faust delivers. It stores, with its
state and after it, the *position*: the next offset of its input partition it has
not applied. Each delivered message is then judged against it:

- below the position: applied before (a redelivery after a seek or a restart): skipped;
- at the position: applied;
- above it: the messages in between were skipped by the stream; they are read
  directly from Kafka (a plain consumer, no group) and applied first.

Kafka offsets of a non-compacted, non-transactional topic are contiguous, so a
gap is always a skip, never a hole in the log. A range that retention has already
deleted comes back empty.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable

from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.security import KafkaSecurity

log = logging.getLogger("kpimon.ordered")

Message = tuple[int, bytes | None]  # (offset, value)


def sequence(position: int | None, messages: Iterable[Message]) -> tuple[list[Message], list[tuple[int, int]], int | None]:
    """Judge delivered messages against a stored position.

    Returns the messages to apply, in order; the ranges ``[start, stop)`` missing
    before them (each to be applied before the message that follows it); and the
    new position. A position of None (state stored before positions existed)
    trusts the delivery until the first message sets it.
    """
    apply: list[Message] = []
    gaps: list[tuple[int, int]] = []
    for offset, value in sorted(messages, key=lambda m: m[0]):
        if position is not None:
            if offset < position:
                continue
            if offset > position:
                gaps.append((position, offset))
        apply.append((offset, value))
        position = offset + 1
    return apply, gaps, position


class GapReader:
    """Reads offset ranges of one topic's partitions directly, for the messages a stream skipped."""

    def __init__(self, topic: str, bootstrap: str, security: KafkaSecurity, *, timeout_s: float = 60.0, chunk: int = 5_000) -> None:
        self.topic = topic
        self.bootstrap = bootstrap
        self.security = security
        self.timeout_s = timeout_s  # without any progress for this long, reading back fails
        self.chunk = chunk  # a large gap is handed out in pieces of this many messages
        self.filled = 0  # messages read back so far (exported as a metric)
        self._consumer: AIOKafkaConsumer | None = None
        self._lock = asyncio.Lock()

    async def complete(self, partition: int, apply: list[Message], gaps: list[tuple[int, int]]) -> AsyncIterator[list[Message]]:
        """``sequence``'s verdict carried out: the messages to apply, in order and in chunks, the skipped ones read back in place."""
        pending = list(gaps)
        run: list[Message] = []
        for offset, value in apply:
            while pending and pending[0][1] == offset:
                if run:
                    yield run
                    run = []
                start, stop = pending.pop(0)
                n = 0
                async for missed in self.read(partition, start, stop):
                    n += len(missed)
                    self.filled += len(missed)
                    yield missed
                log.warning("%s:%d: the stream skipped offsets %d..%d; read %d of them back from Kafka and applied them in order",
                            self.topic, partition, start, stop - 1, n)
            run.append((offset, value))
        if run:
            yield run

    async def read(self, partition: int, start: int, stop: int) -> AsyncIterator[list[Message]]:
        """Every message with ``start <= offset < stop`` still in the log, in order, in chunks."""
        async with self._lock:
            consumer = await self._ensure()
            tp = TopicPartition(self.topic, partition)
            consumer.assign([tp])
            consumer.seek(tp, start)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.timeout_s
            out: list[Message] = []
            while True:
                batch = await asyncio.wait_for(consumer.getmany(tp, timeout_ms=500, max_records=self.chunk), self.timeout_s)
                records = batch.get(tp, [])
                if records:
                    deadline = loop.time() + self.timeout_s
                for record in records:
                    if record.offset >= stop:
                        break
                    out.append((record.offset, record.value))
                    if len(out) >= self.chunk:
                        yield out
                        out = []
                if records and records[-1].offset >= stop - 1:
                    if out:
                        yield out
                    return
                # aiokafka's position() waits, unbounded, for a pending offset reset (e.g. while the broker is away)
                position = await asyncio.wait_for(consumer.position(tp), self.timeout_s)
                if position >= stop:
                    if out:
                        yield out
                    return  # the rest was deleted by retention, or compacted away
                if loop.time() > deadline:
                    raise TimeoutError(f"could not read {self.topic}:{partition} offsets {start}..{stop - 1}: no progress for {self.timeout_s:.0f}s")
    async def _ensure(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap.split(","),
                group_id=None,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                **self.security.aiokafka_options(),
            )
            await consumer.start()
            self._consumer = consumer
        return self._consumer

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
