"""Delivering the alert outbox exactly once, one record at a time, in named stages.

    dedup → silence → mark in doubt → send → record

- **dedup**: a record at or below its thread's ``delivered_seq`` was delivered already (a repeat
  from stage 2 after a crash, or a re-read of the outbox): nothing happens.
- **silence**: if every KPI of the alert is muted right now (wall clock: silences are for people),
  the record is recorded as delivered without being sent. A resolve is never silenced.
  Nor is an update or reminder of an incident someone snoozed or closed as a false alarm
  from Slack (kpi_core/feedback.py) sent; its resolve still edits the message.
- **mark in doubt**: ``begin``'s state (the event pending) is stored and made durable before
  Slack is called, so a crash mid-send leaves the event marked in doubt, and the next attempt
  looks in Slack before posting again (alerts/delivery.py).
- **send**, with the one retry policy: failures slack-sdk gave up on that are worth retrying (429,
  5xx, network) wait and try again, with backoff; any other failure is given up on and logged.
- **record**: the state ``deliver`` (or ``skip``) returned is stored; an opening that reached
  people is reported to ``shown`` (the feedback topic's ``incident|`` record: the denominator
  of each rule's precision).

The store is the worker's delivery table (thread → state JSON); ``durable`` makes what was
stored so far durable (the worker flushes its producer).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from alerts.base import AlertDeliveryError, Delivery, DeliveryState
from kpi_core.feedback import IncidentFeedback
from kpi_core.incidents import AlertEvent

log = logging.getLogger("kpimon.alerts")

# What became of a record: the values of kpimon_alerts_total{outcome}.
DUPLICATE, SILENCED, DELIVERED, FAILED, RETRIED = "duplicate", "silenced", "delivered", "failed", "retried"
SNOOZED = "snoozed"  # an update or reminder of an incident snoozed (or closed as a false alarm) from Slack


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Waits between attempts: ``first``, then ×``factor`` each time, never more than ``cap`` (seconds)."""

    first: float = 1.0
    factor: float = 2.0
    cap: float = 30.0

    def delays(self) -> Iterator[float]:
        delay = self.first
        while True:
            yield delay
            delay = min(delay * self.factor, self.cap)


class Silences(Protocol):
    def is_silenced(self, group: Mapping[str, str], kpi: str, at_ms: int) -> Any: ...


def silenced(alert: AlertEvent, silences: Silences | None, at_ms: int) -> bool:
    """True when every KPI of the alert is muted at ``at_ms``; a resolve always goes out."""
    if silences is None or alert.kind == "resolved":
        return False
    return all(silences.is_silenced(alert.group, f.kpi, at_ms) for f in alert.findings)


class Outbox:
    """Takes outbox records one at a time through the stages above; returns each one's outcome."""

    def __init__(self, delivery: Delivery, store: MutableMapping[str, bytes], durable: Callable[[], Awaitable[Any]], *,
                 silences: Silences | None = None, retry: RetryPolicy = RetryPolicy(),
                 count: Callable[[str], None] = lambda outcome: None,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
                 clock: Callable[[], float] = time.time,
                 feedback: Callable[[str | None], IncidentFeedback] | None = None,
                 shown: Callable[[AlertEvent, DeliveryState], Awaitable[Any]] | None = None) -> None:
        self.delivery = delivery
        self.store = store
        self.durable = durable
        self.silences = silences
        self.retry = retry
        self.count = count
        self.sleep = sleep
        self.clock = clock
        self.feedback = feedback
        self.shown = shown

    async def handle(self, alert: AlertEvent) -> str:
        state = self._load(alert.thread)
        if state is not None and state.delivered_seq >= alert.seq:  # dedup
            outcome = DUPLICATE
        elif silenced(alert, self.silences, int(self.clock() * 1000)):  # silence
            self._record(alert, self.delivery.skip(alert, state))
            outcome = SILENCED
        elif self._snoozed(alert, state):
            self._record(alert, self.delivery.skip(alert, state))
            outcome = SNOOZED
        else:
            state = self.delivery.begin(alert, state)  # mark in doubt
            self._record(alert, state)
            await self.durable()
            state, outcome = await self._send(alert, state)  # send
            self._record(alert, state)  # record
            if outcome == DELIVERED and alert.kind == "opened" and self.shown is not None:
                await self.shown(alert, state)
        self.count(outcome)
        return outcome

    async def _send(self, alert: AlertEvent, state: DeliveryState) -> tuple[DeliveryState, str]:
        delays = self.retry.delays()
        while True:
            try:
                return await self.delivery.deliver(alert, state), DELIVERED
            except AlertDeliveryError as exc:
                if not exc.retryable:
                    log.error("alert %s not delivered, giving up: %s", alert.id, exc)
                    return self.delivery.skip(alert, state), FAILED
                delay = next(delays)
                self.count(RETRIED)
                log.warning("alert %s not delivered yet (%s); retrying in %.0fs", alert.id, exc, delay)
                await self.sleep(delay)

    def _snoozed(self, alert: AlertEvent, state: DeliveryState | None) -> bool:
        return (alert.kind in ("updated", "reminder") and state is not None and self.feedback is not None
                and self.feedback(state.incident).quiet)

    def _load(self, thread: str) -> DeliveryState | None:
        raw = self.store.get(thread)
        return DeliveryState.from_json(orjson.loads(raw)) if raw else None

    def _record(self, alert: AlertEvent, state: DeliveryState) -> None:
        self.store[alert.thread] = orjson.dumps(state.to_json())
