"""The contract every delivery keeps, the state delivery leaves behind, and the one error."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from kpi_core.errors import KpimonError
from kpi_core.incidents import AlertEvent


@dataclass(frozen=True, slots=True)
class DeliveryState:
    """What has been delivered of one thread, and where it lives; stored by the caller between events."""

    channel: str | None = None  # the Slack channel (its ID once known) of the thread's message
    root_ts: str | None = None  # the Slack ts of the thread's message; None before it exists
    delivered_seq: int = 0  # the highest sequence number fully delivered
    pending_id: str | None = None  # the event being delivered: set (and stored) before Slack is called
    severity: str | None = None  # what the thread's message shows now, so replies can say what changed
    firing: tuple[str, ...] = field(default=())  # KPIs the message shows as firing
    incident: str | None = None  # the id of the opening the message shows (the buttons' incident)

    def delivered(self, event: AlertEvent, *, shown: bool = True) -> DeliveryState:
        """This state after ``event`` is delivered (``shown``) or skipped, with nothing pending."""
        incident = event.id if event.kind == "opened" else self.incident  # a new incident, shown or not
        if not shown:
            return replace(self, delivered_seq=max(self.delivered_seq, event.seq), pending_id=None, incident=incident)
        firing = tuple(f.kpi for f in event.findings if f.status == "firing")
        return replace(self, delivered_seq=event.seq, pending_id=None, severity=event.severity, firing=firing, incident=incident)

    def to_json(self) -> dict[str, Any]:
        return {
            "channel": self.channel,
            "root_ts": self.root_ts,
            "delivered_seq": self.delivered_seq,
            "pending_id": self.pending_id,
            "severity": self.severity,
            "firing": list(self.firing),
            "incident": self.incident,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> DeliveryState:
        return cls(
            channel=raw.get("channel"),
            root_ts=raw.get("root_ts"),
            delivered_seq=int(raw.get("delivered_seq", 0)),
            pending_id=raw.get("pending_id"),
            severity=raw.get("severity"),
            firing=tuple(raw.get("firing") or ()),
            incident=raw.get("incident"),
        )


class Delivery(Protocol):
    """Delivers a thread's ``AlertEvent``s exactly once, given the state it returned last time.

    The caller stores ``begin``'s state before calling ``deliver`` (so a crash leaves the
    event marked in doubt), then stores what ``deliver`` or ``skip`` returns.
    """

    def begin(self, event: AlertEvent, state: DeliveryState | None) -> DeliveryState:
        """The state to store before delivering: ``pending_id`` set to the event's id."""

    async def deliver(self, event: AlertEvent, state: DeliveryState | None) -> DeliveryState:
        """Send the event unless it was delivered already; raise ``AlertDeliveryError`` if it could not."""

    def skip(self, event: AlertEvent, state: DeliveryState | None) -> DeliveryState:
        """Mark the event delivered without sending it (silenced, or given up on)."""

    async def close(self) -> None:
        """Release connections; the delivery is not used afterwards."""


class AlertDeliveryError(KpimonError):
    """An alert could not be delivered, even after retries.

    The message gives the HTTP status and Slack's error code, never the token or
    webhook URL. ``invalid_auth`` or ``channel_not_found`` mean the SLACK_* settings
    (or the alert routes) need fixing; 429 or 5xx mean Slack was unavailable for
    longer than the retries, and ``retryable`` is then true: try again later.
    """

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable
