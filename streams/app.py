"""The Faust application: topics, agents, tables, the close timer and the metrics endpoint.

A router and three agents, each thin; the rules are in ``kpi_core``:

1. the router (``streams/router.py``, a plain aiokafka consumer: Faust's per-record
   path costs ~70x more) reads the source topics in batches, validates each event
   (bad ones go to the dead-letter topic with a reason) and forwards the valid
   ones, grouped by its own key (campaign), to ``<app>-events`` — one message per
   target partition per batch, carrying every source partition's progress.
2. ``aggregate`` keeps one ``PartitionAggregator`` per ``<app>-events``
   partition, stores its state in a changelog-backed table, and sends the
   partials of closed windows to ``<app>-partials``.
3. ``combine`` adds the partials up per group, publishes snapshots, updates
   the Prometheus gauges and sends alerts.

Faust's windowed tables are not used: their expiry runs on the wall clock, and
windows recovered from the changelog never expire. Window assignment and closing
live in ``kpi_core``; the tables here are plain key/value changelogs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import zlib
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from typing import Any

import faust
import orjson

from alerts import AlertDeliveryError, Delivery, DeliveryState
from kpi_core.aggregate import PartitionAggregator
from kpi_core.alerting import AlertEngine
from kpi_core.combine import Combiner
from kpi_core.errors import InvalidEvent
from kpi_core.plan import Plan
from kpi_core.state import Change
from kpi_core.incidents import AlertEvent
from streams import web, wire
from streams.metrics import Metrics
from streams.ordered import GapReader, sequence
from streams.router import Router, partition_of
from streams.security import KafkaSecurity
from streams.settings import WorkerSettings
from streams.silences import SilenceWatcher
from streams.watchdog import Action, RecoveryWatchdog

log = logging.getLogger("kpimon.worker")
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
                 silences: SilenceWatcher | None = None) -> None:
        self.plan = plan
        self.settings = settings
        self.delivery = delivery
        self.metrics = metrics
        self.silences = silences
        cfg = plan.config
        self.partitions = cfg.topics.partitions
        security = KafkaSecurity.from_env()
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
        # Stage 2's combiner and alert-engine state share one table, so one changelog
        # partition keeps the order of a step's writes (its input position last).
        self.stage2_table = self._table("stage2")
        # Where the alert-engine state lived before it joined stage2: read once on restore,
        # so an upgraded worker keeps its incidents and thread sequence numbers.
        self.legacy_incidents = self._table("incidents")
        self.delivery_table = app.Table("delivery", partitions=cfg.topics.partitions, key_type=str, value_type=bytes)
        self.stage1: dict[int, PartitionAggregator] = {}
        self.stage2: dict[int, Combiner] = {}
        self.engines: dict[int, AlertEngine] = {}
        # The next input offset each stage has applied, per (topic, partition); stored
        # after the stage's state (streams/ordered.py). None: stored before positions existed.
        self.positions: dict[tuple[str, int], int | None] = {}
        self.gaps = {t: GapReader(t, settings.bootstrap, security)
                     for t in (settings.events_topic, settings.partials_topic, cfg.topics.alerts)}
        self.router = Router(plan, settings, metrics, security, self._send_bundle, self._dead_letter)
        self.kafka_up = True
        self.watchdog = RecoveryWatchdog()
        self.locks: dict[int, asyncio.Lock] = defaultdict(asyncio.Lock)
        self.runner: Any = None

        app.task(self._run_router)
        app.agent(self.events_topic, name="aggregate")(self._aggregate)
        app.agent(self.partials_topic, name="combine")(self._combine)
        app.agent(self.alerts_topic, name="deliver")(self._deliver)
        app.timer(1.0, name="close-idle-windows")(self._tick)
        app.timer(2.0, name="kafka-watch")(self._watch_kafka)
        app.timer(2.0, name="recovery-watchdog")(self._watch_recovery)
        app.task(self._start_web)
        app.task(self._start_silences)
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
        headers = [
            ("kpimon-reason", exc.reason.encode()),
            ("kpimon-detail", exc.detail.encode("utf-8", "replace")),
            ("kpimon-source-topic", msg.topic.encode()),
            ("kpimon-source-partition", str(msg.partition).encode()),
            ("kpimon-source-offset", str(msg.offset).encode()),
        ]
        # A tombstone stays a tombstone (null value), so the dead letter is the input as it was.
        return await self.dead_letters.send(key=msg.key, value=msg.value, headers=headers)

    # -- 2. aggregate ----------------------------------------------------------

    def _stage1(self, p: int) -> PartitionAggregator:
        agg = self.stage1.get(p)
        if agg is None:
            agg = self.stage1[p] = PartitionAggregator(self.plan, idle_ms=self.plan.config.idle_timeout)
            self.positions[(self.settings.events_topic, p)] = _restore(self.stage1_table, p, {"": agg.load})
        return agg

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
            self.engines.pop(p, None)

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
        agg = self._stage1(p)
        now = time.time() * 1000
        late: list[Any] = []
        applied = False
        async for chunk in self._in_order(topic, p, delivered):
            applied = True
            for _, raw in chunk:
                watermarks, backlog, sent_at, events = wire.decode_events(raw)
                late += agg.apply(events)
                agg.report(watermarks, backlog, now, sent_at)
        if not applied:
            return  # all applied before: a redelivery
        for outcome, n in agg.restatements.items():
            if n:
                self.metrics.restated.labels(outcome).inc(n)
                agg.restatements[outcome] = 0
        # Late records go out before the state that marks them applied
        # (a crash in between reports them again rather than never).
        for src, off, etype, ts, data in late:
            self.metrics.late.inc()
            await self.late_topic.send(value=orjson.dumps({"type": etype, "ts": ts, **data, "source": src, "offset": off}))
        if await self._close_stage1(p, agg, now):
            _persist_position(self.stage1_table, p, self.positions[(topic, p)])

    async def _close_stage1(self, p: int, agg: PartitionAggregator, now: float) -> bool:
        """Close what the watermark allows; False if the partition was revoked meanwhile (nothing stored)."""
        partials = agg.advance(now)
        if partials is not None:
            by_target: dict[int, list[Any]] = defaultdict(list)
            for part in partials:
                by_target[self._combine_partition(part.breakdown, part.group)].append(part)
            # Deliver the partials before storing the new horizon: after a crash the
            # old horizon makes us send them again, and stage 2 drops the repeat.
            # The input position orders this partition's revisions at stage 2 (a replay never steps back).
            at = self.positions.get((self.settings.events_topic, p)) or 0
            futures = [
                await self.partials_topic.send(value=wire.encode_partials(self.plan, p, agg.report_horizons(), by_target.get(i, []), at), partition=i)
                for i in range(self.partitions)
            ]
            await asyncio.gather(*futures)
        if self.stage1.get(p) is not agg:
            return False  # revoked while the partials were sent: the new owner writes this partition now
        _persist(self.stage1_table, p, agg.changes())
        wm = agg.watermark.current(now)
        self.metrics.record_watermark(p, wm, agg.watermark.holders(now, wm))
        return True

    def _combine_partition(self, breakdown: int, group: tuple[str, ...]) -> int:
        # Every breakdown that includes the campaign lands with the campaign, so a
        # campaign's alert can name the channel or device behind it from local state.
        dims = self.plan.breakdowns[breakdown]
        if "campaign" in dims:
            return partition_of(group[dims.index("campaign")], self.partitions)
        return zlib.crc32(orjson.dumps((breakdown, *group))) % self.partitions

    # -- 3. combine ------------------------------------------------------------

    def _stage2(self, p: int) -> tuple[Combiner, AlertEngine]:
        comb = self.stage2.get(p)
        if comb is None:
            comb = self.stage2[p] = Combiner(self.plan, sources=self.partitions)
            engine = self.engines[p] = AlertEngine(self.plan)
            _restore(self.legacy_incidents, p, {"": engine.load})
            # "" : combiner keys stored before the namespaces existed.
            self.positions[(self.settings.partials_topic, p)] = _restore(
                self.stage2_table, p, {"c": comb.load, "a": engine.load, "": comb.load})
            for (kpi, wi, bi, group), _ in engine.firing().items():
                dims = self.plan.breakdowns[bi]
                self.metrics.kpis.set_firing(kpi, self.plan.windows[wi].name, dims, dict(zip(dims, group)))
        return comb, self.engines[p]

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
        comb, engine = self._stage2(p)
        applied = False
        async for chunk in self._in_order(topic, p, delivered):
            applied = True
            for _, raw in chunk:
                source, horizon, partials, at = wire.decode_partials(self.plan, raw)
                comb.receive(source, horizon, partials, at)
                for closed in comb.finalize_windows():
                    for snap in closed.snapshots:
                        await self.snapshot_topic.send(key=snap.key.encode(), value=orjson.dumps(snap.to_json()))
                        self.metrics.record_snapshot(snap, p)
                    for alert in engine.judge(closed):
                        await self._to_outbox(alert)
                if p == 0:  # every partition sees the same progress: one judges the feeds
                    for alert in engine.check_feeds(*comb.reported()):
                        await self._to_outbox(alert)
        if not applied:
            return  # all applied before: a redelivery
        # Stored after the outbox write: a crash in between re-evaluates to the same
        # events (same sequence numbers), which delivery then skips as duplicates. The
        # engine's state goes first: if a crash cuts the step after it, the window is
        # finalized again and the engine, which remembers it evaluated it, skips it.
        _persist(self.stage2_table, p, engine.changes(), "a")
        _persist(self.stage2_table, p, comb.changes(), "c")
        _persist_position(self.stage2_table, p, self.positions[(topic, p)])

    async def _to_outbox(self, alert: AlertEvent) -> None:
        # The outbox: an alert is on Kafka before anyone tries to deliver it.
        fut = await self.alerts_topic.send(key=alert.thread.encode(), value=orjson.dumps(alert.to_json()))
        await fut
        self.metrics.record_alert(alert)

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
                        await self._deliver_one(AlertEvent.from_json(orjson.loads(value)))
            except BaseException:
                self._forget(topic, p)
                raise
            self.delivery_table[key] = orjson.dumps(self.positions[(topic, p)])

    async def _deliver_one(self, alert: AlertEvent) -> None:
        raw = self.delivery_table.get(alert.thread)
        state = DeliveryState.from_json(orjson.loads(raw)) if raw else None
        if state is not None and state.delivered_seq >= alert.seq:
            self.metrics.alerts.labels("duplicate").inc()
            return
        if self._silenced(alert):
            self.metrics.alerts.labels("silenced").inc()
            state = self.delivery.skip(alert, state)
        else:
            state = self.delivery.begin(alert, state)
            self.delivery_table[alert.thread] = orjson.dumps(state.to_json())
            await self.app.producer.flush()  # the in-doubt marker is durable before Slack is called
            state = await self._deliver_with_retries(alert, state)
        self.delivery_table[alert.thread] = orjson.dumps(state.to_json())

    async def _deliver_with_retries(self, alert: AlertEvent, state: DeliveryState) -> DeliveryState:
        delay = 1.0
        while True:
            try:
                state = await self.delivery.deliver(alert, state)
                self.metrics.alerts.labels("delivered").inc()
                return state
            except AlertDeliveryError as exc:
                if not exc.retryable:
                    self.metrics.alerts.labels("failed").inc()
                    log.error("alert %s not delivered, giving up: %s", alert.id, exc)
                    return self.delivery.skip(alert, state)
                self.metrics.alerts.labels("retried").inc()
                log.warning("alert %s not delivered yet (%s); retrying in %.0fs", alert.id, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    def _silenced(self, alert: AlertEvent) -> bool:
        """True when every KPI of the alert is silenced right now (wall clock: silences are for people)."""
        if self.silences is None or alert.kind == "resolved":
            return False
        now = int(time.time() * 1000)
        return all(self.silences.is_silenced(alert.group, f.kpi, now) for f in alert.findings)

    # -- timer, web, rebalance -------------------------------------------------

    async def _tick(self) -> None:
        """Close windows of partitions whose sources have gone quiet (wall-clock idle timeout)."""
        if self.app.rebalancing or not self.app.tables.recovery.completed.is_set():
            return
        self._export_lag()
        now = time.time() * 1000
        for tp in list(self.app.assignor.assigned_actives()):
            if tp.topic != self.settings.events_topic:
                continue
            async with self.locks[tp.partition]:
                # A rebalance may have begun while we waited for the lock: a partition
                # being handed over must not be written by its old owner any more.
                if self.app.rebalancing or tp not in self.app.assignor.assigned_actives():
                    continue
                await self._close_stage1(tp.partition, self._stage1(tp.partition), now)

    async def _watch_kafka(self) -> None:
        """Say plainly when the brokers go away and come back (the clients only retry quietly)."""
        reachable = False
        for hostport in self.settings.bootstrap.split(","):
            host, _, port = hostport.rpartition(":")
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), timeout=1.0)
                writer.close()
                reachable = True
                break
            except (OSError, asyncio.TimeoutError, ValueError):
                continue
        if reachable != self.kafka_up:
            if reachable:
                log.warning("Kafka connection restored (%s): resuming; nothing was lost, uncommitted input is re-read", self.settings.bootstrap)
            else:
                log.error("Kafka connection lost (%s unreachable): state and offsets are safe; retrying until it is back", self.settings.bootstrap)
            self.kafka_up = reachable

    async def _watch_recovery(self) -> None:
        """Get a stalled Faust recovery moving (streams/watchdog.py says why and how)."""
        recovery = self.app.tables.recovery
        remaining = sum(n for n in recovery.active_remaining().values() if n > 0)
        action = self.watchdog.observe(time.monotonic(), recovery.in_recovery, remaining)
        if action is Action.REJOIN:
            log.warning("table recovery has read nothing for %.0fs with %d changelog records left: asking the "
                        "group to rebalance (try %d of %d)", self.watchdog.stall_after, remaining,
                        self.watchdog.rejoins, self.watchdog.max_rejoins)
            thread = self.app.consumer._thread  # Faust exposes no rejoin; the coordinator lives on its thread
            coordinator = thread._ensure_consumer()._coordinator
            thread.thread_loop.call_soon_threadsafe(coordinator.request_rejoin)
        elif action is Action.EXIT:
            log.critical("table recovery still stalled after %d rebalances: exiting so the supervisor restarts "
                         "this worker (its state survives that, as it survives kill -9)", self.watchdog.max_rejoins)
            logging.shutdown()
            os._exit(75)  # EX_TEMPFAIL; Faust's own shutdown would wait on the stalled recovery

    def _export_lag(self) -> None:
        consumer = self.app.consumer
        committed = consumer._committed_offset  # Faust keeps no public accessor for it
        for tp in self.app.assignor.assigned_actives():
            try:
                end = consumer.highwater(tp)
            except Exception:  # noqa: BLE001 - not fetched from yet, or moving in a rebalance
                continue
            if end is not None:
                done = committed.get(tp)
                # Faust stores the last processed offset; the next to read is one more.
                self.metrics.lag.labels(tp.topic, str(tp.partition)).set(max(0, end - (done + 1 if done is not None else 0)))

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
                self.engines.pop(tp.partition, None)
                self.metrics.kpis.forget(tp.partition)
        # Whatever those steps wrote is on Kafka before the new owner reads the changelog.
        await self.app.producer.flush()

    async def _start_silences(self) -> None:
        if self.silences is not None:
            await self.silences.start()

    async def _start_web(self) -> None:
        host, port = self.settings.metrics_host or self.plan.config.metrics_host, self.settings.metrics_port or self.plan.config.metrics_port
        self.runner = await web.serve(web.make_web_app(self.metrics.registry, self.health), host=host, port=port)
        log.info("metrics at http://%s:%d/metrics", "localhost" if host in ("0.0.0.0", "::") else host, port)

    def health(self) -> dict[str, object]:
        """Liveness plus readiness: ready once state is recovered and partitions are assigned."""
        assigned = sorted(tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic == self.settings.events_topic)
        recovered = self.app.tables.recovery.completed.is_set()
        ready = bool(assigned) and recovered and not self.app.rebalancing
        return {"status": "ok", "ready": ready, "partitions": assigned}


POSITION = "position"  # the key, after "<partition>|", of a stage's input position


def _restore(table: faust.Table, partition: int, loaders: dict[str, Callable[[str, Any], None]]) -> int | None:
    """Load one partition's entries, each by the loader of its namespace; return the stored input position.

    Fresh state starts at offset 0, and says so in the table at once: state found
    without a position can then only be state stored before positions existed
    (None: no gap check), never a first step killed before its position was written.
    """
    prefix = f"{partition}|".encode()
    position: int | None = None
    found = False
    for key, value in list(table.items()):
        if key.startswith(prefix):
            found = True
            rest = key[len(prefix) :].decode()
            if rest == POSITION:
                position = orjson.loads(value)
                continue
            ns = "" if rest.startswith("[") else rest[0]  # stage keys are JSON arrays
            loaders[ns](rest[len(ns) :], orjson.loads(value))
    if not found:
        _persist_position(table, partition, 0)  # ahead of any state, in the same changelog partition
        return 0
    return position


def _persist(table: faust.Table, partition: int, changes: list[Change], ns: str = "") -> None:
    """Write a stage's changes in order; the order is what makes recovery consistent."""
    prefix = f"{partition}|{ns}"
    for key, value in changes:
        k = (prefix + key).encode()
        if value is not None:
            table[k] = orjson.dumps(value)
        elif k in table:
            del table[k]


def _persist_position(table: faust.Table, partition: int, position: int | None) -> None:
    """Written last in a step: when it is stored, the state it vouches for is stored too."""
    if position is not None:
        table[f"{partition}|{POSITION}".encode()] = orjson.dumps(position)
