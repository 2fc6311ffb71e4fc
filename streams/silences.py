"""Follow a compacted topic inside a worker, so every worker folds the same records.

``CompactedWatcher`` reads the whole topic (aiokafka, no consumer group, so each worker
sees every partition) and then keeps following it, folding each record in ``_apply``.
``ready`` is set once it has caught up with the end offsets seen at start: before that a
worker knows only part of the topic. ``SilenceWatcher`` folds the silences topic into a
``SilenceSet``; ``FeedbackWatcher`` the Slack feedback topic into a ``FeedbackSet``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from types import TracebackType

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from kpi_core.errors import KpimonError
from kpi_core.feedback import FeedbackSet
from kpi_core.silences import Silence, SilenceSet
from kpimon.silences import CLIENT_ID, SilenceStoreError, ensure_topic, topic_partitions
from streams.security import KafkaSecurity

log = logging.getLogger("kpimon.silences.watcher")


class CompactedWatcher:
    """A background reader of one compacted topic; a subclass folds each record in ``_apply``."""

    what = "records"  # for log lines

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        *,
        retry_after: float = 1.0,
        security: KafkaSecurity | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        # Read now, not at start(): bad settings fail the worker before it joins the group.
        self.security = security if security is not None else KafkaSecurity.from_env()
        self.ready = asyncio.Event()  # set once caught up with the end offsets seen at start
        self.rejected = 0  # records ignored as malformed
        self._retry_after = retry_after
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Create the topic if missing, connect, and follow the topic in a background task.

        Raises ``SilenceStoreError`` when Kafka can't be reached at all. A topic that
        can't be created (no permission, say) is waited for in the background instead.
        """
        if self._task is not None:
            return
        try:
            await asyncio.to_thread(ensure_topic, self.bootstrap, self.topic, security=self.security)
        except KpimonError as exc:
            log.warning("could not create %s topic %s (%s); waiting for it to appear", self.what, self.topic, exc)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            client_id=CLIENT_ID,
            group_id=None,  # no group: every worker reads every silence, nothing is committed
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            **self.security.aiokafka_options(),
        )
        try:
            await consumer.start()
        except KafkaError as exc:
            await consumer.stop()
            raise SilenceStoreError(f"could not read {self.topic} at {self.bootstrap}: {exc}") from exc
        self._consumer = consumer
        self._task = asyncio.create_task(self._follow(consumer), name=f"watcher:{self.topic}")

    async def stop(self) -> None:
        """Stop following the topic and close the consumer; what was read so far stays queryable."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()

    async def __aenter__(self) -> CompactedWatcher:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def _follow(self, consumer: AIOKafkaConsumer) -> None:
        end = await self._assign(consumer)
        while True:
            try:
                if not self.ready.is_set() and await self._caught_up(consumer, end):
                    self.ready.set()
                    log.info("%s: caught up with %s", self.what, self.topic)
                batch = await consumer.getmany(timeout_ms=500)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the watcher must outlive broker hiccups
                log.warning("%s: reading %s failed (%s); retrying in %gs", self.what, self.topic, exc, self._retry_after)
                await asyncio.sleep(self._retry_after)
                continue
            for tp, records in batch.items():
                for record in records:
                    self._apply(tp, record.offset, record.key, record.value)

    async def _assign(self, consumer: AIOKafkaConsumer) -> dict[TopicPartition, int]:
        """Assign every partition, seek to the beginning and return the end offsets; wait for the topic if missing."""
        warned = False
        while True:
            try:
                # Asked of the admin API: the consumer's partitions_for_topic only knows topics it already tracks.
                partitions = await asyncio.to_thread(topic_partitions, self.bootstrap, self.topic, security=self.security)
                if partitions:
                    tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
                    consumer.assign(tps)
                    await consumer.seek_to_beginning(*tps)
                    return await consumer.end_offsets(tps)
                problem = "the topic does not exist yet"
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep trying: the worker runs on without silences
                problem = str(exc)
            if not warned:
                log.warning("%s: waiting for topic %s: %s", self.what, self.topic, problem)
                warned = True
            await asyncio.sleep(self._retry_after)

    async def _caught_up(self, consumer: AIOKafkaConsumer, end: dict[TopicPartition, int]) -> bool:
        for tp, offset in end.items():
            if await consumer.position(tp) < offset:
                return False
        return True

    def _apply(self, tp: TopicPartition, offset: int, key: bytes | None, value: bytes | None) -> None:
        raise NotImplementedError


class SilenceWatcher(CompactedWatcher):
    """Follows the silences topic; ask it ``is_silenced`` before delivering an alert."""

    what = "silences"

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.silences = SilenceSet()

    def is_silenced(self, group: Mapping[str, str], kpi: str, at_ms: int) -> Silence | None:
        """The silence muting ``kpi`` of ``group`` at ``at_ms`` (the delivery decision's wall clock), or None."""
        return self.silences.is_silenced(group, kpi, at_ms)

    def active(self, at_ms: int) -> list[Silence]:
        return self.silences.active(at_ms)

    def _apply(self, tp: TopicPartition, offset: int, key: bytes | None, value: bytes | None) -> None:
        problem = self.silences.apply(key, value)
        if problem:
            self.rejected += 1
            log.warning("silences: ignored record %s[%d]@%d: %s", tp.topic, tp.partition, offset, problem)
        elif value is None:
            log.info("silences: %r deleted", key)
        else:
            silence = self.silences.get(key.decode() if key else "")
            if silence is not None:
                log.info("silences: %s %s until %d (%s)", silence.id, silence.describe(), silence.ends_at, silence.reason)


class FeedbackWatcher(CompactedWatcher):
    """Follows the feedback topic: what people did about each incident from Slack (kpi_core/feedback.py)."""

    what = "feedback"

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.feedback = FeedbackSet()

    def _apply(self, tp: TopicPartition, offset: int, key: bytes | None, value: bytes | None) -> None:
        problem = self.feedback.apply(key, value)
        if problem:
            self.rejected += 1
            log.warning("feedback: ignored record %s[%d]@%d: %s", tp.topic, tp.partition, offset, problem)
