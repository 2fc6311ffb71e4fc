"""The worker watching itself: Kafka reachability, a stalled table recovery, consumer lag, /health.

Each reads Faust's or aiokafka's runtime state and says or does one thing about it; none of them
touches KPI state.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

from streams.metrics import Metrics
from streams.settings import WorkerSettings
from streams.watchdog import Action, RecoveryWatchdog

log = logging.getLogger("kpimon.worker")


class Ops:
    def __init__(self, app: Any, settings: WorkerSettings, metrics: Metrics) -> None:
        self.app = app
        self.settings = settings
        self.metrics = metrics
        self.kafka_up = True
        self.watchdog = RecoveryWatchdog()

    async def watch_kafka(self) -> None:
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

    async def watch_recovery(self) -> None:
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

    def export_lag(self) -> None:
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


    def health(self) -> dict[str, object]:
        """Liveness plus readiness: ready once state is recovered and partitions are assigned."""
        assigned = sorted(tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic == self.settings.events_topic)
        recovered = self.app.tables.recovery.completed.is_set()
        ready = bool(assigned) and recovered and not self.app.rebalancing
        return {"status": "ok", "ready": ready, "partitions": assigned}
