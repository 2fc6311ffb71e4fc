"""A notifier for when Slack is not configured: the log and a text stream."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

from alerts.render import render
from kpi_core.results import Breach

log = logging.getLogger("kpimon.alerts")


class ConsoleNotifier:
    """Writes each alert to a stream (stdout by default), so a demo shows it, and logs that it did."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream

    async def send(self, breaches: list[Breach]) -> None:
        """Log and print the alert's fallback text."""
        if not breaches:
            return
        text, _ = render(breaches)
        log.info("alert written to the console (%d breaches)", len(breaches))
        # Looked up at send time, so a replaced sys.stdout (pytest's capsys, a redirect) is honoured.
        stream = sys.stdout if self._stream is None else self._stream
        stream.write("\n=== ALERT ===\n" + text + "\n")
        stream.flush()

    async def close(self) -> None:
        """Nothing to release."""
