"""The contract every notifier keeps, and the one error it raises."""

from __future__ import annotations

from typing import Protocol

from kpi_core.errors import KpimonError
from kpi_core.results import Breach


class Notifier(Protocol):
    """Delivers alerts somewhere people will see them."""

    async def send(self, breaches: list[Breach]) -> None:
        """Deliver one alert about these breaches (one group); raise ``AlertDeliveryError`` if it could not."""

    async def close(self) -> None:
        """Release connections; the notifier is not used afterwards."""


class AlertDeliveryError(KpimonError):
    """An alert could not be delivered, even after retries.

    The message gives the HTTP status and Slack's error code, never the token or
    webhook URL. ``invalid_auth`` or ``channel_not_found`` mean the SLACK_* settings
    need fixing; 429 or 5xx mean Slack was unavailable for longer than the retries.
    """
