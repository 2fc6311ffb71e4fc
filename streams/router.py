"""Stage 0: read the source topics and route valid events to stage 1, in batches.

The router does not use a Faust agent. Faust moves every record through its own
per-message machinery (a task and an ``asyncio.wait`` per record, the conductor,
the agent's stream): ~230 µs of CPU per event, ~70× a plain consumer (see
bench/analysis.md). The router only ever needs batches, so it reads with a plain
``AIOKafkaConsumer.getmany()`` loop in its own consumer group (``<app>-router``)
and keeps Faust for the internal topics and the tables.

Delivery contract (at least once, made exact downstream): a batch's source offsets
are committed only after every bundle and dead letter it produced is acknowledged
by Kafka. A crash re-reads at most the uncommitted batches; stage 1 remembers, per
cell and source partition, the highest offset it absorbed, and skips the repeats.
A rebalance waits for the batch in hand, so a normal hand-over repeats nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError

from kpi_core.errors import InvalidEvent
from kpi_core.events import marker
from kpi_core import wire
from kpi_core.plan import Plan
from kpi_core.routing import partition_of
from streams.metrics import Metrics
from streams.security import KafkaSecurity
from streams.settings import WorkerSettings

log = logging.getLogger("kpimon.router")

#: send(partition, bundle) -> an awaitable that resolves when Kafka has the bundle.
SendBundle = Callable[[int, bytes], Awaitable[Awaitable[Any]]]
#: dead_letter(record, error) -> an awaitable that resolves when Kafka has the record.
SendDeadLetter = Callable[[Any, InvalidEvent], Awaitable[Awaitable[Any]]]

HEARTBEAT_S = 0.5  # how often a quiet router still reports progress to stage 1


class Router:
    """Reads the sources in its own consumer group and sends stage 1 one bundle per partition per batch."""

    def __init__(self, plan: Plan, settings: WorkerSettings, metrics: Metrics, security: KafkaSecurity,
                 send_bundle: SendBundle, dead_letter: SendDeadLetter) -> None:
        self.plan = plan
        self.settings = settings
        self.metrics = metrics
        self.security = security
        self.send_bundle = send_bundle
        self.dead_letter = dead_letter
        self.partitions = plan.config.topics.partitions
        self.decoders = plan.decoders  # topic -> how its messages become events (kpimon's contract or a tracker's)
        self.progress: dict[str, int] = {}  # source partition -> largest event time routed
        self.last_report = 0.0
        self.consumer: AIOKafkaConsumer | None = None
        # Held while a batch is routed and committed; a rebalance waits for it.
        self._batch_lock = asyncio.Lock()

    @property
    def group_id(self) -> str:
        return f"{self.settings.app_id}-router"

    def assigned(self) -> set[TopicPartition]:
        return set(self.consumer.assignment()) if self.consumer is not None else set()

    async def run(self) -> None:
        """Route until cancelled; a Kafka failure restarts the consumer from the committed offsets."""
        while True:
            try:
                await self._consume()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the router must outlive any one failure
                log.error("router stopped (%s: %s); restarting from the committed offsets in 1 s",
                          type(exc).__name__, exc)
                await asyncio.sleep(1.0)

    async def _consume(self) -> None:
        s = self.settings
        consumer = AIOKafkaConsumer(
            bootstrap_servers=s.bootstrap.split(","),
            group_id=self.group_id,
            client_id=f"{s.app_id}-router",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            # As for the Faust consumer: a worker killed with -9 gives up its partitions in 10 s.
            session_timeout_ms=10_000,
            heartbeat_interval_ms=1_000,
            max_partition_fetch_bytes=4 * 1024 * 1024,
            fetch_max_bytes=64 * 1024 * 1024,
            **self.security.aiokafka_options(),
        )
        consumer.subscribe(topics=list(self.decoders), listener=_Listener(self))
        await consumer.start()
        self.consumer = consumer
        try:
            while True:
                records = await consumer.getmany(timeout_ms=int(s.batch_within * 1000), max_records=s.batch_size)
                async with self._batch_lock:
                    if records:
                        await self._route(consumer, records)
                    elif time.monotonic() - self.last_report >= HEARTBEAT_S:
                        # Report progress even when no events arrive, so quiet streams still close windows.
                        await self._send_bundles({})
                    self._export_lag(consumer)
        finally:
            self.consumer = None
            await consumer.stop()

    async def _route(self, consumer: AIOKafkaConsumer, records: dict[TopicPartition, list[Any]]) -> None:
        buckets: dict[int, list[list[Any]]] = defaultdict(list)
        counts: dict[str, int] = defaultdict(int)
        acks: list[Awaitable[Any]] = []
        progress, decoders, partitions = self.progress, self.decoders, self.partitions
        before = dict(progress)
        horizon_ms = int(time.time() * 1000) + self.plan.config.max_future
        offsets: dict[TopicPartition, int] = {}
        for tp, msgs in records.items():
            ignored = 0
            source = f"{tp.topic}:{tp.partition}"
            decoder = decoders[tp.topic]
            fan_out = decoder.fan_out  # a message carrying several events: each takes its own offset
            latest = progress.get(source, -1)
            for msg in msgs:
                try:
                    promised = marker(msg.headers)
                    if promised is not None:
                        if promised > horizon_ms:
                            raise InvalidEvent("bad_timestamp", "the progress marker is too far in the future")
                        # A progress marker: the source has certainly reached this event time.
                        latest = max(latest, promised)
                        continue
                    evs = decoder.decode(msg.value)
                    for _, ev in evs:
                        if ev.ts > horizon_ms:
                            # One event stamped years ahead would drag the watermark along and
                            # close every open window; the wall clock bounds it (live only).
                            raise InvalidEvent("bad_timestamp", "ts is too far in the future")
                except InvalidEvent as exc:
                    acks.append(await self._dead_letter(msg, exc))
                    continue
                except Exception as exc:  # noqa: BLE001 - no input may stop the router
                    log.exception("unexpected error validating %s@%s", source, msg.offset)
                    acks.append(await self._dead_letter(
                        msg, InvalidEvent("invalid_value", f"could not be validated ({type(exc).__name__})")))
                    continue
                if not evs:
                    ignored += 1  # a tracker's message kpimon has no use for (an identify call)
                    continue
                for i, ev in evs:
                    if ev.ts > latest:
                        latest = ev.ts
                    counts[ev.type] += 1
                    buckets[partition_of(ev.data["campaign"], partitions)].append(
                        [source, msg.offset * fan_out + i, ev.type, ev.ts, ev.data])
            progress[source] = latest
            if ignored:
                self.metrics.ignored.labels(tp.topic).inc(ignored)
            if latest >= 0:
                self.metrics.source_time.labels(tp.topic, str(tp.partition)).set(latest / 1000)
            offsets[tp] = msgs[-1].offset + 1
        for etype, n in counts.items():
            self.metrics.events.labels(etype).inc(n)
        acks += await self._send_bundles(buckets, before)
        await asyncio.gather(*acks)
        try:
            await consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as exc:
            # Partitions moved on: their new reader re-reads this batch and stage 1 skips the repeats.
            log.info("router commit skipped (%s); the batch will be re-read and deduplicated", exc)

    async def _dead_letter(self, msg: Any, exc: InvalidEvent) -> Awaitable[Any]:
        self.metrics.invalid.labels(exc.reason).inc()
        return await self.dead_letter(msg, exc)

    async def _send_bundles(self, buckets: dict[int, list[list[Any]]], before: dict[str, int] | None = None) -> list[Awaitable[Any]]:
        """Send each stage-1 partition its events, with the progress of every source we read.

        Every assigned source is reported (-1 before it delivered anything), with
        whether it still has a backlog, so stage 1 can tell idle from merely unread.
        A partition's events too many for one message go in several (``wire.encode_bundles``);
        ``before`` is the progress they report until the last.
        """
        watermarks: dict[str, int] = {}
        backlog: list[str] = []
        consumer = self.consumer
        for tp in self.assigned():
            source = f"{tp.topic}:{tp.partition}"
            watermarks[source] = self.progress.get(source, -1)
            if consumer is None or self._has_backlog(consumer, tp):
                backlog.append(source)
        self.last_report = time.monotonic()
        # Stamped with the wall clock: stage 1 believes "no backlog" only while the report is fresh.
        sent_at = time.time() * 1000
        before = self.progress if before is None else before
        return [await self.send_bundle(p, bundle) for p in range(self.partitions)
                for bundle in wire.encode_bundles(before, watermarks, backlog, buckets.get(p, []), sent_at)]

    def _has_backlog(self, consumer: AIOKafkaConsumer, tp: TopicPartition) -> bool:
        """True while a source partition has messages we haven't read: it must not count as idle."""
        end, done = consumer.highwater(tp), _position(consumer, tp)
        if end is None or done is None:
            return True  # not fetched yet: assume there is more to come
        return end > done

    def _export_lag(self, consumer: AIOKafkaConsumer) -> None:
        for tp in self.assigned():
            end, done = consumer.highwater(tp), _position(consumer, tp)
            if end is not None and done is not None:
                self.metrics.lag.labels(tp.topic, str(tp.partition)).set(max(0, end - done))

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        async with self._batch_lock:  # the batch in hand is routed and committed first
            for tp in revoked:
                try:
                    self.metrics.lag.remove(tp.topic, str(tp.partition))
                except KeyError:
                    pass


def _position(consumer: AIOKafkaConsumer, tp: TopicPartition) -> int | None:
    """The next offset ``getmany`` will hand out for a partition, if aiokafka knows it yet.

    aiokafka only offers ``await position()``, which waits for the offset reset; this
    is the same value without waiting (None until the committed offset is fetched).
    """
    try:
        state = consumer._subscription.subscription.assignment.state_value(tp)
    except Exception:  # noqa: BLE001 - mid-rebalance or not assigned any more
        return None
    return state.position if state is not None and state.has_valid_position else None


class _Listener(ConsumerRebalanceListener):
    def __init__(self, router: Router) -> None:
        self.router = router

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.router.on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info("router reads %s", ", ".join(sorted(f"{tp.topic}:{tp.partition}" for tp in assigned)) or "nothing")
