"""Choosing a notifier from the settings."""

from __future__ import annotations

import logging

from alerts.base import Notifier
from alerts.console import ConsoleNotifier
from alerts.settings import SlackSettings
from alerts.slack import DEFAULT_MAX_RETRIES, SlackBotNotifier, SlackWebhookNotifier

log = logging.getLogger("kpimon.alerts")


def build_notifier(
    settings: SlackSettings, *, grafana_url: str | None = None, max_retries: int = DEFAULT_MAX_RETRIES
) -> Notifier:
    """The Slack bot if a token and channel are set, else the incoming webhook, else the console."""
    if settings.bot_token and settings.channel:
        log.info("Alerts go to Slack channel %s", settings.channel)
        return SlackBotNotifier(
            token=settings.bot_token,
            channel=settings.channel,
            api_url=settings.api_url,
            max_retries=max_retries,
            grafana_url=grafana_url,
        )
    if settings.webhook_url:
        log.info("Alerts go to a Slack incoming webhook")
        return SlackWebhookNotifier(url=settings.webhook_url, max_retries=max_retries, grafana_url=grafana_url)
    # Said out loud: an operator who meant to configure Slack should notice.
    log.warning("No SLACK_* settings: alerts go to the log and stdout only")
    return ConsoleNotifier()
