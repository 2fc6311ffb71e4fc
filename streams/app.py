"""The worker's wiring: Faust topics, tables, agents and timers around kpi_core's stages.

A router and three agents, each thin; the rules are in ``kpi_core`` and ``alerts``:

1. the router (``streams/router.py``, a plain aiokafka consumer: Faust's per-record
   path costs ~70x more) reads the source topics in batches, validates each event
   (bad ones go to the dead-letter topic with a reason) and forwards the valid
   ones, grouped by campaign (``kpi_core/routing.py``), to ``<app>-events``.
2. ``aggregate`` feeds each ``<app>-events`` partition's messages, in offset order
   (``streams/ordered.py``), to its ``kpi_core.steps.Stage1``; what the step returns
   (late records, partials for ``<app>-partials``, state) is done by ``streams/runner.py``.
3. ``combine`` does the same with ``Stage2``: snapshots, outbox records on the
   alerts topic, state; then the Prometheus gauges are updated.
4. ``deliver`` takes outbox records through ``alerts/outbox.py`` to Slack.

Beside them: every worker follows the silences and the Slack feedback topics
(``streams/silences.py``); with ``SLACK_APP_TOKEN`` each holds a Socket Mode connection for
the incident buttons (``streams/interactive.py``), and the worker judging windows (stage-2
partition 0) posts the daily digests (``streams/digest.py``).

``streams/ops.py`` watches the worker itself (Kafka reachability, a stalled recovery, lag,
``/health``). Faust's windowed tables are not used: their expiry runs on the wall clock, and
windows recovered from the changelog never expire. Window assignment and closing live in
``kpi_core``; the tables here are plain key/value changelogs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

import faust
import orjson
from faust.types import TP

from alerts import Delivery, DeliveryState, SlackSettings
from alerts.outbox import Outbox
from kpi_core.feedback import incident_record
from kpi_core.errors import InvalidEvent
from kpi_core.plan import Plan
from kpi_core.incidents import AlertEvent
from kpi_core.steps import ALERTS, LATE, PARTIALS, SNAPSHOTS, Send, Stage1, Stage2
from kpi_core import wire
from streams import runner, web
from streams.metrics import Metrics
from streams.ordered import GapReader, sequence
from streams.router import Router
from streams.security import KafkaSecurity
from streams.settings import WorkerSettings
from streams.digest import DigestPoster
from streams.interactive import SlackControl
from streams.silences import FeedbackWatcher, SilenceWatcher
from streams.ops import Ops

log = logging.getLogger("kpimon.worker")
DIGEST_CHECK = 5.0  # seconds between checks for a due digest
# Faust warns each time its table-write buffer passes 100 messages; with batched state
# writes that is routine, not a problem worth a log line per batch.
logging.getLogger("faust.transport.producer").setLevel(logging.ERROR)


class KeyPartitionedTable(faust.Table):
    """A table whose keys start with ``b"<partition>|"``.

    Faust normally takes the changelog partition from the event being processed,
    so a table can't be written from a timer. Our keys carry their partition, which
    lets the close timer write state and keeps each partition's state together.
    """

    def partition_for_key(self, key: Any) -> int | None:
        return int(key.split(b"|", 1)[0])


class Pipeline:
    """Wires kpi_core's stages to Faust topics and tables."""

    def __init__(self, plan: Plan, settings: WorkerSettings, delivery: Delivery, metrics: Metrics,
                 silences: SilenceWatcher | None = None, *, security: KafkaSecurity,
                 feedback: FeedbackWatcher | None = None, slack: SlackSettings | None = None) -> None:
        self.plan = plan
        self.settings = settings
        self.delivery = delivery
        self.metrics = metrics
        self.silences = silences
        self.feedback = feedback
        cfg = plan.config
        self.partitions = cfg.topics.partitions
        self.app = faust.App(
            settings.app_id,
            broker=";".join(f"kafka://{h}" for h in settings.bootstrap.split(",")),
            store="memory://",
            web_enabled=False,
            datadir=str(settings.data_dir),
            topic_partitions=self.partitions,
            topic_replication_factor=1,
            consumer_auto_offset_reset="earliest",
            broker_commit_interval=1.0,
            producer_linger_ms=5,
            producer_max_request_size=wire.MAX_PARTIALS_BYTES,  # one window's partials are one message
            table_standby_replicas=0,
            # A worker killed with -9 holds its partitions until its session times out;
            # 10 s (not Faust's 60 s) lets a restarted or surviving worker take over quickly.
            broker_session_timeout=10.0,
            broker_heartbeat_interval=1.0,
            broker_credentials=security.faust_credentials(),
        )
        app = self.app
        self.events_topic = app.topic(
            settings.events_topic, partitions=self.partitions, internal=True, value_serializer="raw", key_serializer="raw"
        )
        self.partials_topic = app.topic(
            settings.partials_topic, partitions=self.partitions, internal=True, value_serializer="raw", key_serializer="raw"
        )
        self.dead_letters = app.topic(cfg.topics.dead_letters, value_serializer="raw", key_serializer="raw")
        self.late_topic = app.topic(cfg.topics.late_events, value_serializer="raw", key_serializer="raw")
        self.snapshot_topic = app.topic(cfg.topics.snapshots, value_serializer="raw", key_serializer="raw")
        self.alerts_topic = app.topic(cfg.topics.alerts, value_serializer="raw", key_serializer="raw")
        self.stage1_table = self._table("stage1")
        # The aiokafka producer under Faust's: the stage tables' changelog records go to it in batches.
        aiokafka_producer = lambda: self.app.producer._ensure_producer()  # noqa: E731
        # Stage 2's combiner and alert-engine state share one table, so one changelog
        # partition keeps the order of a step's writes (its input position last).
        self.stage2_table = self._table("stage2")
        self.stage1_store = runner.TableStore(self.stage1_table, aiokafka_producer)
        self.stage2_store = runner.TableStore(self.stage2_table, aiokafka_producer)
        # Where the alert-engine state lived before it joined stage2: read once on restore,
        # so an upgraded worker keeps its incidents and thread sequence numbers.
        self.legacy_incidents = runner.TableStore(self._table("incidents"), aiokafka_producer)
        self.delivery_table = app.Table("delivery", partitions=cfg.topics.partitions, key_type=str, value_type=bytes)
        # The in-doubt mark is durable (the producer flushed) before Slack is called.
        self.outbox = Outbox(delivery, self.delivery_table, lambda: self.app.producer.flush(), silences=silences,
                             count=lambda outcome: self.metrics.alerts.labels(outcome).inc(),
                             feedback=feedback.feedback.get if feedback else None, shown=self._shown if feedback else None)
        self.control = None
        if feedback is not None:
            metrics.watch_feedback(feedback.feedback)
            if slack is not None and slack.app_token is not None and slack.bot_token is not None:
                self.control = SlackControl(slack, cfg.alerting.slack, feedback, self._write, silences_topic=cfg.topics.silences,
                                            count=lambda outcome: self.metrics.clicks.labels(outcome).inc())
        self.stage1: dict[int, Stage1] = {}
        self.stage2: dict[int, Stage2] = {}
        self.topics = {LATE: self.late_topic, PARTIALS: self.partials_topic, SNAPSHOTS: self.snapshot_topic,
                       ALERTS: self.alerts_topic}
        # The next input offset each stage has applied, per (topic, partition); stored
        # after the stage's state (streams/ordered.py). None: stored before positions existed.
        self.positions: dict[tuple[str, int], int | None] = {}
        self.gaps = {t: GapReader(t, settings.bootstrap, security)
                     for t in (settings.events_topic, settings.partials_topic, cfg.topics.alerts)}
        self.router = Router(plan, settings, metrics, security, self._send_bundle, self._dead_letter)
        self.ops = Ops(app, settings, metrics)
        self.locks: dict[int, asyncio.Lock] = defaultdict(asyncio.Lock)
        self.runner: Any = None

        app.task(self._run_router)
        app.agent(self.events_topic, name="aggregate")(self._aggregate)
        app.agent(self.partials_topic, name="combine")(self._combine)
        app.agent(self.alerts_topic, name="deliver")(self._deliver)
        app.timer(1.0, name="close-idle-windows")(self._tick)
        app.timer(2.0, name="kafka-watch")(self.ops.watch_kafka)
        app.timer(2.0, name="recovery-watchdog")(self.ops.watch_recovery)
        app.task(self._start_web)
        app.task(self._start_silences)
        app.task(self._start_feedback)
        self.digests = None
        if cfg.alerting.digests:
            fallback = cfg.alerting.default_channel or (slack.channel if slack else None)
            self.digests = DigestPoster(plan, delivery, settings.bootstrap, security, fallback=fallback,
                                        count=lambda outcome: self.metrics.digests.labels(outcome).inc())
            app.task(self._run_digests)
        app.on_partitions_revoked.connect(self._on_revoked)

    def _table(self, name: str) -> KeyPartitionedTable:
        table = KeyPartitionedTable(
            self.app,
            name=name,
            partitions=self.partitions,
            key_type=bytes,  # bytes in and out: we encode with orjson ourselves
            value_type=bytes,
            beacon=self.app.tables.beacon,
        )
        return self.app.tables.add(table)

    # -- 1. route (streams/router.py: a plain consumer, not an agent) -------------

    async def _send_bundle(self, partition: int, bundle: bytes) -> Any:
        return await self.events_topic.send(value=bundle, partition=partition)

    async def _run_router(self) -> None:
        await self.router.run()

    async def _dead_letter(self, msg: Any, exc: InvalidEvent) -> Any:
        # A tombstone stays a tombstone (null value), so the dead letter is the input as it was.
        return await self.dead_letters.send(key=msg.key, value=msg.value,
                                            headers=wire.dead_letter_headers(exc, msg.topic, msg.partition, msg.offset))

    # -- 2. aggregate ----------------------------------------------------------

    async def _stage1(self, p: int) -> Stage1:
        stage = self.stage1.get(p)
        if stage is None:
            stage = Stage1(self.plan, p, self.partitions)
            self.positions[(self.settings.events_topic, p)] = await runner.restore(self.stage1_store, p, {"": stage.load})
            self.stage1[p] = stage
        return stage

    async def _in_order(self, topic: str, p: int, delivered: list[tuple[int, Any]]) -> AsyncIterator[list[tuple[int, Any]]]:
        """What to apply for messages Faust delivered, in chunks: repeats dropped, skipped ones read back.

        The in-memory position moves only once every chunk was handed out (streams/ordered.py).
        """
        key = (topic, p)
        reader = self.gaps[topic]
        apply, gaps, position = sequence(self.positions.get(key), delivered)
        before = reader.filled
        async for chunk in reader.complete(p, apply, gaps):
            yield chunk
        self.positions[key] = position
        if reader.filled > before:
            self.metrics.refilled.labels(topic).inc(reader.filled - before)

    def _forget(self, topic: str, p: int) -> None:
        """Drop a partition's in-memory stage state, so it is reloaded from its table.

        After a step failed half-way, the memory may be ahead of what was stored; the
        table and the input position stored with it are what the retry must start from.
        """
        self.positions.pop((topic, p), None)
        if topic == self.settings.events_topic:
            self.stage1.pop(p, None)
        elif topic == self.settings.partials_topic:
            self.stage2.pop(p, None)

    async def _aggregate(self, stream: Any) -> None:
        # Several router bundles per step: state is written once per dirty cell per step,
        # not once per bundle, which is what bounds the changelog traffic. The step's
        # input position is stored after its state, in the same changelog partition.
        topic = self.settings.events_topic
        async for batch in stream.take_events(64, within=0.25):
            by_partition: dict[int, list[tuple[int, Any]]] = defaultdict(list)
            for event in batch:
                by_partition[event.message.partition].append((event.message.offset, event.message.value))
            for p, delivered in by_partition.items():
                async with self.locks[p]:
                    try:
                        await self._stage1_step(p, delivered)
                    except BaseException:
                        self._forget(topic, p)
                        raise

    async def _stage1_step(self, p: int, delivered: list[tuple[int, Any]]) -> None:
        topic = self.settings.events_topic
        stage = await self._stage1(p)
        now = time.time() * 1000
        applied = False
        async for chunk in self._in_order(topic, p, delivered):
            applied = True
            for _, raw in chunk:
                stage.absorb(raw, now)
        if applied:  # else all applied before: a redelivery
            await self._close_stage1(p, stage, now, self.positions[(topic, p)])

    async def _close_stage1(self, p: int, stage: Stage1, now: float, position: int | None = None) -> None:
        """Close what the watermark allows; with ``position``, store it after the state."""
        at = self.positions.get((self.settings.events_topic, p)) or 0
        fx = stage.close(now, position, at)
        # Revoked while the records were sent: the new owner writes this partition now.
        if await runner.run(fx, self._send, self.stage1_store, p, owns=lambda: self.stage1.get(p) is stage):
            self.metrics.record_effects(fx, p)

    async def _send(self, record: Send) -> Any:
        return await self.topics[record.topic].send(key=record.key, value=record.value, partition=record.partition)

    # -- 3. combine ------------------------------------------------------------

    async def _stage2(self, p: int) -> Stage2:
        stage = self.stage2.get(p)
        if stage is None:
            stage = Stage2(self.plan, p, sources=self.partitions)
            await runner.restore(self.legacy_incidents, p, {"": stage.engine.load})
            self.positions[(self.settings.partials_topic, p)] = await runner.restore(self.stage2_store, p, stage.loaders())
            self.stage2[p] = stage
            for (kpi, wi, bi, group), _ in stage.engine.firing().items():
                dims = self.plan.breakdowns[bi]
                self.metrics.kpis.set_firing(kpi, self.plan.windows[wi].name, dims, dict(zip(dims, group)))
        return stage

    async def _combine(self, stream: Any) -> None:
        topic = self.settings.partials_topic
        async for event in stream.events():
            p = event.message.partition
            try:
                await self._stage2_step(p, [(event.message.offset, event.message.value)])
            except BaseException:
                self._forget(topic, p)
                raise

    async def _stage2_step(self, p: int, delivered: list[tuple[int, Any]]) -> None:
        topic = self.settings.partials_topic
        stage = await self._stage2(p)
        applied = False
        async for chunk in self._in_order(topic, p, delivered):
            applied = True
            for _, raw in chunk:
                stage.absorb(raw)
        if applied:  # else all applied before: a redelivery
            fx = stage.finish(self.positions[(topic, p)])
            await runner.run(fx, self._send, self.stage2_store, p)
            self.metrics.record_effects(fx, p)

    # -- 4. deliver ------------------------------------------------------------

    async def _deliver(self, stream: Any) -> None:
        """Deliver outbox records exactly once: skip what was delivered, retry what wasn't."""
        topic = self.plan.config.topics.alerts
        async for event in stream.events():
            p = event.message.partition
            # The delivery table is written in the partition of the event being handled,
            # so its position entry lives with the threads it vouches for.
            key = f"\x00position|{p}"
            if (topic, p) not in self.positions:
                raw = self.delivery_table.get(key)
                # No entry: nothing was delivered from this partition yet, or an old worker
                # delivered without positions; threads remember their delivered records, so
                # reading the partition back from 0 delivers only what never was.
                self.positions[(topic, p)] = orjson.loads(raw) if raw else 0
            try:
                async for chunk in self._in_order(topic, p, [(event.message.offset, event.message.value)]):
                    for _, value in chunk:
                        await self.outbox.handle(AlertEvent.from_json(orjson.loads(value)))
            except BaseException:
                self._forget(topic, p)
                raise
            self.delivery_table[key] = orjson.dumps(self.positions[(topic, p)])

    # -- timer, web, rebalance -------------------------------------------------

    async def _tick(self) -> None:
        """Close windows of partitions whose sources have gone quiet (wall-clock idle timeout)."""
        if self.app.rebalancing or not self.app.tables.recovery.completed.is_set():
            return
        self.ops.export_lag()
        now = time.time() * 1000
        for tp in list(self.app.assignor.assigned_actives()):
            if tp.topic != self.settings.events_topic:
                continue
            async with self.locks[tp.partition]:
                # A rebalance may have begun while we waited for the lock: a partition
                # being handed over must not be written by its old owner any more.
                if self.app.rebalancing or tp not in self.app.assignor.assigned_actives():
                    continue
                await self._close_stage1(tp.partition, await self._stage1(tp.partition), now)

    async def _on_revoked(self, app: Any, revoked: set[Any], **_: Any) -> None:
        # Revoked partitions' state moves with them; reload from the table if they return.
        for tp in revoked:
            try:
                self.metrics.lag.remove(tp.topic, str(tp.partition))
            except KeyError:
                pass
            self.positions.pop((tp.topic, tp.partition), None)
            if tp.topic == self.settings.events_topic:
                async with self.locks[tp.partition]:  # a close-timer step in flight finishes first
                    self.stage1.pop(tp.partition, None)
                self.metrics.forget_watermark(tp.partition)
            elif tp.topic == self.settings.partials_topic:
                self.stage2.pop(tp.partition, None)
                self.metrics.kpis.forget(tp.partition)
        # Whatever those steps wrote is on Kafka before the new owner reads the changelog.
        await self.app.producer.flush()

    async def _start_silences(self) -> None:
        if self.silences is not None:
            await self.silences.start()

    async def _start_feedback(self) -> None:
        if self.feedback is not None:
            await self.feedback.start()
        if self.control is not None:
            await self.control.start()

    async def _run_digests(self) -> None:
        """Post due digests from the worker that judges windows (it holds stage-2 partition 0)."""
        assert self.digests is not None
        judge = TP(self.settings.partials_topic, 0)
        while True:
            await asyncio.sleep(DIGEST_CHECK)
            if self.app.rebalancing or not self.app.tables.recovery.completed.is_set():
                continue
            if judge in self.app.assignor.assigned_actives():
                await self.digests.tick()

    async def _write(self, topic: str, key: str, value: bytes) -> None:
        """One keyed record to a compacted topic, durable when this returns."""
        await self.app.producer.send_and_wait(topic, key.encode(), value, None, None, None)

    async def _shown(self, alert: AlertEvent, state: DeliveryState) -> None:
        """An opening reached people: the incident counts in its rules' precision."""
        assert self.feedback is not None
        await self._write(self.feedback.topic, *incident_record(alert, state.incident or alert.id, state.channel, state.root_ts))

    async def _start_web(self) -> None:
        host, port = self.settings.metrics_host or self.plan.config.metrics_host, self.settings.metrics_port or self.plan.config.metrics_port
        self.runner = await web.serve(web.make_web_app(self.metrics.registry, self.ops.health), host=host, port=port)
        log.info("metrics at http://%s:%d/metrics", "localhost" if host in ("0.0.0.0", "::") else host, port)
