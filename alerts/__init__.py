"""Alert delivery: Slack (bot or incoming webhook) or the console. No KPI logic lives here."""

from alerts.base import AlertDeliveryError, Delivery, DeliveryState, Notifier
from alerts.console import ConsoleNotifier
from alerts.delivery import ConsoleDelivery, SlackThreadDelivery, WebhookDelivery, build_delivery
from alerts.notifiers import build_notifier
from alerts.render import render, render_event, render_update
from alerts.settings import SlackSettings, from_env
from alerts.slack import SlackBotNotifier, SlackWebhookNotifier

__all__ = [
    "AlertDeliveryError",
    "ConsoleDelivery",
    "ConsoleNotifier",
    "Delivery",
    "DeliveryState",
    "Notifier",
    "SlackBotNotifier",
    "SlackSettings",
    "SlackThreadDelivery",
    "SlackWebhookNotifier",
    "WebhookDelivery",
    "build_delivery",
    "build_notifier",
    "from_env",
    "render",
    "render_event",
    "render_update",
]
