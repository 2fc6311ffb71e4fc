from __future__ import annotations

import asyncio
import io
import logging

import pytest

from alerts import render
from alerts.console import ConsoleNotifier
from tests.support.breaches import CTR_BREACH


def test_console_writes_the_text_once_and_logs_a_summary(caplog: pytest.LogCaptureFixture) -> None:
    stream = io.StringIO()
    caplog.set_level(logging.INFO, logger="kpimon.alerts")

    asyncio.run(ConsoleNotifier(stream).send([CTR_BREACH]))

    text, _ = render([CTR_BREACH])
    assert stream.getvalue() == "\n=== ALERT ===\n" + text + "\n"
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == [
        ("kpimon.alerts", logging.INFO, "alert written to the console (1 breaches)")
    ]


def test_console_defaults_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    asyncio.run(ConsoleNotifier().send([CTR_BREACH]))

    assert "ctr 1.00% is below target 2.00%" in capsys.readouterr().out
