"""Alert delivery: Slack (bot threads or incoming webhook) or the console. No KPI logic lives here."""

from alerts.base import AlertDeliveryError, Delivery, DeliveryState
from alerts.delivery import ConsoleDelivery, SlackThreadDelivery, WebhookDelivery, build_delivery
from alerts.render import render_event, render_update
from alerts.settings import SlackSettings, from_env

__all__ = [
    "AlertDeliveryError",
    "ConsoleDelivery",
    "Delivery",
    "DeliveryState",
    "SlackSettings",
    "SlackThreadDelivery",
    "WebhookDelivery",
    "build_delivery",
    "from_env",
    "render_event",
    "render_update",
]
