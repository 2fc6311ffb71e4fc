"""Alert delivery: Slack (bot or incoming webhook) or the console. No KPI logic lives here."""

from alerts.base import AlertDeliveryError, Notifier
from alerts.console import ConsoleNotifier
from alerts.notifiers import build_notifier
from alerts.render import render
from alerts.settings import SlackSettings, from_env
from alerts.slack import SlackBotNotifier, SlackWebhookNotifier

__all__ = [
    "AlertDeliveryError",
    "ConsoleNotifier",
    "Notifier",
    "SlackBotNotifier",
    "SlackSettings",
    "SlackWebhookNotifier",
    "build_notifier",
    "from_env",
    "render",
]
