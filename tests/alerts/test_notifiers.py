from __future__ import annotations

import pytest

from alerts import build_notifier, from_env
from alerts.console import ConsoleNotifier
from alerts.slack import SlackBotNotifier, SlackWebhookNotifier

BOT = {"SLACK_BOT_TOKEN": "xoxb-1", "SLACK_CHANNEL": "#kpi-alerts"}
WEBHOOK = {"SLACK_WEBHOOK_URL": "https://hooks.example/T/B/secret"}


@pytest.mark.parametrize(
    ("env", "kind"),
    [
        ({**BOT, **WEBHOOK}, SlackBotNotifier),  # the bot wins when both are set
        (WEBHOOK, SlackWebhookNotifier),
        ({}, ConsoleNotifier),  # nothing configured: the demo still shows alerts
    ],
)
def test_build_notifier_picks_by_settings(env: dict[str, str], kind: type) -> None:
    assert isinstance(build_notifier(from_env(env)), kind)
